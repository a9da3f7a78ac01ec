//! Starting a workload: its spec, the status of a run, the events of starts and restarts.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::object::Reason;
use crate::model::object::{BoundPort, EnvVar, ExitStatus, Kind, Phase, Replica, ReplicaStatus};
use crate::model::quantity::Timestamp;
use crate::runtime::{RuntimeError, Workload, WorkloadDns, WorkloadSpec};

use super::backoff::{restart_delay, CRASH_LOOP};
use super::network::{gateway, NetPlan};
use super::{id_of, Agent, Outcome};

/// A replica restarted after an exit and without a readiness probe is Ready only once it
/// has stayed up this long (or the stable-run period, if shorter).
pub(super) const RESTART_SETTLE: Duration = Duration::from_millis(500);

/// At most one restart event per crash-looping replica per this period.
pub(super) const CRASH_EVENT_EVERY: Duration = Duration::from_secs(10);

/// The status of a replica whose workload runs: Ready, unless a readiness or startup probe
/// decides that (then Running until its probes say Ready: see [`ProbeView`](crate::node::probes::ProbeView))
/// or it was restarted after an exit and is `settling` (Running until it has stayed up a
/// moment: a replica that crashes as soon as it starts is never Ready).
pub(super) fn mark_running(
    st: &mut ReplicaStatus,
    w: &Workload,
    t: &crate::model::object::Template,
    settling: bool,
) {
    let same_run = st.runtime_id == w.runtime_id && st.phase.is_up();
    if !crate::node::probes::gates_readiness(t) {
        if !same_run {
            st.probes.clear();
        }
        if settling {
            st.phase = Phase::Running;
            if !same_run {
                st.reason = Reason::Restarted;
                st.message = "restarted; ready once it has stayed up a moment".into();
            }
        } else {
            st.phase = Phase::Ready;
            st.reason.clear();
            st.message.clear();
        }
    } else if !same_run {
        st.phase = Phase::Running;
        st.reason = Reason::Starting;
        st.message = "waiting for the first probe".into();
        st.probes.clear();
    }
    st.runtime_id = w.runtime_id.clone();
    st.host_ip = Some(w.host_ip.clone());
    st.ip = w.ip.clone();
    st.ports = w.ports.clone();
    st.started_at = Some(w.started_at);
}

pub(super) fn ports_note(ports: &[BoundPort]) -> String {
    if ports.is_empty() {
        String::new()
    } else {
        format!(
            ", ports {}",
            ports
                .iter()
                .map(|p| format!("{}={}", p.name, p.port))
                .collect::<Vec<_>>()
                .join(" ")
        )
    }
}

