//! The object model: a Kubernetes-shaped envelope (`apiVersion`, `kind`, `metadata`, `spec`,
//! `status`) around Service, Replica, Node, Secret, Config and Event.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

use crate::model::quantity::{Cpu, Memory, Span, Timestamp};

/// The only API version this crate speaks.
pub const API_VERSION: &str = "orch/v1";
/// The namespace objects land in when a manifest names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The shortest `restartBackoffMax`: below it a crashing replica restarts in a busy loop.
/// Validation refuses less; the agent clamps a stored template that skipped validation.
pub const MIN_RESTART_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest `restartBackoffMax`, `stopGracePeriod` and probe `initialDelay`, `period` and
/// `timeout`.
pub const MAX_TEMPLATE_SPAN: std::time::Duration = std::time::Duration::from_secs(3600);
/// The shortest probe `period`.
pub const MIN_PROBE_PERIOD: std::time::Duration = std::time::Duration::from_millis(100);
/// The shortest probe `timeout`.
pub const MIN_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1);
/// The shortest `progressDeadline` of a service and `activeDeadline` of a job.
pub const MIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// The kinds of object orch stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A replicated workload.
    Service,
    /// One scheduled instance of a service.
    Replica,
    /// A machine that runs replicas.
    Node,
    /// Sensitive key/values.
    Secret,
    /// Plain key/values.
    Config,
    /// Something that happened to an object.
    Event,
    /// Replicas run to completion.
    Job,
    /// A stable name, virtual IP and port mapping over the replicas a label selector picks,
    /// whatever owns them (Kubernetes' Service).
    Route,
    /// A job created on a schedule.
    CronJob,
}

impl Kind {
    /// Every kind, in the order `orchctl` lists them.
    pub const ALL: [Kind; 9] = [
        Kind::Service,
        Kind::Replica,
        Kind::Node,
        Kind::Secret,
        Kind::Config,
        Kind::Event,
        Kind::Job,
        Kind::Route,
        Kind::CronJob,
    ];
    /// Kinds a user may write in a manifest.
    pub const APPLICABLE: [Kind; 6] = [
        Kind::Service,
        Kind::Secret,
        Kind::Config,
        Kind::Job,
        Kind::Route,
        Kind::CronJob,
    ];

    /// The store prefix segment (plural, lower case).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::Replica => "replicas",
            Kind::Node => "nodes",
            Kind::Secret => "secrets",
            Kind::Config => "configs",
            Kind::Event => "events",
            Kind::Job => "jobs",
            Kind::Route => "routes",
            Kind::CronJob => "cronjobs",
        }
    }
    /// The name as written in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Replica => "Replica",
            Kind::Node => "Node",
            Kind::Secret => "Secret",
            Kind::Config => "Config",
            Kind::Event => "Event",
            Kind::Job => "Job",
            Kind::Route => "Route",
            Kind::CronJob => "CronJob",
        }
    }
    /// Whether objects of this kind live in a namespace (nodes do not).
    pub fn namespaced(self) -> bool {
        self != Kind::Node
    }
    /// Parses the names users type: `service`, `services`, `svc`, `Service`, ...
    pub fn from_user(s: &str) -> Option<Kind> {
        let s = s.to_ascii_lowercase();
        Some(match s.as_str() {
            "service" | "services" | "svc" => Kind::Service,
            "replica" | "replicas" | "rep" | "pod" | "pods" => Kind::Replica,
            "node" | "nodes" | "no" => Kind::Node,
            "secret" | "secrets" => Kind::Secret,
            "config" | "configs" | "cm" | "configmap" | "configmaps" => Kind::Config,
            "event" | "events" | "ev" => Kind::Event,
            "job" | "jobs" => Kind::Job,
            "route" | "routes" | "rt" => Kind::Route,
            "cronjob" | "cronjobs" | "cj" => Kind::CronJob,
            _ => return None,
        })
    }
    /// The store prefix holding every object of this kind: `/services/`.
    pub fn prefix(self) -> String {
        format!("/{}/", self.plural())
    }
    /// The store key of an object: `/services/default/web`, `/nodes/node-1`.
    pub fn key(self, namespace: &str, name: &str) -> String {
        if self.namespaced() {
            format!("/{}/{}/{}", self.plural(), namespace, name)
        } else {
            format!("/{}/{}", self.plural(), name)
        }
    }
    /// The kind a store key belongs to.
    pub fn of_key(key: &str) -> Option<Kind> {
        let seg = key.strip_prefix('/')?.split('/').next()?;
        Kind::ALL.into_iter().find(|k| k.plural() == seg)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names one object: its kind, namespace (empty for kinds that have none, such as nodes) and
/// name. What the controllers queue; [`ObjectKey::store_key`] is its key in the store.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The object's kind.
    pub kind: Kind,
    /// Its namespace (empty for a kind without namespaces).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ObjectKey {
    /// The key of the `kind` object `namespace/name`.
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
    /// The key of `object`.
    pub fn of(object: &Object) -> ObjectKey {
        let m = object.metadata();
        ObjectKey::new(object.kind(), &m.namespace, &m.name)
    }
    /// Parses a store key: `/services/default/web`, `/nodes/node-1`.
    pub fn parse(store_key: &str) -> Option<ObjectKey> {
        let kind = Kind::of_key(store_key)?;
        let rest = store_key.strip_prefix(kind.prefix().as_str())?;
        let (namespace, name) = if kind.namespaced() {
            rest.split_once('/')?
        } else {
            ("", rest)
        };
        Some(ObjectKey::new(kind, namespace, name))
    }
    /// The object's key in the store ([`Kind::key`]).
    pub fn store_key(&self) -> String {
        self.kind.key(&self.namespace, &self.name)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.store_key())
    }
}

/// The most replicas one service may ask for.
pub const MAX_REPLICAS: i64 = 100_000;
/// A fresh object uid (random, 128 bits, UUID-shaped).
pub(crate) fn new_uid() -> String {
    let v: u128 = rand::random();
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Deserializes a replica count from any integer, with a clear range error.
pub(crate) fn de_replicas<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    let n = v
        .as_i64()
        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64));
    match n {
        Some(n) if (0..=MAX_REPLICAS).contains(&n) => Ok(n as u32),
        _ => Err(serde::de::Error::custom(format!(
            "invalid value {v}: must be a whole number from 0 to {MAX_REPLICAS}"
        ))),
    }
}

/// Identity and bookkeeping common to every object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// A DNS-1123 label.
    pub name: String,
    /// A DNS-1123 label; empty for cluster-scoped kinds (nodes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Identifying key/values that selectors match.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Free-form key/values for tools and people.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Set by orch when the object is created; unique over time.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The store revision of the last write; set on read, ignored on write.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u64,
    /// Bumped by orch whenever the spec changes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    /// When orch created the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<Timestamp>,
    /// The service that owns this object (replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// An object's labels: a `BTreeMap` (it derefs to one) that copies share until one of them
/// changes (copy on write). The replicas of one service revision carry equal labels, and the
/// engine's cache gives them one copy, as it does their template: a million replicas would
/// otherwise hold a million equal maps. Serialized as the map itself.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Labels(Arc<BTreeMap<String, String>>);

impl Labels {
    /// Whether there are none (inherent, for serde's `skip_serializing_if`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `self` and `other` share one copy.
    pub fn shares(&self, other: &Labels) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The map, as a shared handle.
    pub fn shared(&self) -> &Arc<BTreeMap<String, String>> {
        &self.0
    }
}

