//! `orchctl scale`: a service's replica count.

use anyhow::bail;
use orch_api::Client;
use orch_core::model::object::Kind;

use super::{kind_arg, Ctx};

/// `orchctl scale`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// `NAME`, `service/NAME` or `service NAME`.
    target: Vec<String>,
    /// Desired replicas.
    #[arg(long, allow_negative_numbers = true)]
    replicas: i64,
}

/// Scales the service asked for.
pub(crate) async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    scale(&ctx.client, &ctx.ns, &args.target, args.replicas).await
}

async fn scale(client: &Client, ns: &str, target: &[String], replicas: i64) -> anyhow::Result<()> {
    let name = match target {
        [one] => one
            .strip_prefix("service/")
            .or_else(|| one.strip_prefix("svc/"))
            .unwrap_or(one)
            .to_string(),
        [kind, name] if kind_arg(kind).ok() == Some(Kind::Service) => name.clone(),
        _ => bail!("usage: orchctl scale [service/]NAME --replicas N"),
    };
    client.scale(ns, &name, replicas).await?;
    outln!("service/{name} scaled to {replicas}");
    Ok(())
}
