//! The replication controller: for each service, creates missing replicas, stops extra ones,
//! replaces replicas of an old template within max-surge / max-unavailable, removes replicas
//! of lost nodes, and writes the service's status. One service is reconciled at a time per key.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::Arc;

use rand::distr::{Alphanumeric, SampleString};

use crate::engine::cache::Change;
use crate::engine::controller::{Action, Reconcile};
use crate::engine::ctx::Ctx;
use crate::model::object::{
    DesiredState, Kind, Metadata, Object, ObjectKey, Owner, Phase, Reason, Replica, ReplicaSpec,
    ReplicaStatus, Service, ServiceStatus, SERVICE_LABEL,
};
use crate::model::quantity::Timestamp;
use crate::store::MAX_TXN_OPS;
use crate::store::{create_op, delete_op, txn_chunked, update_op, Op, StoreError};

/// What one reconcile of a service decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Replicas to create.
    pub create: u32,
    /// Replicas (keys) to stop.
    pub stop: Vec<String>,
    /// Replicas (keys) to delete outright (never started, or on a lost node).
    pub delete: Vec<String>,
    /// Global services: nodes to create a replica on (bound at creation).
    pub create_on: Vec<String>,
    /// Ordered services: the names of the replicas to create (`NAME-ORDINAL`).
    pub create_names: Vec<String>,
}

fn ready(r: &Replica) -> bool {
    r.status.phase == Phase::Ready
}

/// Pure decision for one service given its replicas. Replicas being stopped are ignored.
/// Replicas on a node for which `draining` holds count as outdated: they are replaced within
/// max-surge / max-unavailable exactly as replicas of an old template are.
pub(crate) fn decide<R: Borrow<Replica>>(
    svc: Option<&Service>,
    versions: &[String],
    replicas: &[R],
    draining: &dyn Fn(&str) -> bool,
) -> Decision {
    let key = |r: &Replica| Kind::Replica.key(&r.metadata.namespace, &r.metadata.name);
    let mut d = Decision::default();
    let mut active: Vec<&Replica> = Vec::new();
    for r in replicas {
        let r: &Replica = r.borrow();
        if r.spec.desired == DesiredState::Stopped {
            if r.spec.node.is_none() || r.status.phase == Phase::Lost {
                d.delete.push(key(r));
            }
            continue;
        }
        if r.status.phase == Phase::Lost {
            d.delete.push(key(r));
            continue;
        }
        active.push(r);
    }
    let Some(svc) = svc else {
        for r in active {
            if r.spec.node.is_none() {
                d.delete.push(key(r));
            } else {
                d.stop.push(key(r));
            }
        }
        return d;
    };
    let n = svc.spec.replicas as usize;
    let hash = svc.spec.revision_hash(versions);
    let (surge, unavailable) = svc.spec.update.limits(svc.spec.replicas);
    // A paused rollout replaces nothing: every replica counts as current (scaling still works).
    let paused = svc.spec.update.paused;
    let (mut new, mut old): (Vec<&Replica>, Vec<&Replica>) = active.iter().partition(|r| {
        paused || (r.spec.template_hash == hash && !r.spec.node.as_deref().is_some_and(draining))
    });
    // Stop order: unscheduled, then not ready, then newest.
    let order = |v: &mut Vec<&Replica>| {
        v.sort_by_key(|r| {
            (
                r.spec.node.is_some(),
                ready(r),
                std::cmp::Reverse(r.metadata.creation_timestamp),
            )
        })
    };
    order(&mut new);
    order(&mut old);
    let mut stopping: Vec<&Replica> = Vec::new();
    // 1. More current replicas than desired: stop the extra ones.
    let extra_new = new.len().saturating_sub(n);
    stopping.extend(new.drain(..extra_new));
    // 2. Create current replicas up to desired, within desired + surge in total.
    let total = new.len() + old.len();
    let room = (n + surge as usize).saturating_sub(total);
    d.create = (n - new.len()).min(room) as u32;
    // 3. Stop old replicas while keeping at least desired - max-unavailable ready
    //    (Kubernetes' rolling-update arithmetic).
    let all = total + d.create as usize;
    let min_available = n.saturating_sub(unavailable as usize);
    let new_unavailable = new.iter().filter(|r| !ready(r)).count() + d.create as usize;
    let mut max_scale_down = all.saturating_sub(min_available + new_unavailable);
    let mut ready_total =
        active.iter().filter(|r| ready(r)).count() - stopping.iter().filter(|r| ready(r)).count();
    // Current replicas the scheduler could not place: a ready replica that is outdated only
    // because its node drains is not stopped for a replacement that has nowhere to go (nor
    // is a surplus replica created in its place).
    let blocked = new
        .iter()
        .any(|r| r.spec.node.is_none() && r.status.reason == Reason::Unschedulable);
    for r in old {
        if max_scale_down == 0 {
            break;
        }
        if blocked && ready(r) && r.spec.template_hash == hash {
            continue;
        }
        if ready(r) {
            if ready_total <= min_available {
                continue;
            }
            ready_total -= 1;
        }
        max_scale_down -= 1;
        stopping.push(r);
    }
    for r in stopping {
        if r.spec.node.is_none() {
            d.delete.push(key(r));
        } else {
            d.stop.push(key(r));
        }
    }
    d
}

