//! What a rollback undoes when a run (or a rollback) was stopped part way, end to
//! end against real sshd hosts that log every call (`support::site`): the steps in
//! flight are undone too, an undo that finished is never run again, and a failed
//! undo stops the undos of earlier steps on its host (issue 11, points 3 and 4).

use crate::support::fleet::pids_with;
use crate::support::site::{groups, kill_leftovers, Site};
use std::process::Stdio;

/// A `sleep` whose length marks this test's remote command in /proc.
fn marked_sleep(base: u32) -> String {
    format!("sleep {}", base + std::process::id() % 1_000_000)
}

#[test]
fn a_step_in_flight_when_the_run_was_killed_is_undone_by_rollback_and_listed_as_in_flight() {
    let site = Site::start(2);
    let sleep = marked_sleep(7_100_000);
    let book = format!(
        "name: flight\nhosts: app\nsteps:\n\
         \x20 - name: Prepare\n    run: \"{{{{ work }}}}/svc event do-prepare\"\n    rollback: \"{{{{ work }}}}/svc event undo-prepare\"\n\
         \x20 - name: Long\n    run: \"{{{{ work }}}}/svc event do-long && {sleep}\"\n    rollback: \"{{{{ work }}}}/svc event undo-long\"\n\
         \x20 - name: After\n    run: \"{{{{ work }}}}/svc event do-after\"\n"
    );
    let lab = site.lab(&[("flight", &book)]);
    let mut child = lab
        .command(&["flight", "--env", "lab", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    site.wait_for_event(&mut child, "do-long", 2);
    child.kill().unwrap();
    child.wait().unwrap();
    // What the killed run left running on the hosts, and its stale locks: the
    // rollback of that run kills the one and takes the other over itself.
    let id = lab.runs_table()[0]["id"].to_string();

    // The preview names the in-flight step on each host, in its place: first.
    let undo = lab.run(&["rollback", &id, "--yes"], &[], None);
    undo.expect_code(0);
    let sleeping = pids_with(&sleep)
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\0"))
        })
        .count();
    kill_leftovers(&site.fleet, &sleep);
    assert_eq!(
        sleeping, 0,
        "the rollback killed what the stopped run left running"
    );
    assert!(
        undo.everything().contains(
            "[2] Long on web1 (in flight when the run stopped), web2 (in flight when the run stopped)"
        ),
        "{}",
        undo.everything()
    );
    // The gate asks about it too.
    let gate = &undo.events("gate")[0];
    assert_eq!(
        gate["prompt"],
        format!(
            "Roll back run `{id}` (flight on `lab`): undo 2 steps (1 in flight when the run \
             stopped) on web1, web2?"
        ),
        "{gate}"
    );
    assert_eq!(
        site.event_groups(),
        groups(&[
            ("do-prepare", &["web1", "web2"]),
            ("do-long", &["web1", "web2"]),
            ("undo-long", &["web1", "web2"]),
            ("undo-prepare", &["web1", "web2"]),
        ])
    );
    let (outcome, message) = undo.outcome();
    assert_eq!(outcome, "succeeded");
    assert_eq!(
        message,
        format!(
            "rolled back 2 steps of run {id}: undone on web1, web2: `Long` (in flight when the \
             run stopped), `Prepare`"
        )
    );
    assert!(
        undo.log_md()
            .contains("| In flight when the run stopped | \\`Long\\` on web1, web2: undone here |"),
        "{}",
        undo.log_md()
    );

    // Nothing is left: a second rollback undoes nothing.
    let again = lab.run(&["rollback", &id, "--yes"], &[], None);
    again.expect_code(0);
    let sleeping = pids_with(&sleep)
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\0"))
        })
        .count();
    kill_leftovers(&site.fleet, &sleep);
    assert_eq!(
        sleeping, 0,
        "the rollback killed what the stopped run left running"
    );
    assert_eq!(
        again.outcome().1,
        format!("run {id} has no completed step left to undo")
    );
    assert_eq!(site.count("undo-long") + site.count("undo-prepare"), 4);
}

