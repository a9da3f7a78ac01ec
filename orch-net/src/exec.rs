//! Running a helper program (`nft`, a CNI plugin) with input on stdin, in the calling thread's
//! network namespace (the child is forked from it).

use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

/// What a program printed and how it ended.
pub(crate) struct Output {
    pub success: bool,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Runs `program args` with `env` only (plus a plain `PATH`), `input` on stdin.
pub(crate) async fn run(
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    input: &[u8],
) -> Result<Output, String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .await
            .map_err(|e| format!("{}: writing its input: {e}", program.display()))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("{}: {e}", program.display()))?;
    Ok(Output {
        success: out.status.success(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}
