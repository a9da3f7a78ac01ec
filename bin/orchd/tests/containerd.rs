//! orchd with `--runtime process,containerd` on a containerd of the test's own: 3 replicas of
//! the example HTTP server (built statically: its image is that one file), pulled from a registry of the test's own (docker-registry, the image
//! pushed with skopeo), run as containers next to a process replica of it
//! on the same node and answer on their ports; `orchctl exec` runs commands in a container; a
//! killed container is replaced; a restarted orchd re-adopts the containers without
//! duplicating them; deleting the services leaves nothing in containerd but the images.
//! Needs root, containerd, runc, busybox and the registry's tools; without them each test says
//! it skipped (or fails under `ORCH_TEST_REQUIRE_ALL=1`).
#![cfg(feature = "containerd")]

mod common;

use std::time::Duration;

use common::*;
use orch_runtime::containerd::testing::{
    busybox_image, program_image, static_build, write_oci_layout, LocalRegistry,
};
use orch_runtime::containerd::{Containerd, LocalContainerd};

/// What these tests need: a containerd and a registry of their own.
const CONTAINERD_AND_REGISTRY: &[&str] = &[
    "root",
    "containerd",
    "runc",
    "/bin/busybox",
    "docker-registry",
    "skopeo",
];

/// The example server from its image (the entrypoint): no command in the template.
fn web(registry: &str) -> String {
    format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  replicas: 3\n  template:\n    image: {registry}/orch/hello-server:1\n    ports: [{{name: http}}]\n    stopGracePeriod: 1s\n")
}

/// A shell to exec into.
fn shell(registry: &str) -> String {
    format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: shell}}\nspec:\n  replicas: 1\n  template:\n    image: {registry}/orch/busybox:1\n    command: [/bin/sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 0.2; done']\n    stopGracePeriod: 1s\n")
}

/// The example server built statically: its image holds that one file.
fn static_hello_server() -> std::path::PathBuf {
    let target = bin_dir().parent().unwrap().to_path_buf();
    let bin = static_build(&target, "orch-example-hello", "hello-server").expect("static build");
    let ldd = std::process::Command::new("ldd")
        .arg(&bin)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&ldd.stdout);
    assert!(
        said.contains("statically linked") || said.contains("not a dynamic"),
        "{} is linked dynamically: {}",
        bin.display(),
        said
    );
    bin
}

