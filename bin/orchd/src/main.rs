//! orchd: the reference daemon. `main` only parses arguments and dispatches.

mod agent;
mod discovery;
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
mod etcd;
mod ha;
mod host;
mod http;
mod network;
mod runtime;
mod server;
mod store;
mod up;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// orchd allocates through mimalloc: at a million replicas glibc's malloc held about 40% more
/// resident memory than the live heap and was slower (benches/README.md, c1m).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// orch: a container orchestrator you can embed.
#[derive(Parser)]
#[command(name = "orchd", version, about)]
struct Cli {
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the manifests in a folder (or file) on this machine, show a live table, stop on Ctrl-C.
    Up(Box<up::UpArgs>),
    /// Run the engine as a long-lived daemon with its state in a data directory.
    Server(Box<server::ServerArgs>),
    /// Run the control plane only (no local agent); agents on other hosts join it (--listen).
    Manager(Box<server::ServerArgs>),
    /// Run a node of a cluster: join a manager with a token, then run its replicas.
    Agent(Box<agent::AgentArgs>),
    /// Print the worker join token (or with --manager the manager token) of the manager whose
    /// data directory this is.
    Token(TokenArgs),
    /// Issue an administrator's certificate and add it as a context to orchctl's config file.
    Admin(AdminArgs),
    /// Put a new key first in DATA_DIR/secret-keys (the key secrets are sealed with at rest);
    /// the daemon re-seals every secret under it at its next start.
    RotateSecretKey(RotateArgs),
    /// Internal: the log writer the process runtime starts beside each workload (its output
    /// on stdin, copied into FILE, never past MAX_BYTES, KEEP rotated files).
    #[command(hide = true)]
    LogWriter(LogWriterArgs),
}

/// Arguments of the hidden `orchd log-writer` (given by the process runtime).
#[derive(clap::Args)]
struct LogWriterArgs {
    /// The log file.
    file: PathBuf,
    /// The most the file holds before it is rotated.
    max_bytes: u64,
    /// How many rotated files are kept.
    keep: usize,
}

/// Copies stdin into the log until every writer of the pipe has closed it. Runs with no async
/// runtime and no logging: it is one small process per workload.
fn log_writer(args: LogWriterArgs) -> anyhow::Result<()> {
    orch_runtime::copy_capped(
        std::io::stdin().lock(),
        &args.file,
        args.max_bytes,
        args.keep,
    )
    .map_err(|e| anyhow::anyhow!("log writer for {}: {e}", args.file.display()))
}

/// Arguments of `orchd rotate-secret-key`.
#[derive(clap::Args)]
struct RotateArgs {
    /// The daemon's data directory (default $ORCH_DATA_DIR or ~/.local/share/orch).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn rotate_secret_key(args: RotateArgs) -> anyhow::Result<()> {
    let path = args
        .data_dir
        .unwrap_or_else(default_data_dir)
        .join(store::SECRET_KEYS);
    anyhow::ensure!(
        path.exists(),
        "{}: no keyring here; start orchd with this data directory first",
        path.display()
    );
    let id = orch_store::encrypted::Keyring::rotate(&path).map_err(anyhow::Error::msg)?;
    println!(
        "new secret key {id} is first in {}; restart orchd to re-seal every secret with it (older keys stay in the file until you remove them)",
        path.display()
    );
    Ok(())
}

/// Arguments of `orchd admin`.
#[derive(clap::Args)]
struct AdminArgs {
    /// The manager's data directory (default $ORCH_DATA_DIR or ~/.local/share/orch).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Who the certificate is for (`CN=admin:NAME`).
    #[arg(long)]
    name: String,
    /// The manager's cluster address as clients reach it (`HOST:PORT`).
    #[arg(long)]
    server: String,
    /// The context's name in the config file.
    #[arg(long, default_value = "orch")]
    context: String,
    /// orchctl's config file to add the context to (default $ORCH_CONFIG or
    /// ~/.config/orch/config.yaml); written mode 0600.
    #[arg(long)]
    config: Option<PathBuf>,
    /// How long the certificate is valid.
    #[arg(long, value_parser = server::parse_span, default_value = "365d")]
    validity: std::time::Duration,
}

