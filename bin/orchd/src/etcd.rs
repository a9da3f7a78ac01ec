//! The etcd member an `orchd manager` runs (`--init-cluster`, `--join`): Debian's `etcd`
//! binary with its data in DATA_DIR/etcd, listening on the manager's IP, peer and client TLS
//! with one certificate from the cluster CA (it names the IP), heartbeat 50 ms and election
//! timeout 500 ms (so etcd grants the 1 s leader lease as asked). A supervisor thread starts it
//! through `setpriv --pdeathsig KILL` — the member dies with that thread, so with orchd,
//! however orchd ends — and starts it again, with backoff, whenever it exits. Its output goes
//! to DATA_DIR/etcd.log.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use orch_api::grpc::cluster::Credentials;

/// etcd's heartbeat interval and election timeout (ms) for the members orch runs.
pub const TIMING: (u32, u32) = (50, 500);

/// What the member is and where it keeps things.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    /// Its name (the manager's).
    pub name: String,
    /// The IP it listens on and advertises.
    pub ip: IpAddr,
    /// Its client port (`--etcd-client-port`).
    pub client_port: u16,
    /// Its peer port (`--etcd-peer-port`).
    pub peer_port: u16,
    /// The orchd data directory (etcd's data goes in DATA_DIR/etcd, its log in
    /// DATA_DIR/etcd.log, its certificate in DATA_DIR/etcd-pki).
    pub data_dir: PathBuf,
    /// `--initial-cluster` (ignored by etcd once its data directory holds a member).
    pub initial_cluster: String,
    /// `--initial-cluster-state`: `new` (the first member) or `existing` (one added).
    pub state: String,
    /// `--initial-cluster-token`: the same for every member of one cluster.
    pub cluster_token: String,
}

fn url(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(_) => format!("https://{ip}:{port}"),
        IpAddr::V6(_) => format!("https://[{ip}]:{port}"),
    }
}

impl MemberConfig {
    /// Its client URL (`https://IP:PORT`).
    pub fn client_url(&self) -> String {
        url(self.ip, self.client_port)
    }

    /// Its peer URL.
    pub fn peer_url(&self) -> String {
        url(self.ip, self.peer_port)
    }

    /// The member's log file.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join("etcd.log")
    }

    fn pki_dir(&self) -> PathBuf {
        self.data_dir.join("etcd-pki")
    }

    /// etcd's arguments.
    fn args(&self) -> Vec<std::ffi::OsString> {
        let pki = self.pki_dir();
        let (heartbeat, election) = TIMING;
        let (client, peer) = (self.client_url(), self.peer_url());
        let mut a: Vec<std::ffi::OsString> = Vec::new();
        let mut push = |k: &str, v: &std::ffi::OsStr| {
            a.push(k.into());
            a.push(v.to_os_string());
        };
        push("--name", self.name.as_ref());
        push("--data-dir", self.data_dir.join("etcd").as_os_str());
        push("--listen-client-urls", client.as_ref());
        push("--advertise-client-urls", client.as_ref());
        push("--listen-peer-urls", peer.as_ref());
        push("--initial-advertise-peer-urls", peer.as_ref());
        push("--initial-cluster", self.initial_cluster.as_ref());
        push("--initial-cluster-state", self.state.as_ref());
        push("--initial-cluster-token", self.cluster_token.as_ref());
        push("--heartbeat-interval", heartbeat.to_string().as_ref());
        push("--election-timeout", election.to_string().as_ref());
        for (flag, file) in [
            ("--cert-file", "member.pem"),
            ("--key-file", "member.key"),
            ("--trusted-ca-file", "ca.pem"),
            ("--peer-cert-file", "member.pem"),
            ("--peer-key-file", "member.key"),
            ("--peer-trusted-ca-file", "ca.pem"),
        ] {
            push(flag, pki.join(file).as_os_str());
        }
        push("--logger", "zap".as_ref());
        push("--log-outputs", "stderr".as_ref());
        // Boolean flags take `=`: a separate value would end etcd's flag parsing.
        a.push("--client-cert-auth=true".into());
        a.push("--peer-client-cert-auth=true".into());
        a
    }
}