/// Sends `sig` (`-STOP`, `-CONT`) to the registry: a paused registry holds a pull at its
/// first request.
fn signal_registry(registry: &LocalRegistry, sig: &str) {
    let pid = registry.pid().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `(addr, pid)` of the ready replicas of `service`, once there are exactly `n` and all answer.
fn ready(d: &Daemon, service: &str, n: usize) -> Option<Vec<(String, u32)>> {
    ready_addrs_of(d, Some(service), n)
}

#[test]
fn containers_and_processes_on_one_node_through_orchd() {
    if !require(CONTAINERD_AND_REGISTRY) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut ctd = rt
        .block_on(LocalContainerd::start())
        .expect("containerd starts");
    let ns = ctd.namespace();
    let img_dir = ctd.scratch().join("img");
    std::fs::create_dir_all(&img_dir).unwrap();
    // Both images go to the registry; orchd pulls them when replicas need them.
    let registry = LocalRegistry::start(&[]).expect("docker-registry starts");
    let images = [
        (
            "hello-server",
            program_image(&img_dir.join("hello"), "hello", &static_hello_server()),
        ),
        (
            "busybox",
            busybox_image(&img_dir.join("busybox"), "busybox"),
        ),
    ];
    for (repo, image) in images {
        let layout = img_dir.join(format!("{repo}-layout"));
        write_oci_layout(&image.unwrap(), &layout, "1").unwrap();
        registry
            .push(&layout, "1", &format!("orch/{repo}"), None)
            .expect("skopeo pushes");
    }
    // The same busybox under a second tag, pulled later while the registry is paused.
    registry
        .push(&img_dir.join("busybox-layout"), "1", "orch/paused", None)
        .expect("skopeo pushes");
    let client = rt.block_on(Containerd::connect(ctd.socket(), &ns)).unwrap();
    assert!(rt.block_on(client.images()).unwrap().is_empty());
    let containers = || rt.block_on(client.containers()).unwrap().len();

    let tmp = tempfile::tempdir().unwrap();
    let socket = ctd.socket();
    // The cluster DNS on a loopback address of this test's own, on port 53: a container's
    // resolv.conf can only name a server there.
    let pid = std::process::id();
    let dns_ip = format!("127.{}.{}.2", 54 + (pid >> 16) % 100, pid & 0xff);
    let dns = format!("{dns_ip}:53");
    let args = [
        "--runtime",
        "process,containerd",
        "--containerd-socket",
        socket.to_str().unwrap(),
        "--containerd-namespace",
        &ns,
        "--dns-listen",
        &dns,
    ];
    let mut d = Daemon::start_with(tmp.path(), &args);
    let node = eventually("the node registers", Duration::from_secs(20), || {
        let out = d.ctl_ok(&["describe", "node", "test-node"]);
        out.contains("containerd").then_some(out)
    });
    assert!(node.contains("process"), "{node}");

    let files = [
        write(tmp.path(), "web.yaml", &web(&registry.address())),
        write(tmp.path(), "shell.yaml", &shell(&registry.address())),
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
    let shell = eventually("the shell runs", Duration::from_secs(30), || {
        d.replicas()
            .into_iter()
            .find(|r| r["spec"]["service"] == "shell" && r["status"]["phase"] == "Ready")
            .and_then(|r| r["metadata"]["name"].as_str().map(String::from))
    });
    assert_eq!(
        containers(),
        4,
        "web and shell are containers; hello is a process"
    );
    let mut pulled = rt.block_on(client.images()).unwrap();
    pulled.sort();
    let registry_address = registry.address();
    assert_eq!(
        pulled,
        [
            format!("{registry_address}/orch/busybox:1"),
            format!("{registry_address}/orch/hello-server:1"),
        ],
        "each image pulled once"
    );

    // The container resolves service names through the cluster DNS (its resolv.conf names
    // it first, with the namespace's search domains).
    let resolv = d.ctl_ok(&["exec", &shell, "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains(&format!("nameserver {dns_ip}\n"))
            && resolv.contains("search default.orch.local orch.local"),
        "{resolv}"
    );
    let looked_up = d.ctl_ok(&["exec", &shell, "--", "nslookup", "web.default.orch.local"]);
    assert!(
        looked_up.contains("127.0.0.1") && looked_up.contains(&dns_ip),
        "{looked_up}"
    );

    // A container replica reads a secret file (tmpfs, 0400, bind-mounted read-only) and a
    // config variable.
    d.ctl_ok(&[
        "create",
        "secret",
        "db",
        "--from-literal",
        "password=ctr-s3cret",
    ]);
    d.ctl_ok(&["create", "config", "app", "--from-literal", "level=warn"]);
    let vault = write(
        tmp.path(),
        "vault.yaml",
        &format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: vault}}\nspec:\n  replicas: 1\n  template:\n    image: {}/orch/busybox:1\n    command: [/bin/sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 0.2; done']\n    stopGracePeriod: 1s\n    env: [{{name: LEVEL, valueFrom: {{config: app, key: level}}}}]\n    mounts: [{{secret: db, path: /run/secrets/db}}, {{tmpfs: true, path: /scratch}}]\n", registry.address()),
    );
    d.ctl_ok(&["apply", "-f", vault.to_str().unwrap()]);
    let vault = eventually("vault runs", Duration::from_secs(30), || {
        d.replicas()
            .into_iter()
            .find(|r| r["spec"]["service"] == "vault" && r["status"]["phase"] == "Ready")
            .and_then(|r| r["metadata"]["name"].as_str().map(String::from))
    });
    let seen = d.ctl_ok(&[
        "exec",
        &vault,
        "--",
        "/bin/sh",
        "-c",
        "cat /run/secrets/db/password; echo; echo $LEVEL; ls -ln /run/secrets/db; echo x > /scratch/f && cat /scratch/f; echo y > /run/secrets/db/other || echo read-only",
    ]);
    assert!(seen.starts_with("ctr-s3cret\nwarn\n"), "{seen}");
    assert!(seen.contains("-r--------"), "0400: {seen}");
    assert!(
        seen.contains("\nx\n") && seen.contains("read-only"),
        "{seen}"
    );
    d.ctl_ok(&["delete", "service", "vault"]);
    eventually("vault gone", Duration::from_secs(30), || {
        (!d.replicas().iter().any(|r| r["spec"]["service"] == "vault")).then_some(())
    });

    // orchctl exec runs a command in a container: its environment, its exit code, its stderr.
    let who = d.ctl_ok(&["exec", &shell, "--", "/bin/sh", "-c", "echo $ORCH_REPLICA"]);
    assert_eq!(who.trim(), shell);
    let failed = d.ctl(&[
        "exec",
        &shell,
        "--",
        "/bin/sh",
        "-c",
        "echo oops >&2; exit 3",
    ]);
    assert_eq!(failed.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&failed.stderr).trim(), "oops");
    let hello_replica = d
        .replicas()
        .into_iter()
        .find(|r| r["spec"]["service"] == "hello")
        .and_then(|r| r["metadata"]["name"].as_str().map(String::from))
        .unwrap();
    // An exec readiness probe runs inside the container: Running until the file exists.
    let probed = write(
        tmp.path(),
        "probed.yaml",
        &format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: probed}}\nspec:\n  replicas: 1\n  template:\n    image: {}/orch/busybox:1\n    command: [/bin/sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 0.2; done']\n    stopGracePeriod: 1s\n    readinessProbe: {{exec: {{command: [/bin/sh, -c, 'test -f /ready']}}, period: 200ms, failureThreshold: 1}}\n", registry.address()),
    );
    d.ctl_ok(&["apply", "-f", probed.to_str().unwrap()]);
    let name = eventually("probed runs, not ready", Duration::from_secs(30), || {
        d.replicas()
            .into_iter()
            .find(|r| r["spec"]["service"] == "probed" && r["status"]["reason"] == "NotReady")
            .and_then(|r| r["metadata"]["name"].as_str().map(String::from))
    });
    d.ctl_ok(&["exec", &name, "--", "/bin/sh", "-c", "echo > /ready"]);
    d.wait_ready("probed");
    d.ctl_ok(&["delete", "service", "probed"]);
    eventually("probed gone", Duration::from_secs(30), || {
        (containers() == 4).then_some(())
    });

    // A process replica: the command runs in its environment.
    let color = d.ctl_ok(&["exec", &hello_replica, "--", "/bin/sh", "-c", "echo $COLOR"]);
    assert_eq!(color.trim(), "blue");

    // A pull under way shows in `orchctl describe` (the registry paused with SIGSTOP holds
    // the pull at its first request).
    let signal = |sig: &str| signal_registry(&registry, sig);
    signal("-STOP");
    let paused = write(
        tmp.path(),
        "paused.yaml",
        &format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: paused}}\nspec:\n  replicas: 1\n  template:\n    image: {}/orch/paused:1\n    command: [/bin/sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 0.2; done']\n    stopGracePeriod: 1s\n", registry.address()),
    );
    d.ctl_ok(&["apply", "-f", paused.to_str().unwrap()]);
    let progress = eventually("pull progress in describe", Duration::from_secs(30), || {
        let name = d
            .replicas()
            .into_iter()
            .find(|r| r["spec"]["service"] == "paused" && !r["spec"]["node"].is_null())?
            ["metadata"]["name"]
            .as_str()?
            .to_string();
        let out = d.ctl_ok(&["describe", "replica", &name]);
        out.lines()
            .find(|l| l.starts_with("Progress:"))
            .map(String::from)
    });
    assert!(
        progress.contains("pulling") && progress.contains("orch/paused:1"),
        "{progress}"
    );
    signal("-CONT");
    d.wait_ready("paused");
    d.ctl_ok(&["delete", "service", "paused"]);
    eventually("paused gone", Duration::from_secs(30), || {
        (containers() == 4).then_some(())
    });

    // An image the registry does not have: the replica says why and is retried; the rest of
    // the node carries on. An invalid reference is refused at apply.
    let missing = write(
        tmp.path(),
        "missing.yaml",
        &format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: missing}}\nspec:\n  replicas: 1\n  template:\n    image: {}/orch/nope:1\n", registry.address()),
    );
    d.ctl_ok(&["apply", "-f", missing.to_str().unwrap()]);
    let failing = eventually("the pull error shows", Duration::from_secs(30), || {
        d.replicas().into_iter().find(|r| {
            r["spec"]["service"] == "missing"
                && r["status"]["reason"] == "ImagePullBackOff"
                && r["status"]["restarts"].as_u64().unwrap_or(0) >= 1
        })
    });
    let message = failing["status"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("404") && message.contains("orch/nope"),
        "{message}"
    );
    let described = d.ctl_ok(&["describe", "service", "missing"]);
    assert!(described.contains("ImagePullBackOff"), "{described}");
    assert!(
        ready(&d, "web", 3).is_some(),
        "the other replicas still serve"
    );
    d.ctl_ok(&["delete", "service", "missing"]);
    let bad = write(
        tmp.path(),
        "bad.yaml",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: bad}\nspec:\n  replicas: 1\n  template:\n    image: 'Not An Image'\n",
    );
    let refused = d.ctl(&["apply", "-f", bad.to_str().unwrap()]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("spec.template.image"),
        "{why}"
    );

    // A node without a registry: an OCI layout tarball imported with orchctl, then run.
    let archive = img_dir.join("busybox.tar");
    let packed = std::process::Command::new("tar")
        .arg("-C")
        .arg(img_dir.join("busybox-layout"))
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(packed.success());
    let imported = d.ctl_ok(&[
        "image",
        "import",
        archive.to_str().unwrap(),
        "--name",
        "localhost/imported:1",
    ]);
    assert!(
        imported.contains("image localhost/imported:1 imported on test-node"),
        "{imported}"
    );
    let junk = write(tmp.path(), "junk.tar", "not an archive");
    let refused = d.ctl(&["image", "import", junk.to_str().unwrap()]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("junk.tar"),
        "{why}"
    );
    let offline = write(
        tmp.path(),
        "offline.yaml",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: offline}\nspec:\n  replicas: 1\n  template:\n    image: localhost/imported:1\n    command: [/bin/sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 0.2; done']\n    stopGracePeriod: 1s\n",
    );
    d.ctl_ok(&["apply", "-f", offline.to_str().unwrap()]);
    d.wait_ready("offline");
    d.ctl_ok(&["delete", "service", "offline"]);
    eventually("offline gone", Duration::from_secs(30), || {
        (containers() == 4).then_some(())
    });

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
    assert_eq!(containers(), 4);

    // orchd restarts: the running containers are re-adopted, none duplicated or restarted.
    d.stop();
    assert_eq!(containers(), 4, "containers outlive orchd");
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
    assert_eq!(containers(), 4, "nothing duplicated");

    // containerd stops under the running node: the node says so and stops offering it, the
    // containers keep serving, and all is well again once containerd is back.
    ctd.stop_daemon();
    let described = eventually(
        "containerd reported unavailable",
        Duration::from_secs(30),
        || {
            let out = d.ctl_ok(&["describe", "node", "test-node"]);
            out.contains("Unavailable").then_some(out)
        },
    );
    assert!(described.contains("containerd"), "{described}");
    for (addr, _) in &readopted {
        assert!(
            http_get(addr).is_some_and(|b| b.starts_with("hello from")),
            "{addr} serves while containerd is down"
        );
    }
    rt.block_on(ctd.restart()).expect("containerd restarts");
    eventually("containerd offered again", Duration::from_secs(30), || {
        let out = d.ctl_ok(&["describe", "node", "test-node"]);
        (!out.contains("Unavailable") && out.contains("containerd")).then_some(())
    });
    let (_, victim) = readopted[0];
    std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    eventually(
        "replaced after containerd came back",
        Duration::from_secs(30),
        || ready(&d, "web", 3).filter(|u| u.iter().all(|(_, p)| *p != victim)),
    );
    assert_eq!(containers(), 4);

    // Delete: no container, task or writable layer left; the images' layers stay. The
    // process replica goes too (workloads outlive orchd, so one left here would outlive the
    // test).
    d.ctl_ok(&["delete", "service", "web"]);
    d.ctl_ok(&["delete", "service", "shell"]);
    d.delete_and_wait("service", "hello");
    eventually("containers gone", Duration::from_secs(30), || {
        (containers() == 0).then_some(())
    });
    // A container's writable layer goes right after the container itself.
    let mut snapshots = Vec::new();
    for _ in 0..100 {
        snapshots = rt.block_on(client.snapshots("overlayfs")).unwrap();
        if snapshots.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        snapshots.len(),
        2,
        "the two images' layers (busybox twice, one layer): {snapshots:?}"
    );
}

