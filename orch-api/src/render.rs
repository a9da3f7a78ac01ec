//! Tables as `kubectl get` prints them, shared by `orchctl` and the `orchd up` view.

use orch_core::model::object::{
    DesiredState, IntOrPercent, NodeCondition, Object, Phase, Probe, ProbePort, Replica,
    RevisionRecord, Service, ServiceMode, Template, UpdateOrder, UpdateStrategy,
};
use orch_core::model::quantity::{format_age, Span, Timestamp};

/// Pads columns with three spaces, like kubectl.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            s.push_str(c);
            if i < last {
                s.push_str(&" ".repeat(widths[i] - c.chars().count() + 3));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

fn age(ts: Option<Timestamp>) -> String {
    ts.map(|t| format_age(t.elapsed()))
        .unwrap_or_else(|| "<unknown>".into())
}

/// Which columns a table has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Columns {
    /// A NAMESPACE column first (for namespaced kinds).
    pub all_namespaces: bool,
    /// `-o wide`: replicas add IP, nodes ADDRESS and SUBNET; other kinds have no more
    /// columns.
    pub wide: bool,
    /// The cluster leases service virtual IPs (some node has a subnet lease): a service
    /// without one yet reads `<pending>` rather than `<none>`.
    pub cluster_network: bool,
}

/// The header and row of an object; `all_namespaces` adds NAMESPACE.
pub fn row(obj: &Object, all_namespaces: bool) -> (Vec<&'static str>, Vec<String>) {
    row_with(
        obj,
        Columns {
            all_namespaces,
            ..Columns::default()
        },
    )
}

/// A service's virtual IP as `get services` shows it: the address, `None` for a headless
/// service (as kubectl shows a headless ClusterIP), `<pending>` while the network
/// controller has not leased one, `<none>` where the cluster leases none.
pub fn virtual_ip_text(s: &Service, cluster_network: bool) -> String {
    match (&s.status.virtual_ip, s.spec.headless) {
        (_, true) => "None".into(),
        (Some(ip), false) => ip.clone(),
        (None, false) if cluster_network => "<pending>".into(),
        (None, false) => "<none>".into(),
    }
}

/// A replica's IP as `get replicas -o wide` shows it: its own address, or its node's with
/// `(host)` when it is on the host network; `<none>` before it runs.
pub fn replica_ip_text(r: &Replica) -> String {
    match (&r.status.ip, &r.status.host_ip) {
        (Some(ip), _) => ip.clone(),
        (None, Some(host)) => format!("{host} (host)"),
        (None, None) => "<none>".into(),
    }
}

