//! One Compose service as an orch template and the rest of a service's (or job's) spec.

use std::collections::{BTreeMap, BTreeSet};

use orch_core::model::object::{
    Capabilities, DependencyCondition, EnvVar, ExecProbe, Placement, Probe, Publish, PullPolicy,
    RestartPolicy, ServiceMode, Template, UpdateStrategy,
};
use orch_core::model::quantity::Span;
use serde_json::Value;

use super::deploy::{deploy, split_labels, Limits};
use super::fields::{list_or_dict, scalar, show, strings, Ctx, Fields};
use super::interp::parse_dotenv;
use super::{ports, volumes, Project};

/// A dependency as written: the service named, the condition, where it was written, and
/// whether it is `required`.
pub(crate) struct RawDep {
    pub(crate) name: String,
    pub(crate) condition: DependencyCondition,
    pub(crate) path: String,
    pub(crate) required: bool,
}

/// A converted Compose service, before it becomes an orch Service or Job.
pub(crate) struct Svc {
    pub(crate) name: String,
    pub(crate) path: String,
    pub(crate) template: Template,
    pub(crate) replicas: u32,
    pub(crate) mode: ServiceMode,
    pub(crate) job_mode: bool,
    pub(crate) placement: Placement,
    pub(crate) update: UpdateStrategy,
    pub(crate) publish: Vec<Publish>,
    pub(crate) depends: Vec<RawDep>,
    /// Extra DNS names (network aliases, `container_name`), each with where it was written.
    pub(crate) aliases: Vec<(String, String)>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) annotations: BTreeMap<String, String>,
    /// Whether `restart` (or `deploy.restart_policy`) was written.
    pub(crate) restart_given: bool,
    pub(crate) secrets: BTreeSet<String>,
    pub(crate) configs: BTreeSet<String>,
}

/// Keys orch ignores, with what it does instead.
const IGNORED: &[(&str, &str)] = &[
    (
        "links",
        "not needed: every service of the project reaches every other by its name",
    ),
    (
        "external_links",
        "not honoured: orch services reach services of other projects as NAME.PROJECT",
    ),
    (
        "extra_hosts",
        "not honoured: orch adds no /etc/hosts entries (use a Route or DNS)",
    ),
    ("dns", "not honoured: replicas use the cluster DNS"),
    (
        "dns_search",
        "not honoured: replicas search their namespace's cluster domain",
    ),
    ("dns_opt", "not honoured: replicas use the cluster DNS"),
    ("domainname", "not honoured: orch sets the hostname only"),
    (
        "logging",
        "not honoured: orch keeps each replica's output itself (orchctl logs)",
    ),
    (
        "init",
        "not honoured: orch runs the image's entrypoint as process 1 (no init process is injected)",
    ),
    (
        "privileged",
        "not honoured: orch does not run privileged containers (add capabilities with cap_add)",
    ),
    ("tty", "not honoured: orch gives replicas no terminal"),
    (
        "stdin_open",
        "not honoured: orch gives replicas no standard input",
    ),
    ("pids_limit", "not honoured: orch sets no process limit"),
    (
        "security_opt",
        "not honoured: orch uses the runtime's default security options",
    ),
    ("sysctls", "not honoured: orch sets no sysctls"),
    ("ulimits", "not honoured: orch sets no ulimits"),
    (
        "shm_size",
        "not honoured: /dev/shm has the runtime's default size",
    ),
    ("devices", "not honoured: orch gives containers no devices"),
    (
        "platform",
        "not honoured: the node pulls the image for its own platform",
    ),
    (
        "annotations",
        "not honoured: orch sets no container annotations",
    ),
    (
        "attach",
        "not honoured: orch keeps every replica's output (orchctl logs)",
    ),
];

fn command(ctx: &mut Ctx, f: &Fields<'_>, key: &str) -> Option<Vec<String>> {
    let v = f.get(key)?;
    let at = f.at(key);
    match v {
        Value::String(s) => match shell_words::split(s) {
            Ok(words) => Some(words),
            Err(e) => {
                ctx.error(
                    at,
                    s,
                    format!("cannot be split into words as a shell would: {e}"),
                );
                None
            }
        },
        Value::Array(_) => Some(strings(ctx, &at, v)),
        other => {
            ctx.error(at, show(other), "must be a string or a list of strings");
            None
        }
    }
}

