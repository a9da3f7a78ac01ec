//! Server-side operations on objects, shared by every front end (the daemon's API, `orchd up`,
//! embedding programs): apply (all-or-nothing, idempotent), delete, scale.

use std::fmt;

use crate::model::object::{new_uid, redacted_value, Kind, Object, MAX_REPLICAS};
use crate::model::quantity::Timestamp;
use crate::model::validate::validate;
use crate::store::{create_op, get_object, update_op, Op, Store, StoreError};

/// What apply did to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyAction {
    /// It did not exist.
    Created,
    /// Its spec, labels or annotations changed.
    Configured,
    /// Nothing changed.
    Unchanged,
}

impl fmt::Display for ApplyAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ApplyAction::Created => "created",
            ApplyAction::Configured => "configured",
            ApplyAction::Unchanged => "unchanged",
        })
    }
}

/// Errors of the operations here.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The object is invalid; nothing was applied.
    #[error("{0}")]
    Invalid(String),
    /// No such object.
    #[error("{}", not_found(*kind, namespace, name))]
    NotFound {
        /// Its kind.
        kind: Kind,
        /// Its namespace (empty for kinds without one, such as nodes).
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `service "web" not found in namespace "dev"`; `node "n1" not found` for kinds that have
/// no namespace (they are never said to be in one).
pub fn not_found(kind: Kind, namespace: &str, name: &str) -> String {
    let what = kind.as_str().to_ascii_lowercase();
    if kind.namespaced() {
        format!("{what} {name:?} not found in namespace {namespace:?}")
    } else {
        format!("{what} {name:?} not found")
    }
}

fn same_desired(a: &Object, b: &Object) -> bool {
    let (ma, mb) = (a.metadata(), b.metadata());
    if ma.labels != mb.labels || ma.annotations != mb.annotations {
        return false;
    }
    match (a, b) {
        (Object::Service(x), Object::Service(y)) => x.spec == y.spec,
        (Object::Secret(x), Object::Secret(y)) => x.data == y.data,
        (Object::Config(x), Object::Config(y)) => x.data == y.data,
        (Object::Job(x), Object::Job(y)) => x.spec == y.spec,
        (Object::Route(x), Object::Route(y)) => x.spec == y.spec,
        _ => false,
    }
}

/// Merges a user's object into what is stored: user fields replace, orch fields are kept.
fn merge(existing: Option<&Object>, mut desired: Object) -> (Object, ApplyAction) {
    let md = desired.metadata_mut();
    md.revision = 0;
    match existing {
        None => {
            md.uid = new_uid();
            md.generation = 1;
            md.creation_timestamp = Some(Timestamp::now());
            md.owner = None;
            if let Object::Service(s) = &mut desired {
                s.status = Default::default();
            }
            if let Object::Route(r) = &mut desired {
                r.status = Default::default();
            }
            (desired, ApplyAction::Created)
        }
        Some(cur) => {
            // A paused rollout stays paused across applies (as with kubectl's apply):
            // `orchctl rollout resume` lifts it.
            if let (Object::Service(c), Object::Service(d)) = (cur, &mut desired) {
                d.spec.update.paused |= c.spec.update.paused;
            }
            if same_desired(cur, &desired) {
                return (cur.clone(), ApplyAction::Unchanged);
            }
            let spec_changed = match (cur, &desired) {
                (Object::Service(x), Object::Service(y)) => x.spec != y.spec,
                _ => true,
            };
            let cm = cur.metadata();
            let md = desired.metadata_mut();
            md.uid = cm.uid.clone();
            md.creation_timestamp = cm.creation_timestamp;
            md.owner = cm.owner.clone();
            md.revision = cm.revision;
            md.generation = cm.generation + u64::from(spec_changed);
            if let (Object::Service(c), Object::Service(d)) = (cur, &mut desired) {
                d.status = c.status.clone();
            }
            if let (Object::Job(c), Object::Job(d)) = (cur, &mut desired) {
                d.status = c.status.clone();
            }
            // A route's status (virtual IP, node ports, endpoints) is the controllers'.
            if let (Object::Route(c), Object::Route(d)) = (cur, &mut desired) {
                d.status = c.status.clone();
            }
            (desired, ApplyAction::Configured)
        }
    }
}

/// What [`apply`] did to one object.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The object as written (or as stored, when unchanged).
    pub object: Object,
    /// Created, configured or unchanged.
    pub action: ApplyAction,
    /// For `Configured`: the version the compare-and-swap replaced (so a diff against it
    /// shows exactly what this apply changed, even when other writers raced with it).
    pub previous: Option<Object>,
}

