//! A fleet of real OpenSSH servers on loopback for integration tests.
//!
//! Each simulated host is its own `/usr/sbin/sshd -D -e` on 127.0.0.N (N = 2, 3, …) and
//! a free port, with its own ed25519 host key. Clients log in as the unprivileged
//! `opsrun-test` user (shell `/bin/sh`): root's `.bashrc` on these machines adds
//! 120–300 ms to every command. The generated ssh_config pins known_hosts, the client
//! key and strict checking, so nothing from `~/.ssh` leaks in.
//!
//! Also the inventories that reach the fleet ([`ssh_inventory`], [`ssh_section`],
//! the one [`host_entry`]), and commands run on its hosts ([`ssh`], [`pids_with`]).
//!
//! ```ignore
//! use crate::support::fleet::SshFleet;
//!
//! let fleet = SshFleet::start(3);
//! let eps = fleet.endpoints(); // Vec<opsrun::transport::Endpoint>, hosts h1..h3
//! let dir = fleet.work_dir(0); // writable by the login user on host h1
//! ```

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use opsrun::transport::Endpoint;

/// The account every fleet host is logged into.
pub const TEST_USER: &str = "opsrun-test";
const SSHD: &str = "/usr/sbin/sshd";

/// How the fleet's hosts are started; `Default` is what `SshFleet::start` uses.
#[derive(Debug, Clone, Default)]
pub struct FleetOptions {
    /// Runs each sshd in its own PID namespace with its own `/proc`, so `pgrep` on one
    /// host sees only that host's processes (as on separate machines), and whatever a
    /// test started there dies with its sshd.
    pub pid_namespace: bool,
    /// Directories, relative to each host's work dir, put before the system PATH of
    /// every session (sshd `SetEnv`): how tests put simulated tools first in PATH for
    /// the login user without the runbook knowing.
    pub path_prepend: Vec<String>,
}

pub struct SshFleet {
    root: tempfile::TempDir,
    hosts: Vec<FleetHost>,
    ssh_config: PathBuf,
    known_hosts: PathBuf,
    client_key: PathBuf,
}

struct FleetHost {
    name: String,
    address: String,
    port: u16,
    dir: PathBuf,
    work_dir: PathBuf,
    host_key: PathBuf,
    log: PathBuf,
    sshd: Option<Child>,
    opts: FleetOptions,
}

impl SshFleet {
    /// Starts `n` sshd instances (hosts `h1`..`hN`) and waits until each accepts
    /// connections. Panics with an explanation if the machine cannot run them.
    pub fn start(n: usize) -> SshFleet {
        SshFleet::start_with(n, FleetOptions::default())
    }

    /// Like `start`, with per-host isolation and environment options.
    pub fn start_with(n: usize, opts: FleetOptions) -> SshFleet {
        assert!((1..=200).contains(&n), "fleet size must be 1..=200");
        preflight();
        let user = ensure_test_user();

        let root = tempfile::Builder::new()
            .prefix("opsrun-fleet-")
            .tempdir()
            .expect("create fleet temp dir");
        // The login user must reach authorized_keys and its work dirs.
        set_mode(root.path(), 0o755);
        let rootp = root.path().to_path_buf();

        let client_dir = rootp.join("client");
        fs::create_dir(&client_dir).unwrap();
        set_mode(&client_dir, 0o700);
        let client_key = client_dir.join("id_ed25519");
        keygen(&client_key, "opsrun-test-client");
        let authorized = rootp.join("authorized_keys");
        fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
        set_mode(&authorized, 0o644);

        let mut hosts = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("h{}", i + 1);
            let address = format!("127.0.0.{}", i + 2);
            let dir = rootp.join(&name);
            fs::create_dir(&dir).unwrap();
            set_mode(&dir, 0o755);
            let key_dir = dir.join("keys");
            fs::create_dir(&key_dir).unwrap();
            set_mode(&key_dir, 0o700);
            let host_key = key_dir.join("ssh_host_ed25519_key");
            keygen(&host_key, &format!("opsrun-test-{name}"));
            let work_dir = dir.join("work");
            fs::create_dir(&work_dir).unwrap();
            std::os::unix::fs::chown(&work_dir, Some(user.0), Some(user.1)).unwrap();
            set_mode(&work_dir, 0o755);
            let log = dir.join("sshd.log");
            let mut host = FleetHost {
                name,
                address,
                port: 0,
                dir,
                work_dir,
                host_key,
                log,
                sshd: None,
                opts: opts.clone(),
            };
            host.launch(&rootp, None);
            hosts.push(host);
        }