impl std::ops::Deref for Labels {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

impl std::ops::DerefMut for Labels {
    /// The map, copied first if another `Labels` shares it.
    fn deref_mut(&mut self) -> &mut BTreeMap<String, String> {
        Arc::make_mut(&mut self.0)
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Labels {
        Labels(Arc::new(map))
    }
}

impl From<Arc<BTreeMap<String, String>>> for Labels {
    fn from(map: Arc<BTreeMap<String, String>>) -> Labels {
        Labels(map)
    }
}

impl<const N: usize> From<[(String, String); N]> for Labels {
    fn from(pairs: [(String, String); N]) -> Labels {
        Labels(Arc::new(pairs.into()))
    }
}

impl FromIterator<(String, String)> for Labels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Labels {
        Labels(Arc::new(iter.into_iter().collect()))
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl PartialEq<BTreeMap<String, String>> for Labels {
    fn eq(&self, other: &BTreeMap<String, String>) -> bool {
        *self.0 == *other
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn is_default_arc<T: Default + PartialEq>(v: &Arc<T>) -> bool {
    **v == T::default()
}

/// An environment variable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Variable value.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// Take the value from a secret's or a config's key instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ValueFrom>,
}

impl EnvVar {
    /// A plain `name=value`.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: value.into(),
            value_from: None,
        }
    }
}

/// A key of a Secret or a Config, or a field of the replica itself (exactly one of
/// `secret`, `config` and `field`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueFrom {
    /// A secret's name (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A config's name (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// The key of the secret or config (empty with `field`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// A field of the replica, filled in by the agent at start (Kubernetes' `fieldRef`):
    /// `metadata.name`, `metadata.namespace`, `metadata.uid`, `metadata.labels['KEY']`,
    /// `metadata.annotations['KEY']`, `spec.nodeName`, `status.hostIP`, `status.podIP`
    /// (the replica's own address, else the node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Whether a missing secret, config or key leaves the variable unset instead of failing
    /// the start (Kubernetes' `optional: true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// Every key of a secret or a config as environment variables (Kubernetes' `envFrom`, Compose's
/// `env_file` once its files are read): exactly one of `secret` and `config`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvFrom {
    /// A secret's name (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A config's name (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Put before every key (`DB_`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// Whether a missing secret or config is skipped instead of failing the start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// Linux capabilities added to and dropped from the runtime's default set (names with or
/// without `CAP_`, upper case; `ALL` drops or adds every one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capabilities {
    /// Added (`NET_ADMIN`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    /// Dropped (`ALL`, `NET_RAW`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
}

/// A step that runs to completion, in order with the others, before a replica's main workload
/// starts (Kubernetes' `initContainers`): on the same runtime, with the same mounts available
/// by name, network and user. A step that fails is run again after the replica's restart
/// backoff (as the main workload, per `restartPolicy`); the main workload starts only after
/// every step exited 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InitStep {
    /// A name unique among the template's steps (DNS label).
    pub name: String,
    /// The image (default: the template's image); processes: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The program and its leading arguments (images: overrides the entrypoint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Further arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables, in order (added after the template's own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Mounts (the same kinds as the template's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

/// Something mounted into a replica at `path`: exactly one of `secret`, `config` (a
/// directory with one file per key), `volume` (a named local volume), `tmpfs` (an empty
/// directory that lives as long as the replica) or `hostPath` (a directory of the node,
/// only under a prefix the node allows).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mount {
    /// Where it appears: absolute, no `..`. For process replicas, under the replica's own
    /// directory (`$ORCH_ROOT`), since processes share the node's filesystem.
    pub path: String,
    /// Read-only (secrets and configs always are).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// A secret's keys as files (mode 0400, owned by the workload's user, on tmpfs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A config's keys as files (mode 0444).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// With `secret` or `config`: only this key, as one file at `path` (Compose's
    /// `/run/secrets/NAME`, Kubernetes' `subPath`/`items` of one key) instead of a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A named local volume: created on the node on first use, kept across replicas until
    /// `orchctl volume rm`; replicas using it are placed back on the node that holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// With `volume`: one volume per replica, named `VOLUME-REPLICA` (`data-web-0`), as a
    /// StatefulSet's `volumeClaimTemplates` (stable with `mode: ordered`, whose replica names
    /// are stable).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_replica: bool,
    /// An empty tmpfs-backed directory for this replica's life.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tmpfs: bool,
    /// A directory of the node (refused unless the node allows its prefix:
    /// `orchd --allow-host-path PREFIX`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
}

impl Mount {
    /// `secret`, `config`, `volume`, `tmpfs` or `hostPath`: which kind it is, if exactly one
    /// is set.
    pub fn kind(&self) -> Option<&'static str> {
        let set: Vec<&'static str> = [
            (self.secret.is_some(), "secret"),
            (self.config.is_some(), "config"),
            (self.volume.is_some(), "volume"),
            (self.tmpfs, "tmpfs"),
            (self.host_path.is_some(), "hostPath"),
        ]
        .into_iter()
        .filter_map(|(on, k)| on.then_some(k))
        .collect();
        (set.len() == 1).then(|| set[0])
    }

    /// The local volume this mount names for replica `replica`: `volume` itself, or with
    /// `perReplica` `VOLUME-REPLICA` (`www-web-0`, Kubernetes' PVC name for a StatefulSet's
    /// claim). The agent mounts it and the scheduler places the replica where it is.
    pub fn volume_name(&self, replica: &str) -> Option<String> {
        let v = self.volume.as_deref()?;
        Some(if self.per_replica {
            format!("{v}-{replica}")
        } else {
            v.to_string()
        })
    }
}

/// Transport protocol of a port.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// A port a replica listens on. A replica with a network of its own (a container on a node with
/// replica networking) listens on `port` at its own address, like Kubernetes' `containerPort`;
/// on the host network `port` is a fixed host port. With no `port`, the node picks a free one
/// and hands it to the workload as `PORT` (first port) and `ORCH_PORT_<NAME>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    /// An IANA-style port name (`http`), unique within the template.
    pub name: String,
    /// The port the workload listens on (see the type's doc); omit for a dynamic one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Also reachable on the node's address at this port (a replica with a network of its
    /// own only; CNI's portmap), as Kubernetes' `hostPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// TCP or UDP.
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: Protocol,
}

/// CPU and memory one replica may use. They are both what the scheduler reserves and the
/// limit the runtime enforces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// CPU, e.g. `500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Memory, e.g. `128Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
}

/// When a replica that exited is started again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Always restart (the default).
    #[default]
    Always,
    /// Restart after a non-zero exit or a signal.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// Whether an exit with this outcome leads to a restart.
    pub fn restarts(self, success: bool) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        }
    }
}

/// What one replica runs: either a `command` (the process runtime) or an `image`
/// (a container runtime), plus everything about how it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Template {
    /// Labels every replica carries (in addition to `orch/service`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// A container image reference; needs a container runtime on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The program and its leading arguments (for images: overrides the entrypoint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Further arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Working directory; the replica's own directory when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Ports the workload listens on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    /// Stay on the node's network even where containers get a network of their own (process
    /// replicas always are on it, as Nomad's `raw_exec`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// Secrets, configs and volumes mounted into each replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Reserved and enforced CPU and memory.
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: Resources,
    /// Always, OnFailure or Never.
    #[serde(default, skip_serializing_if = "is_default")]
    pub restart_policy: RestartPolicy,
    /// The longest wait between restarts of a crashing replica (default 30s): the first
    /// restart is immediate, then 1s, 2s, 4s ... up to this; a run of 10s resets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_backoff_max: Option<Span>,
    /// Signal sent first on stop (default SIGTERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Time between the stop signal and SIGKILL (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<Span>,
    /// When a node pulls the image (images only): IfNotPresent (the default), Always, Never.
    #[serde(default, skip_serializing_if = "is_default")]
    pub image_pull_policy: PullPolicy,
    /// Mount the container's root filesystem read-only (images only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root_filesystem: bool,
    /// The user the workload runs as: `UID`, `UID:GID`, or for images a user name from the
    /// image's `/etc/passwd` (`postgres`, `postgres:postgres`); default: the image's user, or
    /// the node agent's for processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Capabilities added to or dropped from the runtime's default set (containers only).
    #[serde(default, skip_serializing_if = "is_default")]
    pub capabilities: Capabilities,
    /// The hostname a container sees (default: the replica's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Every key of these secrets and configs as environment variables (before `env`, which
    /// wins on a clash).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFrom>,
    /// Steps that run to completion, in order, before the main workload starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init: Vec<InitStep>,
    /// Decides whether a running replica is Ready (an endpoint); without it, running is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// Restarts a replica that fails it `failureThreshold` times in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// Holds readiness and liveness back until it passes once; failing it
    /// `failureThreshold` times restarts the replica (for slow starters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
}

/// A port a probe checks: a template port's name or a number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProbePort {
    /// A port number.
    Number(u16),
    /// A template port's name.
    Name(String),
}

/// `httpGet`: a GET that answers 200–399 passes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpProbe {
    /// The path (default `/`).
    #[serde(default = "root_path")]
    pub path: String,
    /// The port.
    pub port: ProbePort,
}

fn root_path() -> String {
    "/".into()
}

/// `tcpSocket`: a connection that opens passes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpProbe {
    /// The port.
    pub port: ProbePort,
}

/// `exec`: a command run inside the replica (its environment; inside the container) that
/// exits 0 passes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecProbe {
    /// The program and its arguments.
    pub command: Vec<String>,
}

/// `grpc`: `grpc.health.v1.Health/Check` over plain-text HTTP/2 that answers `SERVING`
/// passes (Kubernetes' gRPC probe).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcProbe {
    /// The port.
    pub port: ProbePort,
    /// The service name asked about (default: empty, the server as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// A health check, with Kubernetes' defaults: no initial delay, every 10 s, 1 s timeout,
