//! Compose files (compose-spec) as orch objects: the mapping table is
//! `orch-import/COMPOSE.md`. A project becomes a namespace; each service an orch Service (or a
//! Job, when another service waits for it to complete); network aliases and container names
//! headless Routes; file secrets and configs orch Secrets and Configs. Every key orch does not
//! honour is a warning; unknown keys (per the compose-spec schema), `build:` without `image:`,
//! depends_on cycles and unreadable files are errors, and then nothing is returned.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use orch_core::model::manifest::{ManifestError, ManifestErrors, MAX_MANIFEST_BYTES};
use orch_core::model::object::{
    Config, Dependency, DependencyCondition, DependencyKind, Job, JobSpec, JobStatus,
    LabelSelector, Metadata, RestartPolicy, Route, RouteSpec, RouteStatus, Secret, Service,
    ServiceMode, ServiceSpec, ServiceStatus, UpdateStrategy, JOB_LABEL, SERVICE_LABEL,
};
use orch_core::model::validate::{dns1123_label, validate};
use orch_core::Object;
use serde_json::Value;

use crate::{Converted, Options, Origin, COMPOSE_PROJECT_LABEL};

mod deploy;
mod fields;
mod interp;
mod ports;
mod schema;
mod service;
mod volumes;

use fields::{Ctx, Fields};
use service::Svc;

/// A top-level secret or config: the orch object it is, and its one key.
pub(crate) struct Def {
    pub(crate) object: String,
    pub(crate) key: String,
    source: DefSource,
    path: String,
}

enum DefSource {
    File(String),
    Content(String),
    Environment(String),
    External,
    Missing,
}

/// What the services of a project share.
pub(crate) struct Project<'a> {
    pub(crate) name: String,
    pub(crate) base_dir: Option<&'a Path>,
    pub(crate) vars: BTreeMap<String, String>,
    /// Compose volume name → orch volume name.
    pub(crate) volumes: BTreeMap<String, String>,
    pub(crate) secrets: BTreeMap<String, Def>,
    pub(crate) configs: BTreeMap<String, Def>,
    pub(crate) networks: BTreeSet<String>,
}

/// `s` as a DNS label: lower case, runs of anything but letters and digits as one `-`, no
/// `-` at either end, at most 63 characters (empty if nothing is left).
pub(crate) fn dns_name(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out: String = out.chars().take(63).collect();
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// The project name as docker compose normalises it (lower case; letters, digits, `-` and
/// `_` kept; starting with a letter or digit), then as a DNS label for orch.
fn project_name(ctx: &mut Ctx, doc: &Value, options: &Options) -> String {
    let compose_clean = |s: &str| -> String {
        let s: String = s
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
            .collect();
        s.trim_start_matches(['-', '_']).to_string()
    };
    let given = options
        .project
        .clone()
        .map(|p| (p, "the project option"))
        .or_else(|| {
            doc.get("name")
                .and_then(Value::as_str)
                .map(|n| (n.to_string(), "name"))
        });
    if let Some((p, from)) = given {
        let name = dns_name(&compose_clean(&p));
        if name.is_empty() {
            ctx.error(
                "name",
                &p,
                format!("{from}: a project name needs letters or digits"),
            );
            return "default".into();
        }
        if name != p {
            ctx.warn(
                "name",
                format!("project {p:?} is namespace {name:?} (orch names are DNS labels)"),
            );
        }
        return name;
    }
    let from_dir = options
        .base_dir
        .as_deref()
        .and_then(Path::file_name)
        .map(|n| dns_name(&compose_clean(&n.to_string_lossy())))
        .filter(|n| !n.is_empty());
    from_dir.unwrap_or_else(|| "default".into())
}

fn parse(source: &str, text: &str) -> Result<Value, ManifestErrors> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestErrors::whole(
            source,
            format!("the file is larger than {MAX_MANIFEST_BYTES} bytes"),
        ));
    }
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = text
        .len()
        .saturating_mul(2)
        .saturating_add(10_000)
        .min(1_000_000);
    budget.max_events = budget.max_nodes * 2 + 16;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    let docs: Vec<Value> =
        serde_saphyr::from_multiple_with_options(text, options).map_err(|e| {
            let s = e.to_string();
            let first = s
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("unknown error");
            ManifestErrors::whole(source, format!("invalid YAML: {first}"))
        })?;
    let mut docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    match docs.len() {
        1 => Ok(docs.remove(0)),
        0 => Err(ManifestErrors::whole(
            source,
            "empty: a Compose file is a mapping with services:",
        )),
        n => Err(ManifestErrors::whole(
            source,
            format!("{n} YAML documents: a Compose file is one mapping with services:"),
        )),
    }
}

