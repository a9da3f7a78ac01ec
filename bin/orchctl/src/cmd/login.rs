//! `orchctl login`: an administrator's certificate from a manager token.

/// `orchctl login`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The manager's cluster address (`HOST:PORT`).
    server: String,
    /// The manager token.
    #[arg(long)]
    token: String,
    /// Your name (the certificate is for `admin:NAME`).
    #[arg(long)]
    name: String,
    /// The context's name.
    #[arg(long = "as", default_value = "orch")]
    context_name: String,
}

/// Logs in and writes the context to the config file at `config_path`, with every manager's
/// address (the client fails over along them).
pub(crate) async fn run(config_path: &std::path::Path, args: Args) -> anyhow::Result<()> {
    login(
        config_path,
        &args.server,
        &args.token,
        &args.name,
        &args.context_name,
    )
    .await
}

async fn login(
    path: &std::path::Path,
    server: &str,
    token: &str,
    name: &str,
    context: &str,
) -> anyhow::Result<()> {
    let joined = orch_api::grpc::cluster::join_as(server, token, name, true).await?;
    let creds = joined.credentials;
    let mut c = orch_api::config::ClientConfig::load(path)
        .map_err(anyhow::Error::msg)?
        .unwrap_or_default();
    c.upsert(orch_api::config::Context {
        name: context.into(),
        server: server.into(),
        managers: joined
            .managers
            .into_iter()
            .filter(|m| m != server)
            .collect(),
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
