//! The `ssh-keygen` subprocess, for keys the process cannot sign with itself.

use super::*;

/// Runs ssh-keygen with `input` on stdin; its stderr (prompts, errors) stays on the terminal.
pub(super) fn keygen(args: &[&str], input: &[u8]) -> Result<Vec<u8>, SignError> {
    let fail = |reason: String| SignError::Keygen {
        args: args.join(" "),
        reason,
    };
    let mut child = Command::new("ssh-keygen");
    for k in crate::transport::secret_env_vars() {
        child.env_remove(k);
    }
    let mut child = child
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start it ({e}); is OpenSSH installed?")))?;
    let mut stdin = child.stdin.take().ok_or_else(|| fail("no stdin".into()))?;
    // Written from a thread: a large input could otherwise fill the pipe while
    // ssh-keygen waits for us to read its output.
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let _ = writer.join();
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(fail(if msg.is_empty() {
            out.status.to_string()
        } else {
            msg
        }));
    }
    Ok(out.stdout)
}
