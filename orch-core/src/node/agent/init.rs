//! Init steps (Kubernetes' `initContainers`): run to completion, one after the other, before
//! a replica's main workload starts, in a background task per replica.
//!
//! Each step runs on the replica's runtime under the replica's own workload id (so it shares
//! the replica's network namespace, tmpfs mounts, hostname and log: `orchctl logs` shows the
//! steps' output before the main workload's), with the template's user, variables and mounts
//! plus its own. While they run the replica is `Starting` with reason `Init` and a message
//! naming the step (`init step 2/3 (migrate) running`). A step that exits non-zero (or cannot
//! start) fails the start: the replica is retried after the restart backoff from the first
//! step (`restartPolicy: Never`: it fails for good, saying which step failed and how).
//! Steps that completed are not run again when the main workload restarts (as Kubernetes,
//! which runs them again only for a new pod): the agent remembers it for the replica's uid,
//! and a replica whose main workload has started once (`status.startedAt`) never runs them
//! again, even after the agent restarts.

use std::sync::Arc;
use std::time::Duration;

use crate::model::object::{ExitStatus, Phase, Reason, Replica, ReplicaStatus, Template};
use crate::runtime::{RuntimeError, RuntimeEvent, WorkloadMount, WorkloadSpec, WorkloadState};

use super::{id_of, Agent, Outcome};

/// Marks an init step's run in its workload's template hash (`HASH/init/NAME`): a run the
/// agent finds after a restart is stopped, and the steps run again.
pub(super) const INIT_MARK: &str = "/init/";

/// Where a replica's init steps are.
#[derive(Clone, Debug)]
pub(super) enum InitState {
    /// Step `step` (from 0) of `total`, called `name`, runs.
    Running {
        step: usize,
        total: usize,
        name: String,
    },
    /// Every step exited 0.
    Done,
    /// A step failed (`message` says which and how); `reported` once the replica's status
    /// said so (then the steps run again once the restart backoff is over).
    Failed {
        message: String,
        exit: ExitStatus,
        reported: bool,
    },
}

/// A replica's init steps: the replica's uid, where they are, the task running them and
/// which run of them it is (a task writes its outcome only into its own run).
pub(super) struct InitRun {
    pub(super) uid: String,
    pub(super) state: InitState,
    pub(super) task: Option<tokio::task::AbortHandle>,
    pub(super) run: u64,
}

/// The status of a replica whose init steps run.
pub(super) fn init_status(
    mut st: ReplicaStatus,
    step: usize,
    total: usize,
    name: &str,
) -> ReplicaStatus {
    st.phase = Phase::Starting;
    st.reason = Reason::Other("Init".into());
    st.message = format!("init step {}/{total} ({name}) running", step + 1);
    st.runtime_id.clear();
    st.ports.clear();
    st
}

impl Agent {
    /// Whether replica `r`'s init steps still have to run before its main workload starts
    /// (`false` once they all exited 0 for it, or its main workload started once).
    pub(super) fn init_pending(&self, r: &Replica) -> bool {
        if r.spec.template.init.is_empty() || r.status.started_at.is_some() {
            return false;
        }
        let g = self.lock();
        !matches!(
            g.init.get(&id_of(r)),
            Some(InitRun { uid, state: InitState::Done, .. }) if *uid == r.metadata.uid
        )
    }

    /// While replica `id`'s init steps run: its status (for `replica`, if it is still that
    /// replica and wants to run), else `None` — and if the replica is gone, stopped or
    /// replaced, the steps are cancelled and their run stopped first.
    pub(super) async fn init_outcome(
        &self,
        id: &str,
        replica: Option<&Replica>,
    ) -> Option<Outcome> {
        let (uid, state) = {
            let g = self.lock();
            let run = g.init.get(id)?;
            (run.uid.clone(), run.state.clone())
        };
        let wanted = replica.filter(|r| {
            r.metadata.uid == uid && r.spec.desired == crate::model::object::DesiredState::Running
        });
        match (wanted, state) {
            (Some(r), InitState::Running { step, total, name }) => Some(Outcome {
                status: Some(init_status(r.status.clone(), step, total, &name)),
                ops: Vec::new(),
                requeue_after: None,
            }),
            (Some(_), _) => None,
            (None, state) => {
                let task = self.lock().init.remove(id).and_then(|r| r.task);
                if let Some(t) = task {
                    t.abort();
                }
                // A step's run (running, or exited and left in the runtime) goes; a main
                // workload the agent knows is left to the usual stop.
                if !self.lock().workloads.contains_key(id) {
                    if matches!(state, InitState::Running { .. }) {
                        if let Err(e) = self.runtime.stop(id, "SIGKILL", Duration::ZERO).await {
                            tracing::debug!(workload = %id, error = %e, "agent: stopping an init step failed");
                        }
                    }
                    self.remove_step_run(id).await;
                }
                None
            }
        }
    }

