//! `orchctl apply`: create or update objects from files (or only plan their placement).

use anyhow::bail;
use orch_api::protocol::{Request, Response};
use orch_api::{render, Client};

use super::{applied_line, read_all};

pub(crate) async fn apply(
    client: &Client,
    files: &[std::path::PathBuf],
    dry_run: bool,
    namespace: Option<String>,
) -> anyhow::Result<()> {
    let manifests = read_all(files)?;
    // Validate locally first: errors name the files without a round trip.
    let parsed = orch_api::files::parse_with_warnings(&manifests, namespace.as_deref())
        .map_err(anyhow::Error::msg)?;
    // Fields orch sets itself (status, metadata.uid, ...) are ignored, as kubectl ignores
    // status: say so.
    for w in &parsed.warnings {
        eprintln!("warning: {w}");
    }
    match client
        .call(Request::Apply {
            manifests,
            dry_run,
            namespace,
        })
        .await?
    {
        Response::Applied { results, dry_run } => {
            for r in results {
                outln!("{}", applied_line(&r, dry_run));
                for c in &r.changes {
                    outln!("  {c}");
                }
            }
            Ok(())
        }
        other => bail!("unexpected response: {other:?}"),
    }
}

pub(crate) async fn plan(
    client: &Client,
    files: &[std::path::PathBuf],
    namespace: Option<String>,
) -> anyhow::Result<()> {
    let manifests = read_all(files)?;
    orch_api::files::parse(&manifests, namespace.as_deref()).map_err(anyhow::Error::msg)?;
    match client
        .call(Request::Plan {
            manifests,
            namespace,
        })
        .await?
    {
        Response::Plan { plan } => {
            out!("{}", render::plan(&plan));
            Ok(())
        }
        other => bail!("unexpected response: {other:?}"),
    }
}
