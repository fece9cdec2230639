//! Which template names carry a secret, whatever a template then does with
//! them: a secret param, a runbook var that reads one (through any chain of
//! vars), and a value captured from a step whose command read one. A text that
//! reads such a name goes to the host on stdin even when its rendered value does
//! not contain the secret as such (`{{ pw[1:] }}`, `{{ pw | upper }}`): matching
//! by value cannot see a transformed secret, reading by name can.

use super::compile::StepTemplates;
use super::*;

/// Secret params and the runbook vars that read one, directly or through other
/// vars (in any order of declaration).
pub(super) fn secret_names(
    rb: &Runbook,
    templates: &Templates,
    vars: &[(String, TemplateId)],
) -> HashSet<String> {
    let params: HashSet<String> = rb
        .params
        .iter()
        .filter(|p| p.secret)
        .map(|p| p.name.clone())
        .collect();
    let reads = var_reads(templates, vars);
    let built: Vec<String> = vars
        .iter()
        .filter(|(n, _)| reads[n].iter().any(|v| params.contains(v)))
        .map(|(n, _)| n.clone())
        .collect();
    params.into_iter().chain(built).collect()
}

/// `secret` and, in step order, the captures of the steps whose command, stdin
/// or env read a name in it (what a host prints from a secret may be that
/// secret, transformed), with the vars that read such a capture. Only where a
/// text is sent is this used: a capture is not refused or masked for it, as its
/// value need not hold anything of the secret (`mysql -p… -e 'select version()'`).
pub(super) fn from_secret(
    rb: &Runbook,
    templates: &Templates,
    vars: &[(String, TemplateId)],
    forward: &[StepTemplates],
    secret: &HashSet<String>,
) -> HashSet<String> {
    let reads = var_reads(templates, vars);
    let mut out = secret.clone();
    for (step, t) in rb.steps.iter().zip(forward) {
        let Some(capture) = &step.capture else {
            continue;
        };
        let sources = t
            .action
            .into_iter()
            .chain(t.stdin)
            .chain(t.env.iter().map(|(_, id)| *id));
        let reads_one = |out: &HashSet<String>, id: TemplateId| {
            templates.variables(id).iter().any(|n| {
                out.contains(n)
                    || reads
                        .get(n)
                        .is_some_and(|r| r.iter().any(|v| out.contains(v)))
            })
        };
        if sources.into_iter().any(|id| reads_one(&out, id)) {
            out.insert(capture.name.clone());
        }
    }
    let tainted: Vec<String> = vars
        .iter()
        .filter(|(n, _)| reads[n].iter().any(|v| out.contains(v)))
        .map(|(n, _)| n.clone())
        .collect();
    out.extend(tainted);
    out
}

