//! `orchctl node`: cordon, uncordon, drain, remove.

use anyhow::bail;
use clap::Subcommand;
use orch_api::Client;
use orch_core::model::object::{Kind, Object};

use super::get::{get, Output};
use super::Ctx;

/// `orchctl node ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// List the nodes (as `orchctl get nodes`).
    Ls,
    /// Place no new replicas on the node.
    Cordon {
        /// The node.
        node: String,
    },
    /// Allow new replicas on the node again (and stop a drain).
    Uncordon {
        /// The node.
        node: String,
    },
    /// Cordon the node and move its replicas elsewhere at the pace each service's update
    /// settings allow (max surge / max unavailable); waits until none is left.
    Drain {
        /// The node.
        node: String,
        /// Return at once instead of waiting.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "5m")]
        timeout: String,
        /// Drain even when no other node can take some service's replicas (those stay
        /// where they are until one can).
        #[arg(long)]
        force: bool,
    },
    /// Forget a node: its replicas are replaced elsewhere and, in a cluster, its certificate
    /// is refused from now on.
    Rm {
        /// The node.
        node: String,
        /// Remove it even while it reports Ready.
        #[arg(long)]
        force: bool,
    },
}

/// Runs the node command.
pub(crate) async fn run(ctx: &Ctx, command: Command) -> anyhow::Result<()> {
    node(&ctx.client, command).await
}

async fn node(client: &Client, command: Command) -> anyhow::Result<()> {
    use orch_core::engine::api::NodeOp;
    use Command as C;
    let (name, action, wait) = match command {
        C::Ls => {
            return get(
                client,
                "default",
                Kind::Node,
                None,
                Output::Table,
                false,
                false,
            )
            .await;
        }
        C::Cordon { node } => (node, NodeOp::Cordon, None),
        C::Uncordon { node } => (node, NodeOp::Uncordon, None),
        C::Drain {
            node,
            no_wait,
            timeout,
            force,
        } => {
            let limit = orch_core::model::quantity::Span::parse(&timeout)
                .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
            // Say at once what cannot move, before changing anything.
            let stranded = stranded_by_drain(client, &node).await?;
            if !stranded.is_empty() {
                if !force {
                    bail!(
                        "node/{node}: {}; nothing was changed (add or uncordon a node that can take them, or pass --force to drain anyway: those replicas stay until a node can take them)",
                        lines(&stranded)
                    );
                }
                for (s, _) in &stranded {
                    eprintln!("warning: node/{node}: {s}; they stay until a node can take them");
                }
            }
            (node, NodeOp::Drain, (!no_wait).then_some(limit.0))
        }
        C::Rm { node, force } => (node, NodeOp::Remove { force }, None),
    };
    client.node_op(&name, action).await?;
    let done = match action {
        NodeOp::Cordon => "cordoned",
        NodeOp::Uncordon => "uncordoned",
        NodeOp::Drain => "draining",
        NodeOp::Remove { .. } => "removed",
    };
    outln!("node/{name} {done}");
    let Some(limit) = wait else {
        return Ok(());
    };
    let start = std::time::Instant::now();
    let mut last = usize::MAX;
    loop {
        let left = client
            .list(Kind::Replica, None)
            .await?
            .objects
            .into_iter()
            .filter(|o| {
                matches!(o, Object::Replica(r) if r.spec.node.as_deref() == Some(name.as_str()))
            })
            .count();
        if left == 0 {
            outln!("node/{name} drained");
            return Ok(());
        }
        let stranded = stranded_by_drain(client, &name).await?;
        let stuck: usize = stranded.iter().map(|(_, n)| n).sum();
        if stuck > 0 && stuck >= left {
            bail!("node/{name}: {left} replica(s) stay: {} (the node stays cordoned and draining; they move once a node can take them)", lines(&stranded));
        }
        if left != last {
            outln!("node/{name}: {left} replica(s) left");
            last = left;
        }
        if start.elapsed() > limit {
            bail!("node/{name}: {left} replica(s) still there after {limit:?} (the node stays cordoned and draining continues)");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// What draining `node` cannot move: `(line, replicas)` per service, the line saying
/// `no other schedulable node for service NS/NAME's replicas (N on NODE)`.
async fn stranded_by_drain(client: &Client, node: &str) -> anyhow::Result<Vec<(String, usize)>> {
    let nodes: Vec<orch_core::model::object::Node> = client
        .list(Kind::Node, None)
        .await?
        .objects
        .into_iter()
        .filter_map(|o| match o {
            Object::Node(n) => Some(n),
            _ => None,
        })
        .collect();
    let replicas: Vec<orch_core::model::object::Replica> = client
        .list(Kind::Replica, None)
        .await?
        .objects
        .into_iter()
        .filter_map(|o| match o {
            Object::Replica(r) => Some(r),
            _ => None,
        })
        .collect();
    Ok(
        orch_core::engine::nodes::stranded_by_drain(node, &nodes, &replicas)
            .into_iter()
            .map(|(ns, svc, n)| {
                (
                    format!("no other schedulable node for service {ns}/{svc}'s replicas ({n} on {node})"),
                    n,
                )
            })
            .collect(),
    )
}

fn lines(stranded: &[(String, usize)]) -> String {
    stranded
        .iter()
        .map(|(l, _)| l.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}
