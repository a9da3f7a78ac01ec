//! `orchctl manager`: list and remove the cluster's managers.

use clap::Subcommand;

use super::get::Output;
use super::Ctx;

/// `orchctl manager ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// List the managers (as `orchctl get managers`).
    Ls {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Remove a manager: its etcd member (so the etcd cluster stops counting it for a quorum)
    /// and its record. Ask another manager than the one removed (`--server ADDR`); the last
    /// manager cannot be removed. Stop its orchd afterwards.
    Rm {
        /// The manager's name.
        name: String,
    },
}

/// Runs the manager command.
pub(crate) async fn run(ctx: &Ctx, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Ls { output } => super::get::managers(&ctx.client, output).await,
        Command::Rm { name } => {
            let member = ctx.client.manager_remove(&name).await?;
            match member {
                Some(id) => outln!("manager/{name} removed (etcd member {id} removed)"),
                None => outln!("manager/{name} removed"),
            }
            Ok(())
        }
    }
}
