//! Leadership among several engines over one store: only the engine that holds the current
//! [`Term`] runs the control plane, and every write its controllers make carries an
//! [`Op::Check`] on the term's key, so a deposed leader that has not noticed yet cannot
//! write.
//!
//! An [`Elector`] is how a candidate becomes leader and learns it no longer is: `orch-store`'s
//! etcd `Election` (an etcd lease and a key) for managers on etcd; [`StoreElector`] (a lease
//! key renewed by compare-and-swap, over any [`Store`]) for tests and embedders without etcd.
//! [`EngineBuilder::elector`](crate::engine::EngineBuilder::elector) hands one to the engine, whose
//! leadership loop campaigns, starts the control plane over a [`Fenced`] store when elected,
//! and stops it when [`Elector::lost`] resolves — which an elector makes happen before its
//! lease can have ended, so two control planes never run at once; should one not notice
//! (frozen, partitioned), [`Fenced`] keeps its writes from landing. The engine publishes what
//! it knows as [`Leadership`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::time::Instant;

use crate::store::{
    KeyValue, Op, Revision, Store, StoreError, WatchBatch, WatchEvent, WatchStream,
};

/// One term of leadership: the key that stands for it and the revision it was created at.
/// Writes fenced by the term carry `Op::Check { key, created }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    /// The leader key, in the store's key space (e.g. `/cluster/leader`).
    pub key: String,
    /// The key's create revision: it differs for every term.
    pub created: Revision,
    /// The leader's name (the candidate's [`Elector::name`]).
    pub holder: String,
}

/// How one candidate takes part in an election.
#[async_trait]
pub trait Elector: Send + Sync {
    /// This candidate's name (a manager's name), recorded as the term's holder.
    fn name(&self) -> &str;

    /// Waits until this candidate leads and returns its term. Errors are transient store
    /// failures: the caller waits and campaigns again.
    async fn campaign(&self) -> Result<Term, StoreError>;

    /// Resolves when `term` has ended or may end soon: the key is gone or held by another, or
    /// the lease could not be renewed for long enough that it might expire. It must resolve
    /// early enough that the caller can stop its controllers before the lease ends.
    async fn lost(&self, term: &Term);

    /// Gives `term` up at once (a clean shutdown), so another candidate need not wait for the
    /// lease to expire. Best effort.
    async fn resign(&self, term: &Term);

    /// Who leads now, if anyone (read from the store).
    async fn leader(&self) -> Result<Option<String>, StoreError>;
}

/// The leader key in orch's key space. Its value is the leader's name; its create revision
/// is the term.
pub const LEADER_KEY: &str = "/cluster/leader";

/// What an engine knows of leadership, published by [`Engine::leadership`](crate::Engine::leadership)
/// and [`Ctx::leadership`](crate::engine::Ctx::leadership) (a `tokio::sync::watch` channel).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    /// Whether this engine runs the control plane now.
    pub leading: bool,
    /// Who leads, as far as this engine knows: its own name while it leads; on a standby,
    /// what [`Elector::leader`] said at its last look (about every second). `None` for an
    /// engine without an elector.
    pub leader: Option<String>,
    /// This engine's term while it leads (`None` without an elector).
    pub term: Option<Term>,
    /// How many times this engine became leader or stopped being it.
    pub changes: u64,
    /// When this engine's control plane started (while it leads).
    pub since: Option<SystemTime>,
    /// When the first reconcile of this term finished successfully (a per-key controller's:
    /// replication, jobs, cron jobs, route status, network). The failover benchmark measures
    /// a leader's kill to this moment on its successor.
    pub first_reconcile: Option<SystemTime>,
}

/// A [`Store`] whose writes belong to one [`Term`]: every non-empty transaction gets an
/// [`Op::Check`] on the term's key and create revision appended, so it applies only while the
/// term lasts and fails with [`StoreError::Fenced`] once another term began. Reads and
/// watches pass through. The engine hands one to its control plane for each term.
pub struct Fenced {
    inner: Arc<dyn Store>,
    term: Term,
}

impl Fenced {
    /// Fences `inner`'s writes on `term`.
    pub fn new(inner: Arc<dyn Store>, term: Term) -> Fenced {
        Fenced { inner, term }
    }

