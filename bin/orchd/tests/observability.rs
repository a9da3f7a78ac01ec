//! `--metrics-listen`: `/metrics` in the Prometheus text format with the engine's counters
//! and the cache's gauges, `/healthz`, `/readyz`; `--log-format json` writes one JSON object
//! per line.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn metrics_health_and_json_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_with(
        tmp.path(),
        &["--metrics-listen", &metrics, "--log-format", "json"],
    );
    assert_eq!(
        http_request(&metrics, "/healthz").unwrap(),
        (200, "ok\n".into())
    );
    eventually("ready", Duration::from_secs(10), || {
        (http_request(&metrics, "/readyz")?.0 == 200).then_some(())
    });
    let f = write(tmp.path(), "hello.yaml", &hello(2, "blue"));
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    eventually("2 ready", Duration::from_secs(30), || ready_addrs(&d, 2));
    let body = eventually("metrics show them", Duration::from_secs(10), || {
        let (status, body) = http_request(&metrics, "/metrics")?;
        (status == 200 && body.contains("orch_replicas{phase=\"Ready\"} 2")).then_some(body)
    });
    for series in [
        "orch_reconcile_seconds_count{controller=\"replication\",result=\"ok\"}",
        "orch_scheduler_pass_seconds_count",
        "orch_scheduler_bindings_total 2",
        "orch_store_seconds_bucket{op=\"txn\",result=\"ok\",le=\"+Inf\"}",
        "orch_nodes{condition=\"Ready\"} 1",
        "orch_services 1",
        "orch_store_reachable 1",
        "# TYPE orch_replicas gauge",
    ] {
        assert!(body.contains(series), "{series} missing from:\n{body}");
    }
    assert_eq!(http_request(&metrics, "/nope").unwrap().0, 404);

    let log = std::fs::read_to_string(tmp.path().join("orchd.log")).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!lines.is_empty(), "{log}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
    d.delete_and_wait("service", "hello");
}