fn duration(ctx: &mut Ctx, f: &Fields<'_>, key: &str) -> Option<Span> {
    let s = f.str(ctx, key)?;
    match Span::parse(&s) {
        Ok(v) => Some(v),
        Err(e) => {
            ctx.error(f.at(key), s, e);
            None
        }
    }
}

fn healthcheck(ctx: &mut Ctx, f: &Fields<'_>) -> Option<Probe> {
    if f.bool(ctx, "disable") == Some(true) {
        for (_, p) in f.unread() {
            ctx.warn(p, "the healthcheck is disabled: ignored");
        }
        return None;
    }
    let test = match f.get("test") {
        None => None,
        Some(Value::String(s)) => Some(vec!["CMD-SHELL".to_string(), s.clone()]),
        Some(v @ Value::Array(_)) => Some(strings(ctx, &f.at("test"), v)),
        Some(other) => {
            ctx.error(f.at("test"), show(other), "must be a string or a list");
            None
        }
    };
    let command = match test.as_deref() {
        None => {
            ctx.warn(
                &f.path,
                "no test: the image's own HEALTHCHECK is not read by orch, so there is no readiness probe",
            );
            for (_, p) in f.unread() {
                ctx.warn(p, "no test: ignored");
            }
            return None;
        }
        Some([first, rest @ ..]) if first == "CMD" && !rest.is_empty() => rest.to_vec(),
        Some([first, rest @ ..]) if first == "CMD-SHELL" && !rest.is_empty() => {
            vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
        }
        Some([first, ..]) if first == "NONE" => {
            for (_, p) in f.unread() {
                ctx.warn(p, "the test is NONE: ignored");
            }
            return None;
        }
        Some(other) => {
            ctx.error(
                f.at("test"),
                format!("{other:?}"),
                "a test is [\"CMD\", PROGRAM, ARGS...], [\"CMD-SHELL\", COMMAND], [\"NONE\"] or a string (run by /bin/sh -c)",
            );
            return None;
        }
    };
    // Compose's defaults: every 30s, 30s timeout, 3 retries.
    let probe = Probe {
        exec: Some(ExecProbe { command }),
        period: Some(duration(ctx, f, "interval").unwrap_or(Span::secs(30))),
        timeout: Some(duration(ctx, f, "timeout").unwrap_or(Span::secs(30))),
        failure_threshold: f
            .uint(ctx, "retries", u64::from(u32::MAX))
            .map(|n| (n as u32).max(1))
            .or(Some(3)),
        ..Probe::default()
    };
    // start_period: a readiness probe starts unready and turns ready at its first success,
    // so failures before then harm nothing (as Compose's start period).
    let _ = duration(ctx, f, "start_period");
    if f.has("start_interval") {
        let _ = duration(ctx, f, "start_interval");
        ctx.warn(
            f.at("start_interval"),
            "not honoured: orch checks every interval from the start",
        );
    }
    f.finish(ctx);
    Some(probe)
}

fn restart(ctx: &mut Ctx, f: &Fields<'_>) -> Option<RestartPolicy> {
    let s = f.str(ctx, "restart")?;
    Some(match s.as_str() {
        "no" | "false" => RestartPolicy::Never,
        "always" | "unless-stopped" => RestartPolicy::Always,
        "on-failure" => RestartPolicy::OnFailure,
        other => match other.strip_prefix("on-failure:") {
            Some(n) if n.parse::<u32>().is_ok() => {
                ctx.warn(
                    f.at("restart"),
                    format!("at most {n} restarts is not honoured: orch restarts on failure without a limit (backing off up to 30s)"),
                );
                RestartPolicy::OnFailure
            }
            _ => {
                ctx.error(
                    f.at("restart"),
                    other,
                    "must be no, always, on-failure[:N] or unless-stopped",
                );
                return None;
            }
        },
    })
}

