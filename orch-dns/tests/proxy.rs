//! The service proxy with real TCP backends on loopback (user space; the kernel mode is in
//! `proxy_kernel.rs`, a test binary of its own: its nftables rules and conntrack deletions
//! share the kernel with every test running beside it).

#[path = "common/loopback.rs"]
mod loopback;
use loopback::*;

use std::collections::HashMap;

use std::time::Duration;

use orch_core::discovery::Discovery;
use orch_core::model::object::Balance;
use orch_dns::proxy::{ProxyConfig, ServiceProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn proxy() -> ServiceProxy {
    ServiceProxy::new(ProxyConfig::new("n1", "127.0.0.1".parse().unwrap()))
}

#[tokio::test]
async fn round_robin_reaches_every_replica_and_skips_a_dead_one() {
    let (a, _ta) = backend("a").await;
    let (b, _tb) = backend("b").await;
    let (c, tc) = backend_at("c", "127.0.0.3").await;
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
