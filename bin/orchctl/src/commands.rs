//! One function per subcommand.

use std::io::Write;

use anyhow::{bail, Context};
use futures::StreamExt;
use orch_api::client::ClientError;
use orch_api::protocol::{ErrorCode, Request, Response, WatchType};
use orch_api::{render, Client};
use orch_core::model::object::{Kind, Object};

use crate::{socket_path, Cli, Command};

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(orch_api::config::ClientConfig::default_path);
    if let Command::Config { command } = cli.command {
        return config(&config_path, command);
    }
    if let Command::Login {
        server,
        token,
        name,
        context_name,
    } = cli.command
    {
        return login(&config_path, &server, &token, &name, &context_name).await;
    }
    let client = client(&cli, &config_path)?;
    let asked = cli.namespace;
    let ns = asked
        .clone()
        .unwrap_or_else(|| orch_core::model::object::DEFAULT_NAMESPACE.into());
    match cli.command {
        Command::Apply {
            files, plan: true, ..
        } => plan(&client, &files, asked).await,
        Command::Apply { files, dry_run, .. } => apply(&client, &files, dry_run, asked).await,
        Command::Get {
            kind,
            name,
            output,
            watch,
            all_namespaces,
        } => get(&client, &ns, &kind, name, &output, watch, all_namespaces).await,
        Command::Describe { kind, name } => describe(&client, &ns, &kind, &name).await,
        Command::Delete {
            kind,
            name,
            files,
            ignore_not_found,
        } => {
            let targets = match files.is_empty() {
                false => Targets::Files(&files, asked.as_deref()),
                true => Targets::One(kind, name, &ns),
            };
            delete(&client, targets, ignore_not_found).await
        }
        Command::Scale { target, replicas } => scale(&client, &ns, &target, replicas).await,
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
            logs(&client, &ns, &replica, opts).await
        }
        Command::Exec {
            replica,
            timeout,
            command,
        } => exec(&client, &ns, &replica, &timeout, command).await,
        Command::Image {
            command: crate::ImageCommand::Import { file, name },
        } => import_image(&client, &file, name).await,
        Command::Node { command } => node(&client, command).await,
        Command::Rollout { command } => rollout(&client, &ns, command).await,
        Command::Info => info(&client).await,
        Command::Volume { command } => volume(&client, command).await,
        Command::Create {
            kind,
            name,
            literals,
            files,
        } => create(&client, &ns, &kind, &name, &literals, &files).await,
        Command::Config { .. } | Command::Login { .. } => unreachable!("handled above"),
    }
}

