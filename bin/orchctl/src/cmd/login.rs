//! `orchctl login`: an administrator's certificate from a manager token.

pub(crate) async fn login(
    path: &std::path::Path,
    server: &str,
    token: &str,
    name: &str,
    context: &str,
) -> anyhow::Result<()> {
    let creds = orch_api::grpc::cluster::login(server, token, name).await?;
    let mut c = orch_api::config::ClientConfig::load(path)
        .map_err(anyhow::Error::msg)?
        .unwrap_or_default();
    c.upsert(orch_api::config::Context {
        name: context.into(),
        server: server.into(),
        ca: creds.ca_pem,
        certificate: creds.cert_pem,
        key: creds.key_pem,
    });
    c.save(path).map_err(anyhow::Error::msg)?;
    outln!(
        "logged in to {server} as admin:{name}; context {context} written to {} (current)",
        path.display()
    );
    Ok(())
}