/// one success, three failures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    /// An HTTP GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpProbe>,
    /// A TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpProbe>,
    /// A command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
    /// A gRPC health check (`grpc.health.v1.Health/Check`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcProbe>,
    /// Wait this long after the start before the first check (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<Span>,
    /// Time between checks (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Span>,
    /// A check that takes longer fails (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Span>,
    /// Successes in a row that make a failing probe pass (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
    /// Failures in a row that make a passing probe fail (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
}

impl Probe {
    /// The initial delay (at most [`MAX_TEMPLATE_SPAN`], for a probe that skipped validation).
    pub fn initial_delay(&self) -> std::time::Duration {
        self.initial_delay
            .map(|s| s.0)
            .unwrap_or_default()
            .min(MAX_TEMPLATE_SPAN)
    }
    /// The period (within [`MIN_PROBE_PERIOD`] and [`MAX_TEMPLATE_SPAN`], for a probe that
    /// skipped validation).
    pub fn period(&self) -> std::time::Duration {
        self.period
            .map(|s| s.0)
            .unwrap_or(std::time::Duration::from_secs(10))
            .clamp(MIN_PROBE_PERIOD, MAX_TEMPLATE_SPAN)
    }
    /// The timeout (within [`MIN_PROBE_TIMEOUT`] and [`MAX_TEMPLATE_SPAN`]).
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
            .map(|s| s.0)
            .unwrap_or(std::time::Duration::from_secs(1))
            .clamp(MIN_PROBE_TIMEOUT, MAX_TEMPLATE_SPAN)
    }
    /// The success threshold.
    pub fn success_threshold(&self) -> u32 {
        self.success_threshold.unwrap_or(1).max(1)
    }
    /// The failure threshold.
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold.unwrap_or(3).max(1)
    }
}

/// When a node pulls a replica's image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PullPolicy {
    /// Pull only when the node does not have the image (the default).
    #[default]
    IfNotPresent,
    /// Pull on every start (to follow a moving tag); cached layers are not fetched again.
    Always,
    /// Never pull: the image must have been imported.
    Never,
}

impl Template {
    /// A template that runs `command` (the program and its arguments) with every other
    /// field at its default.
    pub fn with_command<S: Into<String>>(command: impl IntoIterator<Item = S>) -> Template {
        Template {
            command: command.into_iter().map(Into::into).collect(),
            ..Template::default()
        }
    }

    /// The ports a replica of this template takes on its node's own address, as `(protocol,
    /// port)`: every `hostPort`, and the fixed `port`s of a template that stays on the host
    /// network (a process replica, or `hostNetwork`). A container's fixed `port` is in its
    /// own network namespace, so two services that both listen on 8080 can share a node.
    /// On a node without replica networking containers are on the host network all the
    /// same: there two such replicas collide, and the second start fails naming the port.
    pub fn host_ports(&self) -> impl Iterator<Item = (Protocol, u16)> + '_ {
        let on_host = self.image.is_none() || self.host_network;
        self.ports.iter().flat_map(move |p| {
            let fixed = p.port.filter(|_| on_host);
            let host = p.host_port.filter(|h| Some(*h) != fixed);
            fixed.into_iter().chain(host).map(move |n| (p.protocol, n))
        })
    }

    /// The stop signal, `SIGTERM` unless set.
    pub fn stop_signal(&self) -> &str {
        self.stop_signal.as_deref().unwrap_or("SIGTERM")
    }
    /// The stop grace period, 10 s unless set (at most [`MAX_TEMPLATE_SPAN`]).
    pub fn stop_grace(&self) -> std::time::Duration {
        self.stop_grace_period
            .map(|s| s.0)
            .unwrap_or(std::time::Duration::from_secs(10))
            .min(MAX_TEMPLATE_SPAN)
    }
    /// The template's restart backoff cap, if it sets one, within [`MIN_RESTART_BACKOFF_MAX`]
    /// and [`MAX_TEMPLATE_SPAN`]: a template stored before validation refused smaller values
    /// still backs off.
    pub fn restart_backoff_cap(&self) -> Option<std::time::Duration> {
        self.restart_backoff_max
            .map(|s| s.0.clamp(MIN_RESTART_BACKOFF_MAX, MAX_TEMPLATE_SPAN))
    }
    /// The secrets (`true`) and configs (`false`) the template refers to, by name, sorted.
    pub fn references(&self) -> Vec<(bool, &str)> {
        let mut out: Vec<(bool, &str)> = Vec::new();
        let steps = self.init.iter();
        for e in self.env.iter().chain(steps.clone().flat_map(|s| &s.env)) {
            if let Some(f) = &e.value_from {
                out.extend(f.secret.as_deref().map(|n| (true, n)));
                out.extend(f.config.as_deref().map(|n| (false, n)));
            }
        }
        for e in &self.env_from {
            out.extend(e.secret.as_deref().map(|n| (true, n)));
            out.extend(e.config.as_deref().map(|n| (false, n)));
        }
        for m in self.mounts.iter().chain(steps.flat_map(|s| &s.mounts)) {
            out.extend(m.secret.as_deref().map(|n| (true, n)));
            out.extend(m.config.as_deref().map(|n| (false, n)));
        }
        out.sort();
        out.dedup();
        out
    }

    /// The [`Template::config_versions`] entry of a referenced secret (`secret: true`) or
    /// config at store revision `rev` (0: missing).
    pub fn config_version(secret: bool, name: &str, rev: u64) -> String {
        format!("{}/{name}@{rev}", if secret { "secret" } else { "config" })
    }

    /// The referenced secrets' and configs' versions, as the replication controller counts
    /// them for [`ServiceSpec::revision_hash`]: one
    /// [`Template::config_version`] per secret (`true`) or config the template refers to, at
    /// the store revision `revision_of(secret, name)` gives (0: missing). Everything that
    /// shows or compares a service's revision hash goes through this, so `orchctl describe`,
    /// `apply --plan` and the controller agree with the replicas' `templateHash`.
    pub fn config_versions(&self, mut revision_of: impl FnMut(bool, &str) -> u64) -> Vec<String> {
        self.references()
            .into_iter()
            .map(|(secret, name)| Template::config_version(secret, name, revision_of(secret, name)))
            .collect()
    }

    /// The named volumes the template mounts, as written (per-replica ones without the
    /// replica's name: see [`Template::volume_names`]).
    pub fn volumes(&self) -> Vec<&str> {
        self.mounts
            .iter()
            .filter_map(|m| m.volume.as_deref())
            .collect()
    }

    /// The local volumes replica `replica` of this template mounts
    /// ([`Mount::volume_name`]).
    pub fn volume_names(&self, replica: &str) -> Vec<String> {
        self.mounts
            .iter()
            .filter_map(|m| m.volume_name(replica))
            .collect()
    }

    /// A stable hash of the template alone.
    pub fn hash(&self) -> String {
        fnv_hex(&serde_json::to_vec(self).unwrap_or_default())
    }
}

/// FNV-1a of `bytes` as 10 hex digits: stable across Rust releases, unlike std's
/// DefaultHasher.
fn fnv_hex(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:010x}", h & 0xff_ffff_ffff)
}

impl Default for ServiceSpec {
    /// One replica of an empty template, everything else at its default (as a manifest that
    /// leaves the fields out).
    fn default() -> Self {
        ServiceSpec {
            replicas: one(),
            template: Template::default(),
            placement: Placement::default(),
            update: UpdateStrategy::default(),
            mode: ServiceMode::default(),
            publish: Vec::new(),
            headless: false,
            depends_on: Vec::new(),
        }
    }
}

impl ServiceSpec {
    /// `replicas` replicas of `template`, everything else at its default.
    pub fn new(replicas: u32, template: Template) -> ServiceSpec {
        ServiceSpec {
            replicas,
            template,
            ..ServiceSpec::default()
        }
    }

    /// The revision of what each replica runs and where it may run: the template and the
    /// placement rules. Replicas record it (`templateHash`); a change replaces them within the
    /// update limits, as a change to a Kubernetes pod template does (placement rules live in
    /// it there). Equal to [`Template::hash`] while the placement is the default.
    ///
    /// `config_versions` ([`Template::config_versions`]: the revisions of the secrets and
    /// configs the template refers to) count too unless `update.ignoreConfigChanges`:
    /// revisions, not contents, so the hash says nothing about a secret's value.
    pub fn revision_hash(&self, config_versions: &[String]) -> String {
        let base = if self.placement == Placement::default() {
            self.template.hash()
        } else {
            fnv_hex(&serde_json::to_vec(&(&self.template, &self.placement)).unwrap_or_default())
        };
        if config_versions.is_empty() || self.update.ignore_config_changes {
            return base;
        }
        fnv_hex(format!("{base}|{}", config_versions.join(",")).as_bytes())
    }
}

