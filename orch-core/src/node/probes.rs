//! The probe tracker: what the startup, readiness and liveness probes of one run of a replica
//! say, from the results of their checks. A replica with a startup probe is held back until it
//! passes once; readiness decides whether the replica is Ready (an endpoint) or only Running; a
//! liveness (or startup) probe that fails `failureThreshold` times in a row asks for the run to
//! stop (the agent restarts it by its restart policy as after any crash).
//!
//! Pure: no I/O and no store. The agent runs the checks through
//! [`Runtime::probe`](crate::Runtime::probe), feeds their results to [`ProbeTracker::observe`]
//! and writes the status [`ProbeTracker::view`] describes.

use tokio::time::Instant;

use crate::model::object::{Phase, Probe, ProbePort, ReplicaStatus, Template};
use crate::runtime::{ProbeAction, ProbeResult};

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

impl ProbeKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startup",
            ProbeKind::Readiness => "readiness",
            ProbeKind::Liveness => "liveness",
        }
    }
}

/// What the probes of a run say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The startup probe has not passed yet.
    Starting,
    /// Started, and the readiness probe passes (or there is none).
    Ready,
    /// Started, and the readiness probe has not passed (yet, or any more).
    NotReady,
    /// The liveness or startup probe failed `failureThreshold` times in a row (with the last
    /// error): the run must stop.
    Failed(ProbeKind, String),
}

/// What one result changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Observation {
    /// The verdict after it.
    pub(crate) verdict: Verdict,
    /// The readiness probe started failing with this result (its error): worth a warning.
    pub(crate) readiness_failed: Option<String>,
}

/// One probe's running tally.
#[derive(Debug)]
struct Tally {
    probe: Probe,
    next: Instant,
    in_flight: bool,
    successes: u32,
    failures: u32,
    /// Passing (after `successThreshold` successes) or failing (after `failureThreshold`).
    passing: Option<bool>,
    last_error: String,
}

/// The probes of one run of one replica.
#[derive(Debug)]
pub(crate) struct ProbeTracker {
    run: String,
    started: bool,
    /// In the order startup, readiness, liveness.
    tallies: Vec<(ProbeKind, Tally)>,
}

/// The probes of a template, in the order startup, readiness, liveness.
fn probes_of(t: &Template) -> Vec<(ProbeKind, &Probe)> {
    [
        (ProbeKind::Startup, &t.startup_probe),
        (ProbeKind::Readiness, &t.readiness_probe),
        (ProbeKind::Liveness, &t.liveness_probe),
    ]
    .into_iter()
    .filter_map(|(k, p)| p.as_ref().map(|p| (k, p)))
    .collect()
}

/// Whether a template has probes at all.
pub(crate) fn has_probes(t: &Template) -> bool {
    !probes_of(t).is_empty()
}

/// Whether a template's replicas wait for a probe before they are Ready.
pub(crate) fn gates_readiness(t: &Template) -> bool {
    t.readiness_probe.is_some() || t.startup_probe.is_some()
}

/// What one check of `probe` against a replica with status `st` does: its address (the
/// replica's host address, `127.0.0.1` if it has none, and its host port, a named port looked
/// up in its status) or its command. An error says why there is nothing to check.
pub(crate) fn action_of(st: &ReplicaStatus, probe: &Probe) -> Result<ProbeAction, String> {
    let port_of = |p: &ProbePort| -> Result<u16, String> {
        match p {
            ProbePort::Number(n) => Ok(*n),
            ProbePort::Name(name) => st
                .ports
                .iter()
                .find(|b| b.name == *name)
                .map(|b| b.port)
                .ok_or_else(|| format!("the replica has no port named {name:?}")),
        }
    };
    // A replica with an address of its own listens there, not on its node's.
    let host = || st.reach_ip().unwrap_or("127.0.0.1").to_string();
    if let Some(h) = &probe.http_get {
        return Ok(ProbeAction::HttpGet {
            port: port_of(&h.port)?,
            host: host(),
            path: h.path.clone(),
        });
    }
    if let Some(t) = &probe.tcp_socket {
        return Ok(ProbeAction::TcpConnect {
            port: port_of(&t.port)?,
            host: host(),
        });
    }
    if let Some(g) = &probe.grpc {
        return Ok(ProbeAction::Grpc {
            port: port_of(&g.port)?,
            host: host(),
            service: g.service.clone().unwrap_or_default(),
        });
    }
    if let Some(e) = &probe.exec {
        return Ok(ProbeAction::Exec {
            command: e.command.clone(),
        });
    }
    Err("the probe has no check".into())
}

/// The part of a replica's status its probes decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProbeView {
    ready: bool,
    reason: &'static str,
    message: String,
    probes: Vec<String>,
}