    /// The term the writes belong to.
    pub fn term(&self) -> &Term {
        &self.term
    }

    fn fence(&self, mut ops: Vec<Op>) -> Result<Vec<Op>, StoreError> {
        let check = Op::Check {
            key: self.term.key.clone(),
            created: self.term.created,
        };
        match ops.iter().find(|op| op.key() == self.term.key) {
            None => ops.push(check),
            Some(op) if *op == check => {}
            Some(_) => {
                return Err(StoreError::Other(
                    format!(
                        "a transaction fenced on {} may not also write {}: the leader key belongs to the elector",
                        self.term.key, self.term.key
                    )
                    .into(),
                ))
            }
        }
        Ok(ops)
    }
}

#[async_trait]
impl Store for Fenced {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.inner.list(prefix).await
    }
    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        if ops.is_empty() {
            return self.inner.txn(ops).await;
        }
        self.inner.txn(self.fence(ops)?).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, after).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }
    /// One less than the inner store's: the check takes one operation of every transaction
    /// (at least 1, so a store that takes a single operation still gets chunks of one, which
    /// it then refuses as too large).
    fn max_txn_ops(&self) -> usize {
        self.inner.max_txn_ops().saturating_sub(1).max(1)
    }
}

/// How a [`StoreElector`] elects: the key it holds and how long a term lasts unrenewed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreElectorConfig {
    /// The leader key (default [`LEADER_KEY`]).
    pub key: String,
    /// How long the key stands without a renewal before another candidate may take it over
    /// (default 1 s). The holder renews every `ttl / 4` and gives up after `ttl * 3 / 4`
    /// without an acknowledged renewal.
    pub ttl: Duration,
}

impl Default for StoreElectorConfig {
    fn default() -> Self {
        StoreElectorConfig {
            key: LEADER_KEY.to_string(),
            ttl: Duration::from_secs(1),
        }
    }
}

/// The shortest [`StoreElectorConfig::ttl`] accepted.
pub const MIN_STORE_ELECTOR_TTL: Duration = Duration::from_millis(40);

/// An [`Elector`] over any [`Store`], for tests and embedders without etcd: the leader key
/// holds the leader's name and stands for `ttl` after each renewal (a compare-and-swap on its
/// mod revision).
///
/// - **Campaign:** create the key if it is absent. If another holds it, watch it; when its mod
///   revision has not changed for `ttl` as this candidate's clock measures it from when it
///   saw that revision, delete it (only at that mod revision, so a renewal that came in
///   between wins) and create it anew. A term is the create revision, so every term has its
///   own (a takeover is delete then create, never an update).
/// - **Renewal** happens inside [`Elector::lost`]: while it is awaited, the holder renews
///   every `ttl / 4`; `lost` resolves when a renewal finds the key gone or changed, when the
///   watch shows it deleted or recreated, or `ttl * 3 / 4` after the *send* of the last
///   acknowledged renewal. A takeover needs `ttl` of silence measured from after a renewal
///   was committed, so the holder has stopped a quarter TTL before anyone else can lead.
///   A holder that stops awaiting `lost` (it crashed, or its task was dropped) stops renewing,
///   and its term ends `ttl` later.
/// - **Resign** deletes the key if it is still this term's.
///
/// Limits: time is each process's own monotonic clock (tokio's, so paused-clock tests
/// work). Candidates in one process agree exactly; across processes the scheme holds only if
/// their clocks run at the same rate and the store answers well within a quarter TTL. A
/// deposed leader that does not notice (frozen) still cannot write through [`Fenced`]. For
/// managers on several hosts, use an etcd lease (`orch_store::etcd::Election`).
pub struct StoreElector {
    store: Arc<dyn Store>,
    name: String,
    config: StoreElectorConfig,
    held: Mutex<Option<Held>>,
}

/// The term this candidate holds and its last acknowledged renewal.
#[derive(Clone, Copy, Debug)]
struct Held {
    created: Revision,
    modified: Revision,
    /// When the last acknowledged write of the key (the create or a renewal) was sent.
    acked_send: Instant,
}

