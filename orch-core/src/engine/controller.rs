//! The one controller runtime, in the shape of kube-runtime's `Controller`: a controller is a
//! [`Reconcile`] — `reconcile(key, ctx) -> Result<Action, E>` plus `error_policy(&E, &key, ctx)
//! -> Action` and the keys a cache change concerns — and [`run`] owns the rest: the work queue
//! (deduplicated keys, one reconcile per key at a time), the per-key exponential backoff, the
//! reconcile metrics (`orch_reconcile_seconds{controller=NAME}`), the feed from the cache and the
//! periodic resync.
//!
//! The engine's `ControllerSet` (in `engine/mod.rs`) starts and stops a group of controllers with one
//! [`CancellationToken`]. The engine holds two: the control plane (replication, jobs,
//! scheduling, node lifecycle), which only one engine of a cluster runs — with an elector
//! the leadership loop (`engine/leadership.rs`) starts one per term won, over a store fenced
//! on the term, and stops it when the term is lost; without one the engine leads from the
//! start ([`Engine::start_control_plane`](crate::Engine::start_control_plane) and
//! [`Engine::stop_control_plane`](crate::Engine::stop_control_plane) switch by hand) — and
//! the node-local set (endpoints), which every engine runs because it publishes to its own
//! process's discovery.
//!
//! The scheduler ([`scheduling`](crate::engine::scheduling)) and the node lifecycle
//! controller ([`nodes`](crate::engine::nodes)) are not [`Reconcile`]s: neither works per key.
//! The scheduler places every pending replica in one pass (a plan over the whole cluster
//! snapshot, written as one batch), and the node lifecycle controller checks every node's
//! heartbeat on a timer; a per-key queue would split what they must decide together. They are
//! members of the control-plane `ControllerSet` all the same, so they start and stop with it.

use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::engine::cache::Change;
use crate::engine::ctx::Ctx;
use crate::engine::queue::WorkQueue;
use crate::model::object::ObjectKey;

/// What a reconcile (or the error policy) asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Look again after this long even if nothing changes (and sooner if something does).
    Requeue(Duration),
    /// Look again when something this controller follows changes, or at the next resync.
    AwaitChange,
    /// Look again after the key's backoff: from `retry_base`, doubling per consecutive
    /// failure, up to `retry_max` ([`EngineConfig`](crate::EngineConfig)).
    Backoff,
}

impl Action {
    /// [`Action::Requeue`] after `after`.
    pub(crate) fn requeue(after: Duration) -> Action {
        Action::Requeue(after)
    }
    /// [`Action::AwaitChange`].
    pub(crate) fn await_change() -> Action {
        Action::AwaitChange
    }
}

/// A controller: what the runner asks of it. It is never told why it runs (a change, a
/// resync, a retry), so `reconcile` must be idempotent.
#[async_trait]
pub(crate) trait Reconcile: Send + Sync + 'static {
    /// Why a reconcile failed.
    type Error: Display + Send + Sync + 'static;
    /// The controller's name in metrics and logs.
    const NAME: &'static str;
    /// The keys a change of the cache concerns (none for a change this controller ignores).
    /// Runs as the cache applies the change: no store access, no waiting.
    fn keys_for(&self, ctx: &Ctx, change: &Change) -> Vec<ObjectKey>;
    /// Every key this controller looks after, queued on a resync of the cache and every
    /// resync period.
    fn all_keys(&self, ctx: &Ctx) -> Vec<ObjectKey>;
    /// Brings `key` to its desired state.
    async fn reconcile(&self, key: &ObjectKey, ctx: &Ctx) -> Result<Action, Self::Error>;
    /// What to do after `reconcile` of `key` failed with `error`; by default retry after the
    /// key's backoff.
    fn error_policy(&self, error: &Self::Error, key: &ObjectKey, ctx: &Ctx) -> Action {
        let _ = (error, key, ctx);
        Action::Backoff
    }
}

/// Runs `controller` with `workers` concurrent reconciles (one per key at a time) until
/// `cancel` fires.
pub(crate) async fn run<R: Reconcile>(
    controller: Arc<R>,
    ctx: Arc<Ctx>,
    workers: usize,
    cancel: CancellationToken,
) {
    let queue = WorkQueue::<ObjectKey>::new(ctx.config.retry_base, ctx.config.retry_max);
    let feeder = spawn_feeder(&controller, &ctx, &queue, &cancel);
    let workers: Vec<_> = (0..workers.max(1))
        .map(|_| {
            let (controller, ctx, queue) = (controller.clone(), ctx.clone(), queue.clone());
            tokio::spawn(async move {
                loop {
                    let key = queue.next().await;
                    let started = Instant::now();
                    let result = controller.reconcile(&key, &ctx).await;
                    ctx.metrics
                        .reconcile(R::NAME, result.is_ok(), started.elapsed());
                    let action = match &result {
                        Ok(action) => {
                            ctx.reconciled();
                            queue.forget(&key);
                            *action
                        }
                        Err(e) => controller.error_policy(e, &key, &ctx),
                    };
                    match action {
                        Action::Requeue(after) => queue.add_after(key.clone(), after),
                        Action::AwaitChange => {}
                        Action::Backoff => {
                            let delay = queue.retry(key.clone());
                            if let Err(e) = &result {
                                tracing::debug!(%key, error = %e, "{}: retry in {delay:?}", R::NAME);
                            }
                        }
                    }
                    queue.done(&key);
                }
            })
        })
        .collect();
    cancel.cancelled().await;
    feeder.abort();
    workers.iter().for_each(|w| w.abort());
    // Wait until the aborted tasks are gone, so nothing of this controller (its context, the
    // store) outlives the stop.
    let _ = feeder.await;
    for w in workers {
        let _ = w.await;
    }
}

/// Feeds `queue` from the cache's changes until `cancel` fires: every change becomes the keys
/// [`Reconcile::keys_for`] maps it to, at once (no change is queued, so none holds a replaced
/// object alive); a resync of the cache, and every resync period, adds every key
/// ([`Reconcile::all_keys`]). The task it returns runs the periodic resync.
fn spawn_feeder<R: Reconcile>(
    controller: &Arc<R>,
    ctx: &Arc<Ctx>,
    queue: &Arc<WorkQueue<ObjectKey>>,
    cancel: &CancellationToken,
) -> JoinHandle<()> {
    // Weak: the cache holds the callback, and the context holds the cache.
    let (weak, q, c, token) = (
        Arc::downgrade(ctx),
        queue.clone(),
        controller.clone(),
        cancel.clone(),
    );
    ctx.cache.on_change(move |change| {
        let Some(ctx) = weak.upgrade().filter(|_| !token.is_cancelled()) else {
            return false;
        };
        let keys = match change {
            Change::Resync => c.all_keys(&ctx),
            change => c.keys_for(&ctx, change),
        };
        keys.into_iter().for_each(|k| q.add(k));
        true
    });
    let (controller, ctx, queue, cancel) = (
        controller.clone(),
        ctx.clone(),
        queue.clone(),
        cancel.clone(),
    );
    tokio::spawn(async move {
        let mut resync = tokio::time::interval(ctx.config.resync);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = resync.tick() => controller.all_keys(&ctx).into_iter().for_each(|k| queue.add(k)),
            }
        }
    })
}
