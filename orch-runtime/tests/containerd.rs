//! Real containers through a containerd of the test's own (`LocalContainerd`: own root, state
//! and socket in a temp dir) and runc, from a busybox root filesystem (Debian
//! `busybox-static`). Needs root, containerd, runc and busybox (and for the pull tests a
//! registry: `docker-registry`, `skopeo`, `htpasswd`, `openssl`); `.ci/run` installs them.
//! Without them each such test says it skipped, or fails under `ORCH_TEST_REQUIRE_ALL=1`.
//! Also template fields in containers (user, capabilities, hostname, one-key mounts) and init
//! steps through the node agent.
#![cfg(feature = "containerd")]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use orch_core::model::object::{EnvVar, PortSpec, Protocol, Resources, Template};
use orch_core::model::quantity::Memory;
use orch_core::runtime::{
    LogOptions, Runtime, RuntimeEvent, WorkloadNetwork, WorkloadSpec, WorkloadState,
};
use orch_runtime::containerd::testing::{
    busybox_image as build_image, busybox_rootfs as build_rootfs,
};
use orch_runtime::containerd::{
    ContainerSpec, Containerd, ContainerdConfig, ContainerdRuntime, ImageParts, LocalContainerd,
    Root,
};

/// What a test with a containerd of its own needs.
const CONTAINERD: &[&str] = &["root", "containerd", "runc", "/bin/busybox"];

/// What a test with a containerd and a registry of its own needs.
const CONTAINERD_AND_REGISTRY: &[&str] = &[
    "root",
    "containerd",
    "runc",
    "/bin/busybox",
    "docker-registry",
    "skopeo",
    "htpasswd",
    "openssl",
];

fn busybox_rootfs(dir: &Path) -> PathBuf {
    build_rootfs(dir).unwrap()
}

fn busybox_image(dir: &Path, name: &str) -> ImageParts {
    build_image(dir, name).unwrap()
}

