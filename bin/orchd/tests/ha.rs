//! Several managers: three `orchd manager`s, each supervising an etcd member of its own
//! (`--init-cluster` on the first, `--join` on the others), on hosts that are network
//! namespaces; three agents (process runtime) on hosts of their own. The leader is killed,
//! partitioned, frozen past its lease; etcd members are lost; the managers restart one at a
//! time during a rollout — and the workloads never notice.
//!
//! The tests of this file run one at a time (a lock): each runs nine daemons on two cores,
//! and the failover times they print would mean nothing if they shared them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use orch_testkit::require;

/// One at a time: see the module docs.
static SERIAL: Mutex<()> = Mutex::new(());

/// What these tests need: network namespaces and the etcd binary the managers run.
const NEEDS: &[&str] = &["root", "ip", "nsenter", "etcd"];

const MANAGERS: usize = 3;
const AGENTS: usize = 3;

/// Three managers on hosts 0–2 and three agents on hosts 3–5.
struct Ha {
    // Dropped in order: agents, managers, hosts.
    agents: Vec<Option<AgentProc>>,
    managers: Vec<Option<Daemon>>,
    hosts: Hosts,
    tmp: tempfile::TempDir,
    token: String,
    /// This cluster's replicas run `sleep SLEEP` (or `SLEEP + 1`): how they are found and
    /// ended when the test is over (they outlive their agents by design).
    sleep: u64,
}

impl Drop for Ha {
    fn drop(&mut self) {
        // A frozen manager would not hear SIGTERM.
        for i in 0..MANAGERS {
            self.signal_manager(i, "CONT");
        }
        self.agents.clear();
        self.managers.clear();
        // The replicas and their log writers (whose arguments name the agents' data dirs).
        for pattern in [
            format!("sleep {}", self.sleep),
            format!("sleep {}", self.sleep + 1),
            self.tmp.path().display().to_string(),
        ] {
            let _ = Command::new("pkill").args(["-9", "-f", &pattern]).status();
        }
    }
}

