//! One module per subcommand, and what several of them share: the client for the flags, the
//! kind argument, manifest files, applied lines.

pub(crate) mod apply;
pub(crate) mod compose;
pub(crate) mod config;
pub(crate) mod convert;
pub(crate) mod create;
pub(crate) mod delete;
pub(crate) mod describe;
pub(crate) mod exec;
pub(crate) mod get;
pub(crate) mod image;
pub(crate) mod info;
pub(crate) mod login;
pub(crate) mod logs;
pub(crate) mod manager;
pub(crate) mod node;
pub(crate) mod rollout;
pub(crate) mod scale;
pub(crate) mod volume;

use std::path::PathBuf;

use anyhow::bail;
use orch_api::Client;
use orch_core::model::object::{Kind, Object};

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
/// config file's current one; `--server` instead of its managers' addresses), else the
/// default socket.
pub(crate) fn client(
    socket: Option<PathBuf>,
    context: Option<&str>,
    server: Option<&str>,
    config_path: &std::path::Path,
) -> anyhow::Result<Client> {
    if socket.is_some()
        || (context.is_none() && server.is_none() && std::env::var_os("ORCH_SOCKET").is_some())
    {
        return Ok(Client::new(socket_path(socket)));
    }
    let config = orch_api::config::ClientConfig::load(config_path).map_err(anyhow::Error::msg)?;
    match (config, context) {
        (Some(c), name) if name.is_some() || !c.current_context.is_empty() => {
            let ctx = c
                .context(name)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?;
            let addrs = match server {
                Some(s) => servers(s)?,
                None => ctx.addresses(),
            };
            Ok(Client::remote_any(&addrs, &ctx.credentials())?)
        }
        (_, _) if server.is_some() => bail!(
            "--server: no context to take credentials from in {} (`orchctl login` or `orchd admin` writes one)",
            config_path.display()
        ),
        (None, Some(name)) => bail!(
            "--context {name}: no config file at {} (`orchd admin` writes one)",
            config_path.display()
        ),
        _ => Ok(Client::new(socket_path(None))),
    }
}

/// `--server HOST:PORT[,HOST:PORT...]`.
fn servers(value: &str) -> anyhow::Result<Vec<String>> {
    let addrs: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    for a in &addrs {
        let ok = a
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        anyhow::ensure!(
            ok,
            "--server: invalid value {a:?}: expected HOST:PORT (a manager's cluster address), several separated by commas"
        );
    }
    anyhow::ensure!(
        !addrs.is_empty(),
        "--server: give a manager's cluster address (HOST:PORT)"
    );
    Ok(addrs)
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
    #[value(name = "cronjobs", aliases = ["cronjob", "cj"])]
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

/// Reads `files` and converts Kubernetes manifests and Compose files among them to orch
/// manifests (`orch_api::files::import`), printing every conversion warning on standard error
/// (naming file, document and field) before anything is sent.
fn import(
    files: &[std::path::PathBuf],
    options: &orch_api::files::ImportOptions,
) -> anyhow::Result<orch_api::files::Imported> {
    let imported = orch_api::files::import(files, options).map_err(anyhow::Error::msg)?;
    for w in &imported.warnings {
        eprintln!("warning: {w}");
    }
    Ok(imported)
}

/// The import options of `apply -f` and `delete -f`: `-n` is where objects that name no
/// namespace go, and a Compose file's project (its namespace) when given.
fn import_options(ctx: &Ctx, strict: bool) -> orch_api::files::ImportOptions {
    orch_api::files::ImportOptions {
        namespace: ctx.asked.clone(),
        project: ctx.asked.clone(),
        strict,
        ..Default::default()
    }
}

/// Warns, before converted objects with fixed container ports are applied, when no node has
/// replica networking: there such ports are the node's own (one node cannot hold two replicas
/// listening on one port). One node list; says nothing when that list fails.
async fn warn_without_replica_networking(client: &Client, converted: &[Object]) {
    let fixed_ports = converted.iter().any(|o| {
        let template = match o {
            Object::Service(s) => &s.spec.template,
            Object::Job(j) => &j.spec.template,
            _ => return false,
        };
        template.image.is_some()
            && !template.host_network
            && template.ports.iter().any(|p| p.port.is_some())
    });
    if !fixed_ports {
        return;
    }
    let Ok(nodes) = client.list(Kind::Node, None).await else {
        return;
    };
    let networked = nodes.objects.iter().any(
        |n| matches!(n, Object::Node(n) if n.status.network.as_ref().is_some_and(|s| s.ready)),
    );
    if !networked {
        eprintln!(
            "warning: no node has replica networking: replicas share the node's network; two replicas on one port cannot share a node"
        );
    }
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
            "route",
            "routes",
            "rt",
            "cronjob",
            "cronjobs",
            "cj",
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
            "unknown kind \"deployments\"; allowed: services, replicas, nodes, secrets, configs, events, jobs, routes, cronjobs"
        );
    }
}