impl StoreElector {
    /// A candidate named `name` (recorded in the key and in its terms) over `store`. Fails
    /// naming the value when `name` is empty, the key does not start with `/`, or the TTL is
    /// shorter than [`MIN_STORE_ELECTOR_TTL`].
    pub fn new(
        store: Arc<dyn Store>,
        name: impl Into<String>,
        config: StoreElectorConfig,
    ) -> Result<StoreElector, String> {
        let name = name.into();
        if name.is_empty() {
            return Err(
                "elector name is empty: give the candidate a name (a manager's name)".into(),
            );
        }
        if !config.key.starts_with('/') {
            return Err(format!(
                "leader key {:?} must start with '/' (e.g. {LEADER_KEY})",
                config.key
            ));
        }
        if config.ttl < MIN_STORE_ELECTOR_TTL {
            return Err(format!(
                "leader lease ttl {:?} is too short: use at least {:?}",
                config.ttl, MIN_STORE_ELECTOR_TTL
            ));
        }
        Ok(StoreElector {
            store,
            name,
            config,
            held: Mutex::new(None),
        })
    }

    /// The configured TTL.
    pub fn ttl(&self) -> Duration {
        self.config.ttl
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current key, if present (an exact match: the prefix may match other keys).
    async fn current(&self) -> Result<(Option<KeyValue>, Revision), StoreError> {
        let (kvs, rev) = self.store.list(&self.config.key).await?;
        Ok((kvs.into_iter().find(|kv| kv.key == self.config.key), rev))
    }

    fn events_of_key(&self, events: Vec<WatchEvent>) -> impl Iterator<Item = WatchEvent> + '_ {
        events.into_iter().filter(|e| e.key() == self.config.key)
    }
}

/// The next batch of `watch`, or never when there is none.
async fn next_batch(watch: &mut Option<WatchStream>) -> Option<Result<WatchBatch, StoreError>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

#[async_trait]
impl Elector for StoreElector {
    fn name(&self) -> &str {
        &self.name
    }

