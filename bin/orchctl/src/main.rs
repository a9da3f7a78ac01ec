//! orchctl: the command-line client. `main` parses and dispatches; each subcommand is one
//! module of `cmd`.

/// `println!` that returns the write error (a closed pipe, as in `orchctl get | head`)
/// instead of panicking; `main` exits quietly on a broken pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// `print!` that returns the write error; see [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Talk to an orch daemon.
#[derive(Parser)]
#[command(name = "orchctl", version, about)]
struct Cli {
    /// The daemon's socket (default $ORCH_SOCKET, else ~/.local/share/orch/orchd.sock).
    /// Wins over contexts.
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Talk to the cluster of this context of the config file (default: its current context,
    /// when the file exists and neither --socket nor $ORCH_SOCKET is given).
    #[arg(long, global = true)]
    context: Option<String>,
    /// The manager to talk to (`HOST:PORT`, several separated by commas), with the context's
    /// credentials, instead of the context's managers.
    #[arg(long, global = true)]
    server: Option<String>,
    /// The config file with the contexts (default $ORCH_CONFIG, else
    /// ~/.config/orch/config.yaml; `orchd admin` writes it).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Namespace (default: `default`). For `apply -f` and `delete -f`, where objects that
    /// name no namespace go; a file naming another namespace is refused.
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// Subcommands: each is a module of `cmd` with its arguments and its `run`.
#[derive(Subcommand)]
enum Command {
    /// Create or update objects from files or folders (all or nothing).
    Apply(cmd::apply::Args),
    /// List objects: services, replicas, nodes, secrets, configs, events, jobs, routes,
    /// cronjobs; or the managers.
    Get(cmd::get::Args),
    /// Show one object in detail, with its events.
    Describe(cmd::describe::Args),
    /// Delete an object (a service's replicas are stopped), or everything in files.
    Delete(cmd::delete::Args),
    /// Set a service's replica count.
    Scale(cmd::scale::Args),
    /// Print a replica's output (stdout and stderr as written, oldest first). Process
    /// replicas keep every run's output: a line `--- restarted at TIME (exit code N) ---` (or
    /// `(signal N)`, `(OOMKilled)`) separates a run from the one before it.
    Logs(cmd::logs::Args),
    /// Run a command inside a running replica (`orchctl exec web-x7k2p -- cat /etc/hostname`);
    /// prints its output and exits with its exit code (128+N if killed by signal N).
    Exec(cmd::exec::Args),
    /// Create (or replace) a secret or a config from literals and files.
    Create(cmd::create::Args),
    /// Named local volumes: ls, rm.
    #[command(subcommand)]
    Volume(cmd::volume::Command),
    /// Images on the daemon's nodes.
    #[command(subcommand)]
    Image(cmd::image::Command),
    /// A service's rollouts: status, history, undo, pause, resume.
    #[command(subcommand)]
    Rollout(cmd::rollout::Command),
    /// Node operations: cordon, uncordon, drain, rm.
    #[command(subcommand)]
    Node(cmd::node::Command),
    /// The cluster's managers: ls, rm.
    #[command(subcommand)]
    Manager(cmd::manager::Command),
    /// Log in to a cluster with its manager token (`orchd token --manager`): gets an
    /// administrator's certificate and adds a context for it to the config file.
    Login(cmd::login::Args),
    /// Contexts of the config file.
    #[command(subcommand)]
    Config(cmd::config::Command),
    /// Show what the daemon is.
    Info,
    /// Print the orch objects Kubernetes manifests or a Compose file become (no daemon
    /// needed); fields orch does not honour are warnings on standard error.
    Convert(cmd::convert::Args),
    /// Run a Compose file: up, down, ps, logs (its project is a namespace).
    Compose(cmd::compose::Args),
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        let broken_pipe = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if broken_pipe {
            // The reader went away (`orchctl get | head`): nothing more to say.
            std::process::exit(0);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Runs the parsed command: the config file's verbs without a daemon, the others with a client
/// for the flags.
async fn run(cli: Cli) -> anyhow::Result<()> {
    let config_path = cli.config.unwrap_or_else(|| {
        orch_api::config::ClientConfig::default_path(
            std::env::var_os("ORCH_CONFIG"),
            std::env::var_os("HOME"),
        )
    });
    let client = match cli.command {
        Command::Config(command) => return cmd::config::run(&config_path, command),
        Command::Login(args) => return cmd::login::run(&config_path, args).await,
        Command::Convert(args) => return cmd::convert::run(cli.namespace, args),
        _ => cmd::client(
            cli.socket,
            cli.context.as_deref(),
            cli.server.as_deref(),
            &config_path,
        )?,
    };
    let ctx = cmd::Ctx::new(client, cli.namespace);
    match cli.command {
        Command::Apply(args) => cmd::apply::run(&ctx, args).await,
        Command::Get(args) => cmd::get::run(&ctx, args).await,
        Command::Describe(args) => cmd::describe::run(&ctx, args).await,
        Command::Delete(args) => cmd::delete::run(&ctx, args).await,
        Command::Scale(args) => cmd::scale::run(&ctx, args).await,
        Command::Logs(args) => cmd::logs::run(&ctx, args).await,
        Command::Exec(args) => cmd::exec::run(&ctx, args).await,
        Command::Create(args) => cmd::create::run(&ctx, args).await,
        Command::Volume(command) => cmd::volume::run(&ctx, command).await,
        Command::Image(command) => cmd::image::run(&ctx, command).await,
        Command::Rollout(command) => cmd::rollout::run(&ctx, command).await,
        Command::Node(command) => cmd::node::run(&ctx, command).await,
        Command::Manager(command) => cmd::manager::run(&ctx, command).await,
        Command::Info => cmd::info::run(&ctx).await,
        Command::Compose(args) => cmd::compose::run(&ctx, args).await,
        Command::Config(_) | Command::Login(_) | Command::Convert(_) => {
            unreachable!("handled above")
        }
    }
}
