//! Validation with precise errors: every error names the field path, the bad value and what
//! is allowed. Name and label rules follow Kubernetes' apimachinery.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use crate::model::object::{
    Config, IntOrPercent, LabelSelector, LabelSelectorRequirement, Metadata, Object, Placement,
    ReplicaAffinity, Secret, SelectorOperator, Service, Template, TolerationOperator,
    MAX_TEMPLATE_SPAN, MIN_DEADLINE, MIN_PROBE_PERIOD, MIN_PROBE_TIMEOUT, MIN_RESTART_BACKOFF_MAX,
    NODE_TOPOLOGY_KEY,
};
use crate::model::object::{DependencyCondition, DependencyKind};
use crate::model::quantity::Span;
use crate::runtime::signal_number;

/// The most bytes of data one secret or config may hold.
pub const MAX_DATA_BYTES: usize = 1 << 20;

/// One invalid field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, e.g. `spec.template.ports[1].port`.
    pub path: String,
    /// The offending value as written (may be empty when a field is missing).
    pub value: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}: {}", self.path, self.message)
        } else {
            write!(
                f,
                "{}: invalid value {}: {}",
                self.path, self.value, self.message
            )
        }
    }
}

fn err(path: impl Into<String>, value: impl fmt::Debug, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.into(),
        value: format!("{value:?}"),
        message: message.into(),
    }
}

fn is_alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// Checks a DNS-1123 label: lower-case alphanumerics and `-`, starting and ending
/// alphanumeric, at most 63 characters.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!(
            "must be no more than 63 characters (it has {})",
            s.len()
        ));
    }
    let ok = s.chars().all(|c| is_alnum_lower(c) || c == '-')
        && s.starts_with(is_alnum_lower)
        && s.ends_with(is_alnum_lower);
    if ok {
        Ok(())
    } else if dns1123_subdomain(s).is_ok() {
        Err("must not contain dots".into())
    } else {
        Err("a DNS-1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc')".into())
    }
}

/// Checks a DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub(crate) fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 253 {
        return Err(format!(
            "must be no more than 253 characters (it has {})",
            s.len()
        ));
    }
    let ok = s.split('.').all(|p| {
        !p.is_empty()
            && p.chars().all(|c| is_alnum_lower(c) || c == '-')
            && p.starts_with(is_alnum_lower)
            && p.ends_with(is_alnum_lower)
    });
    if ok {
        Ok(())
    } else {
        Err("a DNS-1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')".into())
    }
}

fn qualified_name_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// Checks a label or annotation key: `[prefix/]name`, prefix a DNS-1123 subdomain,
/// name up to 63 of `[A-Za-z0-9-_.]` starting and ending alphanumeric.
pub fn label_key(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Err("prefix part must be non-empty".into());
        }
        if name.contains('/') {
            return Err("a qualified name must consist of at most one '/'".into());
        }
        dns1123_subdomain(p).map_err(|e| format!("prefix part {e}"))?;
    }
    if name.len() > 63 {
        return Err(format!(
            "name part must be no more than 63 characters (it has {})",
            name.len()
        ));
    }
    if !qualified_name_part(name) {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName', 'my.name', '123-abc'), with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')".into());
    }
    Ok(())
}

/// Checks a label value: empty, or up to 63 of `[A-Za-z0-9-_.]` starting and ending alphanumeric.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    if s.len() > 63 {
        return Err(format!(
            "must be no more than 63 characters (it has {})",
            s.len()
        ));
    }
    if !qualified_name_part(s) {
        return Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// Checks a port name: 1–15 of `[-a-z0-9]`, at least one letter, no `--`, no `-` at either end.
pub fn port_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 15 {
        return Err("must be 1 to 15 characters".into());
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err("must contain only lower case alphanumeric characters or '-'".into());
    }
    if !s.chars().any(|c| c.is_ascii_lowercase()) {
        return Err("must contain at least one letter".into());
    }
    if s.contains("--") || s.starts_with('-') || s.ends_with('-') {
        return Err("must not contain '--' or begin or end with '-'".into());
    }
    Ok(())
}

/// Checks an environment variable name: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
pub(crate) fn env_name(s: &str) -> Result<(), String> {
    let first_ok = s.starts_with(|c: char| c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_'));
    if first_ok
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        Ok(())
    } else {
        Err("a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit".into())
    }
}

/// Checks a secret or config key: `[-._a-zA-Z0-9]+`, not `.` or `..`.
pub(crate) fn data_key(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 || s == "." || s == ".." {
        return Err("must be 1 to 253 characters and not '.' or '..'".into());
    }
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        Ok(())
    } else {
        Err("a valid key must consist of alphanumeric characters, '-', '_' or '.'".into())
    }
}

/// Checks an image reference loosely (`[registry[:port]/]repo[:tag][@digest]`).
pub(crate) fn image_ref(s: &str) -> Result<(), String> {
    let bad = || {
        "an image reference looks like [registry[:port]/]name[:tag][@sha256:digest], in lower case, with no spaces (e.g. 'docker.io/library/busybox:1.36')".to_string()
    };
    if s.is_empty() || s.len() > 512 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (name, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let hex = d.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64
            || !hex
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        {
            return Err(bad());
        }
    }
    let path = match name.rsplit_once(':') {
        Some((p, tag)) if !tag.contains('/') => {
            if tag.is_empty()
                || tag.len() > 128
                || !tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            {
                return Err(bad());
            }
            p
        }
        _ => name,
    };
    let mut parts = path.split('/').collect::<Vec<_>>();
    if parts.len() > 1
        && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
    {
        parts.remove(0);
    }
    let comp_ok = |c: &str| {
        !c.is_empty()
            && c.chars().all(|ch| {
                ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
            })
            && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
    };
    if parts.is_empty() || !parts.iter().all(|c| comp_ok(c)) {
        return Err(bad());
    }
    Ok(())
}