fn spec(ctd: &LocalContainerd, rootfs: &Path, id: &str, args: &[&str]) -> ContainerSpec {
    ContainerSpec {
        id: id.into(),
        root: Root::Dir(rootfs.into()),
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
    if !orch_testkit::require(CONTAINERD) {
        return;
    }
    let ctd = LocalContainerd::start().await.expect("containerd starts");
    let rootfs = busybox_rootfs(&ctd.scratch());
    let c = Containerd::connect(ctd.socket(), &ctd.namespace())
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
    let pid = c
        .task_status("sleeper")
        .await
        .unwrap()
        .expect("task exists")
        .pid;
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the container's process runs on the host"
    );
    // Time for the shell to set its trap (a SIGTERM before it would end it without `bye`);
    // the container gives no sign of having set it that the test could wait for.
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
    // Time for the shell to set its trap (as above).
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
    assert!(
        c.task_status("sleeper").await.unwrap().is_none(),
        "no task left"
    );
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

#[test]
fn a_network_namespace_is_joined_by_its_path_and_the_hostname_set() {
    let s = ContainerSpec {
        id: "default.web-0".into(),
        args: vec!["/bin/true".into()],
        netns: Some("/run/netns/orch-x-default.web-0".into()),
        hostname: Some("web-0".into()),
        ..ContainerSpec::default()
    };
    let spec = s.oci_spec().unwrap();
    let namespaces = spec.linux().clone().unwrap().namespaces().clone().unwrap();
    let net: Vec<_> = namespaces
        .iter()
        .filter(|n| format!("{:?}", n.typ()) == "Network")
        .collect();
    assert_eq!(net.len(), 1, "{namespaces:?}");
    assert_eq!(
        net[0].path().as_deref(),
        Some(Path::new("/run/netns/orch-x-default.web-0"))
    );
    assert_eq!(spec.hostname().as_deref(), Some("web-0"));
    // Without a hostname the container is named by its id, as before.
    let plain = ContainerSpec {
        netns: None,
        hostname: None,
        ..s.clone()
    };
    assert_eq!(
        plain.oci_spec().unwrap().hostname().as_deref(),
        Some("default.web-0")
    );

    // Bad input is refused naming the container and the value.
    let err = |s: ContainerSpec| s.oci_spec().unwrap_err().to_string();
    let both = err(ContainerSpec {
        host_network: true,
        ..s.clone()
    });
    assert!(
        both.contains("default.web-0") && both.contains("exclude"),
        "{both}"
    );
    let relative = err(ContainerSpec {
        netns: Some("netns/x".into()),
        ..s.clone()
    });
    assert!(relative.contains("netns/x"), "{relative}");
    let bad_host = err(ContainerSpec {
        hostname: Some("-web_0".into()),
        ..s.clone()
    });
    assert!(bad_host.contains("\"-web_0\""), "{bad_host}");
}

#[tokio::test]
async fn an_imported_image_is_unpacked_and_runs_in_a_container() {
    if !orch_testkit::require(CONTAINERD) {
        return;
    }
    let ctd = LocalContainerd::start().await.expect("containerd starts");
    let c = Containerd::connect(ctd.socket(), &ctd.namespace())
        .await
        .unwrap();
    let img_dir = ctd.scratch().join("img");
    std::fs::create_dir_all(&img_dir).unwrap();
    let parts = busybox_image(&img_dir, "localhost/busybox:test");

    let t = std::time::Instant::now();
    let image = c.import(&parts, "overlayfs").await.expect("import");
    let first = t.elapsed();
    assert_eq!(c.images().await.unwrap(), ["localhost/busybox:test"]);
    // Importing again finds the blobs and the unpacked layer already there.
    let t = std::time::Instant::now();
    assert_eq!(c.import(&parts, "overlayfs").await.unwrap(), image);
    eprintln!("import: {first:?} first, {:?} again", t.elapsed());

    // Two containers from the image, each with its own writable layer.
    for id in ["img-a", "img-b"] {
        let mut s = spec(
            &ctd,
            Path::new("/"),
            id,
            &[
                "/bin/sh",
                "-c",
                "echo $GREETING > /tmp/f; cat /tmp/f; ls /bin/busybox",
            ],
        );
        s.root = Root::Image {
            name: image.name.clone(),
            snapshotter: image.snapshotter.clone(),
            chain_id: image.chain_id.clone(),
        };
        c.run(&s).await.expect("container from the image runs");
        let exit = tokio::time::timeout(Duration::from_secs(20), c.wait(id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit.status, 0);
        assert_eq!(
            std::fs::read_to_string(&s.stdout).unwrap(),
            "hello\n/bin/busybox\n"
        );
        c.delete(id).await.unwrap();
    }
    assert!(c.containers().await.unwrap().is_empty());
    assert_eq!(
        c.snapshots("overlayfs").await.unwrap(),
        std::slice::from_ref(&image.chain_id),
        "only the image's layer is left: the containers' writable layers went with them"
    );
    c.remove_image(&image.name, true).await.unwrap();
    assert!(c.images().await.unwrap().is_empty());
    assert!(
        c.snapshots("overlayfs").await.unwrap().is_empty(),
        "the collector freed the unpacked layer with the image"
    );

    // A blob whose bytes do not match its digest is refused, naming the digest.
    let mut bad = parts.clone();
    bad.name = "localhost/bad:1".into();
    bad.config.digest = format!("sha256:{}", "0".repeat(64));
    let err = c
        .import(&bad, "overlayfs")
        .await
        .expect_err("digest mismatch")
        .to_string();
    assert!(err.contains(&bad.config.digest), "{err}");
    assert!(
        c.images().await.unwrap().is_empty(),
        "nothing recorded: {err}"
    );
}

#[tokio::test]
async fn the_harness_leaves_nothing_behind_even_with_a_container_running() {
    if !orch_testkit::require(CONTAINERD) {
        return;
    }
    let ctd = LocalContainerd::start().await.expect("containerd starts");
    let rootfs = busybox_rootfs(&ctd.scratch());
    let c = Containerd::connect(ctd.socket(), &ctd.namespace())
        .await
        .unwrap();
    c.run(&spec(&ctd, &rootfs, "left", &["/bin/sleep", "3600"]))
        .await
        .unwrap();
    let pid = c
        .task_status("left")
        .await
        .unwrap()
        .expect("task exists")
        .pid;
    let dir = ctd.socket().parent().unwrap().to_path_buf();
    let namespace = ctd.namespace();
    let runc_state = Path::new("/run/containerd/runc").join(&namespace);
    drop(c);
    drop(ctd);
    let gone = |p: &Path| !p.exists();
    for _ in 0..50 {
        if gone(Path::new(&format!("/proc/{pid}"))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gone(Path::new(&format!("/proc/{pid}"))),
        "the container's process was killed"
    );
    assert!(gone(&dir), "{} removed", dir.display());
    assert!(gone(&runc_state), "{} removed", runc_state.display());
    let cgroup = Path::new("/sys/fs/cgroup/memory").join(&namespace);
    assert!(gone(&cgroup), "{} removed", cgroup.display());
}

fn http_get(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn workload(id: &str, image: &str, command: &[&str], memory: Option<u64>) -> WorkloadSpec {
    WorkloadSpec {
        network: None,
        id: id.into(),
        replica_uid: format!("uid-{id}"),
        service: "web".into(),
        namespace: "default".into(),
        template: Template {
            image: Some(image.into()),
            command: command.iter().map(|s| s.to_string()).collect(),
            ports: vec![PortSpec {
                host_port: None,
                name: "http".into(),
                port: None,
                protocol: Protocol::Tcp,
            }],
            resources: Resources {
                cpu: None,
                memory: memory.map(Memory),
            },
            env: vec![EnvVar {
                name: "WHO".into(),
                value: id.into(),
                value_from: None,
            }],
            ..Template::default()
        },
        template_hash: "h1".into(),
        extra_env: vec![],
        dns: None,
        mounts: Vec::new(),
    }
}

/// Everything workload `id` has written so far, as text.
async fn logs_of(rt: &ContainerdRuntime, id: &str) -> String {
    let bytes: Vec<u8> = rt
        .logs(id, LogOptions::default())
        .await
        .unwrap()
        .filter_map(|c| async move { c.ok() })
        .concat()
        .await;
    String::from_utf8_lossy(&bytes).to_string()
}

/// A containerd of the test's own, a runtime over its namespace and the busybox image
/// imported as `image`.
async fn runtime_with_busybox(
    image: &str,
) -> (LocalContainerd, ContainerdConfig, ContainerdRuntime) {
    let ctd = LocalContainerd::start().await.expect("containerd starts");
    let mut config = ContainerdConfig::new(ctd.socket(), ctd.scratch().join("state"));
    config.namespace = ctd.namespace();
    let rt = ContainerdRuntime::new(config.clone()).await.unwrap();
    let img_dir = ctd.scratch().join("img");
    std::fs::create_dir_all(&img_dir).unwrap();
    rt.client()
        .import(&busybox_image(&img_dir, image), "overlayfs")
        .await
        .unwrap();
    (ctd, config, rt)
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..100 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The containerd `Runtime`: 3 replicas of an HTTP server from an image answer on their
/// ports; a killed container is reported; a new runtime re-adopts the survivors without
/// duplicating them; a memory limit is enforced and reported as an OOM kill; removal leaves
/// no container, task or snapshot.
#[tokio::test]
async fn the_containerd_runtime_runs_replicas_from_an_image() {
    if !orch_testkit::require(CONTAINERD) {
        return;
    }
    let ctd = LocalContainerd::start().await.expect("containerd starts");
    let mut config = ContainerdConfig::new(ctd.socket(), ctd.scratch().join("state"));
    config.namespace = ctd.namespace();
    let rt = ContainerdRuntime::new(config.clone()).await.unwrap();
    assert_eq!(rt.snapshotter(), "overlayfs");
    let mut bad = config.clone();
    bad.snapshotter = "zfs".into();
    let err = ContainerdRuntime::new(bad).await.unwrap_err().to_string();
    assert!(
        err.contains("\"zfs\"") && err.contains("overlayfs"),
        "{err}"
    );
    let img_dir = ctd.scratch().join("img");
    std::fs::create_dir_all(&img_dir).unwrap();
    let image = "localhost/busybox:rt";
    rt.client()
        .import(&busybox_image(&img_dir, image), "overlayfs")
        .await
        .unwrap();
    assert!(rt.supports(&Template {
        image: Some(image.into()),
        ..Template::default()
    }));

    let serve = [
        "/bin/sh",
        "-c",
        "mkdir -p /www && echo hello from $WHO > /www/index.html && echo serving on $PORT && exec httpd -f -p $PORT -h /www",
    ];
    let mut events = rt.events();
    let mut ports = Vec::new();
    for i in 0..3 {
        let w = rt
            .start(&workload(&format!("default.web-{i}"), image, &serve, None))
            .await
            .unwrap();
        assert_eq!(w.state, WorkloadState::Running);
        ports.push(w.ports[0].port);
    }
    for (i, port) in ports.iter().enumerate() {
        let body = eventually("http answer", async || {
            std::net::TcpStream::connect(("127.0.0.1", *port))
                .ok()
                .map(|_| http_get(*port))
        })
        .await;
        assert!(
            body.contains(&format!("hello from default.web-{i}")),
            "{body}"
        );
    }
    assert_eq!(
        logs_of(&rt, "default.web-0").await.trim(),
        format!("serving on {}", ports[0])
    );
    assert!(
        rt.start(&workload("default.web-0", image, &serve, None))
            .await
            .is_err(),
        "no second copy"
    );

    // Commands run inside a running container: its files, its environment; the exit code,
    // stderr and a timeout come back.
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let t = Duration::from_secs(10);
    let out = rt
        .exec("default.web-0", &argv(&["cat", "/www/index.html"]), t)
        .await
        .unwrap();
    assert_eq!(
        (out.code, String::from_utf8_lossy(&out.stdout).trim()),
        (Some(0), "hello from default.web-0")
    );
    let out = rt
        .exec(
            "default.web-0",
            &argv(&["/bin/sh", "-c", "echo $WHO >&2; exit 3"]),
            t,
        )
        .await
        .unwrap();
    assert_eq!(
        (out.code, String::from_utf8_lossy(&out.stderr).trim()),
        (Some(3), "default.web-0")
    );
    // More than a pipe holds streams through.
    let out = rt
        .exec(
            "default.web-0",
            &argv(&["head", "-c", "300000", "/dev/zero"]),
            t,
        )
        .await
        .unwrap();
    assert_eq!((out.code, out.stdout.len()), (Some(0), 300_000));
    let out = rt
        .exec(
            "default.web-0",
            &argv(&["sleep", "10"]),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    assert!(out.timed_out && out.signal == Some(9), "{out:?}");
    let err = rt
        .exec("default.web-0", &argv(&["/no/such/tool"]), t)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/no/such/tool") || err.contains("no such file"),
        "{err}"
    );
    assert!(rt.exec("default.nope", &argv(&["true"]), t).await.is_err());

    // A container whose process is killed from outside is reported as exited by SIGKILL.
    let pid = rt
        .client()
        .task_status("default.web-1")
        .await
        .unwrap()
        .expect("task exists")
        .pid;
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let status = eventually("exit event", async || match events.try_recv() {
        Ok(RuntimeEvent::Exited { id, status }) if id == "default.web-1" => Some(status),
        _ => None,
    })
    .await;
    assert_eq!(status.signal, Some(9), "{status:?}");

    // A new runtime over the same namespace adopts the two that still run, with their ports.
    drop(rt);
    let rt = ContainerdRuntime::new(config.clone()).await.unwrap();
    let listed = rt.list().await.unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    let w0 = listed.iter().find(|w| w.id == "default.web-0").unwrap();
    assert_eq!(
        (w0.state.clone(), w0.ports[0].port, w0.replica_uid.as_str()),
        (WorkloadState::Running, ports[0], "uid-default.web-0")
    );
    assert!(matches!(
        listed
            .iter()
            .find(|w| w.id == "default.web-1")
            .unwrap()
            .state,
        WorkloadState::Exited(_)
    ));
    assert_eq!(
        rt.client().containers().await.unwrap().len(),
        3,
        "nothing duplicated"
    );
    assert!(
        http_get(ports[2]).contains("hello from default.web-2"),
        "still serving"
    );

    // The memory limit is enforced: a replica that needs more is OOM-killed, and says so.
    let hog = [
        "/bin/sh",
        "-c",
        "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived",
    ];
    rt.start(&workload("default.hog", image, &hog, Some(16 << 20)))
        .await
        .unwrap();
    let mut events = rt.events();
    let status = eventually("oom exit", async || match events.try_recv() {
        Ok(RuntimeEvent::Exited { id, status }) if id == "default.hog" => Some(status),
        _ => None,
    })
    .await;
    assert!(status.oom_killed, "{status:?}");

    // Stop (the stop signal, then SIGKILL) and remove: nothing is left in containerd.
    let st = rt
        .stop("default.web-0", "SIGTERM", Duration::from_secs(2))
        .await
        .unwrap();
    assert!(st.signal.is_some(), "{st:?}");
    for w in rt.list().await.unwrap() {
        rt.remove(&w.id).await.unwrap();
    }
    assert!(rt.list().await.unwrap().is_empty());
    assert!(
        rt.client().containers().await.unwrap().is_empty(),
        "no container left"
    );
    let snaps = rt.client().snapshots("overlayfs").await.unwrap();
    assert_eq!(snaps.len(), 1, "only the image's layer is left: {snaps:?}");
}

/// One node, two runtimes: a command runs as a process, an image in containerd; the node
/// offers both; exits from either reach the one event stream.
#[tokio::test]
async fn a_node_offers_processes_and_containers_side_by_side() {
    if !orch_testkit::require(CONTAINERD) {
        return;
    }
    use orch_core::runtime::Runtimes;
    use orch_runtime::{ProcessConfig, ProcessRuntime};
    use std::sync::Arc;

    let ctd = LocalContainerd::start().await.expect("containerd starts");
    let mut config = ContainerdConfig::new(ctd.socket(), ctd.scratch().join("state"));
    config.namespace = ctd.namespace();
    let containers = Arc::new(ContainerdRuntime::new(config).await.unwrap());
    let img_dir = ctd.scratch().join("img");
    std::fs::create_dir_all(&img_dir).unwrap();
    let image = "localhost/busybox:both";
    containers
        .client()
        .import(&busybox_image(&img_dir, image), "overlayfs")
        .await
        .unwrap();
    let processes = Arc::new(
        ProcessRuntime::new(ProcessConfig::new(ctd.scratch().join("processes")))
            .await
            .unwrap(),
    );
    let both = Runtimes::new(vec![processes.clone(), containers.clone()]);
    assert_eq!(both.offers(), ["process", "containerd"]);
    let mut events = both.events();

    let mut as_process = workload("default.p", image, &["/bin/sh", "-c", "exit 4"], None);
    as_process.template.image = None;
    both.start(&as_process).await.unwrap();
    let as_container = workload(
        "default.c",
        image,
        &["/bin/sh", "-c", "sleep 0.3; exit 5"],
        None,
    );
    both.start(&as_container).await.unwrap();
    assert_eq!(processes.list().await.unwrap()[0].id, "default.p");
    assert_eq!(containers.list().await.unwrap()[0].id, "default.c");

    let mut codes = std::collections::BTreeMap::new();
    while codes.len() < 2 {
        let e = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("exit events")
            .unwrap();
        let RuntimeEvent::Exited { id, status } = e;
        codes.insert(id, status.code);
    }
    assert_eq!(codes["default.p"], Some(4));
    assert_eq!(codes["default.c"], Some(5));
    for id in ["default.p", "default.c"] {
        both.remove(id).await.unwrap();
    }
    assert!(both.list().await.unwrap().is_empty());
}

/// containerd restarting under a running runtime: the container keeps running, the runtime
/// reconnects by itself, and an exit after the restart is still reported.
#[tokio::test]
async fn the_runtime_survives_a_containerd_restart() {
    if !orch_testkit::require(CONTAINERD) {
        return;
    }
    let image = "localhost/busybox:restart";
    let (mut ctd, _, rt) = runtime_with_busybox(image).await;
    let serve = [
        "/bin/sh",
        "-c",
        "mkdir -p /www && echo up > /www/index.html && exec httpd -f -p $PORT -h /www",
    ];
    let w = rt
        .start(&workload("default.survivor", image, &serve, None))
        .await
        .unwrap();
    let port = w.ports[0].port;
    eventually("http answer", async || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .await;
    let pid = rt
        .client()
        .task_status("default.survivor")
        .await
        .unwrap()
        .unwrap()
        .pid;

    ctd.restart().await.expect("containerd restarts");
    assert!(
        http_get(port).contains("up"),
        "the container served throughout"
    );
    let listed = rt.list().await.unwrap();
    assert_eq!(listed[0].state, WorkloadState::Running, "{listed:?}");

    let mut events = rt.events();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let status = eventually("exit reported after the restart", async || {
        match events.try_recv() {
            Ok(RuntimeEvent::Exited { id, status }) if id == "default.survivor" => Some(status),
            _ => None,
        }
    })
    .await;
    assert_eq!(status.signal, Some(9), "{status:?}");
    rt.remove("default.survivor").await.unwrap();
    assert!(rt.client().containers().await.unwrap().is_empty());
}

/// Where containerd has no overlayfs snapshotter, the runtime falls back to native (a full
/// copy per container) and containers still run.
#[tokio::test]
async fn without_overlayfs_the_native_snapshotter_is_used() {
    if !orch_testkit::require(CONTAINERD) {
        return;
    }
    let ctd = LocalContainerd::start_without(&["io.containerd.snapshotter.v1.overlayfs"])
        .await
        .expect("containerd starts");
    let mut config = ContainerdConfig::new(ctd.socket(), ctd.scratch().join("state"));
    config.namespace = ctd.namespace();
    let rt = ContainerdRuntime::new(config).await.unwrap();
    assert_eq!(rt.snapshotter(), "native");
    let img_dir = ctd.scratch().join("img");
    std::fs::create_dir_all(&img_dir).unwrap();
    let image = "localhost/busybox:native";
    rt.client()
        .import(&busybox_image(&img_dir, image), rt.snapshotter())
        .await
        .unwrap();
    let mut events = rt.events();
    rt.start(&workload(
        "default.native",
        image,
        &["/bin/sh", "-c", "ls /bin/busybox && exit 7"],
        None,
    ))
    .await
    .unwrap();
    let status = eventually("exit", async || match events.try_recv() {
        Ok(RuntimeEvent::Exited { status, .. }) => Some(status),
        _ => None,
    })
    .await;
    assert_eq!(status.code, Some(7), "{status:?}");
    rt.remove("default.native").await.unwrap();
    assert_eq!(rt.client().snapshots("native").await.unwrap().len(), 1);
}

/// Pulling from a real registry (Debian docker-registry, the image pushed with skopeo):
/// digests checked, blobs cached, progress reported, the pulled image runs; a damaged blob,
/// a missing tag and missing or wrong credentials are refused with the reason.
#[tokio::test]
async fn images_are_pulled_from_a_registry_and_run() {
    if !orch_testkit::require(CONTAINERD_AND_REGISTRY) {
        return;
    }
    use orch_runtime::containerd::registry::{PullError, Puller, RegistryConfig};
    use orch_runtime::containerd::testing::{loopback_tls, write_oci_layout, LocalRegistry};

    let ctd = LocalContainerd::start().await.expect("containerd starts");
    let c = Containerd::connect(ctd.socket(), &ctd.namespace())
        .await
        .unwrap();
    let work = ctd.scratch();
    let image = busybox_image(&work.join("build"), "built");
    write_oci_layout(&image, &work.join("layout"), "1").unwrap();
    let registry = LocalRegistry::start(&[]).expect("docker-registry starts");
    registry
        .push(&work.join("layout"), "1", "orch/busybox", None)
        .expect("skopeo pushes");

    let puller = Puller::new(RegistryConfig::default()).unwrap();
    let reference = format!("{}/orch/busybox:1", registry.address());
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::new());
    let record = |p: orch_runtime::containerd::registry::PullProgress| {
        seen.lock().unwrap().insert(p.digest, (p.done, p.total));
    };
    let t = std::time::Instant::now();
    let pulled = puller
        .pull(&reference, &work.join("cache"), &record)
        .await
        .expect("pull");
    eprintln!(
        "pull of {} bytes: {:?}",
        image.layers[0].blob.size,
        t.elapsed()
    );
    assert_eq!(pulled.layers[0].blob.digest, image.layers[0].blob.digest);
    assert_eq!(pulled.config.digest, image.config.digest);
    let layer = &image.layers[0].blob;
    assert_eq!(
        seen.lock().unwrap()[&layer.digest],
        (layer.size as u64, layer.size as u64),
        "progress reached the layer's size"
    );
    // Pulled again: served from the cache directory.
    puller
        .pull(&reference, &work.join("cache"), &|_| {})
        .await
        .unwrap();

    let unpacked = c.import(&pulled, "overlayfs").await.unwrap();
    let mut s = spec(&ctd, Path::new("/"), "pulled", &["/bin/sh", "-c", "exit 6"]);
    s.root = Root::Image {
        name: unpacked.name,
        snapshotter: unpacked.snapshotter,
        chain_id: unpacked.chain_id,
    };
    c.run(&s).await.unwrap();
    assert_eq!(c.wait("pulled").await.unwrap().status, 6);
    c.delete("pulled").await.unwrap();

    // A missing tag says so.
    let e = puller
        .pull(
            &format!("{}/orch/busybox:nope", registry.address()),
            &work.join("c2"),
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(e, PullError::Status { status: 404, .. }), "{e}");

    // A blob damaged in the registry's storage is refused, naming its digest.
    let data = registry.blob_data(&layer.digest);
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let e = puller
        .pull(&reference, &work.join("fresh"), &|_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&e, PullError::Digest { digest, .. } if *digest == layer.digest),
        "{e}"
    );

    // Behind basic authentication: refused without credentials, pulled with them.
    let private = LocalRegistry::start(&[("orch", "s3cret")]).expect("registry with auth");
    private
        .push(
            &work.join("layout"),
            "1",
            "team/busybox",
            Some(("orch", "s3cret")),
        )
        .unwrap();
    let reference = format!("{}/team/busybox:1", private.address());
    let e = puller
        .pull(&reference, &work.join("auth"), &|_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("401") && e.contains("credentials"), "{e}");
    let mut config = RegistryConfig::default();
    config
        .credentials
        .insert(private.address(), ("orch".to_string(), "wrong".to_string()));
    let e = Puller::new(config.clone())
        .unwrap()
        .pull(&reference, &work.join("auth"), &|_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("401") && e.contains("refused"), "{e}");
    config.credentials.insert(
        private.address(),
        ("orch".to_string(), "s3cret".to_string()),
    );
    let with_creds = Puller::new(config).unwrap();
    let got = with_creds
        .pull(&reference, &work.join("auth"), &|_| {})
        .await
        .expect("pull with credentials");
    assert_eq!(got.config.digest, image.config.digest);

    // Over HTTPS, the registry's certificate signed by a CA the puller is told to trust.
    let (ca, cert, key) = loopback_tls(&work.join("tls")).expect("openssl makes certificates");
    let tls = LocalRegistry::start_tls(&[], &cert, &key).expect("registry over TLS");
    tls.push(&work.join("layout"), "1", "secure/busybox", None)
        .unwrap();
    let reference = format!("{}/secure/busybox:1", tls.address());
    let untrusted = Puller::new(RegistryConfig::default())
        .unwrap()
        .pull(&reference, &work.join("tls-pull"), &|_| {})
        .await
        .expect_err("an unknown CA is not trusted");
    let untrusted = untrusted.to_string();
    assert!(
        untrusted.contains("https://") && untrusted.contains("certificate"),
        "{untrusted}"
    );
    let trusting = Puller::new(RegistryConfig {
        ca_files: vec![ca],
        ..RegistryConfig::default()
    })
    .unwrap();
    let got = trusting
        .pull(&reference, &work.join("tls-pull"), &|_| {})
        .await
        .expect("pull over HTTPS");
    assert_eq!(got.config.digest, image.config.digest);
}

/// Pull policies against a tag that moves in the registry: IfNotPresent keeps the image the
/// node has, Always follows the tag, Never refuses an image the node lacks; and a read-only
/// root filesystem refuses writes.
#[tokio::test]
async fn pull_policies_and_a_read_only_root() {
    if !orch_testkit::require(CONTAINERD_AND_REGISTRY) {
        return;
    }
    use orch_core::model::object::PullPolicy;
    use orch_runtime::containerd::testing::{program_image, write_oci_layout, LocalRegistry};

    let ctd = LocalContainerd::start().await.expect("containerd starts");
    let work = ctd.scratch();
    let registry = LocalRegistry::start(&[]).expect("docker-registry starts");
    let push = |image: ImageParts, dir: &str| {
        let layout = work.join(dir);
        write_oci_layout(&image, &layout, "1").unwrap();
        registry.push(&layout, "1", "x/img", None).unwrap();
    };
    // A has /bin/sh; B is busybox alone.
    push(busybox_image(&work.join("a"), "a"), "a-layout");
    let mut config = ContainerdConfig::new(ctd.socket(), work.join("state"));
    config.namespace = ctd.namespace();
    let rt = ContainerdRuntime::new(config).await.unwrap();
    let image = format!("{}/x/img:1", registry.address());
    let mut events = rt.events();
    let probe = [
        "/bin/busybox",
        "sh",
        "-c",
        "test -e /bin/sh || exit 11; touch /written 2>/dev/null || exit 12",
    ];
    let mut run = async |id: &str, policy: PullPolicy, read_only: bool| {
        let mut w = workload(id, &image, &probe, None);
        w.template.ports.clear();
        w.template.image_pull_policy = policy;
        w.template.read_only_root_filesystem = read_only;
        rt.start(&w).await?;
        let code = eventually("exit", async || match events.try_recv() {
            Ok(RuntimeEvent::Exited { id: got, status }) if got == id => Some(status.code),
            _ => None,
        })
        .await;
        Ok::<_, orch_core::runtime::RuntimeError>(code)
    };
    assert_eq!(
        run("default.w1", PullPolicy::IfNotPresent, false)
            .await
            .unwrap(),
        Some(0)
    );
    assert_eq!(
        run("default.ro", PullPolicy::IfNotPresent, true)
            .await
            .unwrap(),
        Some(12),
        "a read-only root refuses writes"
    );

    let b = program_image(&work.join("b"), "b", Path::new("/bin/busybox")).unwrap();
    push(b, "b-layout");
    assert_eq!(
        run("default.w2", PullPolicy::IfNotPresent, false)
            .await
            .unwrap(),
        Some(0),
        "IfNotPresent keeps the image the node has"
    );
    assert_eq!(
        run("default.w3", PullPolicy::Always, false).await.unwrap(),
        Some(11),
        "Always follows the tag to the new image"
    );
    let mut absent = workload("default.w4", "localhost/absent:1", &probe, None);
    absent.template.image_pull_policy = PullPolicy::Never;
    let e = rt.start(&absent).await.unwrap_err().to_string();
    assert!(e.contains("absent") && e.contains("Never"), "{e}");
}

/// A registry that dies mid-pull: a clear error, no partial blob taken for a whole one, and
/// a clean retry once it is back.
#[tokio::test]
async fn a_registry_that_stops_mid_pull_leaves_nothing_half_written() {
    if !orch_testkit::require(CONTAINERD_AND_REGISTRY) {
        return;
    }
    use orch_runtime::containerd::registry::{PullError, Puller, RegistryConfig};
    use orch_runtime::containerd::testing::{image_of, write_oci_layout, LocalRegistry};

    let ctd = LocalContainerd::start().await.expect("containerd starts");
    let work = ctd.scratch();
    // 24 MiB that do not compress, so the layer takes a while to send.
    let root = busybox_rootfs(&work.join("big"));
    let mut payload = vec![0u8; 24 << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut payload)
        .unwrap();
    std::fs::write(root.join("payload"), &payload).unwrap();
    let image = image_of(&work.join("big"), &root, "big", &["/bin/sh"]).unwrap();
    let layer = image.layers[0].blob.clone();
    write_oci_layout(&image, &work.join("layout"), "1").unwrap();
    let mut registry = LocalRegistry::start(&[]).expect("docker-registry starts");
    registry
        .push(&work.join("layout"), "1", "x/big", None)
        .unwrap();
    let reference = format!("{}/x/big:1", registry.address());
    let puller = Puller::new(RegistryConfig::default()).unwrap();
    let cache = work.join("cache");

    // Kill the registry once the first MiB of the layer has arrived, then read on slowly.
    let pid = registry.pid().unwrap();
    let killed = std::sync::atomic::AtomicBool::new(false);
    let kill_midway = |p: orch_runtime::containerd::registry::PullProgress| {
        if p.digest == layer.digest
            && p.done > 1 << 20
            && !killed.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap();
            // Read on once it is dead (its sockets closed): a zombie until the test reaps it.
            let t = std::time::Instant::now();
            while !std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            }) {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "the registry did not die"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    let e = puller
        .pull(&reference, &cache, &kill_midway)
        .await
        .unwrap_err();
    assert!(killed.load(std::sync::atomic::Ordering::SeqCst));
    assert!(
        matches!(&e, PullError::Transport { .. } | PullError::Digest { .. }),
        "{e}"
    );
    let hex = layer.digest.trim_start_matches("sha256:");
    assert!(
        !cache.join("blobs/sha256").join(hex).exists(),
        "no half-written layer under its digest"
    );

    // Back up: the retry completes and the image runs.
    registry.restart().unwrap();
    let pulled = puller
        .pull(&reference, &cache, &|_| {})
        .await
        .expect("retry");
    assert_eq!(
        std::fs::metadata(&pulled.layers[0].blob.path)
            .unwrap()
            .len() as i64,
        layer.size
    );
    let c = Containerd::connect(ctd.socket(), &ctd.namespace())
        .await
        .unwrap();
    let unpacked = c.import(&pulled, "overlayfs").await.unwrap();
    let mut s = spec(
        &ctd,
        Path::new("/"),
        "big",
        &["/bin/sh", "-c", "test -s /payload"],
    );
    s.root = Root::Image {
        name: unpacked.name,
        snapshotter: unpacked.snapshotter,
        chain_id: unpacked.chain_id,
    };
    c.run(&s).await.unwrap();
    assert_eq!(c.wait("big").await.unwrap().status, 0);
    c.delete("big").await.unwrap();
}

/// An image index (two platforms) pushed with `skopeo copy --all`: the pull takes the
/// manifest for linux on this machine's architecture.
#[tokio::test]
async fn a_multi_platform_index_resolves_to_this_platform() {
    if !orch_testkit::require(&["/bin/busybox", "docker-registry", "skopeo"]) {
        return;
    }
    use orch_runtime::containerd::registry::{Puller, RegistryConfig};
    use orch_runtime::containerd::testing::{write_oci_layout, LocalRegistry};
    use sha2::Digest;

    let tmp = tempfile::tempdir().unwrap();
    let image = busybox_image(&tmp.path().join("img"), "multi");
    let layout = tmp.path().join("layout");
    write_oci_layout(&image, &layout, "single").unwrap();
    let blobs = layout.join("blobs/sha256");
    let put = |bytes: &[u8]| {
        let hex = format!("{:x}", sha2::Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    // The other platform: the same layer under a config and manifest that say so.
    let here = if cfg!(target_arch = "x86_64") {
        "amd64"
    } else {
        "arm64"
    };
    let other = if here == "amd64" { "arm64" } else { "amd64" };
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&image.config.path).unwrap()).unwrap();
    config["architecture"] = other.into();
    let (other_config, other_config_size) = put(config.to_string().as_bytes());
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&image.manifest.path).unwrap()).unwrap();
    manifest["config"]["digest"] = other_config.clone().into();
    manifest["config"]["size"] = other_config_size.into();
    let (other_manifest, other_manifest_size) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": other_manifest,
             "size": other_manifest_size, "platform": {"os": "linux", "architecture": other}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": image.manifest.digest,
             "size": image.manifest.size, "platform": {"os": "linux", "architecture": here}},
        ],
    });
    let (index_digest, index_size) = put(index.to_string().as_bytes());
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": index_digest,
                       "size": index_size, "annotations": {"org.opencontainers.image.ref.name": "1"}}],
    });
    std::fs::write(layout.join("index.json"), top.to_string()).unwrap();

    let registry = LocalRegistry::start(&[]).expect("docker-registry starts");
    let out = std::process::Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--all",
            "--quiet",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!("docker://{}/x/multi:1", registry.address()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The registry really serves an index for the tag (else this test would prove nothing).
    let mut conn = std::net::TcpStream::connect(registry.address()).unwrap();
    write!(
        conn,
        "GET /v2/x/multi/manifests/1 HTTP/1.0\r\nAccept: application/vnd.oci.image.index.v1+json\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("\"manifests\""), "{answer}");
    let pulled = Puller::new(RegistryConfig::default())
        .unwrap()
        .pull(
            &format!("{}/x/multi:1", registry.address()),
            &tmp.path().join("cache"),
            &|_| {},
        )
        .await
        .unwrap();
    assert_eq!(
        pulled.manifest.digest, image.manifest.digest,
        "this platform's manifest"
    );
    assert_eq!(pulled.config.digest, image.config.digest);
}

