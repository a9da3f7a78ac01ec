//! orch-dns: implementations of [`orch_core::Discovery`].
//!
//! - [`dns::DnsServer`]: the cluster DNS server (hickory-server) answering for services,
//!   their ports (SRV) and replicas from the endpoints the engine publishes;
//! - [`proxy::ServiceProxy`]: listens on the ports services publish and balances TCP
//!   connections across their ready replicas;
//! - [`FileDiscovery`]: endpoint files.
//!
//! Several of them run together behind [`orch_core::discovery::Fanout`].
//!
//! [`FileDiscovery`] writes each service's ready endpoints to `DIR/<namespace>/<service>`,
//! one line per endpoint (`<replica> <ip>:<port> [<name>=<port> ...]`), replaced atomically
//! (write to a temporary file, then rename), so readers never see half a list. Workloads get
//! `ORCH_DISCOVERY_DIR` in their environment.

pub mod dns;
pub mod proxy;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use orch_core::discovery::{Discovery, DiscoveryError, Endpoint, EndpointPort};

/// Publishes endpoints as files under a directory.
#[derive(Clone, Debug)]
pub struct FileDiscovery {
    dir: PathBuf,
}

impl FileDiscovery {
    /// Publishes under `dir` (created on first write).
    pub fn new(dir: impl AsRef<Path>) -> FileDiscovery {
        FileDiscovery {
            dir: dir.as_ref().to_path_buf(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding `namespace/service`'s endpoints.
    pub fn path(&self, namespace: &str, service: &str) -> PathBuf {
        self.dir.join(namespace).join(service)
    }
}

/// Renders endpoints in the file format.
pub fn render(endpoints: &[Endpoint]) -> String {
    let mut out = String::new();
    for e in endpoints {
        out.push_str(&e.replica);
        if let Some(EndpointPort { port, .. }) = e.ports.first() {
            out.push_str(&format!(" {}:{port}", e.ip));
        } else {
            out.push_str(&format!(" {}", e.ip));
        }
        for EndpointPort { name, port, .. } in &e.ports {
            out.push_str(&format!(" {name}={port}"));
        }
        out.push('\n');
    }
    out
}

fn err(path: &Path, e: std::io::Error) -> DiscoveryError {
    DiscoveryError(format!("{}: {e}", path.display()))
}

#[async_trait]
impl Discovery for FileDiscovery {
    async fn set_endpoints(
        &self,
        namespace: &str,
        service: &str,
        endpoints: Vec<Endpoint>,
    ) -> Result<(), DiscoveryError> {
        let path = self.path(namespace, service);
        let dir = path.parent().unwrap_or(&self.dir).to_path_buf();
        let tmp = dir.join(format!(".{service}.tmp"));
        let text = render(&endpoints);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| err(&dir, e))?;
        tokio::fs::write(&tmp, text)
            .await
            .map_err(|e| err(&tmp, e))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| err(&path, e))
    }

    async fn remove_service(&self, namespace: &str, service: &str) -> Result<(), DiscoveryError> {
        let path = self.path(namespace, service);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_and_removes_endpoint_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = FileDiscovery::new(dir.path());
        let ep = Endpoint {
            replica: "web-1".into(),
            node: "n".into(),
            ip: "127.0.0.1".into(),
            ports: vec![EndpointPort {
                name: "http".into(),
                port: 8080,
                protocol: Default::default(),
            }],
        };
        d.set_endpoints("default", "web", vec![ep]).await.unwrap();
        let text = std::fs::read_to_string(d.path("default", "web")).unwrap();
        assert_eq!(text, "web-1 127.0.0.1:8080 http=8080\n");
        d.remove_service("default", "web").await.unwrap();
        assert!(!d.path("default", "web").exists());
    }
}