impl Agent {
    /// How much longer a run restarted after an exit waits before it counts as Ready (without
    /// a readiness probe), if it still waits.
    pub(super) fn settle_left(&self, id: &str) -> Option<Duration> {
        let g = self.lock();
        let b = g.backoff.get(id).filter(|b| b.failures > 0)?;
        let settle = RESTART_SETTLE.min(self.cfg.stable_run);
        let left = (b.last_start? + settle).saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// The last few lines a workload wrote (at most 3 lines, 300 characters).
    pub(super) async fn log_tail(&self, id: &str) -> String {
        use futures::StreamExt;
        let read = async {
            let mut s = self
                .runtime
                .logs(
                    id,
                    crate::runtime::LogOptions {
                        follow: false,
                        tail_bytes: Some(1024),
                        tail_lines: None,
                    },
                )
                .await
                .ok()?;
            let mut all = Vec::new();
            while let Some(Ok(chunk)) = s.next().await {
                all.extend(chunk);
            }
            Some(all)
        };
        let Ok(Some(bytes)) = tokio::time::timeout(Duration::from_millis(500), read).await else {
            return String::new();
        };
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
        let n = tail.chars().count();
        tail.chars().skip(n.saturating_sub(300)).collect()
    }

    pub(super) async fn start(self: &Arc<Self>, r: &Replica, restart: bool) -> Outcome {
        let id = id_of(r);
        let rec = self
            .ctx
            .recorder
            .with_source(&format!("agent/{}", self.cfg.node));
        let (ns, name) = (r.metadata.namespace.as_str(), r.metadata.name.as_str());
        let mut st = r.status.clone();
        if !self.runtime.supports(&r.spec.template) {
            st.phase = Phase::Failed;
            st.reason = Reason::Unsupported;
            st.message = format!("the {} runtime on node {} cannot run this template (image needs a container runtime; command needs the process runtime)", self.runtime.info().name, self.cfg.node);
            return Outcome {
                status: Some(st),
                ops: Vec::new(),
                requeue_after: None,
            };
        }
        let lease = match self.net_plan(&r.spec.template) {
            NetPlan::Host => None,
            NetPlan::Own(lease) => Some(lease),
            NetPlan::Wait(why) => {
                // The network loop queues it again when the lease is configured or the
                // grace period ends; the requeue is a safety net.
                st.phase = Phase::Pending;
                st.reason = Reason::NetworkNotReady;
                st.message = why;
                return Outcome {
                    status: Some(st),
                    ops: Vec::new(),
                    requeue_after: Some(Duration::from_secs(1)),
                };
            }
        };
        let mut env = self.cfg.extra_env.clone();
        env.extend([
            EnvVar {
                name: "ORCH_SERVICE".into(),
                value: r.spec.service.to_string(),
                value_from: None,
            },
            EnvVar {
                name: "ORCH_NAMESPACE".into(),
                value: ns.into(),
                value_from: None,
            },
            EnvVar {
                name: "ORCH_REPLICA".into(),
                value: name.into(),
                value_from: None,
            },
            EnvVar {
                name: "ORCH_NODE".into(),
                value: self.cfg.node.clone(),
                value_from: None,
            },
        ]);
        let (template, mounts) = match self.resolve(r).await {
            Ok(x) => x,
            Err(why) => {
                return self
                    .start_failed(r, st, restart, RuntimeError::StartFailed(why), &rec)
                    .await
            }
        };
        let network = match (&lease, &self.cfg.network) {
            (Some(lease), Some(net)) => match net.0.attach(&id, &r.spec.template.ports).await {
                Ok(n) => Some((n, gateway(&lease.subnet))),
                Err(e) => {
                    let why = match e {
                        crate::network::NetworkError::Exhausted(m) => format!(
                            "no address for it: the subnet {} of node {} is full: {m}",
                            lease.subnet, self.cfg.node
                        ),
                        e => format!("its network could not be set up: {e}"),
                    };
                    return self
                        .start_failed(r, st, restart, RuntimeError::StartFailed(why), &rec)
                        .await;
                }
            },
            _ => None,
        };
        // With a network of its own the workload reaches the cluster DNS at its gateway.
        let dns_server = match &network {
            Some((_, Some(gw))) => self.cfg.dns.map(|_| std::net::SocketAddr::from((*gw, 53))),
            _ => self.cfg.dns,
        };
        let spec = WorkloadSpec {
            id: id.clone(),
            replica_uid: r.metadata.uid.clone(),
            service: r.spec.service.to_string(),
            namespace: ns.into(),
            template,
            mounts,
            template_hash: r.spec.template_hash.clone(),
            extra_env: env,
            dns: dns_server.map(|server| WorkloadDns {
                server,
                search: std::iter::once(&self.cfg.dns_domain)
                    .chain(&self.cfg.dns_alias_domains)
                    .flat_map(|d| [format!("{ns}.{d}"), d.clone()])
                    .collect(),
            }),
            network: network.as_ref().map(|(n, _)| n.clone()),
        };
        {
            let mut g = self.lock();
            let b = g.backoff.entry(id.clone()).or_default();
            b.retry_at = None;
            b.last_start = Some(Instant::now());
            b.start_error = None;
        }
        match self.runtime.start(&spec).await {
            Ok(mut w) => {
                if let Some(n) = &spec.network {
                    w.ip.get_or_insert_with(|| n.ip.clone());
                }
                let settle = RESTART_SETTLE.min(self.cfg.stable_run);
                let settling = restart && !settle.is_zero();
                mark_running(&mut st, &w, &r.spec.template, settling);
                if restart {
                    st.restarts += 1;
                    let (failures, event) = {
                        let mut g = self.lock();
                        let b = g.backoff.entry(id.clone()).or_default();
                        let now = Instant::now();
                        let looping = b.failures >= CRASH_LOOP;
                        let event = !looping
                            || b.last_event
                                .is_none_or(|t| now.duration_since(t) >= CRASH_EVENT_EVERY);
                        if looping && event {
                            b.last_event = Some(now);
                        }
                        (b.failures, event)
                    };
                    let exit = st
                        .last_exit
                        .as_ref()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "unknown".into());
                    if failures >= CRASH_LOOP {
                        // Restarted at once, again and again: say so (not Ready meanwhile).
                        st.reason = Reason::CrashLoopBackOff;
                        let tail = self.log_tail(&id).await;
                        st.message = format!(
                            "restarted a replica that keeps crashing ({} restarts); last exit: {exit}{}",
                            st.restarts,
                            if tail.is_empty() {
                                String::new()
                            } else {
                                format!("; last output: {tail}")
                            }
                        );
                    } else if settling && !crate::node::probes::gates_readiness(&r.spec.template) {
                        st.message = format!(
                            "restarted after it exited ({exit}); ready once it has stayed up {}",
                            humantime::format_duration(settle)
                        );
                    }
                    if event && failures >= CRASH_LOOP {
                        rec.warning(
                            Kind::Replica,
                            ns,
                            name,
                            "CrashLoopBackOff",
                            format!(
                                "restarted on {} ({}), restart {}: it keeps crashing; last exit: {exit}",
                                self.cfg.node, w.runtime_id, st.restarts
                            ),
                        );
                    } else if event {
                        rec.normal(
                            Kind::Replica,
                            ns,
                            name,
                            "Restarted",
                            format!(
                                "restarted on {} ({}), restart {}",
                                self.cfg.node, w.runtime_id, st.restarts
                            ),
                        );
                    }
                } else {
                    rec.normal(
                        Kind::Replica,
                        ns,
                        name,
                        "Started",
                        format!(
                            "started on {} ({}){}",
                            self.cfg.node,
                            w.runtime_id,
                            ports_note(&w.ports)
                        ),
                    );
                }
                self.lock().workloads.insert(id, w);
                Outcome {
                    status: Some(st),
                    ops: Vec::new(),
                    requeue_after: settling.then_some(settle),
                }
            }
            Err(e) => {
                // Nothing runs in the namespace (unless the runtime says it already runs).
                if spec.network.is_some() && !matches!(e, RuntimeError::AlreadyRunning(_)) {
                    self.detach(&id).await;
                }
                self.start_failed(r, st, restart, e, &rec).await
            }
        }
    }

