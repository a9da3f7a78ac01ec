//! `orchctl info`: what the daemon is.

use orch_api::Client;

use super::Ctx;

/// Prints what the daemon is.
pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    info(&ctx.client).await
}

async fn info(client: &Client) -> anyhow::Result<()> {
    let orch_api::client::Info {
        version,
        store,
        store_health,
        nodes,
    } = client.info().await?;
    outln!(
        "orchd {version}\nstore: {store} — {store_health}\nnodes: {}",
        nodes.join(", ")
    );
    Ok(())
}
