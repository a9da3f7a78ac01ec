//! Failover harness: three real `orchd manager`s, each supervising an etcd member
//! (`--init-cluster`, `--join`), and three agents on the process runtime, every one on a host
//! of its own (a network namespace on one bridge). Needs root, `ip` and Debian's `etcd`.
//!
//! - leader kill: SIGKILL the leading manager (its etcd member dies with it), then the time
//!   until another manager has finished its first reconcile as leader (its
//!   `orch_leader_first_reconcile_seconds` metric, a wall-clock time on this machine), ROUNDS
//!   times (the killed manager restarts and rejoins between rounds): median and max;
//! - node death: SIGKILL an agent and its replicas' processes, then the time until the
//!   service has all its replicas Ready on the other nodes again (defaults: node grace 3 s,
//!   replace timeout 10 s);
//! - the peer, Docker Swarm with three managers (three dockerds, each on a host of its own,
//!   when `dockerd` is installed): SIGKILL the leading dockerd, then the time until a write
//!   (`docker node update --label-add`, a Raft write) is accepted by a surviving manager; and
//!   the same for orch (an `orchctl apply` accepted by a surviving manager), so both sides are
//!   compared on the same observation, in the same run.
//!
//! ```sh
//! cargo build --release -p orchd --features etcd -p orch-benches --bin failover
//! sudo target/release/failover [ROUNDS]     # default 10
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use orch_testkit::hosts::Hosts;

const MANAGERS: usize = 3;
const AGENTS: usize = 3;
const REPLICAS: usize = 30;

struct Bench {
    bin: PathBuf,
    hosts: Hosts,
    dir: tempfile::TempDir,
    managers: Vec<Option<Child>>,
    agents: Vec<Option<Child>>,
}

