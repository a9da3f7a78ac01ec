//! Requests and responses. One request per connection; most get one response, `watch` and
//! `logs` with `follow` get a stream ended by `End` or `Error`.

use serde::{Deserialize, Serialize};

use orch_core::model::object::{Kind, Object};

/// The largest request or response line, in bytes.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// One manifest file's text, named so errors can point at it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestText {
    /// The file name (or `-` for standard input).
    pub source: String,
    /// Its contents.
    pub text: String,
}

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// Apply manifests, all or nothing.
    Apply {
        /// The manifests.
        manifests: Vec<ManifestText>,
        /// Validate and report, write nothing.
        #[serde(default)]
        dry_run: bool,
        /// The namespace for objects that name none (`orchctl -n`); a document naming
        /// another one is refused. `None`: `default`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
    },
    /// Where the replicas of these manifests would go; writes nothing.
    Plan {
        /// The manifests.
        manifests: Vec<ManifestText>,
        /// As for `Apply`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
    },
    /// List objects (or one, with `name`).
    Get {
        /// The kind.
        kind: Kind,
        /// A namespace, or all when `None`.
        namespace: Option<String>,
        /// One object's name.
        name: Option<String>,
    },
    /// Delete one object.
    Delete {
        /// The kind.
        kind: Kind,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Set a service's replica count.
    Scale {
        /// Namespace.
        namespace: String,
        /// Service name.
        name: String,
        /// Desired replicas.
        replicas: i64,
    },
    /// Stream changes of a kind: the current objects first (as `Added`), then changes.
    Watch {
        /// The kind.
        kind: Kind,
        /// A namespace, or all when `None`.
        namespace: Option<String>,
        /// Resume: no initial listing, only changes after this store revision (each watched
        /// object carries its revision in `metadata.revision`). Too old a revision is an
        /// error saying so; list again then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    /// A replica's logs.
    Logs {
        /// Namespace.
        namespace: String,
        /// Replica name.
        replica: String,
        /// Keep streaming.
        follow: bool,
        /// At most the last this many bytes, from a line start.
        tail_bytes: Option<u64>,
        /// The last this many lines.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tail_lines: Option<u64>,
    },
    /// Run a command inside a running replica (captured output, not interactive).
    Exec {
        /// Namespace.
        namespace: String,
        /// Replica name.
        replica: String,
        /// Program and arguments.
        command: Vec<String>,
        /// Kill it after this many seconds (1 to 3600).
        timeout_secs: u64,
    },
    /// Import an image from an OCI image layout tarball on the daemon's machine into every
    /// node this daemon runs (for nodes without a registry).
    ImportImage {
        /// Absolute path of the archive.
        path: String,
        /// The name to record it under (default: the archive's ref name).
        name: Option<String>,
    },
    /// What a replica's start is waiting for (an image pull), while it waits.
    Progress {
        /// Namespace.
        namespace: String,
        /// Replica name.
        replica: String,
    },
    /// Undo, pause or resume a service's rollout.
    Rollout {
        /// Namespace.
        namespace: String,
        /// Service name.
        name: String,
        /// What to do.
        action: orch_core::engine::api::RolloutAction,
    },
    /// Cordon, uncordon, drain or remove a node.
    Node {
        /// The node.
        node: String,
        /// What to do.
        action: orch_core::engine::api::NodeOp,
    },
    /// Remove a named local volume (its directory and data) from a node.
    VolumeRemove {
        /// The volume.
        name: String,
        /// The node; default: the only node that holds it.
        node: Option<String>,
    },
    /// What the daemon is.
    Info,
    /// The managers of the cluster: which leads, their etcd members and health.
    Managers,
    /// Remove a manager: its etcd member and its record (refused for the last manager and
    /// for the one answering).
    ManagerRemove {
        /// The manager's name.
        name: String,
    },
}

/// A manager's part in the election, as `orchctl get managers` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ManagerRole {
    /// It runs the control plane.
    Leader,
    /// It serves the API and waits to lead.
    Standby,
    /// An etcd member whose manager is not running (no record).
    Down,
}

impl std::fmt::Display for ManagerRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ManagerRole::Leader => "leader",
            ManagerRole::Standby => "standby",
            ManagerRole::Down => "down",
        })
    }
}

