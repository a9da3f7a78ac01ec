//! The prober: runs the startup, readiness and liveness probes of the replicas running on one
//! node. A replica with a startup probe is held back until it passes once; readiness decides
//! whether the replica is Ready (an endpoint) or only Running; a liveness (or startup) probe
//! that fails `failureThreshold` times in a row stops the workload, and the agent restarts it
//! by its restart policy as after any crash. Results are written to the replica's status
//! (`phase`, `reason`, `message`, `probes`) only when they change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::engine::Ctx;
use crate::model::object::{DesiredState, Object, Phase, Probe, ProbePort, Replica};
use crate::runtime::Runtime;
use crate::store::update_op;

/// At most one "probe failed" warning per replica and probe in this period.
const FAILURE_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Startup,
    Readiness,
    Liveness,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Startup => "startup",
            Kind::Readiness => "readiness",
            Kind::Liveness => "liveness",
        }
    }
}

/// One probe's running tally.
#[derive(Debug)]
struct Tally {
    next: Instant,
    in_flight: bool,
    successes: u32,
    failures: u32,
    /// Passing (after `successThreshold` successes) or failing (after `failureThreshold`).
    passing: Option<bool>,
    last_error: String,
}

/// What the prober knows of one run of one replica.
#[derive(Debug)]
struct RunState {
    runtime_id: String,
    started: bool,
    tallies: HashMap<Kind, Tally>,
    stopping: bool,
}

fn probes_of(r: &Replica) -> Vec<(Kind, &Probe)> {
    let t = &r.spec.template;
    [
        (Kind::Startup, &t.startup_probe),
        (Kind::Readiness, &t.readiness_probe),
        (Kind::Liveness, &t.liveness_probe),
    ]
    .into_iter()
    .filter_map(|(k, p)| p.as_ref().map(|p| (k, p)))
    .collect()
}

/// Whether a template's replicas wait for a probe before they are Ready.
pub fn gates_readiness(t: &crate::model::object::Template) -> bool {
    t.readiness_probe.is_some() || t.startup_probe.is_some()
}

/// Runs one check of `probe` against replica `r`: `Ok` passes, `Err` says why not.
async fn check(runtime: &dyn Runtime, r: &Replica, probe: &Probe) -> Result<(), String> {
    let port_of = |p: &ProbePort| -> Result<u16, String> {
        match p {
            ProbePort::Number(n) => Ok(*n),
            ProbePort::Name(name) => r
                .status
                .ports
                .iter()
                .find(|b| b.name == *name)
                .map(|b| b.port)
                .ok_or_else(|| format!("the replica has no port named {name:?}")),
        }
    };
    let host = r
        .status
        .host_ip
        .clone()
        .unwrap_or_else(|| "127.0.0.1".into());
    let timeout = probe.timeout();
    let within = |what: String| format!("{what}: no answer within {timeout:?}");
    if let Some(h) = &probe.http_get {
        let port = port_of(&h.port)?;
        let url = format!("http://{host}:{port}{}", h.path);
        let get = async {
            let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let req = format!(
                "GET {} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: orch-probe\r\nConnection: close\r\n\r\n",
                h.path
            );
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let mut head = vec![0u8; 512];
            let mut n = 0;
            while n < 12 {
                let m = s
                    .read(&mut head[n..])
                    .await
                    .map_err(|e| format!("GET {url}: {e}"))?;
                if m == 0 {
                    break;
                }
                n += m;
            }
            let line = String::from_utf8_lossy(&head[..n]);
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("GET {url}: not an HTTP answer"))?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP {code} from GET {url}"))
            }
        };
        return tokio::time::timeout(timeout, get)
            .await
            .unwrap_or_else(|_| Err(within(format!("GET {url}"))));
    }
    if let Some(t) = &probe.tcp_socket {
        let port = port_of(&t.port)?;
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("connect {host}:{port}: {e}")),
            Err(_) => Err(within(format!("connect {host}:{port}"))),
        };
    }
    if let Some(e) = &probe.exec {
        let out = runtime
            .exec(&r.runtime_name(), &e.command, timeout)
            .await
            .map_err(|err| format!("exec {:?}: {err}", e.command))?;
        if out.timed_out {
            return Err(within(format!("exec {:?}", e.command)));
        }
        return match out.code {
            Some(0) => Ok(()),
            Some(c) => {
                let err = String::from_utf8_lossy(&out.stderr);
                let tail: String = err.trim().chars().take(200).collect();
                Err(format!(
                    "exec {:?}: exit {c}{}",
                    e.command,
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!(": {tail}")
                    }
                ))
            }
            None => Err(format!(
                "exec {:?}: killed by signal {}",
                e.command,
                out.signal.unwrap_or_default()
            )),
        };
    }
    Err("the probe has no check".into())
}

