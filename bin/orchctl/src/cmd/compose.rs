//! `orchctl compose`: a Compose file as `docker compose` runs it — up, down, ps, logs. A
//! project is a namespace; every object of it carries the label
//! `orch.dev/compose-project=PROJECT`, which is how `down` finds what to remove.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use futures::StreamExt;
use orch_api::files::ImportOptions;
use orch_api::Client;
use orch_core::model::object::{JobState, Kind, Object, Publish, Replica, ServiceMode, Template};
use orch_import::COMPOSE_PROJECT_LABEL;

use super::{import, warn_without_replica_networking, Ctx};

/// `orchctl compose`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The Compose file (default: compose.yaml, compose.yml, docker-compose.yml or
    /// docker-compose.yaml in the current directory).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// The project name: the namespace it runs in (default: the file's `name:`, else the
    /// name of its directory).
    #[arg(short = 'p', long = "project-name")]
    project: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// The file and project, also accepted after the subcommand (`compose up -f FILE`).
#[derive(clap::Args, Default)]
pub(crate) struct Target {
    /// The Compose file (as `compose -f`).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// The project name (as `compose -p`).
    #[arg(short = 'p', long = "project-name")]
    project: Option<String>,
}

/// `orchctl compose ...`.
#[derive(Subcommand)]
pub(crate) enum Command {
    /// Convert the file and apply it (all or nothing) in the project's namespace.
    Up {
        #[command(flatten)]
        target: Target,
        /// Refuse, applying nothing, when the file has any field orch does not honour.
        #[arg(long)]
        strict: bool,
        /// Validate and show what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Wait until every service is ready and every job has succeeded.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        wait_timeout: u64,
    },
    /// Remove every object of the project (services, jobs, cron jobs, routes, secrets,
    /// configs); named volumes stay unless -v.
    Down {
        #[command(flatten)]
        target: Target,
        /// Also remove the named volumes the project's services mount.
        #[arg(short = 'v', long)]
        volumes: bool,
    },
    /// The project's replicas: service, state, ports, IP.
    Ps {
        #[command(flatten)]
        target: Target,
    },
    /// Every replica's output, line by line, each prefixed with `SERVICE-N |`.
    Logs {
        /// The Compose file (as `compose -f`; here `-f` is follow).
        #[arg(long = "file")]
        file: Option<PathBuf>,
        /// The project name (as `compose -p`).
        #[arg(short = 'p', long = "project-name")]
        project: Option<String>,
        /// Keep streaming.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines of each replica.
        #[arg(long, value_name = "N")]
        tail: Option<u64>,
        /// Only these services (default: all).
        services: Vec<String>,
    },
}

/// The kinds a project's objects can be, in the order `down` removes them (what runs first,
/// then what it uses).
const PROJECT_KINDS: [Kind; 6] = [
    Kind::CronJob,
    Kind::Job,
    Kind::Service,
    Kind::Route,
    Kind::Secret,
    Kind::Config,
];

/// Runs the compose command.
pub(crate) async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let (target, command) = match args.command {
        Command::Up { ref target, .. }
        | Command::Down { ref target, .. }
        | Command::Ps { ref target } => (
            Target {
                file: target.file.clone().or(args.file),
                project: target.project.clone().or(args.project),
            },
            args.command,
        ),
        Command::Logs {
            ref file,
            ref project,
            ..
        } => (
            Target {
                file: file.clone().or(args.file),
                project: project.clone().or(args.project),
            },
            args.command,
        ),
    };
    let project = target.project.clone().or_else(|| ctx.asked.clone());
    match command {
        Command::Up {
            strict,
            dry_run,
            wait,
            wait_timeout,
            ..
        } => {
            let file = compose_file(target.file)?;
            if let Ok(text) = std::fs::read_to_string(&file) {
                if orch_import::detect(&text) != orch_import::Format::Compose {
                    bail!(
                        "{}: not a Compose file (one mapping with `services:`); `orchctl apply -f` takes manifests",
                        file.display()
                    );
                }
            }
            let imported = import(
                std::slice::from_ref(&file),
                &ImportOptions {
                    namespace: None,
                    project,
                    strict,
                    ..Default::default()
                },
            )?;
            let ns = namespace_of(&imported.converted)
                .with_context(|| format!("{}: defines nothing to run", file.display()))?;
            warn_without_replica_networking(&ctx.client, &imported.converted).await;
            super::apply::apply(&ctx.client, imported.manifests, dry_run, None).await?;
            if wait && !dry_run {
                wait_ready(&ctx.client, &ns, Duration::from_secs(wait_timeout)).await?;
            }
            Ok(())
        }
        Command::Down { volumes, .. } => {
            let ns = project_name(target.file, project)?;
            down(&ctx.client, &ns, volumes).await
        }
        Command::Ps { .. } => {
            let ns = project_name(target.file, project)?;
            ps(&ctx.client, &ns).await
        }
        Command::Logs {
            follow,
            tail,
            services,
            ..
        } => {
            let ns = project_name(target.file, project)?;
            let opts = orch_core::runtime::LogOptions {
                follow,
                tail_bytes: None,
                tail_lines: tail,
            };
            logs(&ctx.client, &ns, &services, opts).await
        }
    }
}