/// `env_file:` then `environment:` (which wins), as orch env entries.
fn environment(ctx: &mut Ctx, proj: &Project<'_>, f: &Fields<'_>) -> Vec<EnvVar> {
    let mut env: Vec<EnvVar> = Vec::new();
    let set =
        |env: &mut Vec<EnvVar>, k: String, v: String| match env.iter_mut().find(|e| e.name == k) {
            Some(e) => e.value = v,
            None => env.push(EnvVar::new(k, v)),
        };
    if let Some(v) = f.get("env_file") {
        let at = f.at("env_file");
        let items: Vec<&Value> = match v {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for (i, item) in items.into_iter().enumerate() {
            let ip = if v.is_array() {
                format!("{at}[{i}]")
            } else {
                at.clone()
            };
            let (file, required) = match item {
                Value::Object(_) => {
                    let ef = Fields::of(ctx, &ip, item);
                    let file = ef.str(ctx, "path");
                    let required = ef.bool(ctx, "required").unwrap_or(true);
                    if let Some(fmt) = ef.str(ctx, "format") {
                        if fmt != "raw" {
                            ctx.warn(
                                ef.at("format"),
                                format!("format {fmt:?} is not known to orch: read as a .env file"),
                            );
                        }
                    }
                    ef.finish(ctx);
                    match file {
                        Some(p) => (p, required),
                        None => {
                            ctx.error(ef.at("path"), "", "must be set");
                            continue;
                        }
                    }
                }
                other => match scalar(ctx, &ip, other) {
                    Some(p) => (p, true),
                    None => continue,
                },
            };
            let Some(full) = volumes::host_path(ctx, proj, &ip, &file) else {
                continue;
            };
            match std::fs::read_to_string(&full) {
                Ok(text) => {
                    let (vars, bad) = parse_dotenv(&text);
                    for n in bad {
                        ctx.warn(&ip, format!("{full} line {n}: no KEY=VALUE: ignored"));
                    }
                    for (k, v) in vars {
                        set(&mut env, k, v);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
                Err(e) => ctx.error(&ip, &file, format!("cannot read env file {full}: {e}")),
            }
        }
    }
    if let Some(v) = f.get("environment") {
        let at = f.at("environment");
        for (k, val) in list_or_dict(ctx, &at, v) {
            match val.or_else(|| proj.vars.get(&k).cloned()) {
                Some(val) => set(&mut env, k, val),
                None => ctx.warn(
                    format!("{at}.{k}"),
                    format!(
                        "{k} has no value here and is not in the project's .env file: left unset"
                    ),
                ),
            }
        }
    }
    env
}

fn depends_on(ctx: &mut Ctx, f: &Fields<'_>) -> Vec<RawDep> {
    let Some(v) = f.get("depends_on") else {
        return Vec::new();
    };
    let at = f.at("depends_on");
    match v {
        Value::Object(m) => m
            .iter()
            .filter_map(|(name, spec)| {
                let path = format!("{at}.{name}");
                let df = Fields::of(ctx, &path, spec);
                let condition = match df.str(ctx, "condition").as_deref() {
                    None | Some("service_started") => DependencyCondition::Started,
                    Some("service_healthy") => DependencyCondition::Ready,
                    Some("service_completed_successfully") => DependencyCondition::Completed,
                    Some(other) => {
                        ctx.error(df.at("condition"), other, "must be service_started, service_healthy or service_completed_successfully");
                        return None;
                    }
                };
                let required = df.bool(ctx, "required").unwrap_or(true);
                if df.has("restart") {
                    df.skip("restart");
                    ctx.warn(
                        df.at("restart"),
                        "not honoured: orch does not restart a service when a service it depends on restarts",
                    );
                }
                df.finish(ctx);
                Some(RawDep {
                    name: name.clone(),
                    condition,
                    path,
                    required,
                })
            })
            .collect(),
        _ => strings(ctx, &at, v)
            .into_iter()
            .enumerate()
            .map(|(i, name)| RawDep {
                name,
                condition: DependencyCondition::Started,
                path: format!("{at}[{i}]"),
                required: true,
            })
            .collect(),
    }
}

fn networks(
    ctx: &mut Ctx,
    proj: &Project<'_>,
    f: &Fields<'_>,
    aliases: &mut Vec<(String, String)>,
) {
    let Some(v) = f.get("networks") else { return };
    let at = f.at("networks");
    let names: Vec<(String, String, Option<&Value>)> = match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, x)| (k.clone(), format!("{at}.{k}"), Some(x)))
            .collect(),
        _ => strings(ctx, &at, v)
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n, format!("{at}[{i}]"), None))
            .collect(),
    };
    for (name, path, spec) in names {
        if name != "default" && !proj.networks.contains(&name) {
            ctx.error(
                &path,
                &name,
                format!("undefined network {name:?}: declare it under the top-level networks:"),
            );
            continue;
        }
        let Some(spec) = spec else { continue };
        let nf = Fields::of(ctx, &path, spec);
        let list = nf.strings(ctx, "aliases");
        for (i, a) in list.into_iter().enumerate() {
            aliases.push((a, format!("{}[{i}]", nf.at("aliases"))));
        }
        for (_, p) in nf.unread() {
            ctx.warn(p, "not honoured: orch gives each replica an address of its node's subnet on one flat network");
        }
    }
}