fn read_dotenv(ctx: &mut Ctx, base_dir: Option<&Path>) -> BTreeMap<String, String> {
    let Some(dir) = base_dir else {
        return BTreeMap::new();
    };
    let path = dir.join(".env");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let (vars, bad) = interp::parse_dotenv(&text);
            for n in bad {
                ctx.warn(
                    ".env",
                    format!("{} line {n}: no KEY=VALUE: ignored", path.display()),
                );
            }
            // Later values may use earlier ones, as docker compose allows.
            let mut out = BTreeMap::new();
            for (k, v) in vars {
                let v = if v.contains('$') {
                    interp::interpolate(ctx, &out, ".env", &v).unwrap_or(v)
                } else {
                    v
                };
                out.insert(k, v);
            }
            out
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => {
            ctx.error(
                ".env",
                path.display().to_string(),
                format!("cannot read: {e}"),
            );
            BTreeMap::new()
        }
    }
}

fn top_volumes(ctx: &mut Ctx, project: &str, doc: &Fields<'_>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(v) = doc.get("volumes") else {
        return out;
    };
    let vf = Fields::of(ctx, "volumes", v);
    let names: Vec<String> = v
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for name in names {
        vf.skip(&name);
        let spec = v.get(&name).unwrap_or(&Value::Null);
        let f = Fields::of(ctx, vf.at(&name), spec);
        let external = match f.get("external") {
            Some(Value::Object(_)) => true,
            Some(_) => f.bool(ctx, "external").unwrap_or(false),
            None => false,
        };
        let given = f.str(ctx, "name");
        let orch = match (&given, external) {
            (Some(n), _) => dns_name(n),
            (None, true) => dns_name(&name),
            (None, false) => dns_name(&format!("{project}-{name}")),
        };
        if let Err(e) = dns1123_label(&orch) {
            ctx.error(
                f.path.clone(),
                &name,
                format!("cannot name an orch volume ({e})"),
            );
            continue;
        }
        if external {
            ctx.warn(
                f.at("external"),
                format!("orch volumes are node-local: volume {orch} is created on the node on first use if it does not exist"),
            );
        }
        match f.str(ctx, "driver").as_deref() {
            None | Some("local") => {}
            Some(d) => ctx.warn(
                f.at("driver"),
                format!("driver {d:?} is not honoured: orch volumes are directories on the node (local)"),
            ),
        }
        for k in ["driver_opts", "labels"] {
            if f.has(k) {
                f.skip(k);
                ctx.warn(
                    f.at(k),
                    "not honoured: orch volumes are plain directories on the node",
                );
            }
        }
        f.finish(ctx);
        out.insert(name, orch);
    }
    out
}

fn top_defs(ctx: &mut Ctx, doc: &Fields<'_>, key: &str) -> BTreeMap<String, Def> {
    let mut out = BTreeMap::new();
    let Some(v) = doc.get(key) else { return out };
    let Some(m) = v.as_object() else {
        ctx.error(key, fields::show(v), "must be a mapping");
        return out;
    };
    let secret = key == "secrets";
    for (name, spec) in m {
        let f = Fields::of(ctx, format!("{key}.{name}"), spec);
        let external = match f.get("external") {
            Some(Value::Object(_)) => true,
            Some(_) => f.bool(ctx, "external").unwrap_or(false),
            None => false,
        };
        let given = f.str(ctx, "name");
        let object = dns_name(given.as_deref().unwrap_or(name));
        if let Err(e) = dns1123_label(&object) {
            ctx.error(
                f.path.clone(),
                name,
                format!("cannot name an orch {} ({e})", &key[..key.len() - 1]),
            );
            continue;
        }
        let source = if external {
            ctx.warn(
                f.at("external"),
                format!("orch mounts the existing {} {object} of the project's namespace (key {name}): create it before the services start", &key[..key.len() - 1]),
            );
            DefSource::External
        } else if let Some(file) = f.str(ctx, "file") {
            DefSource::File(file)
        } else if let Some(c) = f.str(ctx, "content").filter(|_| !secret) {
            DefSource::Content(c)
        } else if let Some(e) = f.str(ctx, "environment") {
            DefSource::Environment(e)
        } else {
            DefSource::Missing
        };
        for k in ["driver", "driver_opts", "template_driver", "labels"] {
            if f.has(k) {
                f.skip(k);
                ctx.warn(f.at(k), "not honoured: orch stores the value itself");
            }
        }
        f.finish(ctx);
        out.insert(
            name.clone(),
            Def {
                object,
                key: name.clone(),
                source,
                path: f.path.clone(),
            },
        );
    }
    out
}

