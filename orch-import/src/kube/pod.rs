//! A pod template (`spec.template`) as an orch template and placement.

use std::collections::{BTreeMap, BTreeSet};

use orch_core::model::object::{
    AffinityTerm, Capabilities, EnvFrom, EnvVar, ExecProbe, GrpcProbe, HttpProbe, InitStep,
    LabelSelector, LabelSelectorRequirement, Mount, Placement, PortSpec, Probe, ProbePort,
    Protocol, PullPolicy, ReplicaAffinity, Resources, RestartPolicy, SelectorOperator, TaintEffect,
    TcpProbe, Template, Toleration, TolerationOperator, TopologySpreadConstraint, ValueFrom,
    WeightedAffinityTerm, WhenUnsatisfiable, MAX_TEMPLATE_SPAN, NODE_TOPOLOGY_KEY,
};
use orch_core::model::quantity::{Cpu, Memory, Span};
use orch_core::model::validate::port_name;
use serde_json::Value;

use super::fields::{shown, Ctx, Fields};

/// What a pod template becomes.
pub(crate) struct Pod {
    /// The template (labels = the pod's labels).
    pub template: Template,
    /// Where its replicas may go.
    pub placement: Placement,
}

/// Kubernetes' node-name topology key, orch's [`NODE_TOPOLOGY_KEY`].
const HOSTNAME_KEY: &str = "kubernetes.io/hostname";

/// Pod spec fields orch does not honour, and what it does instead.
const POD_IGNORED: &[(&str, &str)] = &[
    ("serviceAccountName", "ignored: service accounts have no effect in orch"),
    ("serviceAccount", "ignored: service accounts have no effect in orch"),
    ("automountServiceAccountToken", "ignored: orch mounts no service account token"),
    ("dnsPolicy", "ignored: replicas use the cluster DNS (names of the namespace first, then the node's resolvers)"),
    ("dnsConfig", "ignored: replicas use the cluster DNS server and search list"),
    ("hostAliases", "ignored: orch does not add /etc/hosts entries"),
    ("hostPID", "ignored: replicas have their own PID namespace"),
    ("hostIPC", "ignored: replicas have their own IPC namespace"),
    ("hostUsers", "ignored: orch does not use user namespaces"),
    ("shareProcessNamespace", "ignored: one container per replica"),
    ("priorityClassName", "ignored: orch has no priorities or preemption"),
    ("priority", "ignored: orch has no priorities or preemption"),
    ("preemptionPolicy", "ignored: orch has no priorities or preemption"),
    ("schedulerName", "ignored: orch's scheduler places every replica"),
    ("imagePullSecrets", "ignored: nodes pull with their own registry credentials"),
    ("enableServiceLinks", "ignored: orch sets no *_SERVICE_HOST variables; use DNS names"),
    ("runtimeClassName", "ignored: the node's container runtime runs every image"),
    ("overhead", "ignored: orch reserves the template's resources only"),
    ("readinessGates", "ignored: readiness is the readiness probe's alone"),
    ("os", "ignored: orch runs Linux containers"),
    ("setHostnameAsFQDN", "ignored: the hostname is the short name"),
    ("subdomain", "ignored: per-replica DNS names come from a StatefulSet's serviceName"),
    ("nodeName", "ignored: orch's scheduler places every replica (use nodeSelector)"),
    ("activeDeadlineSeconds", "ignored at the pod level: a Job's spec.activeDeadlineSeconds is honoured"),
    ("ephemeralContainers", "ignored: orch has no ephemeral containers"),
    ("resourceClaims", "ignored: orch has no dynamic resources"),
    ("resources", "ignored: pod-level resources; the container's resources are used"),
    ("schedulingGates", "ignored: replicas are scheduled at once"),
    ("hostnameOverride", "ignored: use spec.hostname"),
];

/// Container fields orch does not honour.
const CONTAINER_IGNORED: &[(&str, &str)] = &[
    ("lifecycle", "ignored: orch runs no postStart/preStop hooks (stop sends the stop signal, then SIGKILL after the grace period)"),
    ("terminationMessagePath", "ignored: orch keeps no termination message"),
    ("terminationMessagePolicy", "ignored: orch keeps no termination message"),
    ("stdin", "ignored: replicas get no standard input"),
    ("stdinOnce", "ignored: replicas get no standard input"),
    ("tty", "ignored: replicas get no terminal"),
    ("volumeDevices", "ignored: orch mounts no block devices"),
    ("resizePolicy", "ignored: changing resources replaces the replicas"),
    ("restartPolicy", "ignored: the pod's restartPolicy applies"),
];

/// Init container fields an orch init step has no place for.
const INIT_IGNORED: &[(&str, &str)] = &[
    ("ports", "ignored: an init step listens on nothing"),
    (
        "resources",
        "ignored: an init step runs within the replica's resources",
    ),
    ("livenessProbe", "ignored: init steps are not probed"),
    ("readinessProbe", "ignored: init steps are not probed"),
    ("startupProbe", "ignored: init steps are not probed"),
    (
        "securityContext",
        "ignored: an init step runs as the replica's user",
    ),
    (
        "imagePullPolicy",
        "ignored: an init step's image is pulled as the replica's",
    ),
    (
        "envFrom",
        "ignored: an init step gets no envFrom (give env entries)",
    ),
];

