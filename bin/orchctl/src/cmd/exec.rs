//! `orchctl exec`: run a command inside a replica.

use std::io::Write;

use orch_api::Client;

use super::Ctx;

/// `orchctl exec`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The replica.
    replica: String,
    /// Kill the command after this long (`30s`, `2m`; at most 1h).
    #[arg(long, default_value = "30s")]
    timeout: String,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Runs the command in the replica.
pub(crate) async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    exec(
        &ctx.client,
        &ctx.ns,
        &args.replica,
        &args.timeout,
        args.command,
    )
    .await
}

async fn exec(
    client: &Client,
    ns: &str,
    replica: &str,
    timeout: &str,
    command: Vec<String>,
) -> anyhow::Result<()> {
    let span = orch_core::model::quantity::Span::parse(timeout)
        .map_err(|e| anyhow::anyhow!("--timeout: invalid value {timeout:?}: {e}"))?;
    let secs = span.0.as_secs_f64().ceil() as u64;
    anyhow::ensure!(
        (1..=3600).contains(&secs),
        "--timeout: {timeout} is out of range: allowed 1s to 1h"
    );
    let orch_api::client::ExecOutput {
        code,
        signal,
        timed_out,
        stdout,
        stderr,
    } = client.exec(ns, replica, command, secs).await?;
    std::io::stdout().write_all(stdout.as_bytes())?;
    std::io::stdout().flush()?;
    std::io::stderr().write_all(stderr.as_bytes())?;
    if timed_out {
        eprintln!("orchctl: the command ran past --timeout {timeout} and was killed");
    }
    let status = match (code, signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 1,
    };
    if status != 0 {
        std::process::exit(status);
    }
    Ok(())
}
