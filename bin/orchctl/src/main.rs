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
pub(crate) struct Cli {
    /// The daemon's socket (default $ORCH_SOCKET, else ~/.local/share/orch/orchd.sock).
    /// Wins over contexts.
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Talk to the cluster of this context of the config file (default: its current context,
    /// when the file exists and neither --socket nor $ORCH_SOCKET is given).
    #[arg(long, global = true)]
    context: Option<String>,
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

/// Subcommands.
#[derive(Subcommand)]
pub(crate) enum Command {
    /// Create or update objects from files or folders (all or nothing).
    Apply {
        /// Files, folders or `-`.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Validate and show what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Show where each replica would be placed and what would stay pending (and why);
        /// write nothing.
        #[arg(long, conflicts_with = "dry_run")]
        plan: bool,
    },
    /// List objects: services, replicas, nodes, secrets, configs, events.
    Get {
        /// The kind.
        kind: String,
        /// One object's name.
        name: Option<String>,
        /// Output: table (default), wide, yaml, json.
        #[arg(short = 'o', long, default_value = "table")]
        output: String,
        /// Keep watching for changes.
        #[arg(short = 'w', long)]
        watch: bool,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Show one object in detail, with its events.
    Describe {
        /// The kind.
        kind: String,
        /// The name.
        name: String,
    },
    /// Delete an object (a service's replicas are stopped), or everything in files.
    Delete {
        /// The kind (or `-f`).
        kind: Option<String>,
        /// The name.
        name: Option<String>,
        /// Delete the objects these files define.
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        /// An object that is already gone is not an error.
        #[arg(long)]
        ignore_not_found: bool,
    },
    /// Set a service's replica count.
    Scale {
        /// `NAME`, `service/NAME` or `service NAME`.
        target: Vec<String>,
        /// Desired replicas.
        #[arg(long, allow_negative_numbers = true)]
        replicas: i64,
    },
    /// Print a replica's output (stdout and stderr as written, oldest first). Process
    /// replicas keep every run's output: a line `--- restarted at TIME (exit code N) ---` (or
    /// `(signal N)`, `(OOMKilled)`) separates a run from the one before it.
    Logs {
        /// The replica.
        replica: String,
        /// Keep streaming.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines (a last line without its line break counts).
        #[arg(long, value_name = "N")]
        tail: Option<u64>,
        /// At most the last N bytes, starting at the first line that begins within them, so
        /// no line is cut (unlike kubectl's --limit-bytes, which keeps the first N bytes of
        /// what is shown); a line longer than N is shown from its cut. With --tail, whichever
        /// shows less.
        #[arg(long, value_name = "N")]
        tail_bytes: Option<u64>,
    },
    /// Run a command inside a running replica (`orchctl exec web-x7k2p -- cat /etc/hostname`);
    /// prints its output and exits with its exit code (128+N if killed by signal N).
    Exec {
        /// The replica.
        replica: String,
        /// Kill the command after this long (`30s`, `2m`; at most 1h).
        #[arg(long, default_value = "30s")]
        timeout: String,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Create (or replace) a secret or a config from literals and files.
    Create {
        /// `secret` or `config`.
        kind: String,
        /// Its name.
        name: String,
        /// `KEY=VALUE`; repeatable.
        #[arg(long = "from-literal")]
        literals: Vec<String>,
        /// `[KEY=]PATH`: the file's contents under KEY (default: the file's name); repeatable.
        #[arg(long = "from-file")]
        files: Vec<String>,
    },
    /// Named local volumes: ls, rm.
    Volume {
        /// What to do.
        #[command(subcommand)]
        command: cmd::volume::VolumeCommand,
    },
    /// Images on the daemon's nodes.
    Image {
        /// What to do.
        #[command(subcommand)]
        command: cmd::image::ImageCommand,
    },
    /// A service's rollouts: status, history, undo, pause, resume.
    Rollout {
        /// What to do.
        #[command(subcommand)]
        command: cmd::rollout::RolloutCommand,
    },
    /// Node operations: cordon, uncordon, drain, rm.
    Node {
        /// What to do.
        #[command(subcommand)]
        command: cmd::node::NodeCommand,
    },
    /// Log in to a cluster with its manager token (`orchd token --manager`): gets an
    /// administrator's certificate and adds a context for it to the config file.
    Login {
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
    },
    /// Contexts of the config file.
    Config {
        /// What to do.
        #[command(subcommand)]
        command: cmd::config::ConfigCommand,
    },
    /// Show what the daemon is.
    Info,
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

/// Runs the parsed command.
async fn run(cli: Cli) -> anyhow::Result<()> {
    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(orch_api::config::ClientConfig::default_path);
    if let Command::Config { command } = cli.command {
        return cmd::config::config(&config_path, command);
    }
    if let Command::Login {
        server,
        token,
        name,
        context_name,
    } = cli.command
    {
        return cmd::login::login(&config_path, &server, &token, &name, &context_name).await;
    }
    let client = cmd::client(&cli, &config_path)?;
    let asked = cli.namespace;
    let ns = asked
        .clone()
        .unwrap_or_else(|| orch_core::model::object::DEFAULT_NAMESPACE.into());
    match cli.command {
        Command::Apply {
            files, plan: true, ..
        } => cmd::apply::plan(&client, &files, asked).await,
        Command::Apply { files, dry_run, .. } => {
            cmd::apply::apply(&client, &files, dry_run, asked).await
        }
        Command::Get {
            kind,
            name,
            output,
            watch,
            all_namespaces,
        } => cmd::get::get(&client, &ns, &kind, name, &output, watch, all_namespaces).await,
        Command::Describe { kind, name } => {
            cmd::describe::describe(&client, &ns, &kind, &name).await
        }
        Command::Delete {
            kind,
            name,
            files,
            ignore_not_found,
        } => {
            let targets = match files.is_empty() {
                false => cmd::delete::Targets::Files(&files, asked.as_deref()),
                true => cmd::delete::Targets::One(kind, name, &ns),
            };
            cmd::delete::delete(&client, targets, ignore_not_found).await
        }
        Command::Scale { target, replicas } => {
            cmd::scale::scale(&client, &ns, &target, replicas).await
        }
        Command::Logs {
            replica,
            follow,
            tail,
            tail_bytes,
        } => {
            let opts = orch_core::runtime::LogOptions {
                follow,
                tail_bytes,
                tail_lines: tail,
            };
            cmd::logs::logs(&client, &ns, &replica, opts).await
        }
        Command::Exec {
            replica,
            timeout,
            command,
        } => cmd::exec::exec(&client, &ns, &replica, &timeout, command).await,
        Command::Image {
            command: cmd::image::ImageCommand::Import { file, name },
        } => cmd::image::import_image(&client, &file, name).await,
        Command::Node { command } => cmd::node::node(&client, command).await,
        Command::Rollout { command } => cmd::rollout::rollout(&client, &ns, command).await,
        Command::Info => cmd::info::info(&client).await,
        Command::Volume { command } => cmd::volume::volume(&client, command).await,
        Command::Create {
            kind,
            name,
            literals,
            files,
        } => cmd::create::create(&client, &ns, &kind, &name, &literals, &files).await,
        Command::Config { .. } | Command::Login { .. } => unreachable!("handled above"),
    }
}