/// Security context fields orch does not honour.
const SECURITY_IGNORED: &[(&str, &str)] = &[
    (
        "runAsNonRoot",
        "ignored: orch does not check the user is not root (set runAsUser)",
    ),
    (
        "privileged",
        "ignored: orch runs no privileged containers (add capabilities instead)",
    ),
    (
        "allowPrivilegeEscalation",
        "ignored: orch does not set no_new_privs",
    ),
    ("seLinuxOptions", "ignored: orch sets no SELinux labels"),
    (
        "seccompProfile",
        "ignored: the runtime's default seccomp profile applies",
    ),
    (
        "appArmorProfile",
        "ignored: the runtime's default AppArmor profile applies",
    ),
    (
        "procMount",
        "ignored: /proc is masked as the runtime's default",
    ),
    ("windowsOptions", "ignored: orch runs Linux containers"),
    ("fsGroup", "ignored: volumes keep their owners"),
    ("fsGroupChangePolicy", "ignored: volumes keep their owners"),
    (
        "supplementalGroups",
        "ignored: the user's groups are the image's",
    ),
    (
        "supplementalGroupsPolicy",
        "ignored: the user's groups are the image's",
    ),
    ("sysctls", "ignored: orch sets no sysctls"),
    (
        "seLinuxChangePolicy",
        "ignored: orch sets no SELinux labels",
    ),
];

/// A volume of the pod, by what it is.
enum Volume {
    Tmpfs,
    Config {
        name: String,
        items: Vec<(String, String)>,
    },
    Secret {
        name: String,
        items: Vec<(String, String)>,
    },
    HostPath(String),
    Claim(String),
    Unsupported,
}

/// Converts the pod template at `path` (`spec.template`). `claims`: a StatefulSet's volume
/// claim templates (mounted per replica).
pub(crate) fn pod_template(cx: &mut Ctx, v: &Value, path: &str, claims: &BTreeSet<String>) -> Pod {
    let mut t = Fields::new(cx, v, path);
    let mut template = Template::default();
    let mut placement = Placement::default();
    if let Some(mut md) = t.obj(cx, "metadata") {
        template.labels = md.str_map(cx, "labels");
        md.ignore(
            cx,
            "annotations",
            "ignored: orch replicas carry no annotations (the object's own are kept)",
        );
        md.ignore(
            cx,
            "name",
            "ignored: replicas are named after their service",
        );
        md.ignore(
            cx,
            "generateName",
            "ignored: replicas are named after their service",
        );
        md.ignore(
            cx,
            "namespace",
            "ignored: replicas live in their service's namespace",
        );
        md.skip("creationTimestamp");
        md.finish(cx);
    }
    let Some(mut spec) = t.obj(cx, "spec") else {
        cx.error(
            &t.at("spec"),
            "",
            "a pod template needs a spec with one container",
        );
        t.finish(cx);
        return Pod {
            template,
            placement,
        };
    };
    let volumes = volumes(cx, &mut spec);
    let user = security_user(cx, &mut spec, "securityContext", &mut template);
    let containers = spec.list(cx, "containers");
    match containers.len() {
        0 => cx.error(
            &spec.at("containers"),
            "",
            "a pod needs exactly one container (orch runs one container per replica)",
        ),
        1 => {}
        n => cx.error(
            &spec.at("containers"),
            &format!("{n} containers"),
            "orch runs one container per replica: split the pod into one Deployment per container (they reach each other by their Services' names), or make helpers initContainers if they run to completion",
        ),
    }
    if let Some((cpath, c)) = containers.first() {
        container(cx, c, cpath, &volumes, claims, &mut template, user);
    }
    for (ipath, c) in spec.list(cx, "initContainers") {
        if let Some(step) = init_step(cx, c, &ipath, &volumes, claims) {
            template.init.push(step);
        }
    }
    placement.node_selector = spec.str_map(cx, "nodeSelector");
    if let Some(a) = spec.obj(cx, "affinity") {
        affinity(cx, a, &mut placement);
    }
    for (p, tol) in spec.list(cx, "tolerations") {
        if let Some(tol) = toleration(cx, tol, &p) {
            placement.tolerations.push(tol);
        }
    }
    for (p, c) in spec.list(cx, "topologySpreadConstraints") {
        if let Some(c) = spread(cx, c, &p, &template.labels) {
            placement.topology_spread_constraints.push(c);
        }
    }
    if let Some(secs) = spec.int(cx, "terminationGracePeriodSeconds", 0, i64::MAX) {
        let max = MAX_TEMPLATE_SPAN.as_secs() as i64;
        if secs > max {
            cx.warn(
                &spec.at("terminationGracePeriodSeconds"),
                format!("{secs}s is more than orch's longest grace period: {max}s is used"),
            );
        }
        template.stop_grace_period = Some(Span::secs(secs.min(max) as u64));
    }
    if let Some(rp) = spec.choice(
        cx,
        "restartPolicy",
        &[
            ("Always", RestartPolicy::Always),
            ("OnFailure", RestartPolicy::OnFailure),
            ("Never", RestartPolicy::Never),
        ],
    ) {
        template.restart_policy = rp;
    }
    if let Some(h) = spec.bool(cx, "hostNetwork") {
        template.host_network = h;
    }
    template.hostname = spec.str(cx, "hostname");
    spec.ignore_all(cx, POD_IGNORED);
    spec.finish(cx);
    t.finish(cx);
    Pod {
        template,
        placement,
    }
}

