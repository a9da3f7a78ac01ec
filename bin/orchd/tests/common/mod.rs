//! Test support: start and stop real `orchd` daemons, run `orchctl`, poll with deadlines;
//! [`require`] skips a test that needs what this machine lacks (root, `ip`, `dig`, `nft`,
//! etcd, containerd), or fails it under `ORCH_TEST_REQUIRE_ALL=1`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)] // each test binary uses what it needs of these
pub use orch_testkit::{require, require_that};

#[cfg(feature = "containerd")]
pub mod cluster;

/// The directory holding the workspace's binaries (target/debug), next to the test binary.
pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_orchd"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A workspace binary; fails with the command to build it if missing.
pub fn workspace_bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (.ci/run does)",
        p.display()
    );
    p
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub fn eventually<T>(what: &str, limit: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `orchd server` with its own data dir and socket.
pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub child: Option<Child>,
}

impl Daemon {
    /// Starts a daemon with state in `dir` and waits until it answers.
    pub fn start(dir: &Path) -> Daemon {
        Daemon::start_with(dir, &[])
    }

    /// [`Daemon::start`] with extra `orchd server` arguments.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Daemon {
        Daemon::start_as(dir, &["server", "--node", "test-node"], extra)
    }

    /// Starts `orchd HEAD... --data-dir DIR/data --socket DIR/orchd.sock EXTRA...` (`server`
    /// or `manager`) and waits until it answers.
    pub fn start_as(dir: &Path, head: &[&str], extra: &[&str]) -> Daemon {
        Daemon::start_in(None, dir, head, extra)
    }

    /// [`Daemon::start_as`] inside network namespace `netns` (`ip netns exec`).
    pub fn start_in(netns: Option<&str>, dir: &Path, head: &[&str], extra: &[&str]) -> Daemon {
        Daemon::start_in_within(netns, dir, head, extra, Duration::from_secs(20))
    }

    /// [`Daemon::start_in`], waiting up to `limit` for it to answer.
    pub fn start_in_within(
        netns: Option<&str>,
        dir: &Path,
        head: &[&str],
        extra: &[&str],
        limit: Duration,
    ) -> Daemon {
        let socket = dir.join("orchd.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("orchd.log"))
            .unwrap();
        let child = netns_command(netns, env!("CARGO_BIN_EXE_orchd"))
            .args(head)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--socket")
            .arg(&socket)
            .args(replica_network(head, extra))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn orchd");
        let d = Daemon {
            dir: dir.to_path_buf(),
            socket,
            child: Some(child),
        };
        eventually("orchd answers", limit, || {
            d.ctl(&["info"]).status.success().then_some(())
        });
        d
    }

    /// Runs `orchctl --socket SOCKET args...`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(workspace_bin("orchctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run orchctl")
    }

    /// Runs orchctl and returns stdout, failing the test on a non-zero exit.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "orchctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The replicas as JSON objects.
    pub fn replicas(&self) -> Vec<serde_json::Value> {
        json_items(&self.ctl_ok(&["get", "replicas", "-o", "json"]))
    }

    /// Stops the daemon with SIGTERM (workloads keep running).
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c);
        }
    }

    /// Deletes `kind/name` and waits until no replica is left.
    pub fn delete_and_wait(&self, kind: &str, name: &str) {
        self.ctl_ok(&["delete", kind, name]);
        eventually("every replica gone", Duration::from_secs(30), || {
            self.replicas().is_empty().then_some(())
        });
    }

    /// Waits until a replica of `service` is Ready.
    pub fn wait_ready(&self, service: &str) {
        eventually("a replica ready", Duration::from_secs(30), || {
            self.replicas()
                .into_iter()
                .any(|r| r["spec"]["service"] == service && r["status"]["phase"] == "Ready")
                .then_some(())
        });
    }

    /// Waits until every node in `names` is listed.
    pub fn wait_for_nodes(&self, names: &[&str]) {
        eventually("the nodes registered", Duration::from_secs(30), || {
            let out = self.ctl_ok(&["get", "nodes"]);
            names.iter().all(|n| out.contains(n)).then_some(())
        });
    }

    /// Whether the daemon process still runs.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The objects of `orchctl get ... -o json` output: its `items`, or the one object.
pub fn json_items(out: &str) -> Vec<serde_json::Value> {
    if out.trim().is_empty() {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(out).unwrap();
    match v.get("items") {
        Some(items) => items.as_array().cloned().unwrap_or_default(),
        None => vec![v],
    }
}

/// The pid in a replica's `status.runtimeId` (`pid 1234`).
pub fn pid_of(replica: &serde_json::Value) -> Option<u32> {
    let id = replica["status"]["runtimeId"].as_str()?;
    id.split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())?
        .parse()
        .ok()
}

/// `ip:port` of a replica.
pub fn addr_of(replica: &serde_json::Value) -> Option<String> {
    let ip = replica["status"]["hostIp"].as_str()?;
    let port = replica["status"]["ports"][0]["port"].as_u64()?;
    Some(format!("{ip}:{port}"))
}

/// GET / over plain HTTP; the body, or `None` if it did not answer.
pub fn http_get(addr: &str) -> Option<String> {
    let (status, body) = http_request(addr, "/")?;
    (status == 200).then_some(body)
}