fn check_metadata(md: &Metadata, namespaced: bool, out: &mut Vec<FieldError>) {
    if let Err(m) = dns1123_label(&md.name) {
        out.push(err("metadata.name", &md.name, m));
    }
    if namespaced {
        if let Err(m) = dns1123_label(&md.namespace) {
            out.push(err("metadata.namespace", &md.namespace, m));
        }
    }
    check_labels("metadata.labels", &md.labels, out);
    let mut size = 0;
    for (k, v) in &md.annotations {
        if let Err(m) = label_key(k) {
            out.push(err(format!("metadata.annotations[{k:?}]"), k, m));
        }
        size += k.len() + v.len();
    }
    if size > 256 * 1024 {
        out.push(FieldError {
            path: "metadata.annotations".into(),
            value: String::new(),
            message: format!("total size must be no more than 262144 bytes (it is {size})"),
        });
    }
}

fn check_labels(path: &str, labels: &BTreeMap<String, String>, out: &mut Vec<FieldError>) {
    for (k, v) in labels {
        if let Err(m) = label_key(k) {
            out.push(err(format!("{path}[{k:?}]"), k, m));
        }
        if let Err(m) = label_value(v) {
            out.push(err(format!("{path}[{k:?}]"), v, m));
        }
    }
}

fn check_probe(
    path: &str,
    name: &str,
    probe: &crate::model::object::Probe,
    t: &Template,
    out: &mut Vec<FieldError>,
) {
    use crate::model::object::ProbePort;
    let handlers = [
        probe.http_get.is_some(),
        probe.tcp_socket.is_some(),
        probe.exec.is_some(),
        probe.grpc.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if handlers != 1 {
        out.push(err(
            path.to_string(),
            format!("{handlers} checks"),
            "set exactly one of httpGet, tcpSocket, exec or grpc",
        ));
    }
    let port = probe
        .http_get
        .as_ref()
        .map(|h| (&h.port, "httpGet"))
        .or(probe.tcp_socket.as_ref().map(|t| (&t.port, "tcpSocket")))
        .or(probe.grpc.as_ref().map(|g| (&g.port, "grpc")));
    if let Some((port, kind)) = port {
        match port {
            ProbePort::Number(0) => out.push(err(
                format!("{path}.{kind}.port"),
                0,
                "must be a port number from 1 to 65535 or the name of a template port",
            )),
            ProbePort::Number(_) => {}
            ProbePort::Name(n) if !t.ports.iter().any(|p| p.name == *n) => {
                let names: Vec<&str> = t.ports.iter().map(|p| p.name.as_str()).collect();
                out.push(err(
                    format!("{path}.{kind}.port"),
                    n,
                    format!(
                        "no template port has this name (ports: {})",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                ));
            }
            ProbePort::Name(_) => {}
        }
    }
    if let Some(h) = &probe.http_get {
        if !h.path.starts_with('/') {
            out.push(err(
                format!("{path}.httpGet.path"),
                &h.path,
                "must start with /",
            ));
        }
    }
    if let Some(e) = &probe.exec {
        if e.command.is_empty() {
            out.push(err(
                format!("{path}.exec.command"),
                "[]",
                "must name a program to run",
            ));
        }
    }
    for (field, v) in [
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if v == Some(0) {
            out.push(err(format!("{path}.{field}"), 0, "must be at least 1"));
        }
    }
    if name != "readinessProbe" && probe.success_threshold.is_some_and(|v| v != 1) {
        out.push(err(
            format!("{path}.successThreshold"),
            probe.success_threshold.unwrap_or_default(),
            "must be 1 for liveness and startup probes",
        ));
    }
    for (field, v, min) in [
        ("initialDelay", probe.initial_delay, Duration::ZERO),
        ("period", probe.period, MIN_PROBE_PERIOD),
        ("timeout", probe.timeout, MIN_PROBE_TIMEOUT),
    ] {
        check_span(
            &format!("{path}.{field}"),
            v,
            min,
            MAX_TEMPLATE_SPAN,
            "",
            out,
        );
    }
}

/// Refuses a duration under `min` or over `max` (`reason` follows the bound, if any).
fn check_span(
    path: &str,
    v: Option<Span>,
    min: Duration,
    max: Duration,
    reason: &str,
    out: &mut Vec<FieldError>,
) {
    let Some(v) = v else { return };
    let bound = if v.0 < min {
        format!("must be at least {}", Span(min))
    } else if v.0 > max {
        format!("must be at most {}", Span(max))
    } else {
        return;
    };
    out.push(err(path, v.to_string(), format!("{bound}{reason}")));
}

fn check_template(t: &Template, out: &mut Vec<FieldError>) {
    let p = "spec.template";
    check_labels(&format!("{p}.labels"), &t.labels, out);
    match (&t.image, t.command.is_empty()) {
        (None, true) => out.push(FieldError {
            path: format!("{p}.command"),
            value: String::new(),
            message:
                "set either command (a program to run as a process) or image (a container image)"
                    .into(),
        }),
        (Some(img), _) => {
            if let Err(m) = image_ref(img) {
                out.push(err(format!("{p}.image"), img, m));
            }
        }
        (None, false) => {
            if t.image_pull_policy != crate::model::object::PullPolicy::default() {
                out.push(err(
                    format!("{p}.imagePullPolicy"),
                    t.image_pull_policy,
                    "applies to images only; this template runs a command",
                ));
            }
            if t.read_only_root_filesystem {
                out.push(err(
                    format!("{p}.readOnlyRootFilesystem"),
                    true,
                    "applies to images only; this template runs a command",
                ));
            }
        }
    }
    if let Some(first) = t.command.first() {
        if first.trim().is_empty() {
            out.push(err(
                format!("{p}.command[0]"),
                first,
                "the program must not be empty",
            ));
        }
    }
    for (i, a) in t.command.iter().chain(&t.args).enumerate() {
        if a.contains('\0') {
            out.push(err(
                format!(
                    "{p}.{}",
                    if i < t.command.len() {
                        format!("command[{i}]")
                    } else {
                        format!("args[{}]", i - t.command.len())
                    }
                ),
                a,
                "must not contain NUL bytes",
            ));
        }
    }
    check_env(p, &t.env, out);
    check_mounts(t, p, out);
    if let Some(wd) = &t.working_dir {
        if !wd.starts_with('/') {
            out.push(err(
                format!("{p}.workingDir"),
                wd,
                "must be an absolute path",
            ));
        }
    }
    let mut names = HashSet::new();
    let mut fixed = HashSet::new();
    let mut host_ports = HashSet::new();
    for (i, port) in t.ports.iter().enumerate() {
        if let Err(m) = port_name(&port.name) {
            out.push(err(format!("{p}.ports[{i}].name"), &port.name, m));
        }
        if !names.insert(port.name.as_str()) {
            out.push(err(
                format!("{p}.ports[{i}].name"),
                &port.name,
                "duplicate port name: each port needs its own name",
            ));
        }
        if let Some(n) = port.port {
            if n == 0 {
                out.push(err(
                    format!("{p}.ports[{i}].port"),
                    n,
                    "must be between 1 and 65535 inclusive, or omitted for a dynamic port",
                ));
            } else if !fixed.insert((port.protocol, n)) {
                out.push(err(
                    format!("{p}.ports[{i}].port"),
                    n,
                    "duplicate port: another port of this template already uses it",
                ));
            }
        }
        if let Some(h) = port.host_port {
            let path = format!("{p}.ports[{i}].hostPort");
            if h == 0 {
                out.push(err(path, h, "must be between 1 and 65535 inclusive"));
            } else if port.port.is_none() {
                out.push(err(
                    path,
                    h,
                    "needs a fixed port: set ports[].port to the port the workload listens on",
                ));
            } else if !host_ports.insert((port.protocol, h)) {
                out.push(err(
                    path,
                    h,
                    "duplicate host port: another port of this template already maps it",
                ));
            }
        }
    }
    for (name, probe) in [
        ("readinessProbe", &t.readiness_probe),
        ("livenessProbe", &t.liveness_probe),
        ("startupProbe", &t.startup_probe),
    ] {
        if let Some(probe) = probe {
            check_probe(&format!("{p}.{name}"), name, probe, t, out);
        }
    }
    if let Some(sig) = &t.stop_signal {
        if signal_number(sig).is_none() {
            out.push(err(format!("{p}.stopSignal"), sig, "must be a signal name such as SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1 or a number 1-64"));
        }
    }
    check_span(
        &format!("{p}.restartBackoffMax"),
        t.restart_backoff_max,
        MIN_RESTART_BACKOFF_MAX,
        MAX_TEMPLATE_SPAN,
        " (the longest wait between restarts of a crashing replica: 0s, then 1s doubling up to it)",
        out,
    );
    check_span(
        &format!("{p}.stopGracePeriod"),
        t.stop_grace_period,
        Duration::ZERO,
        MAX_TEMPLATE_SPAN,
        "",
        out,
    );
    check_agent_fields(t, p, out);
    if let Some(m) = t.resources.memory {
        if m.0 > 0 && m.0 < 4096 * 1024 {
            out.push(err(
                format!("{p}.resources.memory"),
                m.to_string(),
                "must be at least 4Mi (or omitted for no limit)",
            ));
        }
    }
}

fn check_percent(path: &str, v: &Option<IntOrPercent>, out: &mut Vec<FieldError>) {
    if let Some(IntOrPercent::Percent(s)) = v {
        let ok = s
            .strip_suffix('%')
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n <= 100);
        if !ok {
            out.push(err(
                path,
                s,
                "must be a whole number or a percentage from 0% to 100% (e.g. 1 or \"25%\")",
            ));
        }
    }
}

/// Checks one label requirement (`matchExpressions` item) at `path`.
fn check_requirement(path: &str, r: &LabelSelectorRequirement, out: &mut Vec<FieldError>) {
    if let Err(m) = label_key(&r.key) {
        out.push(err(format!("{path}.key"), &r.key, m));
    }
    let op = r.operator;
    match op {
        SelectorOperator::In | SelectorOperator::NotIn => {
            if r.values.is_empty() {
                out.push(FieldError {
                    path: format!("{path}.values"),
                    value: String::new(),
                    message: format!("must have at least one value when operator is {op:?}"),
                });
            }
            for (i, v) in r.values.iter().enumerate() {
                if let Err(m) = label_value(v) {
                    out.push(err(format!("{path}.values[{i}]"), v, m));
                }
            }
        }
        SelectorOperator::Exists | SelectorOperator::DoesNotExist => {
            if !r.values.is_empty() {
                out.push(err(
                    format!("{path}.values"),
                    &r.values,
                    format!("must be empty when operator is {op:?}"),
                ));
            }
        }
        SelectorOperator::Gt | SelectorOperator::Lt => {
            let ok = r.values.len() == 1 && r.values[0].parse::<i64>().is_ok();
            if !ok {
                out.push(err(
                    format!("{path}.values"),
                    &r.values,
                    format!("must be exactly one integer when operator is {op:?} (e.g. [\"4\"])"),
                ));
            }
        }
    }
}

fn check_topology_key(path: &str, key: &str, out: &mut Vec<FieldError>) {
    if let Err(m) = label_key(key) {
        out.push(err(
            path,
            key,
            format!(
                "{m}; use a node label such as zone, or {NODE_TOPOLOGY_KEY} for the node itself"
            ),
        ));
    }
}

fn check_selector(path: &str, sel: &LabelSelector, out: &mut Vec<FieldError>) {
    check_labels(&format!("{path}.matchLabels"), &sel.match_labels, out);
    for (i, r) in sel.match_expressions.iter().enumerate() {
        check_requirement(&format!("{path}.matchExpressions[{i}]"), r, out);
    }
}

fn check_affinity(path: &str, a: &ReplicaAffinity, out: &mut Vec<FieldError>) {
    for (i, t) in a.required.iter().enumerate() {
        let p = format!("{path}.required[{i}]");
        check_selector(&format!("{p}.labelSelector"), &t.label_selector, out);
        check_topology_key(&format!("{p}.topologyKey"), &t.topology_key, out);
    }
    for (i, t) in a.preferred.iter().enumerate() {
        let p = format!("{path}.preferred[{i}]");
        if !(1..=100).contains(&t.weight) {
            out.push(err(
                format!("{p}.weight"),
                t.weight,
                "must be between 1 and 100 inclusive",
            ));
        }
        check_selector(&format!("{p}.labelSelector"), &t.label_selector, out);
        check_topology_key(&format!("{p}.topologyKey"), &t.topology_key, out);
    }
}

fn check_placement(pl: &Placement, out: &mut Vec<FieldError>) {
    let p = "spec.placement";
    check_labels(&format!("{p}.nodeSelector"), &pl.node_selector, out);
    if pl.max_per_node == Some(0) {
        out.push(err(
            format!("{p}.maxPerNode"),
            0,
            "must be at least 1 (or omitted for no limit)",
        ));
    }
    for (i, r) in pl.node_affinity.iter().enumerate() {
        check_requirement(&format!("{p}.nodeAffinity[{i}]"), r, out);
    }
    for (i, t) in pl.tolerations.iter().enumerate() {
        let tp = format!("{p}.tolerations[{i}]");
        if !t.key.is_empty() {
            if let Err(m) = label_key(&t.key) {
                out.push(err(format!("{tp}.key"), &t.key, m));
            }
        }
        match t.operator {
            TolerationOperator::Exists if !t.value.is_empty() => out.push(err(
                format!("{tp}.value"),
                &t.value,
                "must be empty when operator is Exists",
            )),
            TolerationOperator::Equal if t.key.is_empty() => out.push(FieldError {
                path: format!("{tp}.key"),
                value: String::new(),
                message: "must be set when operator is Equal (use operator Exists with no key to tolerate every taint)".into(),
            }),
            _ => {}
        }
        if let Err(m) = label_value(&t.value) {
            out.push(err(format!("{tp}.value"), &t.value, m));
        }
    }
    check_affinity(&format!("{p}.affinity"), &pl.affinity, out);
    check_affinity(&format!("{p}.antiAffinity"), &pl.anti_affinity, out);
    let mut keys = HashSet::new();
    for (i, c) in pl.topology_spread_constraints.iter().enumerate() {
        let cp = format!("{p}.topologySpreadConstraints[{i}]");
        if c.max_skew == 0 {
            out.push(err(format!("{cp}.maxSkew"), 0, "must be at least 1"));
        }
        check_topology_key(&format!("{cp}.topologyKey"), &c.topology_key, out);
        if !keys.insert(c.topology_key.as_str()) {
            out.push(err(
                format!("{cp}.topologyKey"),
                &c.topology_key,
                "duplicate topology key: one constraint per key",
            ));
        }
    }
}

fn check_service(s: &Service, out: &mut Vec<FieldError>) {
    check_template(&s.spec.template, out);
    check_span(
        "spec.update.progressDeadline",
        s.spec.update.progress_deadline,
        MIN_DEADLINE,
        Duration::MAX,
        "",
        out,
    );
    check_placement(&s.spec.placement, out);
    check_percent("spec.update.maxSurge", &s.spec.update.max_surge, out);
    check_percent(
        "spec.update.maxUnavailable",
        &s.spec.update.max_unavailable,
        out,
    );
    check_publish(s, out);
    check_workload(s, out);
}

fn check_publish(s: &Service, out: &mut Vec<FieldError>) {
    let t = &s.spec.template;
    let mut seen = HashSet::new();
    for (i, p) in s.spec.publish.iter().enumerate() {
        let path = format!("spec.publish[{i}]");
        if p.port == 0 {
            out.push(err(
                format!("{path}.port"),
                p.port,
                "must be between 1 and 65535 inclusive",
            ));
        } else if !seen.insert(p.port) {
            out.push(err(
                format!("{path}.port"),
                p.port,
                "duplicate: this service already publishes that port",
            ));
        }
        match p.target(t) {
            None => out.push(err(
                format!("{path}.targetPort"),
                "",
                "the template has no ports: add one to spec.template.ports for connections to go to",
            )),
            Some(name) => match t.ports.iter().find(|tp| tp.name == name) {
                None => out.push(err(
                    format!("{path}.targetPort"),
                    name,
                    format!(
                        "no such template port; the template's ports are: {}",
                        t.ports
                            .iter()
                            .map(|tp| tp.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
                Some(tp) if tp.protocol != crate::model::object::Protocol::Tcp => out.push(err(
                    format!("{path}.targetPort"),
                    name,
                    "is a UDP port: the service proxy balances TCP connections only",
                )),
                Some(_) => {}
            },
        }
    }
}

/// Whether `path` is a clean absolute path: starts with `/`, no `..` or `.` components,
/// no empty components, no NUL.
pub(crate) fn mount_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must be an absolute path (start with /)".into());
    }
    if path == "/" {
        return Err("must not be / itself".into());
    }
    if path.contains('\0') {
        return Err("must not contain NUL bytes".into());
    }
    for c in path[1..].split('/') {
        match c {
            ".." => return Err("must not contain .. (it could reach outside its directory)".into()),
            "." | "" => {
                return Err(
                    "must be normalised: no empty or . components (no //, no trailing /)".into(),
                )
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_mounts(t: &Template, p: &str, out: &mut Vec<FieldError>) {
    let mut seen = HashSet::new();
    for (i, m) in t.mounts.iter().enumerate() {
        let path = format!("{p}.mounts[{i}]");
        if let Err(e) = mount_path(&m.path) {
            out.push(err(format!("{path}.path"), &m.path, e));
        } else if !seen.insert(m.path.as_str()) {
            out.push(err(
                format!("{path}.path"),
                &m.path,
                "duplicate: another mount of this template uses the same path",
            ));
        }
        match m.kind() {
            None => out.push(err(
                path.clone(),
                "",
                "needs exactly one of secret, config, volume, tmpfs or hostPath",
            )),
            Some("hostPath") => {
                if let Some(h) = &m.host_path {
                    if let Err(e) = mount_path(h) {
                        out.push(err(format!("{path}.hostPath"), h, e));
                    }
                }
            }
            Some(_) => {
                for (field, name) in [
                    ("secret", &m.secret),
                    ("config", &m.config),
                    ("volume", &m.volume),
                ] {
                    if let Some(n) = name {
                        if let Err(e) = dns1123_label(n) {
                            out.push(err(format!("{path}.{field}"), n, e));
                        }
                    }
                }
            }
        }
    }
}

/// Every Linux capability name (without `CAP_`), for `capabilities.add`/`drop`.
pub const CAPABILITY_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A capability name as the runtimes take it: upper case, without `CAP_` (`ALL` stays);
/// `None` when it names no capability.
pub fn capability_name(s: &str) -> Option<String> {
    let up = s.trim().to_ascii_uppercase();
    let bare = up.strip_prefix("CAP_").unwrap_or(&up);
    (bare == "ALL" || CAPABILITY_NAMES.contains(&bare)).then(|| bare.to_string())
}

/// A template's `user` split into user and group, each a number or a name; an error says
/// what is accepted.
pub fn parse_user(s: &str) -> Result<(&str, Option<&str>), String> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 32
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
    };
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    if part_ok(u) && g.is_none_or(part_ok) {
        Ok((u, g))
    } else {
        Err("must be UID, UID:GID, or a user name (USER or USER:GROUP) from the image's /etc/passwd".into())
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) && s.parse::<u32>().is_ok()
}

/// `valueFrom`: exactly one of a secret's or config's key (optional or not) and a field.
fn check_value_from(path: &str, f: &crate::model::object::ValueFrom, out: &mut Vec<FieldError>) {
    match (&f.secret, &f.config, &f.field) {
        (Some(n), None, None) | (None, Some(n), None) => {
            if let Err(m) = dns1123_label(n) {
                let which = if f.secret.is_some() {
                    "secret"
                } else {
                    "config"
                };
                out.push(err(format!("{path}.{which}"), n, m));
            }
            if let Err(m) = data_key(&f.key) {
                out.push(err(format!("{path}.key"), &f.key, m));
            }
        }
        (None, None, Some(field)) => {
            if let Err(m) = crate::model::field_ref::FieldRef::parse(field) {
                out.push(err(format!("{path}.field"), field, m));
            }
            if !f.key.is_empty() {
                out.push(err(
                    format!("{path}.key"),
                    &f.key,
                    "applies to secret and config, not field",
                ));
            }
            if f.optional {
                out.push(err(
                    format!("{path}.optional"),
                    true,
                    "applies to secret and config; a field always has a value",
                ));
            }
        }
        _ => out.push(err(
            path.to_string(),
            "",
            "needs exactly one of secret or config (with a key), or field",
        )),
    }
}

/// Environment variables (names, values, `valueFrom`) at `at` (`spec.template` or an init step).
fn check_env(at: &str, env: &[crate::model::object::EnvVar], out: &mut Vec<FieldError>) {
    for (i, e) in env.iter().enumerate() {
        if let Err(m) = env_name(&e.name) {
            out.push(err(format!("{at}.env[{i}].name"), &e.name, m));
        }
        if e.value.contains('\0') {
            out.push(err(
                format!("{at}.env[{i}].value"),
                &e.value,
                "must not contain NUL bytes",
            ));
        }
        if let Some(f) = &e.value_from {
            if !e.value.is_empty() {
                out.push(err(
                    format!("{at}.env[{i}].value"),
                    &e.value,
                    "give either value or valueFrom, not both",
                ));
            }
            check_value_from(&format!("{at}.env[{i}].valueFrom"), f, out);
        }
    }
}

/// The template fields the node agent fills in or hands to the runtime: `envFrom`, `user`,
/// `capabilities`, `hostname`, one-key mounts and init steps.
fn check_agent_fields(t: &Template, p: &str, out: &mut Vec<FieldError>) {
    let container = t.image.is_some();
    for (i, e) in t.env_from.iter().enumerate() {
        let path = format!("{p}.envFrom[{i}]");
        match (&e.secret, &e.config) {
            (Some(n), None) | (None, Some(n)) => {
                if let Err(m) = dns1123_label(n) {
                    let which = if e.secret.is_some() {
                        "secret"
                    } else {
                        "config"
                    };
                    out.push(err(format!("{path}.{which}"), n, m));
                }
            }
            _ => out.push(err(
                path.clone(),
                "",
                "needs exactly one of secret or config",
            )),
        }
        if !e.prefix.is_empty() {
            if let Err(m) = env_name(&e.prefix) {
                out.push(err(format!("{path}.prefix"), &e.prefix, m));
            }
        }
    }
    if let Some(u) = &t.user {
        match parse_user(u) {
            Err(m) => out.push(err(format!("{p}.user"), u, m)),
            Ok((user, group)) if !(container || is_number(user) && group.is_none_or(is_number)) => {
                out.push(err(
                    format!("{p}.user"),
                    u,
                    "a process runs as a numeric UID or UID:GID (names need an image's /etc/passwd)",
                ))
            }
            Ok(_) => {}
        }
    }
    let caps = &t.capabilities;
    if !container && (!caps.add.is_empty() || !caps.drop.is_empty()) {
        out.push(err(
            format!("{p}.capabilities"),
            "",
            "applies to containers only (an image); processes run with the node agent's own",
        ));
    }
    for (field, list) in [("add", &caps.add), ("drop", &caps.drop)] {
        for (i, c) in list.iter().enumerate() {
            if capability_name(c).is_none() {
                out.push(err(
                    format!("{p}.capabilities.{field}[{i}]"),
                    c,
                    "not a Linux capability: a name such as NET_ADMIN, NET_RAW, SYS_TIME (CAP_ prefix optional) or ALL",
                ));
            }
        }
    }
    if let Some(h) = &t.hostname {
        let ok = !h.is_empty()
            && h.len() <= 63
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
            && h.starts_with(|c: char| c.is_ascii_alphanumeric())
            && h.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !container {
            out.push(err(
                format!("{p}.hostname"),
                h,
                "applies to containers only (an image); processes see the node's hostname",
            ));
        } else if !ok {
            out.push(err(
                format!("{p}.hostname"),
                h,
                "must be 1 to 63 letters, digits, '-' and '.', starting and ending with a letter or digit",
            ));
        }
    }
    check_one_key_mounts(p, &t.mounts, out);
    let mut names = HashSet::new();
    for (i, s) in t.init.iter().enumerate() {
        let at = format!("{p}.init[{i}]");
        if let Err(m) = dns1123_label(&s.name) {
            out.push(err(format!("{at}.name"), &s.name, m));
        } else if !names.insert(s.name.as_str()) {
            out.push(err(
                format!("{at}.name"),
                &s.name,
                "duplicate: each init step needs its own name",
            ));
        }
        match (&s.image, container) {
            (Some(img), false) => out.push(err(
                format!("{at}.image"),
                img,
                "this template runs a command (a process): its init steps run commands too",
            )),
            (Some(img), true) => {
                if let Err(m) = image_ref(img) {
                    out.push(err(format!("{at}.image"), img, m));
                }
            }
            (None, false) if s.command.is_empty() => out.push(err(
                format!("{at}.command"),
                "",
                "a process step needs a command",
            )),
            _ => {}
        }
        for (j, a) in s.command.iter().chain(&s.args).enumerate() {
            if a.contains('\0') {
                out.push(err(
                    format!("{at}.command[{j}]"),
                    a,
                    "must not contain NUL bytes",
                ));
            }
        }
        if s.command.first().is_some_and(|c| c.trim().is_empty()) {
            out.push(err(
                format!("{at}.command[0]"),
                "",
                "the program must not be empty",
            ));
        }
        check_env(&at, &s.env, out);
        if let Some(wd) = &s.working_dir {
            if !wd.starts_with('/') {
                out.push(err(
                    format!("{at}.workingDir"),
                    wd,
                    "must be an absolute path",
                ));
            }
        }
        let step_mounts = Template {
            mounts: s.mounts.clone(),
            ..Template::default()
        };
        check_mounts(&step_mounts, &at, out);
        check_one_key_mounts(&at, &s.mounts, out);
        for (j, m) in s.mounts.iter().enumerate() {
            if t.mounts.iter().any(|tm| tm.path == m.path) {
                out.push(err(
                    format!("{at}.mounts[{j}].path"),
                    &m.path,
                    "the template already mounts something there (its mounts are the step's too)",
                ));
            }
        }
    }
}

/// `key` on mounts: with a secret or config only, and a valid key.
fn check_one_key_mounts(
    p: &str,
    mounts: &[crate::model::object::Mount],
    out: &mut Vec<FieldError>,
) {
    for (i, m) in mounts.iter().enumerate() {
        if let Some(k) = &m.key {
            let path = format!("{p}.mounts[{i}].key");
            if m.secret.is_none() && m.config.is_none() {
                out.push(err(path, k, "applies to secret and config mounts only"));
            } else if let Err(e) = data_key(k) {
                out.push(err(path, k, e));
            }
        }
    }
}

fn check_data(data: &BTreeMap<String, String>, out: &mut Vec<FieldError>) {
    let mut size = 0;
    for (k, v) in data {
        if let Err(m) = data_key(k) {
            out.push(err(format!("data[{k:?}]"), k, m));
        }
        if crate::model::object::is_redacted_placeholder(v) {
            out.push(err(
                format!("data[{k:?}]"),
                v,
                "is the placeholder `orchctl get` shows for a secret value; give the real value",
            ));
        }
        size += k.len() + v.len();
    }
    if size > MAX_DATA_BYTES {
        out.push(FieldError {
            path: "data".into(),
            value: String::new(),
            message: format!(
                "total size must be no more than {MAX_DATA_BYTES} bytes (it is {size})"
            ),
        });
    }
}

/// Validates an object a user wants to apply; returns every problem found.
pub fn validate(obj: &Object) -> Vec<FieldError> {
    let mut out = Vec::new();
    check_metadata(obj.metadata(), obj.kind().namespaced(), &mut out);
    match obj {
        Object::Service(s) => check_service(s, &mut out),
        Object::Secret(Secret { data, .. }) | Object::Config(Config { data, .. }) => {
            check_data(data, &mut out)
        }
        Object::Job(j) => {
            check_job_spec("spec", &j.spec, &mut out);
            check_dependencies(
                "spec.dependsOn",
                &j.metadata.name,
                DependencyKind::Job,
                &j.spec.depends_on,
                &mut out,
            );
        }
        Object::Route(r) => check_route(&r.spec, &mut out),
        Object::CronJob(c) => check_cron_job(&c.metadata, &c.spec, &mut out),
        Object::Replica(_) | Object::Node(_) | Object::Event(_) => {}
    }
    out
}

fn check_job_spec(at: &str, spec: &crate::model::object::JobSpec, out: &mut Vec<FieldError>) {
    let mut inner = Vec::new();
    check_template(&spec.template, &mut inner);
    // A job's replicas have random names: only the volume-only rule applies here.
    check_per_replica("spec.template", &spec.template, 0, &mut inner);
    check_placement(&spec.placement, &mut inner);
    check_span(
        "spec.activeDeadline",
        spec.active_deadline,
        MIN_DEADLINE,
        Duration::MAX,
        "",
        &mut inner,
    );
    if spec.template.restart_policy == crate::model::object::RestartPolicy::Always {
        inner.push(err(
            "spec.template.restartPolicy".to_string(),
            "Always",
            "a job runs replicas to completion: set restartPolicy to Never or OnFailure",
        ));
    }
    for (field, v) in [
        ("spec.completions", spec.completions),
        ("spec.parallelism", spec.parallelism),
    ] {
        if !(1..=10_000).contains(&v) {
            inner.push(err(field.to_string(), v, "must be from 1 to 10000"));
        }
    }
    // The checks above name fields from `spec.`; a job inside another object sits at `at`.
    for mut e in inner {
        if at != "spec" {
            if let Some(rest) = e.path.strip_prefix("spec") {
                e.path = format!("{at}{rest}");
            }
        }
        out.push(e);
    }
}

fn check_route(spec: &crate::model::object::RouteSpec, out: &mut Vec<FieldError>) {
    if spec.selector.match_labels.is_empty() && spec.selector.match_expressions.is_empty() {
        out.push(err(
            "spec.selector".to_string(),
            "",
            "a route must select replicas: give matchLabels or matchExpressions",
        ));
    }
    if spec.ports.is_empty() && !spec.headless {
        out.push(err(
            "spec.ports".to_string(),
            "",
            "a route with a virtual IP needs at least one port (or set headless: true)",
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        if p.port == 0 {
            out.push(err(
                format!("spec.ports[{i}].port"),
                0,
                "must be from 1 to 65535",
            ));
        }
        if spec.ports.len() > 1 && p.name.is_empty() {
            out.push(err(
                format!("spec.ports[{i}].name"),
                "",
                "a route with several ports must name each one",
            ));
        }
        if !p.name.is_empty() && !names.insert(p.name.as_str()) {
            out.push(err(
                format!("spec.ports[{i}].name"),
                &p.name,
                "is used twice",
            ));
        }
        if let Some(n) = p.node_port {
            if !spec.node_ports {
                out.push(err(
                    format!("spec.ports[{i}].nodePort"),
                    n,
                    "is only used with nodePorts: true",
                ));
            } else if !(30000..=32767).contains(&n) {
                out.push(err(
                    format!("spec.ports[{i}].nodePort"),
                    n,
                    "must be from 30000 to 32767",
                ));
            }
        }
    }
}

fn check_cron_job(
    md: &Metadata,
    spec: &crate::model::object::CronJobSpec,
    out: &mut Vec<FieldError>,
) {
    if let Err(e) = crate::model::cron::parse_schedule(&spec.schedule, None) {
        out.push(err("spec.schedule".to_string(), &spec.schedule, e));
    }
    if let Some(tz) = &spec.time_zone {
        if let Err(e) = crate::model::cron::parse_time_zone(Some(tz)) {
            out.push(err("spec.timeZone".to_string(), tz, e));
        }
    }
    // Its jobs are named NAME-<minutes since the epoch> (8 digits): Kubernetes' limit too.
    if md.name.len() > 52 {
        out.push(err(
            "metadata.name",
            &md.name,
            "a cron job's name must be at most 52 characters (its jobs add a dash and 8 digits)",
        ));
    }
    check_job_spec("spec.job", &spec.job, out);
    check_dependencies(
        "spec.job.dependsOn",
        "",
        DependencyKind::Job,
        &spec.job.depends_on,
        out,
    );
}

/// A service's mode, per-replica volumes and dependencies.
fn check_workload(s: &Service, out: &mut Vec<FieldError>) {
    let name = &s.metadata.name;
    let ordered = s.spec.mode == crate::model::object::ServiceMode::Ordered;
    // The longest replica name: NAME-ORDINAL, or NAME-xxxxx (cut to 63).
    let longest = if ordered {
        if s.spec.replicas > 10_000 {
            out.push(err(
                "spec.replicas",
                s.spec.replicas,
                "an ordered service runs at most 10000 replicas",
            ));
        }
        let digits = s.spec.replicas.saturating_sub(1).max(1).to_string().len();
        if name.len() + 1 + digits > 63 {
            out.push(err(
                "metadata.name",
                name,
                format!(
                    "an ordered service's replicas are named NAME-ORDINAL: with {} replicas the name must be at most {} characters",
                    s.spec.replicas,
                    62 - digits
                ),
            ));
        }
        name.len() + 1 + digits
    } else {
        (name.len() + 6).min(63)
    };
    check_per_replica("spec.template", &s.spec.template, longest, out);
    check_dependencies(
        "spec.dependsOn",
        name,
        DependencyKind::Service,
        &s.spec.depends_on,
        out,
    );
}

/// `perReplica` only with `volume`, and `VOLUME-REPLICA` a valid volume name.
fn check_per_replica(
    at: &str,
    t: &crate::model::object::Template,
    longest_replica: usize,
    out: &mut Vec<FieldError>,
) {
    for (i, m) in t.mounts.iter().enumerate() {
        if !m.per_replica {
            continue;
        }
        let path = format!("{at}.mounts[{i}].perReplica");
        match &m.volume {
            None => out.push(err(
                path,
                true,
                "perReplica is only for volume mounts (one volume VOLUME-REPLICA per replica)",
            )),
            Some(v) if v.len() + 1 + longest_replica > 63 => out.push(err(
                format!("{at}.mounts[{i}].volume"),
                v,
                format!(
                    "a per-replica volume is named VOLUME-REPLICA, at most 63 characters: shorten the volume name to at most {} characters",
                    62usize.saturating_sub(longest_replica)
                ),
            )),
            Some(_) => {}
        }
    }
}

/// `dependsOn`: names, no self-dependency, no duplicates, conditions that fit the kind.
fn check_dependencies(
    at: &str,
    own: &str,
    own_kind: DependencyKind,
    deps: &[crate::model::object::Dependency],
    out: &mut Vec<FieldError>,
) {
    let mut seen = HashSet::new();
    for (i, d) in deps.iter().enumerate() {
        let path = format!("{at}[{i}]");
        if let Err(e) = dns1123_label(&d.name) {
            out.push(err(format!("{path}.name"), &d.name, e));
        }
        if d.kind == own_kind && d.name == own {
            out.push(err(
                format!("{path}.name"),
                &d.name,
                "an object cannot depend on itself",
            ));
        }
        if !seen.insert((d.kind, d.name.as_str())) {
            out.push(err(
                format!("{path}.name"),
                &d.name,
                "duplicate: this dependency is listed twice",
            ));
        }
        match (d.kind, d.condition) {
            (DependencyKind::Service, DependencyCondition::Completed) => out.push(err(
                format!("{path}.condition"),
                "completed",
                "completed is for jobs (kind: Job); a service can be started or ready",
            )),
            (DependencyKind::Job, DependencyCondition::Ready) => out.push(err(
                format!("{path}.condition"),
                "ready",
                "ready is for services; a job can be started or completed",
            )),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kubernetes_rules() {
        for ok in ["a", "abc-123", "0", &"a".repeat(63)] {
            assert!(dns1123_label(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(64)] {
            assert!(dns1123_label(bad).is_err(), "{bad}");
        }
        assert_eq!(dns1123_label("a.b").unwrap_err(), "must not contain dots");
        for ok in ["app", "example.com/app", "a_b.C-1"] {
            assert!(label_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/b/c", "-a", "Example.com/a"] {
            assert!(label_key(bad).is_err(), "{bad}");
        }
        assert!(label_value("").is_ok());
        assert!(label_value("a b").is_err());
        assert!(port_name("http").is_ok());
        for bad in ["8080", "http--x", "-http", "abcdefghijklmnop", "HTTP"] {
            assert!(port_name(bad).is_err(), "{bad}");
        }
        for ok in [
            "busybox",
            "127.0.0.1:5000/test/busybox:latest",
            "docker.io/library/busybox:1.36",
            "localhost/x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(image_ref(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Busybox", "a b", "x:", "x@sha256:12"] {
            assert!(image_ref(bad).is_err(), "{bad}");
        }
    }
}
