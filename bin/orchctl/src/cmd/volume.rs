//! `orchctl volume`: named local volumes.

use clap::Subcommand;
use orch_api::Client;
use orch_core::model::object::Object;

use super::Ctx;

/// `orchctl volume ...`.
#[derive(Subcommand)]
pub(crate) enum Command {
    /// The volumes on every node.
    Ls,
    /// Remove a volume and its data from a node (refused while a replica uses it).
    Rm {
        /// The volume.
        name: String,
        /// The node (needed when several hold a volume of that name).
        #[arg(long)]
        node: Option<String>,
    },
}

/// `orchctl volume ls|rm`.
/// Runs the volume command.
pub(crate) async fn run(ctx: &Ctx, command: Command) -> anyhow::Result<()> {
    volume(&ctx.client, command).await
}

async fn volume(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Ls => {
            let objs = client
                .list(orch_core::model::object::Kind::Node, None)
                .await?
                .objects;
            let mut rows = vec![("VOLUME".to_string(), "NODE".to_string())];
            for o in &objs {
                if let Object::Node(n) = o {
                    for v in &n.status.volumes {
                        rows.push((v.clone(), n.metadata.name.clone()));
                    }
                }
            }
            if rows.len() == 1 {
                eprintln!("No volumes found.");
                return Ok(());
            }
            let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0) + 3;
            for (v, n) in rows {
                outln!("{v:w$}{n}");
            }
            Ok(())
        }
        Command::Rm { name, node } => {
            let removed = client.volume_remove(&name, node.as_deref()).await?;
            outln!("volume {} removed from node {}", removed.name, removed.node);
            Ok(())
        }
    }
}
