//! orchd: the reference daemon. `main` only parses arguments and dispatches.

mod host;
mod runtime;
mod server;
mod store;
mod up;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_level = match &cli.command {
        Command::Up(_) => "warn",
        Command::Server(_) => "info",
    };
    host::init_logging(&cli.log_format, default_level)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Up(a) => up::run(*a).await,
            Command::Server(a) => server::run(*a).await,
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
