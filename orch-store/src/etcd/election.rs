//! [`Election`]: leader election among orch managers over etcd — one lease per candidate,
//! kept alive every TTL/4, and one leader key created (if absent) attached to it; an
//! [`Elector`] for the engine's leadership loop.
//!
//! - A term is the leader key's create revision: writes fenced by the term carry
//!   `Op::Check { key, created }`, which fails with `StoreError::Fenced` once the key is gone or
//!   belongs to another term.
//! - [`Elector::lost`] resolves when the key is deleted or created again (a watch), when a
//!   keepalive answer says the lease is gone, or at `send time of the last acknowledged
//!   keepalive + TTL - TTL/4`: etcd refreshed the lease no earlier than that send, so it cannot
//!   expire before `send + TTL`, and the caller has TTL/4 to stop its controllers.
//! - Standby candidates watch the key and campaign the moment it is deleted; a candidate killed
//!   without resigning loses the key when etcd expires its lease (etcd checks every 500 ms, so
//!   within TTL + 0.5 s of its last keepalive).
//! - The TTL is the one etcd granted: etcd raises a TTL below its minimum (1.5 election
//!   timeouts, rounded up to whole seconds: 2 s with default flags, 1 s with
//!   `--heartbeat-interval 50 --election-timeout 500`).
//! - [`Election::register`] keeps other keys (a manager's record) on the same lease, put again
//!   whenever a new lease is granted, so they vanish within the TTL when the candidate dies.
//!
//! Keys are orch keys: the [`EtcdStore`]'s prefix is added.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;
use orch_core::leader::{Elector, Term};
use orch_core::store::{Revision, StoreError};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{map_err, rev, EtcdStore};

/// Where the leader key lives and the lease TTL asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    /// The leader key, an orch key (the store's prefix is added): `/cluster/leader` by default.
    pub key: String,
    /// The lease TTL to ask etcd for, rounded up to whole seconds (etcd's unit); etcd may grant
    /// more ([`Election::granted_ttl`]). 1 s by default.
    pub ttl: Duration,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            key: "/cluster/leader".into(),
            ttl: Duration::from_secs(1),
        }
    }
}

/// Retry pace of lease grants and key watches after a failure.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How long [`Election::campaign`] waits for a lease before it reports why there is none.
const LEASE_WAIT: Duration = Duration::from_secs(5);

/// One candidate in an etcd election: its lease (kept alive by a background task until the
/// election is dropped, resigned or closed), the leader key and the keys registered on the
/// lease. Dropping it stops the keepalives without revoking anything — as a crash would: the
/// lease, the leader key and the registered keys expire after the TTL.
pub struct Election {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("name", &self.shared.name)
            .field("key", &self.shared.key)
            .field("granted_ttl", &self.granted_ttl())
            .finish()
    }
}

struct Shared {
    store: EtcdStore,
    name: String,
    /// The leader key, in orch's key space and in etcd's.
    key: String,
    etcd_key: String,
    ttl_secs: i64,
    lease: watch::Sender<LeaseState>,
    /// Whether a lease should be held: false after a resign or close, until the next
    /// campaign or register.
    want: watch::Sender<bool>,
    /// Registered keys (orch keys) and their values.
    registered: Mutex<BTreeMap<String, Vec<u8>>>,
    /// Serialises puts of registered keys, so a key never ends on a lease older than the
    /// current one.
    put_lock: tokio::sync::Mutex<()>,
    /// Which lease each term won was attached to (by the term's create revision).
    terms: Mutex<HashMap<Revision, i64>>,
}

#[derive(Clone, Debug, Default)]
struct LeaseState {
    /// The lease held now, if any.
    current: Option<Held>,
    /// The TTL etcd granted the last lease.
    granted_ttl: Option<Duration>,
    /// Why the last grant or keepalive failed, for [`Election::campaign`]'s error.
    error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    id: i64,
    ttl: Duration,
    /// Until when the lease surely lives, minus the TTL/4 margin: after this, terms on it
    /// count as lost.
    valid_until: Instant,
}

impl Held {
    fn valid(&self) -> bool {
        Instant::now() < self.valid_until
    }
}

/// The time after a keepalive sent at `sent` (and acknowledged) until which the lease surely
/// lives, less the margin of TTL/4.
fn valid_after(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl - ttl / 4
}

