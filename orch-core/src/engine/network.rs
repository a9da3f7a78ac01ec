//! The network controller: leases each node a subnet of the cluster CIDR
//! (`NodeSpec::network`) and each non-headless service and route a virtual IP of the service
//! CIDR (`ServiceStatus::virtual_ip`, `RouteStatus::virtual_ip`). It is the only writer of
//! these fields and runs in the
//! control plane only when the cluster has a network ([`EngineConfig::network`](crate::EngineConfig)).
//!
//! A lease lives in the store, so it survives manager restarts, and is freed with its holder:
//! a subnet or address is free when no node or service holds it. Writes are compare-and-swap;
//! addresses picked but not yet seen in the cache are held in an in-memory reservation, so
//! several reconciles before the cache catches up never pick the same one.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::engine::cache::Change;
use crate::engine::controller::{Action, Reconcile};
use crate::engine::ctx::{ClusterNetwork, Ctx};
use crate::model::object::{Kind, Node, NodeNetwork, Object, ObjectKey};
use crate::store::{update_op, StoreError};

/// The network controller (see the module doc).
#[derive(Default)]
pub(crate) struct NetworkController {
    /// Node subnets written (or being written) but perhaps not in the cache yet.
    subnets: std::sync::Mutex<Reservations<Ipv4Net>>,
    /// Service virtual IPs likewise.
    vips: std::sync::Mutex<Reservations<Ipv4Addr>>,
    /// The last warning recorded per object, so a condition that lasts is one event.
    warned: std::sync::Mutex<HashMap<ObjectKey, String>>,
}

/// Leases picked for holders whose write the cache may not show yet: by the holder's store
/// key, its uid and what it was given.
struct Reservations<T> {
    held: HashMap<String, (String, T)>,
}

impl<T> Default for Reservations<T> {
    fn default() -> Self {
        Reservations {
            held: HashMap::new(),
        }
    }
}

impl<T: Copy> Reservations<T> {
    /// What holder `key` (of `uid`) is given: its reservation if it has one, else what `pick`
    /// chooses given what is used — `cached` (the leases the cache shows) and the other
    /// reservations still `pending` (their holder, by key and uid, exists and the cache does
    /// not show its lease yet) — reserved for it.
    fn reserve<E>(
        &mut self,
        key: &str,
        uid: &str,
        cached: impl FnOnce() -> Vec<T>,
        pending: impl Fn(&str, &str) -> bool,
        pick: impl FnOnce(&[T]) -> Result<T, E>,
    ) -> Result<T, E> {
        if let Some((_, t)) = self.held.get(key).filter(|(u, _)| u == uid) {
            return Ok(*t);
        }
        let mut used = cached();
        self.held.retain(|k, (u, _)| pending(k, u));
        used.extend(self.held.values().map(|(_, t)| *t));
        let t = pick(&used)?;
        self.held.insert(key.to_string(), (uid.to_string(), t));
        Ok(t)
    }

    fn release(&mut self, key: &str) {
        self.held.remove(key);
    }
}

#[async_trait::async_trait]
impl Reconcile for NetworkController {
    type Error = StoreError;
    const NAME: &'static str = "network";