/// `file`, else the Compose file of the current directory.
fn compose_file(file: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(f) = file {
        return Ok(f);
    }
    orch_api::files::compose_file_in(std::path::Path::new(".")).with_context(|| {
        format!(
            "no Compose file here (looked for {}); name one with -f",
            orch_api::files::COMPOSE_FILES.join(", ")
        )
    })
}

/// The project's namespace: `-p` (or `-n`), else what the Compose file's objects say.
fn project_name(file: Option<PathBuf>, project: Option<String>) -> anyhow::Result<String> {
    if let Some(p) = project {
        return Ok(p);
    }
    let file = compose_file(file)?;
    let imported = orch_api::files::import(std::slice::from_ref(&file), &ImportOptions::default())
        .map_err(anyhow::Error::msg)?;
    namespace_of(&imported.converted).with_context(|| {
        format!(
            "{}: defines nothing, so no project (name one with -p)",
            file.display()
        )
    })
}

/// The project (namespace) converted objects landed in.
fn namespace_of(objects: &[Object]) -> Option<String> {
    objects.iter().find_map(|o| {
        o.metadata()
            .labels
            .get(COMPOSE_PROJECT_LABEL)
            .map(|_| o.metadata().namespace.clone())
    })
}

/// The objects of kind `kind` in `ns` that belong to project `ns`.
async fn project_objects(client: &Client, ns: &str, kind: Kind) -> anyhow::Result<Vec<Object>> {
    Ok(client
        .list(kind, Some(ns))
        .await?
        .objects
        .into_iter()
        .filter(|o| {
            o.metadata()
                .labels
                .get(COMPOSE_PROJECT_LABEL)
                .map(String::as_str)
                == Some(ns)
        })
        .collect())
}