impl Election {
    /// A candidate named `name` (a manager's name, the leader key's value while it leads) over
    /// `store`'s connection and prefix. Starts asking for a lease at once (in a task: needs a
    /// tokio runtime). Errors name a bad `config` field.
    pub fn new(
        store: &EtcdStore,
        name: &str,
        config: ElectionConfig,
    ) -> Result<Election, StoreError> {
        if name.is_empty() {
            return Err(StoreError::Other(
                "election: the candidate name is empty (give the manager's name)".into(),
            ));
        }
        if !config.key.starts_with('/') || config.key.len() < 2 {
            return Err(StoreError::Other(
                format!(
                    "election: key {:?} is not an orch key (one starting with /, e.g. /cluster/leader)",
                    config.key
                )
                .into(),
            ));
        }
        if config.ttl.is_zero() {
            return Err(StoreError::Other(
                "election: ttl is 0; give at least 1s (etcd counts lease TTLs in whole seconds)"
                    .into(),
            ));
        }
        let ttl_secs = config.ttl.as_secs() + u64::from(config.ttl.subsec_nanos() > 0);
        let shared = Arc::new(Shared {
            store: store.clone(),
            name: name.to_string(),
            etcd_key: store.etcd_key(&config.key),
            key: config.key,
            ttl_secs: ttl_secs.min(i64::MAX as u64) as i64,
            lease: watch::channel(LeaseState::default()).0,
            want: watch::channel(true).0,
            registered: Mutex::default(),
            put_lock: tokio::sync::Mutex::new(()),
            terms: Mutex::default(),
        });
        let task = tokio::spawn(keep_leases(shared.clone()));
        Ok(Election { shared, task })
    }

    /// The TTL etcd granted the latest lease (`None` before the first grant).
    pub fn granted_ttl(&self) -> Option<Duration> {
        self.shared.lease.borrow().granted_ttl
    }

    /// Waits (up to 5 s) for a lease and returns its granted TTL, or why there is none.
    pub async fn ready(&self) -> Result<Duration, StoreError> {
        self.shared.want.send_replace(true);
        Ok(self.shared.wait_lease().await?.ttl)
    }

