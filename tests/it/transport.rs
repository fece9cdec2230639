//! The transports against real OpenSSH servers on loopback (see tests/it/support/fleet.rs)
//! and against local subprocesses.

use crate::support::fleet::{free_port, SshFleet, TEST_USER};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use opsrun::transport::{
    connect_all, Command, Connection, Endpoint, Stdin, Stream, TransportError,
};
use sha2::{Digest, Sha256};

async fn run(conn: &Connection, line: &str) -> opsrun::transport::Outcome {
    conn.exec(&Command::new(line), &mut |_, _| {})
        .await
        .unwrap_or_else(|e| panic!("exec {line:?}: {e}"))
}

async fn connect(ep: &Endpoint) -> Connection {
    Connection::connect(ep)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", ep.host))
}

fn random_file(dir: &Path, len: usize) -> (std::path::PathBuf, String) {
    // A cheap deterministic generator is enough: the point is non-repeating bytes.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ len as u64;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(len);
    let path = dir.join(format!("payload-{len}"));
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&data)
        .unwrap();
    (path, hex(&Sha256::digest(&data)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Processes whose command line mentions `needle`, by pid.
fn pids_mentioning(needle: &str) -> BTreeSet<u32> {
    let mut pids = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let is_ssh = cmdline
            .split(|b| *b == 0)
            .next()
            .is_some_and(|argv0| argv0 == b"ssh" || argv0.ends_with(b"/ssh"));
        if is_ssh
            && String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(needle)
        {
            pids.insert(pid);
        }
    }
    pids
}

fn master_pids(conn: &Connection) -> BTreeSet<u32> {
    let Connection::Ssh(ssh) = conn else {
        panic!("not an ssh connection")
    };
    pids_mentioning(&ssh.control_socket().to_string_lossy())
}

/// Whether `pid` no longer runs. A master is opsrun's own child now: once dead it
/// stays a zombie until its connection reaps it, which counts as gone here.
fn not_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_gone(pids: &BTreeSet<u32>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if pids.iter().all(|pid| not_running(*pid)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_all_in_parallel_and_exit_codes() {
    let fleet = SshFleet::start(3);
    let eps = fleet.endpoints();
    let conns: Vec<Connection> = connect_all(&eps, 3)
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    for (i, conn) in conns.iter().enumerate() {
        assert_eq!(conn.host(), fleet.name(i), "results keep input order");
        let who = run(conn, "id -un; echo $0").await;
        assert_eq!(
            String::from_utf8_lossy(&who.stdout),
            format!("{TEST_USER}\nsh\n")
        );
        for code in [0, 1, 42] {
            let out = run(conn, &format!("exit {code}")).await;
            assert_eq!(out.exit_code, Some(code), "on {}", fleet.name(i));
        }
        let missing = run(conn, "no-such-command-opsrun").await;
        assert_eq!(missing.exit_code, Some(127));
        assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
        let killed = run(conn, "kill -9 $$").await;
        assert_eq!(killed.exit_code, None, "killed by a signal: no exit code");
    }
    for conn in conns {
        conn.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_separate_and_streamed_live() {
    let fleet = SshFleet::start(1);
    let ssh = connect(&fleet.endpoint(0)).await;
    let local = connect(&Endpoint::local("control")).await;
    for conn in [&ssh, &local] {
        let start = Instant::now();
        let mut chunks: Vec<(Stream, Vec<u8>, Duration)> = Vec::new();
        let out = conn
            .exec(
                &Command::new("echo early; echo warn >&2; sleep 1; echo late; echo bad >&2"),
                &mut |stream, data| chunks.push((stream, data.to_vec(), start.elapsed())),
            )
            .await
            .unwrap();
        assert_eq!(out.exit_code, Some(0));
        assert_eq!(out.stdout, b"early\nlate\n");
        assert_eq!(out.stderr, b"warn\nbad\n");
        let joined = |s: Stream| -> Vec<u8> {
            chunks
                .iter()
                .filter(|c| c.0 == s)
                .flat_map(|c| c.1.clone())
                .collect()
        };
        assert_eq!(joined(Stream::Stdout), out.stdout);
        assert_eq!(joined(Stream::Stderr), out.stderr);
        let first = &chunks[0];
        assert!(
            first.2 < Duration::from_millis(800) && out.duration >= Duration::from_secs(1),
            "{}: first chunk at {:?} should arrive before the command ends ({:?})",
            conn.host(),
            first.2,
            out.duration
        );
        let tty = run(
            conn,
            "if [ -t 0 ] || [ -t 1 ] || [ -t 2 ]; then echo tty; else echo notty; fi",
        )
        .await;
        assert_eq!(
            tty.stdout,
            b"notty\n",
            "{}: commands get no tty",
            conn.host()
        );
    }
    ssh.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_bytes_and_streamed_file() {
    let fleet = SshFleet::start(2);
    let local_dir = tempfile::tempdir().unwrap();
    let (payload, sha) = random_file(local_dir.path(), 3 * 1024 * 1024 + 17);
    let ssh = connect(&fleet.endpoint(1)).await;
    let local = connect(&Endpoint::local("control")).await;
    let remote_file = fleet.work_dir(1).join("upload.bin");
    let local_file = local_dir.path().join("copy.bin");
    for (conn, dest) in [(&ssh, &remote_file), (&local, &local_file)] {
        let bytes = conn
            .exec(
                &Command::with_stdin("tr a-z A-Z", Stdin::Bytes(b"secret-ish\n".to_vec())),
                &mut |_, _| {},
            )
            .await
            .unwrap();
        assert_eq!(bytes.stdout, b"SECRET-ISH\n");

        let line = format!(
            "cat > '{0}' && sha256sum < '{0}' && wc -c < '{0}'",
            dest.display()
        );
        let file = conn
            .exec(
                &Command::with_stdin(line, Stdin::File(payload.clone())),
                &mut |_, _| {},
            )
            .await
            .unwrap();
        assert_eq!(
            file.exit_code,
            Some(0),
            "{}",
            String::from_utf8_lossy(&file.stderr)
        );
        let text = String::from_utf8_lossy(&file.stdout);
        assert_eq!(
            text,
            format!("{sha}  -\n{}\n", 3 * 1024 * 1024 + 17),
            "{}: the remote side saw the exact bytes",
            conn.host()
        );

        // A command that ignores its stdin is not an error of the transport.
        let ignored = conn
            .exec(
                &Command::with_stdin("true", Stdin::File(payload.clone())),
                &mut |_, _| {},
            )
            .await
            .unwrap();
        assert_eq!(ignored.exit_code, Some(0));

        let missing = conn
            .exec(
                &Command::with_stdin("cat", Stdin::File(local_dir.path().join("nope"))),
                &mut |_, _| {},
            )
            .await
            .unwrap_err();
        assert!(
            matches!(missing, TransportError::StdinFile { .. }),
            "{missing}"
        );
        assert!(missing.to_string().contains(conn.host()));
    }
    ssh.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabytes_both_ways_do_not_deadlock() {
    let fleet = SshFleet::start(1);
    let local_dir = tempfile::tempdir().unwrap();
    let size = 6 * 1024 * 1024;
    let (payload, sha) = random_file(local_dir.path(), size);
    let ssh = connect(&fleet.endpoint(0)).await;
    let local = connect(&Endpoint::local("control")).await;
    for conn in [&ssh, &local] {
        // stdin is still being written while stdout and stderr are both full.
        // The sink sees every byte (the engine saves them to `outputs/`); the
        // outcome keeps a bounded head and tail of each stream.
        let mut seen = [0usize; 2];
        let mut sums = [Sha256::new(), Sha256::new()];
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            conn.exec(
                &Command::with_stdin("tee /dev/fd/2", Stdin::File(payload.clone())),
                &mut |s, d| {
                    let i = usize::from(s == Stream::Stderr);
                    seen[i] += d.len();
                    sums[i].update(d);
                },
            ),
        )
        .await
        .expect("no deadlock")
        .unwrap();
        assert_eq!(out.exit_code, Some(0));
        let [out_sum, err_sum] = sums;
        assert_eq!(hex(&out_sum.finalize()), sha, "{} stdout", conn.host());
        assert_eq!(hex(&err_sum.finalize()), sha, "{} stderr", conn.host());
        assert_eq!(seen, [size, size]);
        let data = std::fs::read(&payload).unwrap();
        for kept in [&out.stdout, &out.stderr] {
            assert!(kept.starts_with(&data[..opsrun::transport::KEEP_HEAD]));
            assert!(kept.ends_with(&data[size - opsrun::transport::KEEP_TAIL..]));
            let marker = opsrun::transport::cut_marker(
                (size - opsrun::transport::KEEP_HEAD - opsrun::transport::KEEP_TAIL) as u64,
            );
            assert_eq!(
                kept.len(),
                opsrun::transport::KEEP_HEAD + marker.len() + opsrun::transport::KEEP_TAIL
            );
        }

        let big = run(
            conn,
            "head -c 5000000 /dev/zero; head -c 4000000 /dev/zero >&2",
        )
        .await;
        // Up to KEEP_HEAD a stream is kept whole; past it, head and tail.
        assert_eq!(big.stderr.len(), 4_000_000);
        assert!(big.stdout.len() < 5_000_000);
        assert!(String::from_utf8_lossy(&big.stdout).contains("bytes omitted here"));
    }
    ssh.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_key_is_refused_with_the_fix() {
    let fleet = SshFleet::start(2);
    fleet.forget_host_key(1);
    let before = std::fs::read_to_string(fleet.known_hosts()).unwrap();
    let ep = fleet.endpoint(1);
    let err = Connection::connect(&ep).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, TransportError::UnknownHostKey { .. }),
        "{msg}"
    );
    assert_eq!(err.host(), "h2");
    assert!(msg.starts_with("host h2:"), "{msg}");
    assert!(msg.contains("[127.0.0.3]"), "{msg}");
    let keyscan = format!(
        "ssh-keyscan -p {} 127.0.0.3 >> ~/.ssh/known_hosts",
        fleet.port(1)
    );
    assert!(msg.contains(&keyscan), "{msg}");
    assert!(msg.contains("known_hosts_file"), "{msg}");
    assert_eq!(
        std::fs::read_to_string(fleet.known_hosts()).unwrap(),
        before,
        "strict: nothing is added to known_hosts"
    );

    // The inventory's known_hosts_file is checked in addition to the configured files.
    let extra = fleet.root().join("inventory_known_hosts");
    std::fs::write(&extra, format!("{}\n", fleet.known_hosts_line(1))).unwrap();
    let mut with_extra = ep.clone();
    with_extra.known_hosts_file = Some(extra.clone());
    let conn = connect(&with_extra).await;
    assert_eq!(run(&conn, "echo ok").await.stdout, b"ok\n");
    conn.close().await.unwrap();
    let mut h1 = fleet.endpoint(0);
    h1.known_hosts_file = Some(extra);
    let conn = connect(&h1).await;
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_host_key_is_refused_loudly() {
    let mut fleet = SshFleet::start(1);
    fleet.regenerate_host_key(0);
    let err = Connection::connect(&fleet.endpoint(0)).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, TransportError::HostKeyChanged { .. }),
        "{msg}"
    );
    assert!(msg.starts_with("host h1:"), "{msg}");
    assert!(msg.contains("HAS CHANGED"), "{msg}");
    assert!(msg.contains("man-in-the-middle"), "{msg}");
    let keygen = format!(
        "ssh-keygen -R '[127.0.0.2]:{}' -f {}",
        fleet.port(0),
        fleet.known_hosts().display()
    );
    assert!(msg.contains(&keygen), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failure_is_named() {
    let fleet = SshFleet::start(1);
    let mut ep = fleet.endpoint(0);
    ep.user = Some("root".into());
    let err = Connection::connect(&ep).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TransportError::AuthFailed { .. }), "{msg}");
    assert!(
        msg.starts_with("host h1: authentication failed for root@127.0.0.2"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_port_fails_fast_and_silent_port_times_out() {
    let fleet = SshFleet::start(1);
    let mut refused = fleet.endpoint(0);
    refused.host = "dead1".into();
    refused.port = Some(free_port("127.0.0.2"));
    let start = Instant::now();
    let err = Connection::connect(&refused).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let msg = err.to_string();
    assert!(
        matches!(err, TransportError::ConnectionRefused { .. }),
        "{msg}"
    );
    assert!(
        msg.starts_with("host dead1: connection refused by 127.0.0.2"),
        "{msg}"
    );

    // Accepts TCP but never speaks SSH: only ConnectTimeout ends the wait.
    let silent = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let mut hung = fleet.endpoint(0);
    hung.host = "hung1".into();
    hung.port = Some(silent.local_addr().unwrap().port());
    hung.connect_timeout = Some(Duration::from_millis(1500));
    let start = Instant::now();
    let err = Connection::connect(&hung).await.unwrap_err();
    let took = start.elapsed();
    let msg = err.to_string();
    assert!(matches!(err, TransportError::Timeout { .. }), "{msg}");
    assert!(msg.starts_with("host hung1: timed out"), "{msg}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "{took:?}"
    );

    let mut nowhere = Endpoint::ssh("ghost", "no-such-host.invalid");
    nowhere.config_file = Some(fleet.ssh_config().to_path_buf());
    let err = Connection::connect(&nowhere).await.unwrap_err();
    assert!(err.to_string().starts_with("host ghost:"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_master_per_host_and_no_process_per_exec() {
    let fleet = SshFleet::start(3);
    let conns: Vec<Connection> = connect_all(&fleet.endpoints(), 3)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let masters: Vec<BTreeSet<u32>> = conns.iter().map(master_pids).collect();
    for (i, m) in masters.iter().enumerate() {
        assert_eq!(
            m.len(),
            1,
            "exactly one master for {}: {m:?}",
            fleet.name(i)
        );
    }
    let all_masters: BTreeSet<u32> = masters.iter().flatten().copied().collect();

    // Sample the process table while 50 commands run on each host: any ssh process
    // that mentions one of our control sockets, other than the masters, would be a
    // per-command client.
    let sockets: Vec<String> = conns
        .iter()
        .map(|c| match c {
            Connection::Ssh(s) => s.control_socket().to_string_lossy().into_owned(),
            Connection::Local(_) => unreachable!(),
        })
        .collect();
    let sockets_kept = sockets.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for s in &sockets {
                    seen.extend(pids_mentioning(s));
                }
            }
            seen
        })
    };
    let mut latencies = Vec::new();
    for round in 0..50 {
        for conn in &conns {
            let t = Instant::now();
            let out = run(conn, &format!("echo {round}")).await;
            latencies.push(t.elapsed());
            assert_eq!(out.stdout, format!("{round}\n").as_bytes());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = sampler.join().unwrap();
    assert_eq!(seen, all_masters, "only the masters ever ran");
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    // A fresh ssh per command costs 300 ms or more here; a mux channel a few ms.
    assert!(
        median < Duration::from_millis(100),
        "median exec {median:?}"
    );

    // close() ends the master; dropping a connection ends it too. Both reap it
    // before returning and remove its control directory.
    let mut conns = conns.into_iter();
    conns.next().unwrap().close().await.unwrap();
    drop(conns.next().unwrap());
    for (i, what) in [(0, "close"), (1, "drop")] {
        for pid in &masters[i] {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "master of {} still there (maybe a zombie) after {what}",
                fleet.name(i)
            );
        }
        let dir = Path::new(&sockets_kept[i]).parent().unwrap();
        assert!(!dir.exists(), "{} left after {what}", dir.display());
    }

    // A master that dies under a live connection is reported as a lost connection.
    let last = conns.next().unwrap();
    for pid in &masters[2] {
        // SAFETY: plain kill(2) on a pid we just found running ssh.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    assert!(wait_gone(&masters[2]).await);
    let err = last
        .exec(&Command::new("true"), &mut |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Disconnected { .. }), "{err}");
    assert!(err.to_string().contains("h3"), "{err}");
    // Dropping the broken connection reaps its dead master: no zombie is left.
    drop(last);
    for pid in &masters[2] {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "master {pid} of h3 left as a zombie"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_transport_basics() {
    let conn = connect(&Endpoint::local("sandbox1")).await;
    for code in [0, 1, 42] {
        assert_eq!(
            run(&conn, &format!("exit {code}")).await.exit_code,
            Some(code)
        );
    }
    assert_eq!(
        run(&conn, "no-such-command-opsrun").await.exit_code,
        Some(127)
    );
    assert_eq!(run(&conn, "kill -9 $$").await.exit_code, None);
    let out = run(&conn, "echo out; echo err >&2").await;
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    // connect_all handles local endpoints too, in order.
    let eps = [Endpoint::local("a"), Endpoint::local("b")];
    let hosts: Vec<String> = connect_all(&eps, 1)
        .await
        .into_iter()
        .map(|c| c.unwrap().host().to_string())
        .collect();
    assert_eq!(hosts, ["a", "b"]);
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jump_host_chain() {
    let fleet = SshFleet::start(3);
    let hop = |i: usize| format!("{TEST_USER}@{}:{}", fleet.address(i), fleet.port(i));
    for (target, jump) in [(1, vec![hop(0)]), (2, vec![hop(0), hop(1)])] {
        let mut ep = fleet.endpoint(target);
        ep.jump = jump;
        let conn = connect(&ep).await;
        assert_eq!(run(&conn, "echo via-jump").await.stdout, b"via-jump\n");
        // The master reaches the target through an `ssh -W` process for the last hop.
        let via = format!("-W [{}]:{}", fleet.address(target), fleet.port(target));
        assert_eq!(
            pids_mentioning(&via).len(),
            1,
            "one jump process to {}",
            ep.host
        );
        conn.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jump_host_key_is_checked_strictly_too() {
    let fleet = SshFleet::start(2);
    fleet.forget_host_key(0);
    // A lax user config: without opsrun's own settings for the hop, ssh would
    // silently add the jump host's key.
    let lax = fleet.root().join("lax_ssh_config");
    let config = std::fs::read_to_string(fleet.ssh_config()).unwrap();
    std::fs::write(
        &lax,
        config
            .replace(
                "StrictHostKeyChecking yes",
                "StrictHostKeyChecking accept-new",
            )
            .replace("BatchMode yes", "BatchMode no"),
    )
    .unwrap();
    let before = std::fs::read_to_string(fleet.known_hosts()).unwrap();
    let mut ep = fleet.endpoint(1);
    ep.config_file = Some(lax);
    ep.jump = vec![format!("{}:{}", fleet.address(0), fleet.port(0))];
    let err = Connection::connect(&ep).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, TransportError::UnknownHostKey { .. }),
        "{msg}"
    );
    assert!(msg.starts_with("host h2:"), "{msg}");
    assert!(
        msg.contains(&format!(
            "host key of [127.0.0.2]:{} is not known",
            fleet.port(0)
        )),
        "the message names the hop whose key is missing: {msg}"
    );
    assert_eq!(
        std::fs::read_to_string(fleet.known_hosts()).unwrap(),
        before
    );
}

/// Without a `connect_timeout` in the inventory, a host that accepts TCP and never
/// answers ends after the user's ssh `ConnectTimeout` when their configuration sets
/// one (opsrun does not override it), else after opsrun's 10 s default — not after
/// the system's TCP timeout (two minutes of silence before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_host_times_out_by_default_and_the_users_connect_timeout_wins() {
    let fleet = SshFleet::start(1);
    let config = std::fs::read_to_string(fleet.ssh_config()).unwrap();
    assert!(config.contains("ConnectTimeout"), "{config}");
    let without: String = config
        .lines()
        .filter(|l| !l.contains("ConnectTimeout"))
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("ssh_config");
    std::fs::write(&plain, &without).unwrap();
    let short = dir.path().join("ssh_config_short");
    std::fs::write(&short, format!("{without}  ConnectTimeout 2\n")).unwrap();

    let silent = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let hung = |config: &std::path::Path| {
        let mut ep = fleet.endpoint(0);
        ep.host = "hung1".into();
        ep.port = Some(silent.local_addr().unwrap().port());
        ep.config_file = Some(config.to_path_buf());
        ep.connect_timeout = None;
        ep
    };

    let start = Instant::now();
    let err = Connection::connect(&hung(&plain)).await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "the default is 10 s: {took:?}"
    );

    let start = Instant::now();
    let err = Connection::connect(&hung(&short)).await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(7),
        "the user's ConnectTimeout 2 wins over the default: {took:?}"
    );
}
