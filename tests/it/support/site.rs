//! A site of real sshd hosts (`fleet`) running a simulated service, `svc`, that keeps
//! its state in a file and appends every call to one event log shared by all hosts:
//! tests assert the order of what happened across hosts, not only exit codes. And
//! what a test needs to stop opsrun mid-step and clean up after it.

use super::fleet::{app_group, pids_with, ssh_inventory, SshFleet};
use super::lab::Lab;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// The fleet's hosts, each with a running `svc` and an `app.conf`, logging to one file.
pub struct Site {
    pub fleet: SshFleet,
    pub events: PathBuf,
}

impl Site {
    pub fn start(n: usize) -> Site {
        let fleet = SshFleet::start(n);
        let events = fleet.root().join("events.log");
        fs::write(&events, "").unwrap();
        // Every host's login user appends to it; the fleet root is root's.
        fs::set_permissions(&events, fs::Permissions::from_mode(0o666)).unwrap();
        let site = Site { fleet, events };
        for i in 0..n {
            let host = format!("web{}", i + 1);
            let work = site.fleet.work_dir(i).display().to_string();
            site.put(
                i,
                "svc",
                &format!(
                    "#!/bin/sh\n\
                     # The app on {host}: start|stop|status keep its state in a file;\n\
                     # `event WHAT` only records. Everything but status goes to the event log.\n\
                     case \"$1\" in\n\
                     \x20 start) touch {work}/app.running ;;\n\
                     \x20 stop) rm -f {work}/app.running ;;\n\
                     \x20 status) test -e {work}/app.running; exit $? ;;\n\
                     \x20 event) shift ;;\n\
                     \x20 *) echo \"usage: svc start|stop|status|event WHAT\" >&2; exit 2 ;;\n\
                     esac\n\
                     echo \"{host} $*\" >> {events}\n",
                    events = site.events.display()
                ),
                0o755,
            );
            site.put(i, "app.running", "", 0o644);
            site.put(i, "app.conf", &format!("{host} release 1\n"), 0o644);
        }
        site
    }

    /// Writes a file on host `i`, owned by the login user (the runbooks change them).
    pub fn put(&self, i: usize, rel: &str, text: &str, mode: u32) {
        let work = self.fleet.work_dir(i);
        let meta = fs::metadata(work).unwrap();
        let path = work.join(rel);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid())).unwrap();
    }

    pub fn file(&self, i: usize, rel: &str) -> PathBuf {
        self.fleet.work_dir(i).join(rel)
    }

    pub fn read(&self, i: usize, rel: &str) -> String {
        fs::read_to_string(self.file(i, rel)).unwrap_or_else(|e| panic!("{rel} on host {i}: {e}"))
    }

    /// Files in host `i`'s work dir whose name starts with `prefix`.
    pub fn files_starting(&self, i: usize, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.fleet.work_dir(i))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        names
    }

    /// The event log as (what, hosts) groups: consecutive lines with the same action.
    /// Hosts within a step run in parallel, so their order inside a group is free.
    pub fn event_groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for line in fs::read_to_string(&self.events).unwrap().lines() {
            let (host, what) = line.split_once(' ').unwrap();
            match groups.last_mut() {
                Some((w, hosts)) if w == what => hosts.push(host.to_string()),
                _ => groups.push((what.to_string(), vec![host.to_string()])),
            }
        }
        for (_, hosts) in &mut groups {
            hosts.sort();
        }
        groups
    }

    pub fn clear_events(&self) {
        fs::write(&self.events, "").unwrap();
    }

    pub fn lab(&self, runbooks: &[(&str, &str)]) -> Lab {
        let lab = Lab::new();
        lab.write(
            "inventories/lab.yaml",
            &ssh_inventory(&self.fleet, "none", &app_group(&self.fleet)),
        );
        for (name, text) in runbooks {
            lab.write(&format!("runbooks/{name}.yaml"), text);
        }
        lab
    }
}

pub fn groups(expected: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    expected
        .iter()
        .map(|(w, hosts)| (w.to_string(), hosts.iter().map(|h| h.to_string()).collect()))
        .collect()
}

pub fn journal_events(dir: &Path) -> Vec<Value> {
    fs::read_to_string(dir.join("journal.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad journal line {l:?}: {e}")))
        .collect()
}

/// Waits until the journal in `runs/` shows `step` started on `hosts` hosts.
pub fn wait_for_target_started(lab: &Lab, child: &mut Child, step: &str, hosts: usize) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("opsrun ended ({status}) before `{step}` started");
        }
        let dirs: Vec<PathBuf> = fs::read_dir(lab.path().join("runs"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        for d in dirs {
            let Ok(text) = fs::read_to_string(d.join("journal.jsonl")) else {
                continue;
            };
            let started = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|e| e["event"] == "target_started" && e["step"] == step)
                .count();
            if started >= hosts {
                return d;
            }
        }
        assert!(Instant::now() < deadline, "`{step}` never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills what a SIGKILLed opsrun left running: its remote commands (`needle`) and
/// its ssh masters (they name the fleet's ssh_config).
pub fn kill_leftovers(fleet: &SshFleet, needle: &str) {
    // The masters first: one could still be starting a remote command.
    let config = fleet.ssh_config().display().to_string();
    for pid in pids_with(&config).into_iter().chain(pids_with(needle)) {
        // SAFETY: kill(2) on pids of processes this test's opsrun started.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

impl Site {
    /// Waits until the event log has `n` lines `HOST what`, while `child` runs.
    pub fn wait_for_event(&self, child: &mut Child, what: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("opsrun ended ({status}) before `{what}` happened {n} times");
            }
            if self.count(what) >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`{what}` never happened {n} times"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many times `what` is in the event log, on any host.
    pub fn count(&self, what: &str) -> usize {
        fs::read_to_string(&self.events)
            .unwrap()
            .lines()
            .filter(|l| l.split_once(' ').is_some_and(|(_, w)| w == what))
            .count()
    }

    /// How many times host `host` logged `what`.
    pub fn count_on(&self, host: &str, what: &str) -> usize {
        fs::read_to_string(&self.events)
            .unwrap()
            .lines()
            .filter(|l| *l == format!("{host} {what}"))
            .count()
    }
}
