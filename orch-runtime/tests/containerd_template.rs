//! Template fields in real containers (a containerd of the test's own, runc, a busybox
//! image): the template's user over the image's (by number and by name), capabilities added
//! to and dropped from Docker's default set (`CapEff` in `/proc/self/status`), the hostname,
//! a one-key secret mount as a single file; and init steps through the node agent, in the
//! container's own tmpfs mount and log, before the main container.
#![cfg(feature = "containerd")]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use orch_core::model::object::{Capabilities, Phase, Template};
use orch_core::runtime::{
    LogOptions, MountFiles, MountSource, Runtime, RuntimeEvent, WorkloadMount, WorkloadSpec,
};
use orch_runtime::containerd::testing::{busybox_image, busybox_rootfs, image_as};
use orch_runtime::containerd::{ContainerdConfig, ContainerdRuntime, LocalContainerd};

/// What a test with a containerd of its own needs.
const CONTAINERD: &[&str] = &["root", "containerd", "runc", "/bin/busybox"];

fn workload(id: &str, image: &str, script: &str) -> WorkloadSpec {
    WorkloadSpec {
        network: None,
        id: id.into(),
        replica_uid: format!("uid-{id}"),
        service: "web".into(),
        namespace: "default".into(),
        template: Template {
            image: Some(image.into()),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            ..Template::default()
        },
        template_hash: "h1".into(),
        extra_env: vec![],
        dns: None,
        mounts: Vec::new(),
    }
}

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
    let root = busybox_rootfs(&work.join("u")).unwrap();
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
    let rt = ContainerdRuntime::new(config).await.unwrap();
    // The image runs as `app`; the template's user wins.
    let image = "localhost/users:1";
    let parts = image_as(&work.join("img"), &root, image, &["/bin/sh"], Some("app")).unwrap();
    rt.client().import(&parts, "overlayfs").await.unwrap();
    let ids = "echo $(id -u) $(id -g)";
    assert_eq!(
        run_to_end(&rt, &workload("default.image-user", image, ids)).await,
        "1000 1001"
    );
    for (user, want) in [
        ("1234:5678", "1234 5678"),
        ("app:staff", "1000 50"),
        ("0", "0 0"),
    ] {
        let mut w = workload(&format!("default.u{}", user.replace(':', "-")), image, ids);
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
        let mut w = workload(&format!("default.caps{i}"), image, caps);
        w.template.user = Some("0".into());
        w.template.capabilities = Capabilities {
            add: add.iter().map(|s| s.to_string()).collect(),
            drop: drop.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(run_to_end(&rt, &w).await, want, "add {add:?} drop {drop:?}");
    }
    // The hostname, and a single key of a secret as one file (owned by the user).
    let mut w = workload(
        "default.host",
        image,
        "echo $(hostname) $(cat /run/secrets/pw) $(stat -c %u /run/secrets/pw); [ -f /run/secrets/pw ] && echo file",
    );
    w.template.hostname = Some("db-1".into());
    w.mounts = vec![WorkloadMount {
        path: "/run/secrets/pw".into(),
        read_only: true,
        source: MountSource::File(MountFiles {
            secret: true,
            files: vec![("password".into(), b"hunter2".to_vec())],
        }),
    }];
    assert_eq!(run_to_end(&rt, &w).await, "db-1 hunter2 1000\nfile");
}

/// Init steps through the node agent: they run in order, in the replica's container setup
/// (its tmpfs mount, where the first step leaves a file for the main container), and their
/// output is in the replica's log before the main container's.
#[tokio::test]
async fn init_steps_run_in_containers_before_the_main_one() {
    if !orch_testkit::require(CONTAINERD) {
        return;
    }
    let ctd = LocalContainerd::start().await.expect("containerd starts");
    let mut config = ContainerdConfig::new(ctd.socket(), ctd.scratch().join("state"));
    config.namespace = ctd.namespace();
    let rt = Arc::new(ContainerdRuntime::new(config).await.unwrap());
    let img = ctd.scratch().join("img");
    std::fs::create_dir_all(&img).unwrap();
    rt.client()
        .import(
            &busybox_image(&img, "localhost/busybox:1").unwrap(),
            "overlayfs",
        )
        .await
        .unwrap();
    let store = Arc::new(orch_core::memstore::MemStore::new());
    let mut engine =
        orch_core::Engine::builder(store.clone(), Arc::new(orch_sched::DefaultScheduler)).start();
    engine.add_agent(rt.clone(), orch_core::AgentConfig::new("node-a"));
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
    let objects = orch_core::model::manifest::parse("app.yaml", yaml).unwrap();
    orch_core::engine::api::apply(&*store, objects, false)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let r = loop {
        let r = engine
            .cache()
            .replicas_of_service("default", "app")
            .into_iter()
            .next();
        if let Some(r) = r.filter(|r| r.status.phase == Phase::Ready) {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "not ready in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let id = r.runtime_name();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = logs_of(&rt, &id).await;
        if log.contains("main sees") || tokio::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (one, two, main) = (
        log.find("step one"),
        log.find("step two"),
        log.find("main sees made-by-init on app-host"),
    );
    assert!(one.is_some() && one < two && two < main, "{log}");
    engine.shutdown().await;
    for w in rt.list().await.unwrap() {
        let _ = rt.stop(&w.id, "SIGKILL", Duration::ZERO).await;
        let _ = rt.remove(&w.id).await;
    }
}