/// Runs the prober for `node` until the engine stops. Replicas for which `held` holds are
/// skipped: the agent knows a newer status for them than the store (a crash loop).
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    runtime: Arc<dyn Runtime>,
    node: String,
    held: Arc<dyn Fn(&str) -> bool + Send + Sync>,
) {
    let mut states: HashMap<String, RunState> = HashMap::new();
    // When each replica's probe last warned it started failing (across runs).
    let mut warned: HashMap<(String, Kind), Instant> = HashMap::new();
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(String, String, Kind, Result<(), String>)>();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let replicas: Vec<Replica> = ctx
            .cache
            .replicas_on_node(&node)
            .into_iter()
            .filter(|r| {
                r.spec.desired == DesiredState::Running
                    && r.status.phase.is_up()
                    && !r.status.runtime_id.is_empty()
                    && !probes_of(r).is_empty()
                    && !held(&r.runtime_name())
            })
            .collect();
        let live: std::collections::HashSet<String> =
            replicas.iter().map(|r| r.runtime_name()).collect();
        states.retain(|id, _| live.contains(id));
        warned.retain(|(id, _), at| {
            live.contains(id) || now.duration_since(*at) < FAILURE_WARNING_EVERY
        });
        // Results of checks that finished.
        while let Ok((id, run, kind, result)) = rx.try_recv() {
            let Some(st) = states.get_mut(&id).filter(|s| s.runtime_id == run) else {
                continue;
            };
            let Some(r) = replicas.iter().find(|r| r.runtime_name() == id) else {
                continue;
            };
            let Some(probe) = probes_of(r)
                .into_iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, p)| p.clone())
            else {
                continue;
            };
            let t = st
                .tallies
                .get_mut(&kind)
                .expect("tally of a probe that ran");
            t.in_flight = false;
            t.next = Instant::now() + probe.period();
            match result {
                Ok(()) => {
                    t.failures = 0;
                    t.successes += 1;
                    if t.successes >= probe.success_threshold() {
                        t.passing = Some(true);
                    }
                }
                Err(e) => {
                    t.successes = 0;
                    t.failures += 1;
                    t.last_error = e;
                    if t.failures >= probe.failure_threshold() {
                        let started_failing = t.passing != Some(false);
                        t.passing = Some(false);
                        // Once per transition to failing, and at most once a minute per
                        // replica and probe (a probe that flaps is not an event per period).
                        let key = (id.clone(), kind);
                        let quiet = warned
                            .get(&key)
                            .is_none_or(|at| now.duration_since(*at) >= FAILURE_WARNING_EVERY);
                        // Liveness and startup failures warn as they stop the run (below).
                        if started_failing && quiet && kind == Kind::Readiness {
                            warned.insert(key, now);
                            ctx.recorder.with_source("prober").warning(
                                crate::model::object::Kind::Replica,
                                &r.metadata.namespace,
                                &r.metadata.name,
                                "Unhealthy",
                                format!("{} probe failed: {}", kind.name(), t.last_error),
                            );
                        }
                    }
                }
            }
            if kind == Kind::Startup && t.passing == Some(true) {
                st.started = true;
            }
        }
        for r in &replicas {
            let id = r.runtime_name();
            let st = states.entry(id.clone()).or_insert_with(|| RunState {
                runtime_id: String::new(),
                started: false,
                tallies: HashMap::new(),
                stopping: false,
            });
            if st.runtime_id != r.status.runtime_id {
                // A new run: start over.
                *st = RunState {
                    runtime_id: r.status.runtime_id.clone(),
                    started: r.spec.template.startup_probe.is_none(),
                    tallies: probes_of(r)
                        .into_iter()
                        .map(|(k, p)| {
                            (
                                k,
                                Tally {
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
                    stopping: false,
                };
            }
            // A failed liveness or startup probe: stop the run; the agent restarts it.
            let dead = [Kind::Liveness, Kind::Startup].into_iter().find_map(|k| {
                st.tallies
                    .get(&k)
                    .filter(|t| t.passing == Some(false))
                    .map(|t| (k, t.last_error.clone()))
            });
            if let (Some((kind, why)), false) = (dead, st.stopping) {
                st.stopping = true;
                tracing::info!(replica = %id, probe = kind.name(), error = %why, "probe failed: restarting");
                ctx.recorder.with_source("prober").warning(
                    crate::model::object::Kind::Replica,
                    &r.metadata.namespace,
                    &r.metadata.name,
                    "Unhealthy",
                    format!("{} probe failed: {why}; restarting", kind.name()),
                );
                let (runtime, id, signal, grace) = (
                    runtime.clone(),
                    id.clone(),
                    r.spec.template.stop_signal().to_string(),
                    r.spec.template.stop_grace(),
                );
                tokio::spawn(async move {
                    let _ = runtime.stop(&id, &signal, grace).await;
                });
            }
            if st.stopping {
                continue;
            }
            // Start the checks that are due (liveness and readiness only once started).
            for (kind, probe) in probes_of(r) {
                if kind != Kind::Startup && !st.started {
                    continue;
                }
                if kind == Kind::Startup && st.started {
                    continue;
                }
                let t = st.tallies.get_mut(&kind).expect("tally per probe");
                if t.in_flight || now < t.next {
                    continue;
                }
                t.in_flight = true;
                let (runtime, r, probe, tx, id) = (
                    runtime.clone(),
                    r.clone(),
                    probe.clone(),
                    tx.clone(),
                    id.clone(),
                );
                tokio::spawn(async move {
                    let result = check(&*runtime, &r, &probe).await;
                    let _ = tx.send((id, r.status.runtime_id.clone(), kind, result));
                });
            }
            // What the status should say.
            let readiness = st.tallies.get(&Kind::Readiness);
            let ready = st.started && readiness.is_none_or(|t| t.passing == Some(true));
            let mut probes = Vec::new();
            for (kind, probe) in probes_of(r) {
                let t = &st.tallies[&kind];
                let line = match t.passing {
                    _ if kind == Kind::Startup && st.started => "startup: passed".to_string(),
                    _ if kind != Kind::Startup && !st.started => {
                        format!("{}: waiting for the startup probe", kind.name())
                    }
                    Some(true) if t.failures == 0 => format!("{}: passing", kind.name()),
                    None if t.failures == 0 => format!("{}: not checked yet", kind.name()),
                    _ => format!(
                        "{}: failing ({} consecutive, threshold {}): {}",
                        kind.name(),
                        t.failures,
                        probe.failure_threshold(),
                        t.last_error
                    ),
                };
                probes.push(line);
            }
            let mut status = r.status.clone();
            if ready {
                status.phase = Phase::Ready;
                status.reason.clear();
                status.message.clear();
            } else {
                status.phase = Phase::Running;
                let (reason, message) = if !st.started {
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
                status.reason = reason.into();
                status.message = message;
            }
            status.probes = probes;
            if status != r.status {
                let mut r2 = r.clone();
                r2.status = status;
                if let Err(e) = ctx.store.txn(vec![update_op(&Object::Replica(r2))]).await {
                    tracing::debug!(replica = %id, error = %e, "prober: status write failed; next tick retries");
                }
            }
        }
    }
}
