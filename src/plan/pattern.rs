//! Host patterns, Ansible-style: `app`, `app:db` (union), `db:&primary`
//! (intersection), `app:!oa3` (exclusion), host names and `*` globs.
//!
//! As in Ansible, the result does not depend on term order: unions first, then
//! intersections, then exclusions. Hosts come back in inventory order.
//!
//! A name that is neither a group nor a host is an error (a typo must not turn
//! a step into a no-op), but a glob may match nothing: `lb*` is the idiom for
//! an optional group, so a runbook can drain a load balancer where the
//! inventory has one and skip that step where it has none.

use crate::diagnostic::suggest;
use crate::load::inventory::Inventory;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    pub message: String,
    /// The term at fault as written (`&primry`), so a caller can point at it.
    pub term: Option<String>,
}

/// The hosts a pattern selects, in inventory order.
pub fn resolve(pattern: &str, inv: &Inventory) -> Result<Vec<String>, PatternError> {
    let mut union: Vec<bool> = vec![false; inv.hosts.len()];
    let mut inter: Vec<Vec<bool>> = Vec::new();
    let mut excl: Vec<bool> = vec![false; inv.hosts.len()];
    let terms: Vec<&str> = pattern
        .split([':', ','])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if terms.is_empty() {
        return Err(PatternError {
            message: format!("empty host pattern `{pattern}`: expected group or host names"),
            term: None,
        });
    }
    let mut any_union = false;
    for term in terms {
        let (kind, name) = match term.as_bytes()[0] {
            b'&' => ('&', term[1..].trim()),
            b'!' => ('!', term[1..].trim()),
            _ => ('+', term),
        };
        if name.is_empty() {
            let op = if kind == '&' { "&" } else { "!" };
            return Err(PatternError {
                message: format!(
                    "`{op}` with no name after it in host pattern `{pattern}`: expected a group or host name, like `{op}db`"
                ),
                term: Some(term.to_string()),
            });
        }
        let set = select(name, inv).map_err(|e| PatternError {
            term: Some(term.to_string()),
            ..e
        })?;
        match kind {
            '&' => inter.push(set),
            '!' => excl.iter_mut().zip(&set).for_each(|(e, s)| *e |= s),
            _ => {
                any_union = true;
                union.iter_mut().zip(&set).for_each(|(u, s)| *u |= s);
            }
        }
    }
    if !any_union {
        // `!oa3` alone means "everything but oa3", as in Ansible's `all:!oa3`.
        union.iter_mut().for_each(|u| *u = true);
    }
    Ok(inv
        .hosts
        .iter()
        .enumerate()
        .filter(|(i, _)| union[*i] && !excl[*i] && inter.iter().all(|s| s[*i]))
        .map(|(_, h)| h.name.clone())
        .collect())
}

fn select(name: &str, inv: &Inventory) -> Result<Vec<bool>, PatternError> {
    if name == "all" || name == "*" {
        return Ok(vec![true; inv.hosts.len()]);
    }
    if name.contains('*') {
        return Ok(inv
            .hosts
            .iter()
            .map(|h| glob(name, &h.name) || h.groups.iter().any(|g| glob(name, g)))
            .collect());
    }
    if let Some(g) = inv.group(name) {
        return Ok(inv
            .hosts
            .iter()
            .map(|h| g.hosts.contains(&h.name))
            .collect());
    }
    if inv.host(name).is_some() {
        return Ok(inv.hosts.iter().map(|h| h.name == name).collect());
    }
    let names = inv
        .groups
        .iter()
        .map(|g| g.name.as_str())
        .chain(inv.hosts.iter().map(|h| h.name.as_str()));
    let hint = match suggest(name, names) {
        Some(s) => format!(", did you mean `{s}`?"),
        None => String::new(),
    };
    Err(PatternError {
        message: format!(
            "unknown group or host `{name}` in inventory `{}`{hint}",
            inv.name
        ),
        term: None,
    })
}

/// `*` matches any run of characters; nothing else is special.
fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = s;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(p) => rest = &rest[p + part.len()..],
                None => return false,
            }
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::SourceFile;

    fn inv() -> Inventory {
        let text = "groups:\n  app:\n    hosts: {oa1: {}, oa2: {}, oa3: {}}\n  db:\n    hosts: {dm1: {}, dm2: {}}\n  primary:\n    hosts: {dm1: , oa1: }\n";
        let src = SourceFile::new("inv.yaml", text);
        crate::load::inventory::decode(&crate::yaml::parse(text).unwrap(), src).unwrap()
    }

    #[test]
    fn set_operations() {
        let i = inv();
        assert_eq!(resolve("app", &i).unwrap(), ["oa1", "oa2", "oa3"]);
        assert_eq!(
            resolve("db:app", &i).unwrap(),
            ["oa1", "oa2", "oa3", "dm1", "dm2"]
        );
        assert_eq!(resolve("db:&primary", &i).unwrap(), ["dm1"]);
        assert_eq!(resolve("app:!oa3", &i).unwrap(), ["oa1", "oa2"]);
        assert_eq!(resolve("!app", &i).unwrap(), ["dm1", "dm2"]);
        assert_eq!(resolve("oa*:&primary", &i).unwrap(), ["oa1"]);
        assert_eq!(resolve("dm2,oa2", &i).unwrap(), ["oa2", "dm2"]);
        assert_eq!(resolve("all", &i).unwrap().len(), 5);
    }

    #[test]
    fn a_glob_may_match_nothing_but_a_name_may_not() {
        let i = inv();
        assert_eq!(resolve("lb*", &i).unwrap(), Vec::<String>::new());
        assert_eq!(resolve("app:lb*", &i).unwrap(), ["oa1", "oa2", "oa3"]);
        assert_eq!(resolve("lb*:&app", &i).unwrap(), Vec::<String>::new());
        assert!(resolve("lb", &i).is_err());
    }

    #[test]
    fn unknown_names_suggest() {
        let e = resolve("app:dbb", &inv()).unwrap_err();
        assert_eq!(
            e.message,
            "unknown group or host `dbb` in inventory `inv`, did you mean `db`?"
        );
        assert_eq!(e.term.as_deref(), Some("dbb"));
        let e = resolve("app:&", &inv()).unwrap_err();
        assert!(
            e.message.starts_with("`&` with no name after it"),
            "{}",
            e.message
        );
    }
}
