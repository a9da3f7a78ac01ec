//! `orchctl logs`: a replica's output.

use std::io::Write;

use futures::StreamExt;
use orch_api::protocol::{Request, Response};
use orch_api::Client;

pub(crate) async fn logs(
    client: &Client,
    ns: &str,
    replica: &str,
    opts: orch_core::runtime::LogOptions,
) -> anyhow::Result<()> {
    let mut stream = client
        .stream(Request::Logs {
            namespace: ns.into(),
            replica: replica.into(),
            follow: opts.follow,
            tail_bytes: opts.tail_bytes,
            tail_lines: opts.tail_lines,
        })
        .await?;
    let mut out = std::io::stdout();
    while let Some(item) = stream.next().await {
        if let Response::Log { data } = item? {
            out.write_all(data.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}