    /// Removes what the runtime keeps of an init step's run under `id` (gone already is fine).
    pub(super) async fn remove_step_run(&self, id: &str) {
        match self.runtime.remove(id).await {
            Ok(()) | Err(RuntimeError::NotFound(_)) => {}
            Err(e) => {
                tracing::debug!(workload = %id, error = %e, "agent: removing an init step's run failed")
            }
        }
    }

    /// Starts running replica `r`'s init steps in the background (`spec`: the main
    /// workload's, whose id, network and environment the steps share) and returns the
    /// replica's status meanwhile.
    pub(super) fn start_init(
        self: &Arc<Self>,
        r: &Replica,
        spec: WorkloadSpec,
        steps: Vec<(String, Template, Vec<WorkloadMount>)>,
    ) -> Outcome {
        let id = spec.id.clone();
        let total = steps.len();
        let first = steps.first().map(|s| s.0.clone()).unwrap_or_default();
        let me = self.clone();
        let uid = r.metadata.uid.clone();
        let key = crate::model::object::Kind::Replica.key(&r.metadata.namespace, &r.metadata.name);
        let mut g = self.lock();
        // Already running for this replica: only say so.
        if let Some(InitRun {
            state: InitState::Running { step, total, name },
            ..
        }) = g.init.get(&id).filter(|run| run.uid == uid)
        {
            return Outcome {
                status: Some(init_status(r.status.clone(), *step, *total, name)),
                ops: Vec::new(),
                requeue_after: None,
            };
        }
        g.init_runs += 1;
        let run = g.init_runs;
        g.init.insert(
            id.clone(),
            InitRun {
                uid: uid.clone(),
                state: InitState::Running {
                    step: 0,
                    total,
                    name: first.clone(),
                },
                task: None,
                run,
            },
        );
        let task = tokio::spawn(async move {
            let state = me.run_steps(run, spec, steps).await;
            if let Some(r) = me.lock().init.get_mut(&id).filter(|r| r.run == run) {
                r.state = state;
                r.task = None;
            }
            me.queue.add(key);
        });
        if let Some(r) = g.init.get_mut(&id_of(r)).filter(|r| r.run == run) {
            r.task = Some(task.abort_handle());
        }
        drop(g);
        Outcome {
            status: Some(init_status(r.status.clone(), 0, total, &first)),
            ops: Vec::new(),
            requeue_after: None,
        }
    }

    async fn run_steps(
        self: &Arc<Self>,
        run: u64,
        base: WorkloadSpec,
        steps: Vec<(String, Template, Vec<WorkloadMount>)>,
    ) -> InitState {
        let id = base.id.clone();
        let total = steps.len();
        let key = super::key_of_id(&id);
        for (i, (name, template, mounts)) in steps.into_iter().enumerate() {
            if let Some(r) = self.lock().init.get_mut(&id).filter(|r| r.run == run) {
                r.state = InitState::Running {
                    step: i,
                    total,
                    name: name.clone(),
                };
            }
            self.queue.add(key.clone());
            let what = format!("init step {}/{total} ({name})", i + 1);
            let spec = WorkloadSpec {
                template,
                mounts,
                template_hash: format!("{}{INIT_MARK}{name}", base.template_hash),
                ..base.clone()
            };
            let mut events = self.runtime.events();
            let w = match self.runtime.start(&spec).await {
                Ok(w) => w,
                Err(e) => {
                    return InitState::Failed {
                        reported: false,
                        message: format!("{what} could not start: {e}"),
                        exit: ExitStatus {
                            code: Some(127),
                            at: Some(crate::model::quantity::Timestamp::now()),
                            ..ExitStatus::default()
                        },
                    }
                }
            };
            let exit = self.wait_exit(&id, &w.runtime_id, &mut events).await;
            // A refresh may have listed the step's run as the replica's workload.
            {
                let mut g = self.lock();
                if g.workloads
                    .get(&id)
                    .is_some_and(|x| x.runtime_id == w.runtime_id)
                {
                    g.workloads.remove(&id);
                }
            }
            if !exit.success() {
                let tail = self.log_tail(&id).await;
                return InitState::Failed {
                    reported: false,
                    message: format!(
                        "{what} failed: {exit}{}",
                        if tail.is_empty() {
                            String::new()
                        } else {
                            format!("; last output: {tail}")
                        }
                    ),
                    exit,
                };
            }
            tracing::debug!(workload = %id, step = %name, "agent: init step completed");
        }
        InitState::Done
    }