    /// A start that failed (or whose secrets, configs or mounts could not be resolved):
    /// Failed with the reason, a warning event, and a retry by the restart policy's backoff.
    pub(super) async fn start_failed(
        &self,
        r: &Replica,
        mut st: ReplicaStatus,
        restart: bool,
        e: RuntimeError,
        rec: &crate::engine::events::Recorder,
    ) -> Outcome {
        let id = id_of(r);
        let (ns, name) = (r.metadata.namespace.as_str(), r.metadata.name.as_str());
        // Kubernetes' name for it, so users find it where they expect.
        let pull = matches!(e, RuntimeError::ImagePull(_));
        let reason = if pull {
            Reason::ErrImagePull
        } else {
            Reason::StartError
        };
        rec.warning(Kind::Replica, ns, name, reason.as_str(), e.to_string());
        if restart {
            st.restarts += 1;
        }
        st.phase = Phase::Failed;
        st.reason = reason;
        st.message = e.to_string();
        st.runtime_id.clear();
        st.last_exit = Some(ExitStatus {
            code: Some(127),
            at: Some(Timestamp::now()),
            ..ExitStatus::default()
        });
        // Retry by the restart policy's backoff.
        let delay = {
            let mut g = self.lock();
            let b = g.backoff.entry(id).or_default();
            b.start_error = Some((
                if pull {
                    Reason::ImagePullBackOff
                } else {
                    Reason::StartBackOff
                },
                e.to_string(),
            ));
            let d = restart_delay(
                b.failures.max(1),
                self.cfg.restart_backoff_base,
                self.backoff_max(&r.spec.template),
            );
            b.failures += 1;
            b.retry_at = Some(Instant::now() + d);
            b.retry_delay = d;
            b.retry_wall = Some(Timestamp(Timestamp::now().0 + d.as_millis() as u64));
            d
        };
        let requeue = r
            .spec
            .template
            .restart_policy
            .restarts(false)
            .then_some(delay);
        Outcome {
            status: Some(st),
            ops: Vec::new(),
            requeue_after: requeue,
        }
    }
}
