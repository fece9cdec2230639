//! The Tomcat runbooks (tomcat-start, -stop, -restart, -status) against a real
//! Tomcat 10 from Debian (`apt-get install -y --no-install-recommends tomcat10`),
//! reached over a real sshd as the unprivileged login user. Each test runs a
//! private CATALINA_BASE on free ports, owned by that user.

use crate::support::{
    cli::Run,
    fleet::{chown_to_test_user, free_port, host_entry, Ssh, SshFleet},
    lab::{opsrun, scratch},
};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const CATALINA_HOME: &str = "/usr/share/tomcat10";

struct Tomcat {
    base: PathBuf,
    http_port: u16,
}

impl Tomcat {
    /// A private CATALINA_BASE in host 0's work dir: Debian's conf, an empty ROOT app.
    fn new(fleet: &SshFleet, name: &str) -> Tomcat {
        assert!(
            Path::new(CATALINA_HOME).join("bin/catalina.sh").exists(),
            "{CATALINA_HOME} not found: apt-get install -y --no-install-recommends tomcat10"
        );
        let base = fleet.work_dir(0).join(name);
        for d in ["conf", "logs", "temp", "work", "webapps/ROOT"] {
            fs::create_dir_all(base.join(d)).unwrap();
        }
        for e in fs::read_dir(Path::new(CATALINA_HOME).join("etc")).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                fs::copy(&p, base.join("conf").join(p.file_name().unwrap())).unwrap();
            }
        }
        fs::write(
            base.join("webapps/ROOT/index.html"),
            "<h1>opsrun test</h1>\n",
        )
        .unwrap();
        let http_port = free_port("127.0.0.1");
        let t = Tomcat { base, http_port };
        t.set_shutdown_port(free_port("127.0.0.1"));
        let xml = fs::read_to_string(t.base.join("conf/server.xml")).unwrap();
        let xml = xml.replacen(
            "<Connector port=\"8080\"",
            &format!("<Connector address=\"127.0.0.1\" port=\"{http_port}\""),
            1,
        );
        // Only the HTTP connector: the TLS one would need a keystore.
        let xml = match (xml.find("<Connector port=\"8443\""), xml.find("</Service>")) {
            (Some(a), Some(b)) if a < b => {
                let end = xml[a..].find("</Connector>").map(|e| a + e + 12).unwrap();
                format!("{}{}", &xml[..a], &xml[end..])
            }
            _ => xml,
        };
        fs::write(t.base.join("conf/server.xml"), xml).unwrap();
        chown_to_test_user(&t.base);
        t
    }

    /// Debian ships the shutdown port disabled (-1); the runbooks' graceful stop needs one.
    fn set_shutdown_port(&self, port: u16) {
        let path = self.base.join("conf/server.xml");
        let xml = fs::read_to_string(&path).unwrap();
        let start = xml.find("<Server port=\"").unwrap() + 14;
        let end = start + xml[start..].find('"').unwrap();
        fs::write(&path, format!("{}{port}{}", &xml[..start], &xml[end..])).unwrap();
    }

    fn inventory(&self, fleet: &SshFleet, dir: &Path) -> PathBuf {
        let inv = format!(
            "name: tomcat-test\nconfirm: none\ngroups:\n  tomcat:\n    hosts:\n{}",
            host_entry(
                fleet,
                0,
                fleet.name(0),
                Ssh::PerHost,
                &[
                    ("tomcat_home", CATALINA_HOME.to_string()),
                    ("tomcat_base", self.base.display().to_string()),
                    ("tomcat_http_port", self.http_port.to_string()),
                ]
            )
        );
        let path = dir.join("inventory.yaml");
        fs::write(&path, inv).unwrap();
        path
    }

    /// PIDs of this instance's JVM (its command line names the base).
    fn pids(&self) -> Vec<u32> {
        let needle = format!("-Dcatalina.base={} ", self.base.display());
        let mut pids = Vec::new();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.starts_with("/") && cmd.contains("java") && cmd.contains(&needle) {
                pids.push(pid);
            }
        }
        pids
    }

    fn http_answers(&self) -> bool {
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{}/", self.http_port))
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tomcat {
    /// A failed assertion must not leave a JVM behind: kill this instance's PIDs.
    fn drop(&mut self) {
        for pid in self.pids() {
            // SAFETY: kill(2) on a PID this test started; no memory is involved.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

fn run(dir: &Path, inv: &Path, args: &[&str]) -> Run {
    let mut all = vec![args[0], "-i", inv.to_str().unwrap()];
    all.extend_from_slice(&args[1..]);
    opsrun(dir, &all, &[])
}

#[test]
fn start_status_restart_and_stop_a_real_tomcat() {
    let fleet = SshFleet::start(1);
    let tomcat = Tomcat::new(&fleet, "tomcat-a");
    let dir = scratch();
    let inv = tomcat.inventory(&fleet, dir.path());
    let base = tomcat.base.display().to_string();

    // The dry-run shows the exact commands, the pgrep pattern that cannot match its own shell,
    // and that the start depends on what the first step finds.
    let dry = run(dir.path(), &inv, &["tomcat-start", "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    for needle in [
        "DRY RUN",
        &format!("[opsrun-test@h1]# pgrep -o -f -- '[-]Dcatalina.base={base} ' || true"),
        "(captures `tomcat_pid`)",
        "runs only if `tomcat_pid == ''`",
        &format!("export CATALINA_BASE={base}"),
        "/bin/startup.sh",
        "Server startup in",
        &format!("sport = :{}", tomcat.http_port),
    ] {
        assert!(
            dry.stdout.contains(needle),
            "dry-run lacks {needle:?}:\n{}",
            dry.stdout
        );
    }
    assert!(
        tomcat.pids().is_empty(),
        "a dry-run must not start anything"
    );

    let down = run(dir.path(), &inv, &["tomcat-status"]);
    assert_eq!(
        down.code, 1,
        "status of a stopped Tomcat must fail: {down:?}"
    );
    assert!(down.log_md().contains("process  FAIL"), "{down:?}");
    assert!(down.log_md().contains("port     FAIL"), "{down:?}");

    let start = run(dir.path(), &inv, &["tomcat-start", "--yes"]);
    assert_eq!(start.code, 0, "{start:?}");
    assert!(start.log_md().contains("Tomcat started"), "{start:?}");
    assert!(start.log_md().contains("Server startup in"), "{start:?}");
    assert!(tomcat.http_answers());
    let first = tomcat.pids();
    assert_eq!(first.len(), 1, "one JVM: {first:?}");

    let again = run(dir.path(), &inv, &["tomcat-start", "--yes"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(
        tomcat.pids(),
        first,
        "an already running Tomcat is left alone"
    );

    let status = run(dir.path(), &inv, &["tomcat-status"]);
    assert_eq!(status.code, 0, "{status:?}");
    for line in [
        "process  OK",
        "port     OK",
        "http     OK",
        "log      OK",
        "Apache Tomcat/10",
    ] {
        assert!(
            status.log_md().contains(line),
            "status lacks {line:?}: {status:?}"
        );
    }

    let restart = run(dir.path(), &inv, &["tomcat-restart", "--yes"]);
    assert_eq!(restart.code, 0, "{restart:?}");
    let second = tomcat.pids();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, first, "restart gives a new JVM");
    assert!(restart.log_md().contains("stopped after"), "{restart:?}");
    assert!(tomcat.http_answers());

    // A Tomcat that ignores shutdown.sh (here: its server.xml now names a port nothing
    // listens on) is killed by PID once the deadline passes.
    tomcat.set_shutdown_port(free_port("127.0.0.1"));
    let stop = run(
        dir.path(),
        &inv,
        &["tomcat-stop", "--yes", "-e", "deadline=2"],
    );
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(
        stop.log_md().contains(&format!("kill -9 {}", second[0])),
        "the exact PID is killed: {stop:?}"
    );
    assert!(tomcat.pids().is_empty(), "no JVM left");
    assert!(!tomcat.http_answers());
}

#[test]
fn a_start_that_logs_errors_is_rolled_back() {
    let fleet = SshFleet::start(1);
    let tomcat = Tomcat::new(&fleet, "tomcat-b");
    // A deployment descriptor cut short, as a broken package leaves it.
    let web_inf = tomcat.base.join("webapps/ROOT/WEB-INF");
    fs::create_dir_all(&web_inf).unwrap();
    fs::write(
        web_inf.join("web.xml"),
        "<?xml version=\"1.0\"?>\n<web-app>\n  <servlet>\n",
    )
    .unwrap();
    chown_to_test_user(&tomcat.base);
    let dir = scratch();
    let inv = tomcat.inventory(&fleet, dir.path());

    let r = run(
        dir.path(),
        &inv,
        &["tomcat-start", "--yes", "-e", "deadline=20"],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("Check the startup log"), "{r:?}");
    assert!(
        r.log_md().contains("errors logged during this start"),
        "{r:?}"
    );
    assert!(r.log_md().contains("SEVERE"), "{r:?}");
    assert!(r.stderr.contains("rolled back 1 step: undone on "), "{r:?}");
    assert!(
        tomcat.pids().is_empty(),
        "the rollback stopped the broken Tomcat"
    );
}