/// One row of `orchctl get managers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagerStatus {
    /// The manager's name (or the etcd member's, for one whose manager is down).
    pub name: String,
    /// Its cluster address (empty when down).
    pub address: String,
    /// Leader, standby or down.
    pub role: ManagerRole,
    /// Its etcd member id (hex), when it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_member: Option<String>,
    /// That member's health: `healthy`, or `unhealthy: WHY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_health: Option<String>,
    /// Whether that member is the etcd (raft) leader.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub etcd_leader: bool,
    /// When it started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// Its orchd version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// Bad input; nothing was changed.
    Invalid,
    /// No such object.
    NotFound,
    /// Lost a race; retry.
    Conflict,
    /// The store or a runtime is unavailable; retry later.
    Unavailable,
    /// Over a size limit.
    TooLarge,
    /// A bug or an unexpected failure.
    Internal,
}

/// A watch event's type, as kubectl prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchType {
    /// Present at the start, or created.
    Added,
    /// Changed.
    Modified,
    /// Deleted.
    Deleted,
}

/// One applied object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// `service/web`.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// created, configured, unchanged.
    pub action: String,
    /// For `configured`: each changed field, `path: old → new` (secret values redacted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// Fields of this object's document the server ignored (those orch sets itself, such as
    /// `status`), each as `SOURCE: document N: PATH: ignored: set by orch, not by manifests`
    /// (a client prints them, so it need not parse the manifests itself to warn). Absent
    /// when there are none, and from servers older than this field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// What the daemon answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
#[allow(clippy::large_enum_variant)]
pub enum Response {
    /// Result of `Apply`.
    Applied {
        /// Per object.
        results: Vec<Applied>,
        /// Dry run: nothing was written.
        dry_run: bool,
    },
    /// Result of `Plan`.
    Plan {
        /// Per service, where its replicas would go.
        plan: orch_core::engine::api::PlacementPlan,
    },
    /// Result of `Get`.
    Objects {
        /// The objects.
        objects: Vec<Object>,
        /// The store revision they were read at.
        revision: u64,
    },
    /// Result of `Delete` or `Scale`: the object as it was written or deleted.
    Done {
        /// The object.
        object: Object,
    },
    /// One watch event.
    Watch {
        /// Added, modified, deleted.
        event: WatchType,
        /// The object (last version for deletes).
        object: Object,
    },
    /// A chunk of logs (lossy UTF-8).
    Log {
        /// The text.
        data: String,
    },
    /// Result of `Info`.
    Info {
        /// orchd version.
        version: String,
        /// Which store (`memory`, `embedded:/path`).
        store: String,
        /// `available (revision N)`, or `unavailable: why`.
        #[serde(default)]
        store_health: String,
        /// Nodes this daemon runs agents for.
        nodes: Vec<String>,
    },
    /// Result of `Exec`.
    Exec {
        /// Exit code, when it exited by itself.
        code: Option<i32>,
        /// Signal that ended it.
        signal: Option<i32>,
        /// Killed for running past its timeout.
        timed_out: bool,
        /// Standard output (lossy UTF-8, at most 1 MiB).
        stdout: String,
        /// Standard error (lossy UTF-8, at most 1 MiB).
        stderr: String,
    },
    /// Result of `ImportImage`: the image's name, per node.
    Imported {
        /// `(node, name)`.
        images: Vec<(String, String)>,
    },
    /// Result of `Progress`.
    Progress {
        /// `pulling IMAGE: 12.3 of 45.6 MB (...)`, or nothing when no start is waiting.
        text: Option<String>,
    },
    /// Result of `VolumeRemove`: what was removed where.
    VolumeRemoved {
        /// The volume.
        name: String,
        /// The node it was on.
        node: String,
    },
    /// Result of `Managers`.
    Managers {
        /// By name.
        managers: Vec<ManagerStatus>,
    },
    /// Result of `ManagerRemove`.
    ManagerRemoved {
        /// The manager.
        name: String,
        /// Its etcd member (hex id), removed with it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        etcd_member: Option<String>,
    },
    /// End of a stream.
    End,
    /// The request failed.
    Error {
        /// Category.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
}