    /// The leader key (an orch key).
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// Puts `key` (an orch key) = `value` attached to this candidate's lease, now if a lease
    /// is held and again after every new lease, so the key exists while the candidate lives
    /// and vanishes within the TTL when it dies. The error is the first put's; the key stays
    /// registered, so it is put with the next lease anyway.
    pub async fn register(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.shared
            .registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), value);
        self.shared.want.send_replace(true);
        let current = self.shared.lease.borrow().current;
        match current {
            Some(held) => self.shared.put_registered(held.id, Some(key)).await,
            None => Ok(()),
        }
    }

    /// Forgets a registered key and deletes it.
    pub async fn unregister(&self, key: &str) -> Result<(), StoreError> {
        self.shared
            .registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        let _guard = self.shared.put_lock.lock().await;
        let k = self.shared.store.etcd_key(key);
        self.shared
            .store
            .attempt(1, |mut c| {
                let k = k.clone();
                async move { c.delete(k, None).await }
            })
            .await?;
        Ok(())
    }

    /// Revokes the lease — the leader key (if this candidate holds it) and every registered
    /// key go at once — and stops renewing until the next [`Elector::campaign`] or
    /// [`Election::register`]. For a clean shutdown of a standby too.
    pub async fn close(&self) {
        // Read before the keepalive task hears of it and forgets the lease.
        let current = self.shared.lease.borrow().current;
        self.shared.want.send_replace(false);
        if let Some(held) = current {
            self.shared.revoke(held.id).await;
        }
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    /// Waits for a lease valid now; after [`LEASE_WAIT`] reports the last grant failure.
    async fn wait_lease(&self) -> Result<Held, StoreError> {
        let mut state = self.lease.subscribe();
        let deadline = Instant::now() + LEASE_WAIT;
        loop {
            let (current, error) = {
                let s = state.borrow_and_update();
                (s.current, s.error.clone())
            };
            match current {
                Some(held) if held.valid() => return Ok(held),
                // A held lease that lapsed: wait for its renewal (or its end) to be published.
                _ => {}
            }
            let why = || {
                StoreError::Unavailable(error.clone().unwrap_or_else(|| {
                    format!(
                        "etcd at {}: no lease granted within {LEASE_WAIT:?}",
                        self.store.endpoints
                    )
                }))
            };
            match tokio::time::timeout_at(deadline, state.changed()).await {
                Ok(Ok(())) => {}
                // A lapsed lease may become valid again with no change published before
                // the deadline: look once more, in case it did.
                Err(_) | Ok(Err(_)) => {
                    return match state.borrow().current {
                        Some(held) if held.valid() => Ok(held),
                        _ => Err(why()),
                    }
                }
            }
        }
    }

    fn publish(&self, f: impl FnOnce(&mut LeaseState)) {
        self.lease.send_modify(f);
    }

    /// Puts the registered keys (only `only`, if given) attached to lease `id`, unless a
    /// newer lease is current by the time the put lock is held.
    async fn put_registered(&self, id: i64, only: Option<&str>) -> Result<(), StoreError> {
        let _guard = self.put_lock.lock().await;
        let current = self.lease.borrow().current.map(|h| h.id);
        if current != Some(id) {
            // A newer lease (or none): its own re-put covers the keys.
            return Ok(());
        }
        let keys: Vec<(String, Vec<u8>)> = {
            let registered = self.registered.lock().unwrap_or_else(|e| e.into_inner());
            registered
                .iter()
                .filter(|(k, _)| only.is_none_or(|o| o == k.as_str()))
                .map(|(k, v)| (self.store.etcd_key(k), v.clone()))
                .collect()
        };
        if keys.is_empty() {
            return Ok(());
        }
        for chunk in keys.chunks(super::MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(k, v)| {
                    TxnOp::put(k.clone(), v.clone(), Some(PutOptions::new().with_lease(id)))
                })
                .collect();
            let txn = Txn::new().and_then(ops);
            self.store
                .attempt(1, |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await?;
        }
        Ok(())
    }

    /// Revokes lease `id`, best effort (bounded by the request timeout).
    async fn revoke(&self, id: i64) {
        let result = self
            .store
            .attempt(1, |mut c| async move { c.lease_revoke(id).await })
            .await;
        match result {
            Ok(_) => tracing::debug!(lease = id, "election: lease revoked"),
            Err(e) if e.to_string().contains("lease not found") => {}
            Err(e) => {
                tracing::warn!(lease = id, error = %e, "election: cannot revoke the lease; it expires after its TTL")
            }
        }
        self.publish(|s| {
            if s.current.is_some_and(|h| h.id == id) {
                s.current = None;
            }
        });
    }

    /// Who holds the leader key now: its value and create revision and lease, at `revision`.
    async fn read_key(&self) -> Result<(Option<etcd_client::KeyValue>, Revision), StoreError> {
        let k = self.etcd_key.clone();
        let resp = self
            .store
            .attempt(2, |mut c| {
                let k = k.clone();
                async move { c.get(k, None).await }
            })
            .await?;
        let revision = rev(resp.header().map_or(0, |h| h.revision()));
        Ok((resp.kvs().first().cloned(), revision))
    }

    /// Waits until the leader key stops being the one created at `created` — deleted, or
    /// created again — watching from `after`. Reconnects on watch failures (checking the key
    /// with a read first), so it only resolves on a real change.
    async fn key_changed(&self, created: Revision, mut after: Revision) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let options = WatchOptions::new().with_start_revision(after as i64 + 1);
            let k = self.etcd_key.clone();
            let opened = self
                .store
                .attempt(1, |mut c| {
                    let k = k.clone();
                    let options = options.clone();
                    async move { c.watch(k, Some(options)).await }
                })
                .await;
            if let Ok(stream) = opened {
                let (_sender, mut responses) = stream.split();
                // A watch on a member that stopped answering would stay silent.
                let mut outages = self.store.outages();
                outages.mark_unchanged();
                loop {
                    let resp = tokio::select! {
                        resp = responses.next() => resp,
                        _ = outages.changed() => None,
                    };
                    let Some(Ok(resp)) = resp else { break };
                    if resp.compact_revision() > 0 || resp.canceled() {
                        break;
                    }
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let changed = match ev.event_type() {
                            EventType::Delete => true,
                            EventType::Put => rev(kv.create_revision()) != created,
                        };
                        if changed {
                            return;
                        }
                        after = after.max(rev(kv.mod_revision()));
                    }
                    backoff = MIN_BACKOFF;
                }
            }
            // The watch failed or ended: read the key, then watch again from there.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            match self.read_key().await {
                Ok((None, _)) => return,
                Ok((Some(kv), _)) if rev(kv.create_revision()) != created => return,
                Ok((Some(_), revision)) => after = after.max(revision),
                Err(_) => {}
            }
        }
    }

    fn record_term(&self, created: Revision, lease: i64) {
        let mut terms = self.terms.lock().unwrap_or_else(|e| e.into_inner());
        terms.retain(|_, l| *l == lease);
        terms.insert(created, lease);
    }

    fn term_lease(&self, created: Revision) -> Option<i64> {
        self.terms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&created)
            .copied()
    }
}

