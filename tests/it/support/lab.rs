//! Operator directories: where a test keeps runbooks, inventories and the runs
//! they leave, and the helpers that read what a run left there. Every run goes
//! through the builder in `cli.rs`; these only choose its directory, `HOME` and key.
//!
//! - [`Lab`]: `runbooks/` + `inventories/` for runs against the sshd fleet; one
//!   private home and signing key for all the runs of a test.
//! - [`opsrun`]: a run in any directory (the library tests' scratch dirs and
//!   fresh clones), signed with a key kept in that directory.
//! - [`Sandbox`]: `connection: local` hosts and a `HOME` whose `~/.ssh` the test
//!   fills, for the key discovery and signing tests; no key is set for it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::cli::{keygen, Home, Run, Test};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------
// A lab: runs against the fleet

pub struct Lab {
    dir: tempfile::TempDir,
    home: Home,
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Lab {
    pub fn new() -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("opsrun-lab-")
            .tempdir()
            .unwrap();
        fs::create_dir(dir.path().join("runbooks")).unwrap();
        fs::create_dir(dir.path().join("inventories")).unwrap();
        Lab {
            dir,
            home: Home::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }

    /// `opsrun ARGS` in the lab, with its home and key.
    pub fn test(&self, args: &[&str]) -> Test {
        Test::in_dir(self.path())
            .home(&self.home)
            .args(args.iter().copied())
    }

    /// The lab's run as a `Command`, for tests that spawn it themselves (to kill
    /// it, or to put it on a pty).
    pub fn command(&self, args: &[&str]) -> Command {
        self.test(args).command()
    }

    /// Runs opsrun with `stdin` piped in (or /dev/null), waits for it, and asserts it
    /// printed its log's path last.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
        let mut t = self.test(args).envs(env);
        if let Some(text) = stdin {
            t = t.stdin(text);
        }
        t.output().expect_log()
    }

    /// `opsrun runs` as rows of named cells, cut at the header's column positions (so
    /// the columns must line up). Positions are display columns: a CJK character
    /// takes two, as in a terminal.
    pub fn runs_table(&self) -> Vec<BTreeMap<String, String>> {
        self.runs_table_with(&[])
    }

    /// `runs_table`, with `env` set for `opsrun runs` (a time zone, ...).
    pub fn runs_table_with(&self, env: &[(&str, &str)]) -> Vec<BTreeMap<String, String>> {
        let out = self.test(&["runs"]).envs(env).output();
        assert_eq!(out.code, 0, "{out:?}");
        let text = out.stdout;
        let mut lines = text.lines();
        let header = lines.next().unwrap();
        let names = [
            "id", "runbook", "env", "ticket", "operator", "result", "start", "duration",
        ];
        let cols: Vec<usize> = names
            .iter()
            .map(|n| {
                header
                    .find(&format!("{n} "))
                    .or_else(|| header.rfind(n))
                    .unwrap_or_else(|| panic!("no `{n}` column in {header:?}"))
            })
            .collect();
        assert!(header.is_ascii(), "{header:?}");
        assert!(cols.windows(2).all(|w| w[0] < w[1]), "{header:?}");
        lines
            .map(|l| {
                // The line's characters with the display column each starts at.
                let mut at = 0;
                let chars: Vec<(usize, char)> = l
                    .chars()
                    .map(|c| {
                        let start = at;
                        at += console::measure_text_width(&c.to_string());
                        (start, c)
                    })
                    .collect();
                let width = at;
                let slice = |from: usize, to: usize| -> String {
                    chars
                        .iter()
                        .filter(|(c, _)| *c >= from && *c < to)
                        .map(|(_, ch)| *ch)
                        .collect()
                };
                names
                    .iter()
                    .enumerate()
                    .map(|(k, n)| {
                        let end = cols.get(k + 1).copied().unwrap_or(width).min(width);
                        // A wide character must not straddle a column start.
                        assert!(
                            chars.iter().all(|(c, ch)| *c >= cols[k]
                                || *c + console::measure_text_width(&ch.to_string()) <= cols[k]),
                            "column `{n}` does not start at a character boundary in {l:?}"
                        );
                        let cell = slice(cols[k], end);
                        // A cell must end before the next column starts.
                        if k + 1 < cols.len() {
                            assert!(
                                cell.ends_with(' '),
                                "column `{n}` overflows in {l:?} under {header:?}"
                            );
                        }
                        (n.to_string(), cell.trim().to_string())
                    })
                    .collect()
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------
// A run in any directory

/// A signing key kept in `dir`: every run there signs with it, as one operator would.
fn dir_key(dir: &Path) -> PathBuf {
    let key = dir.join(".sign-key");
    if !key.exists() {
        keygen(&key, "ed25519", "", "opsrun-test");
    }
    key
}

/// Runs `opsrun ARGS` in `dir` (runbooks come from the library built into it) with
/// extra environment, signed with the key of [`dir_key`].
pub fn opsrun(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    Test::in_dir(dir)
        .sign_key(dir_key(dir))
        .args(args.iter().copied())
        .envs(env)
        .output()
}

/// A scratch directory to run opsrun in (its runs/ land there).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("opsrun-library-")
        .tempdir()
        .unwrap()
}

pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    let ok = Command::new("cp")
        .arg("-R")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .expect("cp")
        .success();
    assert!(ok, "cp -R {} {}", from.display(), to.display());
}

/// A fingerprint of a directory tree: every path with its type, mode, symlink
/// target and content hash. Equal fingerprints mean byte-identical trees.
pub fn tree_digest(root: &Path) -> String {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let md = fs::symlink_metadata(&p).unwrap();
            let mode = md.mode() & 0o7777;
            if md.file_type().is_symlink() {
                out.push(format!(
                    "L {rel} -> {}",
                    fs::read_link(&p).unwrap().display()
                ));
            } else if md.is_dir() {
                out.push(format!("D {rel} {mode:o}"));
                walk(base, &p, out);
            } else {
                let hash = Sha256::digest(fs::read(&p).unwrap());
                let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
                out.push(format!("F {rel} {mode:o} {hex}"));
            }
        }
    }
    let mut lines = Vec::new();
    walk(root, root, &mut lines);
    lines.join("\n")
}

