//! `orchctl image`: images on the daemon's nodes.

use anyhow::Context;
use clap::Subcommand;
use orch_api::Client;

use super::Ctx;

/// `orchctl image ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Import an OCI image layout tarball (`skopeo copy ... oci-archive:FILE`) into the
    /// container runtime of every node this daemon runs, for nodes without a registry.
    Import {
        /// The archive (on the daemon's machine).
        file: std::path::PathBuf,
        /// Record it under this name (default: the archive's ref name). When the archive holds
        /// several images, the one whose ref name this is.
        #[arg(long)]
        name: Option<String>,
    },
}

/// Runs the image command.
pub(crate) async fn run(ctx: &Ctx, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Import { file, name } => import_image(&ctx.client, &file, name).await,
    }
}

async fn import_image(
    client: &Client,
    file: &std::path::Path,
    name: Option<String>,
) -> anyhow::Result<()> {
    let path =
        std::fs::canonicalize(file).with_context(|| format!("image import: {}", file.display()))?;
    let images = client
        .import_image(&path.display().to_string(), name.as_deref())
        .await?;
    for (node, name) in images {
        outln!("image {name} imported on {node}");
    }
    Ok(())
}