/// Polls until every service of the project has its replicas ready and every job has
/// succeeded; a failed job or the timeout is an error naming what is not ready.
async fn wait_ready(client: &Client, ns: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut waiting = Vec::new();
        for o in project_objects(client, ns, Kind::Service).await? {
            let Object::Service(s) = &o else { continue };
            let want = match s.spec.mode {
                ServiceMode::Global => s.status.replicas.max(1),
                _ => s.spec.replicas,
            };
            if s.status.ready_replicas < want {
                waiting.push(format!(
                    "service {} ({}/{want} ready{})",
                    s.metadata.name,
                    s.status.ready_replicas,
                    if s.status.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", s.status.message)
                    }
                ));
            }
        }
        for o in project_objects(client, ns, Kind::Job).await? {
            let Object::Job(j) = &o else { continue };
            match j.status.state {
                JobState::Succeeded => {}
                JobState::Failed => bail!("job {} failed: {}", j.metadata.name, j.status.message),
                JobState::Running => waiting.push(format!(
                    "job {} ({}/{} succeeded)",
                    j.metadata.name, j.status.succeeded, j.spec.completions
                )),
            }
        }
        if waiting.is_empty() {
            eprintln!("project {ns}: every service is ready");
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "project {ns}: not ready after {} s: {}",
                timeout.as_secs(),
                waiting.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Deletes every object of the project, saying what it removed; with `volumes`, then the
/// named volumes its services and jobs mounted (once no replica uses them).
async fn down(client: &Client, ns: &str, volumes: bool) -> anyhow::Result<()> {
    let mut mounted = BTreeSet::new();
    let mut removed = 0;
    for kind in PROJECT_KINDS {
        for o in project_objects(client, ns, kind).await? {
            let template = match &o {
                Object::Service(s) => Some(&s.spec.template),
                Object::Job(j) => Some(&j.spec.template),
                Object::CronJob(c) => Some(&c.spec.job.template),
                _ => None,
            };
            mounted.extend(
                template
                    .into_iter()
                    .flat_map(|t| &t.mounts)
                    .filter_map(|m| m.volume.clone()),
            );
            let name = &o.metadata().name;
            match client.delete(kind, ns, name).await {
                Ok(_) => {
                    outln!(
                        "{}/{name} ({ns}) deleted",
                        kind.as_str().to_ascii_lowercase()
                    );
                    removed += 1;
                }
                Err(orch_api::client::ClientError::Api {
                    code: orch_api::ErrorCode::NotFound,
                    ..
                }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if removed == 0 {
        eprintln!("project {ns}: nothing to remove");
    }
    if mounted.is_empty() {
        return Ok(());
    }
    if !volumes {
        eprintln!(
            "volumes kept: {} (-v removes them)",
            mounted.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        return Ok(());
    }
    remove_volumes(client, &mounted).await
}

/// Removes each volume from every node that holds it, retrying while the replicas that used
/// it stop (a volume in use is refused), for up to a minute.
async fn remove_volumes(client: &Client, names: &BTreeSet<String>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let nodes = client.list(Kind::Node, None).await?.objects;
    for name in names {
        let holders: Vec<String> = nodes
            .iter()
            .filter_map(|n| match n {
                Object::Node(n) if n.status.volumes.contains(name) => Some(n.metadata.name.clone()),
                _ => None,
            })
            .collect();
        for node in holders {
            loop {
                match client.volume_remove(name, Some(&node)).await {
                    Ok(r) => {
                        outln!("volume {} removed from node {}", r.name, r.node);
                        break;
                    }
                    Err(orch_api::client::ClientError::Api {
                        code: orch_api::ErrorCode::NotFound,
                        ..
                    }) => break,
                    // In use while its replicas stop: try again shortly.
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Err(e) => return Err(anyhow::anyhow!("volume {name} on node {node}: {e}")),
                }
            }
        }
    }
    Ok(())
}

/// The project's replicas, as `docker compose ps` lists containers.
async fn ps(client: &Client, ns: &str) -> anyhow::Result<()> {
    let replicas = project_replicas(client, ns, &[]).await?;
    if replicas.is_empty() {
        eprintln!("project {ns}: no replicas");
        return Ok(());
    }
    let published: BTreeMap<String, Vec<Publish>> = project_objects(client, ns, Kind::Service)
        .await?
        .into_iter()
        .filter_map(|o| match o {
            Object::Service(s) => Some((s.metadata.name.clone(), s.spec.publish.clone())),
            _ => None,
        })
        .collect();
    let mut rows = Vec::new();
    for (prefix, r) in &replicas {
        let obj = Object::Replica(r.clone());
        let (header, cells) = orch_api::render::row(&obj, false);
        let phase = header
            .iter()
            .position(|h| *h == "PHASE")
            .and_then(|i| cells.get(i).cloned())
            .unwrap_or_default();
        let owner = r.spec.service.service().unwrap_or_default();
        let ports = ports_text(&r.spec.template, published.get(owner).map_or(&[], |p| p));
        rows.push(vec![
            r.metadata.name.clone(),
            prefix.clone(),
            r.spec.service.to_string(),
            phase,
            ports,
            orch_api::render::replica_ip_text(r),
        ]);
    }
    out!(
        "{}",
        orch_api::render::table(&["NAME", "AS", "SERVICE", "STATE", "PORTS", "IP"], &rows)
    );
    Ok(())
}

/// A replica's ports as `docker compose ps` shows them: `8080->80/tcp` where a node port (a
/// service's published port or the template's hostPort) leads to it, else `80/tcp`; `-` for
/// none.
fn ports_text(template: &Template, published: &[Publish]) -> String {
    let ports: Vec<String> = template
        .ports
        .iter()
        .filter_map(|p| {
            let port = p.port?;
            let proto = format!("{:?}", p.protocol).to_ascii_lowercase();
            let on_nodes: Vec<u16> = published
                .iter()
                .filter(|x| x.target(template) == Some(p.name.as_str()))
                .map(|x| x.port)
                .chain(p.host_port)
                .collect();
            Some(if on_nodes.is_empty() {
                format!("{port}/{proto}")
            } else {
                on_nodes
                    .iter()
                    .map(|h| format!("{h}->{port}/{proto}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
        })
        .collect();
    if ports.is_empty() {
        "-".into()
    } else {
        ports.join(", ")
    }
}

/// The replicas of the project's services and jobs (only of `only`, when given), each with
/// its `SERVICE-N` name (the replica's own when it already is one, as an ordered service's
/// `web-0`), sorted by that.
async fn project_replicas(
    client: &Client,
    ns: &str,
    only: &[String],
) -> anyhow::Result<Vec<(String, Replica)>> {
    let mut owners = BTreeSet::new();
    for kind in [Kind::Service, Kind::Job] {
        for o in project_objects(client, ns, kind).await? {
            owners.insert(o.metadata().name.clone());
        }
    }
    for s in only {
        if !owners.contains(s) {
            bail!(
                "no service {s:?} in project {ns}; its services: {}",
                owners.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let mut by_owner: BTreeMap<String, Vec<Replica>> = BTreeMap::new();
    for o in client.list(Kind::Replica, Some(ns)).await?.objects {
        let Object::Replica(r) = o else { continue };
        let owner = r
            .spec
            .service
            .service()
            .or_else(|| r.spec.service.job())
            .unwrap_or_default()
            .to_string();
        if owners.contains(&owner) && (only.is_empty() || only.contains(&owner)) {
            by_owner.entry(owner).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for (owner, mut replicas) in by_owner {
        replicas.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for (i, r) in replicas.into_iter().enumerate() {
            let own = r
                .metadata
                .name
                .strip_prefix(&format!("{owner}-"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            let name = if own {
                r.metadata.name.clone()
            } else {
                format!("{owner}-{}", i + 1)
            };
            out.push((name, r));
        }
    }
    Ok(out)
}

/// Every replica's log lines interleaved as they come, each prefixed with its `SERVICE-N |`
/// (coloured on a terminal).
async fn logs(
    client: &Client,
    ns: &str,
    services: &[String],
    opts: orch_core::runtime::LogOptions,
) -> anyhow::Result<()> {
    let replicas = project_replicas(client, ns, services).await?;
    if replicas.is_empty() {
        eprintln!("project {ns}: no replicas");
        return Ok(());
    }
    let colour = std::io::stdout().is_terminal();
    let width = replicas.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let mut prefixes = Vec::new();
    let mut streams = Vec::new();
    for (i, (name, r)) in replicas.iter().enumerate() {
        let stream = match client.logs(ns, &r.metadata.name, opts).await {
            Ok(s) => s,
            // A replica not started yet (or gone) has no output: say so, follow the rest.
            Err(e) => {
                eprintln!("{name}: {e}");
                continue;
            }
        };
        prefixes.push(prefix(name, width, i, colour));
        let index = prefixes.len() - 1;
        streams.push(stream.map(move |chunk| (index, chunk)).boxed());
    }
    let mut partial = vec![String::new(); prefixes.len()];
    let mut merged = futures::stream::select_all(streams);
    let mut out = std::io::stdout();
    while let Some((i, chunk)) = merged.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{}: {e}", replicas[i].0);
                continue;
            }
        };
        partial[i].push_str(&chunk);
        while let Some(end) = partial[i].find('\n') {
            let line: String = partial[i].drain(..=end).collect();
            out.write_all(prefixes[i].as_bytes())?;
            out.write_all(line.as_bytes())?;
        }
        out.flush()?;
    }
    for (i, rest) in partial.iter().enumerate() {
        if !rest.is_empty() {
            writeln!(out, "{}{rest}", prefixes[i])?;
        }
    }
    Ok(())
}

/// `web-1  | `, padded to `width`, in the `i`th colour when `colour`.
fn prefix(name: &str, width: usize, i: usize, colour: bool) -> String {
    // The colours docker compose cycles through: cyan, yellow, green, magenta, blue, red.
    const COLOURS: [u8; 6] = [36, 33, 32, 35, 34, 31];
    let text = format!("{name:width$} | ");
    if colour {
        format!("\x1b[{}m{text}\x1b[0m", COLOURS[i % COLOURS.len()])
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefixes_are_padded_and_coloured_only_when_asked() {
        assert_eq!(super::prefix("web-1", 7, 0, false), "web-1   | ");
        assert_eq!(super::prefix("db-1", 4, 1, true), "\x1b[33mdb-1 | \x1b[0m");
    }
}
