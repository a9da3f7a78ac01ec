//! Batched status writes, and the status held back while a replica crash-loops.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::model::object::{DesiredState, Object, Phase, Replica, ReplicaStatus};
use crate::store::{update_op, Op, StoreError};

use super::backoff::CRASH_LOOP;
use super::{id_of_key, Agent, Outcome};

/// While a replica crash-loops its status is written at most once per this period: the
/// restarts in between are counted in the agent and written together, so a replica that
/// crashes hundreds of times a second costs a few store revisions a second, not one per
/// restart. A change of readiness is never held.
pub(super) const STATUS_HOLD: Duration = Duration::from_millis(500);

pub(super) fn with_status(r: &Replica, status: ReplicaStatus) -> Option<Op> {
    (status != r.status).then(|| {
        let mut r = r.clone();
        r.status = status;
        update_op(&Object::Replica(r))
    })
}

impl Agent {
    pub(super) async fn process(self: &Arc<Self>, keys: Vec<String>) {
        let outcomes: Vec<(String, Outcome)> = futures::stream::iter(keys)
            .map(|k| {
                let me = self.clone();
                async move {
                    let o = me.reconcile(&k).await;
                    (k, o)
                }
            })
            .buffer_unordered(self.cfg.concurrency.max(1))
            .collect()
            .await;
        let mut ops = Vec::new();
        let mut op_keys = Vec::new();
        for (k, o) in &outcomes {
            if let Some(d) = o.requeue_after {
                self.queue.add_after(k.clone(), d);
            }
            for op in &o.ops {
                op_keys.push(k.clone());
                ops.push(op.clone());
            }
        }
        if !ops.is_empty() {
            let mut last = None;
            let size = crate::store::MAX_TXN_OPS.min(self.ctx.store.max_txn_ops());
            let mut done = 0;
            let mut failed = None;
            for chunk in ops.chunks(size.max(1)) {
                match self.ctx.store.txn(chunk.to_vec()).await {
                    Ok(rev) => {
                        last = Some(rev);
                        done += chunk.len();
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let rest = ops.into_iter().zip(op_keys).skip(done);
            match failed {
                None => {}
                Some(
                    e @ (StoreError::Conflict { .. }
                    | StoreError::NotFound { .. }
                    | StoreError::AlreadyExists { .. }),
                ) => {
                    // One stale object fails its whole chunk: write the rest one by one and
                    // retry the losers.
                    tracing::debug!(error = %e, "agent: batched status write conflicted; writing one by one");
                    for (op, k) in rest {
                        match self.ctx.store.txn(vec![op]).await {
                            Ok(rev) => last = Some(rev),
                            Err(e) => {
                                tracing::debug!(replica = %k, error = %e, "agent: status write failed; retrying");
                                self.queue.retry(k);
                            }
                        }
                    }
                }
                Some(e) => {
                    // The store is unavailable (or refused the batch): retry every replica
                    // left with backoff instead of hammering it op by op.
                    tracing::debug!(error = %e, "agent: status write failed; retrying");
                    for (_, k) in rest {
                        self.queue.retry(k);
                    }
                }
            }
            if let Some(rev) = last {
                self.ctx.cache.wait_for(rev).await;
            }
        }
        for (k, _) in outcomes {
            self.queue.done(&k);
        }
    }

    /// Reconciles one replica from its stored version, or from the status the agent holds
    /// back for it, and writes the status it should have (or holds it back a moment more).
    pub(super) async fn reconcile(self: &Arc<Self>, key: &str) -> Outcome {
        let id = id_of_key(key);
        let stored = self
            .ctx
            .cache
            .replica(key)
            .filter(|r| r.spec.node.as_deref() == Some(self.cfg.node.as_str()));
        let held = stored.as_ref().and_then(|r| {
            let g = self.lock();
            g.backoff
                .get(&id)
                .and_then(|b| b.held.as_ref())
                .filter(|(uid, _)| *uid == r.metadata.uid)
                .map(|(_, st)| st.clone())
        });
        let base = stored.clone().map(|mut r| {
            if let Some(st) = &held {
                r.status = st.clone();
            }
            r
        });
        let mut o = self.reconcile_replica(key, &id, base).await;
        let Some(r) = stored else {
            return o;
        };
        let want = o.status.take().or(held);
        let mut g = self.lock();
        let Some(b) = g.backoff.get_mut(&id) else {
            if let Some(st) = want {
                o.ops.extend(with_status(&r, st));
            }
            return o;
        };
        let Some(want) = want.filter(|st| *st != r.status && o.ops.is_empty()) else {
            b.held = None;
            return o;
        };
        let now = Instant::now();
        let hold = (b.failures >= CRASH_LOOP
            && r.spec.desired == DesiredState::Running
            && r.status.phase != Phase::Ready
            && want.phase != Phase::Ready)
            .then(|| {
                b.last_write
                    .map(|t| (t + STATUS_HOLD).saturating_duration_since(now))
            })
            .flatten()
            .filter(|left| !left.is_zero());
        match hold {
            Some(left) => {
                b.held = Some((r.metadata.uid.clone(), want));
                o.requeue_after = Some(o.requeue_after.map_or(left, |d| d.min(left)));
            }
            None => {
                b.held = None;
                b.last_write = Some(now);
                o.ops.extend(with_status(&r, want));
            }
        }
        o
    }

    /// Whether the agent holds a status for replica `id` that it has not written yet (the
    /// stored one is older: its probes are not run meanwhile).
    pub(super) fn holds(&self, id: &str) -> bool {
        self.lock()
            .backoff
            .get(id)
            .is_some_and(|b| b.held.is_some())
    }
}
