//! Restart backoff: what an exit leads to (a restart now, later, or never).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::object::Reason;
use crate::model::object::{ExitStatus, Phase, Replica, ReplicaStatus};
use crate::model::quantity::Timestamp;

use super::{id_of, Agent, Outcome};

/// The restart delay after `failures` consecutive failed runs: 0, base, 2·base, ... up to max.
pub(crate) fn restart_delay(failures: u32, base: Duration, max: Duration) -> Duration {
    if failures == 0 {
        Duration::ZERO
    } else {
        base.saturating_mul(1u32 << (failures - 1).min(20)).min(max)
    }
}

#[derive(Default)]
pub(super) struct Backoff {
    pub(super) failures: u32,
    pub(super) last_start: Option<Instant>,
    pub(super) retry_at: Option<Instant>,
    /// The delay before `retry_at` and the wall-clock time it stands for, as the status says
    /// them (fixed when the delay is chosen, so re-reconciling rewrites nothing).
    pub(super) retry_delay: Duration,
    pub(super) retry_wall: Option<Timestamp>,
    /// Why the last start failed (`reason`, message), until a start succeeds: the back-off
    /// status keeps saying it instead of a bare exit code.
    pub(super) start_error: Option<(Reason, String)>,
    /// A status not yet written (the replica's uid, the status): the base of the next
    /// reconcile, written when [`STATUS_HOLD`] has passed since `last_write`.
    pub(super) held: Option<(String, ReplicaStatus)>,
    /// When this agent last wrote the replica's status.
    pub(super) last_write: Option<Instant>,
    /// When the last restart event of a crash loop was recorded.
    pub(super) last_event: Option<Instant>,
}

/// Consecutive quick failures from which a replica counts as crash-looping.
pub(super) const CRASH_LOOP: u32 = 3;

impl Agent {
    pub(super) async fn handle_exit(self: &Arc<Self>, r: &Replica, exit: ExitStatus) -> Outcome {
        let id = id_of(r);
        let t = &r.spec.template;
        let mut st = r.status.clone();
        st.last_exit = Some(ExitStatus {
            at: exit.at.or(Some(Timestamp::now())),
            ..exit.clone()
        });
        st.ports.clear();
        if !t.restart_policy.restarts(exit.success()) {
            st.phase = if exit.success() {
                Phase::Exited
            } else {
                Phase::Failed
            };
            st.reason = if exit.success() {
                Reason::Completed
            } else {
                Reason::Error
            };
            st.message = format!("exited: {exit}; restart policy {:?}", t.restart_policy);
            return Outcome {
                status: Some(st),
                ops: Vec::new(),
                requeue_after: None,
            };
        }
        let now = Instant::now();
        let (retry_at, start_error, failures, delay, next) = {
            let mut g = self.lock();
            let b = g.backoff.entry(id.clone()).or_default();
            let start_error = b.start_error.clone();
            let at = match b.retry_at {
                Some(at) => at,
                None => {
                    if b.last_start
                        .is_some_and(|s| now.duration_since(s) >= self.cfg.stable_run)
                    {
                        b.failures = 0;
                    }
                    let delay = restart_delay(
                        b.failures,
                        self.cfg.restart_backoff_base,
                        self.backoff_max(t),
                    );
                    b.failures += 1;
                    let at = now + delay;
                    b.retry_at = Some(at);
                    b.retry_delay = delay;
                    b.retry_wall = Some(Timestamp(Timestamp::now().0 + delay.as_millis() as u64));
                    at
                }
            };
            let next = b.retry_wall.unwrap_or_else(Timestamp::now);
            (at, start_error, b.failures, b.retry_delay, next)
        };
        if retry_at > now {
            let wait = retry_at - now;
            let wait_text = if delay < Duration::from_secs(1) {
                format!("{}ms", delay.as_millis().max(1))
            } else {
                humantime::format_duration(Duration::from_secs(delay.as_secs())).to_string()
            };
            st.phase = Phase::Failed;
            match start_error {
                Some((reason, error)) => {
                    st.reason = reason;
                    st.message = format!("back-off {wait_text} before trying again: {error}");
                }
                None if failures >= 3 => {
                    // Crashing again and again: say so, with the end of its output.
                    st.reason = Reason::CrashLoopBackOff;
                    let tail = self.log_tail(&id).await;
                    st.message = format!(
                        "back-off {wait_text} restarting a replica that keeps crashing ({} restarts, next at {next}); last exit: {exit}{}",
                        st.restarts,
                        if tail.is_empty() {
                            String::new()
                        } else {
                            format!("; last output: {tail}")
                        }
                    );
                }
                None => {
                    st.reason = Reason::BackOff;
                    st.message = format!(
                        "back-off {wait_text} restarting failed replica; last exit: {exit}"
                    );
                }
            }
            return Outcome {
                status: Some(st),
                ops: Vec::new(),
                requeue_after: Some(wait),
            };
        }
        let mut r2 = r.clone();
        r2.status = st;
        self.start(&r2, true).await
    }

    /// The restart backoff cap: the template's (clamped to the floor validation enforces,
    /// for templates stored without it), else the agent's.
    pub(super) fn backoff_max(&self, t: &crate::model::object::Template) -> Duration {
        t.restart_backoff_cap()
            .unwrap_or(self.cfg.restart_backoff_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn backoff_curve_is_immediate_then_doubles_to_the_cap() {
        let (b, m) = (Duration::from_secs(1), Duration::from_secs(30));
        let got: Vec<u64> = (0..8).map(|n| restart_delay(n, b, m).as_secs()).collect();
        assert_eq!(got, vec![0, 1, 2, 4, 8, 16, 30, 30]);
    }
}