/// Where replicas may go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placement {
    /// Nodes must carry every one of these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// At most this many replicas of the service on one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_node: Option<u32>,
    /// Expressions on node labels that must all hold (Kubernetes `matchExpressions`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_affinity: Vec<LabelSelectorRequirement>,
    /// Taints of nodes these replicas accept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Go near replicas matching a selector.
    #[serde(default, skip_serializing_if = "is_default")]
    pub affinity: ReplicaAffinity,
    /// Stay away from replicas matching a selector.
    #[serde(default, skip_serializing_if = "is_default")]
    pub anti_affinity: ReplicaAffinity,
    /// Spread the service's own replicas evenly over topology domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// `spread` (least allocated, the default) or `binpack` (most allocated).
    #[serde(default, skip_serializing_if = "is_default")]
    pub strategy: Strategy,
    /// How long replicas on a node that stopped reporting wait before they are replaced
    /// elsewhere (`60s`); the cluster's replace timeout when shorter or unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_loss_timeout: Option<crate::model::quantity::Span>,
}

/// The topology key whose domains are single nodes (each node its own domain).
pub const NODE_TOPOLOGY_KEY: &str = "orch.dev/node";

/// How a label requirement compares a label with its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SelectorOperator {
    /// The label is one of `values`.
    In,
    /// The label is missing or not one of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is missing.
    DoesNotExist,
    /// The label is an integer greater than the single value.
    Gt,
    /// The label is an integer less than the single value.
    Lt,
}

/// One requirement on labels (Kubernetes `matchExpressions` item).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// In, NotIn, Exists, DoesNotExist, Gt or Lt.
    pub operator: SelectorOperator,
    /// Values for In and NotIn; one integer for Gt and Lt; none for Exists and DoesNotExist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl LabelSelectorRequirement {
    /// Whether `labels` satisfy the requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        let int = |s: &str| s.trim().parse::<i64>().ok();
        match self.operator {
            SelectorOperator::In => v.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => !v.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::Exists => v.is_some(),
            SelectorOperator::DoesNotExist => v.is_none(),
            SelectorOperator::Gt | SelectorOperator::Lt => {
                let (Some(have), Some(want)) = (
                    v.and_then(|v| int(v)),
                    self.values.first().and_then(|w| int(w)),
                ) else {
                    return false;
                };
                if self.operator == SelectorOperator::Gt {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

/// Selects replicas by their labels: every `matchLabels` pair and every expression must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must be present with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Further requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

impl LabelSelector {
    /// Whether `labels` satisfy the selector (an empty selector matches everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| e.matches(labels))
    }
}

/// What a taint does to replicas that do not tolerate it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaintEffect {
    /// They are not placed on the node.
    #[default]
    NoSchedule,
    /// They avoid the node when another fits.
    PreferNoSchedule,
}

/// A mark on a node that repels replicas not tolerating it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Taint {
    /// The taint key.
    pub key: String,
    /// The taint value (may be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// NoSchedule or PreferNoSchedule.
    pub effect: TaintEffect,
}

/// How a toleration compares with a taint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TolerationOperator {
    /// Key and value must be equal (the default).
    #[default]
    Equal,
    /// The key must be equal (an empty key tolerates every taint).
    Exists,
}

/// Lets a replica go to a node with a matching taint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Toleration {
    /// The taint key; empty with `Exists` tolerates everything.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// Equal or Exists.
    #[serde(default, skip_serializing_if = "is_default")]
    pub operator: TolerationOperator,
    /// The taint value for `Equal`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// The effect tolerated; every effect when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    /// Whether this toleration tolerates `taint`.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => self.key.is_empty() || self.key == taint.key,
            TolerationOperator::Equal => self.key == taint.key && self.value == taint.value,
        }
    }
}

/// Required and preferred terms of affinity (or anti-affinity) to other replicas.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaAffinity {
    /// Terms that must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<AffinityTerm>,
    /// Terms that should hold, each with a weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred: Vec<WeightedAffinityTerm>,
}

/// Replicas matching `labelSelector` (in the same namespace) within one domain of `topologyKey`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AffinityTerm {
    /// Which replicas count.
    pub label_selector: LabelSelector,
    /// A node label (`zone`), or `orch.dev/node` for the node itself.
    pub topology_key: String,
}

/// An affinity term with a weight from 1 to 100.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedAffinityTerm {
    /// 1 to 100: how much the term matters against the others.
    pub weight: u32,
    /// Which replicas count.
    pub label_selector: LabelSelector,
    /// A node label (`zone`), or `orch.dev/node` for the node itself.
    pub topology_key: String,
}

/// What to do when no node keeps the skew within `maxSkew`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WhenUnsatisfiable {
    /// Leave the replica pending (the default).
    #[default]
    DoNotSchedule,
    /// Place it anyway, preferring nodes that reduce the skew.
    ScheduleAnyway,
}

/// Keeps the service's replicas evenly spread over the domains of a topology key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopologySpreadConstraint {
    /// Most allowed difference between the fullest and the emptiest domain (at least 1).
    pub max_skew: u32,
    /// A node label (`zone`), or `orch.dev/node` for the node itself.
    pub topology_key: String,
    /// DoNotSchedule or ScheduleAnyway.
    #[serde(default, skip_serializing_if = "is_default")]
    pub when_unsatisfiable: WhenUnsatisfiable,
}

/// How to choose among nodes that fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Least allocated first: spread load (the default).
    #[default]
    Spread,
    /// Most allocated first: pack nodes, leave others empty.
    Binpack,
}

/// A count or a percentage of the desired replicas (`1`, `"25%"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum IntOrPercent {
    /// An absolute count.
    Int(u32),
    /// A percentage such as `"25%"`.
    Percent(String),
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let bad = || {
            serde::de::Error::custom(format!(
                "invalid value {v}: must be a whole number (e.g. 1) or a percentage (e.g. \"25%\")"
            ))
        };
        match &v {
            serde_json::Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(IntOrPercent::Int)
                .ok_or_else(bad),
            serde_json::Value::String(s) => Ok(IntOrPercent::Percent(s.clone())),
            _ => Err(bad()),
        }
    }
}

impl IntOrPercent {
    /// Resolves against `total`, rounding up (surge) or down (unavailable) as Kubernetes does.
    pub fn resolve(&self, total: u32, round_up: bool) -> u32 {
        match self {
            IntOrPercent::Int(n) => *n,
            IntOrPercent::Percent(p) => {
                let pct: u64 = p.trim_end_matches('%').parse().unwrap_or(0);
                let v = u64::from(total) * pct;
                (if round_up { v.div_ceil(100) } else { v / 100 }) as u32
            }
        }
    }
}

/// How a change of template replaces replicas.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateStrategy {
    /// Extra replicas allowed above the desired count during an update (default 25%, at least 1 when
    /// max unavailable is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrPercent>,
    /// Replicas allowed to be unready during an update (default 25%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrPercent>,
    /// A rollout that has not completed this long after it started fails (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<Span>,
    /// Roll a failed rollout back to the last revision that completed (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<bool>,
    /// Hold the rollout: replicas of the old revision stay (scaling still works).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// `startFirst` (a new replica starts before an old one stops: no surge below 1, nothing
    /// unavailable) or `stopFirst` (an old one stops first: no surge, at least 1 unavailable);
    /// unset, max surge and max unavailable decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<UpdateOrder>,
    /// Keep the replicas running when a secret or config they use changes (by default such
    /// a change rolls the service, so new replicas see the new values).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_config_changes: bool,
}

/// Which goes first when a replica is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UpdateOrder {
    /// Start the new replica, then stop the old one.
    StartFirst,
    /// Stop the old replica, then start the new one.
    StopFirst,
}

impl UpdateStrategy {
    /// `(max_surge, max_unavailable)` for `replicas` desired; never both zero.
    pub fn limits(&self, replicas: u32) -> (u32, u32) {
        let quarter = IntOrPercent::Percent("25%".into());
        let surge = self
            .max_surge
            .as_ref()
            .unwrap_or(&quarter)
            .resolve(replicas, true);
        let unavailable = self
            .max_unavailable
            .as_ref()
            .unwrap_or(&quarter)
            .resolve(replicas, false);
        match self.order {
            Some(UpdateOrder::StartFirst) => (surge.max(1), 0),
            Some(UpdateOrder::StopFirst) => (0, unavailable.max(1)),
            None if surge == 0 && unavailable == 0 => (1, 0),
            None => (surge, unavailable),
        }
    }
}

