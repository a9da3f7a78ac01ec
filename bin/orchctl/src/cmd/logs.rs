//! `orchctl logs`: a replica's output.

use std::io::Write;

use futures::StreamExt;
use orch_api::Client;

use super::Ctx;

/// `orchctl logs`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The replica.
    replica: String,
    /// Keep streaming.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines (a last line without its line break counts).
    #[arg(long, value_name = "N")]
    tail: Option<u64>,
    /// At most the last N bytes, starting at the first line that begins within them, so
    /// no line is cut (unlike kubectl's --limit-bytes, which keeps the first N bytes of
    /// what is shown); a line longer than N is shown from its cut. With --tail, whichever
    /// shows less.
    #[arg(long, value_name = "N")]
    tail_bytes: Option<u64>,
}

/// Prints the replica's logs.
pub(crate) async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let opts = orch_core::runtime::LogOptions {
        follow: args.follow,
        tail_bytes: args.tail_bytes,
        tail_lines: args.tail,
    };
    logs(&ctx.client, &ctx.ns, &args.replica, opts).await
}

async fn logs(
    client: &Client,
    ns: &str,
    replica: &str,
    opts: orch_core::runtime::LogOptions,
) -> anyhow::Result<()> {
    let mut stream = client.logs(ns, replica, opts).await?;
    let mut out = std::io::stdout();
    while let Some(data) = stream.next().await {
        out.write_all(data?.as_bytes())?;
        out.flush()?;
    }
    Ok(())
}