/// Pure decision for a global service: one replica on each node of `eligible`. A node without
/// an active replica gets one; replicas on nodes no longer eligible stop; a second replica on
/// a node stops; replicas of an old revision are replaced node by node, at most
/// max-unavailable nodes (default 1) without a ready replica at a time.
pub(crate) fn decide_global<R: Borrow<Replica>>(
    svc: &Service,
    versions: &[String],
    replicas: &[R],
    eligible: &std::collections::BTreeSet<String>,
) -> Decision {
    let key = |r: &Replica| Kind::Replica.key(&r.metadata.namespace, &r.metadata.name);
    let mut d = Decision::default();
    let hash = svc.spec.revision_hash(versions);
    let mut by_node: std::collections::BTreeMap<&str, Vec<&Replica>> = Default::default();
    for r in replicas {
        let r: &Replica = r.borrow();
        if r.status.phase == Phase::Lost
            || (r.spec.desired == DesiredState::Stopped && r.spec.node.is_none())
        {
            d.delete.push(key(r));
            continue;
        }
        match r.spec.node.as_deref() {
            // Every replica of a global service is bound at creation; an unbound one is stray.
            None => d.delete.push(key(r)),
            Some(n) => by_node.entry(n).or_default().push(r),
        }
    }
    let n = eligible.len() as u32;
    let (_, unavailable) = svc.spec.update.limits(n);
    let max_unavailable = unavailable.max(1) as usize;
    // Nodes without a ready replica right now (being replaced, starting, or missing).
    let mut down = eligible
        .iter()
        .filter(|node| {
            !by_node.get(node.as_str()).is_some_and(|v| {
                v.iter()
                    .any(|r| r.spec.desired == DesiredState::Running && ready(r))
            })
        })
        .count();
    for (node, reps) in &by_node {
        let mut active: Vec<&Replica> = reps
            .iter()
            .copied()
            .filter(|r| r.spec.desired == DesiredState::Running)
            .collect();
        if !eligible.contains(*node) {
            d.stop.extend(active.iter().map(|r| key(r)));
            continue;
        }
        // Keep one: current revision first, then ready, then oldest.
        active.sort_by_key(|r| {
            (
                r.spec.template_hash != hash,
                !ready(r),
                r.metadata.creation_timestamp,
            )
        });
        for extra in active.iter().skip(1) {
            d.stop.push(key(extra));
        }
        if let Some(kept) = active.first() {
            if kept.spec.template_hash != hash && !svc.spec.update.paused {
                // Replace it if the budget allows (a ready one going down costs one).
                if !ready(kept) || down < max_unavailable {
                    if ready(kept) {
                        down += 1;
                    }
                    d.stop.push(key(kept));
                }
            }
        }
    }
    for node in eligible {
        let has_active = by_node
            .get(node.as_str())
            .is_some_and(|v| v.iter().any(|r| r.spec.desired == DesiredState::Running));
        // A node whose replica is being replaced gets the new one once the old has gone.
        if !has_active {
            d.create_on.push(node.clone());
        }
    }
    d.create = d.create_on.len() as u32;
    d
}

