//! [`LocalEtcd`]: an etcd server of its own for tests and benchmarks — free loopback ports,
//! a temporary data directory, killed on drop; [`LocalEtcdCluster`]: several members the
//! same way (optionally serving TLS), with members killed, restarted, frozen (SIGSTOP),
//! added and removed one at a time. Needs the `etcd` binary (Debian `etcd-server`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::etcd::{initial_cluster, EtcdAdmin, EtcdStore, EtcdTls};

/// How long etcd may take to start answering.
const START: Duration = Duration::from_secs(20);

/// An etcd server on free loopback ports with its own data directory; killed on drop.
pub struct LocalEtcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl std::fmt::Debug for LocalEtcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEtcd")
            .field("endpoint", &self.endpoint())
            .field("running", &self.child.is_some())
            .finish()
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalEtcd {
    /// Starts etcd and waits until it answers.
    pub async fn start() -> Result<LocalEtcd, String> {
        let ports = || free_port().map_err(|e| format!("no free loopback port: {e}"));
        let mut etcd = LocalEtcd {
            child: None,
            dir: tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?,
            client_port: ports()?,
            peer_port: ports()?,
        };
        etcd.restart().await?;
        Ok(etcd)
    }

    /// The client URL (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `HOST:PORT` of the client URL.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// (Re)starts etcd on the same ports and data directory and waits until it answers.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.stop();
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot run etcd ({e}): install etcd-server (apt-get install etcd-server)")
            })?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + START;
        loop {
            match EtcdStore::connect(&[self.endpoint()], "/probe").await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(format!("etcd did not answer within {START:?}: {e}"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to etcd with kill(1).
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        let pid = self.pid().ok_or("etcd is not running")?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .map_err(|e| format!("cannot run kill: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -{signal} {pid} failed"))
        }
    }

    /// Kills etcd (SIGKILL) and waits for it; the data directory stays for [`LocalEtcd::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Heartbeat and election timeout of [`LocalEtcdCluster`] members, in ms (what the etcd
/// members orch runs use: leases of 1 s are granted as asked).
pub const CLUSTER_TIMING: (u32, u32) = (50, 500);

/// Certificates for a [`LocalEtcdCluster`] that serves clients over TLS (peers talk plain
/// HTTP on loopback), all PEM.
#[derive(Clone, Debug)]
pub struct LocalEtcdTls {
    /// The CA that signed both certificates; members accept client certificates it signed.
    pub ca_pem: String,
    /// The members' serving certificate (its SANs must name 127.0.0.1) and key.
    pub server: (String, String),
    /// A client certificate (clientAuth) and key: the cluster's own checks use it, and
    /// [`LocalEtcdTls::client`] hands it out.
    pub client: (String, String),
}

impl LocalEtcdTls {
    /// The client side, for [`EtcdStore::connect_with`].
    pub fn client(&self) -> EtcdTls {
        EtcdTls {
            ca_pem: self.ca_pem.clone(),
            cert_pem: self.client.0.clone(),
            key_pem: self.client.1.clone(),
        }
    }
}

struct ClusterMember {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// `--initial-cluster` and `--initial-cluster-state` it was created with.
    initial_cluster: String,
    state: &'static str,
    child: Option<Child>,
    removed: bool,
}

/// A cluster of etcd members on free loopback ports, each with its own data directory and
/// log file under one temporary directory, tuned like orch-run members (heartbeat 50 ms,
/// election timeout 500 ms); every member is killed on drop. Members are numbered from 0 in
/// the order they were started or added; a removed member keeps its number.
pub struct LocalEtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<ClusterMember>,
    tls: Option<LocalEtcdTls>,
}