/// The pod's `volumes`, by name.
fn volumes(cx: &mut Ctx, spec: &mut Fields) -> BTreeMap<String, Volume> {
    let mut out = BTreeMap::new();
    for (p, v) in spec.list(cx, "volumes") {
        let mut f = Fields::new(cx, v, &p);
        let Some(name) = f.str(cx, "name") else {
            cx.error(&f.at("name"), "", "every volume needs a name");
            continue;
        };
        let vol = if let Some(mut e) = f.obj(cx, "emptyDir") {
            e.ignore(
                cx,
                "sizeLimit",
                "ignored: the tmpfs is limited by the replica's memory only",
            );
            e.skip("medium");
            e.finish(cx);
            Volume::Tmpfs
        } else if let Some(mut c) = f.obj(cx, "configMap") {
            let name = c.str(cx, "name").unwrap_or_default();
            let items = items(cx, &mut c);
            volume_common(cx, &mut c);
            c.finish(cx);
            Volume::Config { name, items }
        } else if let Some(mut s) = f.obj(cx, "secret") {
            let name = s.str(cx, "secretName").unwrap_or_default();
            let items = items(cx, &mut s);
            volume_common(cx, &mut s);
            s.finish(cx);
            Volume::Secret { name, items }
        } else if let Some(mut h) = f.obj(cx, "hostPath") {
            let path = h.str(cx, "path").unwrap_or_default();
            h.ignore(
                cx,
                "type",
                "ignored: orch does not check what the host path is (it must exist under a prefix the node allows)",
            );
            h.finish(cx);
            Volume::HostPath(path)
        } else if let Some(mut c) = f.obj(cx, "persistentVolumeClaim") {
            let claim = c.str(cx, "claimName").unwrap_or_default();
            c.ignore(
                cx,
                "readOnly",
                "ignored here: set readOnly on the volumeMount",
            );
            c.finish(cx);
            Volume::Claim(claim)
        } else {
            Volume::Unsupported
        };
        if matches!(vol, Volume::Unsupported) {
            // Every other key is a volume source orch does not have.
            for s in f.rest() {
                f.ignore(
                    cx,
                    &s,
                    "ignored: orch has no such volume (emptyDir, configMap, secret, hostPath and persistentVolumeClaim are supported); mounts of it are left out",
                );
            }
        }
        f.finish(cx);
        out.insert(name, vol);
    }
    out
}

/// A configMap or secret volume's `items` as `(key, path)`.
fn items(cx: &mut Ctx, f: &mut Fields) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (p, it) in f.list(cx, "items") {
        let mut i = Fields::new(cx, it, &p);
        let key = i.str(cx, "key").unwrap_or_default();
        let path = i.str(cx, "path").unwrap_or_else(|| key.clone());
        i.ignore(
            cx,
            "mode",
            "ignored: secrets' files are 0400, configs' 0444",
        );
        i.finish(cx);
        out.push((key, path));
    }
    out
}

fn volume_common(cx: &mut Ctx, f: &mut Fields) {
    f.ignore(
        cx,
        "defaultMode",
        "ignored: secrets' files are 0400, configs' 0444",
    );
    f.ignore(
        cx,
        "optional",
        "ignored: a missing secret or config keeps the replica from starting",
    );
}

/// The user from a security context (`runAsUser`/`runAsGroup`) at `key` of `f`, and its
/// other fields into `t`.
fn security_user(
    cx: &mut Ctx,
    f: &mut Fields,
    key: &str,
    t: &mut Template,
) -> (Option<i64>, Option<i64>) {
    let Some(mut s) = f.obj(cx, key) else {
        return (None, None);
    };
    let uid = s.int(cx, "runAsUser", 0, i64::from(u32::MAX));
    let gid = s.int(cx, "runAsGroup", 0, i64::from(u32::MAX));
    if let Some(ro) = s.bool(cx, "readOnlyRootFilesystem") {
        t.read_only_root_filesystem = ro;
    }
    if let Some(mut c) = s.obj(cx, "capabilities") {
        t.capabilities = Capabilities {
            add: c.str_list(cx, "add"),
            drop: c.str_list(cx, "drop"),
        };
        c.finish(cx);
    }
    s.ignore_all(cx, SECURITY_IGNORED);
    s.finish(cx);
    (uid, gid)
}

/// `UID` or `UID:GID`, the container's fields winning over the pod's.
fn user_string(
    cx: &mut Ctx,
    path: &str,
    pod: (Option<i64>, Option<i64>),
    own: (Option<i64>, Option<i64>),
) -> Option<String> {
    let uid = own.0.or(pod.0);
    let gid = own.1.or(pod.1);
    match (uid, gid) {
        (Some(u), Some(g)) => Some(format!("{u}:{g}")),
        (Some(u), None) => Some(u.to_string()),
        (None, Some(_)) => {
            cx.warn(
                &format!("{path}.runAsGroup"),
                "ignored without runAsUser: orch sets the user as UID:GID (the image's user keeps its group)",
            );
            None
        }
        (None, None) => None,
    }
}

/// The main container into `t`.
fn container(
    cx: &mut Ctx,
    v: &Value,
    path: &str,
    volumes: &BTreeMap<String, Volume>,
    claims: &BTreeSet<String>,
    t: &mut Template,
    pod_user: (Option<i64>, Option<i64>),
) {
    let mut c = Fields::new(cx, v, path);
    c.skip("name");
    t.image = c.str(cx, "image");
    if t.image.is_none() {
        cx.error(&c.at("image"), "", "a container needs an image");
    }
    t.command = c.str_list(cx, "command");
    t.args = c.str_list(cx, "args");
    t.working_dir = c.str(cx, "workingDir");
    t.env = env(cx, &mut c);
    for (p, e) in c.list(cx, "envFrom") {
        if let Some(e) = env_from(cx, e, &p) {
            t.env_from.push(e);
        }
    }
    for (p, port) in c.list(cx, "ports") {
        if let Some(port) = container_port(cx, port, &p) {
            t.ports.push(port);
        }
    }
    if let Some(r) = c.obj(cx, "resources") {
        t.resources = resources(cx, r);
    }
    for (key, slot) in [
        ("livenessProbe", &mut t.liveness_probe),
        ("readinessProbe", &mut t.readiness_probe),
        ("startupProbe", &mut t.startup_probe),
    ] {
        if let Some(p) = c.obj(cx, key) {
            *slot = probe(cx, p);
        }
    }
    let own = security_user(cx, &mut c, "securityContext", t);
    t.user = user_string(cx, &c.at("securityContext"), pod_user, own);
    if let Some(p) = c.choice(
        cx,
        "imagePullPolicy",
        &[
            ("Always", PullPolicy::Always),
            ("IfNotPresent", PullPolicy::IfNotPresent),
            ("Never", PullPolicy::Never),
        ],
    ) {
        t.image_pull_policy = p;
    }
    t.mounts = mounts(cx, &mut c, volumes, claims);
    c.ignore_all(cx, CONTAINER_IGNORED);
    c.finish(cx);
}