/// The header and row of an object with these columns.
pub fn row_with(obj: &Object, columns: Columns) -> (Vec<&'static str>, Vec<String>) {
    let md = obj.metadata();
    let (mut header, mut cells): (Vec<&'static str>, Vec<String>) = match obj {
        Object::Service(s) => (
            vec![
                "NAME",
                "READY",
                "UP-TO-DATE",
                "PENDING",
                "VIRTUAL-IP",
                "AGE",
                "MESSAGE",
            ],
            vec![
                md.name.clone(),
                format!("{}/{}", s.status.ready_replicas, s.spec.replicas),
                s.status.updated_replicas.to_string(),
                s.status.pending_replicas.to_string(),
                virtual_ip_text(s, columns.cluster_network),
                age(md.creation_timestamp),
                s.status.message.clone(),
            ],
        ),
        Object::Replica(r) => {
            let mut phase = r.status.phase.as_str().to_string();
            if r.spec.desired == DesiredState::Stopped && r.status.phase != Phase::Stopping {
                phase = "Stopping".into();
            } else if !r.status.reason.is_empty() && !r.status.phase.is_up() {
                // Why it is not up (CrashLoopBackOff, Unschedulable, ...), as kubectl shows a
                // waiting reason; a running replica stays `Running` until it is `Ready` (why
                // it is not ready yet is in `describe`).
                phase = r.status.reason.to_string();
            }
            (
                vec![
                    "NAME", "SERVICE", "NODE", "PHASE", "RESTARTS", "ADDRESS", "AGE",
                ],
                vec![
                    md.name.clone(),
                    r.spec.service.to_string(),
                    r.spec.node.clone().unwrap_or_else(|| "<none>".into()),
                    phase,
                    r.status.restarts.to_string(),
                    r.status.address().unwrap_or_else(|| "<none>".into()),
                    age(md.creation_timestamp),
                ],
            )
        }
        Object::Node(n) => {
            let mut status = match n.status.condition {
                NodeCondition::Ready => "Ready".to_string(),
                NodeCondition::Unreachable => "Unreachable".to_string(),
            };
            if n.spec.unschedulable {
                status.push_str(",SchedulingDisabled");
            }
            (
                vec![
                    "NAME", "STATUS", "RUNTIMES", "CPU", "MEMORY", "AGE", "VERSION",
                ],
                vec![
                    md.name.clone(),
                    status,
                    n.status.runtimes.join(","),
                    n.status
                        .capacity
                        .cpu
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    n.status
                        .capacity
                        .memory
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| "-".into()),
                    age(md.creation_timestamp),
                    n.status.agent_version.clone(),
                ],
            )
        }
        Object::Secret(s) => (
            vec!["NAME", "DATA", "AGE"],
            vec![
                md.name.clone(),
                s.data.len().to_string(),
                age(md.creation_timestamp),
            ],
        ),
        Object::Config(c) => (
            vec!["NAME", "DATA", "AGE"],
            vec![
                md.name.clone(),
                c.data.len().to_string(),
                age(md.creation_timestamp),
            ],
        ),
        Object::Job(j) => (
            vec!["NAME", "COMPLETIONS", "ACTIVE", "FAILED", "STATUS", "AGE"],
            vec![
                md.name.clone(),
                format!("{}/{}", j.status.succeeded, j.spec.completions),
                j.status.active.to_string(),
                j.status.failed.to_string(),
                format!("{:?}", j.status.state),
                age(md.creation_timestamp),
            ],
        ),
        Object::Route(r) => (
            vec!["NAME", "VIRTUAL-IP", "PORTS", "ENDPOINTS", "AGE"],
            vec![
                md.name.clone(),
                route_ip_text(r),
                route_ports_text(r),
                r.status.endpoints.to_string(),
                age(md.creation_timestamp),
            ],
        ),
        Object::CronJob(c) => (
            vec![
                "NAME",
                "SCHEDULE",
                "SUSPEND",
                "ACTIVE",
                "LAST SCHEDULE",
                "AGE",
            ],
            vec![
                md.name.clone(),
                c.spec.schedule.clone(),
                c.spec.suspend.to_string(),
                c.status.active.len().to_string(),
                c.status
                    .last_schedule
                    .map(|t| format_age(t.elapsed()))
                    .unwrap_or_else(|| "<none>".into()),
                age(md.creation_timestamp),
            ],
        ),
        Object::Event(e) => (
            vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
            vec![
                format_age(e.timestamp.elapsed()),
                format!("{:?}", e.type_),
                e.reason.clone(),
                format!(
                    "{}/{}",
                    e.involved
                        .kind
                        .map(|k| k.as_str().to_ascii_lowercase())
                        .unwrap_or_default(),
                    e.involved.name
                ),
                e.message.clone(),
            ],
        ),
    };
    if columns.wide {
        let none = || "<none>".to_string();
        match obj {
            Object::Replica(r) => {
                header.push("IP");
                cells.push(replica_ip_text(r));
            }
            Object::Node(n) => {
                header.extend(["ADDRESS", "SUBNET"]);
                cells.push(n.status.addresses.first().cloned().unwrap_or_else(none));
                cells.push(
                    n.spec
                        .network
                        .as_ref()
                        .map_or_else(none, |l| l.subnet.clone()),
                );
            }
            _ => {}
        }
    }
    if columns.all_namespaces && obj.kind().namespaced() {
        header.insert(0, "NAMESPACE");
        cells.insert(0, md.namespace.clone());
    }
    (header, cells)
}

/// A table of objects (all of one kind).
pub fn objects_table(objs: &[Object], all_namespaces: bool) -> String {
    objects_table_with(
        objs,
        Columns {
            all_namespaces,
            ..Columns::default()
        },
    )
}

/// A table of objects (all of one kind) with these columns.
pub fn objects_table_with(objs: &[Object], columns: Columns) -> String {
    let Some(first) = objs.first() else {
        return String::new();
    };
    let (header, _) = row_with(first, columns);
    let rows: Vec<Vec<String>> = objs.iter().map(|o| row_with(o, columns).1).collect();
    table(&header, &rows)
}

