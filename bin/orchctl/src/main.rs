//! orchctl: the command-line client. `main` parses and dispatches; each subcommand is one
//! function in `commands`.

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

mod commands;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Talk to an orch daemon.
#[derive(Parser)]
#[command(name = "orchctl", version, about)]
pub struct Cli {
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
pub enum Command {
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
        command: VolumeCommand,
    },
    /// Images on the daemon's nodes.
    Image {
        /// What to do.
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// A service's rollouts: status, history, undo, pause, resume.
    Rollout {
        /// What to do.
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Node operations: cordon, uncordon, drain, rm.
    Node {
        /// What to do.
        #[command(subcommand)]
        command: NodeCommand,
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
        command: ConfigCommand,
    },
    /// Show what the daemon is.
    Info,
}

/// `orchctl config ...`.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// List the contexts (`*` marks the current one).
    GetContexts,
    /// Make a context the current one.
    UseContext {
        /// Its name.
        name: String,
    },
}

/// `orchctl rollout ...`.
#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
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

/// `orchctl node ...`.
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
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

/// `orchctl image ...`.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import an OCI image layout tarball (`skopeo copy ... oci-archive:FILE`) into the
    /// container runtime of every node this daemon runs, for nodes without a registry.
    Import {
        /// The archive (on the daemon's machine).
        file: std::path::PathBuf,
        /// Record it under this name (default: the archive's ref name). When the archive holds
        /// several images, the one whose ref name this is.
        #[arg(long)]
        name: Option<String>,
    },
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
    if let Err(e) = rt.block_on(commands::run(cli)) {
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

/// The socket to use.
pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("ORCH_SOCKET").map(PathBuf::from))
        .or_else(|| std::env::var_os("ORCH_DATA_DIR").map(|d| PathBuf::from(d).join("orchd.sock")))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/orch/orchd.sock"))
        })
        .unwrap_or_else(|| PathBuf::from("/var/lib/orch/orchd.sock"))
}

/// `orchctl volume ...`.
#[derive(Subcommand)]
pub enum VolumeCommand {
    /// The volumes on every node.
    Ls,
    /// Remove a volume and its data from a node (refused while a replica uses it).
    Rm {
        /// The volume.
        name: String,
        /// The node (needed when several hold a volume of that name).
        #[arg(long)]
        node: Option<String>,
    },
}