/// The ordinal of replica `replica` of ordered service `service`: `NAME-I` with `I` in
/// decimal without leading zeros; `None` for any other name.
pub fn ordinal_of(service: &str, replica: &str) -> Option<u32> {
    let digits = replica.strip_prefix(service)?.strip_prefix('-')?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

/// The name of replica `ordinal` of ordered service `service`: `NAME-ORDINAL`.
pub fn ordinal_name(service: &str, ordinal: u32) -> String {
    format!("{service}-{ordinal}")
}

/// Pure decision for an ordered service (Kubernetes' StatefulSet with OrderedReady and
/// RollingUpdate): replica `NAME-i` is created only when `NAME-0..i` exist, run and are
/// Ready, one at a time; a name is created again only once no replica object holds it (a
/// lost replica is deleted, then recreated under its name); replicas past `replicas` (and
/// any of another name) are stopped one at a time, highest ordinal first, once nothing else
/// of the service is stopping; replicas of an old revision (or on a draining node) are
/// stopped from the highest ordinal down, while fewer than `maxUnavailable` (default 1) of
/// the ordinals are unavailable, and come back under their name with the new template.
pub(crate) fn decide_ordered<R: Borrow<Replica>>(
    svc: &Service,
    versions: &[String],
    replicas: &[R],
    draining: &dyn Fn(&str) -> bool,
) -> Decision {
    let key = |r: &Replica| Kind::Replica.key(&r.metadata.namespace, &r.metadata.name);
    let name = svc.metadata.name.as_str();
    let n = svc.spec.replicas;
    let hash = svc.spec.revision_hash(versions);
    let mut d = Decision::default();
    // The replica object holding each ordinal (whatever its state), and what is stopping.
    let mut by_ordinal: std::collections::BTreeMap<u32, &Replica> = Default::default();
    let mut stopping = false;
    // Replicas to remove, one at a time: other names first, then the highest ordinal.
    let mut surplus: Vec<(Option<u32>, &Replica)> = Vec::new();
    for r in replicas {
        let r: &Replica = r.borrow();
        let ordinal = ordinal_of(name, &r.metadata.name);
        if let Some(i) = ordinal {
            by_ordinal.insert(i, r);
        }
        if r.status.phase == Phase::Lost
            || (r.spec.desired == DesiredState::Stopped && r.spec.node.is_none())
        {
            d.delete.push(key(r));
            continue;
        }
        if r.spec.desired == DesiredState::Stopped {
            stopping = true;
            continue;
        }
        match ordinal {
            Some(i) if i < n => {}
            _ => surplus.push((ordinal, r)),
        }
    }
    let up = |r: &Replica| r.spec.desired == DesiredState::Running && ready(r);
    // Scale down: one at a time, highest ordinal first, after the one before has gone.
    surplus.sort_by_key(|(o, _)| o.map_or(u64::MAX, |i| i as u64));
    if let Some((_, r)) = surplus.last() {
        if !stopping && d.delete.is_empty() {
            if r.spec.node.is_none() {
                d.delete.push(key(r));
            } else {
                d.stop.push(key(r));
            }
        }
        // Kubernetes finishes scaling down before it updates or scales up.
        return d;
    }
    // Create: the lowest missing ordinal, once every lower one is up and ready.
    for i in 0..n {
        match by_ordinal.get(&i) {
            Some(r) if up(r) => continue,
            Some(_) => break,
            None => {
                d.create_names.push(ordinal_name(name, i));
                break;
            }
        }
    }
    d.create = d.create_names.len() as u32;
    if svc.spec.update.paused {
        return d;
    }
    // Rolling update, from the highest ordinal down.
    let max_unavailable = svc
        .spec
        .update
        .max_unavailable
        .as_ref()
        .map_or(1, |m| m.resolve(n, false))
        .max(1) as usize;
    let mut unavailable = (0..n)
        .filter(|i| by_ordinal.get(i).is_none_or(|r| !up(r)))
        .count();
    for i in (0..n).rev() {
        let Some(r) = by_ordinal.get(&i).copied() else {
            continue;
        };
        let outdated = r.spec.template_hash != hash || r.spec.node.as_deref().is_some_and(draining);
        if r.spec.desired != DesiredState::Running || !outdated || d.delete.contains(&key(r)) {
            continue;
        }
        if up(r) {
            if unavailable >= max_unavailable {
                break;
            }
            unavailable += 1;
        }
        if r.spec.node.is_none() {
            d.delete.push(key(r));
        } else {
            d.stop.push(key(r));
        }
    }
    d
}

/// Why an ordered service has fewer replicas than it wants: the ordinal it waits on.
fn ordered_message(svc: &Service, replicas: &[&Replica]) -> Option<String> {
    let name = &svc.metadata.name;
    let have: std::collections::BTreeMap<u32, &Replica> = replicas
        .iter()
        .filter_map(|r| Some((ordinal_of(name, &r.metadata.name)?, *r)))
        .collect();
    let missing = (0..svc.spec.replicas).find(|i| !have.contains_key(i))?;
    let blocker = (0..missing)
        .filter_map(|i| have.get(&i))
        .find(|r| !(r.spec.desired == DesiredState::Running && ready(r)))?;
    Some(format!(
        "{} waits for {} to be ready (ordered start)",
        ordinal_name(name, missing),
        blocker.metadata.name
    ))
}

/// Whether a node change can change where global services run (not a mere heartbeat).
fn eligibility_changed(c: &Change) -> bool {
    let Change::Object {
        kind: Kind::Node,
        old,
        new,
        ..
    } = c
    else {
        return false;
    };
    let facts = |o: &Option<Arc<Object>>| match o.as_deref() {
        Some(Object::Node(n)) => Some((
            n.status.condition,
            n.spec.clone(),
            n.metadata.labels.clone(),
        )),
        _ => None,
    };
    facts(old) != facts(new)
}

/// The nodes a global service runs on now.
pub(crate) fn eligible_nodes(
    svc: &Service,
    nodes: &[crate::model::object::Node],
) -> std::collections::BTreeSet<String> {
    nodes
        .iter()
        .filter(|n| {
            n.status.condition == crate::model::object::NodeCondition::Ready
                && !n.spec.unschedulable
                && svc.spec.placement.admits(n)
        })
        .map(|n| n.metadata.name.clone())
        .collect()
}

/// The status a service should show.
pub(crate) fn status_of<R: Borrow<Replica>>(
    svc: &Service,
    versions: &[String],
    replicas: &[R],
) -> ServiceStatus {
    let hash = svc.spec.revision_hash(versions);
    let active: Vec<&Replica> = replicas
        .iter()
        .map(|r| r.borrow())
        .filter(|r| r.spec.desired == DesiredState::Running && r.status.phase != Phase::Lost)
        .collect();
    let pending = active.iter().filter(|r| r.spec.node.is_none()).count() as u32;
    // Why it is not all ready: a replica that cannot be placed, else the newest trouble of
    // the current revision's replicas (a failing probe, a crash loop, a failed start: what a
    // rollout that misses its deadline names), else any failed replica.
    let troubled = |r: &&&Replica| {
        r.status.phase == Phase::Failed
            || matches!(
                r.status.reason,
                Reason::NotReady | Reason::CrashLoopBackOff | Reason::Restarted
            )
    };
    let message = active
        .iter()
        .find(|r| r.status.reason == Reason::Unschedulable)
        .map(|r| r.status.message.clone())
        .or_else(|| {
            active
                .iter()
                .filter(|r| r.spec.template_hash == hash && !ready(r))
                .filter(troubled)
                .max_by_key(|r| {
                    (
                        r.status.last_exit.as_ref().and_then(|e| e.at),
                        r.metadata.creation_timestamp,
                    )
                })
                .or_else(|| active.iter().find(|r| r.status.phase == Phase::Failed))
                .map(|r| format!("{}: {}", r.metadata.name, r.status.message))
        })
        .unwrap_or_default();
    ServiceStatus {
        observed_generation: svc.metadata.generation,
        replicas: active.len() as u32,
        ready_replicas: active.iter().filter(|r| ready(r)).count() as u32,
        updated_replicas: active
            .iter()
            .filter(|r| r.spec.template_hash == hash)
            .count() as u32,
        pending_replicas: pending,
        message,
        // The network controller's field: kept as it is.
        virtual_ip: svc.status.virtual_ip.clone(),
        ..Default::default()
    }
}

/// A new pending replica of `svc`, whose template refers to the secrets and configs at
/// `versions` ([`Template::config_versions`](crate::model::object::Template::config_versions)).
pub fn new_replica(svc: &Service, versions: &[String]) -> Replica {
    let suffix = Alphanumeric
        .sample_string(&mut rand::rng(), 5)
        .to_ascii_lowercase();
    let mut name = format!("{}-{suffix}", svc.metadata.name);
    if name.len() > 63 {
        name = format!("{}-{suffix}", &svc.metadata.name[..57]);
    }
    new_replica_named(svc, versions, name)
}

/// A new pending replica of `svc` named `name` (an ordered service's `NAME-ORDINAL`).
pub fn new_replica_named(svc: &Service, versions: &[String], name: String) -> Replica {
    let mut labels = svc.spec.template.labels.clone();
    labels.insert(SERVICE_LABEL.into(), svc.metadata.name.clone());
    Replica {
        metadata: Metadata {
            name,
            namespace: svc.metadata.namespace.clone(),
            labels: labels.into(),
            uid: crate::model::object::new_uid(),
            creation_timestamp: Some(Timestamp::now()),
            owner: Some(svc.metadata.name.clone()),
            generation: 1,
            ..Metadata::default()
        },
        spec: ReplicaSpec {
            service: Owner::Service(svc.metadata.name.clone()),
            template_hash: svc.spec.revision_hash(versions),
            template: Arc::new(svc.spec.template.clone()),
            placement: Arc::new(svc.spec.placement.clone()),
            node: None,
            desired: DesiredState::Running,
        },
        status: ReplicaStatus::default(),
    }
}

/// `secret/NAME@REVISION` (or `config/...`) of each secret and config `svc`'s template
/// refers to, from the cache; a missing one counts as revision 0
/// ([`crate::model::object::Template::config_versions`]): what the controller passes to
/// [`ServiceSpec::revision_hash`](crate::model::object::ServiceSpec::revision_hash).
pub(crate) fn config_versions(ctx: &Ctx, svc: &crate::model::object::Service) -> Vec<String> {
    let ns = &svc.metadata.namespace;
    svc.spec.template.config_versions(|secret, name| {
        let kind = if secret { Kind::Secret } else { Kind::Config };
        ctx.cache
            .get(kind, &kind.key(ns, name))
            .map(|o| o.metadata().revision)
            .unwrap_or(0)
    })
}

/// The services (in the cache) whose templates refer to secret or config `key`.
fn keys_for_data(ctx: &Ctx, kind: Kind, key: &str) -> Vec<ObjectKey> {
    let Some(ObjectKey {
        namespace: ns,
        name,
        ..
    }) = ObjectKey::parse(key)
    else {
        return Vec::new();
    };
    let (ns, name) = (ns.as_str(), name.as_str());
    let secret = kind == Kind::Secret;
    ctx.cache
        .services()
        .iter()
        .filter(|s| {
            s.metadata.namespace == ns && s.spec.template.references().contains(&(secret, name))
        })
        .map(|s| ObjectKey::new(Kind::Service, &s.metadata.namespace, &s.metadata.name))
        .collect()
}

/// Maps a change to the service keys it concerns.
pub(crate) fn keys_for(change: &Change) -> Vec<ObjectKey> {
    match change {
        Change::Object {
            kind: Kind::Service,
            key,
            ..
        } => ObjectKey::parse(key).into_iter().collect(),
        Change::Object {
            kind: Kind::Replica,
            ..
        } => {
            // Jobs' replicas (`job:NAME`) belong to the job controller.
            let mut v: Vec<ObjectKey> = change
                .replicas()
                .filter_map(|r| {
                    let svc = r.spec.service.service()?;
                    Some(ObjectKey::new(Kind::Service, &r.metadata.namespace, svc))
                })
                .collect();
            v.dedup();
            v
        }
        _ => Vec::new(),
    }
}

/// The services with replicas on a node whose draining flag changed.
fn keys_for_node(ctx: &Ctx, change: &Change) -> Vec<ObjectKey> {
    let Change::Object {
        kind: Kind::Node,
        old,
        new,
        ..
    } = change
    else {
        return Vec::new();
    };
    let draining = |o: &Option<Arc<Object>>| match o.as_deref() {
        Some(Object::Node(n)) => n.spec.draining,
        _ => false,
    };
    let name = match (old.as_deref(), new.as_deref()) {
        (_, Some(o)) | (Some(o), None) => o.metadata().name.clone(),
        _ => return Vec::new(),
    };
    if draining(old) == draining(new) {
        return Vec::new();
    }
    let mut keys: Vec<ObjectKey> = ctx
        .cache
        .replicas_on_node(&name)
        .iter()
        .filter_map(|r| {
            let svc = r.spec.service.service()?;
            Some(ObjectKey::new(Kind::Service, &r.metadata.namespace, svc))
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Reconciles one service (by store key). Returns the store revision written, if any.
pub(crate) async fn reconcile(ctx: &Ctx, key: &ObjectKey) -> Result<Option<u64>, StoreError> {
    let (ns, name) = (key.namespace.as_str(), key.name.as_str());
    let svc = ctx.cache.service(&key.store_key());
    // The secrets' and configs' revisions the template refers to: part of its revision hash.
    let versions = svc
        .as_ref()
        .map(|s| config_versions(ctx, s))
        .unwrap_or_default();
    // Shared handles, not copies: this runs after every change to any of the replicas.
    let objects = ctx.cache.replica_objects_of_service(ns, name);
    let replicas: Vec<&Replica> = objects.iter().filter_map(|o| o.as_replica()).collect();
    let global = svc
        .as_ref()
        .filter(|s| s.spec.mode == crate::model::object::ServiceMode::Global)
        .map(|s| (s, eligible_nodes(s, &ctx.cache.nodes())));
    // dependsOn: no first replica before every dependency holds.
    let gate = match &svc {
        Some(s) if replicas.is_empty() => {
            crate::engine::depends::gate_in(ctx, ns, &s.spec.depends_on)
        }
        _ => crate::engine::depends::Gate::Open,
    };
    let mut stranded_on = std::collections::BTreeSet::new();
    let ordered = svc
        .as_ref()
        .filter(|s| s.spec.mode == crate::model::object::ServiceMode::Ordered);
    let d = match (&global, ordered) {
        (Some((s, eligible)), _) => decide_global(s, &versions, &replicas, eligible),
        (None, Some(s)) => {
            let draining = ctx.cache.draining_nodes();
            decide_ordered(s, &versions, &replicas, &|n| draining.contains(n))
        }
        (None, None) => {
            let draining = ctx.cache.draining_nodes();
            // A drain moves a service's replicas only if some other node can take them:
            // with nowhere to go they stay (ready) instead of being stopped for
            // replacements that can never be placed.
            let movable = draining.is_empty()
                || svc.as_ref().is_none_or(|s| {
                    ctx.cache
                        .nodes()
                        .iter()
                        .any(|n| crate::engine::nodes::can_take(&s.spec.placement, n))
                });
            if !movable {
                stranded_on = replicas
                    .iter()
                    .filter_map(|r| r.spec.node.as_deref())
                    .filter(|n| draining.contains(*n))
                    .map(str::to_string)
                    .collect();
            }
            decide(svc.as_ref(), &versions, &replicas, &|n| {
                movable && draining.contains(n)
            })
        }
    };
    let mut d = d;
    if gate != crate::engine::depends::Gate::Open {
        d.create = 0;
        d.create_on.clear();
        d.create_names.clear();
    }
    let mut ops: Vec<Op> = Vec::new();
    let keyed: HashMap<String, &Replica> = if d.delete.is_empty() && d.stop.is_empty() {
        HashMap::new()
    } else {
        replicas
            .iter()
            .map(|r| {
                (
                    Kind::Replica.key(&r.metadata.namespace, &r.metadata.name),
                    *r,
                )
            })
            .collect()
    };
    let by_key = |k: &str| keyed.get(k).copied();
    for k in &d.delete {
        if let Some(r) = by_key(k) {
            ops.push(delete_op(&Object::Replica(r.clone())));
        }
    }
    for k in &d.stop {
        if let Some(r) = by_key(k) {
            let mut r = r.clone();
            r.spec.desired = DesiredState::Stopped;
            ops.push(update_op(&Object::Replica(r)));
        }
    }
    if let Some(svc) = &svc {
        // Five random characters give 60 M names: at 50,000 replicas a few collide, and
        // one collision would fail a whole batch. Draw again for names already taken.
        let mut fresh = std::collections::HashSet::new();
        let mut bind_to = d.create_on.iter();
        for name in &d.create_names {
            ops.push(create_op(&Object::Replica(new_replica_named(
                svc,
                &versions,
                name.clone(),
            ))));
        }
        for _ in d.create_names.len() as u32..d.create {
            let mut r = new_replica(svc, &versions);
            for _ in 0..8 {
                let key = Kind::Replica.key(&r.metadata.namespace, &r.metadata.name);
                if ctx.cache.get(Kind::Replica, &key).is_none() && fresh.insert(key) {
                    break;
                }
                r = new_replica(svc, &versions);
            }
            if let Some(node) = bind_to.next() {
                // Global: bound at creation to its node.
                r.spec.node = Some(node.clone());
                r.status.message = format!("global service: runs on {node}");
            }
            ops.push(create_op(&Object::Replica(r)));
        }
        let mut status = status_of(svc, &versions, &replicas);
        match &gate {
            crate::engine::depends::Gate::Open => {}
            crate::engine::depends::Gate::Wait(m) => status.message = m.clone(),
            crate::engine::depends::Gate::Never(m) => {
                if svc.status.message != *m {
                    ctx.recorder.about(&svc.metadata.uid).warning(
                        Kind::Service,
                        ns,
                        name,
                        "DependencyFailed",
                        m.clone(),
                    );
                }
                status.message = m.clone();
            }
        }
        if let Some(m) = ordered.and_then(|s| ordered_message(s, &replicas)) {
            if status.message.is_empty() {
                status.message = m;
            }
        }
        if !stranded_on.is_empty() && status.message.is_empty() {
            status.message = format!(
                "replicas on draining node(s) {} stay: no other schedulable node for them",
                stranded_on.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        let desired = global
            .as_ref()
            .map_or(svc.spec.replicas, |(_, e)| e.len() as u32);
        let rollback =
            crate::engine::rollout::advance(svc, &versions, desired, &mut status, Timestamp::now());
        if let Some(spec) = rollback {
            let mut s = svc.clone();
            s.spec = spec;
            s.metadata.generation += 1;
            s.status = status;
            ctx.recorder.about(&svc.metadata.uid).warning(
                Kind::Service,
                ns,
                name,
                "RolledBack",
                s.status.rollout.message.clone(),
            );
            ops.push(update_op(&Object::from(s)));
        } else if status != svc.status {
            if status.rollout.state == crate::model::object::RolloutState::Failed
                && svc.status.rollout.state != crate::model::object::RolloutState::Failed
            {
                ctx.recorder.warning(
                    Kind::Service,
                    ns,
                    name,
                    "ProgressDeadlineExceeded",
                    status.rollout.message.clone(),
                );
            }
            let mut s = svc.clone();
            s.status = status;
            ops.push(update_op(&Object::from(s)));
        }
    }
    if ops.is_empty() {
        return Ok(None);
    }
    // Independent operations on distinct keys: a store with a small transaction limit
    // (etcd) gets them in several transactions; a failure re-reads and reconciles again.
    let Some(rev) = txn_chunked(&*ctx.store, ops, MAX_TXN_OPS).await? else {
        return Ok(None);
    };
    if let Some(svc) = &svc {
        if d.create > 0 {
            ctx.recorder.about(&svc.metadata.uid).normal(
                Kind::Service,
                ns,
                name,
                "Scaled",
                format!("created {} replica(s) of {}", d.create, svc.metadata.name),
            );
        }
        if !d.stop.is_empty() {
            ctx.recorder.about(&svc.metadata.uid).normal(
                Kind::Service,
                ns,
                name,
                "Scaled",
                format!("stopping {} replica(s)", d.stop.len()),
            );
        }
    }
    ctx.cache.wait_for(rev).await;
    Ok(Some(rev))
}

/// The replication controller (see the module doc).
pub(crate) struct Replication {
    /// Services by what they depend on: a change of a dependency wakes the services that
    /// wait for it.
    dependents: crate::engine::depends::Dependents,
}

impl Default for Replication {
    fn default() -> Self {
        Replication {
            dependents: crate::engine::depends::Dependents::of_services(),
        }
    }
}

#[async_trait::async_trait]
impl Reconcile for Replication {
    type Error = StoreError;
    const NAME: &'static str = "replication";

    fn keys_for(&self, ctx: &Ctx, c: &Change) -> Vec<ObjectKey> {
        if !matches!(
            c.kind(),
            Some(
                Kind::Service
                    | Kind::Replica
                    | Kind::Node
                    | Kind::Secret
                    | Kind::Config
                    | Kind::Job
            )
        ) {
            return Vec::new();
        }
        let mut keys = self.dependents.keys_for(ctx, c);
        if c.kind() == Some(Kind::Job) {
            return keys;
        }
        keys.extend(keys_for(c));
        keys.extend(keys_for_node(ctx, c));
        if let Change::Object {
            kind: kind @ (Kind::Secret | Kind::Config),
            key,
            ..
        } = c
        {
            // A secret or config changed: the services using it roll.
            keys.extend(keys_for_data(ctx, *kind, key));
        }
        if eligibility_changed(c) {
            // Global services follow nodes.
            for s in ctx.cache.services() {
                if s.spec.mode == crate::model::object::ServiceMode::Global {
                    keys.push(ObjectKey::new(
                        Kind::Service,
                        &s.metadata.namespace,
                        &s.metadata.name,
                    ));
                }
            }
        }
        keys
    }

    fn all_keys(&self, ctx: &Ctx) -> Vec<ObjectKey> {
        let services = ctx.cache.list(Kind::Service);
        self.dependents.rebuild(&services);
        let mut keys = ctx.cache.service_keys();
        // Services that still have replicas (a deleted service's leftovers), from the index:
        // copying every replica here once a resync period cost seconds and gigabytes at scale.
        for (ns, svc) in ctx.cache.services_with_replicas() {
            if let Owner::Service(svc) = svc {
                keys.push(ObjectKey::new(Kind::Service, ns, svc));
            }
        }
        keys
    }

    async fn reconcile(&self, key: &ObjectKey, ctx: &Ctx) -> Result<Action, StoreError> {
        reconcile(ctx, key).await?;
        // A rollout under way is looked at again each second, so its progress deadline is
        // noticed even when nothing changes.
        Ok(
            if ctx.cache.service(&key.store_key()).is_some_and(|s| {
                s.status.rollout.state == crate::model::object::RolloutState::Progressing
            }) {
                Action::requeue(std::time::Duration::from_secs(1))
            } else {
                Action::await_change()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(replicas: u32, surge: u32, unavailable: u32) -> Service {
        let text = format!(
            "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  template:\n    command: [sleep, '1']\n  update: {{maxSurge: {surge}, maxUnavailable: {unavailable}}}\n"
        );
        match crate::model::manifest::parse("web.yaml", &text)
            .unwrap()
            .remove(0)
        {
            Object::Service(s) => *s,
            _ => unreachable!(),
        }
    }

    fn on(svc: &Service, node: &str, ready: bool) -> Replica {
        let mut r = new_replica(svc, &[]);
        r.spec.node = Some(node.into());
        r.status.phase = if ready { Phase::Ready } else { Phase::Starting };
        r
    }

    #[test]
    fn a_global_service_runs_one_per_eligible_node_and_updates_node_by_node() {
        let mut svc = service(1, 0, 1);
        svc.spec.mode = crate::model::object::ServiceMode::Global;
        let nodes: std::collections::BTreeSet<String> =
            ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
        // Nothing yet: one on each node.
        let d = decide_global(&svc, &[], &Vec::<Replica>::new(), &nodes);
        assert_eq!(d.create_on, ["n1", "n2", "n3"]);
        // One each, ready; n4 not eligible keeps nothing; a second on n1 goes.
        let mut reps: Vec<Replica> = ["n1", "n2", "n3", "n4"]
            .iter()
            .map(|n| on(&svc, n, true))
            .collect();
        reps.push(on(&svc, "n1", false));
        let d = decide_global(&svc, &[], &reps, &nodes);
        assert!(d.create_on.is_empty());
        assert_eq!(d.stop.len(), 2, "{d:?}");
        // A new template: replaced one node at a time (max unavailable 1).
        let reps: Vec<Replica> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| on(&svc, n, true))
            .collect();
        svc.spec.template.args = vec!["v2".into()];
        let d = decide_global(&svc, &[], &reps, &nodes);
        assert_eq!(d.stop.len(), 1, "{d:?}");
        assert!(d.create_on.is_empty());
    }

    fn ordered(replicas: u32) -> Service {
        let mut svc = service(replicas, 0, 1);
        svc.spec.mode = crate::model::object::ServiceMode::Ordered;
        svc.spec.update.max_unavailable = None;
        svc
    }

    /// Replica `i` of ordered `svc` in `phase` (on n1), of revision `hash` unless empty.
    fn ord(svc: &Service, i: u32, phase: Phase) -> Replica {
        let mut r = new_replica_named(svc, &[], ordinal_name(&svc.metadata.name, i));
        r.spec.node = Some("n1".into());
        r.status.phase = phase;
        r
    }

    fn names(keys: &[String]) -> Vec<&str> {
        keys.iter().map(|k| k.rsplit('/').next().unwrap()).collect()
    }

    #[test]
    fn ordinals_parse_only_the_services_own_names() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        for bad in [
            "web-", "web-01", "web-x", "web0", "webx-1", "web-1-2", "api-1",
        ] {
            assert_eq!(ordinal_of("web", bad), None, "{bad}");
        }
        assert_eq!(ordinal_of("web-1", "web-1-3"), Some(3));
    }

    #[test]
    fn an_ordered_service_starts_in_order_and_scales_down_from_the_top() {
        let svc = ordered(3);
        let none = |_: &str| false;
        let d = |reps: &[Replica]| decide_ordered(&svc, &[], reps, &none);
        // Nothing: web-0 only.
        assert_eq!(d(&[]).create_names, ["web-0"]);
        // web-0 starting: nothing more until it is ready.
        assert_eq!(d(&[ord(&svc, 0, Phase::Running)]), Decision::default());
        // web-0 ready: web-1.
        let r0 = ord(&svc, 0, Phase::Ready);
        assert_eq!(d(std::slice::from_ref(&r0)).create_names, ["web-1"]);
        // web-1 missing (deleted) while web-2 exists: web-1 comes back under its name.
        let r2 = ord(&svc, 2, Phase::Ready);
        assert_eq!(d(&[r0.clone(), r2.clone()]).create_names, ["web-1"]);
        // web-1 lost: deleted first (the name is free after), nothing created yet.
        let mut lost = ord(&svc, 1, Phase::Lost);
        lost.status.phase = Phase::Lost;
        let dd = d(&[r0.clone(), lost, r2.clone()]);
        assert_eq!((names(&dd.delete), dd.create), (vec!["web-1"], 0));
        // All three ready: nothing to do.
        let all: Vec<Replica> = (0..3).map(|i| ord(&svc, i, Phase::Ready)).collect();
        assert_eq!(d(&all), Decision::default());
        // Scaled to 1: web-2 stops first, alone; web-1 only once web-2 has gone.
        let one = ordered(1);
        let dd = decide_ordered(&one, &[], &all, &none);
        assert_eq!((names(&dd.stop), dd.create), (vec!["web-2"], 0));
        let mut stopping = all.clone();
        stopping[2].spec.desired = DesiredState::Stopped;
        assert_eq!(
            decide_ordered(&one, &[], &stopping, &none),
            Decision::default()
        );
        let dd = decide_ordered(&one, &[], &all[..2], &none);
        assert_eq!(names(&dd.stop), ["web-1"]);
        // A replica of another name (the service was replicated before) goes too.
        let stray = on(&svc, "n1", true);
        let dd = d(&[all[0].clone(), all[1].clone(), all[2].clone(), stray]);
        assert_eq!(dd.stop.len(), 1);
        assert!(!names(&dd.stop)[0].starts_with("web-2"), "{dd:?}");
    }

    #[test]
    fn an_ordered_service_updates_from_the_highest_ordinal_one_at_a_time() {
        let mut svc = ordered(3);
        let none = |_: &str| false;
        let all: Vec<Replica> = (0..3).map(|i| ord(&svc, i, Phase::Ready)).collect();
        svc.spec.template.args = vec!["v2".into()];
        let dd = decide_ordered(&svc, &[], &all, &none);
        assert_eq!((names(&dd.stop), dd.create), (vec!["web-2"], 0));
        // web-2 gone: it comes back (new template); nothing else stops meanwhile.
        let dd = decide_ordered(&svc, &[], &all[..2], &none);
        assert_eq!(
            (dd.create_names.clone(), dd.stop.len()),
            (vec!["web-2".to_string()], 0)
        );
        let mut new2 = new_replica_named(&svc, &[], "web-2".into());
        new2.spec.node = Some("n1".into());
        new2.status.phase = Phase::Starting;
        let reps = vec![all[0].clone(), all[1].clone(), new2.clone()];
        assert_eq!(decide_ordered(&svc, &[], &reps, &none), Decision::default());
        // Ready: web-1 next.
        let mut reps = reps;
        reps[2].status.phase = Phase::Ready;
        assert_eq!(
            names(&decide_ordered(&svc, &[], &reps, &none).stop),
            ["web-1"]
        );
        // maxUnavailable 2: two at once, highest first.
        svc.spec.update.max_unavailable = Some(crate::model::object::IntOrPercent::Int(2));
        let dd = decide_ordered(&svc, &[], &all, &none);
        assert_eq!(names(&dd.stop), ["web-2", "web-1"]);
        // Paused: nothing replaced.
        svc.spec.update.paused = true;
        assert_eq!(decide_ordered(&svc, &[], &all, &none), Decision::default());
        // A draining node's replicas count as outdated.
        let svc = ordered(3);
        let dd = decide_ordered(&svc, &[], &all, &|n| n == "n1");
        assert_eq!(names(&dd.stop), ["web-2"]);
    }

    #[test]
    fn update_order_decides_which_goes_first() {
        let mut svc = service(3, 1, 1);
        let reps: Vec<Replica> = (0..3).map(|_| on(&svc, "n1", true)).collect();
        svc.spec.template.args = vec!["v2".into()];
        // Unset: surge 1 and unavailable 1 both at once.
        let d = decide(Some(&svc), &[], &reps, &|_| false);
        assert_eq!((d.create, d.stop.len()), (1, 1));
        svc.spec.update.order = Some(crate::model::object::UpdateOrder::StartFirst);
        let d = decide(Some(&svc), &[], &reps, &|_| false);
        assert_eq!((d.create, d.stop.len()), (1, 0), "start first");
        svc.spec.update.order = Some(crate::model::object::UpdateOrder::StopFirst);
        let d = decide(Some(&svc), &[], &reps, &|_| false);
        assert_eq!((d.create, d.stop.len()), (0, 1), "stop first");
    }

    #[test]
    fn a_drain_stops_nothing_for_replacements_that_cannot_be_placed() {
        let svc = service(4, 1, 1);
        let drained = |n: &str| n == "n1";
        let mut reps: Vec<Replica> = (0..4).map(|_| on(&svc, "n1", true)).collect();
        let mut pending = new_replica(&svc, &[]);
        pending.status.reason = Reason::Unschedulable;
        reps.push(pending);
        let d = decide(Some(&svc), &[], &reps, &drained);
        assert_eq!((d.create, d.stop.len()), (0, 0), "{d:?}");
        // A template change still rolls within max-unavailable.
        let mut svc2 = svc.clone();
        svc2.spec.template.args = vec!["v2".into()];
        let d = decide(Some(&svc2), &[], &reps[..4], &drained);
        assert_eq!((d.create, d.stop.len()), (1, 1), "{d:?}");
    }

    #[test]
    fn a_draining_node_is_emptied_at_the_update_pace() {
        let svc = service(4, 1, 0);
        let drained = |n: &str| n == "n1";
        // Four ready on the draining node: one surge replica first, nothing stopped.
        let mut reps: Vec<Replica> = (0..4).map(|_| on(&svc, "n1", true)).collect();
        let d = decide(Some(&svc), &[], &reps, &drained);
        assert_eq!((d.create, d.stop.len()), (1, 0));
        // The new one is not ready yet: still nothing stopped (max unavailable 0).
        reps.push(on(&svc, "n2", false));
        let d = decide(Some(&svc), &[], &reps, &drained);
        assert_eq!((d.create, d.stop.len()), (0, 0));
        // Ready: one old replica goes.
        reps.last_mut().unwrap().status.phase = Phase::Ready;
        let d = decide(Some(&svc), &[], &reps, &drained);
        assert_eq!((d.create, d.stop.len()), (0, 1));
        // Not draining: nothing to do for the same replicas minus the surge.
        reps.pop();
        let d = decide(Some(&svc), &[], &reps, &|_| false);
        assert_eq!(d, Decision::default());
        // With max unavailable 2 and no surge, two go at once.
        let svc = service(4, 0, 2);
        let reps: Vec<Replica> = (0..4).map(|_| on(&svc, "n1", true)).collect();
        let d = decide(Some(&svc), &[], &reps, &drained);
        assert_eq!((d.create, d.stop.len()), (0, 2));
    }
}

/// The rolling update's two limits, over random services and replica mixes, followed over
/// several reconciles: a decision never brings the replicas above `replicas + maxSurge`
/// when it creates any, and never stops ready replicas below `replicas - maxUnavailable`.
#[cfg(test)]
mod rolling_update_properties {
    use proptest::prelude::*;

    use super::*;
    use crate::model::object::{IntOrPercent, UpdateOrder};

    /// One replica at the start: (of the current revision, ready, placed on a node).
    type Start = (bool, bool, bool);

    fn service(replicas: u32, surge: u32, unavailable: u32, order: u8, paused: bool) -> Service {
        let mut svc = Service::new(
            "web",
            crate::model::object::ServiceSpec::new(
                replicas,
                crate::model::object::Template::with_command(["sleep", "1"]),
            ),
        );
        svc.spec.update.max_surge = Some(IntOrPercent::Int(surge));
        svc.spec.update.max_unavailable = Some(IntOrPercent::Int(unavailable));
        svc.spec.update.order = match order {
            1 => Some(UpdateOrder::StartFirst),
            2 => Some(UpdateOrder::StopFirst),
            _ => None,
        };
        svc.spec.update.paused = paused;
        svc
    }

    fn replica(svc: &Service, current: bool, ready: bool, placed: bool) -> Replica {
        let mut r = new_replica(svc, &[]);
        if !current {
            r.spec.template_hash = "an-old-revision".into();
        }
        r.spec.node = placed.then(|| "n1".to_string());
        r.status.phase = match (ready && placed, placed) {
            (true, _) => Phase::Ready,
            (false, true) => Phase::Starting,
            (false, false) => Phase::Pending,
        };
        r
    }

    fn key(r: &Replica) -> String {
        Kind::Replica.key(&r.metadata.namespace, &r.metadata.name)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn never_above_surge_never_below_max_unavailable(
            replicas in 0u32..8,
            surge in 0u32..4,
            unavailable in 0u32..4,
            order in 0u8..3,
            paused in proptest::bool::weighted(0.1),
            start in proptest::collection::vec(any::<Start>(), 0..12),
            steps in proptest::collection::vec(proptest::collection::vec(any::<(bool, bool)>(), 24), 1..8),
        ) {
            let svc = service(replicas, surge, unavailable, order, paused);
            let (surge, unavailable) = svc.spec.update.limits(replicas);
            let n = replicas as usize;
            let min_available = n.saturating_sub(unavailable as usize);
            let mut reps: Vec<Replica> = start
                .iter()
                .map(|&(current, ready, placed)| replica(&svc, current, ready, placed))
                .collect();
            for flips in steps {
                let d = decide(Some(&svc), &[], &reps, &|_| false);
                if d.create > 0 {
                    prop_assert!(
                        reps.len() + d.create as usize <= n + surge as usize,
                        "{} replicas + {} created > {} + surge {}: {:?}",
                        reps.len(), d.create, n, surge, d
                    );
                }
                let gone: std::collections::HashSet<&String> =
                    d.stop.iter().chain(&d.delete).collect();
                let ready_before = reps.iter().filter(|r| ready(r)).count();
                let ready_after = reps
                    .iter()
                    .filter(|r| ready(r) && !gone.contains(&key(r)))
                    .count();
                prop_assert!(
                    ready_after >= ready_before.min(min_available),
                    "{ready_before} ready, {ready_after} after the decision, at least {min_available} must stay: {d:?}"
                );
                // The decision carried out: stopped and deleted replicas go, new ones start
                // unplaced; then the world moves: some replicas get placed and ready, some
                // ready ones fail.
                reps.retain(|r| !gone.contains(&key(r)));
                reps.extend((0..d.create).map(|_| replica(&svc, true, false, false)));
                for (r, (up, down)) in reps.iter_mut().zip(flips) {
                    if up && !ready(r) {
                        r.spec.node = Some("n1".into());
                        r.status.phase = Phase::Ready;
                    } else if down && ready(r) {
                        r.status.phase = Phase::Starting;
                    }
                }
            }
        }
    }
}