/// `orchctl describe` text of an object and its events (newest last). For a service,
/// `config_versions` are the revisions of the secrets and configs its template refers to
/// ([`Template::config_versions`](orch_core::model::object::Template::config_versions)), as
/// the replication controller counts them for the revision hash.
pub fn describe(
    obj: &Object,
    config_versions: &[String],
    events: &[Object],
    related: &[Object],
) -> String {
    let md = obj.metadata();
    let mut out = String::new();
    let mut kv = |k: &str, v: String| out.push_str(&format!("{:<18}{}\n", format!("{k}:"), v));
    kv("Name", md.name.clone());
    if obj.kind().namespaced() {
        kv("Namespace", md.namespace.clone());
    }
    kv("Kind", obj.kind().to_string());
    let labels = md
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    kv(
        "Labels",
        if labels.is_empty() {
            "<none>".into()
        } else {
            labels
        },
    );
    kv(
        "Created",
        md.creation_timestamp
            .map(|t| t.to_string())
            .unwrap_or_default(),
    );
    kv("UID", md.uid.clone());
    kv("Revision", md.revision.to_string());
    match obj {
        Object::Service(s) => {
            kv(
                "Generation",
                format!(
                    "{} (observed {})",
                    md.generation, s.status.observed_generation
                ),
            );
            kv(
                "Replicas",
                format!(
                    "{} desired | {} ready | {} updated | {} pending",
                    s.spec.replicas,
                    s.status.ready_replicas,
                    s.status.updated_replicas,
                    s.status.pending_replicas
                ),
            );
            let vip = virtual_ip_text(s, false);
            kv(
                "Virtual IP",
                match (s.spec.headless, s.status.virtual_ip.is_some()) {
                    (true, _) => format!("{vip} (headless: DNS answers the ready replicas' IPs)"),
                    (false, true) => vip,
                    (false, false) => {
                        format!(
                            "{vip} (not leased: the cluster has no service network, or not yet)"
                        )
                    }
                },
            );
            let t = &s.spec.template;
            match &t.image {
                Some(i) => kv("Image", i.clone()),
                None => kv(
                    "Command",
                    t.command
                        .iter()
                        .chain(&t.args)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
            }
            if !t.ports.is_empty() {
                kv(
                    "Ports",
                    t.ports
                        .iter()
                        .map(|p| {
                            format!(
                                "{}={}",
                                p.name,
                                p.port
                                    .map(|n| n.to_string())
                                    .unwrap_or_else(|| "dynamic".into())
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                );
            }
            for p in &s.spec.publish {
                kv(
                    "Published",
                    format!(
                        "{} on every node → {} ({:?})",
                        p.port,
                        p.target(t).unwrap_or("<no port>"),
                        p.balance
                    ),
                );
            }
            kv("Restart policy", format!("{:?}", t.restart_policy));
            kv(
                "Resources",
                format!(
                    "cpu {} memory {}",
                    t.resources
                        .cpu
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    t.resources
                        .memory
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| "-".into())
                ),
            );
            for (what, probe) in [
                ("Startup probe", &t.startup_probe),
                ("Readiness probe", &t.readiness_probe),
                ("Liveness probe", &t.liveness_probe),
            ] {
                if let Some(p) = probe {
                    kv(what, probe_text(p));
                }
            }
            if !config_versions.is_empty() {
                kv("Uses", config_versions.join(", "));
            }
            if s.spec.mode == ServiceMode::Global {
                kv("Mode", "global (one replica on every eligible node)".into());
            }
            kv(
                "Update strategy",
                update_text(&s.spec.update, s.spec.replicas),
            );
            kv("Paused", s.spec.update.paused.to_string());
            kv("Revision hash", s.spec.revision_hash(config_versions));
            let r = &s.status.rollout;
            if s.status.revision > 0 {
                kv(
                    "Rollout",
                    format!(
                        "revision {} {:?}{}{}",
                        s.status.revision,
                        r.state,
                        r.started.map(|t| format!(" since {t}")).unwrap_or_default(),
                        if r.message.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", r.message)
                        }
                    ),
                );
            }
            if !s.status.message.is_empty() {
                kv("Message", s.status.message.clone());
            }
        }
        Object::Replica(r) => {
            kv("Service", r.spec.service.to_string());
            kv(
                "Node",
                r.spec.node.clone().unwrap_or_else(|| "<none>".into()),
            );
            kv("Phase", r.status.phase.as_str().into());
            if !r.status.reason.is_empty() {
                kv("Reason", r.status.reason.to_string());
            }
            if !r.status.message.is_empty() {
                kv("Message", r.status.message.clone());
            }
            kv("Restarts", r.status.restarts.to_string());
            for line in &r.status.probes {
                kv("Probe", line.clone());
            }
            kv("IP", replica_ip_text(r));
            match (&r.status.ip, &r.status.host_ip) {
                (Some(_), _) => kv("Network", "a network namespace of its own".into()),
                (None, Some(_)) => kv("Network", "the host network (its node's address)".into()),
                (None, None) => {}
            }
            kv(
                "Address",
                r.status.address().unwrap_or_else(|| "<none>".into()),
            );
            kv("Runtime id", r.status.runtime_id.clone());
            if let Some(e) = &r.status.last_exit {
                kv(
                    "Last exit",
                    format!(
                        "{e}{}",
                        e.at.map(|t| format!(" at {t}")).unwrap_or_default()
                    ),
                );
            }
            kv("Template hash", r.spec.template_hash.clone());
        }
        Object::Node(n) => {
            kv("Condition", format!("{:?}", n.status.condition));
            kv("Schedulable", (!n.spec.unschedulable).to_string());
            kv(
                "Taints",
                n.spec
                    .taints
                    .iter()
                    .map(|t| match t.value.is_empty() {
                        true => format!("{}:{:?}", t.key, t.effect),
                        false => format!("{}={}:{:?}", t.key, t.value, t.effect),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            kv("Addresses", n.status.addresses.join(", "));
            kv("Runtimes", n.status.runtimes.join(", "));
            if !n.status.runtime_problems.is_empty() {
                kv("Unavailable", n.status.runtime_problems.join("; "));
            }
            kv(
                "Heartbeat",
                n.status
                    .heartbeat
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
            );
            kv("Limits", n.status.limits.clone());
            network_section(&mut out, n);
        }
        // Values arrive redacted (`<redacted: N bytes>`): the API never returns them.
        Object::Secret(s) => kv(
            "Data",
            s.data
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Object::Config(c) => kv(
            "Data",
            c.data.keys().cloned().collect::<Vec<_>>().join(", "),
        ),
        Object::Event(e) => kv("Message", e.message.clone()),
        Object::Job(j) => {
            kv("State", format!("{:?}", j.status.state));
            kv(
                "Completions",
                format!("{}/{} succeeded", j.status.succeeded, j.spec.completions),
            );
            kv("Parallelism", j.spec.parallelism.to_string());
            kv(
                "Failures",
                format!(
                    "{} (backoff limit {})",
                    j.status.failed, j.spec.backoff_limit
                ),
            );
            if !j.status.message.is_empty() {
                kv("Message", j.status.message.clone());
            }
        }
        Object::Route(r) => {
            kv("Selector", selector_text(&r.spec.selector));
            kv("Virtual IP", route_ip_text(r));
            kv("Ports", route_ports_text(r));
            kv("Endpoints", r.status.endpoints.to_string());
            if !r.status.message.is_empty() {
                kv("Message", r.status.message.clone());
            }
        }
        Object::CronJob(c) => {
            kv("Schedule", c.spec.schedule.clone());
            kv("Concurrency", format!("{:?}", c.spec.concurrency_policy));
            kv("Suspend", c.spec.suspend.to_string());
            kv("Active", c.status.active.join(", "));
            if !c.status.message.is_empty() {
                kv("Message", c.status.message.clone());
            }
        }
    }
    if !related.is_empty() {
        out.push_str("\nReplicas:\n");
        for l in objects_table(related, false).lines() {
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str("\nEvents:\n");
    if events.is_empty() {
        out.push_str("  <none>\n");
    } else {
        for l in objects_table(events, false).lines() {
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// The Network section of `describe node`: the node's lease (`spec.network`, written by the
/// manager) and what its agent reports (`status.network`).
fn network_section(out: &mut String, n: &orch_core::model::object::Node) {
    out.push_str("Network:\n");
    let mut kv = |k: &str, v: String| out.push_str(&format!("  {:<16}{}\n", format!("{k}:"), v));
    match &n.spec.network {
        Some(l) => {
            kv("Subnet", l.subnet.clone());
            kv("Cluster CIDR", l.cluster_cidr.clone());
            kv("Service CIDR", l.service_cidr.clone());
            kv("Mode", l.mode.as_str().into());
        }
        None => kv(
            "Subnet",
            "<none> (no lease: its replicas are on the host network)".into(),
        ),
    }
    match &n.status.network {
        Some(st) => {
            kv("Ready", st.ready.to_string());
            if !st.message.is_empty() {
                kv("Message", st.message.clone());
            }
        }
        None => kv("Ready", "<unknown> (the agent reports no network)".into()),
    }
}

/// A probe as `kubectl describe` shows one: what it checks, then its timing and thresholds.
fn probe_text(p: &Probe) -> String {
    let port = |p: &ProbePort| match p {
        ProbePort::Number(n) => n.to_string(),
        ProbePort::Name(n) => n.clone(),
    };
    let what = if let Some(h) = &p.http_get {
        format!("http-get :{}{}", port(&h.port), h.path)
    } else if let Some(t) = &p.tcp_socket {
        format!("tcp-socket :{}", port(&t.port))
    } else if let Some(e) = &p.exec {
        format!("exec {:?}", e.command)
    } else {
        "<no check>".into()
    };
    let span = |d: std::time::Duration| Span(d).to_string();
    format!(
        "{what} delay={} timeout={} period={} #success={} #failure={}",
        span(p.initial_delay()),
        span(p.timeout()),
        span(p.period()),
        p.success_threshold(),
        p.failure_threshold()
    )
}

/// The update strategy as written, with what it means for `replicas` now.
fn update_text(u: &UpdateStrategy, replicas: u32) -> String {
    let pct = |v: &Option<IntOrPercent>| match v {
        Some(IntOrPercent::Int(n)) => n.to_string(),
        Some(IntOrPercent::Percent(p)) => p.clone(),
        None => "25%".into(),
    };
    let (surge, unavailable) = u.limits(replicas);
    let order = match u.order {
        Some(UpdateOrder::StartFirst) => ", order startFirst",
        Some(UpdateOrder::StopFirst) => ", order stopFirst",
        None => "",
    };
    let deadline = u
        .progress_deadline
        .map_or_else(|| "10m (default)".to_string(), |d| d.to_string());
    format!(
        "max surge {}, max unavailable {} ({surge} surge, {unavailable} unavailable for {replicas}){order}, progress deadline {deadline}, auto rollback {}{}",
        pct(&u.max_surge),
        pct(&u.max_unavailable),
        if u.auto_rollback.unwrap_or(true) { "on" } else { "off" },
        if u.ignore_config_changes {
            ", ignores config changes"
        } else {
            ""
        }
    )
}

/// The events about `obj`, oldest first: those naming its kind, namespace and name, and its
/// uid — an event recorded without a uid counts when it is not older than the object, so the
/// events of an earlier object of the same name are left out.
pub fn events_of(obj: &Object, events: &[Object]) -> Vec<Object> {
    let md = obj.metadata();
    let kind = obj.kind();
    let mut out: Vec<Object> = events
        .iter()
        .filter(|e| match e {
            Object::Event(e) => {
                let i = &e.involved;
                i.kind == Some(kind)
                    && i.name == md.name
                    && (!kind.namespaced() || i.namespace == md.namespace)
                    && if i.uid.is_empty() || md.uid.is_empty() {
                        md.creation_timestamp.is_none_or(|c| e.timestamp >= c)
                    } else {
                        i.uid == md.uid
                    }
            }
            _ => false,
        })
        .cloned()
        .collect();
    out.sort_by_key(|e| match e {
        Object::Event(e) => e.timestamp,
        _ => Default::default(),
    });
    out
}

/// What a template runs, in one cell: the image or the command with its arguments, then its
/// environment (`[NAME=value ...]`, `NAME<-secret/NAME:KEY` for references).
fn runs(t: &Template) -> String {
    let what = match &t.image {
        Some(i) => std::iter::once(i.clone())
            .chain(t.args.iter().cloned())
            .collect::<Vec<_>>(),
        None => t.command.iter().chain(&t.args).cloned().collect(),
    }
    .join(" ");
    let env: Vec<String> = t
        .env
        .iter()
        .map(|e| match &e.value_from {
            Some(v) => match (&v.secret, &v.config) {
                (Some(s), _) => format!("{}<-secret/{s}:{}", e.name, v.key),
                (_, Some(c)) => format!("{}<-config/{c}:{}", e.name, v.key),
                _ => format!("{}=", e.name),
            },
            None => format!("{}={}", e.name, e.value),
        })
        .collect();
    if env.is_empty() {
        what
    } else {
        format!("{what} [{}]", env.join(" "))
    }
}

/// `orchctl rollout history`: the kept revisions by number, each with when it was first
/// recorded, its hash, what it runs and what changed (`current` and `last good` marked).
pub fn rollout_history(svc: &Service) -> String {
    let mut history: Vec<&RevisionRecord> = svc.status.history.iter().collect();
    history.sort_by_key(|h| h.revision);
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|h| {
            let mut marks = Vec::new();
            if h.revision == svc.status.revision {
                marks.push("current");
            }
            if h.revision == svc.status.last_good_revision {
                marks.push("last good");
            }
            vec![
                h.revision.to_string(),
                if marks.is_empty() {
                    "-".into()
                } else {
                    marks.join(", ")
                },
                h.created
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "<unknown>".into()),
                h.hash.clone(),
                runs(&h.template),
                if h.change.is_empty() {
                    "-".into()
                } else {
                    h.change.clone()
                },
            ]
        })
        .collect();
    table(
        &["REVISION", "STATUS", "CREATED", "HASH", "RUNS", "CHANGE"],
        &rows,
    )
}

/// One `orchctl rollout status` line for `svc`, or `None` while the controller has not yet
/// observed its current generation (its status then describes an older spec, or none: a
/// service just created would read `revision 0 ... Complete`).
pub fn rollout_status_line(svc: &Service) -> Option<String> {
    let st = &svc.status;
    if st.observed_generation < svc.metadata.generation || st.revision == 0 {
        return None;
    }
    let n = svc.spec.replicas;
    let width = 20usize;
    let filled = if n == 0 {
        width
    } else {
        (st.updated_replicas.min(n) as usize * width) / n as usize
    };
    Some(format!(
        "[{}{}] revision {}: {}/{n} updated, {}/{n} ready ({:?})",
        "#".repeat(filled),
        "-".repeat(width - filled),
        st.revision,
        st.updated_replicas,
        st.ready_replicas,
        st.rollout.state
    ))
}

/// `orchctl apply --plan`: per service what would change, then where each replica would go.
pub fn plan(plan: &orch_core::engine::api::PlacementPlan) -> String {
    let summary: Vec<Vec<String>> = plan
        .services
        .iter()
        .map(|s| {
            let placed = s.placements.iter().filter(|p| p.node.is_some()).count();
            vec![
                s.name.clone(),
                s.namespace.clone(),
                s.action.clone(),
                s.kept.to_string(),
                placed.to_string(),
                (s.placements.len() - placed).to_string(),
                s.stopped.to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "SERVICE",
            "NAMESPACE",
            "ACTION",
            "KEPT",
            "TO PLACE",
            "PENDING",
            "TO STOP",
        ],
        &summary,
    );
    let rows: Vec<Vec<String>> = plan
        .services
        .iter()
        .flat_map(|s| {
            s.placements.iter().map(|p| {
                vec![
                    s.name.clone(),
                    p.replica.clone(),
                    p.node.clone().unwrap_or_else(|| "<pending>".into()),
                    p.reason.clone(),
                ]
            })
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table(&["SERVICE", "REPLICA", "NODE", "REASON"], &rows));
    }
    out.push_str(&format!(
        "\nplan by scheduler {:?} on the cluster as stored now; nothing was changed\n",
        plan.scheduler
    ));
    out
}

/// A route's virtual IP as tables show it: `None` when headless, `<pending>` before a lease.
fn route_ip_text(r: &orch_core::model::object::Route) -> String {
    match (&r.status.virtual_ip, r.spec.headless) {
        (_, true) => "None".into(),
        (Some(ip), false) => ip.clone(),
        (None, false) => "<pending>".into(),
    }
}

/// A route's ports as `kubectl get svc` shows them: `80/TCP`, `80:30080/TCP` with a node port.
fn route_ports_text(r: &orch_core::model::object::Route) -> String {
    if r.spec.ports.is_empty() {
        return "<none>".into();
    }
    r.spec
        .ports
        .iter()
        .map(|p| {
            let key = if p.name.is_empty() {
                p.port.to_string()
            } else {
                p.name.clone()
            };
            let node = p
                .node_port
                .or_else(|| r.status.node_ports.get(&key).copied());
            let proto = format!("{:?}", p.protocol).to_ascii_uppercase();
            match node {
                Some(n) if r.spec.node_ports => format!("{}:{n}/{proto}", p.port),
                _ => format!("{}/{proto}", p.port),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A label selector as `key=value,key in (a,b)`.
fn selector_text(s: &orch_core::model::object::LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    parts.extend(
        s.match_expressions
            .iter()
            .map(|e| format!("{} {:?} ({})", e.key, e.operator, e.values.join(","))),
    );
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

/// The table of `orchctl get managers`: NAME, ADDRESS, ROLE, ETCD-MEMBER, ETCD-HEALTH, AGE
/// (`wide` adds VERSION).
pub fn managers_table(rows: &[crate::protocol::ManagerStatus], wide: bool) -> String {
    let mut header = vec![
        "NAME",
        "ADDRESS",
        "ROLE",
        "ETCD-MEMBER",
        "ETCD-HEALTH",
        "AGE",
    ];
    if wide {
        header.push("VERSION");
    }
    let dash = |s: Option<&str>| match s {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "-".to_string(),
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|m| {
            let mut row = vec![
                m.name.clone(),
                dash(Some(&m.address)),
                m.role.to_string(),
                match &m.etcd_member {
                    Some(id) if m.etcd_leader => format!("{id} (leader)"),
                    other => dash(other.as_deref()),
                },
                dash(m.etcd_health.as_deref()),
                match &m.started {
                    Some(t) => age(Timestamp::parse(t).ok()),
                    None => "-".into(),
                },
            ];
            if wide {
                row.push(dash(Some(&m.version)));
            }
            row
        })
        .collect();
    table(&header, &cells)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_core::model::object::{Event, EventType, Kind, Metadata, ObjectRef};

    fn service(text: &str) -> Service {
        match orch_core::model::manifest::parse("web.yaml", text)
            .unwrap()
            .remove(0)
        {
            Object::Service(s) => *s,
            other => panic!("not a service: {other:?}"),
        }
    }

    const WEB: &str = "apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  replicas: 4\n  publish: [{port: 8080}]\n  update: {maxSurge: 1, maxUnavailable: 0, paused: true}\n  template:\n    command: [sleep]\n    args: ['1000']\n    ports: [{name: http}]\n    env: [{name: G, valueFrom: {config: app, key: greeting}}]\n    readinessProbe: {httpGet: {path: /healthz, port: http}, period: 2s}\n    livenessProbe: {exec: {command: [test, -f, /tmp/ok]}, failureThreshold: 5}\n";

    #[test]
    fn describe_service_shows_probes_ports_strategy_pause_and_the_controllers_hash() {
        let s = service(WEB);
        let plain = s.spec.revision_hash(&[]);
        let versions = s.spec.template.config_versions(|secret, name| {
            assert_eq!((secret, name), (false, "app"));
            7
        });
        let text = describe(&Object::from(s.clone()), &versions, &[], &[]);
        for want in [
            "Published:        8080 on every node → http (RoundRobin)",
            "Readiness probe:  http-get :http/healthz delay=0s timeout=1s period=2s #success=1 #failure=3",
            r#"Liveness probe:   exec ["test", "-f", "/tmp/ok"] delay=0s timeout=1s period=10s #success=1 #failure=5"#,
            "Uses:             config/app@7",
            "Update strategy:  max surge 1, max unavailable 0 (1 surge, 0 unavailable for 4), progress deadline 10m (default), auto rollback on",
            "Paused:           true",
        ] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
        let hash = s.spec.revision_hash(&versions);
        assert_ne!(hash, plain, "the config's revision counts");
        assert!(
            text.contains(&format!("Revision hash:    {hash}\n")),
            "{text}"
        );
    }

    fn event(name: &str, uid: &str, at: u64) -> Object {
        Object::Event(Event {
            metadata: Metadata {
                name: format!("{name}.{at}"),
                namespace: "default".into(),
                ..Metadata::default()
            },
            involved: ObjectRef {
                kind: Some(Kind::Service),
                namespace: "default".into(),
                name: name.into(),
                uid: uid.into(),
            },
            type_: EventType::Normal,
            reason: "Scaled".into(),
            message: format!("at {at}"),
            source: String::new(),
            timestamp: Timestamp(at),
        })
    }

    #[test]
    fn events_of_an_object_leave_out_an_earlier_one_of_the_same_name() {
        let mut s = service(WEB);
        s.metadata.uid = "new".into();
        s.metadata.creation_timestamp = Some(Timestamp(5_000));
        let all = [
            event("web", "old", 1_000),
            event("web", "", 2_000),
            event("web", "new", 6_000),
            event("web", "", 5_500),
            event("other", "new", 6_000),
        ];
        let got: Vec<String> = events_of(&Object::from(s), &all)
            .iter()
            .map(|e| match e {
                Object::Event(e) => e.message.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(got, ["at 5500", "at 6000"]);
    }

    fn history(s: &mut Service, revs: &[(u64, &str, &str)]) {
        for (n, arg, change) in revs {
            let mut t = s.spec.template.clone();
            t.args = vec![arg.to_string()];
            s.status.history.push(RevisionRecord {
                revision: *n,
                hash: format!("h{n}"),
                template: t,
                placement: Default::default(),
                created: Some(Timestamp(*n * 1000)),
                config_versions: Vec::new(),
                change: change.to_string(),
            });
        }
    }

    #[test]
    fn rollout_history_is_sorted_by_number_and_tells_revisions_apart() {
        let mut s = service(WEB);
        history(
            &mut s,
            &[(1, "1000", "created"), (4, "1001", "b"), (3, "1002", "a")],
        );
        s.status.revision = 4;
        s.status.last_good_revision = 3;
        let text = rollout_history(&s);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("REVISION   STATUS"), "{text}");
        let numbers: Vec<&str> = lines[1..]
            .iter()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(numbers, ["1", "3", "4"], "{text}");
        assert!(
            lines[2].contains("last good") && lines[2].contains("sleep 1002"),
            "{text}"
        );
        assert!(
            lines[3].contains("current") && lines[3].contains("sleep 1001"),
            "{text}"
        );
        assert!(lines[1].contains("G<-config/app:greeting"), "{text}");
        assert!(lines[1].contains("1970-01-01T00:00:01.000Z"), "{text}");
    }

    #[test]
    fn rollout_status_waits_for_the_controller_to_observe_the_generation() {
        let mut s = service(WEB);
        s.metadata.generation = 1;
        assert_eq!(rollout_status_line(&s), None, "a service just created");
        s.status.observed_generation = 1;
        s.status.revision = 1;
        s.status.updated_replicas = 2;
        s.status.ready_replicas = 1;
        assert_eq!(
            rollout_status_line(&s).unwrap(),
            "[##########----------] revision 1: 2/4 updated, 1/4 ready (Complete)"
        );
        s.metadata.generation = 2;
        assert_eq!(rollout_status_line(&s), None, "a change not yet observed");
    }

    fn replica(status: serde_json::Value) -> orch_core::model::object::Replica {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "default"},
            "spec": {"service": "web", "node": "n1", "template": {"image": "img"}, "templateHash": "h"},
            "status": status,
        }))
        .unwrap()
    }

    /// The cell under `column` of a one-object table.
    fn cell(obj: &Object, columns: Columns, column: &str) -> Option<String> {
        let (header, cells) = row_with(obj, columns);
        header
            .iter()
            .position(|h| *h == column)
            .map(|i| cells[i].clone())
    }

    const WIDE: Columns = Columns {
        all_namespaces: false,
        wide: true,
        cluster_network: true,
    };

    #[test]
    fn wide_replicas_show_their_own_ip_or_the_nodes_on_the_host_network() {
        let own = Object::Replica(replica(serde_json::json!({
            "phase": "Ready", "hostIp": "192.0.2.2", "ip": "10.244.1.5",
            "ports": [{"name": "http", "port": 8080}],
        })));
        let host = Object::Replica(replica(serde_json::json!({
            "phase": "Ready", "hostIp": "192.0.2.2", "ports": [{"name": "http", "port": 31000}],
        })));
        let pending = Object::Replica(replica(serde_json::json!({"phase": "Pending"})));
        assert_eq!(cell(&own, WIDE, "IP").as_deref(), Some("10.244.1.5"));
        assert_eq!(
            cell(&own, WIDE, "ADDRESS").as_deref(),
            Some("10.244.1.5:8080")
        );
        assert_eq!(cell(&host, WIDE, "IP").as_deref(), Some("192.0.2.2 (host)"));
        assert_eq!(cell(&pending, WIDE, "IP").as_deref(), Some("<none>"));
        assert_eq!(cell(&own, WIDE, "NODE").as_deref(), Some("n1"));
        // The normal table is as it was: no IP column.
        assert_eq!(cell(&own, Columns::default(), "IP"), None);
        assert_eq!(row(&own, false), row_with(&own, Columns::default()));
        // -A still puts the namespace first.
        let all = Columns {
            all_namespaces: true,
            ..WIDE
        };
        let (header, cells) = row_with(&own, all);
        assert_eq!((header[0], cells[0].as_str()), ("NAMESPACE", "default"));
        assert_eq!(header.last(), Some(&"IP"));
        let text = objects_table_with(&[own, host], WIDE);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with("IP"), "{text}");
        assert!(lines[1].ends_with("10.244.1.5"), "{text}");
        assert!(lines[2].ends_with("192.0.2.2 (host)"), "{text}");
    }

    #[test]
    fn services_show_their_virtual_ip_none_when_headless_pending_before_the_lease() {
        let mut s = service(WEB);
        let vip = |s: &Service, cluster_network: bool| {
            let columns = Columns {
                cluster_network,
                ..Columns::default()
            };
            cell(&Object::from(s.clone()), columns, "VIRTUAL-IP").unwrap()
        };
        assert_eq!(vip(&s, true), "<pending>");
        assert_eq!(vip(&s, false), "<none>");
        s.status.virtual_ip = Some("10.96.0.10".into());
        assert_eq!(vip(&s, true), "10.96.0.10");
        let text = describe(&Object::from(s.clone()), &[], &[], &[]);
        assert!(text.contains("Virtual IP:       10.96.0.10\n"), "{text}");
        s.status.virtual_ip = None;
        s.spec.headless = true;
        assert_eq!(vip(&s, true), "None");
        let text = describe(&Object::from(s.clone()), &[], &[], &[]);
        assert!(text.contains("Virtual IP:       None (headless"), "{text}");
        // Services have no wide columns: -o wide is the normal table.
        let obj = Object::from(s);
        let columns = Columns {
            cluster_network: true,
            ..Columns::default()
        };
        assert_eq!(row_with(&obj, WIDE), row_with(&obj, columns));
    }

    fn node(spec: serde_json::Value, status: serde_json::Value) -> Object {
        Object::Node(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "n1"}, "spec": spec, "status": status,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn describe_node_has_a_network_section_and_wide_nodes_their_subnet() {
        let leased = node(
            serde_json::json!({"network": {
                "subnet": "10.244.3.0/24", "clusterCidr": "10.244.0.0/16",
                "serviceCidr": "10.96.0.0/16", "mode": "host-gw"}}),
            serde_json::json!({"addresses": ["192.0.2.2"],
                "network": {"ready": true, "message": "host-gw, subnet 10.244.3.0/24, 2 peers"}}),
        );
        let text = describe(&leased, &[], &[], &[]);
        let section = &text[text.find("Network:\n").expect("a Network section")..];
        for want in [
            "  Subnet:         10.244.3.0/24\n",
            "  Cluster CIDR:   10.244.0.0/16\n",
            "  Service CIDR:   10.96.0.0/16\n",
            "  Mode:           host-gw\n",
            "  Ready:          true\n",
            "  Message:        host-gw, subnet 10.244.3.0/24, 2 peers\n",
        ] {
            assert!(section.contains(want), "{want:?} missing in\n{text}");
        }
        assert_eq!(
            cell(&leased, WIDE, "SUBNET").as_deref(),
            Some("10.244.3.0/24")
        );
        assert_eq!(cell(&leased, WIDE, "ADDRESS").as_deref(), Some("192.0.2.2"));
        assert_eq!(cell(&leased, Columns::default(), "SUBNET"), None);

        let bare = node(
            serde_json::json!({}),
            serde_json::json!({"network": {"ready": false,
                "message": "host network: no CNI plugin bridge in /usr/lib/cni"}}),
        );
        let text = describe(&bare, &[], &[], &[]);
        for want in [
            "  Subnet:         <none> (no lease",
            "  Ready:          false\n",
            "  Message:        host network: no CNI plugin bridge in /usr/lib/cni\n",
        ] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
        assert_eq!(cell(&bare, WIDE, "SUBNET").as_deref(), Some("<none>"));
    }

    #[test]
    fn describe_replica_shows_its_ip_and_whether_it_is_on_the_host_network() {
        let own = replica(
            serde_json::json!({"phase": "Ready", "hostIp": "192.0.2.2", "ip": "10.244.1.5"}),
        );
        let text = describe(&Object::Replica(own), &[], &[], &[]);
        assert!(text.contains("IP:               10.244.1.5\n"), "{text}");
        assert!(
            text.contains("Network:          a network namespace of its own"),
            "{text}"
        );
        let host = replica(serde_json::json!({"phase": "Ready", "hostIp": "192.0.2.2"}));
        let text = describe(&Object::Replica(host), &[], &[], &[]);
        assert!(
            text.contains("IP:               192.0.2.2 (host)\n"),
            "{text}"
        );
        assert!(
            text.contains("Network:          the host network"),
            "{text}"
        );
    }

    #[test]
    fn a_running_replica_reads_running_until_ready() {
        let mut r: orch_core::model::object::Replica = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "default"},
            "spec": {"service": "web", "template": {"command": ["sleep"]}, "templateHash": "h"},
        }))
        .unwrap();
        let phase = |r: &orch_core::model::object::Replica| {
            row(&Object::Replica(r.clone()), false).1[3].clone()
        };
        r.status.phase = Phase::Running;
        r.status.reason = "NotReady".into();
        assert_eq!(phase(&r), "Running");
        r.status.phase = Phase::Failed;
        r.status.reason = "CrashLoopBackOff".into();
        assert_eq!(phase(&r), "CrashLoopBackOff");
        r.status.phase = Phase::Ready;
        r.status.reason.clear();
        assert_eq!(phase(&r), "Ready");
    }
}