/// An image whose config names its user: the name is looked up in the image's own
/// /etc/passwd and /etc/group, and the container runs as that uid and gid.
/// A busybox root with users `root`, `app` (1000, group `app` 1001) and group `staff` (50),
/// and a runtime over `ctd`.
async fn users_root_and_runtime(ctd: &LocalContainerd) -> (PathBuf, ContainerdRuntime) {
    let work = ctd.scratch();
    let root = busybox_rootfs(&work.join("u"));
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1001:\nstaff:x:50:\n",
    )
    .unwrap();
    let mut config = ContainerdConfig::new(ctd.socket(), work.join("state"));
    config.namespace = ctd.namespace();
    (root, ContainerdRuntime::new(config).await.unwrap())
}

#[tokio::test]
async fn an_image_user_name_is_resolved_from_the_image() {
    if !orch_testkit::require(CONTAINERD) {
        return;
    }
    use orch_runtime::containerd::testing::image_as;

    let ctd = LocalContainerd::start().await.expect("containerd starts");
    let work = ctd.scratch();
    let (root, rt) = users_root_and_runtime(&ctd).await;
    let mut events = rt.events();
    for (user, expect) in [
        ("app", "1000 1001"),
        ("app:staff", "1000 50"),
        ("77", "77 0"),
    ] {
        let name = format!("localhost/user:{}", user.replace(':', "-"));
        let image = image_as(&work.join(user), &root, &name, &["/bin/sh"], Some(user)).unwrap();
        rt.client().import(&image, "overlayfs").await.unwrap();
        let id = format!("default.u{}", user.replace(':', "-"));
        let mut w = workload(
            &id,
            &name,
            &["/bin/sh", "-c", "echo $(id -u) $(id -g)"],
            None,
        );
        w.template.ports.clear();
        rt.start(&w).await.unwrap();
        eventually("exit", async || match events.try_recv() {
            Ok(RuntimeEvent::Exited { id: got, .. }) if got == id => Some(()),
            _ => None,
        })
        .await;
        assert_eq!(logs_of(&rt, &id).await.trim(), expect, "user {user}");
    }
    let name = "localhost/user:ghost";
    let image = image_as(
        &work.join("ghost"),
        &root,
        name,
        &["/bin/sh"],
        Some("ghost"),
    )
    .unwrap();
    rt.client().import(&image, "overlayfs").await.unwrap();
    let e = rt
        .start(&workload("default.ghost", name, &["true"], None))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"ghost\"") && e.contains("/etc/passwd"), "{e}");
}