        let known_hosts = rootp.join("known_hosts");
        let ssh_config = rootp.join("ssh_config");
        let fleet = SshFleet {
            root,
            hosts,
            ssh_config,
            known_hosts,
            client_key,
        };
        fleet.write_known_hosts(&[]);
        fs::write(
            &fleet.ssh_config,
            format!(
                "Host *\n\
                 \x20 User {TEST_USER}\n\
                 \x20 UserKnownHostsFile {kh}\n\
                 \x20 GlobalKnownHostsFile /dev/null\n\
                 \x20 StrictHostKeyChecking yes\n\
                 \x20 IdentityFile {key}\n\
                 \x20 IdentitiesOnly yes\n\
                 \x20 BatchMode yes\n\
                 \x20 ConnectTimeout 10\n",
                kh = fleet.known_hosts.display(),
                key = fleet.client_key.display(),
            ),
        )
        .unwrap();
        fleet
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// The fleet's temp dir (removed on drop).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The generated client config (`-F`): user, key, known_hosts, strict checking.
    pub fn ssh_config(&self) -> &Path {
        &self.ssh_config
    }

    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    pub fn name(&self, i: usize) -> &str {
        &self.hosts[i].name
    }

    pub fn address(&self, i: usize) -> &str {
        &self.hosts[i].address
    }

    pub fn port(&self, i: usize) -> u16 {
        self.hosts[i].port
    }

    /// A directory on host `i` owned by the login user.
    pub fn work_dir(&self, i: usize) -> &Path {
        &self.hosts[i].work_dir
    }

    /// How the planner would describe host `i`: address, port, user and the fleet's
    /// ssh_config as `config_file`.
    pub fn endpoint(&self, i: usize) -> Endpoint {
        let h = &self.hosts[i];
        let mut ep = Endpoint::ssh(h.name.clone(), h.address.clone());
        ep.port = Some(h.port);
        ep.user = Some(TEST_USER.to_string());
        ep.config_file = Some(self.ssh_config.clone());
        ep.connect_timeout = Some(Duration::from_secs(10));
        ep
    }

    pub fn endpoints(&self) -> Vec<Endpoint> {
        (0..self.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Host `i`'s line for a known_hosts file (`[addr]:port ssh-ed25519 AAAA…`).
    pub fn known_hosts_line(&self, i: usize) -> String {
        let h = &self.hosts[i];
        let public = fs::read_to_string(h.host_key.with_extension("pub")).unwrap();
        let mut fields = public.split_whitespace();
        let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
        format!("[{}]:{} {kind} {key}", h.address, h.port)
    }

    /// Removes host `i` from the fleet's known_hosts, so its key becomes unknown.
    pub fn forget_host_key(&self, i: usize) {
        self.write_known_hosts(&[i]);
    }

    /// Gives host `i` a new host key (restarting its sshd on the same port) while the
    /// known_hosts file keeps the old one: the "host key has changed" situation.
    pub fn regenerate_host_key(&mut self, i: usize) {
        let root = self.root.path().to_path_buf();
        let h = &mut self.hosts[i];
        h.stop();
        fs::remove_file(&h.host_key).unwrap();
        fs::remove_file(h.host_key.with_extension("pub")).unwrap();
        keygen(&h.host_key, &format!("opsrun-test-{}-new", h.name));
        let port = h.port;
        h.launch(&root, Some(port));
    }

    /// What host `i`'s sshd wrote to stderr so far (for assertion messages).
    // Kept for debugging a failing fleet test; no assertion prints it today.
    #[allow(dead_code)]
    pub fn sshd_log(&self, i: usize) -> String {
        fs::read_to_string(&self.hosts[i].log).unwrap_or_default()
    }

    fn write_known_hosts(&self, skip: &[usize]) {
        let mut text = String::new();
        for i in (0..self.len()).filter(|i| !skip.contains(i)) {
            text.push_str(&self.known_hosts_line(i));
            text.push('\n');
        }
        fs::write(&self.known_hosts, text).unwrap();
    }
}

impl Drop for SshFleet {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            h.stop();
        }
    }
}