/// Converts service `name`; `None` when it is not converted (a `profiles` service, or an
/// error, which is in `ctx`).
pub(crate) fn service(ctx: &mut Ctx, proj: &Project<'_>, name: &str, v: &Value) -> Option<Svc> {
    let path = format!("services.{name}");
    let f = Fields::of(ctx, &path, v);
    let profiles = f.strings(ctx, "profiles");
    if !profiles.is_empty() {
        ctx.warn(
            f.at("profiles"),
            format!(
                "the service is in profiles {} and no profile is active: not converted",
                profiles.join(", ")
            ),
        );
        return None;
    }
    if let Err(e) = orch_core::model::validate::dns1123_label(name) {
        ctx.error(
            &path,
            name,
            format!("an orch service name is a DNS label ({e}): rename the service"),
        );
    }
    let errors_before = ctx.errors.len();
    if f.has("extends") {
        f.skip("extends");
        ctx.error(
            f.at("extends"),
            "",
            "not supported: write the service out in full (orch would lose what it inherits)",
        );
    }
    let mut t = Template::default();
    let image = f.str(ctx, "image");
    if f.has("build") {
        f.skip("build");
        match &image {
            None => ctx.error(
                f.at("build"),
                "",
                "cannot build here: build and push the image and set image:",
            ),
            Some(i) => ctx.warn(
                f.at("build"),
                format!("not built here: orch runs the image {i} (build and push it first)"),
            ),
        }
    } else if image.is_none() {
        ctx.error(
            f.at("image"),
            "",
            "must be set: orch runs a container image",
        );
    }
    t.image = image;
    let entrypoint = command(ctx, &f, "entrypoint");
    let cmd = command(ctx, &f, "command");
    match entrypoint {
        Some(e) if e.is_empty() => ctx.warn(
            f.at("entrypoint"),
            "an empty entrypoint does not clear the image's: orch runs the image's entrypoint",
        ),
        Some(e) => t.command = e,
        None => {}
    }
    t.args = cmd.unwrap_or_default();
    t.env = environment(ctx, proj, &f);
    let mut publish = Vec::new();
    ports::ports(ctx, &f, name, &mut t, &mut publish);
    ports::expose(ctx, &f, &mut t);
    volumes::mounts(ctx, proj, &f, &mut t);
    let mut secrets = BTreeSet::new();
    let mut configs = BTreeSet::new();
    volumes::references(ctx, proj, &f, true, &mut t, &mut secrets);
    volumes::references(ctx, proj, &f, false, &mut t, &mut configs);
    if let Some(h) = f.get("healthcheck") {
        let hf = Fields::of(ctx, f.at("healthcheck"), h);
        t.readiness_probe = healthcheck(ctx, &hf);
    }
    // Compose's default is restart: "no".
    t.restart_policy = RestartPolicy::Never;
    let mut restart_given = false;
    if let Some(r) = restart(ctx, &f) {
        t.restart_policy = r;
        restart_given = true;
    }
    let mut d = match f.get("deploy") {
        Some(v) => {
            let df = Fields::of(ctx, f.at("deploy"), v);
            deploy(ctx, &df)
        }
        None => Default::default(),
    };
    if let Some(r) = d.restart {
        t.restart_policy = r;
        restart_given = true;
    }
    // deploy.resources wins over the service-level keys.
    let mut own = Limits::default();
    own.read(ctx, &f, Some("cpus"), Some("mem_limit"), true);
    own.read(ctx, &f, None, Some("mem_reservation"), false);
    let mut limits = std::mem::take(&mut d.limits);
    limits.cpu_limit = limits.cpu_limit.or(own.cpu_limit);
    limits.mem_limit = limits.mem_limit.or(own.mem_limit);
    limits.mem_reserve = limits.mem_reserve.or(own.mem_reserve);
    t.resources = limits.resources(ctx);
    let scale = f.uint(ctx, "scale", orch_core::model::object::MAX_REPLICAS as u64);
    let replicas = d.replicas.or(scale.map(|n| n as u32)).unwrap_or(1);
    let depends = depends_on(ctx, &f);
    let mut aliases = Vec::new();
    networks(ctx, proj, &f, &mut aliases);
    if let Some(mode) = f.str(ctx, "network_mode") {
        match mode.as_str() {
            "host" => t.host_network = true,
            "bridge" => {}
            other => ctx.warn(
                f.at("network_mode"),
                format!("{other:?} is not honoured: the replicas get a network of their own (or the node's, without replica networking)"),
            ),
        }
    }
    if let Some(c) = f.str(ctx, "container_name") {
        if c != name {
            aliases.push((c, f.at("container_name")));
        }
    }
    t.hostname = f.str(ctx, "hostname");
    t.user = f.str(ctx, "user");
    t.working_dir = f.str(ctx, "working_dir");
    t.stop_signal = f.str(ctx, "stop_signal");
    t.stop_grace_period = duration(ctx, &f, "stop_grace_period");
    t.read_only_root_filesystem = f.bool(ctx, "read_only").unwrap_or(false);
    t.capabilities = Capabilities {
        add: f.strings(ctx, "cap_add"),
        drop: f.strings(ctx, "cap_drop"),
    };
    match f.str(ctx, "pull_policy").as_deref() {
        None | Some("missing") | Some("if_not_present") => {}
        Some("always") => t.image_pull_policy = PullPolicy::Always,
        Some("never") => t.image_pull_policy = PullPolicy::Never,
        Some(other) => ctx.warn(
            f.at("pull_policy"),
            format!("{other:?} is not honoured: the node pulls the image when it does not have it"),
        ),
    }
    let mut labels = BTreeMap::new();
    let mut annotations = BTreeMap::new();
    if let Some(v) = f.get("labels") {
        let pairs = list_or_dict(ctx, &f.at("labels"), v)
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect();
        split_labels(ctx, &f.at("labels"), pairs, &mut t.labels, &mut annotations);
    }
    split_labels(
        ctx,
        &f.at("deploy.labels"),
        std::mem::take(&mut d.labels),
        &mut labels,
        &mut annotations,
    );
    for (key, msg) in IGNORED {
        if f.has(key) {
            f.skip(key);
            ctx.warn(f.at(key), *msg);
        }
    }
    f.finish(ctx);
    if ctx.errors.len() > errors_before {
        return None;
    }
    Some(Svc {
        name: name.to_string(),
        path,
        template: t,
        replicas,
        mode: d.mode,
        job_mode: d.job,
        placement: d.placement,
        update: d.update,
        publish,
        depends,
        aliases,
        labels,
        annotations,
        restart_given,
        secrets,
        configs,
    })
}