    fn keys_for(&self, ctx: &Ctx, c: &Change) -> Vec<ObjectKey> {
        let Change::Object {
            kind,
            key,
            old,
            new,
            ..
        } = c
        else {
            return Vec::new();
        };
        let Some(k) = ObjectKey::parse(key) else {
            return Vec::new();
        };
        match kind {
            Kind::Node => {
                let view = |o: &Option<std::sync::Arc<Object>>| match o.as_deref() {
                    Some(Object::Node(n)) => {
                        Some((n.spec.network.clone(), n.status.addresses.clone()))
                    }
                    _ => None,
                };
                let (was, is) = (view(old), view(new));
                if is.is_none() {
                    // A removed node frees its subnet: nodes still waiting may fit now (and
                    // its own key drops what the controller remembers of it).
                    let mut keys = waiting(ctx, Kind::Node);
                    keys.push(k);
                    return keys;
                }
                if was == is {
                    return Vec::new();
                }
                vec![k]
            }
            Kind::Service | Kind::Route => {
                let view = |o: &Option<std::sync::Arc<Object>>| o.as_deref().and_then(vip_holder);
                let (was, is) = (view(old), view(new));
                if was == is {
                    return Vec::new();
                }
                let mut keys = vec![k];
                if is.is_none() {
                    // Its address is free: services and routes still waiting may get it.
                    keys.extend(waiting(ctx, Kind::Service));
                    keys.extend(waiting(ctx, Kind::Route));
                }
                keys
            }
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, ctx: &Ctx) -> Vec<ObjectKey> {
        let mut keys = ctx.cache.service_keys();
        keys.extend(ctx.cache.list(Kind::Node).iter().map(|o| ObjectKey::of(o)));
        keys.extend(ctx.cache.list(Kind::Route).iter().map(|o| ObjectKey::of(o)));
        keys
    }

    async fn reconcile(&self, key: &ObjectKey, ctx: &Ctx) -> Result<Action, StoreError> {
        let Some(net) = ctx.config.network.as_ref() else {
            return Ok(Action::await_change());
        };
        if let Err(e) = net.validate() {
            // The binaries validate before starting; an embedder may not have.
            tracing::error!("network: the cluster network is invalid, nothing is leased: {e}");
            return Ok(Action::await_change());
        }
        if !ctx.cache.synced() {
            // Until the cache has listed the store it does not know every lease.
            return Ok(Action::requeue(std::time::Duration::from_millis(100)));
        }
        match key.kind {
            Kind::Node => self.reconcile_node(key, net, ctx).await?,
            Kind::Service | Kind::Route => self.reconcile_vip(key, net, ctx).await?,
            _ => {}
        }
        Ok(Action::await_change())
    }

    fn error_policy(&self, error: &StoreError, key: &ObjectKey, _: &Ctx) -> Action {
        tracing::debug!(%key, %error, "network: write failed; retrying");
        Action::Backoff
    }
}

/// The keys of the nodes (or services) that have no lease yet.
fn waiting(ctx: &Ctx, kind: Kind) -> Vec<ObjectKey> {
    ctx.cache
        .list(kind)
        .iter()
        .filter(|o| match o.as_ref() {
            Object::Node(n) => n.spec.network.is_none(),
            o => vip_holder(o).is_some_and(|(_, headless, vip)| !headless && vip.is_none()),
        })
        .map(|o| ObjectKey::of(o))
        .collect()
}

/// What the network controller reads of a service or route: its uid, whether it is headless,
/// its virtual IP.
fn vip_holder(o: &Object) -> Option<(String, bool, Option<String>)> {
    match o {
        Object::Service(s) => Some((
            s.metadata.uid.clone(),
            s.spec.headless,
            s.status.virtual_ip.clone(),
        )),
        Object::Route(r) => Some((
            r.metadata.uid.clone(),
            r.spec.headless,
            r.status.virtual_ip.clone(),
        )),
        _ => None,
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `index`-th address of `net` (0 is its network address).
fn nth(net: Ipv4Net, index: u64) -> Option<Ipv4Addr> {
    let n = u64::from(u32::from(net.network())) + index;
    u32::try_from(n).ok().map(Ipv4Addr::from)
}

/// The lowest of the `/prefix` subnets of `cidr` that overlaps none of `used`, or how many
/// there are when all are taken.
fn free_subnet(cidr: Ipv4Net, prefix: u8, used: &[Ipv4Net]) -> Result<Ipv4Net, u64> {
    let exact: HashSet<Ipv4Net> = used.iter().copied().collect();
    let odd: Vec<Ipv4Net> = used
        .iter()
        .copied()
        .filter(|u| u.prefix_len() != prefix)
        .collect();
    let overlaps = |a: &Ipv4Net, b: &Ipv4Net| a.contains(&b.network()) || b.contains(&a.network());
    let mut all = cidr.subnets(prefix).map_err(|_| 0u64)?;
    all.find(|c| !exact.contains(c) && !odd.iter().any(|u| overlaps(c, u)))
        .ok_or(1u64 << (prefix - cidr.prefix_len()))
}

/// The lowest host address of `cidr` (neither its network nor its broadcast address) not in
/// `used`.
fn free_address(cidr: Ipv4Net, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let size = 1u64 << (32 - cidr.prefix_len());
    (1..size.saturating_sub(1))
        .filter_map(|i| nth(cidr, i))
        .find(|a| !used.contains(a))
}

/// The node's first address inside `cidr`, if one is.
fn address_inside(node: &Node, cidr: Ipv4Net) -> Option<String> {
    node.status
        .addresses
        .iter()
        .find(|a| a.parse::<Ipv4Addr>().is_ok_and(|ip| cidr.contains(&ip)))
        .cloned()
}

impl NetworkController {
    /// Records a warning about `key`, once per distinct message.
    fn warn(&self, ctx: &Ctx, key: &ObjectKey, reason: &str, message: String) {
        let mut w = lock(&self.warned);
        if w.get(key) == Some(&message) {
            return;
        }
        tracing::warn!(%key, "network: {message}");
        ctx.recorder.with_source("network").warning(
            key.kind,
            &key.namespace,
            &key.name,
            reason,
            &message,
        );
        w.insert(key.clone(), message);
    }

    fn clear_warning(&self, key: &ObjectKey) {
        lock(&self.warned).remove(key);
    }

    async fn reconcile_node(
        &self,
        key: &ObjectKey,
        net: &ClusterNetwork,
        ctx: &Ctx,
    ) -> Result<(), StoreError> {
        let store_key = key.store_key();
        let node = match ctx.cache.get(Kind::Node, &store_key).as_deref() {
            Some(Object::Node(n)) => n.clone(),
            _ => {
                lock(&self.subnets).release(&store_key);
                self.clear_warning(key);
                return Ok(());
            }
        };
        let lease = |subnet: Ipv4Net| NodeNetwork {
            subnet: subnet.to_string(),
            cluster_cidr: net.cluster_cidr.to_string(),
            service_cidr: net.service_cidr.to_string(),
            mode: net.mode,
        };
        if let Some(have) = &node.spec.network {
            match have.subnet.parse::<Ipv4Net>() {
                Ok(s) if net.cluster_cidr.contains(&s) => {
                    self.clear_warning(key);
                    let want = lease(s);
                    if *have != want {
                        // The cluster's service CIDR or mode changed: the subnet stays.
                        self.write_node(ctx, node, want).await?;
                    }
                }
                _ => self.warn(
                    ctx,
                    key,
                    "SubnetOutsideClusterCidr",
                    format!(
                        "node {} keeps its subnet {} although it is outside the cluster CIDR {}: its running replicas keep their addresses; remove and re-add the node to lease it a new one",
                        node.metadata.name, have.subnet, net.cluster_cidr
                    ),
                ),
            }
            return Ok(());
        }
        for (what, cidr) in [("cluster", net.cluster_cidr), ("service", net.service_cidr)] {
            if let Some(addr) = address_inside(&node, cidr) {
                self.warn(
                    ctx,
                    key,
                    "NetworkOverlap",
                    format!(
                        "no subnet for node {}: its address {addr} is inside the {what} CIDR {cidr}; choose a {what} CIDR that contains no node address",
                        node.metadata.name
                    ),
                );
                return Ok(());
            }
        }
        let picked = lock(&self.subnets).reserve(
            &store_key,
            &node.metadata.uid,
            || {
                ctx.cache
                    .list(Kind::Node)
                    .iter()
                    .filter_map(|o| match o.as_ref() {
                        Object::Node(n) => n.spec.network.as_ref()?.subnet.parse().ok(),
                        _ => None,
                    })
                    .collect()
            },
            |k, uid| {
                matches!(ctx.cache.get(Kind::Node, k).as_deref(),
                    Some(Object::Node(n)) if n.metadata.uid == uid && n.spec.network.is_none())
            },
            |used| free_subnet(net.cluster_cidr, net.node_prefix, used),
        );
        let subnet = match picked {
            Ok(s) => s,
            Err(count) => {
                self.warn(
                    ctx,
                    key,
                    "ClusterCidrExhausted",
                    format!(
                        "no subnet for node {}: every one of the {count} /{} subnets of the cluster CIDR {} is leased; use a larger cluster CIDR or remove nodes",
                        node.metadata.name, net.node_prefix, net.cluster_cidr
                    ),
                );
                return Ok(());
            }
        };
        self.clear_warning(key);
        let name = node.metadata.name.clone();
        self.write_node(ctx, node, lease(subnet)).await?;
        ctx.recorder.with_source("network").normal(
            Kind::Node,
            "",
            &name,
            "SubnetLeased",
            format!("leased subnet {subnet} of {}", net.cluster_cidr),
        );
        Ok(())
    }

    async fn write_node(
        &self,
        ctx: &Ctx,
        mut node: Node,
        lease: NodeNetwork,
    ) -> Result<(), StoreError> {
        node.spec.network = Some(lease);
        let rev = ctx.store.txn(vec![update_op(&Object::Node(node))]).await?;
        ctx.cache.wait_for(rev).await;
        Ok(())
    }

    /// Leases (or frees) the virtual IP of a service or route: services and routes share the
    /// service CIDR.
    async fn reconcile_vip(
        &self,
        key: &ObjectKey,
        net: &ClusterNetwork,
        ctx: &Ctx,
    ) -> Result<(), StoreError> {
        let store_key = key.store_key();
        let holder = ctx.cache.get(key.kind, &store_key);
        let Some((holder, (uid, headless, have))) =
            holder.and_then(|h| vip_holder(&h).map(|v| (h, v)))
        else {
            lock(&self.vips).release(&store_key);
            self.clear_warning(key);
            return Ok(());
        };
        let what = key.kind.as_str().to_ascii_lowercase();
        if headless {
            lock(&self.vips).release(&store_key);
            if have.is_some() {
                self.write_vip(ctx, &holder, None).await?;
            }
            return Ok(());
        }
        if have.is_some() {
            // Stable for the holder's life, even if the service CIDR changed since.
            return Ok(());
        }
        let picked = lock(&self.vips).reserve(
            &store_key,
            &uid,
            || {
                let mut used = Vec::new();
                for kind in [Kind::Service, Kind::Route] {
                    used.extend(
                        ctx.cache
                            .list(kind)
                            .iter()
                            .filter_map(|o| vip_holder(o)?.2?.parse::<Ipv4Addr>().ok()),
                    );
                }
                used
            },
            |k, uid| {
                Kind::of_key(k)
                    .and_then(|kind| ctx.cache.get(kind, k))
                    .as_deref()
                    .and_then(vip_holder)
                    .is_some_and(|(u, headless, vip)| u == uid && vip.is_none() && !headless)
            },
            |used| free_address(net.service_cidr, &used.iter().copied().collect()).ok_or(()),
        );
        let Ok(vip) = picked else {
            self.warn(
                ctx,
                key,
                "ServiceCidrExhausted",
                format!(
                    "no virtual IP for {what} {}: every address of the service CIDR {} is leased; use a larger service CIDR or make services and routes headless",
                    key.name, net.service_cidr
                ),
            );
            return Ok(());
        };
        self.clear_warning(key);
        self.write_vip(ctx, &holder, Some(vip.to_string())).await
    }

    async fn write_vip(
        &self,
        ctx: &Ctx,
        holder: &Object,
        vip: Option<String>,
    ) -> Result<(), StoreError> {
        let mut next = holder.clone();
        match &mut next {
            Object::Service(s) => s.status.virtual_ip = vip,
            Object::Route(r) => r.status.virtual_ip = vip,
            _ => return Ok(()),
        }
        let rev = ctx.store.txn(vec![update_op(&next)]).await?;
        ctx.cache.wait_for(rev).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_are_the_lowest_free_and_overlaps_count_as_used() {
        let c = net("10.244.0.0/16");
        assert_eq!(free_subnet(c, 24, &[]), Ok(net("10.244.0.0/24")));
        assert_eq!(
            free_subnet(c, 24, &[net("10.244.0.0/24"), net("10.244.2.0/24")]),
            Ok(net("10.244.1.0/24"))
        );
        // A lease of another size (the node prefix changed) blocks what it overlaps.
        assert_eq!(
            free_subnet(c, 24, &[net("10.244.0.0/23")]),
            Ok(net("10.244.2.0/24"))
        );
        let small = net("10.0.0.0/30");
        let all = [net("10.0.0.0/31"), net("10.0.0.2/31")];
        assert_eq!(free_subnet(small, 31, &all), Err(2));
    }

    #[test]
    fn addresses_skip_the_network_and_broadcast_addresses() {
        let c = net("10.96.0.0/30");
        let mut used = HashSet::new();
        assert_eq!(free_address(c, &used), Some("10.96.0.1".parse().unwrap()));
        used.insert("10.96.0.1".parse().unwrap());
        assert_eq!(free_address(c, &used), Some("10.96.0.2".parse().unwrap()));
        used.insert("10.96.0.2".parse().unwrap());
        assert_eq!(free_address(c, &used), None);
    }
}