/// A network namespace of the test's own (`ip netns add`, so it is a bind-mounted file under
/// /run/netns in the root mount namespace, where containerd's shims see it), with a veth pair
/// into it: `HOST_IP/24` on the root end, `ip/24` inside. Removed on drop with its links.
struct TestNetns {
    name: String,
    host_end: String,
    ip: String,
}

/// Runs `ip ARGS`, panicking with what it said when it fails.
fn ip_cmd(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestNetns {
    /// A namespace on subnet `10.250.N.0/24`, N unique in this process and varied by pid.
    fn new() -> TestNetns {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let subnet = (pid % 200 + n) % 250 + 1;
        let ns = TestNetns {
            name: format!("orch-ctrd-test-{pid}-{n}"),
            host_end: format!("oct{}h{n}", pid % 100_000),
            ip: format!("10.250.{subnet}.2"),
        };
        let inner = format!("oct{}c{n}", pid % 100_000);
        ip_cmd(&["netns", "add", &ns.name]);
        ip_cmd(&[
            "link",
            "add",
            &ns.host_end,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
        ]);
        ip_cmd(&["link", "set", &inner, "netns", &ns.name]);
        let host_addr = format!("10.250.{subnet}.1/24");
        ip_cmd(&["addr", "add", &host_addr, "dev", &ns.host_end]);
        ip_cmd(&["link", "set", &ns.host_end, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", ns.name.as_str()];
            all.extend_from_slice(args);
            ip_cmd(&all);
        };
        inside(&["addr", "add", &format!("{}/24", ns.ip), "dev", &inner]);
        inside(&["link", "set", &inner, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn network(&self) -> WorkloadNetwork {
        WorkloadNetwork {
            netns: self.path(),
            ip: self.ip.clone(),
        }
    }

    /// The namespace's inode (what `/proc/PID/ns/net` of a process inside names).
    fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.path()).unwrap().ino()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = std::process::Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        };
        // Deleting the namespace deletes the veth end inside and with it the pair.
        quiet(&["netns", "del", &self.name]);
        quiet(&["link", "del", &self.host_end]);
    }
}

/// `GET /` from the root namespace to `ip:port`, once it accepts connections.
async fn http_get_at(ip: &str, port: u16) -> String {
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap();
    eventually(&format!("an answer on {addr}"), async || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .await
}

/// Containers with a network of their own: each joins the namespace it is given, two listen
/// on the same fixed port 8080 at once and answer on their own addresses from the root
/// namespace, a dynamic port still gets a number, the hostname is the replica's name and
/// /etc/hosts lists it at its address; a new runtime re-adopts them with their addresses; a
/// container without a network stays on the host's.
#[tokio::test]
async fn containers_in_their_own_network_namespaces_share_a_fixed_port() {
    if !orch_testkit::require(&["root", "containerd", "runc", "/bin/busybox", "ip"]) {
        return;
    }
    let image = "localhost/busybox:netns";
    let (_ctd, config, rt) = runtime_with_busybox(image).await;
    assert!(rt.joins_network(&Template {
        image: Some(image.into()),
        ..Template::default()
    }));
    assert!(!rt.joins_network(&Template::with_command(["/bin/true"])));

    let serve = [
        "/bin/sh",
        "-c",
        "mkdir -p /www && echo hello from $WHO > /www/index.html && echo serving on $PORT, metrics on $ORCH_PORT_METRICS && exec httpd -f -p $PORT -h /www",
    ];
    let nets = [TestNetns::new(), TestNetns::new()];
    let networked = |id: &str, net: &TestNetns| {
        let mut w = workload(id, image, &serve, None);
        w.template.ports = vec![
            PortSpec {
                host_port: None,
                name: "http".into(),
                port: Some(8080),
                protocol: Protocol::Tcp,
            },
            PortSpec {
                host_port: None,
                name: "metrics".into(),
                port: None,
                protocol: Protocol::Tcp,
            },
        ];
        w.network = Some(net.network());
        w
    };
    let ids = ["default.web-0", "default.web-1"];
    for (id, net) in ids.iter().zip(&nets) {
        let w = rt.start(&networked(id, net)).await.unwrap();
        assert_eq!(w.ip.as_deref(), Some(net.ip.as_str()), "{w:?}");
        assert_eq!(
            w.host_ip, config.host_ip,
            "host_ip stays the node's address"
        );
        assert_eq!(w.ports[0].port, 8080, "a fixed port as declared");
        assert!(w.ports[1].port > 0, "a dynamic port gets a number");
    }
    for (id, net) in ids.iter().zip(&nets) {
        let body = http_get_at(&net.ip, 8080).await;
        assert!(body.contains(&format!("hello from {id}")), "{body}");
    }
    let w0 = rt.list().await.unwrap();
    let metrics = w0.iter().find(|w| w.id == ids[0]).unwrap().ports[1].port;
    assert_eq!(
        logs_of(&rt, ids[0]).await.trim(),
        format!("serving on 8080, metrics on {metrics}")
    );

    // Each container's process is in the namespace it was given.
    for (id, net) in ids.iter().zip(&nets) {
        let pid = rt.client().task_status(id).await.unwrap().unwrap().pid;
        let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
        assert_eq!(
            link.display().to_string(),
            format!("net:[{}]", net.inode()),
            "{id} joined {}",
            net.path().display()
        );
    }

    // Its hostname is the replica's name; /etc/hosts names it at its address.
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let t = Duration::from_secs(10);
    let out = rt.exec(ids[1], &argv(&["hostname"]), t).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "web-1");
    let out = rt
        .exec(ids[1], &argv(&["cat", "/etc/hosts"]), t)
        .await
        .unwrap();
    let hosts = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = hosts.lines().collect();
    assert!(lines.contains(&"127.0.0.1\tlocalhost"), "{hosts}");
    assert!(
        lines.contains(&format!("{}\tweb-1", nets[1].ip).as_str()),
        "{hosts}"
    );
    // The container reaches itself by its name.
    let out = rt
        .exec(
            ids[1],
            &argv(&["wget", "-q", "-O", "-", "http://web-1:8080/"]),
            t,
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello from default.web-1",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A container without a network beside them is on the host's, as before.
    let mut plain = workload("default.plain", image, &serve, None);
    plain.template.ports[0].port = None;
    let p = rt.start(&plain).await.unwrap();
    assert_eq!(p.ip, None);
    let port = p.ports[0].port;
    let body = http_get_at("127.0.0.1", port).await;
    assert!(body.contains("hello from default.plain"), "{body}");
    let out = rt
        .exec("default.plain", &argv(&["hostname"]), t)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "default.plain");

    // A new runtime re-adopts them with their addresses; they still serve.
    drop(rt);
    let rt = ContainerdRuntime::new(config.clone()).await.unwrap();
    let listed = rt.list().await.unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    for (id, net) in ids.iter().zip(&nets) {
        let w = listed.iter().find(|w| w.id == *id).unwrap();
        assert_eq!(
            (w.state.clone(), w.ip.as_deref(), w.ports[0].port),
            (WorkloadState::Running, Some(net.ip.as_str()), 8080),
            "{w:?}"
        );
        assert_eq!(w.host_ip, config.host_ip);
    }
    let plain = listed.iter().find(|w| w.id == "default.plain").unwrap();
    assert_eq!(plain.ip, None);
    let body = http_get_at(&nets[0].ip, 8080).await;
    assert!(body.contains("hello from default.web-0"), "{body}");

    // Removal leaves none of the files behind; the namespaces are the caller's and stay.
    for w in rt.list().await.unwrap() {
        rt.remove(&w.id).await.unwrap();
    }
    assert!(rt.client().containers().await.unwrap().is_empty());
    let left: Vec<_> = std::fs::read_dir(config.state_dir.clone())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".hosts") || n.ends_with(".log"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(nets.iter().all(|n| n.path().exists()));
}

/// A busybox `sh -c SCRIPT` workload of `image`, without ports.
fn script(id: &str, image: &str, script: &str) -> WorkloadSpec {
    let mut w = workload(id, image, &["/bin/sh", "-c", script], None);
    w.template.ports.clear();
    w.template.env.clear();
    w
}

/// Runs `w` to its end; what it wrote.
async fn run_to_end(rt: &ContainerdRuntime, w: &WorkloadSpec) -> String {
    let mut events = rt.events();
    rt.start(w).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(RuntimeEvent::Exited { id, .. })) if id == w.id => break,
            Ok(_) => {}
            Err(_) => panic!("{} did not exit", w.id),
        }
    }
    let out = logs_of(rt, &w.id).await;
    rt.remove(&w.id).await.unwrap();
    out.trim().to_string()
}