/// The desired state of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// How many replicas should run (default 1).
    #[serde(default = "one", deserialize_with = "de_replicas")]
    pub replicas: u32,
    /// What each replica runs.
    pub template: Template,
    /// Where replicas may go.
    #[serde(default, skip_serializing_if = "is_default")]
    pub placement: Placement,
    /// How template changes roll out.
    #[serde(default, skip_serializing_if = "is_default")]
    pub update: UpdateStrategy,
    /// `replicated` (the default: `replicas` of them, placed by the scheduler) or `global`
    /// (one on every eligible node, following nodes as they come, go and change; `replicas`
    /// is then ignored).
    #[serde(default, skip_serializing_if = "is_default")]
    pub mode: ServiceMode,
    /// Ports every node listens on and balances across the service's ready replicas (the
    /// service proxy). Changing them does not roll the replicas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<Publish>,
    /// No virtual IP: the service's name resolves to its ready replicas' own addresses
    /// (Kubernetes' `clusterIP: None`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub headless: bool,
    /// What must hold before the service's first replicas are created (Compose's
    /// `depends_on`): while the service has no replica, none is created until every
    /// dependency meets its condition; replicas that exist are never stopped for one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
}

/// A service or job another one waits for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dependency {
    /// The service's or job's name (same namespace).
    pub name: String,
    /// `Service` (the default) or `Job`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub kind: DependencyKind,
    /// What it must have reached.
    #[serde(default, skip_serializing_if = "is_default")]
    pub condition: DependencyCondition,
}

/// The kind of object a [`Dependency`] names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DependencyKind {
    /// A service.
    #[default]
    Service,
    /// A job.
    Job,
}

/// What a dependency must have reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DependencyCondition {
    /// A service: at least one replica running; a job: started (Compose's
    /// `service_started`, the default).
    #[default]
    Started,
    /// A service: every desired replica Ready, at least one (Compose's `service_healthy`).
    Ready,
    /// A job: succeeded (Compose's `service_completed_successfully`).
    Completed,
}

/// A port published on every node: TCP connections to it go to a ready replica's port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Publish {
    /// The port every node listens on.
    pub port: u16,
    /// The template port (by name) connections go to; default: the template's first port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<String>,
    /// How a replica is picked for each new connection.
    #[serde(default, skip_serializing_if = "is_default")]
    pub balance: Balance,
}

impl Publish {
    /// The template port name connections go to.
    pub fn target<'a>(&'a self, template: &'a Template) -> Option<&'a str> {
        match &self.target_port {
            Some(t) => Some(t),
            None => template.ports.first().map(|p| p.name.as_str()),
        }
    }
}

/// How the service proxy picks a replica for a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Balance {
    /// Each ready replica in turn (the default).
    #[default]
    RoundRobin,
    /// The ready replica with the fewest open connections through this node.
    LeastConnections,
}

/// How many replicas a service runs and where.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    /// `spec.replicas` of them, placed by the scheduler.
    #[default]
    Replicated,
    /// One on every node that is Ready, not cordoned, matches the placement's node selector
    /// and affinity, and whose NoSchedule taints it tolerates.
    Global,
    /// `spec.replicas` of them with stable names `NAME-0` … `NAME-(N-1)` (Kubernetes'
    /// StatefulSet): replica `i` is created only once `0..i` are Ready, scaled down from the
    /// highest ordinal, and a lost or replaced replica comes back under the same name (with
    /// its per-replica volumes and per-replica DNS name).
    Ordered,
}

impl Placement {
    /// Whether a replica with this placement may run on `node` (labels and taints; not
    /// resources): what a global service checks for each node.
    pub fn admits(&self, node: &Node) -> bool {
        let labels = &node.metadata.labels;
        self.node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.node_affinity.iter().all(|r| r.matches(labels))
            && node
                .spec
                .taints
                .iter()
                .filter(|t| t.effect == TaintEffect::NoSchedule)
                .all(|t| self.tolerations.iter().any(|tol| tol.tolerates(t)))
    }
}

fn one() -> u32 {
    1
}

/// One revision of a service: what its replicas ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRecord {
    /// Its number (1, 2, ...).
    pub revision: u64,
    /// Its revision hash (replicas' `templateHash`).
    pub hash: String,
    /// The template.
    pub template: Template,
    /// The placement.
    #[serde(default, skip_serializing_if = "is_default")]
    pub placement: Placement,
    /// When it was first recorded (kept when an undo or rollback makes it current again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Timestamp>,
    /// The secrets' and configs' revisions it ran with ([`Template::config_versions`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_versions: Vec<String>,
    /// What changed when it became current: the service's `orch/change-cause` annotation (if
    /// any), then the fields that differ from the revision before it (`template.args[0]:
    /// "a" → "b"`), or which revision it brings back.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub change: String,
}

/// Where a service's latest rollout stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutState {
    /// Every replica runs the current revision and is ready.
    #[default]
    Complete,
    /// Replicas are being replaced.
    Progressing,
    /// Held by `orchctl rollout pause`.
    Paused,
    /// It missed its progress deadline (and was not rolled back).
    Failed,
    /// It missed its progress deadline and was rolled back to the last good revision.
    RolledBack,
}

/// The latest rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Where it stands.
    #[serde(default)]
    pub state: RolloutState,
    /// The revision being rolled out (or rolled back from).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u64,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Timestamp>,
    /// What happened.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// What orch observed of a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// The generation this status describes.
    #[serde(default)]
    pub observed_generation: u64,
    /// Replicas that exist.
    #[serde(default)]
    pub replicas: u32,
    /// Replicas that are ready.
    #[serde(default)]
    pub ready_replicas: u32,
    /// Replicas of the current template.
    #[serde(default)]
    pub updated_replicas: u32,
    /// Replicas that cannot be placed.
    #[serde(default)]
    pub pending_replicas: u32,
    /// A short human summary of anything wrong.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The current revision's number.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u64,
    /// The last revision whose rollout completed (0: none yet).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_good_revision: u64,
    /// The latest rollout.
    #[serde(default, skip_serializing_if = "is_default")]
    pub rollout: RolloutStatus,
    /// The last revisions (at most 10), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RevisionRecord>,
    /// The service's stable virtual IP (from the cluster's service CIDR; none when headless
    /// or when the cluster has no replica networking). Leased by the network controller,
    /// which is this field's only writer; the replication controller keeps it as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_ip: Option<String>,
}

/// A replicated workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Identity.
    pub metadata: Metadata,
    /// Desired state.
    pub spec: ServiceSpec,
    /// Observed state.
    #[serde(default)]
    pub status: ServiceStatus,
}

impl Service {
    /// The service `name` in the default namespace with `spec` (no status yet).
    pub fn new(name: impl Into<String>, spec: ServiceSpec) -> Service {
        Service {
            metadata: Metadata {
                name: name.into(),
                namespace: DEFAULT_NAMESPACE.into(),
                ..Metadata::default()
            },
            spec,
            status: ServiceStatus::default(),
        }
    }
}

/// Whether a replica should be running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DesiredState {
    /// Keep it running.
    #[default]
    Running,
    /// Stop it, then delete the replica object.
    Stopped,
}

/// The life-cycle phase of a replica.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Phase {
    /// Not yet placed on a node, or placed and not yet started.
    #[default]
    Pending,
    /// The node is starting it.
    Starting,
    /// Its process runs, not yet ready.
    Running,
    /// Running and ready to serve.
    Ready,
    /// It exited with an error or could not start; may be restarted.
    Failed,
    /// It exited and will not be restarted.
    Exited,
    /// Its node stopped reporting.
    Lost,
    /// It is being stopped.
    Stopping,
}

impl Phase {
    /// Whether the workload is up (running or ready).
    pub fn is_up(self) -> bool {
        matches!(self, Phase::Running | Phase::Ready)
    }
    /// The phase's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Starting => "Starting",
            Phase::Running => "Running",
            Phase::Ready => "Ready",
            Phase::Failed => "Failed",
            Phase::Exited => "Exited",
            Phase::Lost => "Lost",
            Phase::Stopping => "Stopping",
        }
    }
}

/// How a workload's process ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitStatus {
    /// The exit code, when it exited by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal that killed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Killed by the kernel for exceeding its memory limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
}

impl ExitStatus {
    /// Exit code 0 and no signal.
    pub fn success(&self) -> bool {
        self.code == Some(0) && self.signal.is_none()
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.oom_killed {
            return f.write_str("OOMKilled");
        }
        match (self.code, self.signal) {
            (_, Some(s)) => write!(f, "signal {s}"),
            (Some(c), None) => write!(f, "exit code {c}"),
            (None, None) => f.write_str("unknown"),
        }
    }
}

/// A port a running replica was given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BoundPort {
    /// The template's port name.
    pub name: String,
    /// The host port.
    pub port: u16,
}

/// The desired state of one replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaSpec {
    /// The service or job it belongs to (a string in the store: `NAME` or `job:NAME`).
    pub service: Owner,
    /// The service revision it was made from ([`ServiceSpec::revision_hash`]: template and
    /// placement).
    pub template_hash: String,
    /// What it runs (the service template at creation). Shared: the engine's cache gives
    /// every replica of one revision the same copy.
    pub template: Arc<Template>,
    /// Placement constraints copied from the service (shared like `template`).
    #[serde(default, skip_serializing_if = "is_default_arc")]
    pub placement: Arc<Placement>,
    /// The node it is bound to; empty while pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Running, or Stopped (then deleted).
    #[serde(default, skip_serializing_if = "is_default")]
    pub desired: DesiredState,
}