/// The value of a used secret or config (`None` when external or after an error).
fn def_value(ctx: &mut Ctx, proj: &Project<'_>, def: &Def) -> Option<String> {
    match &def.source {
        DefSource::External => None,
        DefSource::Content(c) => Some(c.clone()),
        DefSource::Environment(var) => match proj.vars.get(var) {
            Some(v) => Some(v.clone()),
            None => {
                ctx.error(
                    format!("{}.environment", def.path),
                    var,
                    "this variable is not in the project's .env file (orch does not read the process environment)",
                );
                None
            }
        },
        DefSource::File(file) => {
            let at = format!("{}.file", def.path);
            let full = volumes::host_path(ctx, proj, &at, file)?;
            match std::fs::read(&full) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(s) => Some(s),
                    Err(_) => {
                        ctx.error(at, file, format!("{full} is not UTF-8 text: orch stores secret and config values as text"));
                        None
                    }
                },
                Err(e) => {
                    ctx.error(at, file, format!("cannot read {full}: {e}"));
                    None
                }
            }
        }
        DefSource::Missing => {
            ctx.error(
                def.path.clone(),
                "",
                "needs file:, environment: or external: (configs also content:)",
            );
            None
        }
    }
}

fn top_networks(ctx: &mut Ctx, doc: &Fields<'_>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Some(Value::Object(m)) = doc.get("networks") else {
        return out;
    };
    for (name, spec) in m {
        out.insert(name.clone());
        if name == "default" && spec.as_object().is_none_or(|o| o.is_empty()) {
            continue;
        }
        ctx.warn(
            format!("networks.{name}"),
            "orch has one flat network per project: every service reaches every other by name, whatever networks it joins (the network's settings are not used)",
        );
    }
    out
}

/// Finds the cycles of `deps` (service → the services it waits for), each once, as
/// `a → b → a` starting from its least name.
fn cycles(deps: &BTreeMap<String, Vec<String>>) -> Vec<Vec<String>> {
    fn visit(
        n: &str,
        deps: &BTreeMap<String, Vec<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut BTreeSet<Vec<String>>,
    ) {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cyc: Vec<String> = stack[i..].to_vec();
            let min = cyc
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| (*s).clone())
                .map_or(0, |(i, _)| i);
            cyc.rotate_left(min);
            found.insert(cyc);
            return;
        }
        if done.contains(n) {
            return;
        }
        stack.push(n.to_string());
        for d in deps.get(n).into_iter().flatten() {
            visit(d, deps, stack, done, found);
        }
        stack.pop();
        done.insert(n.to_string());
    }
    let mut found = BTreeSet::new();
    let mut done = BTreeSet::new();
    for n in deps.keys() {
        visit(n, deps, &mut Vec::new(), &mut done, &mut found);
    }
    found.into_iter().collect()
}