/// Per template of the runbook that reads a secret, its twin with each `{{ }}`
/// that reads one shown as the mask: the masked rendering (the record, the
/// dry-run) renders the twin, so `{{ pw[1:] }}` and `{{ pw | length }}` are
/// recorded as `******`, not as the slice or the length of the mask.
pub(super) fn masked_twins(
    templates: &mut Templates,
    vars: &[(String, TemplateId)],
    forward: &[StepTemplates],
    guide: &[StepTemplates],
    secret: &HashSet<String>,
) -> HashMap<TemplateId, TemplateId> {
    // Not the `expect` patterns: those are checked as regular expressions,
    // and a masked one must still be one (`{{ pw | regex_escape }}`).
    let patterns: HashSet<TemplateId> = forward
        .iter()
        .chain(guide)
        .flat_map(|t| t.expect_stdout.into_iter().chain(t.expect_stdout_not))
        .collect();
    let ids: Vec<TemplateId> = (vars.iter().map(|(_, id)| *id))
        .chain(forward.iter().chain(guide).flat_map(StepTemplates::ids))
        .filter(|id| !patterns.contains(id))
        .collect();
    ids.into_iter()
        .filter_map(|id| Some((id, templates.add_masked(id, secret, MASK)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::SourceFile;
    use crate::load::{inventory_from_source, runbook_from_source};

    const RUNBOOK: &str = r#"
name: transformed
hosts: app
params:
  pw: { secret: true }
vars:
  loud: "{{ pw | upper }}"
  shout: "{{ loud }}!"
  plain: "not secret"
steps:
  - name: through vars
    run: "echo {{ shout }} {{ plain }}"
    check: "test {{ loud | length }} -gt 0"
    rollback: "echo {{ plain }}"
  - name: print it
    run: "echo {{ pw[1:] }}"
    capture: printed
  - name: through a capture
    run: "echo {{ printed | lower }}"
    expect: { stdout: "{{ pw | regex_escape }}" }
"#;

    fn planner() -> Planner {
        let rb = runbook_from_source(SourceFile::new("rb.yaml", RUNBOOK)).unwrap();
        let inv = inventory_from_source(SourceFile::new(
            "inv.yaml",
            "name: t\ngroups:\n  app:\n    hosts:\n      a1: { address: 10.0.0.1 }\n",
        ))
        .unwrap();
        let opts = Options {
            operator: "tester".into(),
            local_user: "tester".into(),
            secrets: HashMap::from([("pw".to_string(), "hunter2zz".to_string())]),
            ..Options::default()
        };
        Planner::new(rb, inv, opts).unwrap()
    }

    /// An `expect` pattern is not masked by tags: masked, it is still a
    /// regular expression (the dry-run checks it).
    #[test]
    fn a_pattern_reading_a_secret_still_plans() {
        let plan = planner().plan().unwrap();
        assert_eq!(plan.steps.len(), 3);
    }

    #[test]
    fn a_var_built_from_a_secret_and_a_capture_of_a_step_that_read_one_carry_it() {
        let p = planner();
        let names = |set: &HashSet<String>| {
            let mut v: Vec<String> = set.iter().cloned().collect();
            v.sort();
            v
        };
        assert_eq!(names(&p.secret_names), ["loud", "pw", "shout"]);
        assert_eq!(names(&p.from_secret), ["loud", "printed", "pw", "shout"]);
    }

    /// `HUNTER2ZZ!` is not the secret's value, so matching by value let it onto
    /// the command line: reading the var built from it is what sends it on stdin.
    #[test]
    fn a_text_reading_a_secret_through_vars_is_sent_on_stdin_whatever_it_renders_to() {
        let p = planner();
        for reveal in [Reveal::Real, Reveal::Masked] {
            let t = p
                .render(StepRef::Forward(0), Some("a1"), None, reveal, None)
                .unwrap();
            let command = t.command.unwrap();
            assert!(command.contains("eval \"$OPSRUN_RUN\""), "{command}");
            assert!(!command.contains("HUNTER"), "{command}");
            assert!(!command.contains("echo"), "{command}");
            let check = t.check.unwrap();
            assert!(check.contains("eval \"$OPSRUN_CHECK\""), "{check}");
            // A text that reads nothing secret stays on the command line.
            assert!(
                t.rollback[0].contains("echo 'not secret'")
                    || t.rollback[0].contains("echo not secret"),
                "{:?}",
                t.rollback
            );
            let lines = t.env_stdin.unwrap();
            match reveal {
                Reveal::Real => assert!(lines.contains("echo HUNTER2ZZ! not secret"), "{lines}"),
                // Masked whole, not as `upper` of the mask.
                Reveal::Masked => assert!(lines.contains("echo ****** not secret"), "{lines}"),
            }
        }
        for step in [1, 2] {
            let t = p
                .render(StepRef::Forward(step), Some("a1"), None, Reveal::Real, None)
                .unwrap();
            let command = t.command.unwrap();
            assert!(
                command.contains("eval \"$OPSRUN_RUN\""),
                "step {step}: {command}"
            );
        }
    }

    /// `cwd:` has no stdin form: a var built from a secret is refused there
    /// however it transforms it, by `opsrun check` as by the planner.
    #[test]
    fn a_var_built_from_a_transformed_secret_is_refused_in_cwd() {
        let rb = RUNBOOK.replace(
            "  - name: print it\n",
            "  - name: in a dir\n    cwd: \"/srv/{{ shout | lower }}\"\n    run: \"true\"\n  - name: print it\n",
        );
        let rb = runbook_from_source(SourceFile::new("rb.yaml", rb)).unwrap();
        let e = check_templates(&rb).unwrap_err().to_string();
        assert!(
            e.contains("`cwd` reads `shout` (built from a secret)"),
            "{e}"
        );
        // A slice is a read too (minijinja's own count of names misses it).
        let rb = RUNBOOK.replace(
            "  - name: print it\n",
            "  - name: in a dir\n    cwd: \"/srv/{{ pw[1:] }}\"\n    run: \"true\"\n  - name: print it\n",
        );
        let rb = runbook_from_source(SourceFile::new("rb.yaml", rb)).unwrap();
        let e = check_templates(&rb).unwrap_err().to_string();
        assert!(e.contains("`cwd` reads secret `pw`"), "{e}");
    }
}