    async fn campaign(&self) -> Result<Term, StoreError> {
        let key = &self.config.key;
        // The holder's mod revision and when this candidate first saw it.
        let mut observed: Option<(Revision, Instant)> = None;
        loop {
            let (current, rev) = self.current().await?;
            let Some(kv) = current else {
                let sent = Instant::now();
                let create = Op::Create {
                    key: key.clone(),
                    value: self.name.as_bytes().to_vec(),
                };
                match self.store.txn(vec![create]).await {
                    Ok(created) => {
                        *self.held() = Some(Held {
                            created,
                            modified: created,
                            acked_send: sent,
                        });
                        return Ok(Term {
                            key: key.clone(),
                            created,
                            holder: self.name.clone(),
                        });
                    }
                    Err(StoreError::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(e),
                }
            };
            let mut seen = match observed {
                Some((m, at)) if m == kv.mod_revision => (m, at),
                _ => (kv.mod_revision, Instant::now()),
            };
            observed = Some(seen);
            if Instant::now() >= seen.1 + self.config.ttl {
                // Unrenewed for a whole TTL: take it over, unless it was renewed meanwhile.
                let delete = Op::Delete {
                    key: key.clone(),
                    expected: Some(seen.0),
                };
                match self.store.txn(vec![delete]).await {
                    Ok(_) => {
                        tracing::debug!(key = %key, holder = %String::from_utf8_lossy(&kv.value), "elector: took over an expired leader key");
                    }
                    Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            // Wait for the key to change or to expire.
            let mut watch = Some(self.store.watch(key, rev).await?);
            'wait: loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(seen.1 + self.config.ttl) => break 'wait,
                    batch = next_batch(&mut watch) => match batch {
                        Some(Ok(batch)) => {
                            for event in self.events_of_key(batch.events) {
                                match event {
                                    WatchEvent::Put(kv) => {
                                        seen = (kv.mod_revision, Instant::now());
                                        observed = Some(seen);
                                    }
                                    WatchEvent::Delete { .. } => break 'wait,
                                }
                            }
                        }
                        // A broken watch: look again (an unreachable store fails the list).
                        _ => break 'wait,
                    },
                }
            }
        }
    }

    async fn lost(&self, term: &Term) {
        let key = &self.config.key;
        let Some(mut held) = *self.held() else {
            return;
        };
        if held.created != term.created || term.key != *key {
            return;
        }
        let quarter = self.config.ttl / 4;
        let mut watch = self.store.watch(key, held.modified).await.ok();
        let mut next_renew = held.acked_send + quarter;
        loop {
            let deadline = held.acked_send + self.config.ttl - quarter;
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::info!(key = %key, term = term.created, "elector: no renewal acknowledged for {:?}: giving the term up before it can expire", self.config.ttl - quarter);
                    return;
                }
                _ = tokio::time::sleep_until(next_renew) => {
                    let sent = Instant::now();
                    next_renew = sent + quarter;
                    let renew = self.store.txn(vec![Op::Update {
                        key: key.clone(),
                        value: self.name.as_bytes().to_vec(),
                        expected: held.modified,
                    }]);
                    match tokio::time::timeout_at(deadline, renew).await {
                        Err(_) => {
                            tracing::info!(key = %key, term = term.created, "elector: renewal unanswered until the deadline: giving the term up");
                            return;
                        }
                        Ok(Ok(rev)) => {
                            held.modified = rev;
                            held.acked_send = sent;
                            let mut h = self.held();
                            if h.is_some_and(|h| h.created == held.created) {
                                *h = Some(held);
                            }
                        }
                        Ok(Err(e @ (StoreError::Conflict { .. } | StoreError::NotFound { .. } | StoreError::Fenced { .. }))) => {
                            tracing::info!(key = %key, term = term.created, error = %e, "elector: the leader key changed hands");
                            return;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(key = %key, error = %e, "elector: renewal failed; retrying");
                        }
                    }
                }
                batch = next_batch(&mut watch) => match batch {
                    Some(Ok(batch)) => {
                        for event in self.events_of_key(batch.events) {
                            let gone = match &event {
                                WatchEvent::Put(kv) => kv.create_revision != term.created,
                                WatchEvent::Delete { .. } => true,
                            };
                            if gone {
                                tracing::info!(key = %key, term = term.created, "elector: the leader key was deleted or recreated");
                                return;
                            }
                        }
                    }
                    // Renewals still find out; stop watching.
                    _ => watch = None,
                },
            }
        }
    }

    async fn resign(&self, term: &Term) {
        {
            let mut h = self.held();
            if h.is_some_and(|h| h.created == term.created) {
                *h = None;
            }
        }
        if let Ok((Some(kv), _)) = self.current().await {
            if kv.create_revision == term.created {
                let delete = Op::Delete {
                    key: self.config.key.clone(),
                    expected: Some(kv.mod_revision),
                };
                if let Err(e) = self.store.txn(vec![delete]).await {
                    tracing::debug!(key = %self.config.key, error = %e, "elector: resign failed; the term expires instead");
                }
            }
        }
    }

    async fn leader(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .current()
            .await?
            .0
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memstore::MemStore;
    use crate::store::txn_chunked;

    fn put(key: &str) -> Op {
        Op::Create {
            key: key.into(),
            value: b"v".to_vec(),
        }
    }

    /// A store that takes at most `max` operations per transaction and counts transactions.
    struct Small {
        inner: MemStore,
        max: usize,
        txns: Mutex<Vec<usize>>,
    }

    #[async_trait]
    impl Store for Small {
        async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
            self.inner.get(key).await
        }
        async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
            self.inner.list(prefix).await
        }
        async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
            if ops.len() > self.max {
                return Err(StoreError::TooLarge {
                    what: "transaction".into(),
                    size: ops.len(),
                    limit: self.max,
                });
            }
            self.txns.lock().unwrap().push(ops.len());
            self.inner.txn(ops).await
        }
        async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
            self.inner.watch(prefix, after).await
        }
        async fn revision(&self) -> Result<Revision, StoreError> {
            self.inner.revision().await
        }
        fn max_txn_ops(&self) -> usize {
            self.max
        }
    }

    async fn term_on(store: &dyn Store, holder: &str) -> Term {
        let created = store.txn(vec![put(LEADER_KEY)]).await.unwrap();
        Term {
            key: LEADER_KEY.into(),
            created,
            holder: holder.into(),
        }
    }

    #[tokio::test]
    async fn fenced_writes_land_during_the_term_and_never_after() {
        let store = Arc::new(MemStore::new());
        let term = term_on(&*store, "a").await;
        let fenced = Fenced::new(store.clone(), term.clone());
        fenced.txn(vec![put("/x/1")]).await.unwrap();
        assert!(
            fenced.get("/x/1").await.unwrap().is_some(),
            "reads pass through"
        );
        // The term ends: the key is deleted and created anew (the next term).
        store
            .txn(vec![Op::Delete {
                key: LEADER_KEY.into(),
                expected: None,
            }])
            .await
            .unwrap();
        match fenced.txn(vec![put("/x/2")]).await {
            Err(StoreError::Fenced {
                key,
                expected,
                actual: 0,
            }) => assert_eq!((key.as_str(), expected), (LEADER_KEY, term.created)),
            other => panic!("expected Fenced with the key gone, got {other:?}"),
        }
        let next = term_on(&*store, "b").await;
        match fenced.txn(vec![put("/x/2")]).await {
            Err(StoreError::Fenced { actual, .. }) => assert_eq!(actual, next.created),
            other => panic!("expected Fenced by the next term, got {other:?}"),
        }
        assert!(store.get("/x/2").await.unwrap().is_none(), "nothing landed");
        let msg = fenced.txn(vec![put("/x/2")]).await.unwrap_err().to_string();
        assert!(msg.contains("another manager leads now"), "{msg}");
        // An empty transaction writes nothing and passes through.
        let rev = store.revision().await.unwrap();
        assert_eq!(fenced.txn(vec![]).await.unwrap(), rev);
    }

    #[tokio::test]
    async fn fenced_transactions_leave_room_for_the_check_and_chunk_within_it() {
        let inner = Arc::new(Small {
            inner: MemStore::new(),
            max: 3,
            txns: Mutex::new(Vec::new()),
        });
        let term = term_on(&*inner, "a").await;
        inner.txns.lock().unwrap().clear();
        let fenced = Fenced::new(inner.clone(), term.clone());
        assert_eq!(fenced.max_txn_ops(), 2);
        let ops: Vec<Op> = (0..5).map(|i| put(&format!("/x/{i}"))).collect();
        txn_chunked(&fenced, ops, crate::store::MAX_TXN_OPS)
            .await
            .unwrap();
        // 5 operations in chunks of 2, each with the check: 3 + 3 + 2.
        assert_eq!(*inner.txns.lock().unwrap(), vec![3, 3, 2]);
        assert_eq!(inner.list("/x/").await.unwrap().0.len(), 5);
        // Unlimited stays (almost) unlimited.
        let plain = Fenced::new(Arc::new(MemStore::new()), term);
        assert_eq!(plain.max_txn_ops(), usize::MAX - 1);
    }

    #[tokio::test]
    async fn a_fenced_transaction_may_not_write_the_leader_key() {
        let store = Arc::new(MemStore::new());
        let term = term_on(&*store, "a").await;
        let fenced = Fenced::new(store.clone(), term.clone());
        let err = fenced
            .txn(vec![Op::Delete {
                key: LEADER_KEY.into(),
                expected: None,
            }])
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("may not also write /cluster/leader"),
            "{err}"
        );
        assert!(store.get(LEADER_KEY).await.unwrap().is_some());
        // Its own check, given again, is not doubled.
        fenced
            .txn(vec![
                put("/x/1"),
                Op::Check {
                    key: LEADER_KEY.into(),
                    created: term.created,
                },
            ])
            .await
            .unwrap();
    }

    fn elector(store: &Arc<MemStore>, name: &str) -> Arc<StoreElector> {
        Arc::new(StoreElector::new(store.clone(), name, StoreElectorConfig::default()).unwrap())
    }

    #[test]
    fn bad_elector_settings_are_refused_by_name() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let err = |name: &str, key: &str, ms: u64| {
            StoreElector::new(
                store.clone(),
                name,
                StoreElectorConfig {
                    key: key.into(),
                    ttl: Duration::from_millis(ms),
                },
            )
            .err()
            .unwrap()
        };
        assert!(err("", LEADER_KEY, 1000).contains("elector name is empty"));
        assert!(err("a", "leader", 1000).contains("\"leader\" must start with '/'"));
        assert!(err("a", LEADER_KEY, 0).contains("ttl 0ns is too short: use at least 40ms"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewed_term_holds_and_an_unrenewed_one_is_taken_over_after_the_ttl() {
        let store = Arc::new(MemStore::new());
        let (a, b) = (elector(&store, "a"), elector(&store, "b"));
        let ta = a.campaign().await.unwrap();
        assert_eq!((ta.holder.as_str(), ta.key.as_str()), ("a", LEADER_KEY));
        assert_eq!(b.leader().await.unwrap().as_deref(), Some("a"));
        // While a awaits `lost` it renews: b waits 5 s (paused clock) in vain.
        let b2 = b.clone();
        let mut campaign = tokio::spawn(async move { b2.campaign().await });
        let a2 = a.clone();
        let ta2 = ta.clone();
        let holding = tokio::spawn(async move { a2.lost(&ta2).await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!campaign.is_finished() && !holding.is_finished());
        // a stops renewing (its holder died): b leads one TTL after the last renewal.
        holding.abort();
        let t0 = Instant::now();
        let tb = (&mut campaign).await.unwrap().unwrap();
        assert!(t0.elapsed() <= Duration::from_secs(1), "{:?}", t0.elapsed());
        assert!(
            t0.elapsed() >= Duration::from_millis(700),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(tb.holder, "b");
        assert!(tb.created > ta.created, "a new term, a new create revision");
        // a's term is over: its lost resolves at once (the key was recreated).
        tokio::time::timeout(Duration::from_millis(10), a.lost(&ta))
            .await
            .unwrap();
        // And a's resign does not touch b's term.
        a.resign(&ta).await;
        assert_eq!(a.leader().await.unwrap().as_deref(), Some("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn resign_hands_over_at_once() {
        let store = Arc::new(MemStore::new());
        let (a, b) = (elector(&store, "a"), elector(&store, "b"));
        let ta = a.campaign().await.unwrap();
        let b2 = b.clone();
        let campaign = tokio::spawn(async move { b2.campaign().await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = Instant::now();
        a.resign(&ta).await;
        let tb = campaign.await.unwrap().unwrap();
        assert_eq!(
            t0.elapsed(),
            Duration::ZERO,
            "campaigns the moment the key is deleted"
        );
        assert_eq!(tb.holder, "b");
    }

    /// A store whose writes hang while `stuck` is set: a holder cut off from its store.
    struct Stuck {
        inner: Arc<MemStore>,
        stuck: tokio::sync::watch::Sender<bool>,
    }

    #[async_trait]
    impl Store for Stuck {
        async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
            self.inner.get(key).await
        }
        async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
            self.inner.list(prefix).await
        }
        async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
            let mut rx = self.stuck.subscribe();
            let _ = rx.wait_for(|s| !*s).await;
            self.inner.txn(ops).await
        }
        async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
            self.inner.watch(prefix, after).await
        }
        async fn revision(&self) -> Result<Revision, StoreError> {
            self.inner.revision().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_whose_renewals_hang_gives_up_before_another_can_lead() {
        let store = Arc::new(MemStore::new());
        let cut = Arc::new(Stuck {
            inner: store.clone(),
            stuck: tokio::sync::watch::channel(false).0,
        });
        let a =
            Arc::new(StoreElector::new(cut.clone(), "a", StoreElectorConfig::default()).unwrap());
        let b = elector(&store, "b");
        let ta = a.campaign().await.unwrap();
        let b2 = b.clone();
        let campaign = tokio::spawn(async move {
            let t = b2.campaign().await.unwrap();
            (t, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(600)).await;
        cut.stuck.send_replace(true);
        let t0 = Instant::now();
        a.lost(&ta).await;
        let gave_up = Instant::now();
        let (tb, led) = campaign.await.unwrap();
        assert_eq!(tb.holder, "b");
        assert!(
            gave_up < led,
            "a gave up at {:?}, b led at {:?} after the cut",
            gave_up - t0,
            led - t0
        );
        assert!(
            led - gave_up >= Duration::from_millis(250),
            "a quarter TTL of margin: {:?}",
            led - gave_up
        );
        cut.stuck.send_replace(false);
    }
}