impl Applied {
    /// What this apply changed, field by field; empty unless configured.
    pub fn changes(&self) -> Vec<String> {
        match (&self.action, &self.previous) {
            (ApplyAction::Configured, Some(old)) => diff(old, &self.object),
            _ => Vec::new(),
        }
    }
}

/// Applies objects as one all-or-nothing transaction (retried on conflicts). With `dry_run`,
/// reports what would happen and writes nothing.
pub async fn apply(
    store: &dyn Store,
    objects: Vec<Object>,
    dry_run: bool,
) -> Result<Vec<Applied>, ApiError> {
    for o in &objects {
        if !Kind::APPLICABLE.contains(&o.kind()) {
            return Err(ApiError::Invalid(format!(
                "{}: kind {} cannot be applied; allowed: Service, Secret, Config, Job",
                o.display_name(),
                o.kind()
            )));
        }
        let problems = validate(o);
        if !problems.is_empty() {
            let msgs: Vec<String> = problems
                .iter()
                .map(|p| format!("{}: {p}", o.display_name()))
                .collect();
            return Err(ApiError::Invalid(msgs.join("\n")));
        }
    }
    check_published_ports(store, &objects).await?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut ops: Vec<Op> = Vec::new();
        let mut results = Vec::new();
        for o in &objects {
            let m = o.metadata();
            let cur = get_object(store, o.kind(), &m.namespace, &m.name).await?;
            let (merged, action) = merge(cur.as_ref(), o.clone());
            match action {
                ApplyAction::Created => ops.push(create_op(&merged)),
                ApplyAction::Configured => ops.push(update_op(&merged)),
                ApplyAction::Unchanged => {}
            }
            // Each write compares against `cur`'s revision: when the transaction commits,
            // `cur` is exactly the version it replaced.
            results.push(Applied {
                object: merged,
                action,
                previous: cur.filter(|_| action == ApplyAction::Configured),
            });
        }
        if dry_run || ops.is_empty() {
            return Ok(results);
        }
        match store.txn(ops).await {
            Ok(_) => return Ok(results),
            Err(
                StoreError::Conflict { .. }
                | StoreError::AlreadyExists { .. }
                | StoreError::NotFound { .. },
            ) if attempt < 10 => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Refuses a published port another service publishes, or uses as a fixed host port (every
/// node listens on a published port, so it collides on every node), naming both services.
/// A container's fixed `port` is in its own network namespace, not a host port
/// ([`Template::host_ports`](crate::model::object::Template::host_ports)): Compose's
/// `ports: ["6379:6379"]` publishes 6379 on the nodes for a container listening on 6379.
async fn check_published_ports(store: &dyn Store, objects: &[Object]) -> Result<(), ApiError> {
    let applied: Vec<&crate::model::object::Service> =
        objects.iter().filter_map(|o| o.as_service()).collect();
    if applied.iter().all(|s| s.spec.publish.is_empty())
        && applied
            .iter()
            .all(|s| s.spec.template.ports.iter().all(|p| p.port.is_none()))
    {
        return Ok(());
    }
    let (stored, _) = crate::store::list_objects(store, Kind::Service, None).await?;
    let id =
        |s: &crate::model::object::Service| (s.metadata.namespace.clone(), s.metadata.name.clone());
    // What every service will have after this apply: the applied version replaces the stored.
    let mut all: Vec<&crate::model::object::Service> = applied.clone();
    for o in &stored {
        if let Some(s) = o.as_service() {
            if !applied.iter().any(|a| id(a) == id(s)) {
                all.push(s);
            }
        }
    }
    let mut problems = Vec::new();
    for s in &applied {
        for (i, p) in s.spec.publish.iter().enumerate() {
            for other in &all {
                let same = id(other) == id(s);
                if !same && other.spec.publish.iter().any(|q| q.port == p.port) {
                    problems.push(format!(
                        "Service {}/{}: spec.publish[{i}].port: {} is already published by service {}/{}",
                        s.metadata.namespace, s.metadata.name, p.port,
                        other.metadata.namespace, other.metadata.name
                    ));
                }
                if other.spec.template.host_ports().any(|(_, q)| q == p.port) {
                    problems.push(format!(
                        "Service {}/{}: spec.publish[{i}].port: {} is the fixed host port of service {}/{}'s replicas; a published port is taken on every node",
                        s.metadata.namespace, s.metadata.name, p.port,
                        other.metadata.namespace, other.metadata.name
                    ));
                }
            }
        }
        let on_host = s.spec.template.image.is_none() || s.spec.template.host_network;
        for (i, tp) in s.spec.template.ports.iter().enumerate() {
            let Some(port) = tp.port.filter(|_| on_host) else {
                continue;
            };
            for other in &all {
                if id(other) != id(s) && other.spec.publish.iter().any(|q| q.port == port) {
                    problems.push(format!(
                        "Service {}/{}: spec.template.ports[{i}].port: {port} is published by service {}/{} on every node",
                        s.metadata.namespace, s.metadata.name,
                        other.metadata.namespace, other.metadata.name
                    ));
                }
            }
        }
    }
    problems.dedup();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(problems.join("\n")))
    }
}

/// Deletes one object. Deleting a service makes its replicas stop (the replication
/// controller marks them; their agents stop and delete them).
pub async fn delete(
    store: &dyn Store,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> Result<Object, ApiError> {
    loop {
        let Some(cur) = get_object(store, kind, namespace, name).await? else {
            return Err(ApiError::NotFound {
                kind,
                namespace: namespace.into(),
                name: name.into(),
            });
        };
        match store.txn(vec![crate::store::delete_op(&cur)]).await {
            Ok(_) => return Ok(cur),
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound { .. }) => {
                return Err(ApiError::NotFound {
                    kind,
                    namespace: namespace.into(),
                    name: name.into(),
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sets a service's replica count.
pub async fn scale(
    store: &dyn Store,
    namespace: &str,
    name: &str,
    replicas: i64,
) -> Result<Object, ApiError> {
    if !(0..=MAX_REPLICAS).contains(&replicas) {
        return Err(ApiError::Invalid(format!(
            "replicas: invalid value {replicas}: must be a whole number from 0 to {MAX_REPLICAS}"
        )));
    }
    update_service(store, namespace, name, |svc| {
        if svc.spec.replicas == replicas as u32 {
            return Ok(false);
        }
        svc.spec.replicas = replicas as u32;
        Ok(true)
    })
    .await
}

/// Reads service `namespace/name`, lets `change` edit it (returning whether it changed
/// anything), and writes it back with its generation bumped, by compare-and-swap (read again
/// and retried on a conflict). Returns the service as written (or as it was, unchanged).
async fn update_service(
    store: &dyn Store,
    namespace: &str,
    name: &str,
    mut change: impl FnMut(&mut crate::model::object::Service) -> Result<bool, ApiError>,
) -> Result<Object, ApiError> {
    loop {
        let Some(Object::Service(mut svc)) =
            get_object(store, Kind::Service, namespace, name).await?
        else {
            return Err(ApiError::NotFound {
                kind: Kind::Service,
                namespace: namespace.into(),
                name: name.into(),
            });
        };
        if !change(&mut svc)? {
            return Ok(Object::Service(svc));
        }
        svc.metadata.generation += 1;
        let obj = Object::Service(svc);
        match store.txn(vec![update_op(&obj)]).await {
            Ok(_) => return Ok(obj),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Where one new (or still unplaced) replica would go.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedReplica {
    /// The replica: an existing pending one's name, or `new-N` for one apply would create.
    pub replica: String,
    /// The node it would be bound to; `None`: it would stay pending.
    pub node: Option<String>,
    /// Why it would stay pending ("0/3 nodes are available: ...").
    pub reason: String,
}

/// What apply would do to one service's replicas.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePlan {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// created, configured or unchanged.
    pub action: String,
    /// Running replicas of the current template that stay as they are.
    pub kept: u32,
    /// Replicas that would be stopped (scale-down, or replaced by a rolling update).
    pub stopped: u32,
    /// Replicas to place, and where each would go.
    pub placements: Vec<PlannedReplica>,
}

/// The outcome of [`plan`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementPlan {
    /// The scheduler that decided.
    pub scheduler: String,
    /// One entry per service in the input, in input order.
    pub services: Vec<ServicePlan>,
}

/// Plans an apply without changing anything: validates `objects` as [`apply`] does, then asks
/// `scheduler` where every replica the services would need goes, on the cluster as stored now.
///
/// The model is the replication controller's end state: each service keeps its bound replicas
/// of the current template (up to `replicas`), creates the rest and stops the others. Replicas
/// being replaced stay counted on their nodes (as during a start-first rolling update), so the
/// plan never promises room that only a stop would free. Every planned replica of every
/// service goes through one scheduling pass, as the engine does.
pub async fn plan(
    store: &dyn Store,
    scheduler: &dyn crate::scheduler::Scheduler,
    objects: Vec<Object>,
    seed: u64,
) -> Result<PlacementPlan, ApiError> {
    use crate::model::object::{DesiredState, Phase, Replica};
    use crate::scheduler::{ClusterSnapshot, PendingReplica};
    use crate::store::list_objects;

    let merged = apply(store, objects, true).await?;
    let (nodes, _) = list_objects(store, Kind::Node, None).await?;
    let (replicas, _) = list_objects(store, Kind::Replica, None).await?;
    let nodes: Vec<_> = nodes
        .into_iter()
        .filter_map(|o| match o {
            Object::Node(n) => Some(n),
            _ => None,
        })
        .collect();
    let replicas: Vec<Replica> = replicas
        .into_iter()
        .filter_map(|o| match o {
            Object::Replica(r)
                if r.spec.desired == DesiredState::Running && r.status.phase != Phase::Lost =>
            {
                Some(r)
            }
            _ => None,
        })
        .collect();
    let snapshot =
        ClusterSnapshot::build(&nodes, replicas.iter().filter(|r| r.spec.node.is_some()));
    let mut services = Vec::new();
    let mut pending = Vec::new();
    // Which service plan and which replica each pending key belongs to.
    let mut owners: Vec<(usize, String)> = Vec::new();
    for Applied { object, action, .. } in merged {
        let Object::Service(svc) = object else {
            continue;
        };
        // The revisions of the secrets and configs it uses count, as the controller counts them.
        let mut revs = std::collections::HashMap::new();
        for (secret, name) in svc.spec.template.references() {
            let kind = if secret { Kind::Secret } else { Kind::Config };
            let rev = get_object(store, kind, &svc.metadata.namespace, name)
                .await?
                .map(|o| o.metadata().revision)
                .unwrap_or(0);
            revs.insert((secret, name.to_string()), rev);
        }
        let versions = svc.spec.template.config_versions(|secret, name| {
            revs.get(&(secret, name.to_string())).copied().unwrap_or(0)
        });
        let hash = svc.spec.revision_hash(&versions);
        let mine: Vec<&Replica> = replicas
            .iter()
            .filter(|r| {
                r.metadata.namespace == svc.metadata.namespace
                    && r.spec.service.is_service(&svc.metadata.name)
            })
            .collect();
        let want = svc.spec.replicas as usize;
        let (current, _old): (Vec<&Replica>, Vec<&Replica>) =
            mine.iter().partition(|r| r.spec.template_hash == hash);
        let (bound, unbound): (Vec<&Replica>, Vec<&Replica>) =
            current.iter().partition(|r| r.spec.node.is_some());
        let kept = bound.len().min(want);
        let index = services.len();
        let mut to_place: Vec<(String, Replica)> = unbound
            .iter()
            .take(want - kept)
            .map(|r| (r.metadata.name.clone(), (*r).clone()))
            .collect();
        let mut n = 0;
        // An ordered service's new replicas have their ordinal names (per-replica volumes
        // are named after them, and decide where they may go).
        let ordered = svc.spec.mode == crate::model::object::ServiceMode::Ordered;
        let mut missing = (0..svc.spec.replicas)
            .map(|i| crate::engine::replication::ordinal_name(&svc.metadata.name, i))
            .filter(|name| ordered && !mine.iter().any(|r| r.metadata.name == *name));
        while kept + to_place.len() < want {
            n += 1;
            let r = match missing.next() {
                Some(name) => crate::engine::replication::new_replica_named(&svc, &versions, name),
                None => crate::engine::replication::new_replica(&svc, &versions),
            };
            to_place.push((format!("new-{n}"), r));
        }
        let placed_now = kept
            + to_place
                .iter()
                .filter(|(name, _)| !name.starts_with("new-"))
                .count();
        for (name, r) in to_place {
            let key = format!("plan/{index}/{}", owners.len());
            pending.push(PendingReplica::from_replica(&r, key));
            owners.push((index, name));
        }
        services.push(ServicePlan {
            namespace: svc.metadata.namespace.clone(),
            name: svc.metadata.name.clone(),
            action: action.to_string(),
            kept: kept as u32,
            stopped: (mine.len() - placed_now) as u32,
            placements: Vec::new(),
        });
    }
    let decided = scheduler.schedule(&snapshot, &pending, seed);
    let slot = |key: &str| -> Option<usize> { key.rsplit('/').next()?.parse().ok() };
    let mut outcome: Vec<Option<PlannedReplica>> = vec![None; owners.len()];
    for (key, node) in &decided.bindings {
        if let Some(i) = slot(key).filter(|i| *i < owners.len()) {
            outcome[i] = Some(PlannedReplica {
                replica: owners[i].1.clone(),
                node: Some(node.clone()),
                reason: String::new(),
            });
        }
    }
    for (key, reason) in &decided.unschedulable {
        if let Some(i) = slot(key).filter(|i| *i < owners.len()) {
            outcome[i] = Some(PlannedReplica {
                replica: owners[i].1.clone(),
                node: None,
                reason: reason.clone(),
            });
        }
    }
    for (i, o) in outcome.into_iter().enumerate() {
        let (index, name) = &owners[i];
        services[*index]
            .placements
            .push(o.unwrap_or_else(|| PlannedReplica {
                replica: name.clone(),
                node: None,
                reason: "the scheduler left it out of its plan".into(),
            }));
    }
    Ok(PlacementPlan {
        scheduler: scheduler.name().to_string(),
        services,
    })
}

/// What `orchctl node ...` does to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeOp {
    /// No new replicas go there.
    Cordon,
    /// New replicas may go there again (and a drain stops).
    Uncordon,
    /// Cordon, and replace its replicas elsewhere at each service's update pace.
    Drain,
    /// Forget the node: its replicas are replaced elsewhere, and a cluster manager refuses
    /// its certificate from now on. Refused while it reports Ready unless `force`.
    Remove {
        /// Remove even a Ready node.
        force: bool,
    },
}

/// Applies `op` to node `name` (compare-and-swap, retried on conflicts); returns the node as
/// it was written (or as it was, for a removal).
pub async fn node_op(store: &dyn Store, name: &str, op: NodeOp) -> Result<Object, ApiError> {
    loop {
        let Some(Object::Node(mut node)) = get_object(store, Kind::Node, "", name).await? else {
            return Err(ApiError::NotFound {
                kind: Kind::Node,
                namespace: String::new(),
                name: name.into(),
            });
        };
        let mut ops = Vec::new();
        match op {
            NodeOp::Cordon => node.spec.unschedulable = true,
            NodeOp::Uncordon => {
                node.spec.unschedulable = false;
                node.spec.draining = false;
            }
            NodeOp::Drain => {
                node.spec.unschedulable = true;
                node.spec.draining = true;
            }
            NodeOp::Remove { force } => {
                if node.status.condition == crate::model::object::NodeCondition::Ready && !force {
                    return Err(ApiError::Invalid(format!(
                        "node {name} is Ready: drain it and stop its agent first, or remove it with --force"
                    )));
                }
                let obj = Object::Node(node.clone());
                ops.push(crate::store::delete_op(&obj));
                let (replicas, _) = crate::store::list_objects(store, Kind::Replica, None).await?;
                for r in replicas {
                    if let Object::Replica(mut r) = r {
                        if r.spec.node.as_deref() == Some(name)
                            && r.status.phase != crate::model::object::Phase::Lost
                        {
                            r.status.phase = crate::model::object::Phase::Lost;
                            r.status.reason = crate::model::object::Reason::NodeRemoved;
                            r.status.message = format!("node {name} was removed");
                            ops.push(update_op(&Object::Replica(r)));
                        }
                    }
                }
                match store.txn(ops).await {
                    Ok(_) => return Ok(obj),
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let obj = Object::Node(node);
        match store.txn(vec![update_op(&obj)]).await {
            Ok(_) => return Ok(obj),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A secret with its values replaced by the placeholder `<redacted: N bytes>`; other objects
/// as they are. What the API returns: secret values reach only the nodes that run replicas
/// using them.
pub fn redact(mut o: Object) -> Object {
    if let Object::Secret(s) = &mut o {
        for v in s.data.values_mut() {
            *v = redacted_value(v);
        }
    }
    o
}

/// What the user changes when `new` replaces `old`: one line per changed field of the parts a
/// user writes (labels, annotations, spec, data), `path: old → new`, sorted; secret values
/// show as `<redacted>`.
pub(crate) fn diff(old: &Object, new: &Object) -> Vec<String> {
    fn user_part(o: &Object) -> serde_json::Value {
        let v = serde_json::to_value(o).unwrap_or_default();
        let mut out = serde_json::Map::new();
        if let Some(md) = v.get("metadata") {
            for k in ["labels", "annotations"] {
                if let Some(x) = md.get(k) {
                    out.insert(format!("metadata.{k}"), x.clone());
                }
            }
        }
        for k in ["spec", "data"] {
            if let Some(x) = v.get(k) {
                out.insert(k.into(), x.clone());
            }
        }
        serde_json::Value::Object(out)
    }
    let secret = old.kind() == Kind::Secret;
    let show = |path: &str, v: Option<&serde_json::Value>| match v {
        None => "(none)".to_string(),
        Some(_) if secret && (path.starts_with("data") || path.contains("stringData")) => {
            "<redacted>".to_string()
        }
        Some(v) => v.to_string(),
    };
    crate::model::jsondiff::changes(&user_part(old), &user_part(new), &show)
}

#[cfg(test)]
mod diff_tests {
    use super::*;

    fn one(text: &str) -> Object {
        crate::model::manifest::parse("x.yaml", text)
            .unwrap()
            .remove(0)
    }

    #[test]
    fn a_diff_names_each_changed_field_and_hides_secrets() {
        let a = one("apiVersion: orch/v1\nkind: Service\nmetadata: {name: web, labels: {tier: a}}\nspec:\n  replicas: 3\n  template:\n    command: [web]\n    env: [{name: COLOR, value: blue}]\n");
        let b = one("apiVersion: orch/v1\nkind: Service\nmetadata: {name: web, labels: {tier: b}}\nspec:\n  replicas: 5\n  template:\n    command: [web]\n    env: [{name: COLOR, value: green}, {name: X, value: z}]\n");
        let d = diff(&a, &b);
        assert!(d.contains(&"spec.replicas: 3 → 5".to_string()), "{d:?}");
        assert!(
            d.contains(&"metadata.labels.tier: \"a\" → \"b\"".to_string()),
            "{d:?}"
        );
        assert!(
            d.contains(&"spec.template.env[0].value: \"blue\" → \"green\"".to_string()),
            "{d:?}"
        );
        assert!(
            d.iter()
                .any(|l| l.starts_with("spec.template.env[1]: (none) → ")),
            "{d:?}"
        );
        assert!(diff(&a, &a).is_empty());
        let s1 = one("apiVersion: orch/v1\nkind: Secret\nmetadata: {name: db}\ndata: {password: aHVudGVyMg==}\n");
        let s2 = one("apiVersion: orch/v1\nkind: Secret\nmetadata: {name: db}\ndata: {password: c3dvcmRmaXNo}\n");
        let d = diff(&s1, &s2);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].contains("<redacted>") && !d[0].contains("aHVu") && !d[0].contains("c3dv"),
            "{d:?}"
        );
    }
}

/// What `orchctl rollout undo|pause|resume` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RolloutAction {
    /// Go back to a revision in the service's history (default: the one before the current).
    Undo {
        /// The revision number.
        to_revision: Option<u64>,
    },
    /// Hold the rollout where it is.
    Pause,
    /// Let it go on.
    Resume,
}

/// Applies a rollout action to service `namespace/name` (compare-and-swap, retried).
pub async fn rollout(
    store: &dyn Store,
    namespace: &str,
    name: &str,
    action: RolloutAction,
) -> Result<Object, ApiError> {
    update_service(store, namespace, name, |svc| {
        match action {
            RolloutAction::Pause => svc.spec.update.paused = true,
            RolloutAction::Resume => svc.spec.update.paused = false,
            RolloutAction::Undo { to_revision } => {
                let h = &svc.status.history;
                let current = svc.status.revision;
                let target = match to_revision {
                    Some(n) => h.iter().find(|r| r.revision == n).ok_or_else(|| {
                        let known: Vec<String> = h.iter().map(|r| r.revision.to_string()).collect();
                        ApiError::Invalid(format!(
                            "--to-revision {n}: service {name} has no such revision (kept: {})",
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        ))
                    })?,
                    None => h
                        .iter()
                        .rev()
                        .find(|r| r.revision != current)
                        .ok_or_else(|| {
                            ApiError::Invalid(format!(
                                "service {name} has no earlier revision to go back to"
                            ))
                        })?,
                };
                if target.revision == current {
                    return Err(ApiError::Invalid(format!(
                        "service {name} already runs revision {current}"
                    )));
                }
                let (template, placement) = (target.template.clone(), target.placement.clone());
                svc.spec.template = template;
                svc.spec.placement = placement;
            }
        }
        Ok(true)
    })
    .await
}