/// Why keeping one lease alive ended.
enum Ended {
    /// etcd says the lease is gone (expired or revoked).
    Gone,
    /// A resign or close: no lease is wanted.
    Unwanted,
}

/// The background task: holds a lease while one is wanted — grants it, puts the registered
/// keys on it, keeps it alive — and grants a new one when it is gone.
async fn keep_leases(shared: Arc<Shared>) {
    let mut want = shared.want.subscribe();
    let mut backoff = MIN_BACKOFF;
    loop {
        while !*want.borrow_and_update() {
            if want.changed().await.is_err() {
                return;
            }
        }
        let sent = Instant::now();
        let ttl_secs = shared.ttl_secs;
        let granted = shared
            .store
            .attempt(
                1,
                |mut c| async move { c.lease_grant(ttl_secs, None).await },
            )
            .await;
        let (id, ttl) = match granted {
            Ok(resp) if resp.ttl() > 0 => (resp.id(), Duration::from_secs(resp.ttl() as u64)),
            Ok(resp) => {
                let error = format!(
                    "etcd at {} granted no lease: {}",
                    shared.store.endpoints,
                    resp.error()
                );
                shared.publish(|s| s.error = Some(error));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "election: lease grant failed");
                shared.publish(|s| s.error = Some(e.to_string()));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        tracing::debug!(lease = id, ?ttl, name = %shared.name, "election: lease granted");
        shared.publish(|s| {
            s.current = Some(Held {
                id,
                ttl,
                valid_until: valid_after(sent, ttl),
            });
            s.granted_ttl = Some(ttl);
            s.error = None;
        });
        // Registered keys go on the new lease beside the keepalives (a slow put must not
        // delay them); the set is dropped, and its puts stopped, with this lease.
        let mut puts = JoinSet::new();
        let putter = shared.clone();
        puts.spawn(async move {
            let mut backoff = MIN_BACKOFF;
            while let Err(e) = putter.put_registered(id, None).await {
                tracing::warn!(lease = id, error = %e, "election: cannot put the registered keys; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        });
        let ended = keep_alive(&shared, id, ttl).await;
        drop(puts);
        shared.publish(|s| {
            if s.current.is_some_and(|h| h.id == id) {
                s.current = None;
            }
        });
        match ended {
            Ended::Gone => {
                tracing::info!(lease = id, name = %shared.name, "election: the lease is gone; asking for a new one")
            }
            // A resign or close revokes it too; this catches a lease granted meanwhile.
            Ended::Unwanted => shared.revoke(id).await,
        }
    }
}

/// Keeps lease `id` alive — one keepalive every TTL/4, on a keepalive stream opened again
/// when it fails or stays unanswered for a TTL — until etcd says it is gone or no lease is
/// wanted. Each answer moves the lease's `valid_until` to its request's send time + TTL -
/// TTL/4.
async fn keep_alive(shared: &Shared, id: i64, ttl: Duration) -> Ended {
    let interval = (ttl / 4).max(Duration::from_millis(10));
    let mut want = shared.want.subscribe();
    let acknowledged = |sent: Instant| {
        shared.publish(|s| {
            if let Some(h) = s.current.as_mut().filter(|h| h.id == id) {
                h.valid_until = h.valid_until.max(valid_after(sent, ttl));
            }
        })
    };
    loop {
        if !*want.borrow_and_update() {
            return Ended::Unwanted;
        }
        let sent = Instant::now();
        let mut client = shared.store.client.clone();
        let opened = tokio::select! {
            opened = tokio::time::timeout(ttl, client.lease_keep_alive(id)) => opened,
            _ = want.changed() => continue,
        };
        let (mut keeper, mut answers) = match opened {
            Ok(Ok(pair)) => pair,
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) if e.contains("not found") => {
                return Ended::Gone
            }
            Ok(Err(e)) => {
                let e = map_err(&shared.store.endpoints, e);
                tracing::debug!(lease = id, error = %e, "election: keepalive failed");
                shared.publish(|s| s.error = Some(e.to_string()));
                tokio::time::sleep(interval).await;
                continue;
            }
            Err(_) => continue,
        };
        acknowledged(sent);
        let mut pending: VecDeque<Instant> = VecDeque::new();
        let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if pending.front().is_some_and(|oldest| oldest.elapsed() > ttl) {
                        tracing::debug!(lease = id, "election: keepalives unanswered for a TTL; reopening the stream");
                        break;
                    }
                    let now = Instant::now();
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    pending.push_back(now);
                }
                answer = answers.next() => match answer {
                    Some(Ok(resp)) => {
                        let sent = pending.pop_front();
                        if resp.ttl() <= 0 {
                            return Ended::Gone;
                        }
                        if let Some(sent) = sent {
                            acknowledged(sent);
                        }
                    }
                    Some(Err(e)) => {
                        let e = map_err(&shared.store.endpoints, e);
                        tracing::debug!(lease = id, error = %e, "election: keepalive stream failed");
                        shared.publish(|s| s.error = Some(e.to_string()));
                        tokio::time::sleep(interval).await;
                        break;
                    }
                    None => break,
                },
                changed = want.changed() => {
                    if changed.is_err() || !*want.borrow_and_update() {
                        return Ended::Unwanted;
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Elector for Election {
    fn name(&self) -> &str {
        &self.shared.name
    }

    async fn campaign(&self) -> Result<Term, StoreError> {
        let shared = &self.shared;
        shared.want.send_replace(true);
        loop {
            let held = shared.wait_lease().await?;
            let k = shared.etcd_key.clone();
            let txn = Txn::new()
                .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    k.clone(),
                    shared.name.clone(),
                    Some(PutOptions::new().with_lease(held.id)),
                )])
                .or_else([TxnOp::get(k, None)]);
            let resp = match shared
                .store
                .attempt(1, |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await
            {
                Ok(resp) => resp,
                // The lease ended just now: the keepalive task notices and grants another.
                Err(e) if e.to_string().contains("lease not found") => {
                    tokio::time::sleep(MIN_BACKOFF).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let revision = rev(resp.header().map_or(0, |h| h.revision()));
            if resp.succeeded() {
                shared.record_term(revision, held.id);
                tracing::info!(name = %shared.name, term = revision, "election: elected");
                return Ok(Term {
                    key: shared.key.clone(),
                    created: revision,
                    holder: shared.name.clone(),
                });
            }
            let holder = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            });
            match holder {
                None => continue,
                // Still ours from an earlier campaign on this lease (the term never ended).
                Some(kv) if kv.lease() == held.id => {
                    let created = rev(kv.create_revision());
                    shared.record_term(created, held.id);
                    return Ok(Term {
                        key: shared.key.clone(),
                        created,
                        holder: shared.name.clone(),
                    });
                }
                Some(kv) => {
                    shared
                        .key_changed(rev(kv.create_revision()), revision)
                        .await
                }
            }
        }
    }

    async fn lost(&self, term: &Term) {
        let shared = &self.shared;
        let Some(lease) = shared.term_lease(term.created) else {
            return;
        };
        let mut state = shared.lease.subscribe();
        let changed = shared.key_changed(term.created, term.created);
        tokio::pin!(changed);
        loop {
            let current = state.borrow_and_update().current;
            let Some(held) = current.filter(|h| h.id == lease) else {
                return;
            };
            if !held.valid() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(held.valid_until) => {}
                r = state.changed() => if r.is_err() { return },
                _ = &mut changed => return,
            }
        }
    }

    async fn resign(&self, term: &Term) {
        let shared = &self.shared;
        // Read before the keepalive task hears of it and forgets the lease.
        let current = shared.lease.borrow().current.map(|h| h.id);
        shared.want.send_replace(false);
        let of_term = shared.term_lease(term.created);
        for lease in current
            .into_iter()
            .chain(of_term.filter(|l| Some(*l) != current))
        {
            shared.revoke(lease).await;
        }
        tracing::info!(name = %shared.name, term = term.created, "election: resigned");
    }

    async fn leader(&self) -> Result<Option<String>, StoreError> {
        let (kv, _) = self.shared.read_key().await?;
        Ok(kv.map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_term_counts_as_lost_a_quarter_ttl_before_the_lease_can_expire() {
        let sent = Instant::now();
        assert_eq!(
            valid_after(sent, Duration::from_secs(1)),
            sent + Duration::from_millis(750)
        );
        assert_eq!(
            valid_after(sent, Duration::from_secs(2)),
            sent + Duration::from_millis(1500)
        );
    }
}
