//! The agent's probe loop: runs the checks of the probes of its replicas through the runtime,
//! feeds the results to a [`ProbeTracker`] per run, stops a run whose liveness or startup
//! probe failed, and hands the status the probes decide to the agent's reconcile (the agent
//! alone writes its replicas' status).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::object::{DesiredState, Kind, Replica};
use crate::node::probes::{self, ProbeKind, ProbeTracker, ProbeView, Verdict};
use crate::runtime::ProbeResult;

use super::Agent;

/// At most one "probe failed" warning per replica and probe in this period.
const FAILURE_WARNING_EVERY: Duration = Duration::from_secs(60);

/// How often the loop looks for checks that are due.
const TICK: Duration = Duration::from_millis(100);

impl Agent {
    /// What the probes say of run `run` of workload `id`, if they decide its status.
    pub(super) fn probe_view(&self, id: &str, run: &str) -> Option<ProbeView> {
        self.lock()
            .probed
            .get(id)
            .filter(|(r, _)| r == run)
            .map(|(_, v)| v.clone())
    }

    /// Runs the probes of the replicas on this node until the engine stops. Replicas the agent
    /// [holds](Agent::holds) a newer status for than the store (a crash loop) are skipped.
    pub(super) async fn probe_loop(self: Arc<Self>) {
        // Each replica's tracker, and whether its run is being stopped.
        let mut trackers: HashMap<String, (ProbeTracker, bool)> = HashMap::new();
        // When each replica's probe last warned it started failing (across runs).
        let mut warned: HashMap<(String, ProbeKind), Instant> = HashMap::new();
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(String, String, ProbeKind, ProbeResult)>();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let rec = self.ctx.recorder.with_source("prober");
        loop {
            tokio::select! {
                _ = self.ctx.cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let replicas: Vec<Replica> = self
                .ctx
                .cache
                .replicas_on_node(&self.cfg.node)
                .into_iter()
                .filter(|r| {
                    r.spec.desired == DesiredState::Running
                        && r.status.phase.is_up()
                        && !r.status.runtime_id.is_empty()
                        && probes::has_probes(&r.spec.template)
                        && !self.holds(&r.runtime_name())
                })
                .collect();
            let live: HashSet<String> = replicas.iter().map(|r| r.runtime_name()).collect();
            trackers.retain(|id, _| live.contains(id));
            self.lock().probed.retain(|id, _| live.contains(id));
            warned.retain(|(id, _), at| {
                live.contains(id) || now.duration_since(*at) < FAILURE_WARNING_EVERY
            });
            // Results of checks that finished.
            while let Ok((id, run, kind, result)) = rx.try_recv() {
                let Some((tracker, _)) = trackers.get_mut(&id).filter(|(t, _)| t.run() == run)
                else {
                    continue;
                };
                let Some(r) = replicas.iter().find(|r| r.runtime_name() == id) else {
                    continue;
                };
                let seen = tracker.observe(kind, result, Instant::now());
                if let Some(error) = seen.readiness_failed {
                    // Once per transition to failing, and at most once a minute per replica
                    // and probe (a probe that flaps is not an event per period).
                    let key = (id.clone(), kind);
                    let quiet = warned
                        .get(&key)
                        .is_none_or(|at| now.duration_since(*at) >= FAILURE_WARNING_EVERY);
                    if quiet {
                        warned.insert(key, now);
                        rec.warning(
                            Kind::Replica,
                            &r.metadata.namespace,
                            &r.metadata.name,
                            "Unhealthy",
                            format!("{} probe failed: {error}", kind.name()),
                        );
                    }
                }
            }
            for r in &replicas {
                let id = r.runtime_name();
                let (tracker, stopping) = trackers
                    .entry(id.clone())
                    .or_insert_with(|| (ProbeTracker::new(&r.spec.template, "", now), false));
                if tracker.run() != r.status.runtime_id {
                    // A new run: start over.
                    *tracker = ProbeTracker::new(&r.spec.template, &r.status.runtime_id, now);
                    *stopping = false;
                }
                if *stopping {
                    continue;
                }
                // A failed liveness or startup probe: stop the run; the agent restarts it.
                if let Verdict::Failed(kind, why) = tracker.verdict() {
                    *stopping = true;
                    tracing::info!(replica = %id, probe = kind.name(), error = %why, "probe failed: restarting");
                    rec.warning(
                        Kind::Replica,
                        &r.metadata.namespace,
                        &r.metadata.name,
                        "Unhealthy",
                        format!("{} probe failed: {why}; restarting", kind.name()),
                    );
                    let (me, id, run, signal, grace) = (
                        self.clone(),
                        id.clone(),
                        tracker.run().to_string(),
                        r.spec.template.stop_signal().to_string(),
                        r.spec.template.stop_grace(),
                    );
                    tokio::spawn(async move {
                        if let Ok(status) = me.runtime.stop(&id, &signal, grace).await {
                            // As the runtime's exit event says (if it sends one): this run
                            // ended, restart it by its policy.
                            me.exited(&id, Some(&run), status);
                        }
                    });
                    continue;
                }
                // Start the checks that are due.
                for (kind, probe) in tracker.due(now) {
                    let (runtime, tx, id, run) = (
                        self.runtime.clone(),
                        tx.clone(),
                        id.clone(),
                        tracker.run().to_string(),
                    );
                    let action = probes::action_of(&r.status, &probe);
                    tokio::spawn(async move {
                        let result = match action {
                            Ok(action) => runtime.probe(&id, &action, probe.timeout()).await,
                            Err(e) => Err(e),
                        };
                        let _ = tx.send((id, run, kind, result));
                    });
                }
                // What the status should say: the agent's reconcile writes it.
                let view = tracker.view();
                let mut want = r.status.clone();
                view.apply(&r.spec.template, &mut want);
                let changed = {
                    let mut g = self.lock();
                    let old = g
                        .probed
                        .insert(id.clone(), (tracker.run().to_string(), view.clone()));
                    old.is_none_or(|(run, v)| run != tracker.run() || v != view)
                };
                if changed || want != r.status {
                    self.queue
                        .add(Kind::Replica.key(&r.metadata.namespace, &r.metadata.name));
                }
            }
        }
    }
}
