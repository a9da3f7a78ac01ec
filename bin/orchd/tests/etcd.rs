//! `orchd server --store etcd://...` on a real etcd that the test starts itself, and an etcd
//! outage under running workloads.
//!
//! Needs the `etcd` feature and the `etcd` binary (Debian `etcd-server`; without it the outage
//! test says it skipped, or fails under `ORCH_TEST_REQUIRE_ALL=1`); `.ci/run` runs it:
//! `cargo test -p orchd --features etcd --test etcd`.
#![cfg(feature = "etcd")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use orch_store::local_etcd::LocalEtcd;

#[test]
fn workloads_survive_an_etcd_outage_and_orchd_recovers_by_itself() {
    if !require(&["etcd"]) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut etcd = rt
        .block_on(LocalEtcd::start())
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let store = format!("etcd://{}/outage-test", etcd.address());
    let d = Daemon::start_with(dir.path(), &["--store", &store]);
    let info = d.ctl_ok(&["info"]);
    assert!(
        info.contains(&format!("etcd:{}", etcd.endpoint())),
        "{info}"
    );
    assert!(info.contains("prefix /outage-test"), "{info}");
    assert!(info.contains("available (revision"), "{info}");

    let m = write(dir.path(), "hello.yaml", &hello(3, "blue"));
    d.ctl_ok(&["apply", "-f", m.to_str().unwrap()]);
    let before = eventually("3 ready replicas on etcd", Duration::from_secs(30), || {
        ready_addrs(&d, 3)
    });
    for (addr, _) in &before {
        assert!(http_get(addr).is_some(), "{addr} answers before the outage");
    }

    // The outage: etcd is down for 10 s.
    etcd.stop();
    let down = Instant::now();
    let info = eventually(
        "orchd reports the store unavailable",
        Duration::from_secs(8),
        || {
            let out = d.ctl(&["info"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("unavailable").then_some(text)
        },
    );
    assert!(info.contains("store: etcd:"), "{info}");
    let get = d.ctl(&["get", "services"]);
    assert!(
        !get.status.success(),
        "get must fail while the store is down"
    );
    let err = String::from_utf8_lossy(&get.stderr);
    assert!(err.contains("unavailable"), "get names the cause: {err}");
    while down.elapsed() < Duration::from_secs(10) {
        for (addr, pid) in &before {
            assert!(
                process_alive(*pid),
                "replica pid {pid} died during the outage"
            );
            assert!(
                http_get(addr).is_some(),
                "{addr} stopped answering during the outage"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    // etcd returns; orchd reconnects without help.
    rt.block_on(etcd.restart())
        .unwrap_or_else(|e| panic!("{e}"));
    let back = Instant::now();
    eventually(
        "orchd reports the store available again",
        Duration::from_secs(30),
        || {
            let out = d.ctl(&["info"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("available (revision")
                .then_some(())
        },
    );
    eprintln!(
        "store available again {:?} after etcd restarted",
        back.elapsed()
    );
    // The engine works again: a scale-up converges and the old replicas were never replaced.
    d.ctl_ok(&["scale", "service/hello", "--replicas", "4"]);
    let after = eventually(
        "4 ready replicas after the outage",
        Duration::from_secs(30),
        || ready_addrs(&d, 4),
    );
    eprintln!(
        "scaled to 4 ready {:?} after etcd restarted",
        back.elapsed()
    );
    for (_, pid) in &before {
        assert!(
            after.iter().any(|(_, p)| p == pid),
            "replica pid {pid} was replaced; it should have been kept: {after:?}"
        );
    }
    let log = std::fs::read_to_string(dir.path().join("orchd.log")).unwrap();
    assert!(log.contains("unavailable"), "orchd logs the outage: {log}");
    d.ctl_ok(&["delete", "service", "hello"]);
    eventually("replicas stopped", Duration::from_secs(30), || {
        d.replicas().is_empty().then_some(())
    });
}

#[test]
fn orchd_refuses_an_unreachable_etcd_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orchd"))
        .args(["server", "--node", "n1", "--store"])
        .arg(format!("etcd://127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot use etcd at http://127.0.0.1:{port}")),
        "{err}"
    );
}