// ---------------------------------------------------------------------------------
// A sandbox of local hosts, for key discovery and signing

pub struct Sandbox {
    pub tmp: tempfile::TempDir,
    /// The two local hosts of group `local`. Named uniquely: host locks of
    /// `connection: local` hosts are machine-wide, keyed by host name, and
    /// tests (of this and other processes) run at the same time.
    pub hosts: [String; 2],
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("t{}n{n}", std::process::id());
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = Sandbox {
            tmp,
            hosts: [format!("{tag}-box1"), format!("{tag}-box2")],
        };
        for d in ["home/.ssh", "work/runbooks", "work/inventories", "keys"] {
            fs::create_dir_all(s.root().join(d)).expect("mkdir");
        }
        s.write(
            "work/inventories/demo.yaml",
            &format!(
                "name: demo\ngroups:\n  local:\n    hosts:\n      {}: {{ connection: local }}\n      {}: {{ connection: local }}\n",
                s.hosts[0], s.hosts[1]
            ),
        );
        s
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    pub fn work(&self) -> PathBuf {
        self.root().join("work")
    }

    pub fn home(&self) -> PathBuf {
        self.root().join("home")
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.root().join(rel);
        fs::write(&p, text).expect("write");
        p
    }

    pub fn runbook(&self, name: &str, yaml: &str) {
        self.write(&format!("work/runbooks/{name}.yaml"), yaml);
    }

    /// `ssh-keygen -t KIND` into `keys/NAME` (or `home/.ssh/NAME` when `in_home`).
    pub fn keygen(&self, name: &str, kind: &str, passphrase: &str, in_home: bool) -> PathBuf {
        let dir = if in_home {
            self.home().join(".ssh")
        } else {
            self.root().join("keys")
        };
        let path = dir.join(name);
        keygen(&path, kind, passphrase, name);
        path
    }

    /// The opsrun binary in `work/`, with the sandbox's HOME and no signing key but
    /// the ones the test sets in `env` or puts in `~/.ssh`.
    pub fn opsrun(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        Test::in_dir(self.work())
            .home_dir(self.home())
            .no_sign_key()
            .args(args.iter().copied())
            .envs(env)
            .output()
    }

    /// The run directories, oldest first.
    pub fn runs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.work().join("runs"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The only run directory.
    pub fn run_dir(&self) -> PathBuf {
        let runs = self.runs();
        assert_eq!(runs.len(), 1, "expected one run, found {runs:?}");
        runs[0].clone()
    }

    /// An allowed_signers file trusting `pubkey` for `identity` in `opsrun-log`.
    pub fn allowed_signers(&self, name: &str, identity: &str, pubkey: &Path) -> PathBuf {
        let key = fs::read_to_string(pubkey).expect("read .pub");
        self.write(
            name,
            &format!("{identity} namespaces=\"opsrun-log\" {}\n", key.trim()),
        )
    }
}

pub fn text(b: impl AsRef<[u8]>) -> String {
    String::from_utf8_lossy(b.as_ref()).into_owned()
}

/// Panics with both streams when `out` did not exit with `code`.
#[track_caller]
pub fn expect_code(out: &Run, code: i32, what: &str) {
    assert_eq!(
        out.code, code,
        "{what}: exit {}\n--- stdout\n{}\n--- stderr\n{}",
        out.code, out.stdout, out.stderr
    );
}

/// `ssh-keygen -lf KEY.pub`'s `SHA256:...`.
pub fn fingerprint(pubkey: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(pubkey)
        .output()
        .expect("ssh-keygen -l");
    text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_string()
}

/// Stock `ssh-keygen -Y verify` of `doc` against its `.sig`; true when good.
pub fn keygen_verify(allowed: &Path, identity: &str, doc: &Path) -> bool {
    let sig = format!("{}.sig", doc.display());
    Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f"])
        .arg(allowed)
        .args(["-I", identity, "-n", "opsrun-log", "-s", &sig])
        .stdin(fs::File::open(doc).expect("open doc"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("ssh-keygen -Y verify")
        .success()
}

/// Every file under `dir`, recursively.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A log rendered by `opsrun log` after its run, without the lines that say so
/// (issue 12): the banner under the title and the `- Rendered:` line.
pub fn without_rendered_later(log: &str) -> String {
    let banner = "> **Rendered later**: from the journal by `opsrun log` at ";
    let line = "- Rendered: from the journal by `opsrun log` at ";
    assert!(log.contains(banner) && log.contains(line), "{log}");
    let mut out = String::new();
    let mut lines = log.split_inclusive('\n');
    while let Some(l) = lines.next() {
        if l.starts_with(banner) {
            lines.next(); // its blank line
        } else if !l.starts_with(line) {
            out.push_str(l);
        }
    }
    out
}