fn metadata(
    name: &str,
    project: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Metadata {
    let mut l = labels.clone();
    l.insert(COMPOSE_PROJECT_LABEL.into(), project.into());
    Metadata {
        name: name.into(),
        namespace: project.into(),
        labels: l.into(),
        annotations: annotations.clone(),
        ..Metadata::default()
    }
}

/// Turns the converted services into orch objects (services, jobs, routes), in name order.
fn assemble(
    ctx: &mut Ctx,
    proj: &Project<'_>,
    svcs: Vec<Svc>,
    defined: &BTreeSet<String>,
    inactive: &BTreeSet<String>,
) -> Vec<(Object, String)> {
    let jobs: BTreeSet<String> = svcs
        .iter()
        .flat_map(|s| &s.depends)
        .filter(|d| d.condition == DependencyCondition::Completed)
        .map(|d| d.name.clone())
        .chain(svcs.iter().filter(|s| s.job_mode).map(|s| s.name.clone()))
        .collect();
    let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut first_path: BTreeMap<String, String> = BTreeMap::new();
    for s in &svcs {
        let edges = graph.entry(s.name.clone()).or_default();
        for d in &s.depends {
            edges.push(d.name.clone());
            first_path
                .entry(s.name.clone())
                .or_insert_with(|| d.path.clone());
        }
    }
    for cyc in cycles(&graph) {
        let mut shown = cyc.clone();
        shown.push(cyc[0].clone());
        let at = first_path
            .get(&cyc[0])
            .map(|p| {
                p.rsplit_once(['.', '['])
                    .map_or(p.as_str(), |(a, _)| a)
                    .to_string()
            })
            .unwrap_or_default();
        ctx.error(
            at,
            "",
            format!("depends_on has a cycle: {}", shown.join(" → ")),
        );
    }
    let mut out: Vec<(Object, String)> = Vec::new();
    let mut routes: Vec<(Object, String)> = Vec::new();
    let mut route_names: BTreeMap<String, String> = BTreeMap::new();
    for s in svcs {
        let mut depends_on = Vec::new();
        for d in &s.depends {
            if !defined.contains(&d.name) {
                if d.required {
                    ctx.error(&d.path, &d.name, "no such service in this file");
                } else {
                    ctx.warn(
                        &d.path,
                        format!(
                            "{} is not in this file and not required: not waited for",
                            d.name
                        ),
                    );
                }
                continue;
            }
            if inactive.contains(&d.name) {
                ctx.warn(
                    &d.path,
                    format!(
                        "{} is in an inactive profile and not converted: not waited for",
                        d.name
                    ),
                );
                continue;
            }
            if !d.required {
                ctx.warn(
                    &d.path,
                    "required: false is not honoured: orch waits for the dependency all the same",
                );
            }
            let job = jobs.contains(&d.name);
            let condition = if job && d.condition == DependencyCondition::Ready {
                ctx.warn(&d.path, format!("{} runs to completion here (an orch job, since a service waits for it to complete); a job has no health: this waits for it to start", d.name));
                DependencyCondition::Started
            } else {
                d.condition
            };
            depends_on.push(Dependency {
                name: d.name.clone(),
                kind: if job {
                    DependencyKind::Job
                } else {
                    DependencyKind::Service
                },
                condition,
            });
        }
        let md = metadata(&s.name, &proj.name, &s.labels, &s.annotations);
        let mut template = s.template;
        template
            .labels
            .insert(COMPOSE_PROJECT_LABEL.into(), proj.name.clone());
        let origin = format!("service {}", s.name);
        let owner_label = if jobs.contains(&s.name) {
            JOB_LABEL
        } else {
            SERVICE_LABEL
        };
        if jobs.contains(&s.name) {
            match template.restart_policy {
                RestartPolicy::Always => {
                    if s.restart_given {
                        ctx.warn(format!("{}.restart", s.path), "a service others wait for to complete runs as an orch job: restarted on failure only");
                    }
                    template.restart_policy = RestartPolicy::OnFailure;
                }
                RestartPolicy::OnFailure | RestartPolicy::Never => {}
            }
            for p in &s.publish {
                ctx.warn(format!("{}.ports", s.path), format!("port {} is not published: the service runs to completion as an orch job, and jobs publish no ports", p.port));
            }
            if s.mode == ServiceMode::Global {
                ctx.warn(format!("{}.deploy.mode", s.path), "global is not honoured for a job: its replicas go where the scheduler places them");
            }
            if s.update != UpdateStrategy::default() {
                ctx.warn(
                    format!("{}.deploy.update_config", s.path),
                    "not honoured: a job is not rolled out",
                );
            }
            let backoff_limit = if template.restart_policy == RestartPolicy::Never {
                0
            } else {
                6
            };
            let spec = JobSpec {
                template,
                placement: s.placement,
                completions: s.replicas.max(1),
                parallelism: s.replicas.max(1),
                backoff_limit,
                active_deadline: None,
                depends_on,
            };
            out.push((
                Job {
                    metadata: md,
                    spec,
                    status: JobStatus::default(),
                }
                .into(),
                origin.clone(),
            ));
        } else {
            let spec = ServiceSpec {
                replicas: s.replicas,
                template,
                placement: s.placement,
                update: s.update,
                mode: s.mode,
                publish: s.publish,
                headless: true,
                depends_on,
            };
            out.push((
                Object::Service(Box::new(Service {
                    metadata: md,
                    spec,
                    status: ServiceStatus::default(),
                })),
                origin.clone(),
            ));
        }
        for (alias, at) in s.aliases {
            if alias == s.name {
                continue;
            }
            if let Err(e) = dns1123_label(&alias) {
                ctx.warn(
                    &at,
                    format!("{alias:?} is not a DNS label ({e}): no orch name is made for it"),
                );
                continue;
            }
            if defined.contains(&alias) {
                ctx.error(
                    &at,
                    &alias,
                    "is also the name of a service: an alias must be a name of its own",
                );
                continue;
            }
            if let Some(other) = route_names.get(&alias) {
                if *other != s.name {
                    ctx.error(&at, &alias, format!("is also an alias of service {other}: orch names one set of replicas per name"));
                }
                continue;
            }
            route_names.insert(alias.clone(), s.name.clone());
            let selector = LabelSelector {
                match_labels: [(owner_label.to_string(), s.name.clone())].into(),
                match_expressions: Vec::new(),
            };
            routes.push((
                Route {
                    metadata: metadata(&alias, &proj.name, &BTreeMap::new(), &BTreeMap::new()),
                    spec: RouteSpec {
                        selector,
                        ports: Vec::new(),
                        headless: true,
                        node_ports: false,
                    },
                    status: RouteStatus::default(),
                }
                .into(),
                format!("{origin} (name {alias})"),
            ));
        }
    }
    out.extend(routes);
    out
}

/// Sorts `warnings` (stably) by where their top-level key (`services`, `networks`, ...) starts
/// in `text`, so that they come in the file's order of sections; within a section they stay in
/// the order found (services by name).
fn order_by_top_level_key(text: &str, warnings: &mut [crate::Warning]) {
    let line_of = |key: &str| {
        text.lines().position(|l| {
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
                || l.strip_prefix(&format!("\"{key}\"")).is_some()
        })
    };
    let mut cache: BTreeMap<String, usize> = BTreeMap::new();
    for w in warnings.iter() {
        let top = w.path.split(['.', '[']).next().unwrap_or("").to_string();
        let line = line_of(&top).unwrap_or(usize::MAX);
        cache.entry(top).or_insert(line);
    }
    warnings.sort_by_key(|w| cache[w.path.split(['.', '[']).next().unwrap_or("")]);
}

/// Converts one Compose file to orch objects and warnings. `source` names the file in
/// messages; relative paths (`env_file`, secret and config files, bind mounts, `.env`) are
/// read from [`Options::base_dir`].
pub fn convert(source: &str, text: &str, options: &Options) -> Result<Converted, ManifestErrors> {
    let mut doc = parse(source, text)?;
    let mut ctx = Ctx::new(source);
    if !doc.is_object() {
        return Err(ManifestErrors::whole(
            source,
            "a Compose file is a mapping with services:",
        ));
    }
    schema::check_keys(&mut ctx, &doc);
    let base_dir = options.base_dir.as_deref();
    let vars = read_dotenv(&mut ctx, base_dir);
    interp::interpolate_value(&mut ctx, &vars, "", &mut doc);
    let name = project_name(&mut ctx, &doc, options);
    let top = Fields::of(&mut ctx, "", &doc);
    top.skip("name");
    if top.has("version") {
        top.skip("version");
        ctx.warn(
            "version",
            "obsolete (the Compose specification has no versions): ignored",
        );
    }
    if top.has("include") {
        top.skip("include");
        ctx.error(
            "include",
            "",
            "not supported: merge the included files into this one",
        );
    }
    if top.has("models") {
        top.skip("models");
        ctx.warn("models", "not supported by orch: ignored");
    }
    let volumes = top_volumes(&mut ctx, &name, &top);
    let secrets = top_defs(&mut ctx, &top, "secrets");
    let configs = top_defs(&mut ctx, &top, "configs");
    let networks = top_networks(&mut ctx, &top);
    let proj = Project {
        name,
        base_dir,
        vars,
        volumes,
        secrets,
        configs,
        networks,
    };
    let mut svcs = Vec::new();
    let mut defined = BTreeSet::new();
    let mut inactive = BTreeSet::new();
    match top.get("services") {
        Some(Value::Object(m)) if !m.is_empty() => {
            for (n, v) in m {
                defined.insert(n.clone());
                if v.get("profiles")
                    .is_some_and(|p| p.as_array().is_none_or(|a| !a.is_empty()))
                {
                    inactive.insert(n.clone());
                }
                svcs.extend(service::service(&mut ctx, &proj, n, v));
            }
        }
        Some(Value::Object(_)) | None => ctx.error(
            "services",
            "",
            "a Compose file needs at least one service under services:",
        ),
        Some(other) => ctx.error(
            "services",
            fields::show(other),
            "must be a mapping of service names to services",
        ),
    }
    top.finish(&mut ctx);
    let used_secrets: BTreeSet<String> = svcs
        .iter()
        .flat_map(|s| s.secrets.iter().cloned())
        .collect();
    let used_configs: BTreeSet<String> = svcs
        .iter()
        .flat_map(|s| s.configs.iter().cloned())
        .collect();
    let mut objects: Vec<(Object, String)> = Vec::new();
    let no_labels = BTreeMap::new();
    for (secret, used, defs) in [
        (true, &used_secrets, &proj.secrets),
        (false, &used_configs, &proj.configs),
    ] {
        for n in used {
            let Some(def) = defs.get(n) else { continue };
            let Some(value) = def_value(&mut ctx, &proj, def) else {
                continue;
            };
            let md = metadata(&def.object, &proj.name, &no_labels, &no_labels);
            let data: BTreeMap<String, String> = [(def.key.clone(), value)].into();
            let (obj, what): (Object, _) = if secret {
                (Secret { metadata: md, data }.into(), format!("secret {n}"))
            } else {
                (Config { metadata: md, data }.into(), format!("config {n}"))
            };
            objects.push((obj, what));
        }
    }
    objects.extend(assemble(&mut ctx, &proj, svcs, &defined, &inactive));
    for (obj, _) in &objects {
        let m = obj.metadata();
        for fe in validate(obj) {
            ctx.error(
                format!("{}/{}: {}", obj.kind(), m.name, fe.path),
                fe.value.clone(),
                fe.message.clone(),
            );
        }
    }
    order_by_top_level_key(text, &mut ctx.warnings);
    if options.strict {
        for w in std::mem::take(&mut ctx.warnings) {
            ctx.errors.push(ManifestError {
                source: w.source,
                document: Some(w.document),
                field: None,
                message: format!("{}: {} (strict: warnings are errors)", w.path, w.message),
            });
        }
    }
    if !ctx.errors.is_empty() {
        return Err(ManifestErrors(ctx.errors));
    }
    let origins = objects
        .iter()
        .map(|(_, what)| Origin {
            source: source.to_string(),
            document: 1,
            what: what.clone(),
        })
        .collect();
    Ok(Converted {
        objects: objects.into_iter().map(|(o, _)| o).collect(),
        origins,
        warnings: ctx.warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_dns_labels() {
        assert_eq!(dns_name("db_data"), "db-data");
        assert_eq!(dns_name("My.App__x-"), "my-app-x");
        assert_eq!(dns_name("___"), "");
        assert_eq!(dns_name(&"a".repeat(70)).len(), 63);
    }

    #[test]
    fn cycles_are_found_once() {
        let g: BTreeMap<String, Vec<String>> = [
            ("a", vec!["b"]),
            ("b", vec!["c"]),
            ("c", vec!["a"]),
            ("d", vec!["d"]),
            ("e", vec!["a"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
        assert_eq!(cycles(&g), [vec!["a", "b", "c"], vec!["d"]]);
    }
}
