//! The service proxy with real TCP backends on loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use orch_core::discovery::{Discovery, Endpoint, EndpointPort, Published};
use orch_core::model::object::{Balance, Protocol};
use orch_dns::proxy::{ProxyConfig, ServiceProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that answers each connection with its name, then echoes until closed.
async fn backend(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
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

fn ep(replica: &str, addr: SocketAddr) -> Endpoint {
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn publish(port: u16, balance: Balance) -> Vec<Published> {
    vec![Published {
        port,
        target: "http".into(),
        balance,
    }]
}

async fn hello(port: u16) -> std::io::Result<String> {
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
async fn publish_free(p: &ServiceProxy, service: &str, balance: Balance) -> u16 {
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
async fn serve(p: &ServiceProxy, eps: Vec<Endpoint>) -> u16 {
    let port = publish_free(p, "web", Balance::RoundRobin).await;
    p.set_endpoints("default", "web", eps).await.unwrap();
    port
}

fn proxy() -> ServiceProxy {
    ServiceProxy::new(ProxyConfig::new("n1", "127.0.0.1".parse().unwrap()))
}

#[tokio::test]
async fn round_robin_reaches_every_replica_and_skips_a_dead_one() {
    let (a, _ta) = backend("a").await;
    let (b, _tb) = backend("b").await;
    let (c, tc) = backend("c").await;
    let p = proxy();
    let port = serve(&p, vec![ep("a", a), ep("b", b), ep("c", c)]).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        *seen.entry(hello(port).await.unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|n| *n == 10), "evenly: {seen:?}");
    // c dies but is still listed (not yet unready): its connects fail and are retried on
    // another replica, so no client notices.
    tc.abort();
    let _ = tc.await; // returns once the task, and so c's listener, is dropped
    for _ in 0..20 {
        let who = hello(port).await.unwrap();
        assert!(who == "a" || who == "b", "{who}");
    }
    // Unready: gone from the candidates at once.
    p.set_endpoints("default", "web", vec![ep("a", a)])
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(hello(port).await.unwrap(), "a");
    }
    // Data flows both ways through the proxy.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    assert!(p.forwarded() >= 56);
}

#[tokio::test]
async fn least_connections_prefers_the_idle_replica() {
    let (a, _ta) = backend("a").await;
    let (b, _tb) = backend("b").await;
    let p = proxy();
    let port = publish_free(&p, "db", Balance::LeastConnections).await;
    p.set_endpoints("default", "db", vec![ep("a", a), ep("b", b)])
        .await
        .unwrap();
    // Hold five connections open; they spread 3/2 or so. Then every new short one goes to
    // whichever has fewer open.
    let mut held = Vec::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.unwrap();
        *counts
            .entry(String::from_utf8_lossy(&buf[..1]).into())
            .or_default() += 1;
        held.push(s);
    }
    assert!(counts.values().all(|n| *n >= 2), "{counts:?}");
    let busier = counts.iter().max_by_key(|(_, n)| **n).unwrap().0.clone();
    let idler = if busier == "a" { "b" } else { "a" };
    if counts[&busier] > counts[idler] {
        assert_eq!(hello(port).await.unwrap(), idler);
    }
}

#[tokio::test]
async fn listeners_follow_the_published_ports_and_conflicts_are_named() {
    let (a, _ta) = backend("a").await;
    let p = proxy();
    let port = publish_free(&p, "web", Balance::RoundRobin).await;
    p.set_endpoints("default", "web", vec![ep("a", a)])
        .await
        .unwrap();
    assert_eq!(hello(port).await.unwrap(), "a");
    assert_eq!(p.listening(), [(port, "default".into(), "web".into())]);
    // Another service on the same port is refused, naming who has it.
    let e = p
        .set_published("default", "other", publish(port, Balance::RoundRobin))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&port.to_string()) && e.contains("default/web"),
        "{e}"
    );
    assert!(p.check_port("default", "other", port).is_err());
    assert!(p.check_port("default", "web", port).is_ok());
    // A port something else holds on the node.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    let e = p.check_port("default", "web", taken).unwrap_err();
    assert!(
        e.contains("already in use") && e.contains(&taken.to_string()),
        "{e}"
    );
    let e = p
        .set_published("default", "web", publish(taken, Balance::RoundRobin))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("already in use") && e.contains("node n1"), "{e}");
    // The port the service no longer publishes is closed.
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
    p.set_published("default", "web", publish(port, Balance::RoundRobin))
        .await
        .unwrap();
    assert_eq!(hello(port).await.unwrap(), "a");
    p.remove_service("default", "web").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
    assert!(p.listening().is_empty());
}

#[tokio::test]
async fn no_ready_replica_closes_the_connection() {
    let p = proxy();
    let port = publish_free(&p, "web", Balance::RoundRobin).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
}

/// The kernel data path (root and `nft`; skipped without them, a failure under
/// `ORCH_TEST_REQUIRE_ALL=1`): connections are balanced by DNAT rules, not by this process,
/// and follow the ready replicas.
#[tokio::test]
async fn nftables_mode_balances_in_the_kernel() {
    use orch_dns::proxy::ProxyMode;
    if !orch_testkit::require(&["root", "nft"]) {
        return;
    }
    assert!(
        ServiceProxy::nftables_available(),
        "nft does not work here (needs root and the nftables package; .ci/run installs it)"
    );
    let (a, _ta) = backend("a").await;
    let (b, _tb) = backend("b").await;
    let (c, _tc) = backend("c").await;
    let mut cfg = ProxyConfig::new("n1", "127.0.0.1".parse().unwrap());
    cfg.mode = ProxyMode::Nftables;
    let p = ServiceProxy::new(cfg);
    let table = p.nft_table().to_string();
    let port = serve(&p, vec![ep("a", a), ep("b", b), ep("c", c)]).await;
    let list = || {
        String::from_utf8_lossy(
            &std::process::Command::new("nft")
                .args(["list", "table", "ip", &table])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    };
    assert!(
        list().contains(&format!("tcp dport {port} dnat")),
        "{}",
        list()
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        *seen.entry(hello(port).await.unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|n| *n == 10), "evenly: {seen:?}");
    assert_eq!(p.forwarded(), 0, "no connection went through this process");
    p.set_endpoints("default", "web", vec![ep("b", b)])
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(hello(port).await.unwrap(), "b");
    }
    // With no ready replica the rule goes; the user-space listener closes the connection.
    p.set_endpoints("default", "web", vec![]).await.unwrap();
    assert!(!list().contains("dnat"), "{}", list());
    p.remove_service("default", "web").await.unwrap();
    drop(p);
    assert!(list().is_empty(), "the table is deleted with the proxy");
}