/// An init container as an init step.
fn init_step(
    cx: &mut Ctx,
    v: &Value,
    path: &str,
    volumes: &BTreeMap<String, Volume>,
    claims: &BTreeSet<String>,
) -> Option<InitStep> {
    let mut c = Fields::new(cx, v, path);
    if c.has("restartPolicy") {
        cx.error(
            &c.at("restartPolicy"),
            "",
            "a sidecar (an init container with restartPolicy: Always) is a second container; orch runs one container per replica",
        );
        c.skip("restartPolicy");
    }
    let step = InitStep {
        name: c.str(cx, "name").unwrap_or_default(),
        image: c.str(cx, "image"),
        command: c.str_list(cx, "command"),
        args: c.str_list(cx, "args"),
        env: env(cx, &mut c),
        working_dir: c.str(cx, "workingDir"),
        mounts: mounts(cx, &mut c, volumes, claims),
    };
    c.ignore_all(cx, INIT_IGNORED);
    c.ignore_all(cx, CONTAINER_IGNORED);
    c.finish(cx);
    Some(step)
}

/// A container's `env`.
fn env(cx: &mut Ctx, c: &mut Fields) -> Vec<EnvVar> {
    let mut out = Vec::new();
    for (p, e) in c.list(cx, "env") {
        let mut f = Fields::new(cx, e, &p);
        let name = f.str(cx, "name").unwrap_or_default();
        let value = f.str(cx, "value").unwrap_or_default();
        let mut var = EnvVar {
            name,
            value,
            value_from: None,
        };
        let mut keep = true;
        if let Some(mut vf) = f.obj(cx, "valueFrom") {
            let mut from = ValueFrom {
                secret: None,
                config: None,
                key: String::new(),
                field: None,
                optional: false,
            };
            if let Some(mut r) = vf.obj(cx, "secretKeyRef") {
                from.secret = Some(r.str(cx, "name").unwrap_or_default());
                from.key = r.str(cx, "key").unwrap_or_default();
                from.optional = r.bool(cx, "optional").unwrap_or(false);
                r.finish(cx);
            } else if let Some(mut r) = vf.obj(cx, "configMapKeyRef") {
                from.config = Some(r.str(cx, "name").unwrap_or_default());
                from.key = r.str(cx, "key").unwrap_or_default();
                from.optional = r.bool(cx, "optional").unwrap_or(false);
                r.finish(cx);
            } else if let Some(mut r) = vf.obj(cx, "fieldRef") {
                let fp = r.str(cx, "fieldPath").unwrap_or_default();
                r.skip("apiVersion");
                if field_supported(&fp) {
                    from.field = Some(fp);
                } else {
                    cx.warn(
                        &r.at("fieldPath"),
                        format!("{fp:?} is not a field orch fills in (metadata.name, metadata.namespace, metadata.uid, metadata.labels['KEY'], metadata.annotations['KEY'], spec.nodeName, status.hostIP, status.podIP): the variable is left out"),
                    );
                    keep = false;
                }
                r.finish(cx);
            } else if vf.has("resourceFieldRef") {
                vf.skip("resourceFieldRef");
                cx.warn(
                    &vf.at("resourceFieldRef"),
                    "ignored: orch does not expose resources as variables; the variable is left out",
                );
                keep = false;
            } else {
                cx.error(
                    vf.path(),
                    "",
                    "needs secretKeyRef, configMapKeyRef or fieldRef",
                );
            }
            vf.finish(cx);
            var.value_from = Some(from);
        }
        f.finish(cx);
        if keep {
            out.push(var);
        }
    }
    out
}

/// Whether the agent fills in a `fieldRef` of this path.
fn field_supported(fp: &str) -> bool {
    matches!(
        fp,
        "metadata.name"
            | "metadata.namespace"
            | "metadata.uid"
            | "spec.nodeName"
            | "status.hostIP"
            | "status.podIP"
    ) || ((fp.starts_with("metadata.labels['") || fp.starts_with("metadata.annotations['"))
        && fp.ends_with("']"))
}

fn env_from(cx: &mut Ctx, v: &Value, path: &str) -> Option<EnvFrom> {
    let mut f = Fields::new(cx, v, path);
    let mut out = EnvFrom {
        secret: None,
        config: None,
        prefix: f.str(cx, "prefix").unwrap_or_default(),
        optional: false,
    };
    if let Some(mut r) = f.obj(cx, "configMapRef") {
        out.config = Some(r.str(cx, "name").unwrap_or_default());
        out.optional = r.bool(cx, "optional").unwrap_or(false);
        r.finish(cx);
    } else if let Some(mut r) = f.obj(cx, "secretRef") {
        out.secret = Some(r.str(cx, "name").unwrap_or_default());
        out.optional = r.bool(cx, "optional").unwrap_or(false);
        r.finish(cx);
    } else {
        cx.error(path, "", "needs configMapRef or secretRef");
    }
    f.finish(cx);
    (out.secret.is_some() || out.config.is_some()).then_some(out)
}

/// A port's `protocol` (default TCP).
pub(crate) fn protocol(cx: &mut Ctx, f: &mut Fields) -> Protocol {
    f.choice(
        cx,
        "protocol",
        &[("TCP", Protocol::Tcp), ("UDP", Protocol::Udp)],
    )
    .unwrap_or_default()
}