    /// How run `run` of workload `id` exited. The runtime's list says it (an exit event
    /// alone could be an earlier step's, which the runtime records before it sends the
    /// event); its exit event is awaited too, a moment at most, so that it is not taken for
    /// the next run's.
    async fn wait_exit(
        &self,
        id: &str,
        run: &str,
        events: &mut tokio::sync::broadcast::Receiver<RuntimeEvent>,
    ) -> ExitStatus {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut exited: Option<(ExitStatus, tokio::time::Instant)> = None;
        let mut event = false;
        loop {
            if let Some((status, seen)) = &exited {
                if event || seen.elapsed() >= Duration::from_secs(2) {
                    return status.clone();
                }
            }
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(RuntimeEvent::Exited { id: eid, .. }) if eid == id => {
                        // Ours only once the list says this run exited.
                        if exited.is_some() {
                            event = true;
                        } else {
                            tick.reset_immediately();
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => *events = self.runtime.events(),
                },
                _ = tick.tick(), if exited.is_none() => {
                    if let Ok(list) = self.runtime.list().await {
                        let status = match list.into_iter().find(|w| w.id == id) {
                            Some(w) if w.runtime_id == run => match w.state {
                                WorkloadState::Exited(s) => s,
                                WorkloadState::Running => continue,
                            },
                            // Gone, or replaced by something else: it did not succeed.
                            _ => ExitStatus::default(),
                        };
                        exited = Some((status, tokio::time::Instant::now()));
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(100)), if exited.is_some() => {}
            }
        }
    }

    /// Before a start of replica `r`: a failed init run is reported once (retried after the
    /// restart backoff, or failed for good with `restartPolicy: Never`), waited out while the
    /// backoff lasts (a reconcile of a stale status must not run the steps at once), then
    /// forgotten so the steps run again. `Some`: what the start answers instead; `None`: go on.
    pub(super) async fn init_check(
        &self,
        r: &Replica,
        st: &ReplicaStatus,
        restart: bool,
        rec: &crate::engine::events::Recorder,
    ) -> Option<Outcome> {
        let id = id_of(r);
        let restarts = r.spec.template.restart_policy.restarts(false);
        let (message, exit, reported) = {
            let mut g = self.lock();
            let Some(InitRun {
                state:
                    InitState::Failed {
                        message,
                        exit,
                        reported,
                    },
                ..
            }) = g.init.get_mut(&id).filter(|run| run.uid == r.metadata.uid)
            else {
                return None;
            };
            let was = *reported;
            *reported = true;
            (message.clone(), exit.clone(), was)
        };
        if !restarts {
            return Some(self.init_failed_for_good(r, st.clone(), message, exit, rec));
        }
        if !reported {
            let mut o = self
                .start_failed(
                    r,
                    st.clone(),
                    restart,
                    RuntimeError::StartFailed(message),
                    rec,
                )
                .await;
            if let Some(st) = &mut o.status {
                st.last_exit = Some(exit);
            }
            return Some(o);
        }
        let wait = {
            let g = self.lock();
            g.backoff
                .get(&id)
                .and_then(|b| b.retry_at)
                .map(|at| at.saturating_duration_since(tokio::time::Instant::now()))
                .filter(|d| !d.is_zero())
        };
        match wait {
            Some(d) => Some(Outcome {
                status: None,
                ops: Vec::new(),
                requeue_after: Some(d),
            }),
            None => {
                self.lock().init.remove(&id);
                None
            }
        }
    }

    fn init_failed_for_good(
        &self,
        r: &Replica,
        mut st: ReplicaStatus,
        message: String,
        exit: ExitStatus,
        rec: &crate::engine::events::Recorder,
    ) -> Outcome {
        let text = format!("{message}; restart policy Never");
        if st.reason != Reason::Error || st.message != text {
            rec.warning(
                crate::model::object::Kind::Replica,
                &r.metadata.namespace,
                &r.metadata.name,
                "InitError",
                message,
            );
        }
        st.phase = Phase::Failed;
        st.reason = Reason::Error;
        st.message = text;
        st.runtime_id.clear();
        st.last_exit = Some(exit);
        Outcome {
            status: Some(st),
            ops: Vec::new(),
            requeue_after: None,
        }
    }
}