/// What orch observed of one replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Life-cycle phase.
    #[serde(default)]
    pub phase: Phase,
    /// A machine-readable reason (`Unschedulable`, `BackOff`, `StartError`).
    #[serde(default, skip_serializing_if = "Reason::is_empty")]
    pub reason: Reason,
    /// A human-readable explanation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// How many times the node restarted it.
    #[serde(default)]
    pub restarts: u32,
    /// How its last run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ExitStatus>,
    /// The address of the node it runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// Its own address (in its own network namespace), when it has one; its ports are then
    /// at this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Ports it was given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<BoundPort>,
    /// The runtime's handle (a process id, a container id).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime_id: String,
    /// When the current run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// Probe results of the current run (`readiness: passing`,
    /// `liveness: failing (2 consecutive, threshold 3): ...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<String>,
}

impl ReplicaStatus {
    /// Where its ports are reached: its own address, else its node's.
    pub fn reach_ip(&self) -> Option<&str> {
        self.ip.as_deref().or(self.host_ip.as_deref())
    }

    /// `ip:port` of the first port, if any (its own address, else its node's).
    pub fn address(&self) -> Option<String> {
        let ip = self.reach_ip()?;
        self.ports.first().map(|p| format!("{ip}:{}", p.port))
    }
}

/// One scheduled instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Replica {
    /// Identity.
    pub metadata: Metadata,
    /// Desired state.
    pub spec: ReplicaSpec,
    /// Observed state.
    #[serde(default)]
    pub status: ReplicaStatus,
}

impl Replica {
    /// The id runtimes know it by: `namespace.name`.
    pub fn runtime_name(&self) -> String {
        format!("{}.{}", self.metadata.namespace, self.metadata.name)
    }
}

/// Whether a node is reporting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeCondition {
    /// Heartbeats arrive.
    #[default]
    Ready,
    /// Heartbeats stopped for longer than the grace period.
    Unreachable,
}

/// Operator intent for a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// Cordoned: no new replicas are placed here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unschedulable: bool,
    /// Being drained (`orchctl node drain`): its replicas are replaced elsewhere at the pace
    /// of each service's update settings, as in a rolling update. Implies `unschedulable`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// Marks that repel replicas not tolerating them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// The node's share of the cluster network, leased by the manager's network controller
    /// (its only writer) once the node registers; kept across restarts, released with the
    /// node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NodeNetwork>,
}

/// A node's lease of the cluster network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeNetwork {
    /// The subnet its replicas get addresses from (`10.244.3.0/24`).
    pub subnet: String,
    /// The cluster CIDR it was leased from: traffic inside it is not masqueraded.
    pub cluster_cidr: String,
    /// The cluster's service CIDR (virtual IPs).
    pub service_cidr: String,
    /// How nodes reach each other's subnets.
    #[serde(default)]
    pub mode: NetworkMode,
}

/// How nodes reach each other's replica subnets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    /// A kernel VXLAN device with a static route, neighbour and FDB entry per peer (flannel's
    /// scheme); works across routed networks; MTU reduced by 50 bytes.
    #[default]
    Vxlan,
    /// A route per peer subnet via the peer's address: nodes must share an L2 segment.
    HostGw,
}

impl NetworkMode {
    /// `vxlan` or `host-gw`.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Vxlan => "vxlan",
            NetworkMode::HostGw => "host-gw",
        }
    }
}

impl std::str::FromStr for NetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vxlan" => Ok(NetworkMode::Vxlan),
            "host-gw" => Ok(NetworkMode::HostGw),
            other => Err(format!(
                "network mode {other:?} is not known: use vxlan or host-gw"
            )),
        }
    }
}

/// What a node's agent reports about its replica networking.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetworkStatus {
    /// Containers get a network of their own here.
    #[serde(default)]
    pub ready: bool,
    /// What is set up (`vxlan, subnet 10.244.3.0/24, 2 peers`) or why not (`host network:
    /// no CNI plugin bridge in /usr/lib/cni`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// What a node reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Addresses replicas on this node are reached at.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// What the machine has.
    #[serde(default)]
    pub capacity: Resources,
    /// Most replicas the node accepts.
    #[serde(default)]
    pub max_replicas: u32,
    /// Runtimes the node offers (`process`, `containerd`).
    #[serde(default)]
    pub runtimes: Vec<String>,
    /// Reporting or not.
    #[serde(default)]
    pub condition: NodeCondition,
    /// Last heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Timestamp>,
    /// Whether CPU and memory limits are enforced, and if not why.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub limits: String,
    /// Runtimes this node has but cannot reach right now (`containerd: ...`); it offers them
    /// to nobody until they are back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtime_problems: Vec<String>,
    /// The agent's version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent_version: String,
    /// The named local volumes on the node (replicas using one are placed back here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Where the node's agent serves its manager (`HOST:PORT`; logs and exec of replicas on
    /// other hosts); empty for an agent inside the manager's process.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    /// Its replica networking (none: the agent has none configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NodeNetworkStatus>,
}

/// A machine that runs replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Node {
    /// Identity; labels are what placement matches.
    pub metadata: Metadata,
    /// Operator intent.
    #[serde(default)]
    pub spec: NodeSpec,
    /// Reported state.
    #[serde(default)]
    pub status: NodeStatus,
}

/// The placeholder a secret value shows as outside the store: `<redacted: N bytes>`.
pub(crate) fn redacted_value(v: &str) -> String {
    format!("<redacted: {} bytes>", v.len())
}

/// Whether `v` is [`redacted_value`]'s placeholder (applying it back would lose the secret).
pub(crate) fn is_redacted_placeholder(v: &str) -> bool {
    v.strip_prefix("<redacted: ")
        .and_then(|r| r.strip_suffix(" bytes>"))
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// Sensitive key/values (plain text values). Encrypted at rest when the store is wrapped in
/// `orch_store::encrypted::EncryptedStore` (as orchd does), never shown by `get`, `describe`,
/// diffs or events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Secret {
    /// Identity.
    pub metadata: Metadata,
    /// Key to value.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

/// Plain key/values delivered to replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Identity.
    pub metadata: Metadata,
    /// Key to value.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

/// Normal or Warning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// Expected life-cycle steps.
    #[default]
    Normal,
    /// Something went wrong.
    Warning,
}

/// Names the object an event is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Its kind.
    pub kind: Option<Kind>,
    /// Its namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid, when the recorder knew it: tells the object apart from an earlier one of the
    /// same name (empty in events written before uids were recorded).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// Something that happened to an object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Event {
    /// Identity.
    pub metadata: Metadata,
    /// What it is about.
    pub involved: ObjectRef,
    /// Normal or Warning.
    #[serde(rename = "type", default)]
    pub type_: EventType,
    /// CamelCase reason (`Scheduled`, `Started`, `BackOff`).
    pub reason: String,
    /// Human-readable.
    pub message: String,
    /// Which component said it (`scheduler`, `agent/node-1`).
    #[serde(default)]
    pub source: String,
    /// When it happened.
    pub timestamp: Timestamp,
}

/// Any object, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Object {
    /// A service (boxed: it is the largest kind, and the engine keeps a million replicas in
    /// `Object`s).
    Service(Box<Service>),
    /// A replica.
    Replica(Replica),
    /// A node.
    Node(Node),
    /// A secret.
    Secret(Secret),
    /// A config.
    Config(Config),
    /// An event.
    Event(Event),
    /// A job (boxed like services).
    Job(Box<Job>),
    /// A route.
    Route(Box<Route>),
    /// A cron job (boxed like jobs).
    CronJob(Box<CronJob>),
}

impl Object {
    /// The replica, if this is one.
    pub fn as_replica(&self) -> Option<&Replica> {
        match self {
            Object::Replica(r) => Some(r),
            _ => None,
        }
    }

    /// The service, if this is one.
    pub fn as_service(&self) -> Option<&Service> {
        match self {
            Object::Service(s) => Some(s),
            _ => None,
        }
    }