/// `orchd up --runtime containerd`: the live view shows an image pull under way (the registry
/// paused with SIGSTOP holds it), then the container runs; Ctrl-C leaves no container behind.
#[test]
fn up_with_containerd_shows_pull_progress() {
    if !require(CONTAINERD_AND_REGISTRY) {
        return;
    }
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};

    let rt = tokio::runtime::Runtime::new().unwrap();
    let ctd = rt
        .block_on(LocalContainerd::start())
        .expect("containerd starts");
    let ns = ctd.namespace();
    let img_dir = ctd.scratch().join("img");
    std::fs::create_dir_all(&img_dir).unwrap();
    let registry = LocalRegistry::start(&[]).expect("docker-registry starts");
    let layout = img_dir.join("layout");
    write_oci_layout(
        &busybox_image(&img_dir.join("busybox"), "busybox").unwrap(),
        &layout,
        "1",
    )
    .unwrap();
    registry
        .push(&layout, "1", "orch/busybox", None)
        .expect("skopeo pushes");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("app");
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir, "shell.yaml", &shell(&registry.address()));

    let signal = |sig: &str| signal_registry(&registry, sig);
    signal("-STOP");
    let socket = ctd.socket();
    let mut up = std::process::Command::new(env!("CARGO_BIN_EXE_orchd"))
        .arg("up")
        .arg(&dir)
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .args(["--refresh-ms", "100", "--runtime", "containerd"])
        .arg("--containerd-socket")
        .arg(&socket)
        .args(["--containerd-namespace", &ns, "--replica-network", "off"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = Arc::new(Mutex::new(String::new()));
    let reader = {
        let out = out.clone();
        let stdout = up.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let mut o = out.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        })
    };
    // Not a terminal: the plain log says what the starting replica waits for.
    let progress = eventually("pull progress in the log", Duration::from_secs(30), || {
        let o = out.lock().unwrap();
        o.lines()
            .find(|l| l.contains("pulling"))
            .and_then(|l| l.split_once("  replica/"))
            .map(|(_, rest)| rest.to_string())
    });
    assert!(
        progress.starts_with("shell-") && progress.contains("orch/busybox:1"),
        "{progress}"
    );
    signal("-CONT");
    eventually("the container runs", Duration::from_secs(30), || {
        let o = out.lock().unwrap();
        o.contains("  service/shell  1/1 ready").then_some(())
    });
    let client = rt.block_on(Containerd::connect(&socket, &ns)).unwrap();
    assert_eq!(rt.block_on(client.containers()).unwrap().len(), 1);
    std::process::Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .unwrap();
    let status = eventually("orchd up exits", Duration::from_secs(30), || {
        up.try_wait().unwrap()
    });
    reader.join().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut up.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "orchd up failed: {err}");
    assert!(rt.block_on(client.containers()).unwrap().is_empty());
}
