//! One module per subcommand, and what several of them share: the client for the flags, the
//! kind argument, manifest files, applied lines.

pub(crate) mod apply;
pub(crate) mod config;
pub(crate) mod create;
pub(crate) mod delete;
pub(crate) mod describe;
pub(crate) mod exec;
pub(crate) mod get;
pub(crate) mod image;
pub(crate) mod info;
pub(crate) mod login;
pub(crate) mod logs;
pub(crate) mod node;
pub(crate) mod rollout;
pub(crate) mod scale;
pub(crate) mod volume;

use std::path::PathBuf;

use anyhow::bail;
use orch_api::Client;
use orch_core::model::object::Kind;

/// What a verb that talks to a daemon gets: the client and the namespace.
pub(crate) struct Ctx {
    /// The daemon's client.
    pub(crate) client: Client,
    /// `-n`, when given (for `apply -f` and `delete -f`: where objects that name none go).
    pub(crate) asked: Option<String>,
    /// `-n`, else `default`.
    pub(crate) ns: String,
}

impl Ctx {
    /// The context for `client` and the `-n` flag.
    pub(crate) fn new(client: Client, namespace: Option<String>) -> Ctx {
        let ns = namespace
            .clone()
            .unwrap_or_else(|| orch_core::model::object::DEFAULT_NAMESPACE.into());
        Ctx {
            client,
            asked: namespace,
            ns,
        }
    }
}

/// The local socket (`--socket`, `$ORCH_SOCKET`), else the context (`--context`, else the
/// config file's current one), else the default socket.
pub(crate) fn client(
    socket: Option<PathBuf>,
    context: Option<&str>,
    config_path: &std::path::Path,
) -> anyhow::Result<Client> {
    if socket.is_some() || (context.is_none() && std::env::var_os("ORCH_SOCKET").is_some()) {
        return Ok(Client::new(socket_path(socket)));
    }
    let config = orch_api::config::ClientConfig::load(config_path).map_err(anyhow::Error::msg)?;
    match (config, context) {
        (Some(c), name) if name.is_some() || !c.current_context.is_empty() => {
            let ctx = c
                .context(name)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?;
            Ok(Client::remote(&ctx.server, &ctx.credentials())?)
        }
        (None, Some(name)) => bail!(
            "--context {name}: no config file at {} (`orchd admin` writes one)",
            config_path.display()
        ),
        _ => Ok(Client::new(socket_path(None))),
    }
}

/// The socket to use.
fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("ORCH_SOCKET").map(PathBuf::from))
        .or_else(|| std::env::var_os("ORCH_DATA_DIR").map(|d| PathBuf::from(d).join("orchd.sock")))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/orch/orchd.sock"))
        })
        .unwrap_or_else(|| PathBuf::from("/var/lib/orch/orchd.sock"))
}

/// A kind as users name it: plural, singular or short (`services`, `service`, `svc`), in any
/// case (`#[arg(ignore_case = true)]`); the names `Kind::from_user` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum KindArg {
    #[value(aliases = ["service", "svc"])]
    Services,
    #[value(aliases = ["replica", "rep", "pod", "pods"])]
    Replicas,
    #[value(aliases = ["node", "no"])]
    Nodes,
    #[value(alias = "secret")]
    Secrets,
    #[value(aliases = ["config", "cm", "configmap", "configmaps"])]
    Configs,
    #[value(aliases = ["event", "ev"])]
    Events,
    #[value(alias = "job")]
    Jobs,
    #[value(aliases = ["route", "rt"])]
    Routes,
    #[value(aliases = ["cronjob", "cj"])]
    CronJobs,
}

impl From<KindArg> for Kind {
    fn from(k: KindArg) -> Kind {
        match k {
            KindArg::Services => Kind::Service,
            KindArg::Replicas => Kind::Replica,
            KindArg::Nodes => Kind::Node,
            KindArg::Secrets => Kind::Secret,
            KindArg::Configs => Kind::Config,
            KindArg::Events => Kind::Event,
            KindArg::Jobs => Kind::Job,
            KindArg::Routes => Kind::Route,
            KindArg::CronJobs => Kind::CronJob,
        }
    }
}

/// A kind inside a free-form argument (`delete KIND/NAME`, `scale service NAME`): the names
/// [`KindArg`] takes; the error names those allowed.
fn kind_arg(s: &str) -> anyhow::Result<Kind> {
    use clap::ValueEnum;
    KindArg::from_str(s, true).map(Kind::from).map_err(|_| {
        let allowed: Vec<String> = KindArg::value_variants()
            .iter()
            .filter_map(|k| k.to_possible_value())
            .map(|v| v.get_name().to_string())
            .collect();
        anyhow::anyhow!("unknown kind {s:?}; allowed: {}", allowed.join(", "))
    })
}

fn read_all(files: &[std::path::PathBuf]) -> anyhow::Result<Vec<orch_api::protocol::ManifestText>> {
    let mut out = Vec::new();
    for f in files {
        out.extend(orch_api::files::read_manifests(f).map_err(anyhow::Error::msg)?);
    }
    Ok(out)
}

/// `service/web created`, with the namespace when it is not `default`:
/// `service/web (dev) created`.
fn applied_line(r: &orch_api::protocol::Applied, dry_run: bool) -> String {
    format!(
        "{}{} {}{}",
        r.name,
        in_namespace(&r.namespace),
        r.action,
        if dry_run { " (dry run)" } else { "" }
    )
}

/// ` (dev)` for objects outside `default`; nothing for `default` and for kinds without a
/// namespace (as kubectl prints them).
fn in_namespace(ns: &str) -> String {
    if ns.is_empty() || ns == orch_core::model::object::DEFAULT_NAMESPACE {
        String::new()
    } else {
        format!(" ({ns})")
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;
    use orch_core::model::object::Kind;

    use super::{kind_arg, KindArg};

    /// `KindArg` takes exactly the names `Kind::from_user` takes, in any case.
    #[test]
    fn kind_arg_takes_the_names_kind_from_user_takes() {
        let mut taken = Vec::new();
        for k in KindArg::value_variants() {
            let v = k.to_possible_value().unwrap();
            for name in v.get_name_and_aliases() {
                assert_eq!(Kind::from_user(name), Some(Kind::from(*k)), "{name}");
                let upper = name.to_ascii_uppercase();
                assert_eq!(KindArg::from_str(&upper, true), Ok(*k), "{upper}");
                taken.push(name.to_string());
            }
        }
        taken.sort();
        let mut from_user = [
            "service",
            "services",
            "svc",
            "replica",
            "replicas",
            "rep",
            "pod",
            "pods",
            "node",
            "nodes",
            "no",
            "secret",
            "secrets",
            "config",
            "configs",
            "cm",
            "configmap",
            "configmaps",
            "event",
            "events",
            "ev",
            "job",
            "jobs",
        ];
        from_user.sort();
        assert_eq!(taken, from_user);
        for k in Kind::ALL {
            assert!(Kind::from_user(k.plural()).is_some(), "{k:?}");
            assert_eq!(kind_arg(k.plural()).unwrap(), k);
        }
        let e = kind_arg("deployments").unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown kind \"deployments\"; allowed: services, replicas, nodes, secrets, configs, events, jobs"
        );
    }
}