    /// The route, if this is one.
    pub fn as_route(&self) -> Option<&Route> {
        match self {
            Object::Route(r) => Some(r),
            _ => None,
        }
    }

    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::Replica(_) => Kind::Replica,
            Object::Node(_) => Kind::Node,
            Object::Secret(_) => Kind::Secret,
            Object::Config(_) => Kind::Config,
            Object::Event(_) => Kind::Event,
            Object::Job(_) => Kind::Job,
            Object::Route(_) => Kind::Route,
            Object::CronJob(_) => Kind::CronJob,
        }
    }
    /// Its metadata.
    pub fn metadata(&self) -> &Metadata {
        match self {
            Object::Service(o) => &o.metadata,
            Object::Replica(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::Config(o) => &o.metadata,
            Object::Event(o) => &o.metadata,
            Object::Job(o) => &o.metadata,
            Object::Route(o) => &o.metadata,
            Object::CronJob(o) => &o.metadata,
        }
    }
    /// Its metadata, mutably.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        match self {
            Object::Service(o) => &mut o.metadata,
            Object::Replica(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::Secret(o) => &mut o.metadata,
            Object::Config(o) => &mut o.metadata,
            Object::Event(o) => &mut o.metadata,
            Object::Job(o) => &mut o.metadata,
            Object::Route(o) => &mut o.metadata,
            Object::CronJob(o) => &mut o.metadata,
        }
    }
    /// Its store key.
    pub fn key(&self) -> String {
        let m = self.metadata();
        self.kind().key(&m.namespace, &m.name)
    }
    /// `kind/name` as `kubectl` prints it.
    pub fn display_name(&self) -> String {
        format!(
            "{}/{}",
            self.kind().as_str().to_ascii_lowercase(),
            self.metadata().name
        )
    }
    /// Encodes for the store (JSON with `apiVersion`; the revision is left out).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.insert("apiVersion".into(), API_VERSION.into());
            if let Some(md) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                md.remove("revision");
            }
        }
        serde_json::to_vec(&v).unwrap_or_default()
    }
    /// Decodes what [`Object::encode`] wrote and stamps the store revision.
    pub fn decode(bytes: &[u8], revision: u64) -> Result<Object, serde_json::Error> {
        let mut v: serde_json::Value = serde_json::from_slice(bytes)?;
        if let Some(map) = v.as_object_mut() {
            map.remove("apiVersion");
        }
        let mut o: Object = serde_json::from_value(v)?;
        o.metadata_mut().revision = revision;
        Ok(o)
    }
    /// A JSON value with `apiVersion` first, for output.
    pub fn to_display_value(&self) -> serde_json::Value {
        let v = serde_json::to_value(self).unwrap_or_default();
        let mut out = serde_json::Map::new();
        out.insert("apiVersion".into(), API_VERSION.into());
        if let serde_json::Value::Object(m) = v {
            out.extend(m);
        }
        serde_json::Value::Object(out)
    }
}

macro_rules! object_from {
    ($($t:ident),*) => {$(
        impl From<$t> for Object {
            fn from(o: $t) -> Object {
                Object::$t(o)
            }
        }
    )*};
}
object_from!(Replica, Node, Secret, Config, Event);

impl From<Service> for Object {
    fn from(o: Service) -> Object {
        Object::Service(Box::new(o))
    }
}

/// What a job runs and how many times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSpec {
    /// What each replica runs; `restartPolicy` must be `Never` or `OnFailure`.
    pub template: Template,
    /// Where replicas may go.
    #[serde(default, skip_serializing_if = "is_default")]
    pub placement: Placement,
    /// Successful runs needed (default 1).
    #[serde(default = "one")]
    pub completions: u32,
    /// Replicas running at once (default 1).
    #[serde(default = "one")]
    pub parallelism: u32,
    /// Failures tolerated before the job fails (default 6): failed replicas with
    /// `restartPolicy: Never`, restarts with `OnFailure`.
    #[serde(default = "six")]
    pub backoff_limit: u32,
    /// The job fails if it has not succeeded this long after it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline: Option<Span>,
    /// What must hold before the job's first replica is created (as a service's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
}

fn six() -> u32 {
    6
}

/// Where a job stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Replicas are running (or about to).
    #[default]
    Running,
    /// `completions` replicas succeeded.
    Succeeded,
    /// Too many failures, or past its deadline.
    Failed,
}

/// What orch observed of a job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// Where it stands.
    #[serde(default)]
    pub state: JobState,
    /// Replicas running now.
    #[serde(default)]
    pub active: u32,
    /// Replicas that succeeded.
    #[serde(default)]
    pub succeeded: u32,
    /// Failures counted against the backoff limit.
    #[serde(default)]
    pub failed: u32,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Timestamp>,
    /// When it succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Timestamp>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Replicas that run to completion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Job {
    /// Identity.
    pub metadata: Metadata,
    /// What to run.
    pub spec: JobSpec,
    /// Progress.
    #[serde(default)]
    pub status: JobStatus,
}

/// Why a replica is in its phase: `status.reason`, serialized as the CamelCase string it always
/// was (`BackOff`, `Unschedulable`); a string this version does not know loads as
/// [`Reason::Other`], and no reason is an absent field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No reason (the field is left out).
    #[default]
    None,
    /// No node can take it (the scheduler's message says why).
    Unschedulable,
    /// Waiting before restarting a replica that exited.
    BackOff,
    /// Restarting again and again: waiting longer before each restart.
    CrashLoopBackOff,
    /// The runtime could not start it.
    StartError,
    /// Its image could not be pulled.
    ErrImagePull,
    /// Waiting before pulling its image again.
    ImagePullBackOff,
    /// Waiting before trying to start it again.
    StartBackOff,
    /// It exited successfully and is not restarted.
    Completed,
    /// It exited with a failure and is not restarted.
    Error,
    /// Its node cannot run it.
    Unsupported,
    /// It restarted and is settling before it counts as ready.
    Restarted,
    /// Started; waiting for its first (or startup) probe.
    Starting,
    /// Running, but its readiness probe fails.
    NotReady,
    /// Its node was lost.
    NodeLost,
    /// Its node was removed.
    NodeRemoved,
    /// Waiting for its node's replica network (the node's subnet) before it starts.
    NetworkNotReady,
    /// A reason this version does not know, kept as written.
    Other(String),
}

impl Reason {
    /// Every named reason, for parsing.
    const NAMED: [Reason; 16] = [
        Reason::Unschedulable,
        Reason::BackOff,
        Reason::CrashLoopBackOff,
        Reason::StartError,
        Reason::ErrImagePull,
        Reason::ImagePullBackOff,
        Reason::StartBackOff,
        Reason::Completed,
        Reason::Error,
        Reason::Unsupported,
        Reason::Restarted,
        Reason::Starting,
        Reason::NotReady,
        Reason::NodeLost,
        Reason::NodeRemoved,
        Reason::NetworkNotReady,
    ];

