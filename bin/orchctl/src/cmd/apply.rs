//! `orchctl apply`: create or update objects from files (or only plan their placement).

use std::path::PathBuf;

use orch_api::protocol::ManifestText;
use orch_api::{render, Client};

use super::{applied_line, import, import_options, warn_without_replica_networking, Ctx};

/// `orchctl apply`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Files, folders or `-`: orch manifests, Kubernetes manifests (converted; see
    /// `orchctl convert`) or a Compose file named by itself (a folder takes manifests only).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Refuse, applying nothing, when a Kubernetes manifest or Compose file has any field
    /// orch does not honour (each is a warning otherwise).
    #[arg(long)]
    strict: bool,
    /// Validate and show what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Show where each replica would be placed and what would stay pending (and why);
    /// write nothing.
    #[arg(long, conflicts_with = "dry_run")]
    plan: bool,
}

/// Applies the files (or plans them, with `--plan`).
pub(crate) async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let namespace = ctx.asked.clone();
    let imported = import(&args.files, &import_options(ctx, args.strict))?;
    if args.plan {
        plan(&ctx.client, imported.manifests, namespace).await
    } else {
        warn_without_replica_networking(&ctx.client, &imported.converted).await;
        apply(&ctx.client, imported.manifests, args.dry_run, namespace).await
    }
}

/// Sends `manifests` (orch's: files are read and converted already) and prints the answer.
pub(super) async fn apply(
    client: &Client,
    manifests: Vec<ManifestText>,
    dry_run: bool,
    namespace: Option<String>,
) -> anyhow::Result<()> {
    // The daemon parses and validates (errors name the files); it also says which fields orch
    // sets itself (status, metadata.uid, ...) it ignored, as kubectl ignores status.
    let applied = client
        .apply(manifests, dry_run, namespace.as_deref())
        .await?;
    for w in applied.results.iter().flat_map(|r| &r.warnings) {
        eprintln!("warning: {w}");
    }
    for r in applied.results {
        outln!("{}", applied_line(&r, applied.dry_run));
        for c in &r.changes {
            outln!("  {c}");
        }
    }
    Ok(())
}

async fn plan(
    client: &Client,
    manifests: Vec<ManifestText>,
    namespace: Option<String>,
) -> anyhow::Result<()> {
    let plan = client.plan(manifests, namespace.as_deref()).await?;
    out!("{}", render::plan(&plan));
    Ok(())
}
