//! Helpers of the proxy tests: TCP backends on loopback that answer with their name, and
//! publishing a service on a free port.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use orch_core::discovery::{Discovery, Endpoint, EndpointPort, Published};
use orch_core::model::object::{Balance, Protocol};
use orch_dns::proxy::ServiceProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that answers each connection with its name, then echoes until closed.
pub async fn backend(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    backend_at(name, "127.0.0.1").await
}

/// A backend on `ip` (a loopback address of its own for one whose port must stay free after
/// it dies: other tests bind ephemeral ports on 127.0.0.1 and could take it over).
pub async fn backend_at(name: &'static str, ip: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, task)
}

pub fn ep(replica: &str, addr: SocketAddr) -> Endpoint {
    Endpoint {
        replica: replica.into(),
        node: "n1".into(),
        ip: addr.ip().to_string(),
        ports: vec![EndpointPort {
            name: "http".into(),
            port: addr.port(),
            protocol: Protocol::Tcp,
        }],
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn publish(port: u16, balance: Balance) -> Vec<Published> {
    vec![Published {
        port,
        target: "http".into(),
        balance,
    }]
}

pub async fn hello(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// Publishes `port` round robin for default/web and sets its endpoints.
/// Publishes `service` on a free port; the port. A port found free can be taken (by another
/// test's connection, say) before the proxy listens on it: then another one is tried.
pub async fn publish_free(p: &ServiceProxy, service: &str, balance: Balance) -> u16 {
    for _ in 0..20 {
        let port = free_port();
        match p
            .set_published("default", service, publish(port, balance))
            .await
        {
            Ok(()) => return port,
            Err(e) if e.to_string().contains("already in use") => continue,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no free port to publish {service} on")
}

/// Publishes `web` round robin over `eps` on a free port; the port.
pub async fn serve(p: &ServiceProxy, eps: Vec<Endpoint>) -> u16 {
    let port = publish_free(p, "web", Balance::RoundRobin).await;
    p.set_endpoints("default", "web", eps).await.unwrap();
    port
}