fn container_port(cx: &mut Ctx, v: &Value, path: &str) -> Option<PortSpec> {
    let mut f = Fields::new(cx, v, path);
    let port = f.int(cx, "containerPort", 1, 65535);
    if port.is_none() && !f.has("containerPort") {
        cx.error(
            &f.at("containerPort"),
            "",
            "every port needs a containerPort (1 to 65535)",
        );
    }
    let proto = protocol(cx, &mut f);
    let name = match f.str(cx, "name") {
        Some(n) => {
            if let Err(m) = port_name(&n) {
                cx.error(&f.at("name"), &format!("{n:?}"), m);
            }
            n
        }
        None => format!(
            "{}-{}",
            if proto == Protocol::Udp { "udp" } else { "tcp" },
            port.unwrap_or(0)
        ),
    };
    let host_port = f.int(cx, "hostPort", 1, 65535).map(|h| h as u16);
    f.ignore(
        cx,
        "hostIP",
        "ignored: a host port listens on every address of the node",
    );
    f.finish(cx);
    Some(PortSpec {
        name,
        port: Some(port? as u16),
        host_port,
        protocol: proto,
    })
}

/// A quantity written as a string or a number.
fn quantity(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn resources(cx: &mut Ctx, mut r: Fields) -> Resources {
    let mut sets: [(Option<Cpu>, Option<Memory>); 2] = [(None, None), (None, None)];
    for (i, key) in ["requests", "limits"].into_iter().enumerate() {
        let Some(mut m) = r.obj(cx, key) else {
            continue;
        };
        if let Some(v) = m.take("cpu") {
            match quantity(v).map(|s| Cpu::parse(&s)) {
                Some(Ok(c)) => sets[i].0 = Some(c),
                Some(Err(e)) => cx.error(&m.at("cpu"), &shown(v), e),
                None => cx.error(&m.at("cpu"), &shown(v), "must be a quantity such as 500m"),
            }
        }
        if let Some(v) = m.take("memory") {
            match quantity(v).map(|s| Memory::parse(&s)) {
                Some(Ok(c)) => sets[i].1 = Some(c),
                Some(Err(e)) => cx.error(&m.at("memory"), &shown(v), e),
                None => cx.error(
                    &m.at("memory"),
                    &shown(v),
                    "must be a quantity such as 128Mi",
                ),
            }
        }
        for k in m.rest() {
            m.ignore(
                cx,
                &k,
                "ignored: orch reserves and limits cpu and memory only",
            );
        }
        m.finish(cx);
    }
    r.ignore(cx, "claims", "ignored: orch has no dynamic resources");
    let path = r.path().to_string();
    r.finish(cx);
    let [(rc, rm), (lc, lm)] = sets;
    if let (Some(a), Some(b)) = (rc, lc) {
        if a != b {
            cx.warn(
                &format!("{path}.requests.cpu"),
                format!("orch reserves and limits the same cpu: the limit {b} is used for both (the request {a} is not)"),
            );
        }
    }
    if let (Some(a), Some(b)) = (rm, lm) {
        if a != b {
            cx.warn(
                &format!("{path}.requests.memory"),
                format!("orch reserves and limits the same memory: the limit {b} is used for both (the request {a} is not)"),
            );
        }
    }
    Resources {
        cpu: lc.or(rc),
        memory: lm.or(rm),
    }
}

/// A port given as a number or as a container port's name (a probe's `port`, a Service's
/// `targetPort`); `required`: missing is an error.
pub(crate) fn port_ref(
    cx: &mut Ctx,
    f: &mut Fields,
    key: &str,
    required: bool,
) -> Option<ProbePort> {
    let bad = "must be a port number from 1 to 65535 or a container port's name";
    match f.take(key) {
        None => {
            if required {
                cx.error(&f.at(key), "", format!("needs a port: {bad}"));
            }
            None
        }
        Some(Value::String(s)) => match s.parse::<u16>() {
            Ok(n) if n > 0 => Some(ProbePort::Number(n)),
            _ => {
                if let Err(m) = port_name(s) {
                    cx.error(&f.at(key), &format!("{s:?}"), format!("{bad} ({m})"));
                }
                Some(ProbePort::Name(s.clone()))
            }
        },
        Some(v) => match v.as_u64() {
            Some(n @ 1..=65535) => Some(ProbePort::Number(n as u16)),
            _ => {
                cx.error(&f.at(key), &shown(v), bad);
                None
            }
        },
    }
}

fn probe(cx: &mut Ctx, mut p: Fields) -> Option<Probe> {
    let mut out = Probe::default();
    if let Some(mut h) = p.obj(cx, "httpGet") {
        let path = h.str(cx, "path").unwrap_or_else(|| "/".into());
        let port = port_ref(cx, &mut h, "port", true);
        h.ignore(
            cx,
            "host",
            "ignored: the probe connects to the replica's own address",
        );
        if let Some(s) = h.str(cx, "scheme") {
            if s != "HTTP" {
                cx.warn(&h.at("scheme"), format!("{s}: orch probes with plain HTTP"));
            }
        }
        h.ignore(
            cx,
            "httpHeaders",
            "ignored: orch's HTTP probe sends no extra headers",
        );
        h.finish(cx);
        out.http_get = port.map(|port| HttpProbe { path, port });
    }
    if let Some(mut t) = p.obj(cx, "tcpSocket") {
        let port = port_ref(cx, &mut t, "port", true);
        t.ignore(
            cx,
            "host",
            "ignored: the probe connects to the replica's own address",
        );
        t.finish(cx);
        out.tcp_socket = port.map(|port| TcpProbe { port });
    }
    if let Some(mut e) = p.obj(cx, "exec") {
        out.exec = Some(ExecProbe {
            command: e.str_list(cx, "command"),
        });
        e.finish(cx);
    }
    if let Some(mut g) = p.obj(cx, "grpc") {
        let port = g.int(cx, "port", 1, 65535);
        if port.is_none() && !g.has("port") {
            cx.error(&g.at("port"), "", "needs a port number");
        }
        let service = g.str(cx, "service");
        g.finish(cx);
        out.grpc = port.map(|n| GrpcProbe {
            port: ProbePort::Number(n as u16),
            service,
        });
    }
    let max = MAX_TEMPLATE_SPAN.as_secs() as i64;
    for (key, slot) in [
        ("initialDelaySeconds", &mut out.initial_delay),
        ("periodSeconds", &mut out.period),
        ("timeoutSeconds", &mut out.timeout),
    ] {
        if let Some(s) = p.int(cx, key, 0, max) {
            *slot = Some(Span::secs(s as u64));
        }
    }
    out.success_threshold = p
        .int(cx, "successThreshold", 1, i64::from(u32::MAX))
        .map(|n| n as u32);
    out.failure_threshold = p
        .int(cx, "failureThreshold", 1, i64::from(u32::MAX))
        .map(|n| n as u32);
    p.ignore(
        cx,
        "terminationGracePeriodSeconds",
        "ignored: a replica failing its probe stops with the template's grace period",
    );
    p.finish(cx);
    Some(out)
}

/// A container's `volumeMounts` as mounts.
fn mounts(
    cx: &mut Ctx,
    c: &mut Fields,
    volumes: &BTreeMap<String, Volume>,
    claims: &BTreeSet<String>,
) -> Vec<Mount> {
    let mut out = Vec::new();
    for (p, m) in c.list(cx, "volumeMounts") {
        let mut f = Fields::new(cx, m, &p);
        let name = f.str(cx, "name").unwrap_or_default();
        let path = f.str(cx, "mountPath").unwrap_or_default();
        let read_only = f.bool(cx, "readOnly").unwrap_or(false);
        let sub = f.str(cx, "subPath");
        f.ignore(cx, "subPathExpr", "ignored: the whole volume is mounted");
        f.ignore(cx, "mountPropagation", "ignored: mounts are private");
        f.ignore(
            cx,
            "recursiveReadOnly",
            "ignored: readOnly applies to the mount itself",
        );
        let mut mount = Mount {
            path: path.clone(),
            read_only,
            ..Mount::default()
        };
        let one_key = |cx: &mut Ctx, items: &[(String, String)], mount: &mut Mount| {
            if let Some(s) = &sub {
                let key = items
                    .iter()
                    .find(|(_, ip)| ip == s)
                    .map(|(k, _)| k.clone())
                    .unwrap_or_else(|| s.clone());
                mount.key = Some(key);
            } else if let [(key, ipath)] = items {
                mount.key = Some(key.clone());
                mount.path = format!("{}/{}", path.trim_end_matches('/'), ipath);
            } else if items.len() > 1 {
                cx.warn(
                    &format!("{p}.name"),
                    "the volume lists several items: every key is mounted as a file in the directory (orch mounts one key or all)",
                );
            }
        };
        let keep = match volumes.get(&name) {
            Some(Volume::Tmpfs) => {
                mount.tmpfs = true;
                true
            }
            Some(Volume::Config { name, items }) => {
                mount.config = Some(name.clone());
                one_key(cx, items, &mut mount);
                true
            }
            Some(Volume::Secret { name, items }) => {
                mount.secret = Some(name.clone());
                one_key(cx, items, &mut mount);
                true
            }
            Some(Volume::HostPath(h)) => {
                mount.host_path = Some(match &sub {
                    Some(s) => format!("{}/{s}", h.trim_end_matches('/')),
                    None => h.clone(),
                });
                true
            }
            Some(Volume::Claim(claim)) => {
                mount.volume = Some(claim.clone());
                true
            }
            Some(Volume::Unsupported) => false,
            None if claims.contains(&name) => {
                mount.volume = Some(name.clone());
                mount.per_replica = true;
                true
            }
            None => {
                cx.error(
                    &f.at("name"),
                    &format!("{name:?}"),
                    "no volume of the pod (spec.volumes) or claim template has this name",
                );
                false
            }
        };
        let sub_used = matches!(
            volumes.get(&name),
            Some(Volume::Config { .. } | Volume::Secret { .. } | Volume::HostPath(_))
        );
        if sub.is_some() && !sub_used && keep {
            cx.warn(
                &f.at("subPath"),
                "ignored: orch mounts the whole volume (subPath works for configMap, secret and hostPath volumes)",
            );
        }
        f.finish(cx);
        if keep {
            out.push(mount);
        }
    }
    out
}

/// A Kubernetes label selector.
pub(crate) fn label_selector(cx: &mut Ctx, mut f: Fields) -> LabelSelector {
    let mut out = LabelSelector {
        match_labels: f.str_map(cx, "matchLabels"),
        match_expressions: Vec::new(),
    };
    for (p, e) in f.list(cx, "matchExpressions") {
        if let Some(r) = requirement(cx, e, &p) {
            out.match_expressions.push(r);
        }
    }
    f.finish(cx);
    out
}

fn requirement(cx: &mut Ctx, v: &Value, path: &str) -> Option<LabelSelectorRequirement> {
    let mut f = Fields::new(cx, v, path);
    let key = f.str(cx, "key").unwrap_or_default();
    let op = f.str(cx, "operator").unwrap_or_default();
    let operator = match op.as_str() {
        "In" => SelectorOperator::In,
        "NotIn" => SelectorOperator::NotIn,
        "Exists" => SelectorOperator::Exists,
        "DoesNotExist" => SelectorOperator::DoesNotExist,
        "Gt" => SelectorOperator::Gt,
        "Lt" => SelectorOperator::Lt,
        _ => {
            cx.error(
                &f.at("operator"),
                &format!("{op:?}"),
                "must be In, NotIn, Exists, DoesNotExist, Gt or Lt",
            );
            SelectorOperator::Exists
        }
    };
    let values = f.str_list(cx, "values");
    f.finish(cx);
    Some(LabelSelectorRequirement {
        key,
        operator,
        values,
    })
}

fn topology_key(k: String) -> String {
    if k == HOSTNAME_KEY {
        NODE_TOPOLOGY_KEY.into()
    } else {
        k
    }
}

fn affinity(cx: &mut Ctx, mut a: Fields, placement: &mut Placement) {
    if let Some(mut n) = a.obj(cx, "nodeAffinity") {
        if let Some(mut r) = n.obj(cx, "requiredDuringSchedulingIgnoredDuringExecution") {
            let terms = r.list(cx, "nodeSelectorTerms");
            for (i, (p, term)) in terms.iter().enumerate() {
                let mut t = Fields::new(cx, term, p);
                if i > 0 {
                    // Read it for errors, but orch ANDs one list of requirements.
                    t.skip("matchExpressions");
                    t.skip("matchFields");
                    cx.warn(
                        p,
                        "ignored: orch's node affinity is one list of requirements that must all hold; only nodeSelectorTerms[0] is used (Kubernetes ORs the terms)",
                    );
                } else {
                    for (ep, e) in t.list(cx, "matchExpressions") {
                        if let Some(mut req) = requirement(cx, e, &ep) {
                            req.key = topology_key(req.key);
                            placement.node_affinity.push(req);
                        }
                    }
                    t.ignore(cx, "matchFields", "ignored: orch matches node labels only");
                }
                t.finish(cx);
            }
            r.finish(cx);
        }
        n.ignore(
            cx,
            "preferredDuringSchedulingIgnoredDuringExecution",
            "ignored: orch has no preferred node affinity (only required terms are honoured)",
        );
        n.finish(cx);
    }
    for (key, slot) in [
        ("podAffinity", &mut placement.affinity),
        ("podAntiAffinity", &mut placement.anti_affinity),
    ] {
        if let Some(f) = a.obj(cx, key) {
            *slot = replica_affinity(cx, f);
        }
    }
    a.finish(cx);
}

/// A pod affinity term's selector and topology key.
fn affinity_term(cx: &mut Ctx, v: &Value, path: &str) -> (LabelSelector, String) {
    let mut f = Fields::new(cx, v, path);
    let sel = f
        .obj(cx, "labelSelector")
        .map(|s| label_selector(cx, s))
        .unwrap_or_default();
    let key = topology_key(f.str(cx, "topologyKey").unwrap_or_default());
    f.ignore_all(
        cx,
        &[
            (
                "namespaces",
                "ignored: orch matches replicas in the same namespace only",
            ),
            (
                "namespaceSelector",
                "ignored: orch matches replicas in the same namespace only",
            ),
            ("matchLabelKeys", "ignored: only labelSelector is matched"),
            (
                "mismatchLabelKeys",
                "ignored: only labelSelector is matched",
            ),
        ],
    );
    f.finish(cx);
    (sel, key)
}

fn replica_affinity(cx: &mut Ctx, mut f: Fields) -> ReplicaAffinity {
    let mut out = ReplicaAffinity::default();
    for (p, t) in f.list(cx, "requiredDuringSchedulingIgnoredDuringExecution") {
        let (label_selector, topology_key) = affinity_term(cx, t, &p);
        out.required.push(AffinityTerm {
            label_selector,
            topology_key,
        });
    }
    for (p, w) in f.list(cx, "preferredDuringSchedulingIgnoredDuringExecution") {
        let mut wf = Fields::new(cx, w, &p);
        let weight = wf.int(cx, "weight", 1, 100).unwrap_or(1) as u32;
        let term_path = wf.at("podAffinityTerm");
        if let Some(term) = wf.take("podAffinityTerm") {
            let (label_selector, topology_key) = affinity_term(cx, term, &term_path);
            out.preferred.push(WeightedAffinityTerm {
                weight,
                label_selector,
                topology_key,
            });
        }
        wf.finish(cx);
    }
    f.finish(cx);
    out
}

fn toleration(cx: &mut Ctx, v: &Value, path: &str) -> Option<Toleration> {
    let mut f = Fields::new(cx, v, path);
    let mut out = Toleration {
        key: f.str(cx, "key").unwrap_or_default(),
        value: f.str(cx, "value").unwrap_or_default(),
        ..Toleration::default()
    };
    match f.str(cx, "operator").as_deref() {
        None | Some("Equal") => out.operator = TolerationOperator::Equal,
        Some("Exists") => out.operator = TolerationOperator::Exists,
        Some(o) => cx.error(
            &f.at("operator"),
            &format!("{o:?}"),
            "must be Equal or Exists",
        ),
    }
    if out.key.is_empty() && out.operator == TolerationOperator::Equal && !f.has("operator") {
        out.operator = TolerationOperator::Exists;
    }
    match f.str(cx, "effect").as_deref() {
        None | Some("") => {}
        Some("NoSchedule") => out.effect = Some(TaintEffect::NoSchedule),
        Some("PreferNoSchedule") => out.effect = Some(TaintEffect::PreferNoSchedule),
        Some("NoExecute") => cx.warn(
            &f.at("effect"),
            "orch taints do not evict (NoSchedule and PreferNoSchedule only): the toleration tolerates every effect",
        ),
        Some(e) => cx.error(
            &f.at("effect"),
            &format!("{e:?}"),
            "must be NoSchedule, PreferNoSchedule or NoExecute",
        ),
    }
    f.ignore(cx, "tolerationSeconds", "ignored: orch taints do not evict");
    f.finish(cx);
    Some(out)
}

fn spread(
    cx: &mut Ctx,
    v: &Value,
    path: &str,
    labels: &BTreeMap<String, String>,
) -> Option<TopologySpreadConstraint> {
    let mut f = Fields::new(cx, v, path);
    let max_skew = f.int(cx, "maxSkew", 1, i64::from(u32::MAX)).unwrap_or(1) as u32;
    let topology_key = topology_key(f.str(cx, "topologyKey").unwrap_or_default());
    let when_unsatisfiable = match f.str(cx, "whenUnsatisfiable").as_deref() {
        None | Some("DoNotSchedule") => WhenUnsatisfiable::DoNotSchedule,
        Some("ScheduleAnyway") => WhenUnsatisfiable::ScheduleAnyway,
        Some(w) => {
            cx.error(
                &f.at("whenUnsatisfiable"),
                &format!("{w:?}"),
                "must be DoNotSchedule or ScheduleAnyway",
            );
            WhenUnsatisfiable::DoNotSchedule
        }
    };
    let sel_path = f.at("labelSelector");
    if let Some(s) = f.obj(cx, "labelSelector") {
        let sel = label_selector(cx, s);
        if !sel.matches(labels) {
            cx.warn(
                &sel_path,
                "orch spreads the workload's own replicas: this selector, which does not select them, is not used",
            );
        }
    }
    f.ignore_all(
        cx,
        &[
            (
                "minDomains",
                "ignored: orch counts the domains that have nodes",
            ),
            (
                "nodeAffinityPolicy",
                "ignored: every eligible node's domain counts",
            ),
            (
                "nodeTaintsPolicy",
                "ignored: every eligible node's domain counts",
            ),
            (
                "matchLabelKeys",
                "ignored: orch spreads the workload's own replicas",
            ),
        ],
    );
    f.finish(cx);
    Some(TopologySpreadConstraint {
        max_skew,
        topology_key,
        when_unsatisfiable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> (Pod, Vec<String>, Vec<String>) {
        let v: Value = serde_saphyr::from_str(yaml).unwrap();
        let mut cx = Ctx::new("t.yaml", 1);
        let p = pod_template(&mut cx, &v, "spec.template", &BTreeSet::new());
        let w = cx
            .warnings
            .iter()
            .map(|w| format!("{}: {}", w.path, w.message))
            .collect();
        let e = cx.errors.iter().map(|e| e.to_string()).collect();
        (p, w, e)
    }

    // Field references and gRPC probes are checked here, before the object's validation (the
    // agent's side of them is validated there).
    #[test]
    fn field_refs_and_grpc_probes() {
        let (p, w, e) = pod(concat!(
            "spec:\n  containers:\n  - name: a\n    image: x\n    env:\n",
            "    - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}\n",
            "    - {name: APP, valueFrom: {fieldRef: {apiVersion: v1, fieldPath: \"metadata.labels['app']\"}}}\n",
            "    - {name: IPS, valueFrom: {fieldRef: {fieldPath: status.podIPs}}}\n",
            "    - {name: MEM, valueFrom: {resourceFieldRef: {resource: limits.memory}}}\n",
            "    livenessProbe: {grpc: {port: 9000, service: health}, periodSeconds: 7}\n",
        ));
        assert!(e.is_empty(), "{e:?}");
        let env = &p.template.env;
        assert_eq!(env.len(), 2);
        assert_eq!(
            env[0].value_from.as_ref().and_then(|f| f.field.as_deref()),
            Some("metadata.name")
        );
        assert_eq!(
            env[1].value_from.as_ref().and_then(|f| f.field.as_deref()),
            Some("metadata.labels['app']")
        );
        let probe = p.template.liveness_probe.unwrap();
        assert_eq!(
            probe.grpc,
            Some(GrpcProbe {
                port: ProbePort::Number(9000),
                service: Some("health".into())
            })
        );
        assert_eq!(probe.period, Some(Span::secs(7)));
        assert_eq!(w, [
            "spec.template.spec.containers[0].env[2].valueFrom.fieldRef.fieldPath: \"status.podIPs\" is not a field orch fills in (metadata.name, metadata.namespace, metadata.uid, metadata.labels['KEY'], metadata.annotations['KEY'], spec.nodeName, status.hostIP, status.podIP): the variable is left out",
            "spec.template.spec.containers[0].env[3].valueFrom.resourceFieldRef: ignored: orch does not expose resources as variables; the variable is left out",
        ]);
    }

    #[test]
    fn one_item_and_sub_path_mounts_are_one_key_files() {
        let (p, w, e) = pod(concat!(
            "spec:\n  containers:\n  - name: a\n    image: x\n    volumeMounts:\n",
            "    - {name: cfg, mountPath: /etc/app/app.conf, subPath: app.conf}\n",
            "    - {name: many, mountPath: /etc/many}\n",
            "    - {name: vol, mountPath: /v, subPath: sub}\n",
            "  volumes:\n",
            "  - {name: cfg, configMap: {name: app}}\n",
            "  - {name: many, secret: {secretName: s, items: [{key: a, path: a}, {key: b, path: b}]}}\n",
            "  - {name: vol, persistentVolumeClaim: {claimName: data}}\n",
            "  - {name: nfs, nfs: {server: x, path: /}}\n",
        ));
        assert!(e.is_empty(), "{e:?}");
        let m = &p.template.mounts;
        assert_eq!(
            (
                m[0].path.as_str(),
                m[0].config.as_deref(),
                m[0].key.as_deref()
            ),
            ("/etc/app/app.conf", Some("app"), Some("app.conf"))
        );
        assert_eq!(
            (m[1].secret.as_deref(), m[1].key.as_deref()),
            (Some("s"), None)
        );
        assert_eq!(m[2].volume.as_deref(), Some("data"));
        assert_eq!(w, [
            "spec.template.spec.volumes[3].nfs: ignored: orch has no such volume (emptyDir, configMap, secret, hostPath and persistentVolumeClaim are supported); mounts of it are left out",
            "spec.template.spec.containers[0].volumeMounts[1].name: the volume lists several items: every key is mounted as a file in the directory (orch mounts one key or all)",
            "spec.template.spec.containers[0].volumeMounts[2].subPath: ignored: orch mounts the whole volume (subPath works for configMap, secret and hostPath volumes)",
        ]);
    }

    #[test]
    fn a_sidecar_init_container_is_refused() {
        let (_, _, e) = pod("spec:\n  containers: [{name: a, image: x}]\n  initContainers: [{name: s, image: busybox, restartPolicy: Always}]\n");
        assert_eq!(e, ["t.yaml: document 1: spec.template.spec.initContainers[0].restartPolicy: a sidecar (an init container with restartPolicy: Always) is a second container; orch runs one container per replica"]);
    }
}
