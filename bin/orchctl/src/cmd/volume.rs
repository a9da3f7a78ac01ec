//! `orchctl volume`: named local volumes.

use anyhow::bail;
use clap::Subcommand;
use orch_api::protocol::{Request, Response};
use orch_api::Client;
use orch_core::model::object::Object;

/// `orchctl volume ...`.
#[derive(Subcommand)]
pub(crate) enum VolumeCommand {
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
pub(crate) async fn volume(client: &Client, command: VolumeCommand) -> anyhow::Result<()> {
    match command {
        VolumeCommand::Ls => {
            let objs = match client
                .call(Request::Get {
                    kind: orch_core::model::object::Kind::Node,
                    namespace: None,
                    name: None,
                })
                .await?
            {
                Response::Objects { objects, .. } => objects,
                other => bail!("unexpected response: {other:?}"),
            };
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
        VolumeCommand::Rm { name, node } => {
            match client.call(Request::VolumeRemove { name, node }).await? {
                Response::VolumeRemoved { name, node } => {
                    outln!("volume {name} removed from node {node}");
                    Ok(())
                }
                other => bail!("unexpected response: {other:?}"),
            }
        }
    }
}