/// GET `path` over plain HTTP: the status code and the body.
pub fn http_request(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        status,
        buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    ))
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Writes a manifest file and returns its path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The hello service manifest with `replicas` and an extra env var.
pub fn hello(replicas: u32, color: &str) -> String {
    format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: hello}}\nspec:\n  replicas: {replicas}\n  template:\n    command: [hello-server]\n    env: [{{name: COLOR, value: {color}}}]\n    ports: [{{name: http}}]\n    stopGracePeriod: 2s\n"
    )
}

/// `(ip:port, pid)` of `n` ready, current replicas that answer HTTP with the hello page,
/// once exactly `n` replicas exist.
pub fn ready_addrs(d: &Daemon, n: usize) -> Option<Vec<(String, u32)>> {
    ready_addrs_of(d, None, n)
}

/// [`ready_addrs`] for the replicas of one service only (those not being stopped), or of
/// all replicas when `service` is `None`.
pub fn ready_addrs_of(d: &Daemon, service: Option<&str>, n: usize) -> Option<Vec<(String, u32)>> {
    let reps: Vec<serde_json::Value> = d
        .replicas()
        .into_iter()
        .filter(|r| {
            service.is_none_or(|s| r["spec"]["service"] == s && r["spec"]["desired"].is_null())
        })
        .collect();
    let ready: Vec<(String, u32)> = reps
        .iter()
        .filter(|r| r["status"]["phase"] == "Ready" && r["spec"]["desired"].is_null())
        .filter_map(|r| Some((addr_of(r)?, pid_of(r)?)))
        .collect();
    (reps.len() == n
        && ready.len() == n
        && ready
            .iter()
            .all(|(a, _)| http_get(a).is_some_and(|b| b.starts_with("hello from"))))
    .then_some(ready)
}

/// A free TCP port on loopback (bound, then released for the caller to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The worker join token of the manager whose state is in `dir` (`orchd token`).
pub fn token_of(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_orchd"))
        .args(["token", "--data-dir"])
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A running `orchd agent` (stopped with SIGTERM on drop).
pub struct AgentProc {
    pub child: Option<Child>,
    pub dir: PathBuf,
}

impl AgentProc {
    /// Starts `orchd agent --join ADDR --node NODE --data-dir DIR/NODE [--token TOKEN]`.
    pub fn start(dir: &Path, addr: &str, node: &str, token: Option<&str>) -> AgentProc {
        AgentProc::start_in(None, dir, addr, node, token, &[])
    }

    /// [`AgentProc::start`] inside network namespace `netns`, with extra arguments.
    pub fn start_in(
        netns: Option<&str>,
        dir: &Path,
        addr: &str,
        node: &str,
        token: Option<&str>,
        extra: &[&str],
    ) -> AgentProc {
        let data = dir.join(node);
        std::fs::create_dir_all(&data).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("agent.log"))
            .unwrap();
        let mut cmd = netns_command(netns, env!("CARGO_BIN_EXE_orchd"));
        cmd.args(["agent", "--join", addr, "--node", node])
            .arg("--data-dir")
            .arg(&data)
            .args(replica_network(&["agent"], extra))
            .args(extra);
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn orchd agent");
        AgentProc {
            child: Some(child),
            dir: data,
        }
    }

    /// What the agent wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// SIGKILL: the agent dies at once; its workloads keep running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the agent to exit by itself; its status.
    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let c = self.child.as_mut().unwrap();
        let status = eventually("the agent exits", limit, || c.try_wait().unwrap());
        self.child = None;
        status
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c);
        }
    }
}

/// `--replica-network off` unless the test's own arguments choose: replica networking builds
/// a bridge with the cluster CIDR's first addresses in the namespace orchd runs in, and
/// parallel tests in one namespace would collide. A manager runs no agent, so it gets nothing.
fn replica_network(head: &[&str], extra: &[&str]) -> &'static [&'static str] {
    if head.first() == Some(&"manager") || extra.iter().any(|a| a.starts_with("--replica-network"))
    {
        &[]
    } else {
        &["--replica-network", "off"]
    }
}

/// SIGTERM, then SIGKILL if the process is still there after 15 s; waits for it.
pub fn terminate(mut c: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(c.id().to_string())
        .status();
    let start = Instant::now();
    while c.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(15) {
            let _ = c.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `program`, or `nsenter --net=/run/netns/NETNS program` inside a network namespace. Not
/// `ip netns exec`: that gives the process a mount namespace of its own, and a namespace an
/// agent bind-mounts under /run/netns would be invisible to its containerd.
pub fn netns_command(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Hosts on one bridge, and what they need (root, `ip`): shared with orch-net's tests.
#[allow(unused_imports)] // not every test binary uses them
pub use orch_testkit::hosts::{Hosts, NETNS};

/// What the orchd tests do on a host of [`Hosts`].
pub trait OnHost {
    /// `ip -n HOST ARGS...` on host `i`: its stdout (empty when `ip` fails).
    fn ip(&self, i: usize, args: &[&str]) -> String;
    /// Runs `program args...` in host `i`'s network namespace (`nsenter --net`): its output.
    fn run(&self, i: usize, program: &str, args: &[&str]) -> Output;
}

impl OnHost for Hosts {
    fn ip(&self, i: usize, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.names[i])
            .args(args)
            .output()
            .expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn run(&self, i: usize, program: &str, args: &[&str]) -> Output {
        netns_command(Some(&self.names[i]), program)
            .args(args)
            .output()
            .expect("run in a host")
    }
}
