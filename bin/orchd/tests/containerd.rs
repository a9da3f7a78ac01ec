//! orchd with `--runtime process,containerd` on a containerd of the test's own: replicas of an
//! image run as containers next to a process replica on the same node, answer HTTP on their
//! ports, a killed container is replaced, a restarted orchd re-adopts the containers without
//! duplicating them, and deleting the service leaves nothing in containerd but the image.
#![cfg(feature = "containerd")]

mod common;

use std::time::Duration;

use common::*;
use orch_runtime::containerd::{testing::busybox_image, Containerd, LocalContainerd};

const IMAGE: &str = "localhost/busybox:e2e";

fn web(replicas: u32) -> String {
    format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  template:\n    image: {IMAGE}\n    command: [/bin/sh, -c, 'mkdir -p /www && echo hello from $ORCH_REPLICA > /www/index.html && exec httpd -f -p $PORT -h /www']\n    ports: [{{name: http}}]\n    stopGracePeriod: 1s\n"
    )
}

/// `(addr, pid)` of the ready replicas of `service`, once there are exactly `n` and all answer.
fn ready(d: &Daemon, service: &str, n: usize) -> Option<Vec<(String, u32)>> {
    let reps: Vec<serde_json::Value> = d
        .replicas()
        .into_iter()
        .filter(|r| r["spec"]["service"] == service && r["spec"]["desired"].is_null())
        .collect();
    let up: Vec<(String, u32)> = reps
        .iter()
        .filter(|r| r["status"]["phase"] == "Ready")
        .filter_map(|r| Some((addr_of(r)?, pid_of(r)?)))
        .collect();
    (reps.len() == n
        && up.len() == n
        && up
            .iter()
            .all(|(a, _)| http_get(a).is_some_and(|b| b.starts_with("hello from"))))
    .then_some(up)
}

#[test]
fn containers_and_processes_on_one_node_through_orchd() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ctd = rt
        .block_on(LocalContainerd::start())
        .expect("containerd starts");
    let ns = ctd.namespace();
    let img_dir = ctd.scratch().join("img");
    std::fs::create_dir_all(&img_dir).unwrap();
    let client = rt.block_on(async {
        let c = Containerd::connect(ctd.socket(), &ns).await.unwrap();
        c.import(&busybox_image(&img_dir, IMAGE).unwrap(), "overlayfs")
            .await
            .unwrap();
        c
    });
    let containers = || rt.block_on(client.containers()).unwrap().len();

    let tmp = tempfile::tempdir().unwrap();
    let socket = ctd.socket();
    let args = [
        "--runtime",
        "process,containerd",
        "--containerd-socket",
        socket.to_str().unwrap(),
        "--containerd-namespace",
        &ns,
    ];
    let mut d = Daemon::start_with(tmp.path(), &args);
    let node = eventually("the node registers", Duration::from_secs(20), || {
        let out = d.ctl_ok(&["describe", "node", "test-node"]);
        out.contains("containerd").then_some(out)
    });
    assert!(node.contains("process"), "{node}");

    let files = [
        write(tmp.path(), "web.yaml", &web(3)),
        write(tmp.path(), "hello.yaml", &hello(1, "blue")),
    ];
    for f in &files {
        d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    }
    let up = eventually("3 containers serve", Duration::from_secs(60), || {
        ready(&d, "web", 3)
    });
    eventually(
        "the process replica serves",
        Duration::from_secs(30),
        || ready(&d, "hello", 1),
    );
    assert_eq!(
        containers(),
        3,
        "the web replicas are containers; hello is a process"
    );

    // orchctl exec runs a command in a container: its files, its exit code.
    let name_of = |service: &str| {
        d.replicas()
            .into_iter()
            .find(|r| r["spec"]["service"] == service)
            .and_then(|r| r["metadata"]["name"].as_str().map(String::from))
            .unwrap()
    };
    let web_replica = name_of("web");
    let page = d.ctl_ok(&["exec", &web_replica, "--", "cat", "/www/index.html"]);
    assert_eq!(page.trim(), format!("hello from {web_replica}"));
    let failed = d.ctl(&[
        "exec",
        &web_replica,
        "--",
        "/bin/sh",
        "-c",
        "echo oops >&2; exit 3",
    ]);
    assert_eq!(failed.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&failed.stderr).trim(), "oops");
    let process = d.ctl(&["exec", &name_of("hello"), "--", "true"]);
    assert!(!process.status.success());
    assert!(
        String::from_utf8_lossy(&process.stderr).contains("cannot run commands"),
        "{}",
        String::from_utf8_lossy(&process.stderr)
    );

    // A container's process killed from outside: the agent replaces it.
    let (_, victim) = up[0];
    std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    let after = eventually(
        "the killed replica is replaced",
        Duration::from_secs(30),
        || ready(&d, "web", 3).filter(|u| u.iter().all(|(_, p)| *p != victim)),
    );
    assert_eq!(containers(), 3);

    // orchd restarts: the running containers are re-adopted, none duplicated or restarted.
    d.stop();
    assert_eq!(containers(), 3, "containers outlive orchd");
    let d = Daemon::start_with(tmp.path(), &args);
    let readopted = eventually("re-adopted", Duration::from_secs(30), || {
        ready(&d, "web", 3)
    });
    let pids = |u: &[(String, u32)]| {
        let mut p: Vec<u32> = u.iter().map(|(_, p)| *p).collect();
        p.sort();
        p
    };
    assert_eq!(pids(&readopted), pids(&after), "the same processes serve");
    assert_eq!(containers(), 3, "nothing duplicated");

    // Delete: no container, task or writable layer left; the image's layer stays.
    d.ctl_ok(&["delete", "service", "web"]);
    eventually("containers gone", Duration::from_secs(30), || {
        (containers() == 0).then_some(())
    });
    let snapshots = rt.block_on(client.snapshots("overlayfs")).unwrap();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
}
