//! The service proxy's kernel mode (nftables DNAT) with real TCP backends on loopback. A test
//! binary of its own, so its rules and conntrack deletions never run beside the user-space
//! proxy tests (which once saw a connection closed while this test rewrote its rules).

#[path = "common/loopback.rs"]
mod loopback;
use loopback::*;

use std::collections::HashMap;

use orch_core::discovery::Discovery;
use orch_dns::proxy::{ProxyConfig, ServiceProxy};

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
