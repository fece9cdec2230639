//! Param binding: `-e` values, defaults, secrets and inventory vars bound to
//! the runbook's params, each with where its value came from.

use super::*;

/// The source of a param left unset whose value is an inventory var of the same name.
pub(super) const FROM_INVENTORY: &str = "inventory var";

/// Binds `-e` values, defaults and secrets to the runbook's params.
pub(super) fn bind_params(rb: &Runbook, opts: &Options) -> Result<Vec<ParamValue>, Error> {
    for (k, _) in &opts.params {
        if !rb.params.iter().any(|p| &p.name == k) {
            let declared: Vec<&str> = rb.params.iter().map(|p| p.name.as_str()).collect();
            return Err(Error::Usage(format!(
                "-e {k}: runbook `{}` has no param `{k}`{}{}",
                rb.name,
                did_you_mean(k, declared.iter().copied()),
                if declared.is_empty() {
                    " (it declares no params)".to_string()
                } else {
                    format!(" (params: {})", declared.join(", "))
                }
            )));
        }
    }
    let mut out = Vec::new();
    for p in &rb.params {
        let given = opts
            .params
            .iter()
            .rev()
            .find(|(k, _)| k == &p.name)
            .map(|(_, v)| v.clone());
        if p.secret {
            if given.is_some() {
                return Err(Error::Usage(format!(
                    "-e {}: `{}` is a secret param and cannot be given on the command line (it would show in `ps` and the shell history); set OPSRUN_SECRET_{} or answer the prompt",
                    p.name,
                    p.name,
                    p.name.to_uppercase()
                )));
            }
            let have = opts.secrets.contains_key(&p.name);
            if let Some(v) = opts.secrets.get(&p.name) {
                p.check_value(v)
                    .map_err(|m| Error::Usage(format!("secret param `{}`: {m}", p.name)))?;
            }
            out.push(ParamValue {
                name: p.name.clone(),
                value: (have || p.default.is_some()).then(|| MASK.to_string()),
                secret: true,
                source: if have {
                    "secret"
                } else if p.default.is_some() {
                    "default"
                } else {
                    "not given"
                },
            });
            continue;
        }
        let (value, source) = match (given, &p.default) {
            (Some(v), _) => (Some(v), "-e"),
            (None, Some(d)) => (Some(d.clone()), "default"),
            (None, None) if p.required => {
                return Err(diag(
                    rb,
                    p.span,
                    format!(
                        "missing required param `{}`{}: pass it with -e {}=VALUE",
                        p.name,
                        p.description
                            .as_ref()
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default(),
                        p.name
                    ),
                ))
            }
            (None, None) => (None, "not given"),
        };
        if let (Some(v), "-e") = (&value, source) {
            p.check_value(v)
                .map_err(|m| Error::Usage(format!("-e {}: {m}", p.name)))?;
        }
        out.push(ParamValue {
            name: p.name.clone(),
            value,
            secret: false,
            source,
        });
    }
    Ok(out)
}