/// The running member and its supervisor thread.
pub struct Supervised {
    config: MemberConfig,
    stopping: Arc<AtomicBool>,
    child: Arc<Mutex<Option<Child>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Supervised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervised")
            .field("name", &self.config.name)
            .field("client_url", &self.config.client_url())
            .finish()
    }
}

/// Writes the member's certificate (`creds`, from the cluster CA) and starts supervising it.
pub fn supervise(config: MemberConfig, creds: &Credentials) -> anyhow::Result<Supervised> {
    let pki = config.pki_dir();
    std::fs::create_dir_all(&pki).with_context(|| format!("cannot create {}", pki.display()))?;
    for (file, text) in [
        ("ca.pem", &creds.ca_pem),
        ("member.pem", &creds.cert_pem),
        ("member.key", &creds.key_pem),
    ] {
        write_private(&pki.join(file), text)?;
    }
    which_etcd()?;
    let stopping = Arc::new(AtomicBool::new(false));
    let child = Arc::new(Mutex::new(None));
    let thread = std::thread::Builder::new()
        .name("etcd-supervisor".into())
        .spawn({
            let (config, stopping, child) = (config.clone(), stopping.clone(), child.clone());
            move || run(&config, &stopping, &child)
        })
        .context("cannot start the etcd supervisor thread")?;
    Ok(Supervised {
        config,
        stopping,
        child,
        thread: Some(thread),
    })
}

/// Writes `text` to `path`, readable by its owner only (keys, the secret keyring).
pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Fails, saying what to install, when there is no `etcd` on the PATH.
fn which_etcd() -> anyhow::Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| d.join("etcd").is_file()) {
        Ok(())
    } else {
        anyhow::bail!(
            "--init-cluster/--join: no etcd binary on the PATH; install it (apt-get install etcd-server)"
        )
    }
}

/// Starts the member, waits for it, starts it again after it exits (1 s, doubling to 30 s;
/// back to 1 s after a run of 10 s), until `stopping`.
fn run(config: &MemberConfig, stopping: &AtomicBool, slot: &Mutex<Option<Child>>) {
    let mut backoff = Duration::from_secs(1);
    while !stopping.load(Ordering::SeqCst) {
        let started = Instant::now();
        match spawn(config) {
            Ok(child) => {
                let pid = child.id();
                tracing::info!(pid, member = %config.name, url = %config.client_url(), "etcd member started");
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
                let status = loop {
                    let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
                    let Some(c) = guard.as_mut() else {
                        break None;
                    };
                    match c.try_wait() {
                        Ok(Some(status)) => {
                            *guard = None;
                            break Some(status);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "etcd member: cannot wait for it");
                        }
                    }
                    drop(guard);
                    std::thread::sleep(Duration::from_millis(100));
                };
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                tracing::warn!(status = ?status, log = %config.log_path().display(), "etcd member exited; starting it again in {backoff:?}");
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "etcd member: cannot start it; trying again in {backoff:?}");
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_secs(1);
        }
        let until = Instant::now() + backoff;
        while Instant::now() < until && !stopping.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

fn spawn(config: &MemberConfig) -> anyhow::Result<Child> {
    let log_path = config.log_path();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let err = log
        .try_clone()
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    // setpriv sets the parent-death signal and execs etcd: when this thread (orchd) dies,
    // the kernel kills the member.
    Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--", "etcd"])
        .args(config.args())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .context("cannot run `setpriv ... etcd` (setpriv is in util-linux, etcd in etcd-server)")
}

impl Supervised {
    /// The member's configuration.
    pub fn config(&self) -> &MemberConfig {
        &self.config
    }

    /// Stops the member (SIGTERM, SIGKILL after 10 s) and its supervisor.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let taken = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut c) = taken {
            if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop_now();
    }
}