impl std::fmt::Debug for LocalEtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEtcdCluster")
            .field("endpoints", &self.endpoints())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl LocalEtcdCluster {
    /// Starts `n` members (plain HTTP) and waits until the cluster answers.
    pub async fn start(n: usize) -> Result<LocalEtcdCluster, String> {
        LocalEtcdCluster::start_with(n, None).await
    }

    /// [`LocalEtcdCluster::start`], serving clients over TLS with `tls`'s certificates.
    pub async fn start_with(
        n: usize,
        tls: Option<LocalEtcdTls>,
    ) -> Result<LocalEtcdCluster, String> {
        if n == 0 {
            return Err("a local etcd cluster needs at least one member".into());
        }
        let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
        if let Some(tls) = &tls {
            let files = [
                ("ca.pem", &tls.ca_pem),
                ("server.pem", &tls.server.0),
                ("server-key.pem", &tls.server.1),
            ];
            for (file, pem) in files {
                std::fs::write(dir.path().join(file), pem)
                    .map_err(|e| format!("cannot write {file}: {e}"))?;
            }
        }
        let mut cluster = LocalEtcdCluster {
            dir,
            members: Vec::new(),
            tls,
        };
        let ports = || free_port().map_err(|e| format!("no free loopback port: {e}"));
        for i in 0..n {
            cluster.members.push(ClusterMember {
                name: format!("m{i}"),
                client_port: ports()?,
                peer_port: ports()?,
                initial_cluster: String::new(),
                state: "new",
                child: None,
                removed: false,
            });
        }
        let initial: Vec<String> = (0..n)
            .map(|i| format!("{}={}", cluster.members[i].name, cluster.peer_url(i)))
            .collect();
        for i in 0..n {
            cluster.members[i].initial_cluster = initial.join(",");
            cluster.spawn(i)?;
        }
        cluster.wait_ready(&cluster.endpoints()).await?;
        Ok(cluster)
    }

    /// How many members were started or added (removed ones included).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members (never: it starts with one at least).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Member `i`'s client URL (`http://127.0.0.1:PORT`, `https://` with TLS).
    pub fn endpoint(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Member `i`'s peer URL.
    pub fn peer_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].peer_port)
    }

    /// Member `i`'s name (`m0`, `m1`, …).
    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// Every member's client URL, removed members left out.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len())
            .filter(|&i| !self.members[i].removed)
            .map(|i| self.endpoint(i))
            .collect()
    }

    /// The client TLS settings, when the cluster serves TLS.
    pub fn client_tls(&self) -> Option<EtcdTls> {
        self.tls.as_ref().map(LocalEtcdTls::client)
    }

    /// A store over every member's endpoint, keys beneath `prefix`.
    pub async fn store(&self, prefix: &str) -> Result<EtcdStore, String> {
        EtcdStore::connect_with(&self.endpoints(), prefix, self.client_tls())
            .await
            .map_err(|e| format!("connect to the local etcd cluster: {e}"))
    }

    /// Member `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Member `i`'s log file (etcd's stderr, across restarts).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let (heartbeat, election) = CLUSTER_TIMING;
        let client = self.endpoint(i);
        let peer = self.peer_url(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .map_err(|e| format!("cannot open {}: {e}", self.log_path(i).display()))?;
        let m = &self.members[i];
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &m.initial_cluster])
            .args(["--initial-cluster-state", m.state])
            .args(["--initial-cluster-token", "orch-local"])
            .args(["--heartbeat-interval", &heartbeat.to_string()])
            .args(["--election-timeout", &election.to_string()])
            .stdout(Stdio::null())
            .stderr(log);
        if self.tls.is_some() {
            let dir = self.dir.path();
            cmd.arg("--cert-file")
                .arg(dir.join("server.pem"))
                .arg("--key-file")
                .arg(dir.join("server-key.pem"))
                .arg("--trusted-ca-file")
                .arg(dir.join("ca.pem"))
                .arg("--client-cert-auth");
        }
        let child = cmd.spawn().map_err(|e| {
            format!("cannot run etcd ({e}): install etcd-server (apt-get install etcd-server)")
        })?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Waits until a store over `endpoints` answers (which needs a leader).
    async fn wait_ready(&self, endpoints: &[String]) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + START;
        loop {
            match EtcdStore::connect_with(endpoints, "/probe", self.client_tls()).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(format!(
                        "etcd at {} did not answer within {START:?}: {e}{}",
                        endpoints.join(","),
                        self.log_tails()
                    ))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The last lines of every member's log, for an error message.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for i in 0..self.members.len() {
            let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            out.push_str(&format!(
                "\n--- {} (last lines of its log):",
                self.members[i].name
            ));
            for line in &lines[lines.len().saturating_sub(8)..] {
                out.push('\n');
                out.push_str(line);
            }
        }
        out
    }

    /// Kills member `i` (SIGKILL) and waits for it; its data stays for
    /// [`LocalEtcdCluster::restart`].
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts member `i` on its ports and data and waits until it answers with a leader
    /// (so a majority must be up with it).
    pub async fn restart(&mut self, i: usize) -> Result<(), String> {
        if self.members[i].removed {
            return Err(format!("member {} was removed", self.members[i].name));
        }
        self.kill(i);
        self.spawn(i)?;
        self.wait_ready(&[self.endpoint(i)]).await
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to member `i` with kill(1).
    pub fn signal(&self, i: usize, signal: &str) -> Result<(), String> {
        let pid = self
            .pid(i)
            .ok_or_else(|| format!("member {} is not running", self.members[i].name))?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .map_err(|e| format!("cannot run kill: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -{signal} {pid} failed"))
        }
    }

    /// Freezes member `i` (SIGSTOP): its connections stay open and go silent.
    pub fn freeze(&self, i: usize) -> Result<(), String> {
        self.signal(i, "STOP")
    }

    /// Thaws a frozen member `i` (SIGCONT).
    pub fn thaw(&self, i: usize) -> Result<(), String> {
        self.signal(i, "CONT")
    }

    /// The etcd member id of member `i`, from the member list.
    pub async fn member_id(&self, i: usize) -> Result<u64, String> {
        let store = self.store("/probe").await?;
        let members = EtcdAdmin::new(&store)
            .members()
            .await
            .map_err(|e| format!("etcd member list: {e}"))?;
        let peer = self.peer_url(i);
        members
            .iter()
            .find(|m| m.peer_urls.contains(&peer))
            .map(|m| m.id)
            .ok_or_else(|| format!("member {} is not in the member list", self.name(i)))
    }

    /// The index of the member that is the raft leader now.
    pub async fn leader(&self) -> Result<usize, String> {
        let store = self.store("/probe").await?;
        let admin = EtcdAdmin::new(&store);
        let members = admin
            .members()
            .await
            .map_err(|e| format!("etcd member list: {e}"))?;
        let leader = members
            .iter()
            .find(|m| m.is_leader)
            .ok_or("the etcd cluster has no leader")?;
        (0..self.members.len())
            .find(|&i| leader.peer_urls.contains(&self.peer_url(i)))
            .ok_or_else(|| format!("the leader {:x} is not a local member", leader.id))
    }

    /// Adds a member through etcd's member API, starts it with `--initial-cluster-state
    /// existing` and waits until it answers; returns its number.
    pub async fn add_member(&mut self) -> Result<usize, String> {
        let ports = || free_port().map_err(|e| format!("no free loopback port: {e}"));
        let i = self.members.len();
        self.members.push(ClusterMember {
            name: format!("m{i}"),
            client_port: ports()?,
            peer_port: ports()?,
            initial_cluster: String::new(),
            state: "existing",
            child: None,
            removed: true,
        });
        let store = self.store("/probe").await?;
        let added = EtcdAdmin::new(&store)
            .add_member(&[self.peer_url(i)])
            .await
            .map_err(|e| format!("etcd member add: {e}"));
        let (id, members) = match added {
            Ok(added) => added,
            Err(e) => {
                self.members.pop();
                return Err(e);
            }
        };
        self.members[i].initial_cluster = initial_cluster(&members, id, &self.members[i].name);
        self.members[i].removed = false;
        self.spawn(i)?;
        self.wait_ready(&[self.endpoint(i)]).await?;
        Ok(i)
    }

    /// Removes member `i` through etcd's member API and kills its process.
    pub async fn remove_member(&mut self, i: usize) -> Result<(), String> {
        let id = self.member_id(i).await?;
        self.members[i].removed = true;
        let store = self.store("/probe").await?;
        EtcdAdmin::new(&store)
            .remove_member(id)
            .await
            .map_err(|e| format!("etcd member remove: {e}"))?;
        self.kill(i);
        Ok(())
    }
}

impl Drop for LocalEtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            // A frozen member would not die from SIGKILL any later, but thaw it anyway so
            // nothing is left stopped.
            let _ = self.signal(i, "CONT");
            self.kill(i);
        }
    }
}
