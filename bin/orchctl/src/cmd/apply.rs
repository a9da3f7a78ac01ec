//! `orchctl apply`: create or update objects from files (or only plan their placement).

use std::path::PathBuf;

use orch_api::{render, Client};

use super::{applied_line, read_all, Ctx};

/// `orchctl apply`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Files, folders or `-`.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
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
    if args.plan {
        plan(&ctx.client, &args.files, namespace).await
    } else {
        apply(&ctx.client, &args.files, args.dry_run, namespace).await
    }
}

async fn apply(
    client: &Client,
    files: &[std::path::PathBuf],
    dry_run: bool,
    namespace: Option<String>,
) -> anyhow::Result<()> {
    let manifests = read_all(files)?;
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
    files: &[std::path::PathBuf],
    namespace: Option<String>,
) -> anyhow::Result<()> {
    let manifests = read_all(files)?;
    let plan = client.plan(manifests, namespace.as_deref()).await?;
    out!("{}", render::plan(&plan));
    Ok(())
}
