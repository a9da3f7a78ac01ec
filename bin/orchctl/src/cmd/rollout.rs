//! `orchctl rollout`: a service's rollouts.

use anyhow::bail;
use clap::Subcommand;
use orch_api::{render, Client};
use orch_core::model::object::{Kind, Object};

use super::Ctx;

/// `orchctl rollout ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Follow the latest rollout with a progress bar until it completes (exit 0) or fails or
    /// is rolled back (exit 1).
    Status {
        /// `NAME` or `service/NAME`.
        service: String,
        /// Give up after this long (exit 2).
        #[arg(long, default_value = "10m")]
        timeout: String,
    },
    /// The service's revisions.
    History {
        /// `NAME` or `service/NAME`.
        service: String,
    },
    /// Go back to the previous revision (or `--to-revision N`).
    Undo {
        /// `NAME` or `service/NAME`.
        service: String,
        /// The revision to go back to.
        #[arg(long)]
        to_revision: Option<u64>,
    },
    /// Hold the rollout: old replicas stay until `resume`.
    Pause {
        /// `NAME` or `service/NAME`.
        service: String,
    },
    /// Let a paused rollout go on.
    Resume {
        /// `NAME` or `service/NAME`.
        service: String,
    },
}

fn service_name(arg: &str) -> String {
    arg.strip_prefix("service/")
        .or_else(|| arg.strip_prefix("svc/"))
        .unwrap_or(arg)
        .to_string()
}

async fn fetch_service(
    client: &Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<orch_core::model::object::Service> {
    match client.get(Kind::Service, ns, name).await? {
        Object::Service(s) => Ok(*s),
        other => bail!("unexpected object {}", other.display_name()),
    }
}

/// Runs the rollout command.
pub(crate) async fn run(ctx: &Ctx, command: Command) -> anyhow::Result<()> {
    rollout(&ctx.client, &ctx.ns, command).await
}

async fn rollout(client: &Client, ns: &str, command: Command) -> anyhow::Result<()> {
    use orch_core::engine::api::RolloutAction;
    use orch_core::model::object::RolloutState;
    use Command as C;
    let (name, action) = match command {
        C::Status { service, timeout } => {
            let limit = orch_core::model::quantity::Span::parse(&timeout)
                .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?
                .0;
            let name = service_name(&service);
            let start = std::time::Instant::now();
            let mut last = String::new();
            loop {
                let svc = fetch_service(client, ns, &name).await?;
                let st = &svc.status;
                // Trust the status only once it describes the current spec.
                let observed = render::rollout_status_line(&svc);
                let line = observed.clone().unwrap_or_else(|| {
                    format!(
                        "waiting for the controller to observe generation {}",
                        svc.metadata.generation
                    )
                });
                if line != last {
                    outln!("{line}");
                    last = line;
                }
                if observed.is_some() {
                    match st.rollout.state {
                        RolloutState::Complete => {
                            outln!("service/{name}: revision {} rolled out", st.revision);
                            return Ok(());
                        }
                        RolloutState::Failed | RolloutState::RolledBack => {
                            bail!("service/{name}: {}", st.rollout.message)
                        }
                        RolloutState::Progressing | RolloutState::Paused => {}
                    }
                }
                if start.elapsed() > limit {
                    eprintln!(
                        "service/{name}: still {:?} after {limit:?}",
                        st.rollout.state
                    );
                    std::process::exit(2);
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        C::History { service } => {
            let name = service_name(&service);
            let svc = fetch_service(client, ns, &name).await?;
            out!("{}", render::rollout_history(&svc));
            return Ok(());
        }
        C::Undo {
            service,
            to_revision,
        } => (service_name(&service), RolloutAction::Undo { to_revision }),
        C::Pause { service } => (service_name(&service), RolloutAction::Pause),
        C::Resume { service } => (service_name(&service), RolloutAction::Resume),
    };
    client.rollout(ns, &name, action).await?;
    let done = match action {
        RolloutAction::Undo { .. } => "rolled back",
        RolloutAction::Pause => "paused",
        RolloutAction::Resume => "resumed",
    };
    outln!("service/{name} {done}");
    Ok(())
}
