//! Ordered services and dependsOn through `orchd server` with real processes: an ordered
//! service's replicas are `NAME-0`, `NAME-1`, started in order, each with its own volume
//! `VOLUME-REPLICA` that a replacement under the same name finds again; a service that
//! depends on another's readiness has no replica until that one's readiness probe passes.

mod common;

use std::time::Duration;

use common::*;

const LOOP: &str = "command: [/bin/sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 0.2; done']\n    stopGracePeriod: 1s";

fn sh(d: &Daemon, replica: &str, script: &str) -> String {
    d.ctl_ok(&["exec", replica, "--", "/bin/sh", "-c", script])
}

fn of_service(d: &Daemon, svc: &str) -> Vec<serde_json::Value> {
    d.replicas()
        .into_iter()
        .filter(|r| r["spec"]["service"] == svc)
        .collect()
}

fn ready_names(d: &Daemon, svc: &str) -> Vec<String> {
    let mut v: Vec<String> = of_service(d, svc)
        .iter()
        .filter(|r| r["status"]["phase"] == "Ready")
        .map(|r| {
            r["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn ordered_replicas_keep_their_names_and_their_own_volumes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(tmp.path(), &["--dns-listen", "off"]);
    let web = format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  replicas: 2\n  mode: ordered\n  template:\n    {LOOP}\n    mounts: [{{volume: www, path: /data, perReplica: true}}]\n");
    let p = write(tmp.path(), "web.yaml", &web);
    d.ctl_ok(&["apply", "-f", p.to_str().unwrap()]);
    // In order: web-1 never exists before web-0 runs.
    eventually("web-0 and web-1 ready", Duration::from_secs(30), || {
        let reps = of_service(&d, "web");
        let names: Vec<&str> = reps
            .iter()
            .filter_map(|r| r["metadata"]["name"].as_str())
            .collect();
        if names.contains(&"web-1") {
            let zero = reps.iter().find(|r| r["metadata"]["name"] == "web-0");
            assert!(
                zero.is_some_and(|z| z["status"]["startedAt"].is_string()),
                "web-1 before web-0 started: {reps:?}"
            );
        }
        (ready_names(&d, "web") == ["web-0", "web-1"]).then_some(())
    });
    // Each has its own volume.
    sh(&d, "web-0", "echo zero > $ORCH_ROOT/data/who");
    assert_eq!(
        sh(
            &d,
            "web-1",
            "cat $ORCH_ROOT/data/who 2>/dev/null || echo none"
        )
        .trim(),
        "none"
    );
    eventually(
        "the node reports both volumes",
        Duration::from_secs(10),
        || {
            let node = d.ctl_ok(&["get", "node", "test-node", "-o", "yaml"]);
            (node.contains("- www-web-0") && node.contains("- www-web-1")).then_some(())
        },
    );
    // A deleted replica comes back under its name, with its volume.
    let uid = |d: &Daemon| {
        of_service(d, "web")
            .into_iter()
            .find(|r| r["metadata"]["name"] == "web-0")
            .map(|r| r["metadata"]["uid"].clone())
    };
    let before = uid(&d).unwrap();
    d.ctl_ok(&["delete", "replica", "web-0"]);
    eventually("web-0 again", Duration::from_secs(30), || {
        (uid(&d).is_some_and(|u| u != before) && ready_names(&d, "web") == ["web-0", "web-1"])
            .then_some(())
    });
    assert_eq!(sh(&d, "web-0", "cat $ORCH_ROOT/data/who").trim(), "zero");
    // Scaled to one: web-1 goes, web-0 stays.
    d.ctl_ok(&["scale", "web", "--replicas", "1"]);
    eventually("only web-0", Duration::from_secs(30), || {
        let names: Vec<String> = of_service(&d, "web")
            .iter()
            .filter_map(|r| r["metadata"]["name"].as_str().map(String::from))
            .collect();
        (names == ["web-0"]).then_some(())
    });
    d.delete_and_wait("service", "web");
}

#[test]
fn a_service_waits_for_its_dependency_to_be_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(tmp.path(), &["--dns-listen", "off"]);
    let flag = tmp.path().join("db-ready");
    let files = format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: db}}\nspec:\n  template:\n    {LOOP}\n    readinessProbe: {{exec: {{command: [test, -f, {}]}}, period: 200ms}}\n---\napiVersion: orch/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  dependsOn: [{{name: db, condition: ready}}]\n  template:\n    {LOOP}\n",
        flag.display()
    );
    let p = write(tmp.path(), "app.yaml", &files);
    d.ctl_ok(&["apply", "-f", p.to_str().unwrap()]);
    let message = |d: &Daemon| {
        let out = d.ctl_ok(&["get", "service", "web", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    eventually("db runs, not ready", Duration::from_secs(30), || {
        of_service(&d, "db")
            .iter()
            .any(|r| r["status"]["phase"] == "Running")
            .then_some(())
    });
    eventually(
        "web says what it waits for",
        Duration::from_secs(10),
        || (message(&d) == "waiting for db to be ready (0/1)").then_some(()),
    );
    // Held while db is not ready (its probe fails every 200 ms).
    std::thread::sleep(Duration::from_secs(2));
    assert!(of_service(&d, "web").is_empty(), "web started early");
    std::fs::write(&flag, "").unwrap();
    eventually("web ready", Duration::from_secs(30), || {
        (ready_names(&d, "web").len() == 1).then_some(())
    });
    assert_eq!(message(&d), "");
    d.ctl_ok(&["delete", "service", "web"]);
    d.delete_and_wait("service", "db");
}
