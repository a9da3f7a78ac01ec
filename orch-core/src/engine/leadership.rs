//! The leadership loop of an engine built with an elector: campaign; once elected, wait for
//! the cache to reflect the term's revision, start the control plane over a context whose
//! store is fenced on the term; when the term is lost (or the engine shuts down) stop it —
//! cancel first, never wait past the lease — and campaign again. Shutdown resigns.
//!
//! Why the cache must catch up first: the previous leader's writes all precede the new
//! term's key in the store's order (a write fenced on the old term cannot commit after the
//! old key is gone), so a cache at the term's create revision holds every one of them, and
//! the replication controller cannot create a replica the previous leader created a moment
//! before (replica names are fresh, so only the cache keeps it from doing so).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::engine::ctx::Ctx;
use crate::engine::ControllerSet;
use crate::leader::{Elector, Term};

/// How often a standby asks who leads.
const LEADER_REFRESH: Duration = Duration::from_secs(1);
/// How long a stepping-down control plane may take to stop before its tasks are aborted.
/// An elector's `lost` resolves a margin before the lease ends (a quarter TTL for orch's
/// electors); this stays under it for a 1 s TTL.
const STEP_DOWN_GRACE: Duration = Duration::from_millis(200);
/// How long a shutdown waits for the resign.
const RESIGN_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff after a failed campaign: from the first value, doubling, to the second.
const CAMPAIGN_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// Records that this engine's control plane started (for `term`, with an elector).
pub(crate) fn started(ctx: &Ctx, term: Option<&Term>) {
    ctx.leadership.send_modify(|l| {
        l.leading = true;
        l.leader = term.map(|t| t.holder.clone());
        l.term = term.cloned();
        l.changes += 1;
        l.since = Some(SystemTime::now());
        l.first_reconcile = None;
    });
}

/// Records that this engine's control plane stopped.
pub(crate) fn stopped(ctx: &Ctx) {
    ctx.leadership.send_if_modified(|l| {
        if !l.leading {
            return false;
        }
        l.leading = false;
        l.leader = None;
        l.term = None;
        l.changes += 1;
        l.since = None;
        l.first_reconcile = None;
        true
    });
}

/// A standby's view of who leads.
fn observed_leader(ctx: &Ctx, leader: Option<String>) {
    ctx.leadership.send_if_modified(|l| {
        if l.leading || l.leader == leader {
            return false;
        }
        l.leader = leader;
        true
    });
}

/// Why a term's control plane stopped.
enum End {
    Lost,
    Shutdown,
}

/// Runs the leadership loop until the engine shuts down.
pub(crate) async fn run(ctx: Arc<Ctx>, elector: Arc<dyn Elector>) {
    let cancel = ctx.cancel.clone();
    let mut backoff = CAMPAIGN_BACKOFF.0;
    loop {
        let campaign = {
            let campaign = elector.campaign();
            tokio::pin!(campaign);
            let mut refresh = tokio::time::interval(LEADER_REFRESH);
            refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
                    r = &mut campaign => break r,
                    _ = refresh.tick() => {
                        if let Ok(Ok(leader)) = tokio::time::timeout(LEADER_REFRESH, elector.leader()).await {
                            observed_leader(&ctx, leader);
                        }
                    }
                }
            }
        };
        let term = match campaign {
            Ok(term) => {
                backoff = CAMPAIGN_BACKOFF.0;
                term
            }
            Err(e) => {
                tracing::warn!(candidate = %elector.name(), error = %e, "control plane: campaign failed; trying again in {backoff:?}");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(CAMPAIGN_BACKOFF.1);
                continue;
            }
        };
        let began = tokio::time::Instant::now();
        let end = lead(&ctx, &*elector, &term).await;
        if let End::Lost = end {
            // An elector that loses at once (its store refuses the lease) must not make this
            // loop spin.
            if began.elapsed() < LEADER_REFRESH {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(CAMPAIGN_BACKOFF.0) => {}
                }
            }
            continue;
        }
        // Shutting down: hand the term over at once.
        if tokio::time::timeout(RESIGN_TIMEOUT, elector.resign(&term))
            .await
            .is_err()
        {
            tracing::warn!(
                term = term.created,
                "control plane: resign timed out; the term expires instead"
            );
        }
        return;
    }
}

/// Leads for `term`: runs the control plane until the term is lost or the engine shuts down.
async fn lead(ctx: &Arc<Ctx>, elector: &dyn Elector, term: &Term) -> End {
    let cancel = &ctx.cancel;
    // Awaited for the whole term: an elector may renew its lease inside it.
    let lost = elector.lost(term);
    tokio::pin!(lost);
    tokio::select! {
        biased;
        _ = cancel.cancelled() => return End::Shutdown,
        _ = &mut lost => {
            tracing::info!(term = term.created, "control plane: term lost before the cache caught up with it");
            return End::Lost;
        }
        _ = ctx.cache.wait_for(term.created) => {}
    }
    tracing::info!(term = term.created, holder = %term.holder, "control plane: leading (term {})", term.created);
    started(ctx, Some(term));
    let set = ControllerSet::control_plane(&ctx.for_control_plane(Some(term)));
    let (end, why) = tokio::select! {
        biased;
        _ = cancel.cancelled() => (End::Shutdown, "shutting down"),
        _ = &mut lost => (End::Lost, "the term ended or its lease could not be renewed"),
    };
    tracing::info!(term = term.created, "control plane: stepping down ({why})");
    set.step_down(STEP_DOWN_GRACE).await;
    stopped(ctx);
    end
}