fn admin(args: AdminArgs) -> anyhow::Result<()> {
    use orch_api::config::{ClientConfig, Context};
    let dir = args
        .data_dir
        .unwrap_or_else(default_data_dir)
        .join("cluster");
    anyhow::ensure!(
        dir.join("ca.pem").exists(),
        "{}: no cluster CA here; start `orchd manager --listen ...` (or `orchd server --listen ...`) with this data directory first",
        dir.display()
    );
    orch_core::model::validate::dns1123_label(&args.name)
        .map_err(|e| anyhow::anyhow!("--name: invalid value {:?}: {e}", args.name))?;
    let m = orch_api::grpc::cluster::Manager::open(
        &dir,
        orch_api::grpc::cluster::DEFAULT_CERT_VALIDITY,
    )?;
    let creds = m.admin_credentials(&args.name, args.validity)?;
    let path = args.config.unwrap_or_else(|| {
        ClientConfig::default_path(std::env::var_os("ORCH_CONFIG"), std::env::var_os("HOME"))
    });
    let mut config = ClientConfig::load(&path)
        .map_err(anyhow::Error::msg)?
        .unwrap_or_default();
    config.upsert(Context {
        name: args.context.clone(),
        server: args.server,
        managers: Vec::new(),
        ca: creds.ca_pem,
        certificate: creds.cert_pem,
        key: creds.key_pem,
    });
    config.save(&path).map_err(anyhow::Error::msg)?;
    println!(
        "context {} (admin {}) written to {}; it is the current context",
        args.context,
        args.name,
        path.display()
    );
    Ok(())
}

/// Arguments of `orchd token`.
#[derive(clap::Args)]
struct TokenArgs {
    /// The manager's data directory (default $ORCH_DATA_DIR or ~/.local/share/orch).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Replace the token first: the old one admits no one from now on.
    #[arg(long)]
    rotate: bool,
    /// The manager token (administrators log in with it: `orchctl login`) instead of the
    /// worker token.
    #[arg(long)]
    manager: bool,
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let dir = args
        .data_dir
        .unwrap_or_else(default_data_dir)
        .join("cluster");
    let m = orch_api::grpc::cluster::Manager::open(
        &dir,
        orch_api::grpc::cluster::DEFAULT_CERT_VALIDITY,
    )?;
    let t = match (args.manager, args.rotate) {
        (false, false) => m.worker_token()?,
        (false, true) => m.rotate_worker_token()?,
        (true, false) => m.manager_token()?,
        (true, true) => m.rotate_manager_token()?,
    };
    println!("{t}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::LogWriter(a) => return log_writer(a),
        other => other,
    };
    let default_level = match &command {
        Command::Up(_) => "warn",
        Command::Server(_) | Command::Manager(_) | Command::Agent(_) => "info",
        Command::Token(_)
        | Command::Admin(_)
        | Command::RotateSecretKey(_)
        | Command::LogWriter(_) => "warn",
    };
    host::init_logging(&cli.log_format, default_level)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match command {
            Command::Up(a) => up::run(*a).await,
            Command::Server(a) => server::run(*a).await,
            Command::Manager(mut a) => {
                a.no_agent = true;
                server::run(*a).await
            }
            Command::Agent(a) => agent::run(*a).await,
            Command::Token(a) => token(a),
            Command::Admin(a) => admin(a),
            Command::RotateSecretKey(a) => rotate_secret_key(a),
            Command::LogWriter(a) => log_writer(a),
        }
    })
}

/// Where state goes when no directory is given.
fn default_data_dir() -> PathBuf {
    std::env::var_os("ORCH_DATA_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/orch")))
        .unwrap_or_else(|| PathBuf::from("/var/lib/orch"))
}