#[tokio::test]
async fn user_capabilities_hostname_and_one_key_mounts_reach_the_container() {
    if !orch_testkit::require(CONTAINERD) {
        return;
    }
    let ctd = LocalContainerd::start().await.expect("containerd starts");
    let work = ctd.scratch();
    let (root, rt) = users_root_and_runtime(&ctd).await;
    // The image runs as `app`; the template's user wins.
    let image = "localhost/users:1";
    let parts = orch_runtime::containerd::testing::image_as(
        &work.join("img"),
        &root,
        image,
        &["/bin/sh"],
        Some("app"),
    )
    .unwrap();
    rt.client().import(&parts, "overlayfs").await.unwrap();
    let ids = "echo $(id -u) $(id -g)";
    assert_eq!(
        run_to_end(&rt, &script("default.image-user", image, ids)).await,
        "1000 1001"
    );
    for (user, want) in [
        ("1234:5678", "1234 5678"),
        ("app:staff", "1000 50"),
        ("0", "0 0"),
    ] {
        let mut w = script(&format!("default.u{}", user.replace(':', "-")), image, ids);
        w.template.user = Some(user.into());
        assert_eq!(run_to_end(&rt, &w).await, want, "user {user}");
    }
    // Capabilities: Docker's default set, then added to and dropped from.
    let caps = "grep CapEff /proc/self/status | cut -f2";
    for (i, (add, drop, want)) in [
        (vec![], vec![], "00000000a80425fb"),
        (vec![], vec!["NET_RAW"], "00000000a80405fb"),
        (vec!["NET_ADMIN"], vec!["CAP_NET_RAW"], "00000000a80415fb"),
        (vec![], vec!["ALL"], "0000000000000000"),
        (vec!["KILL"], vec!["ALL"], "0000000000000020"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut w = script(&format!("default.caps{i}"), image, caps);
        w.template.user = Some("0".into());
        w.template.capabilities = orch_core::model::object::Capabilities {
            add: add.iter().map(|s| s.to_string()).collect(),
            drop: drop.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(run_to_end(&rt, &w).await, want, "add {add:?} drop {drop:?}");
    }
    // The hostname, and a single key of a secret as one file (owned by the user).
    let mut w = script(
        "default.host",
        image,
        "echo $(hostname) $(cat /run/secrets/pw) $(stat -c %u /run/secrets/pw); [ -f /run/secrets/pw ] && echo file",
    );
    w.template.hostname = Some("db-1".into());
    w.mounts = vec![orch_core::runtime::WorkloadMount {
        path: "/run/secrets/pw".into(),
        read_only: true,
        source: orch_core::runtime::MountSource::File(orch_core::runtime::MountFiles {
            secret: true,
            files: vec![("password".into(), b"hunter2".to_vec())],
        }),
    }];
    assert_eq!(run_to_end(&rt, &w).await, "db-1 hunter2 1000\nfile");
}

/// A [`Network`](orch_core::Network) that gives its one workload a [`TestNetns`] (made on its
/// first attach, removed on detach).
#[derive(Default)]
struct OneNetns(std::sync::Mutex<Option<(String, TestNetns)>>);

#[async_trait::async_trait]
impl orch_core::Network for OneNetns {
    async fn configure(
        &self,
        _lease: &orch_core::model::object::NodeNetwork,
    ) -> Result<(), orch_core::network::NetworkError> {
        Ok(())
    }
    async fn attach(
        &self,
        id: &str,
        _ports: &[PortSpec],
    ) -> Result<WorkloadNetwork, orch_core::network::NetworkError> {
        let mut g = self.0.lock().unwrap();
        let (_, ns) = g.get_or_insert_with(|| (id.to_string(), TestNetns::new()));
        Ok(ns.network())
    }
    async fn detach(&self, id: &str) -> Result<(), orch_core::network::NetworkError> {
        let mut g = self.0.lock().unwrap();
        if g.as_ref().is_some_and(|(i, _)| i == id) {
            *g = None;
        }
        Ok(())
    }
    async fn attached(
        &self,
    ) -> Result<Vec<(String, WorkloadNetwork)>, orch_core::network::NetworkError> {
        let g = self.0.lock().unwrap();
        Ok(g.iter()
            .map(|(id, ns)| (id.clone(), ns.network()))
            .collect())
    }
    async fn set_peers(
        &self,
        _peers: &[orch_core::network::Peer],
    ) -> Result<(), orch_core::network::NetworkError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "one test namespace".into()
    }
}

/// A node agent over a containerd of the test's own with the busybox image as
/// `localhost/busybox:1` (and `network`, if given), on an engine over a memory store.
struct AgentNode {
    _ctd: LocalContainerd,
    rt: std::sync::Arc<ContainerdRuntime>,
    engine: orch_core::Engine,
    store: std::sync::Arc<orch_core::memstore::MemStore>,
}

impl AgentNode {
    async fn start(network: Option<std::sync::Arc<OneNetns>>) -> AgentNode {
        let ctd = LocalContainerd::start().await.expect("containerd starts");
        let mut config = ContainerdConfig::new(ctd.socket(), ctd.scratch().join("state"));
        config.namespace = ctd.namespace();
        let rt = std::sync::Arc::new(ContainerdRuntime::new(config).await.unwrap());
        let img = ctd.scratch().join("img");
        std::fs::create_dir_all(&img).unwrap();
        rt.client()
            .import(&busybox_image(&img, "localhost/busybox:1"), "overlayfs")
            .await
            .unwrap();
        let store = std::sync::Arc::new(orch_core::memstore::MemStore::new());
        let mut engine = orch_core::Engine::builder(
            store.clone(),
            std::sync::Arc::new(orch_sched::DefaultScheduler),
        )
        .config(orch_core::EngineConfig {
            network: network
                .as_ref()
                .map(|_| orch_core::engine::ClusterNetwork::default()),
            ..orch_core::EngineConfig::default()
        })
        .start();
        let mut cfg = orch_core::AgentConfig::new("node-a");
        cfg.network = network.map(|n| orch_core::node::AgentNetwork(n));
        engine.add_agent(rt.clone(), cfg);
        AgentNode {
            _ctd: ctd,
            rt,
            engine,
            store,
        }
    }

    /// Applies `yaml`, waits for the service's replica to be Ready and for its log to hold
    /// `want`; the replica and its log.
    async fn run(
        &self,
        yaml: &str,
        svc: &str,
        want: &str,
    ) -> (orch_core::model::object::Replica, String) {
        let objects = orch_core::model::manifest::parse("app.yaml", yaml).unwrap();
        orch_core::engine::api::apply(&*self.store, objects, false)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let r = loop {
            let r = self
                .engine
                .cache()
                .replicas_of_service("default", svc)
                .into_iter()
                .next();
            if let Some(r) = r
                .clone()
                .filter(|r| r.status.phase == orch_core::model::object::Phase::Ready)
            {
                break r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not ready in time: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let log = loop {
            let log = logs_of(&self.rt, &r.runtime_name()).await;
            if log.contains(want) || tokio::time::Instant::now() > deadline {
                break log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        (r, log)
    }

    async fn stop(self) {
        self.engine.shutdown().await;
        for w in self.rt.list().await.unwrap() {
            let _ = self.rt.stop(&w.id, "SIGKILL", Duration::ZERO).await;
            let _ = self.rt.remove(&w.id).await;
        }
    }
}

/// Init steps through the node agent: they run in order, in the replica's container setup
/// (its tmpfs mount, where the first step leaves a file for the main container; its
/// hostname), and their output is in the replica's log before the main container's.
#[tokio::test]
async fn init_steps_run_in_containers_before_the_main_one() {
    if !orch_testkit::require(CONTAINERD) {
        return;
    }
    let node = AgentNode::start(None).await;
    let yaml = "apiVersion: orch/v1
kind: Service
metadata: {name: app}
spec:
  replicas: 1
  template:
    image: localhost/busybox:1
    hostname: app-host
    command: [/bin/sh, -c, 'echo main sees $(cat /work/made) on $(hostname); exec sleep 60']
    stopGracePeriod: 1s
    mounts: [{path: /work, tmpfs: true}]
    init:
      - {name: make, command: [/bin/sh, -c, 'echo made-by-init > /work/made; echo step one']}
      - {name: check, command: [/bin/sh, -c, 'test -s /work/made && echo step two']}
";
    let want = "main sees made-by-init on app-host";
    let (_, log) = node.run(yaml, "app", want).await;
    let (one, two, main) = (log.find("step one"), log.find("step two"), log.find(want));
    assert!(one.is_some() && one < two && two < main, "{log}");
    node.stop().await;
}

/// A replica with a network of its own: its init steps run in the namespace its main
/// container then runs in (attached once, before the first step), and it keeps its address.
#[tokio::test]
async fn init_steps_share_the_replicas_network_namespace() {
    if !orch_testkit::require(&["root", "containerd", "runc", "/bin/busybox", "ip"]) {
        return;
    }
    let net = std::sync::Arc::new(OneNetns::default());
    let node = AgentNode::start(Some(net.clone())).await;
    let yaml = "apiVersion: orch/v1
kind: Service
metadata: {name: netapp}
spec:
  replicas: 1
  template:
    image: localhost/busybox:1
    command: [/bin/sh, -c, 'if [ \"$(readlink /proc/self/ns/net)\" = \"$(cat /work/ns)\" ]; then echo same namespace $(cat /work/ip); fi; exec sleep 60']
    stopGracePeriod: 1s
    mounts: [{path: /work, tmpfs: true}]
    init:
      - {name: note, command: [/bin/sh, -c, 'readlink /proc/self/ns/net > /work/ns; ip -4 -o addr show | grep -o \"10\\.250\\.[0-9.]*\" > /work/ip']}
";
    let (r, log) = node.run(yaml, "netapp", "same namespace").await;
    let ip = net.0.lock().unwrap().as_ref().map(|(_, ns)| ns.ip.clone());
    let ip = ip.expect("the replica is attached");
    assert_eq!(r.status.ip.as_deref(), Some(ip.as_str()));
    assert!(log.contains(&format!("same namespace {ip}")), "{log}");
    node.stop().await;
    *net.0.lock().unwrap() = None;
}
