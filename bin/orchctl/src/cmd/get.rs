//! `orchctl get`: list objects, or watch them.

use std::io::Write;

use futures::StreamExt;
use orch_api::client::WatchEvent;
use orch_api::protocol::WatchType;
use orch_api::{render, Client};
use orch_core::model::object::{Kind, Object};

use super::Ctx;

/// What `get` lists: a kind of object, or the cluster's managers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum What {
    /// Objects of a kind.
    Kind(Kind),
    /// The managers (not objects: the store's manager records with the election and etcd).
    Managers,
}

/// Parses `get`'s first argument: a kind as [`KindArg`] takes it, or `managers`.
fn what(s: &str) -> anyhow::Result<What> {
    if ["managers", "manager", "mgr"].contains(&s.to_ascii_lowercase().as_str()) {
        return Ok(What::Managers);
    }
    super::kind_arg(s)
        .map(What::Kind)
        .map_err(|e| anyhow::anyhow!("{e}, managers"))
}

/// `orchctl get`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The kind: services, replicas, nodes, secrets, configs, events, jobs, routes, cronjobs
    /// (singular and short names work too: svc, pod, no, cm, ev, rt, cj), or managers.
    #[arg(value_parser = what)]
    kind: What,
    /// One object's name.
    name: Option<String>,
    /// Output format: `wide` adds replicas' IP (their own, or the node's with `(host)`) and
    /// nodes' address and subnet; other kinds print the normal table.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Keep watching for changes.
    #[arg(short = 'w', long)]
    watch: bool,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
}

/// How `get` prints objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// The table.
    Table,
    /// The table with more columns (replicas: IP; nodes: ADDRESS, SUBNET), as kubectl's.
    Wide,
    /// YAML manifests.
    Yaml,
    /// JSON.
    Json,
}

/// Lists (or watches) the objects asked for.
pub(crate) async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let kind = match args.kind {
        What::Kind(k) => k,
        What::Managers => {
            anyhow::ensure!(
                !args.watch,
                "get managers: --watch is not supported (run it again to see changes)"
            );
            anyhow::ensure!(
                args.name.is_none(),
                "get managers: takes no name (it lists every manager)"
            );
            return managers(&ctx.client, args.output).await;
        }
    };
    get(
        &ctx.client,
        &ctx.ns,
        kind,
        args.name,
        args.output,
        args.watch,
        args.all_namespaces,
    )
    .await
}

/// The table columns for `output`; for services, whether the cluster leases virtual IPs
/// (some node has a subnet lease), so that one not leased yet reads `<pending>` (`<none>`
/// when the nodes cannot be listed).
async fn columns(
    client: &Client,
    kind: Kind,
    output: Output,
    all_namespaces: bool,
) -> render::Columns {
    let cluster_network = match (kind, output) {
        (Kind::Service, Output::Table | Output::Wide) => {
            client.list(Kind::Node, None).await.is_ok_and(|nodes| {
                nodes
                    .objects
                    .iter()
                    .any(|n| matches!(n, Object::Node(n) if n.spec.network.is_some()))
            })
        }
        _ => false,
    };
    render::Columns {
        all_namespaces,
        wide: output == Output::Wide,
        cluster_network,
    }
}

/// `orchctl get managers`: the table, or every manager as JSON or YAML (`kind: Manager`).
pub(crate) async fn managers(client: &Client, output: Output) -> anyhow::Result<()> {
    let rows = client.managers().await?;
    match output {
        Output::Table | Output::Wide => {
            out!("{}", render::managers_table(&rows, output == Output::Wide))
        }
        Output::Json | Output::Yaml => {
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|m| {
                    let mut v = serde_json::json!({"apiVersion": "orch/v1", "kind": "Manager"});
                    if let (Some(o), Ok(serde_json::Value::Object(fields))) =
                        (v.as_object_mut(), serde_json::to_value(m))
                    {
                        o.extend(fields);
                    }
                    v
                })
                .collect();
            let list = serde_json::json!({"apiVersion": "orch/v1", "kind": "List", "items": items});
            if output == Output::Json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let yaml = serde_saphyr::to_string(&list)?;
                out!("{yaml}");
                if !yaml.ends_with('\n') {
                    outln!();
                }
            }
        }
    }
    Ok(())
}

fn print_objects(objs: &[Object], output: Output, columns: render::Columns) -> anyhow::Result<()> {
    match output {
        Output::Table | Output::Wide => {
            if objs.is_empty() {
                eprintln!("No resources found.");
            } else {
                out!("{}", render::objects_table_with(objs, columns));
            }
        }
        Output::Yaml => out!("{}", orch_core::model::manifest::to_yaml(objs)),
        Output::Json => {
            let v: Vec<serde_json::Value> = objs.iter().map(Object::to_display_value).collect();
            let out = if v.len() == 1 {
                v[0].clone()
            } else {
                serde_json::json!({"apiVersion": "orch/v1", "kind": "List", "items": v})
            };
            outln!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(())
}

pub(super) async fn get(
    client: &Client,
    ns: &str,
    kind: Kind,
    name: Option<String>,
    output: Output,
    watch: bool,
    all: bool,
) -> anyhow::Result<()> {
    let namespace = if all { None } else { Some(ns) };
    let columns = columns(client, kind, output, all).await;
    if watch {
        let mut stream = client.watch(kind, namespace, None).await?;
        let mut printed_header = false;
        while let Some(item) = stream.next().await {
            let WatchEvent { event, object } = item?;
            if name.as_ref().is_some_and(|n| *n != object.metadata().name) {
                continue;
            }
            match output {
                Output::Table | Output::Wide => {
                    let (header, mut cells) = render::row_with(&object, columns);
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
                Output::Json => outln!(
                    "{}",
                    serde_json::json!({"type": format!("{event:?}").to_uppercase(), "object": object.to_display_value()})
                ),
                Output::Yaml => print_objects(std::slice::from_ref(&object), output, columns)?,
            }
            std::io::stdout().flush()?;
        }
        return Ok(());
    }
    match name {
        // One object: in `default` with `-A`, as the daemon reads a get naming no namespace.
        Some(name) => {
            let ns = namespace.unwrap_or(orch_core::model::object::DEFAULT_NAMESPACE);
            let object = client.get(kind, ns, &name).await?;
            print_objects(std::slice::from_ref(&object), output, columns)
        }
        None => print_objects(
            &client.list(kind, namespace).await?.objects,
            output,
            columns,
        ),
    }
}