impl Ha {
    fn new() -> Ha {
        let hosts = Hosts::new(MANAGERS + AGENTS);
        let tmp = tempfile::tempdir().unwrap();
        let mut ha = Ha {
            agents: Vec::new(),
            managers: (0..MANAGERS).map(|_| None).collect(),
            hosts,
            tmp,
            token: String::new(),
            sleep: 7_000_000 + u64::from(std::process::id()) * 10,
        };
        ha.start_manager(0);
        let out = Command::new(env!("CARGO_BIN_EXE_orchd"))
            .args(["token", "--data-dir"])
            .arg(ha.dir(0).join("data"))
            .output()
            .unwrap();
        assert!(out.status.success());
        ha.token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        for i in 1..MANAGERS {
            ha.start_manager(i);
        }
        eventually(
            "three managers, one leader",
            Duration::from_secs(30),
            || {
                let m = ha.managers_json(0)?;
                (m.len() == MANAGERS
                    && m.iter().filter(|m| m["role"] == "leader").count() == 1
                    && m.iter().all(|m| m["etcdHealth"] == "healthy"))
                .then_some(())
            },
        );
        for i in 0..AGENTS {
            let a = ha.start_agent(i);
            ha.agents.push(Some(a));
        }
        let names: Vec<String> = (0..AGENTS).map(|i| format!("a{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        ha.live(0).wait_for_nodes(&names);
        ha
    }

    fn dir(&self, i: usize) -> std::path::PathBuf {
        let d = self.tmp.path().join(format!("m{i}"));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn addr(&self, i: usize) -> String {
        format!("{}:7443", self.hosts.address(i))
    }

    fn metrics_addr(&self, i: usize) -> String {
        format!("{}:9090", self.hosts.address(i))
    }

    /// Starts (or restarts, with the state it has) manager `i`: the first with
    /// `--init-cluster`, the others joining the first with the manager token.
    fn start_manager(&mut self, i: usize) {
        let (name, listen, metrics) = (format!("m{i}"), self.addr(i), self.metrics_addr(i));
        let mut args: Vec<String> = [
            "--name",
            &name,
            "--listen",
            &listen,
            "--metrics-listen",
            &metrics,
            "--node-grace",
            "1s",
            "--node-replace-timeout",
            "3s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if i == 0 {
            args.push("--init-cluster".into());
        } else {
            let out = Command::new(env!("CARGO_BIN_EXE_orchd"))
                .args(["token", "--manager", "--data-dir"])
                .arg(self.dir(0).join("data"))
                .output()
                .unwrap();
            assert!(out.status.success());
            let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
            args.extend(["--join".into(), self.addr(0), "--token".into(), token]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let d = Daemon::start_in(
            Some(&self.hosts.names[i]),
            &self.dir(i),
            &["manager"],
            &args,
        );
        self.managers[i] = Some(d);
    }

    fn start_agent(&self, i: usize) -> AgentProc {
        let host = MANAGERS + i;
        let adv = self.hosts.address(host);
        AgentProc::start_in(
            Some(&self.hosts.names[host]),
            self.tmp.path(),
            &self.addr(0),
            &format!("a{i}"),
            Some(&self.token),
            &["--advertise-address", &adv, "--heartbeat", "300ms"],
        )
    }

    /// A manager that runs (the first of those after `not`).
    fn live(&self, not: usize) -> &Daemon {
        (1..=MANAGERS)
            .map(|k| (not + k) % MANAGERS)
            .find_map(|i| self.managers[i].as_ref())
            .expect("a manager runs")
    }

    /// `orchctl get managers -o json` on manager `i`: the items.
    fn managers_json(&self, i: usize) -> Option<Vec<serde_json::Value>> {
        let out = self.managers[i]
            .as_ref()?
            .ctl(&["get", "managers", "-o", "json"]);
        out.status
            .success()
            .then(|| json_items(&String::from_utf8_lossy(&out.stdout)))
    }

    /// A metric of manager `i` (`None` when it does not answer).
    fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let (_, body) = http_request(&self.metrics_addr(i), "/metrics")?;
        body.lines()
            .find(|l| l.split_whitespace().next() == Some(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Which manager leads, from their metrics (exactly one must say so).
    fn leader(&self) -> usize {
        eventually("exactly one leader", Duration::from_secs(20), || {
            let leading: Vec<usize> = (0..MANAGERS)
                .filter(|&i| self.managers[i].is_some())
                .filter(|&i| self.metric(i, "orch_leader") == Some(1.0))
                .collect();
            (leading.len() == 1).then(|| leading[0])
        })
    }

    /// The orchd pid of manager `i`.
    fn manager_pid(&self, i: usize) -> u32 {
        self.managers[i]
            .as_ref()
            .unwrap()
            .child
            .as_ref()
            .unwrap()
            .id()
    }

    /// SIGKILL manager `i` (its etcd member dies with it).
    fn kill_manager(&mut self, i: usize) {
        let mut d = self.managers[i].take().unwrap();
        let mut c = d.child.take().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }

    fn signal_manager(&self, i: usize, sig: &str) {
        if let Some(c) = self.managers[i].as_ref().and_then(|d| d.child.as_ref()) {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    /// The pid of manager `i`'s etcd member.
    fn etcd_pid(&self, i: usize) -> u32 {
        let data = self.dir(i).join("data");
        let out = Command::new("pgrep")
            .args(["-f", &format!("etcd .*{}", data.display())])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("no etcd running for manager {i}"))
    }

    fn apply_on(&self, i: usize, name: &str, text: &str) -> std::process::Output {
        let f = write(self.tmp.path(), &format!("{name}.yaml"), text);
        self.managers[i]
            .as_ref()
            .unwrap()
            .ctl(&["apply", "-f", f.to_str().unwrap()])
    }

    /// The replicas of `service`: name → (node, pid, phase).
    fn replicas_of(&self, on: usize, service: &str) -> BTreeMap<String, (String, u32, String)> {
        self.live(on + MANAGERS - 1)
            .replicas()
            .into_iter()
            .filter(|r| r["spec"]["service"] == service)
            .map(|r| {
                (
                    r["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    (
                        r["spec"]["node"].as_str().unwrap_or("").to_string(),
                        pid_of(&r).unwrap_or(0),
                        r["status"]["phase"].as_str().unwrap_or("").to_string(),
                    ),
                )
            })
            .collect()
    }

    /// Waits until `service` has exactly `n` replicas, all Ready; name → (node, pid).
    fn wait_ready(&self, service: &str, n: usize) -> BTreeMap<String, (String, u32)> {
        eventually(
            &format!("{n} ready replicas of {service}"),
            Duration::from_secs(60),
            || {
                let r = self.replicas_of(0, service);
                (r.len() == n && r.values().all(|(_, pid, p)| p == "Ready" && *pid > 0)).then(
                    || {
                        r.into_iter()
                            .map(|(k, (node, pid, _))| (k, (node, pid)))
                            .collect()
                    },
                )
            },
        )
    }

    /// Node names whose status is not Ready.
    fn unready_nodes(&self, on: usize) -> Vec<String> {
        json_items(&self.live(on).ctl_ok(&["get", "nodes", "-o", "json"]))
            .into_iter()
            .filter(|n| n["status"]["condition"] != "Ready")
            .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    }
}

impl Ha {
    /// A service of `replicas` that sleep.
    fn sleeper(&self, name: &str, replicas: u32) -> String {
        format!(
            "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  template:\n    command: [/bin/sh, -c, 'exec sleep {}']\n    stopGracePeriod: 1s\n",
            self.sleep
        )
    }
}

/// Ready replicas: name → (node, pid).
type Ready = BTreeMap<String, (String, u32)>;

/// The start of every test here: its turn (see the module docs), a cluster, and service
/// `web` of six replicas Ready (name → (node, pid)); `None` when the machine lacks a need.
fn with_web() -> Option<(std::sync::MutexGuard<'static, ()>, Ha, Ready)> {
    if !require(NEEDS) {
        return None;
    }
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let ha = Ha::new();
    assert!(ha
        .apply_on(0, "web", &ha.sleeper("web", 6))
        .status
        .success());
    let before = ha.wait_ready("web", 6);
    Some((serial, ha, before))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Kills the leader, measures how long until another manager's first reconcile, and checks
/// that nothing moved: same replicas, same processes, except one killed during the failover,
/// which is restarted; an apply to a surviving manager works. Then a node and the (new)
/// leader die together: the node's replicas are replaced exactly once.
#[test]
fn a_killed_leader_is_replaced_within_seconds_and_nothing_moves() {
    let Some((_serial, mut ha, before)) = with_web() else {
        return;
    };
    let leader = ha.leader();

    let victim = before.values().next().unwrap().1;
    let killed_at = unix_now();
    ha.kill_manager(leader);
    let _ = Command::new("kill")
        .arg("-9")
        .arg(victim.to_string())
        .status();
    let next = ha.leader();
    assert_ne!(next, leader);
    let first = eventually("the new leader reconciles", Duration::from_secs(20), || {
        ha.metric(next, "orch_leader_first_reconcile_seconds")
            .filter(|&t| t > killed_at)
    });
    eprintln!(
        "leader m{leader} killed; m{next} leads and reconciled {:.3} s later",
        first - killed_at
    );
    let after = ha.wait_ready("web", 6);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "replicas were replaced or duplicated across the failover"
    );
    let restarted: Vec<&String> = before
        .iter()
        .filter(|(k, v)| after[*k].1 != v.1)
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        restarted.len(),
        1,
        "only the killed replica has a new process: {restarted:?}"
    );
    assert!(
        ha.unready_nodes(next).is_empty(),
        "a live node was marked down"
    );
    assert!(ha
        .apply_on(next, "api", &ha.sleeper("api", 2))
        .status
        .success());
    ha.wait_ready("api", 2);

    // The old leader comes back (as a standby) with its member.
    ha.start_manager(leader);
    eventually("three managers again", Duration::from_secs(30), || {
        let m = ha.managers_json(next)?;
        (m.len() == MANAGERS && m.iter().all(|m| m["etcdHealth"] == "healthy")).then_some(())
    });

    // A node and the leader die together: the node's replicas come back elsewhere, once.
    let now = ha.wait_ready("web", 6);
    let leader = ha.leader();
    let on_a0: BTreeSet<String> = now
        .iter()
        .filter(|(_, (node, _))| node == "a0")
        .map(|(k, _)| k.clone())
        .collect();
    assert!(!on_a0.is_empty(), "no replica on a0: {now:?}");
    ha.agents[0].as_mut().unwrap().kill();
    for (_, pid) in now.values().filter(|(n, _)| n == "a0") {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
    ha.kill_manager(leader);
    let replaced = eventually(
        "a0's replicas replaced on other nodes",
        Duration::from_secs(40),
        || {
            let r = ha.replicas_of(leader, "web");
            let running: Vec<_> = r
                .iter()
                .filter(|(_, (node, _, phase))| node != "a0" && phase == "Ready")
                .collect();
            (running.len() == 6).then_some(r)
        },
    );
    // Give a second replacement the time it would take, then count again.
    std::thread::sleep(Duration::from_secs(4));
    let r = ha.replicas_of(leader, "web");
    let live: Vec<_> = r.iter().filter(|(_, (n, _, _))| n != "a0").collect();
    assert_eq!(
        live.len(),
        6,
        "replaced more than once: {r:?} (first {replaced:?})"
    );
}

/// The leader's host is cut off: it stops reconciling before its lease ends (its metrics say
/// it no longer leads, from inside its host), the majority elects another and takes applies;
/// after the heal there are no duplicates and every acknowledged apply is there.
#[test]
fn a_partitioned_leader_steps_down_and_no_acknowledged_apply_is_lost() {
    let Some((_serial, ha, before)) = with_web() else {
        return;
    };
    let leader = ha.leader();
    let cut_at = Instant::now();
    ha.hosts.link(leader, false);
    // Seen from inside its host: the old leader stops leading within its lease (1 s).
    let stepped = eventually(
        "the cut-off leader steps down",
        Duration::from_secs(10),
        || {
            let out = ha.hosts.run(
                leader,
                "/bin/busybox",
                &[
                    "wget",
                    "-q",
                    "-O",
                    "-",
                    &format!("http://{}/metrics", ha.metrics_addr(leader)),
                ],
            );
            let body = String::from_utf8_lossy(&out.stdout);
            body.lines()
                .any(|l| l == "orch_leader 0")
                .then(|| cut_at.elapsed())
        },
    );
    eprintln!("partitioned leader m{leader} stopped leading after {stepped:?}");
    let next = eventually(
        "a leader on the majority side",
        Duration::from_secs(20),
        || {
            (0..MANAGERS)
                .filter(|&i| i != leader)
                .find(|&i| ha.metric(i, "orch_leader") == Some(1.0))
        },
    );
    let mut acked = Vec::new();
    for k in 0..5 {
        let name = format!("p{k}");
        let target = [next, leader][k % 2];
        let out = ha.apply_on(target, &name, &ha.sleeper(&name, 1));
        if out.status.success() {
            acked.push(name);
        } else if target == leader {
            let e = String::from_utf8_lossy(&out.stderr);
            assert!(
                e.contains("quorum"),
                "the minority's refusal should say why: {e}"
            );
        }
    }
    assert!(acked.len() >= 3, "the majority took applies: {acked:?}");
    ha.hosts.link(leader, true);
    for name in &acked {
        ha.wait_ready(name, 1);
    }
    let after = ha.wait_ready("web", 6);
    assert_eq!(before, after, "replicas changed across the partition");
}

/// One etcd member of three lost: nothing notices. Two lost: applies fail saying there is no
/// quorum, workloads keep running and nothing is replaced; one back: everything resumes.
#[test]
fn losing_etcd_quorum_stops_changes_but_not_workloads() {
    let Some((_serial, ha, before)) = with_web() else {
        return;
    };
    let leader = ha.leader();
    let others: Vec<usize> = (0..MANAGERS).filter(|&i| i != leader).collect();
    let stop = |i: usize, sig: &str| {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(ha.etcd_pid(i).to_string())
            .status();
    };
    stop(others[0], "STOP");
    assert!(ha
        .apply_on(leader, "one", &ha.sleeper("one", 1))
        .status
        .success());
    ha.wait_ready("one", 1);

    stop(others[1], "STOP");
    let refused = eventually(
        "applies refused without quorum",
        Duration::from_secs(20),
        || {
            let out = ha.apply_on(leader, "two", &ha.sleeper("two", 1));
            (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
        },
    );
    assert!(refused.contains("quorum"), "{refused}");
    // Longer than the node replace timeout: nothing is replaced, every process still runs.
    std::thread::sleep(Duration::from_secs(6));
    for (name, (_, pid)) in &before {
        assert!(
            process_alive(*pid),
            "{name} (pid {pid}) stopped without quorum"
        );
    }
    stop(others[0], "CONT");
    eventually("applies work again", Duration::from_secs(30), || {
        ha.apply_on(leader, "two", &ha.sleeper("two", 1))
            .status
            .success()
            .then_some(())
    });
    ha.wait_ready("two", 1);
    let after = ha.wait_ready("web", 6);
    assert_eq!(before, after, "replicas changed while etcd had no quorum");
    stop(others[1], "CONT");
}

/// Every manager restarts, one at a time, while a rollout runs: it completes and no replica
/// is lost. Then the leader is frozen (SIGSTOP) past its lease and resumed: none of its writes
/// land — no node is marked down and no replica is replaced, though its clock jumped.
#[test]
fn rolling_restart_of_managers_and_a_frozen_leader() {
    let Some((_serial, mut ha, _)) = with_web() else {
        return;
    };
    // A slow rollout: one at a time, each new replica Ready only after 2 s.
    let new_command = format!("exec sleep {}", ha.sleep + 1);
    let slow = format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  replicas: 6\n  update: {{maxSurge: 1, maxUnavailable: 0}}\n  template:\n    command: [/bin/sh, -c, '{new_command}']\n    readinessProbe: {{exec: {{command: [/bin/true]}}, initialDelay: 2s, period: 1s}}\n    stopGracePeriod: 1s\n");
    assert!(ha.apply_on(0, "web2", &slow).status.success());
    for i in 0..MANAGERS {
        ha.signal_manager(i, "TERM");
        if let Some(mut d) = ha.managers[i].take() {
            if let Some(c) = d.child.take() {
                terminate(c);
            }
        }
        ha.start_manager(i);
        eventually("three managers again", Duration::from_secs(30), || {
            let m = ha.managers_json(i)?;
            (m.len() == MANAGERS && m.iter().all(|m| m["etcdHealth"] == "healthy")).then_some(())
        });
        let running = ha
            .replicas_of(i, "web")
            .values()
            .filter(|(_, _, p)| p == "Ready")
            .count();
        assert!(
            running >= 6,
            "a replica was lost during the restart of m{i}"
        );
    }
    eventually("the rollout completes", Duration::from_secs(90), || {
        let reps = ha.live(0).replicas();
        let web: Vec<_> = reps
            .iter()
            .filter(|r| r["spec"]["service"] == "web")
            .collect();
        (web.len() == 6
            && web.iter().all(|r| {
                r["status"]["phase"] == "Ready"
                    && r["spec"]["template"]["command"][2] == new_command.as_str()
            }))
        .then_some(())
    });

    // Frozen past its lease and the node timeout, then resumed.
    let before = ha.wait_ready("web", 6);
    let leader = ha.leader();
    let pid = ha.manager_pid(leader);
    let _ = Command::new("kill")
        .arg("-STOP")
        .arg(pid.to_string())
        .status();
    let next = eventually("another leader", Duration::from_secs(20), || {
        (0..MANAGERS)
            .filter(|&i| i != leader)
            .find(|&i| ha.metric(i, "orch_leader") == Some(1.0))
    });
    std::thread::sleep(Duration::from_secs(5));
    let _ = Command::new("kill")
        .arg("-CONT")
        .arg(pid.to_string())
        .status();
    // Long enough for its controllers to act on what they saw before the freeze.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ha.leader(), next, "the resumed leader took over again");
    assert!(
        ha.unready_nodes(next).is_empty(),
        "the resumed leader marked nodes down"
    );
    let after = ha.wait_ready("web", 6);
    assert_eq!(before, after, "the resumed leader changed replicas");
}