/// The local socket (`--socket`, `$ORCH_SOCKET`), else the context (`--context`, else the
/// config file's current one), else the default socket.
fn client(cli: &Cli, config_path: &std::path::Path) -> anyhow::Result<Client> {
    if cli.socket.is_some() || (cli.context.is_none() && std::env::var_os("ORCH_SOCKET").is_some())
    {
        return Ok(Client::new(socket_path(cli.socket.clone())));
    }
    let config = orch_api::config::ClientConfig::load(config_path).map_err(anyhow::Error::msg)?;
    match (config, &cli.context) {
        (Some(c), name) if name.is_some() || !c.current_context.is_empty() => {
            let ctx = c
                .context(name.as_deref())
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

async fn login(
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

fn config(path: &std::path::Path, command: crate::ConfigCommand) -> anyhow::Result<()> {
    let mut c = orch_api::config::ClientConfig::load(path)
        .map_err(anyhow::Error::msg)?
        .with_context(|| {
            format!(
                "no config file at {} (`orchd admin` writes one)",
                path.display()
            )
        })?;
    match command {
        crate::ConfigCommand::GetContexts => {
            for ctx in &c.contexts {
                let mark = if ctx.name == c.current_context {
                    "*"
                } else {
                    " "
                };
                outln!("{mark} {}\t{}", ctx.name, ctx.server);
            }
        }
        crate::ConfigCommand::UseContext { name } => {
            c.context(Some(&name))
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            c.current_context = name.clone();
            c.save(path).map_err(anyhow::Error::msg)?;
            outln!("current context: {name}");
        }
    }
    Ok(())
}

fn service_name(arg: &str) -> String {
    arg.strip_prefix("service/")
        .or_else(|| arg.strip_prefix("svc/"))
        .unwrap_or(arg)
        .to_string()
}

async fn fetch_service(
    client: &Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<orch_core::model::object::Service> {
    match client
        .call(Request::Get {
            kind: Kind::Service,
            namespace: Some(ns.into()),
            name: Some(name.into()),
        })
        .await?
    {
        Response::Objects { mut objects, .. } if !objects.is_empty() => match objects.remove(0) {
            Object::Service(s) => Ok(*s),
            other => bail!("unexpected object {}", other.display_name()),
        },
        _ => bail!("service {name:?} not found in namespace {ns:?}"),
    }
}

async fn rollout(client: &Client, ns: &str, command: crate::RolloutCommand) -> anyhow::Result<()> {
    use crate::RolloutCommand as C;
    use orch_core::engine::api::RolloutAction;
    use orch_core::model::object::RolloutState;
    let (name, action) = match command {
        C::Status { service, timeout } => {
            let limit = orch_core::model::quantity::Span::parse(&timeout)
                .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?
                .0;
            let name = service_name(&service);
            let start = std::time::Instant::now();
            let mut last = String::new();
            loop {
                let svc = fetch_service(client, ns, &name).await?;
                let st = &svc.status;
                // Trust the status only once it describes the current spec.
                let observed = render::rollout_status_line(&svc);
                let line = observed.clone().unwrap_or_else(|| {
                    format!(
                        "waiting for the controller to observe generation {}",
                        svc.metadata.generation
                    )
                });
                if line != last {
                    outln!("{line}");
                    last = line;
                }
                if observed.is_some() {
                    match st.rollout.state {
                        RolloutState::Complete => {
                            outln!("service/{name}: revision {} rolled out", st.revision);
                            return Ok(());
                        }
                        RolloutState::Failed | RolloutState::RolledBack => {
                            bail!("service/{name}: {}", st.rollout.message)
                        }
                        RolloutState::Progressing | RolloutState::Paused => {}
                    }
                }
                if start.elapsed() > limit {
                    eprintln!(
                        "service/{name}: still {:?} after {limit:?}",
                        st.rollout.state
                    );
                    std::process::exit(2);
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        C::History { service } => {
            let name = service_name(&service);
            let svc = fetch_service(client, ns, &name).await?;
            out!("{}", render::rollout_history(&svc));
            return Ok(());
        }
        C::Undo {
            service,
            to_revision,
        } => (service_name(&service), RolloutAction::Undo { to_revision }),
        C::Pause { service } => (service_name(&service), RolloutAction::Pause),
        C::Resume { service } => (service_name(&service), RolloutAction::Resume),
    };
    client
        .call(Request::Rollout {
            namespace: ns.into(),
            name: name.clone(),
            action,
        })
        .await?;
    let done = match action {
        RolloutAction::Undo { .. } => "rolled back",
        RolloutAction::Pause => "paused",
        RolloutAction::Resume => "resumed",
    };
    outln!("service/{name} {done}");
    Ok(())
}

async fn node(client: &Client, command: crate::NodeCommand) -> anyhow::Result<()> {
    use crate::NodeCommand as C;
    use orch_core::engine::api::NodeOp;
    let (name, action, wait) = match command {
        C::Ls => {
            return get(client, "default", "nodes", None, "table", false, false).await;
        }
        C::Cordon { node } => (node, NodeOp::Cordon, None),
        C::Uncordon { node } => (node, NodeOp::Uncordon, None),
        C::Drain {
            node,
            no_wait,
            timeout,
            force,
        } => {
            let limit = orch_core::model::quantity::Span::parse(&timeout)
                .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
            // Say at once what cannot move, before changing anything.
            let stranded = stranded_by_drain(client, &node).await?;
            if !stranded.is_empty() {
                if !force {
                    bail!(
                        "node/{node}: {}; nothing was changed (add or uncordon a node that can take them, or pass --force to drain anyway: those replicas stay until a node can take them)",
                        lines(&stranded)
                    );
                }
                for (s, _) in &stranded {
                    eprintln!("warning: node/{node}: {s}; they stay until a node can take them");
                }
            }
            (node, NodeOp::Drain, (!no_wait).then_some(limit.0))
        }
        C::Rm { node, force } => (node, NodeOp::Remove { force }, None),
    };
    client
        .call(Request::Node {
            node: name.clone(),
            action,
        })
        .await?;
    let done = match action {
        NodeOp::Cordon => "cordoned",
        NodeOp::Uncordon => "uncordoned",
        NodeOp::Drain => "draining",
        NodeOp::Remove { .. } => "removed",
    };
    outln!("node/{name} {done}");
    let Some(limit) = wait else {
        return Ok(());
    };
    let start = std::time::Instant::now();
    let mut last = usize::MAX;
    loop {
        let left = list(client, Kind::Replica, None)
            .await?
            .into_iter()
            .filter(|o| {
                matches!(o, Object::Replica(r) if r.spec.node.as_deref() == Some(name.as_str()))
            })
            .count();
        if left == 0 {
            outln!("node/{name} drained");
            return Ok(());
        }
        let stranded = stranded_by_drain(client, &name).await?;
        let stuck: usize = stranded.iter().map(|(_, n)| n).sum();
        if stuck > 0 && stuck >= left {
            bail!("node/{name}: {left} replica(s) stay: {} (the node stays cordoned and draining; they move once a node can take them)", lines(&stranded));
        }
        if left != last {
            outln!("node/{name}: {left} replica(s) left");
            last = left;
        }
        if start.elapsed() > limit {
            bail!("node/{name}: {left} replica(s) still there after {limit:?} (the node stays cordoned and draining continues)");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// What draining `node` cannot move: `(line, replicas)` per service, the line saying
/// `no other schedulable node for service NS/NAME's replicas (N on NODE)`.
async fn stranded_by_drain(client: &Client, node: &str) -> anyhow::Result<Vec<(String, usize)>> {
    let nodes: Vec<orch_core::model::object::Node> = list(client, Kind::Node, None)
        .await?
        .into_iter()
        .filter_map(|o| match o {
            Object::Node(n) => Some(n),
            _ => None,
        })
        .collect();
    let replicas: Vec<orch_core::model::object::Replica> = list(client, Kind::Replica, None)
        .await?
        .into_iter()
        .filter_map(|o| match o {
            Object::Replica(r) => Some(r),
            _ => None,
        })
        .collect();
    Ok(
        orch_core::engine::nodes::stranded_by_drain(node, &nodes, &replicas)
            .into_iter()
            .map(|(ns, svc, n)| {
                (
                    format!("no other schedulable node for service {ns}/{svc}'s replicas ({n} on {node})"),
                    n,
                )
            })
            .collect(),
    )
}

fn lines(stranded: &[(String, usize)]) -> String {
    stranded
        .iter()
        .map(|(l, _)| l.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

fn kind_arg(s: &str) -> anyhow::Result<Kind> {
    Kind::from_user(s).with_context(|| format!("unknown kind {s:?}; allowed: services (svc), replicas, nodes, secrets, configs, events"))
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

async fn apply(
    client: &Client,
    files: &[std::path::PathBuf],
    dry_run: bool,
    namespace: Option<String>,
) -> anyhow::Result<()> {
    let manifests = read_all(files)?;
    // Validate locally first: errors name the files without a round trip.
    let parsed = orch_api::files::parse_with_warnings(&manifests, namespace.as_deref())
        .map_err(anyhow::Error::msg)?;
    // Fields orch sets itself (status, metadata.uid, ...) are ignored, as kubectl ignores
    // status: say so.
    for w in &parsed.warnings {
        eprintln!("warning: {w}");
    }
    match client
        .call(Request::Apply {
            manifests,
            dry_run,
            namespace,
        })
        .await?
    {
        Response::Applied { results, dry_run } => {
            for r in results {
                outln!("{}", applied_line(&r, dry_run));
                for c in &r.changes {
                    outln!("  {c}");
                }
            }
            Ok(())
        }
        other => bail!("unexpected response: {other:?}"),
    }
}

async fn plan(
    client: &Client,
    files: &[std::path::PathBuf],
    namespace: Option<String>,
) -> anyhow::Result<()> {
    let manifests = read_all(files)?;
    orch_api::files::parse(&manifests, namespace.as_deref()).map_err(anyhow::Error::msg)?;
    match client
        .call(Request::Plan {
            manifests,
            namespace,
        })
        .await?
    {
        Response::Plan { plan } => {
            out!("{}", render::plan(&plan));
            Ok(())
        }
        other => bail!("unexpected response: {other:?}"),
    }
}

fn print_objects(objs: &[Object], output: &str, all_namespaces: bool) -> anyhow::Result<()> {
    match output {
        "table" | "wide" => {
            if objs.is_empty() {
                eprintln!("No resources found.");
            } else {
                out!("{}", render::objects_table(objs, all_namespaces));
            }
        }
        "yaml" => out!("{}", orch_core::model::manifest::to_yaml(objs)),
        "json" => {
            let v: Vec<serde_json::Value> = objs.iter().map(Object::to_display_value).collect();
            let out = if v.len() == 1 {
                v[0].clone()
            } else {
                serde_json::json!({"apiVersion": "orch/v1", "kind": "List", "items": v})
            };
            outln!("{}", serde_json::to_string_pretty(&out)?);
        }
        other => bail!("-o: invalid value {other:?}: allowed: table, wide, yaml, json"),
    }
    Ok(())
}

async fn get(
    client: &Client,
    ns: &str,
    kind: &str,
    name: Option<String>,
    output: &str,
    watch: bool,
    all: bool,
) -> anyhow::Result<()> {
    let kind = kind_arg(kind)?;
    let namespace = if all { None } else { Some(ns.to_string()) };
    if watch {
        let mut stream = client
            .stream(Request::Watch {
                kind,
                namespace,
                since: None,
            })
            .await?;
        let mut printed_header = false;
        while let Some(item) = stream.next().await {
            let Response::Watch { event, object } = item? else {
                continue;
            };
            if name.as_ref().is_some_and(|n| *n != object.metadata().name) {
                continue;
            }
            match output {
                "table" | "wide" => {
                    let (header, mut cells) = render::row(&object, all);
                    if event == WatchType::Deleted {
                        cells.push("(deleted)".into());
                    }
                    let t = render::table(&header, &[cells]);
                    let mut lines = t.lines();
                    let h = lines.next().unwrap_or_default();
                    if !printed_header {
                        outln!("{h}");
                        printed_header = true;
                    }
                    for l in lines {
                        outln!("{l}");
                    }
                }
                "json" => outln!(
                    "{}",
                    serde_json::json!({"type": format!("{event:?}").to_uppercase(), "object": object.to_display_value()})
                ),
                _ => print_objects(std::slice::from_ref(&object), output, all)?,
            }
            std::io::stdout().flush()?;
        }
        return Ok(());
    }
    match client
        .call(Request::Get {
            kind,
            namespace,
            name,
        })
        .await?
    {
        Response::Objects { objects, .. } => print_objects(&objects, output, all),
        other => bail!("unexpected response: {other:?}"),
    }
}

async fn list(client: &Client, kind: Kind, ns: Option<&str>) -> anyhow::Result<Vec<Object>> {
    match client
        .call(Request::Get {
            kind,
            namespace: ns.map(String::from),
            name: None,
        })
        .await?
    {
        Response::Objects { objects, .. } => Ok(objects),
        other => bail!("unexpected response: {other:?}"),
    }
}

async fn describe(client: &Client, ns: &str, kind: &str, name: &str) -> anyhow::Result<()> {
    let kind = kind_arg(kind)?;
    let obj = match client
        .call(Request::Get {
            kind,
            namespace: Some(ns.into()),
            name: Some(name.into()),
        })
        .await?
    {
        Response::Objects { mut objects, .. } if !objects.is_empty() => objects.remove(0),
        _ => bail!("{} {name:?} not found", kind.as_str().to_ascii_lowercase()),
    };
    let mut versions = Vec::new();
    if let Object::Service(s) = &obj {
        // The revision hash counts the secrets' and configs' revisions, as the controller does.
        let mut revs = std::collections::HashMap::new();
        for (secret, name) in s.spec.template.references() {
            let kind = if secret { Kind::Secret } else { Kind::Config };
            let rev = match client
                .call(Request::Get {
                    kind,
                    namespace: Some(s.metadata.namespace.clone()),
                    name: Some(name.into()),
                })
                .await
            {
                Ok(Response::Objects { objects, .. }) => {
                    objects.first().map_or(0, |o| o.metadata().revision)
                }
                // Missing: revision 0, as the controller counts it.
                Ok(_)
                | Err(ClientError::Api {
                    code: ErrorCode::NotFound,
                    ..
                }) => 0,
                Err(e) => return Err(e.into()),
            };
            revs.insert((secret, name.to_string()), rev);
        }
        versions = s.spec.template.config_versions(|secret, name| {
            revs.get(&(secret, name.to_string())).copied().unwrap_or(0)
        });
    }
    let events = render::events_of(&obj, &list(client, Kind::Event, None).await?);
    let related: Vec<Object> = match kind {
        Kind::Service => list(client, Kind::Replica, Some(ns))
            .await?
            .into_iter()
            .filter(|r| matches!(r, Object::Replica(r) if r.spec.service.is_service(name)))
            .collect(),
        Kind::Node => list(client, Kind::Replica, None)
            .await?
            .into_iter()
            .filter(|r| matches!(r, Object::Replica(r) if r.spec.node.as_deref() == Some(name)))
            .collect(),
        Kind::Job => {
            let owner = orch_core::model::object::Owner::Job(name.to_string());
            list(client, Kind::Replica, Some(ns))
                .await?
                .into_iter()
                .filter(|r| matches!(r, Object::Replica(r) if r.spec.service == owner))
                .collect()
        }
        _ => Vec::new(),
    };
    out!("{}", render::describe(&obj, &versions, &events, &related));
    // A start waiting on an image pull says how far it got (asked live of the node).
    if let Object::Replica(r) = &obj {
        if let Ok(Response::Progress { text: Some(text) }) = client
            .call(Request::Progress {
                namespace: r.metadata.namespace.clone(),
                replica: r.metadata.name.clone(),
            })
            .await
        {
            outln!("Progress:         {text}");
        }
    }
    Ok(())
}

/// What `orchctl delete` deletes.
enum Targets<'a> {
    /// The objects files define, with `-n` (if given) for those that name no namespace.
    Files(&'a [std::path::PathBuf], Option<&'a str>),
    /// `KIND NAME` or `KIND/NAME` in a namespace.
    One(Option<String>, Option<String>, &'a str),
}

async fn delete(
    client: &Client,
    targets: Targets<'_>,
    ignore_not_found: bool,
) -> anyhow::Result<()> {
    let targets: Vec<(Kind, String, String)> = match targets {
        Targets::Files(files, namespace) => {
            let manifests = read_all(files)?;
            orch_api::files::parse(&manifests, namespace)
                .map_err(anyhow::Error::msg)?
                .iter()
                .map(|o| {
                    (
                        o.kind(),
                        o.metadata().namespace.clone(),
                        o.metadata().name.clone(),
                    )
                })
                .collect()
        }
        Targets::One(kind, name, ns) => {
            let (kind, name) = match (kind, name) {
                (Some(kind), name) if kind.contains('/') && name.is_none() => {
                    let (k, n) = kind.split_once('/').expect("contains a slash");
                    (kind_arg(k)?, n.to_string())
                }
                (Some(kind), Some(name)) => (kind_arg(&kind)?, name),
                _ => bail!("usage: orchctl delete KIND NAME, or orchctl delete -f FILE"),
            };
            let ns = if kind.namespaced() { ns } else { "" };
            vec![(kind, ns.to_string(), name)]
        }
    };
    let total = targets.len();
    let (mut gone, mut failed) = (Vec::new(), 0);
    for (kind, ns, name) in targets {
        match client
            .call(Request::Delete {
                kind,
                namespace: ns.clone(),
                name: name.clone(),
            })
            .await
        {
            Ok(_) => outln!(
                "{}/{name}{} deleted",
                kind.as_str().to_ascii_lowercase(),
                in_namespace(&ns)
            ),
            Err(orch_api::client::ClientError::Api {
                code: orch_api::ErrorCode::NotFound,
                message,
            }) => {
                if !ignore_not_found {
                    gone.push(message);
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    let hint = "--ignore-not-found makes that a success";
    for g in &gone {
        if total > 1 {
            eprintln!("{g}: already gone");
        }
    }
    match (gone.as_slice(), failed) {
        ([], 0) => Ok(()),
        ([one], 0) if total == 1 => bail!("{one}: nothing to delete ({hint})"),
        (gone, 0) => bail!(
            "{} of {total} objects were already gone, nothing else failed ({hint})",
            gone.len()
        ),
        (_, failed) => bail!("{failed} of {total} deletions failed"),
    }
}

async fn scale(client: &Client, ns: &str, target: &[String], replicas: i64) -> anyhow::Result<()> {
    let name = match target {
        [one] => one
            .strip_prefix("service/")
            .or_else(|| one.strip_prefix("svc/"))
            .unwrap_or(one)
            .to_string(),
        [kind, name] if Kind::from_user(kind) == Some(Kind::Service) => name.clone(),
        _ => bail!("usage: orchctl scale [service/]NAME --replicas N"),
    };
    client
        .call(Request::Scale {
            namespace: ns.into(),
            name: name.clone(),
            replicas,
        })
        .await?;
    outln!("service/{name} scaled to {replicas}");
    Ok(())
}

async fn logs(
    client: &Client,
    ns: &str,
    replica: &str,
    opts: orch_core::runtime::LogOptions,
) -> anyhow::Result<()> {
    let mut stream = client
        .stream(Request::Logs {
            namespace: ns.into(),
            replica: replica.into(),
            follow: opts.follow,
            tail_bytes: opts.tail_bytes,
            tail_lines: opts.tail_lines,
        })
        .await?;
    let mut out = std::io::stdout();
    while let Some(item) = stream.next().await {
        if let Response::Log { data } = item? {
            out.write_all(data.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}

async fn exec(
    client: &Client,
    ns: &str,
    replica: &str,
    timeout: &str,
    command: Vec<String>,
) -> anyhow::Result<()> {
    let span = orch_core::model::quantity::Span::parse(timeout)
        .map_err(|e| anyhow::anyhow!("--timeout: invalid value {timeout:?}: {e}"))?;
    let secs = span.0.as_secs_f64().ceil() as u64;
    anyhow::ensure!(
        (1..=3600).contains(&secs),
        "--timeout: {timeout} is out of range: allowed 1s to 1h"
    );
    let Response::Exec {
        code,
        signal,
        timed_out,
        stdout,
        stderr,
    } = client
        .call(Request::Exec {
            namespace: ns.into(),
            replica: replica.into(),
            command,
            timeout_secs: secs,
        })
        .await?
    else {
        anyhow::bail!("unexpected answer to exec");
    };
    std::io::stdout().write_all(stdout.as_bytes())?;
    std::io::stdout().flush()?;
    std::io::stderr().write_all(stderr.as_bytes())?;
    if timed_out {
        eprintln!("orchctl: the command ran past --timeout {timeout} and was killed");
    }
    let status = match (code, signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 1,
    };
    if status != 0 {
        std::process::exit(status);
    }
    Ok(())
}

async fn import_image(
    client: &Client,
    file: &std::path::Path,
    name: Option<String>,
) -> anyhow::Result<()> {
    let path =
        std::fs::canonicalize(file).with_context(|| format!("image import: {}", file.display()))?;
    if let Response::Imported { images } = client
        .call(Request::ImportImage {
            path: path.display().to_string(),
            name,
        })
        .await?
    {
        for (node, name) in images {
            outln!("image {name} imported on {node}");
        }
    }
    Ok(())
}

async fn info(client: &Client) -> anyhow::Result<()> {
    if let Response::Info {
        version,
        store,
        store_health,
        nodes,
    } = client.call(Request::Info).await?
    {
        outln!(
            "orchd {version}\nstore: {store} — {store_health}\nnodes: {}",
            nodes.join(", ")
        );
    }
    Ok(())
}

/// `orchctl create secret|config NAME --from-literal K=V --from-file [K=]PATH`: builds the
/// object and applies it (so it replaces one of that name). Values never reach the terminal.
async fn create(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    literals: &[String],
    files: &[String],
) -> anyhow::Result<()> {
    let kind = match kind {
        "secret" => "Secret",
        "config" | "configmap" => "Config",
        other => bail!("create {other:?}: expected secret or config"),
    };
    let mut data = std::collections::BTreeMap::new();
    for l in literals {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--from-literal {l:?}: expected KEY=VALUE"))?;
        data.insert(k.to_string(), v.to_string());
    }
    for f in files {
        let (k, path) = match f.split_once('=') {
            Some((k, p)) => (k.to_string(), std::path::PathBuf::from(p)),
            None => {
                let p = std::path::PathBuf::from(f);
                let k = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--from-file {f:?}: no file name to use as the key; give KEY=PATH"
                        )
                    })?
                    .to_string();
                (k, p)
            }
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("--from-file {}: {e}", path.display()))?;
        data.insert(k, text);
    }
    if data.is_empty() {
        bail!(
            "create {}: give --from-literal KEY=VALUE or --from-file [KEY=]PATH",
            kind.to_ascii_lowercase()
        );
    }
    let doc = serde_json::json!({
        "apiVersion": "orch/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "data": data,
    });
    let manifests = vec![orch_api::protocol::ManifestText {
        source: format!("orchctl create {} {name}", kind.to_ascii_lowercase()),
        text: doc.to_string(),
    }];
    orch_api::files::parse(&manifests, None).map_err(anyhow::Error::msg)?;
    match client
        .call(Request::Apply {
            manifests,
            dry_run: false,
            namespace: None,
        })
        .await?
    {
        Response::Applied { results, .. } => {
            for r in results {
                outln!("{}", applied_line(&r, false));
            }
            Ok(())
        }
        other => bail!("unexpected response: {other:?}"),
    }
}

/// `orchctl volume ls|rm`.
async fn volume(client: &Client, command: crate::VolumeCommand) -> anyhow::Result<()> {
    match command {
        crate::VolumeCommand::Ls => {
            let objs = match client
                .call(Request::Get {
                    kind: orch_core::model::object::Kind::Node,
                    namespace: None,
                    name: None,
                })
                .await?
            {
                Response::Objects { objects, .. } => objects,
                other => bail!("unexpected response: {other:?}"),
            };
            let mut rows = vec![("VOLUME".to_string(), "NODE".to_string())];
            for o in &objs {
                if let Object::Node(n) = o {
                    for v in &n.status.volumes {
                        rows.push((v.clone(), n.metadata.name.clone()));
                    }
                }
            }
            if rows.len() == 1 {
                eprintln!("No volumes found.");
                return Ok(());
            }
            let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0) + 3;
            for (v, n) in rows {
                outln!("{v:w$}{n}");
            }
            Ok(())
        }
        crate::VolumeCommand::Rm { name, node } => {
            match client.call(Request::VolumeRemove { name, node }).await? {
                Response::VolumeRemoved { name, node } => {
                    outln!("volume {name} removed from node {node}");
                    Ok(())
                }
                other => bail!("unexpected response: {other:?}"),
            }
        }
    }
}