impl FleetHost {
    /// Starts sshd on a free port (or on `fixed_port`), retrying when another process
    /// grabs the port between probing and binding.
    fn launch(&mut self, root: &Path, fixed_port: Option<u16>) {
        let attempts = if fixed_port.is_some() { 1 } else { 5 };
        for _ in 0..attempts {
            let port = fixed_port.unwrap_or_else(|| free_port(&self.address));
            let config = self.dir.join("sshd_config");
            let set_env = if self.opts.path_prepend.is_empty() {
                String::new()
            } else {
                let dirs: Vec<String> = self
                    .opts
                    .path_prepend
                    .iter()
                    .map(|d| self.work_dir.join(d).display().to_string())
                    .collect();
                format!(
                    "SetEnv PATH={}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
                    dirs.join(":")
                )
            };
            fs::write(
                &config,
                set_env
                    + &format!(
                        "ListenAddress {addr}:{port}\n\
                     HostKey {key}\n\
                     PidFile {dir}/sshd.pid\n\
                     AuthorizedKeysFile {root}/authorized_keys\n\
                     AllowUsers {TEST_USER}\n\
                     PermitRootLogin no\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     PrintMotd no\n\
                     MaxSessions 64\n\
                     MaxStartups 64\n",
                        addr = self.address,
                        key = self.host_key.display(),
                        dir = self.dir.display(),
                        root = root.display(),
                    ),
            )
            .unwrap();
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .unwrap();
            let mut cmd = if self.opts.pid_namespace {
                // --kill-child: killing `unshare` takes down sshd (PID 1 of the
                // namespace) and with it every process started on this host.
                let mut c = Command::new("unshare");
                c.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
                    .arg(SSHD);
                c
            } else {
                Command::new(SSHD)
            };
            let mut child = cmd
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                // Own process group, so a Ctrl-C of `cargo test` does not race Drop.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {SSHD}: {e}"));
            if wait_listening(&self.address, port, &mut child) {
                // A new host on this port is a new machine: a lock an earlier test's
                // killed run left for the port (locks are keyed by it, and these
                // hosts share /tmp) is not this host's.
                let _ = fs::remove_dir_all(format!("/tmp/opsrun-lock-{port}"));
                self.port = port;
                self.sshd = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "sshd for {} on {} did not start; its log:\n{}",
            self.name,
            self.address,
            fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.sshd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_listening(address: &str, port: u16, child: &mut Child) -> bool {
    let addr: SocketAddr = format!("{address}:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A port that is free right now on `address`; also used by tests that need a port
/// with nothing listening.
pub fn free_port(address: &str) -> u16 {
    TcpListener::bind((address, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on {address}: {e}"))
}

fn preflight() {
    if !Path::new(SSHD).exists() {
        panic!(
            "{SSHD} not found: these tests start real OpenSSH servers. Run the test \
             command from README.md (it installs openssh-server), or \
             `apt-get install -y openssh-server` first."
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "the sshd fleet needs root (it starts sshd and logs in as the {TEST_USER} \
             user); run the tests as root, as CI does"
        );
    }
    fs::create_dir_all("/run/sshd").expect("mkdir -p /run/sshd");
}

/// Creates the login user once per machine; a lock file serialises test binaries
/// that run at the same time. Returns (uid, gid).
fn ensure_test_user() -> (u32, u32) {
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/opsrun-test-user.lock")
        .expect("open user lock file");
    // SAFETY: a valid open fd; the lock is released when `lock` is closed.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());

    if !run_ok(Command::new("id").arg("-u").arg(TEST_USER)) {
        run(Command::new("useradd")
            .args(["-m", "-s", "/bin/sh"])
            .arg(TEST_USER));
    }
    // With UsePAM no, sshd refuses accounts whose password field is locked ("!").
    let shadow = output(Command::new("getent").arg("shadow").arg(TEST_USER));
    let locked = match shadow.split(':').nth(1) {
        Some(password) => password.starts_with('!'),
        None => true,
    };
    if locked {
        run(Command::new("usermod").args(["-p", "*"]).arg(TEST_USER));
    }
    let uid = output(Command::new("id").arg("-u").arg(TEST_USER));
    let gid = output(Command::new("id").arg("-g").arg(TEST_USER));
    drop(lock);
    (uid.trim().parse().unwrap(), gid.trim().parse().unwrap())
}

fn keygen(path: &Path, comment: &str) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path));
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn run_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        let _ = std::io::stderr().write_all(&out.stderr);
        panic!("{cmd:?} failed with {}", out.status);
    }
}

fn output(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------
// Inventories for the fleet

pub fn yaml_str(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).unwrap()
}

/// `inventories/lab.yaml` reaching fleet hosts as the login user, `as:` through sudo.
pub fn ssh_inventory(fleet: &SshFleet, confirm: &str, groups: &str) -> String {
    format!(
        "name: lab\n\
         confirm: {confirm}\n\
         ssh:\n\
         \x20 user: {TEST_USER}\n\
         \x20 become: sudo\n\
         \x20 config_file: {}\n\
         \x20 known_hosts_file: {}\n\
         \x20 connect_timeout: 10s\n\
         groups:\n{groups}",
        yaml_str(fleet.ssh_config().to_string_lossy()),
        yaml_str(fleet.known_hosts().to_string_lossy()),
    )
}

/// An inventory's top-level `ssh:` section for the fleet (the login user is per host).
pub fn ssh_section(fleet: &SshFleet, become_sudo: bool) -> String {
    format!(
        "ssh:\n  config_file: {}\n  known_hosts_file: {}\n{}",
        fleet.ssh_config().display(),
        fleet.known_hosts().display(),
        if become_sudo { "  become: sudo\n" } else { "" }
    )
}

/// Whether a host entry carries the fleet's client config itself.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ssh {
    /// The inventory has an `ssh:` section ([`ssh_inventory`], [`ssh_section`]).
    FromInventory,
    /// No `ssh:` section: the entry names `config_file` and `known_hosts_file`.
    PerHost,
}

/// One entry of a group's `hosts:` (indented for it): fleet host `i` as `name`,
/// with its address, port and login user, and `vars` as `key: value` lines (values
/// are YAML as written).
pub fn host_entry(
    fleet: &SshFleet,
    i: usize,
    name: &str,
    ssh: Ssh,
    vars: &[(&str, String)],
) -> String {
    let mut e = format!(
        "      {name}:\n        address: {}\n        port: {}\n        user: {TEST_USER}\n",
        fleet.address(i),
        fleet.port(i),
    );
    if ssh == Ssh::PerHost {
        e.push_str(&format!(
            "        ssh: {{ config_file: {}, known_hosts_file: {} }}\n",
            fleet.ssh_config().display(),
            fleet.known_hosts().display()
        ));
    }
    if !vars.is_empty() {
        e.push_str("        vars:\n");
        for (k, v) in vars {
            e.push_str(&format!("          {k}: {v}\n"));
        }
    }
    e
}

/// Group `app` with every fleet host, named `web1`, `web2`, …, each with its writable dir as `work`.
pub fn app_group(fleet: &SshFleet) -> String {
    let mut g = String::from("  app:\n    hosts:\n");
    for i in 0..fleet.len() {
        g.push_str(&host_entry(
            fleet,
            i,
            &format!("web{}", i + 1),
            Ssh::FromInventory,
            &[("work", yaml_str(fleet.work_dir(i).to_string_lossy()))],
        ));
    }
    g
}

// ---------------------------------------------------------------------------------
// Commands on the (local) hosts

/// Runs a command on fleet host `i` through the fleet's own ssh client config.
pub fn ssh(fleet: &SshFleet, i: usize, command: &str) -> Output {
    Command::new("ssh")
        .arg("-F")
        .arg(fleet.ssh_config())
        .arg("-p")
        .arg(fleet.port(i).to_string())
        .arg(fleet.address(i))
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh")
}

/// Pids whose command line contains `needle` (argv joined with spaces).
pub fn pids_with(needle: &str) -> Vec<u32> {
    cmdlines()
        .into_iter()
        .filter(|(_, line)| line.contains(needle))
        .map(|(pid, _)| pid)
        .collect()
}

/// Every process's command line on this machine, argv joined with spaces.
pub fn cmdlines() -> Vec<(u32, String)> {
    let mut all = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        all.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
    }
    all
}

/// `chown -R OWNER PATH`.
pub fn chown_r(path: &Path, owner: &str) {
    run(Command::new("chown").arg("-R").arg(owner).arg(path));
}

/// Gives `path` (recursively) to the login user, so runbooks can change it.
pub fn chown_to_test_user(path: &Path) {
    chown_r(path, &format!("{TEST_USER}:{TEST_USER}"));
}
