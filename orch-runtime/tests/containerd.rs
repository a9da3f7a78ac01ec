//! Real containers through a containerd of the test's own (`LocalContainerd`: own root, state
//! and socket in a temp dir) and runc, from a busybox root filesystem (Debian
//! `busybox-static`). Needs root, containerd, runc and busybox; `.ci/run` installs them.
#![cfg(feature = "containerd")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use orch_runtime::containerd::{ContainerSpec, Containerd, LocalContainerd};

/// A root filesystem with the static busybox as `/bin/busybox` and `/bin/sh`.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (Debian busybox-static)");
    for name in ["sh", "sleep", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(name)).unwrap();
    }
    root
}

fn spec(ctd: &LocalContainerd, rootfs: &Path, id: &str, args: &[&str]) -> ContainerSpec {
    ContainerSpec {
        id: id.into(),
        rootfs: rootfs.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["GREETING=hello".into()],
        stdout: ctd.scratch().join(format!("{id}.out")),
        stderr: ctd.scratch().join(format!("{id}.err")),
        labels: HashMap::from([("orch.dev/replica".to_string(), id.to_string())]),
        host_network: true,
        ..ContainerSpec::default()
    }
}

#[tokio::test]
async fn containers_run_exit_stop_and_leave_nothing_behind() {
    let ctd = LocalContainerd::start().await.expect("containerd starts");
    let rootfs = busybox_rootfs(&ctd.scratch());
    let c = Containerd::connect(ctd.socket(), "orch-test")
        .await
        .unwrap();
    assert!(
        c.version().await.unwrap().starts_with("1."),
        "containerd 1.x answers"
    );

    // A container that prints and exits with a chosen status: output reaches the host file,
    // the environment is the spec's, the exit status is reported.
    let s = spec(
        &ctd,
        &rootfs,
        "echo",
        &["/bin/sh", "-c", "echo $GREETING from $(hostname); exit 3"],
    );
    let pid = c.run(&s).await.expect("container runs");
    assert!(pid > 0);
    let exit = tokio::time::timeout(Duration::from_secs(20), c.wait("echo"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.status, 3);
    let out = std::fs::read_to_string(&s.stdout).unwrap();
    assert_eq!(out.trim(), "hello from echo");
    assert_eq!(
        c.containers().await.unwrap()[0].1["orch.dev/replica"],
        "echo"
    );
    c.delete("echo").await.unwrap();

    // A long-running container that handles SIGTERM stops at once and cleanly. (Without a
    // handler, SIGTERM does nothing to a container's PID 1: that case is the next one.)
    let s = spec(
        &ctd,
        &rootfs,
        "sleeper",
        &[
            "/bin/sh",
            "-c",
            "trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done",
        ],
    );
    c.run(&s).await.unwrap();
    let (pid, _) = c.task("sleeper").await.unwrap().expect("task exists");
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the container's process runs on the host"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = std::time::Instant::now();
    let exit = c.stop("sleeper", Duration::from_secs(10)).await.unwrap();
    assert_eq!(exit.status, 0, "{exit:?}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stopped by SIGTERM, not by the grace timeout"
    );
    assert_eq!(std::fs::read_to_string(&s.stdout).unwrap().trim(), "bye");

    // One that ignores SIGTERM is killed after the grace period.
    let s = spec(
        &ctd,
        &rootfs,
        "stubborn",
        &[
            "/bin/sh",
            "-c",
            "trap '' TERM; while true; do sleep 1; done",
        ],
    );
    c.run(&s).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = std::time::Instant::now();
    let exit = c
        .stop("stubborn", Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(
        exit.signal(),
        Some(9),
        "killed after the grace period: {exit:?}"
    );
    assert!(t.elapsed() >= Duration::from_millis(500));

    // A bad command fails at start with containerd's reason, and leaves no container.
    let s = spec(&ctd, &rootfs, "missing", &["/bin/no-such-binary"]);
    let err = c.run(&s).await.expect_err("a missing binary cannot start");
    assert!(err.to_string().contains("missing"), "{err}");

    for id in ["sleeper", "stubborn"] {
        c.delete(id).await.unwrap();
    }
    assert!(
        c.containers().await.unwrap().is_empty(),
        "no container left in the namespace"
    );
    assert!(c.task("sleeper").await.unwrap().is_none(), "no task left");
}

#[test]
fn a_spec_without_a_command_is_refused_with_the_container_named() {
    let s = ContainerSpec {
        id: "web-1".into(),
        ..ContainerSpec::default()
    };
    let err = s.oci_spec().unwrap_err().to_string();
    assert!(err.contains("web-1") && err.contains("no command"), "{err}");
}

#[test]
fn host_network_drops_only_the_network_namespace() {
    let base = ContainerSpec {
        id: "x".into(),
        args: vec!["/bin/true".into()],
        ..ContainerSpec::default()
    };
    let ns = |s: &ContainerSpec| {
        let spec = s.oci_spec().unwrap();
        let linux = spec.linux().clone().unwrap();
        linux
            .namespaces()
            .clone()
            .unwrap()
            .iter()
            .map(|n| format!("{:?}", n.typ()))
            .collect::<Vec<_>>()
    };
    let own = ns(&base);
    let host = ns(&ContainerSpec {
        host_network: true,
        ..base.clone()
    });
    assert!(own.iter().any(|n| n == "Network"));
    assert!(!host.iter().any(|n| n == "Network"));
    assert_eq!(own.len(), host.len() + 1);
}