impl Drop for Bench {
    fn drop(&mut self) {
        for c in self.agents.iter_mut().chain(self.managers.iter_mut()) {
            if let Some(mut c) = c.take() {
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .status();
                let _ = c.wait();
            }
        }
        // The replicas (process runtime) outlive their agents by design; end them.
        let _ = Command::new("pkill").args(["-f", "sleep 100042"]).status();
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GET `path` over plain HTTP: the body of a 200.
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(300))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.starts_with("HTTP/1.1 200")
        .then(|| buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

impl Bench {
    fn new() -> anyhow::Result<Bench> {
        let bin = std::env::current_exe()?
            .parent()
            .context("no exe dir")?
            .to_path_buf();
        for b in ["orchd", "orchctl"] {
            anyhow::ensure!(
                bin.join(b).exists(),
                "{} missing: cargo build --release -p orchd --features etcd -p orchctl",
                bin.join(b).display()
            );
        }
        let mut b = Bench {
            bin,
            hosts: Hosts::new(MANAGERS + AGENTS),
            dir: tempfile::tempdir()?,
            managers: (0..MANAGERS).map(|_| None).collect(),
            agents: (0..AGENTS).map(|_| None).collect(),
        };
        for i in 0..MANAGERS {
            b.start_manager(i)?;
        }
        b.wait_managers()?;
        for i in 0..AGENTS {
            b.start_agent(i)?;
        }
        wait_for("three nodes Ready", Duration::from_secs(60), || {
            let out = b.ctl(&["get", "nodes", "-o", "json"])?;
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            let ready = v["items"]
                .as_array()?
                .iter()
                .filter(|n| n["status"]["condition"] == "Ready")
                .count();
            (ready == AGENTS).then_some(())
        })?;
        Ok(b)
    }

    fn data(&self, who: &str) -> PathBuf {
        self.dir.path().join(who)
    }

    fn addr(&self, i: usize) -> String {
        format!("{}:7443", self.hosts.address(i))
    }

    fn metrics(&self, i: usize) -> String {
        format!("{}:9090", self.hosts.address(i))
    }

    fn orchd(&self, host: usize, log: &Path) -> anyhow::Result<Command> {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.hosts.names[host]))
            .arg(self.bin.join("orchd"))
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)?,
            );
        Ok(c)
    }

    fn token(&self, manager: bool) -> anyhow::Result<String> {
        let mut c = Command::new(self.bin.join("orchd"));
        c.arg("token");
        if manager {
            c.arg("--manager");
        }
        let out = c.arg("--data-dir").arg(self.data("m0")).output()?;
        anyhow::ensure!(out.status.success(), "orchd token failed");
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    fn start_manager(&mut self, i: usize) -> anyhow::Result<()> {
        let data = self.data(&format!("m{i}"));
        std::fs::create_dir_all(&data)?;
        let mut c = self.orchd(i, &self.dir.path().join(format!("m{i}.log")))?;
        c.args(["manager", "--name", &format!("m{i}")])
            .args([
                "--listen",
                &self.addr(i),
                "--metrics-listen",
                &self.metrics(i),
            ])
            .arg("--data-dir")
            .arg(&data)
            .arg("--socket")
            .arg(data.join("orchd.sock"));
        if i == 0 {
            c.arg("--init-cluster");
        } else {
            c.args(["--join", &self.addr(0), "--token", &self.token(true)?]);
        }
        self.managers[i] = Some(c.spawn()?);
        wait_for(
            &format!("manager m{i} serves metrics"),
            Duration::from_secs(30),
            || http_get(&self.metrics(i), "/metrics"),
        )?;
        Ok(())
    }

    fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let host = MANAGERS + i;
        let data = self.data(&format!("a{i}"));
        std::fs::create_dir_all(&data)?;
        let token = self.token(false)?;
        let mut c = self.orchd(host, &self.dir.path().join(format!("a{i}.log")))?;
        c.args(["agent", "--join", &self.addr(0), "--token", &token])
            .args(["--node", &format!("a{i}"), "--runtime", "process"])
            .args(["--advertise-address", &self.hosts.address(host)])
            .args(["--replica-network", "off"])
            .arg("--data-dir")
            .arg(&data);
        self.agents[i] = Some(c.spawn()?);
        Ok(())
    }

    /// `orchctl --socket` of a running manager.
    fn ctl(&self, args: &[&str]) -> Option<String> {
        (0..MANAGERS)
            .filter(|&i| self.managers[i].is_some())
            .find_map(|i| {
                let out = Command::new(self.bin.join("orchctl"))
                    .arg("--socket")
                    .arg(self.data(&format!("m{i}")).join("orchd.sock"))
                    .args(args)
                    .output()
                    .ok()?;
                out.status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
            })
    }

    fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let body = http_get(&self.metrics(i), "/metrics")?;
        body.lines()
            .find(|l| l.split_whitespace().next() == Some(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    fn leader(&self) -> anyhow::Result<usize> {
        wait_for("exactly one leader", Duration::from_secs(30), || {
            let l: Vec<usize> = (0..MANAGERS)
                .filter(|&i| self.managers[i].is_some())
                .filter(|&i| self.metric(i, "orch_leader") == Some(1.0))
                .collect();
            (l.len() == 1).then(|| l[0])
        })
    }

    /// Until every manager is up, one leads, and every etcd member is healthy.
    fn wait_managers(&self) -> anyhow::Result<()> {
        wait_for("three healthy managers", Duration::from_secs(60), || {
            let out = self.ctl(&["get", "managers", "-o", "json"])?;
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            let items = v["items"].as_array()?;
            (items.len() == MANAGERS
                && items.iter().filter(|m| m["role"] == "leader").count() == 1
                && items.iter().all(|m| m["etcdHealth"] == "healthy"))
            .then_some(())
        })
    }

    /// Whether the orch leader's own etcd member leads etcd (`get managers`' etcdLeader).
    fn etcd_leader_with_orch_leader(&self) -> Option<bool> {
        let out = self.ctl(&["get", "managers", "-o", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v["items"]
            .as_array()?
            .iter()
            .find(|m| m["role"] == "leader")
            .map(|m| m["etcdLeader"] == true)
    }

    /// The service's replicas: (node, pid, ready).
    fn replicas(&self) -> Vec<(String, u32, bool)> {
        let Some(out) = self.ctl(&["get", "replicas", "-o", "json"]) else {
            return Vec::new();
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
            return Vec::new();
        };
        v["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|r| r["spec"]["service"] == "web")
                    .map(|r| {
                        let pid = r["status"]["runtimeId"]
                            .as_str()
                            .and_then(|s| {
                                s.split(|c: char| !c.is_ascii_digit())
                                    .find(|s| !s.is_empty())
                            })
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        (
                            r["spec"]["node"].as_str().unwrap_or("").to_string(),
                            pid,
                            r["status"]["phase"] == "Ready",
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn kill(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    format!(
        "median {median:.3} s, min {:.3} s, max {:.3} s over {} (all: {})",
        v[0],
        v[v.len() - 1],
        v.len(),
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Three dockerds in swarm mode, managers all, each in a host of its own.
struct Swarm {
    hosts: Hosts,
    dir: tempfile::TempDir,
    daemons: Vec<Option<Child>>,
}

impl Swarm {
    fn sock(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("d{i}/docker.sock"))
    }

    fn docker(&self, i: usize, args: &[&str]) -> Option<String> {
        let out = Command::new("/usr/bin/docker")
            .env("DOCKER_HOST", format!("unix://{}", self.sock(i).display()))
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn start_daemon(&mut self, i: usize) -> anyhow::Result<()> {
        let d = self.dir.path().join(format!("d{i}"));
        std::fs::create_dir_all(&d)?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.hosts.names[i]))
            .arg("dockerd")
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", self.sock(i).display()))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .args(["--iptables=false", "--bridge=none"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("dockerd.log"))?)
            .spawn()
            .context("dockerd (Debian docker.io)")?;
        self.daemons[i] = Some(child);
        wait_for("dockerd answers", Duration::from_secs(60), || {
            self.docker(i, &["info", "--format", "{{.ServerVersion}}"])
        })?;
        Ok(())
    }

    fn start() -> anyhow::Result<Swarm> {
        let mut s = Swarm {
            hosts: Hosts::new(MANAGERS),
            dir: tempfile::Builder::new().prefix("orch-swarm-").tempdir()?,
            daemons: (0..MANAGERS).map(|_| None).collect(),
        };
        for i in 0..MANAGERS {
            s.start_daemon(i)?;
        }
        let a0 = s.hosts.address(0);
        s.docker(0, &["swarm", "init", "--advertise-addr", &a0])
            .context("docker swarm init")?;
        let token = s
            .docker(0, &["swarm", "join-token", "-q", "manager"])
            .context("join token")?;
        for i in 1..MANAGERS {
            let a = s.hosts.address(i);
            s.docker(
                i,
                &[
                    "swarm",
                    "join",
                    "--token",
                    token.trim(),
                    "--advertise-addr",
                    &a,
                    &format!("{a0}:2377"),
                ],
            )
            .context("docker swarm join")?;
        }
        s.wait_all()?;
        Ok(s)
    }

    /// Until a manager sees three managers, one Leader and the others Reachable.
    fn wait_all(&self) -> anyhow::Result<()> {
        wait_for("three swarm managers", Duration::from_secs(120), || {
            (0..MANAGERS)
                .filter(|&i| self.daemons[i].is_some())
                .find_map(|i| {
                    let out = self.docker(i, &["node", "ls", "--format", "{{.ManagerStatus}}"])?;
                    let st: Vec<&str> = out.lines().collect();
                    (st.len() == MANAGERS
                        && st.iter().filter(|s| **s == "Leader").count() == 1
                        && st.iter().filter(|s| **s == "Reachable").count() == MANAGERS - 1)
                        .then_some(())
                })
        })
    }

    fn leader(&self) -> Option<usize> {
        (0..MANAGERS).find(|&i| {
            self.daemons[i].is_some()
                && self
                    .docker(
                        i,
                        &["node", "ls", "--format", "{{.Self}} {{.ManagerStatus}}"],
                    )
                    .is_some_and(|o| o.lines().any(|l| l == "true Leader"))
        })
    }

    /// SIGKILL the leader, then the time until a survivor accepts a Raft write.
    fn round(&mut self, k: usize) -> anyhow::Result<f64> {
        let leader = self.leader().context("no swarm leader")?;
        let survivor = (leader + 1) % MANAGERS;
        let me = self
            .docker(
                survivor,
                &["node", "inspect", "self", "--format", "{{.ID}}"],
            )
            .context("node inspect")?;
        let t = Instant::now();
        if let Some(mut c) = self.daemons[leader].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let label = format!("round={k}");
        wait_for(
            "a swarm write after the leader's death",
            Duration::from_secs(120),
            || {
                self.docker(
                    survivor,
                    &["node", "update", "--label-add", &label, me.trim()],
                )
            },
        )?;
        let took = t.elapsed().as_secs_f64();
        self.start_daemon(leader)?;
        self.wait_all()?;
        Ok(took)
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        for c in self.daemons.iter_mut() {
            if let Some(mut c) = c.take() {
                let _ = Command::new("kill").arg(c.id().to_string()).status();
                let _ = c.wait();
            }
        }
        // dockerd's own containerd and shims, found by our directory in their command lines.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(self.dir.path().to_string_lossy().as_ref())
            .status();
        for i in 0..MANAGERS {
            let d = self.dir.path().join(format!("d{i}"));
            if let Ok(entries) = std::fs::read_dir(d.join("exec/netns")) {
                for e in entries.flatten() {
                    let _ = Command::new("umount").arg("-l").arg(e.path()).status();
                }
            }
            let _ = Command::new("umount")
                .args(["-R", "-l"])
                .arg(d.join("root"))
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("ROUNDS: a number")?
        .unwrap_or(10);
    let mut b = Bench::new()?;
    let manifest = b.dir.path().join("web.yaml");
    std::fs::write(
        &manifest,
        format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  replicas: {REPLICAS}\n  template:\n    command: [/bin/sh, -c, 'exec sleep 100042']\n    stopGracePeriod: 1s\n"),
    )?;
    b.ctl(&["apply", "-f", manifest.to_str().unwrap_or_default()])
        .context("apply failed")?;
    wait_for("all replicas ready", Duration::from_secs(60), || {
        let r = b.replicas();
        (r.len() == REPLICAS && r.iter().all(|x| x.2)).then_some(())
    })?;

    let mut times = Vec::new();
    let mut writes = Vec::new();
    let mut colocated_times = Vec::new();
    let probe = b.dir.path().join("probe.yaml");
    for round in 0..rounds {
        let leader = b.leader()?;
        let colocated = b.etcd_leader_with_orch_leader();
        std::fs::write(
            &probe,
            format!("apiVersion: orch/v1\nkind: Config\nmetadata: {{name: probe}}\ndata: {{round: '{round}'}}\n"),
        )?;
        let t0 = unix_now();
        let started = Instant::now();
        if let Some(mut c) = b.managers[leader].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_for(
            "an apply after the leader's death",
            Duration::from_secs(30),
            || b.ctl(&["apply", "-f", probe.to_str().unwrap_or_default()]),
        )?;
        writes.push(started.elapsed().as_secs_f64());
        let took = wait_for(
            "a new leader's first reconcile",
            Duration::from_secs(30),
            || {
                (0..MANAGERS)
                    .filter(|&i| b.managers[i].is_some())
                    .find_map(|i| {
                        b.metric(i, "orch_leader_first_reconcile_seconds")
                            .filter(|&t| t > t0)
                    })
            },
        )? - t0;
        eprintln!(
            "round {round}: leader m{leader} killed (its etcd member led etcd: {colocated:?}); new leader reconciled after {took:.3} s"
        );
        times.push(took);
        if colocated == Some(true) {
            colocated_times.push(took);
        }
        b.start_manager(leader)?;
        b.wait_managers()?;
        // Steady state again: the new leader moves etcd's leadership off its own member
        // (checked every second); a kill at once would catch the moment before.
        std::thread::sleep(Duration::from_secs(2));
    }
    println!(
        "| leader SIGKILL → new leader's first reconcile (3 managers, orch-run etcd) | {} |",
        summary(times)
    );
    println!(
        "| leader SIGKILL → an apply accepted by a surviving manager | {} |",
        summary(writes)
    );
    if !colocated_times.is_empty() {
        println!(
            "| of which the killed leader's own etcd member led etcd too | {} |",
            summary(colocated_times)
        );
    }

    // Node death with three managers on etcd.
    let victims: Vec<u32> = wait_for("replicas on a0", Duration::from_secs(30), || {
        let r = b.replicas();
        let v: Vec<u32> = r
            .iter()
            .filter(|(n, _, _)| n == "a0")
            .map(|(_, pid, _)| *pid)
            .collect();
        if v.is_empty() {
            let mut nodes: Vec<&str> = r.iter().map(|(n, _, _)| n.as_str()).collect();
            nodes.sort();
            nodes.dedup();
            eprintln!("{} replicas, on {nodes:?}", r.len());
        }
        (r.len() == REPLICAS && !v.is_empty()).then_some(v)
    })?;
    let t = Instant::now();
    if let Some(mut c) = b.agents[0].take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    for pid in &victims {
        kill(*pid);
    }
    wait_for(
        "the dead node's replicas running elsewhere",
        Duration::from_secs(60),
        || {
            let r = b.replicas();
            (r.iter().filter(|(n, _, ready)| n != "a0" && *ready).count() == REPLICAS).then_some(())
        },
    )?;
    println!(
        "| node SIGKILL ({} of {REPLICAS} replicas on it) → all Ready elsewhere (3 managers on etcd; grace 3 s, replace 10 s) | {:.2} s |",
        victims.len(),
        t.elapsed().as_secs_f64()
    );
    drop(b);

    let dockerd = ["/usr/sbin/dockerd", "/usr/bin/dockerd"];
    if !dockerd.iter().any(|p| Path::new(p).exists()) {
        eprintln!("swarm: not measured: dockerd missing (Debian docker.io)");
        return Ok(());
    }
    let mut swarm = Swarm::start()?;
    let mut times = Vec::new();
    for k in 0..rounds {
        let took = swarm.round(k)?;
        eprintln!("swarm round {k}: a write accepted {took:.3} s after the leader's death");
        times.push(took);
    }
    println!(
        "| Swarm, 3 managers: leader SIGKILL → a Raft write accepted by a survivor | {} |",
        summary(times)
    );
    Ok(())
}