impl ProbeView {
    /// Writes the view into the status of a replica with template `t`: the probe lines, and
    /// when its probes decide readiness ([`gates_readiness`]) the phase (Ready or Running),
    /// reason and message (otherwise those stay the agent's: Ready once a restarted run has
    /// stayed up a moment).
    pub(crate) fn apply(&self, t: &Template, st: &mut ReplicaStatus) {
        st.probes.clone_from(&self.probes);
        if !gates_readiness(t) {
            return;
        }
        st.phase = if self.ready {
            Phase::Ready
        } else {
            Phase::Running
        };
        st.reason = self.reason.into();
        st.message.clone_from(&self.message);
    }
}

impl ProbeTracker {
    /// A new run `run` (its runtime id) of a replica with template `t`, started at `now`: each
    /// probe's first check is due after its initial delay.
    pub(crate) fn new(t: &Template, run: &str, now: Instant) -> ProbeTracker {
        ProbeTracker {
            run: run.into(),
            started: t.startup_probe.is_none(),
            tallies: probes_of(t)
                .into_iter()
                .map(|(k, p)| {
                    (
                        k,
                        Tally {
                            probe: p.clone(),
                            next: now + p.initial_delay(),
                            in_flight: false,
                            successes: 0,
                            failures: 0,
                            passing: None,
                            last_error: String::new(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The run this tracks (its runtime id).
    pub(crate) fn run(&self) -> &str {
        &self.run
    }

    fn tally(&self, kind: ProbeKind) -> Option<&Tally> {
        self.tallies
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, t)| t)
    }

    /// The checks due at `now` (liveness and readiness only once started, startup only until
    /// then), each marked in flight until its result is [observed](ProbeTracker::observe).
    pub(crate) fn due(&mut self, now: Instant) -> Vec<(ProbeKind, Probe)> {
        let started = self.started;
        self.tallies
            .iter_mut()
            .filter(|(k, t)| (*k == ProbeKind::Startup) != started && !t.in_flight && now >= t.next)
            .map(|(k, t)| {
                t.in_flight = true;
                (*k, t.probe.clone())
            })
            .collect()
    }

    /// Records the result of a check of probe `kind` that finished at `now`; its next check is
    /// due a period later.
    pub(crate) fn observe(
        &mut self,
        kind: ProbeKind,
        result: ProbeResult,
        now: Instant,
    ) -> Observation {
        let mut readiness_failed = None;
        if let Some((_, t)) = self.tallies.iter_mut().find(|(k, _)| *k == kind) {
            t.in_flight = false;
            t.next = now + t.probe.period();
            match result {
                Ok(()) => {
                    t.failures = 0;
                    t.successes += 1;
                    if t.successes >= t.probe.success_threshold() {
                        t.passing = Some(true);
                    }
                }
                Err(e) => {
                    t.successes = 0;
                    t.failures += 1;
                    t.last_error = e;
                    if t.failures >= t.probe.failure_threshold() {
                        let started_failing = t.passing != Some(false);
                        t.passing = Some(false);
                        // Liveness and startup failures are told as they stop the run.
                        if started_failing && kind == ProbeKind::Readiness {
                            readiness_failed = Some(t.last_error.clone());
                        }
                    }
                }
            }
            if kind == ProbeKind::Startup && t.passing == Some(true) {
                self.started = true;
            }
        }
        Observation {
            verdict: self.verdict(),
            readiness_failed,
        }
    }

    /// What the probes say now.
    pub(crate) fn verdict(&self) -> Verdict {
        let dead = [ProbeKind::Liveness, ProbeKind::Startup]
            .into_iter()
            .find_map(|k| {
                self.tally(k)
                    .filter(|t| t.passing == Some(false))
                    .map(|t| (k, t.last_error.clone()))
            });
        if let Some((kind, why)) = dead {
            Verdict::Failed(kind, why)
        } else if !self.started {
            Verdict::Starting
        } else if self
            .tally(ProbeKind::Readiness)
            .is_none_or(|t| t.passing == Some(true))
        {
            Verdict::Ready
        } else {
            Verdict::NotReady
        }
    }

    /// The status the probes give the replica: Ready, or Running with why not (`Starting`,
    /// `NotReady`), and a line per probe.
    pub(crate) fn view(&self) -> ProbeView {
        let readiness = self.tally(ProbeKind::Readiness);
        let ready = self.started && readiness.is_none_or(|t| t.passing == Some(true));
        let probes = self
            .tallies
            .iter()
            .map(|(kind, t)| match t.passing {
                _ if *kind == ProbeKind::Startup && self.started => "startup: passed".to_string(),
                _ if *kind != ProbeKind::Startup && !self.started => {
                    format!("{}: waiting for the startup probe", kind.name())
                }
                Some(true) if t.failures == 0 => format!("{}: passing", kind.name()),
                None if t.failures == 0 => format!("{}: not checked yet", kind.name()),
                _ => format!(
                    "{}: failing ({} consecutive, threshold {}): {}",
                    kind.name(),
                    t.failures,
                    t.probe.failure_threshold(),
                    t.last_error
                ),
            })
            .collect();
        let (reason, message) = if ready {
            ("", String::new())
        } else if !self.started {
            (
                "Starting",
                "waiting for the startup probe to pass".to_string(),
            )
        } else {
            let message = match readiness.filter(|t| !t.last_error.is_empty()) {
                Some(t) => format!("readiness probe failed: {}", t.last_error),
                None => "readiness probe: not checked yet".to_string(),
            };
            ("NotReady", message)
        };
        ProbeView {
            ready,
            reason,
            message,
            probes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn template(yaml: &str) -> Template {
        let y = format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n  template:\n    command: [x]\n    ports: [{{name: http}}]\n{yaml}");
        match crate::model::manifest::parse("t.yaml", &y)
            .unwrap()
            .remove(0)
        {
            crate::model::object::Object::Service(s) => s.spec.template.clone(),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn startup_gates_the_others_and_thresholds_count_in_a_row() {
        let t = template("    startupProbe: {exec: {command: [a]}, period: 1s}\n    readinessProbe: {exec: {command: [b]}, initialDelay: 2s, period: 1s, failureThreshold: 2}\n    livenessProbe: {exec: {command: [c]}, period: 1s, failureThreshold: 1}\n");
        let t0 = Instant::now();
        let mut p = ProbeTracker::new(&t, "run-1", t0);
        assert_eq!(p.verdict(), Verdict::Starting);
        let due: Vec<ProbeKind> = p.due(t0).into_iter().map(|(k, _)| k).collect();
        assert_eq!(due, [ProbeKind::Startup]);
        assert!(p.due(t0).is_empty(), "in flight");
        let seen = p.observe(ProbeKind::Startup, Ok(()), t0);
        assert_eq!(seen.verdict, Verdict::NotReady);
        assert_eq!(
            p.view().probes,
            [
                "startup: passed",
                "readiness: not checked yet",
                "liveness: not checked yet"
            ]
        );
        // Liveness now; readiness after its initial delay.
        let due: Vec<ProbeKind> = p.due(t0).into_iter().map(|(k, _)| k).collect();
        assert_eq!(due, [ProbeKind::Liveness]);
        let at = t0 + Duration::from_secs(2);
        let due: Vec<ProbeKind> = p.due(at).into_iter().map(|(k, _)| k).collect();
        assert_eq!(due, [ProbeKind::Readiness]);
        let seen = p.observe(ProbeKind::Readiness, Err("no".into()), at);
        assert_eq!(
            (seen.verdict, seen.readiness_failed),
            (Verdict::NotReady, None)
        );
        let view = p.view();
        assert_eq!(view.reason, "NotReady");
        assert_eq!(view.message, "readiness probe failed: no");
        let seen = p.observe(ProbeKind::Readiness, Err("no".into()), at);
        assert_eq!(seen.readiness_failed.as_deref(), Some("no"));
        let seen = p.observe(ProbeKind::Readiness, Err("no".into()), at);
        assert_eq!(seen.readiness_failed, None, "told once per streak");
        assert_eq!(
            p.observe(ProbeKind::Readiness, Ok(()), at).verdict,
            Verdict::Ready
        );
        assert_eq!(p.view().reason, "");
        assert_eq!(
            p.observe(ProbeKind::Liveness, Err("dead".into()), at)
                .verdict,
            Verdict::Failed(ProbeKind::Liveness, "dead".into())
        );
    }

    #[test]
    fn actions_resolve_named_ports_and_the_replica_address() {
        let t = template("    readinessProbe: {httpGet: {path: /h, port: http}}\n");
        let mut r = ReplicaStatus::default();
        let probe = t.readiness_probe.clone().unwrap();
        assert_eq!(
            action_of(&r, &probe).unwrap_err(),
            "the replica has no port named \"http\""
        );
        r.ports = vec![crate::model::object::BoundPort {
            name: "http".into(),
            port: 20001,
        }];
        assert_eq!(
            action_of(&r, &probe).unwrap(),
            ProbeAction::HttpGet {
                host: "127.0.0.1".into(),
                port: 20001,
                path: "/h".into()
            }
        );
        r.host_ip = Some("10.0.0.2".into());
        let tcp = template("    livenessProbe: {tcpSocket: {port: 81}}\n");
        assert_eq!(
            action_of(&r, tcp.liveness_probe.as_ref().unwrap()).unwrap(),
            ProbeAction::TcpConnect {
                host: "10.0.0.2".into(),
                port: 81
            }
        );
        // A replica with an address of its own is probed there.
        r.ip = Some("10.244.0.5".into());
        assert_eq!(
            action_of(&r, &probe).unwrap(),
            ProbeAction::HttpGet {
                host: "10.244.0.5".into(),
                port: 20001,
                path: "/h".into()
            }
        );
    }
}
