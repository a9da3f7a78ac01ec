//! [`LocalEtcd`]: an etcd server of its own for tests and benchmarks — free loopback ports,
//! a temporary data directory, killed on drop. Needs the `etcd` binary (Debian
//! `etcd-server`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::etcd::EtcdStore;

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