    /// The string form (empty for [`Reason::None`]).
    pub fn as_str(&self) -> &str {
        match self {
            Reason::None => "",
            Reason::Unschedulable => "Unschedulable",
            Reason::BackOff => "BackOff",
            Reason::CrashLoopBackOff => "CrashLoopBackOff",
            Reason::StartError => "StartError",
            Reason::ErrImagePull => "ErrImagePull",
            Reason::ImagePullBackOff => "ImagePullBackOff",
            Reason::StartBackOff => "StartBackOff",
            Reason::Completed => "Completed",
            Reason::Error => "Error",
            Reason::Unsupported => "Unsupported",
            Reason::Restarted => "Restarted",
            Reason::Starting => "Starting",
            Reason::NotReady => "NotReady",
            Reason::NodeLost => "NodeLost",
            Reason::NodeRemoved => "NodeRemoved",
            Reason::NetworkNotReady => "NetworkNotReady",
            Reason::Other(s) => s,
        }
    }
    /// Parses the string form; an unknown string is [`Reason::Other`].
    pub fn parse(s: &str) -> Reason {
        if s.is_empty() {
            return Reason::None;
        }
        Reason::NAMED
            .into_iter()
            .find(|r| r.as_str() == s)
            .unwrap_or_else(|| Reason::Other(s.to_string()))
    }
    /// Whether there is no reason.
    pub fn is_empty(&self) -> bool {
        self.as_str().is_empty()
    }
    /// Clears the reason.
    pub fn clear(&mut self) {
        *self = Reason::None;
    }
    /// Whether the replica waits to be started again after it failed to start or exited
    /// (the agent starts it again once the wait is over, through its exit handling).
    pub fn is_start_backoff(&self) -> bool {
        matches!(
            self,
            Reason::BackOff
                | Reason::StartError
                | Reason::ErrImagePull
                | Reason::ImagePullBackOff
                | Reason::StartBackOff
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Reason {
    /// [`Reason::parse`].
    fn from(s: &str) -> Reason {
        Reason::parse(s)
    }
}

impl PartialEq<&str> for Reason {
    /// Compares the string form.
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Reason, D::Error> {
        Ok(Reason::parse(&String::deserialize(d)?))
    }
}

/// What a replica belongs to: a service or a job. Its `spec.service` in the store and in JSON
/// is a string, as before there was this type: the service's name, or `job:NAME` for a job
/// (apart from services' names, which cannot hold a `:`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    /// The service of this name.
    Service(String),
    /// The job of this name.
    Job(String),
}

impl Owner {
    /// The prefix of a job owner's string form.
    const JOB_PREFIX: &'static str = "job:";

    /// Parses the string form: `job:NAME` is a job, anything else a service.
    pub fn parse(s: &str) -> Owner {
        match s.strip_prefix(Owner::JOB_PREFIX) {
            Some(job) => Owner::Job(job.to_string()),
            None => Owner::Service(s.to_string()),
        }
    }
    /// The service's name, if a service owns the replica.
    pub fn service(&self) -> Option<&str> {
        match self {
            Owner::Service(s) => Some(s),
            Owner::Job(_) => None,
        }
    }
    /// The job's name, if a job owns the replica.
    pub fn job(&self) -> Option<&str> {
        match self {
            Owner::Job(j) => Some(j),
            Owner::Service(_) => None,
        }
    }
    /// Whether this is the service `name`.
    pub fn is_service(&self, name: &str) -> bool {
        self.service() == Some(name)
    }
}

impl Default for Owner {
    fn default() -> Self {
        Owner::Service(String::new())
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Service(s) => f.write_str(s),
            Owner::Job(j) => write!(f, "{}{j}", Owner::JOB_PREFIX),
        }
    }
}

impl From<&str> for Owner {
    /// [`Owner::parse`].
    fn from(s: &str) -> Owner {
        Owner::parse(s)
    }
}

impl From<String> for Owner {
    /// [`Owner::parse`].
    fn from(s: String) -> Owner {
        Owner::parse(&s)
    }
}

impl Serialize for Owner {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Owner, D::Error> {
        Ok(Owner::parse(&String::deserialize(d)?))
    }
}

/// The label a job's replicas carry naming their job.
pub const JOB_LABEL: &str = "orch/job";

/// The label every replica carries naming its service.
pub const SERVICE_LABEL: &str = "orch/service";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_versions_move_the_revision_hash_unless_ignored() {
        let mut spec = ServiceSpec::new(
            1,
            Template {
                command: vec!["sh".into()],
                mounts: vec![Mount {
                    path: "/etc/app".into(),
                    config: Some("app".into()),
                    ..Mount::default()
                }],
                ..Template::default()
            },
        );
        let plain = spec.revision_hash(&[]);
        assert_eq!(spec.template.references(), [(false, "app")]);
        let v3 = spec.revision_hash(&["config/app@3".into()]);
        let v4 = spec.revision_hash(&["config/app@4".into()]);
        assert!(
            plain != v3 && v3 != v4,
            "a new config revision is a new revision"
        );
        spec.update.ignore_config_changes = true;
        assert_eq!(
            spec.revision_hash(&["config/app@3".into()]),
            plain,
            "unless the service says so"
        );
    }

    #[test]
    fn an_owner_is_the_same_string_in_json_as_before() {
        for (text, owner) in [
            ("\"web\"", Owner::Service("web".into())),
            ("\"job:backup\"", Owner::Job("backup".into())),
        ] {
            assert_eq!(serde_json::to_string(&owner).unwrap(), text);
            assert_eq!(serde_json::from_str::<Owner>(text).unwrap(), owner);
        }
        assert_eq!(Owner::Job("backup".into()).to_string(), "job:backup");
    }

    #[test]
    fn a_reason_is_the_same_string_in_json_as_before() {
        for r in Reason::NAMED {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(text, format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<Reason>(&text).unwrap(), r);
        }
        let other: Reason = serde_json::from_str("\"SomethingNew\"").unwrap();
        assert_eq!(other, Reason::Other("SomethingNew".into()));
        assert_eq!(serde_json::to_string(&other).unwrap(), "\"SomethingNew\"");
        let st: ReplicaStatus = serde_json::from_str("{}").unwrap();
        assert_eq!(st.reason, Reason::None);
        assert!(!serde_json::to_string(&st).unwrap().contains("reason"));
    }

    #[test]
    fn an_object_key_is_its_store_key() {
        for (text, key) in [
            (
                "/services/default/web",
                ObjectKey::new(Kind::Service, "default", "web"),
            ),
            (
                "/jobs/batch/backup",
                ObjectKey::new(Kind::Job, "batch", "backup"),
            ),
            ("/nodes/node-1", ObjectKey::new(Kind::Node, "", "node-1")),
        ] {
            assert_eq!(ObjectKey::parse(text).as_ref(), Some(&key));
            assert_eq!(key.to_string(), text);
        }
        for bad in [
            "",
            "/",
            "/services",
            "/services/web",
            "/nothing/default/web",
        ] {
            assert_eq!(ObjectKey::parse(bad), None, "{bad}");
        }
    }
}

/// The desired state of a route: a stable name (its DNS name, and per-replica names under it),
/// a virtual IP (unless `headless`) and port mappings over the replicas in its namespace whose
/// labels match `selector`, whatever service, job or ordered service owns them. What
/// Kubernetes calls a Service; an orch Service is a Deployment and a Service in one. Where a
/// route and a service share a name, the name answers the route's addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// Which replicas are its endpoints (Ready ones only); must not be empty.
    pub selector: LabelSelector,
    /// Its ports; at least one unless `headless`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<RoutePort>,
    /// No virtual IP: its name resolves to its endpoints' own addresses.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub headless: bool,
    /// Every node also listens on each port's `nodePort` (Kubernetes' NodePort).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub node_ports: bool,
}

/// One port of a route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoutePort {
    /// A name, unique within the route (required when it has several ports).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The port on the virtual IP.
    pub port: u16,
    /// Where connections go on each endpoint: a number, or the name of a port of the
    /// endpoint's template (resolved per endpoint); default: `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<ProbePort>,
    /// TCP or UDP.
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: Protocol,
    /// With `nodePorts`: the port every node listens on (30000–32767); default: the lowest free
    /// one, recorded in the route's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

/// What orch observed of a route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// The address its name resolves to and the nodes balance (none when headless or without
    /// a cluster network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_ip: Option<String>,
    /// Ready endpoints now.
    #[serde(default)]
    pub endpoints: u32,
    /// The node port of each port (by port name, or the port number when unnamed), chosen or
    /// given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_ports: BTreeMap<String, u16>,
    /// Why something is not as asked (no endpoints, a node port taken).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A stable name and virtual IP over replicas picked by labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// Identity.
    pub metadata: Metadata,
    /// What it selects and exposes.
    pub spec: RouteSpec,
    /// What orch observed.
    #[serde(default)]
    pub status: RouteStatus,
}

/// What a cron job does when a run is due while an earlier one still runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConcurrencyPolicy {
    /// Start it anyway (the default).
    #[default]
    Allow,
    /// Skip the new run.
    Forbid,
    /// Stop the running job and start the new one.
    Replace,
}

/// The desired state of a cron job (Kubernetes' CronJob).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CronJobSpec {
    /// When runs are due: five cron fields (minute hour day-of-month month day-of-week) or a
    /// macro (`@hourly`, `@daily`, ...), in UTC unless `timeZone`.
    pub schedule: String,
    /// An IANA time zone name for `schedule` (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// What each run is: a job with this spec, named `NAME-<minutes since the epoch>`.
    pub job: JobSpec,
    /// Allow, Forbid or Replace.
    #[serde(default, skip_serializing_if = "is_default")]
    pub concurrency_policy: ConcurrencyPolicy,
    /// No new runs while set (running ones go on).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// A run not started within this long of its time is skipped (missed while orch was
    /// down); default: no limit, but at most one missed run is started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline: Option<Span>,
    /// Finished successful jobs kept (default 3); older ones are deleted.
    #[serde(default = "three")]
    pub successful_jobs_history_limit: u32,
    /// Finished failed jobs kept (default 1).
    #[serde(default = "one")]
    pub failed_jobs_history_limit: u32,
}

fn three() -> u32 {
    3
}

/// What orch observed of a cron job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CronJobStatus {
    /// The jobs of it that run now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<String>,
    /// The time of the last run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule: Option<Timestamp>,
    /// When its last job succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful: Option<Timestamp>,
    /// Why a run was skipped or could not start.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Jobs created on a schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CronJob {
    /// Identity.
    pub metadata: Metadata,
    /// When and what to run.
    pub spec: CronJobSpec,
    /// What orch observed.
    #[serde(default)]
    pub status: CronJobStatus,
}

impl From<Job> for Object {
    fn from(o: Job) -> Object {
        Object::Job(Box::new(o))
    }
}

impl From<Route> for Object {
    fn from(o: Route) -> Object {
        Object::Route(Box::new(o))
    }
}

impl From<CronJob> for Object {
    fn from(o: CronJob) -> Object {
        Object::CronJob(Box::new(o))
    }
}