#[test]
fn a_rollback_killed_half_way_then_run_again_runs_each_undo_exactly_once() {
    let site = Site::start(2);
    let sleep = marked_sleep(7_200_000);
    // Two's undo hangs (and then fails, changing nothing) while `block` exists.
    let book = format!(
        "name: halfway\nhosts: app\nsteps:\n\
         \x20 - name: One\n    run: \"{{{{ work }}}}/svc event one\"\n    rollback: \"{{{{ work }}}}/svc event undo-one\"\n\
         \x20 - name: Two\n    run: \"{{{{ work }}}}/svc event two\"\n    rollback: \"if [ -e {{{{ work }}}}/block ]; then {{{{ work }}}}/svc event undo-two-blocked; {sleep}; exit 1; fi; {{{{ work }}}}/svc event undo-two\"\n\
         \x20 - name: Three\n    run: \"{{{{ work }}}}/svc event three\"\n    rollback: \"{{{{ work }}}}/svc event undo-three\"\n\
         \x20 - name: Four\n    run: \"false\"\n    on_failure: abort\n"
    );
    let lab = site.lab(&[("halfway", &book)]);
    let run = lab.run(&["halfway", "--env", "lab", "--yes"], &[], None);
    run.expect_code(1);
    let id = run.id();
    for i in 0..2 {
        site.put(i, "block", "", 0o644);
    }

    // The first rollback undoes Three, then is killed while Two's undo runs.
    let mut child = lab
        .command(&["rollback", &id, "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    site.wait_for_event(&mut child, "undo-two-blocked", 2);
    child.kill().unwrap();
    child.wait().unwrap();
    // The killed rollback's undo still hangs on the hosts: the next rollback kills it.
    for i in 0..2 {
        std::fs::remove_file(site.file(i, "block")).unwrap();
    }

    // Run again: only what is left. Two's undo never finished, so it runs again.
    let again = lab.run(&["rollback", &id, "--yes"], &[], None);
    again.expect_code(0);
    assert_eq!(
        site.event_groups(),
        groups(&[
            ("one", &["web1", "web2"]),
            ("two", &["web1", "web2"]),
            ("three", &["web1", "web2"]),
            ("undo-three", &["web1", "web2"]),
            ("undo-two-blocked", &["web1", "web2"]),
            ("undo-two", &["web1", "web2"]),
            ("undo-one", &["web1", "web2"]),
        ])
    );
    for host in ["web1", "web2"] {
        for undo in ["undo-one", "undo-two", "undo-three"] {
            assert_eq!(site.count_on(host, undo), 1, "{undo} on {host}");
        }
    }
    assert!(
        !again.everything().contains("[3] Three"),
        "{}",
        again.everything()
    );
    let (_, message) = again.outcome();
    assert_eq!(
        message,
        format!("rolled back 2 steps of run {id}: undone on web1, web2: `Two`, `One`")
    );
}

#[test]
fn a_failing_undo_stops_the_earlier_undos_on_its_host_and_a_later_rollback_retries_from_it() {
    let site = Site::start(2);
    // Two's undo fails on a host where `broken` exists (before it changes anything).
    let book = r#"name: brittle
hosts: app
steps:
  - name: One
    run: "{{ work }}/svc event one"
    rollback: "{{ work }}/svc event undo-one"
  - name: Two
    run: "{{ work }}/svc event two"
    rollback: "test ! -e {{ work }}/broken && {{ work }}/svc event undo-two"
  - name: Three
    run: "{{ work }}/svc event three"
    rollback: "{{ work }}/svc event undo-three"
  - name: Four
    run: "false"
"#;
    let lab = site.lab(&[("brittle", book)]);
    site.put(0, "broken", "", 0o644);
    let run = lab.run(&["brittle", "--env", "lab", "--yes"], &[], None);
    run.expect_code(1);
    let id = run.id();
    // web1: Two's undo failed, so One's did not run; web2 was undone whole.
    assert_eq!(
        site.event_groups(),
        groups(&[
            ("one", &["web1", "web2"]),
            ("two", &["web1", "web2"]),
            ("three", &["web1", "web2"]),
            ("undo-three", &["web1", "web2"]),
            ("undo-two", &["web2"]),
            ("undo-one", &["web2"]),
        ])
    );
    let (_, message) = run.outcome();
    assert!(
        message.ends_with(&format!(
            "ROLLBACK INCOMPLETE: not restored: `Two` on web1; still applied: on web1: `Two`, \
             `One`; undone on web1: `Three`; on web2: `Three`, `Two`, `One`; `opsrun rollback \
             {id}` retries from the failed undo"
        )),
        "{message}"
    );
    assert!(
        run.stderr.contains("`One` not run on web1"),
        "{}",
        run.stderr
    );
    // The log says it too (in a code span: the message may quote a host).
    assert!(
        run.log_md()
            .contains("still applied: on web1: `Two`, `One`"),
        "{}",
        run.log_md()
    );

    // The cause fixed, `opsrun rollback` retries from the failed undo, in order, on web1 only.
    std::fs::remove_file(site.file(0, "broken")).unwrap();
    site.clear_events();
    let back = lab.run(&["rollback", &id, "--yes"], &[], None);
    back.expect_code(0);
    assert_eq!(
        site.event_groups(),
        groups(&[("undo-two", &["web1"]), ("undo-one", &["web1"])])
    );
    assert_eq!(
        back.outcome().1,
        format!("rolled back 2 steps of run {id}: undone on web1: `Two`, `One`")
    );
    let done = lab.run(&["rollback", &id, "--yes"], &[], None);
    done.expect_code(0);
    assert_eq!(site.event_groups().len(), 2);
}
