//! Bad input against a running daemon: each case gets a clear error and a non-zero exit,
//! nothing is applied (multi-document applies are all or nothing), and the daemon keeps running.

mod common;

use std::time::Duration;

use common::*;

const GOOD: &str = "apiVersion: orch/v1\nkind: Service\nmetadata: {name: good}\nspec:\n  template: {command: [sleep, '100']}\n";

fn alias_bomb() -> String {
    let mut y = String::from("apiVersion: orch/v1\nkind: Service\nmetadata: {name: bomb}\nspec:\n  template: {command: [sleep]}\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        y.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    y
}

/// (case, file contents, substrings the error must contain)
fn cases() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        ("malformed yaml", "apiVersion: orch/v1\nkind: Service\nmetadata: {name: x\n".into(), vec!["malformed.yaml", "invalid YAML", "line 3 column 11"]),
        ("unknown field", "apiVersion: orch/v1\nkind: Service\nmetadata: {name: x}\nspec:\n  template: {comand: [sleep]}\n".into(), vec!["document 1", "spec.template", "comand"]),
        ("wrong type", "apiVersion: orch/v1\nkind: Service\nmetadata: {name: x}\nspec:\n  replicas: three\n  template: {command: [sleep]}\n".into(), vec!["spec.replicas", "three"]),
        ("invalid name", "apiVersion: orch/v1\nkind: Service\nmetadata: {name: Web_1}\nspec:\n  template: {command: [sleep]}\n".into(), vec!["metadata.name", "Web_1", "DNS-1123"]),
        ("negative replicas", "apiVersion: orch/v1\nkind: Service\nmetadata: {name: x}\nspec:\n  replicas: -1\n  template: {command: [sleep]}\n".into(), vec!["spec.replicas", "-1", "0 to 100000"]),
        ("duplicate ports", "apiVersion: orch/v1\nkind: Service\nmetadata: {name: x}\nspec:\n  template:\n    command: [sleep]\n    ports: [{name: a, port: 8080}, {name: b, port: 8080}]\n".into(), vec!["spec.template.ports[1].port", "8080", "duplicate port"]),
        ("unknown kind", "apiVersion: orch/v1\nkind: Deployment\nmetadata: {name: x}\n".into(), vec!["kind", "Deployment", "allowed: Service"]),
        ("alias bomb", alias_bomb(), vec!["alias bomb.yaml", "invalid YAML", "too many nodes or aliases"]),
        ("zero restart backoff", "apiVersion: orch/v1\nkind: Service\nmetadata: {name: x}\nspec:\n  template: {command: [sleep], restartBackoffMax: 0s}\n".into(), vec!["spec.template.restartBackoffMax", "\"0s\"", "must be at least 1s"]),
        ("tiny cpu", "apiVersion: orch/v1\nkind: Service\nmetadata: {name: x}\nspec:\n  template: {command: [sleep], resources: {cpu: '0.0000001'}}\n".into(), vec!["spec.template.resources.cpu", "\"0.0000001\"", "the smallest cpu quantity is 1m"]),
        ("duplicate key", "apiVersion: orch/v1\nkind: Service\nmetadata: {name: x}\nspec:\n  template: {command: [sleep]}\nkind: Service\n".into(), vec!["invalid YAML: line 6 column 1: duplicate key \"kind\" (first at line 2 column 1)"]),
        ("too many documents", vec!["apiVersion: orch/v1\nkind: Config\nmetadata: {name: c}\n"; 10_001].join("---\n"), vec!["too-many-documents.yaml: manifest has more than 10000 documents; the limit is 10000"]),
        ("one bad document of three", format!("{GOOD}---\n{}---\napiVersion: orch/v1\nkind: Service\nmetadata: {{name: bad}}\nspec:\n  replicas: -5\n  template: {{command: [sleep]}}\n", GOOD.replace("good", "good-two")), vec!["document 3", "spec.replicas"]),
    ]
}

#[test]
fn bad_input_is_refused_clearly_and_nothing_is_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path());
    for (case, text, expect) in cases() {
        let file = format!("{case}.yaml").replace(' ', "-");
        let file = if case == "malformed yaml" {
            "malformed.yaml".to_string()
        } else if case == "alias bomb" {
            "alias bomb.yaml".to_string()
        } else {
            file
        };
        let path = write(tmp.path(), &file, &text);
        let out = d.ctl(&["apply", "-f", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        println!("{case}: {}", err.trim());
        assert!(!out.status.success(), "{case}: must exit non-zero");
        for e in expect {
            assert!(err.contains(e), "{case}: error should mention {e:?}: {err}");
        }
        assert!(
            !err.contains("DuplicateKeyPolicy"),
            "{case}: no parser-library advice: {err}"
        );
        assert!(d.alive(), "{case}: the daemon must keep running");
        let services = d.ctl_ok(&["get", "services", "-o", "json"]);
        assert!(
            services.trim().is_empty() || !services.contains("\"name\""),
            "{case}: nothing may be applied, found {services}"
        );
    }

    // A 100 MB file is refused from its size alone.
    let big = tmp.path().join("big.yaml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let out = d.ctl(&["apply", "-f", big.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("big.yaml") && err.contains("limit"),
        "{err}"
    );

    // The daemon validates too (a client that skips local checks gets the same answer).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = orch_api::Client::new(&d.socket);
    let manifests = vec![orch_api::protocol::ManifestText {
        source: "raw.yaml".into(),
        text: cases()[4].1.clone(),
    }];
    let e = rt
        .block_on(client.apply(manifests, false, None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("raw.yaml") && e.contains("spec.replicas"), "{e}");
    // An oversized request line is refused with the limit named.
    let huge = vec![orch_api::protocol::ManifestText {
        source: "x".into(),
        text: "a".repeat(20 << 20),
    }];
    let e = rt
        .block_on(client.apply(huge, false, None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("the limit is 16777216 bytes"), "{e}");

    // Bad exec requests name what is wrong.
    for (args, expect) in [
        (
            vec!["exec", "nope", "--timeout", "2h", "--", "true"],
            "--timeout",
        ),
        (
            vec!["exec", "nope", "--timeout", "soon", "--", "true"],
            "\"soon\"",
        ),
        (
            vec!["exec", "nope", "--", "true"],
            "replica \"nope\" not found",
        ),
    ] {
        let out = d.ctl(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expect),
            "{args:?}: {err}"
        );
    }
    let e = rt
        .block_on(client.exec("default", "nope", vec!["true".into()], 0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("timeout 0s") && e.contains("allowed"), "{e}");

    // Fields orch sets are ignored, as kubectl apply ignores status, and apply says so.
    let status = write(
        tmp.path(),
        "status.yaml",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: stat, uid: forged, generation: 9}\nspec:\n  replicas: 0\n  template: {command: [sleep, '100']}\nstatus: {readyReplicas: 5}\n",
    );
    let out = d.ctl(&["apply", "-f", status.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for w in [
        "status: ignored: set by orch, not by manifests",
        "metadata.uid: ignored: set by orch, not by manifests",
        "metadata.generation: ignored: set by orch, not by manifests",
    ] {
        let w = format!("warning: {}: document 1: {w}", status.display());
        assert!(err.contains(&w), "missing {w:?} in {err}");
    }
    let svc: serde_json::Value =
        serde_json::from_str(&d.ctl_ok(&["get", "service", "stat", "-o", "json"])).unwrap();
    assert_ne!(svc["metadata"]["uid"], "forged");
    assert_eq!(svc["metadata"]["generation"], 1);
    d.ctl_ok(&["delete", "service", "stat"]);

    // Still alive and empty; a good apply then works.
    assert!(d.alive());
    let good = write(tmp.path(), "good.yaml", GOOD);
    assert!(d
        .ctl_ok(&["apply", "-f", good.to_str().unwrap()])
        .contains("created"));
    eventually("good runs", Duration::from_secs(20), || {
        d.replicas()
            .first()
            .is_some_and(|r| r["status"]["phase"] == "Ready")
            .then_some(())
    });
    d.ctl_ok(&["delete", "service", "good"]);
    eventually("cleaned", Duration::from_secs(20), || {
        d.replicas().is_empty().then_some(())
    });
}

/// `orchd server --socket PATH`, with the process's output; fails the test if it runs longer
/// than 20 s (a refused path must end it at once).
fn server_on(dir: &std::path::Path, socket: &std::path::Path) -> std::process::Output {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_orchd"))
        .args(["server", "--node", "test-node", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--socket")
        .arg(socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    let start = std::time::Instant::now();
    while !waiter.is_finished() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
            let out = waiter.join().unwrap();
            panic!(
                "orchd kept running on {}: {}",
                socket.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().unwrap()
}

#[test]
fn a_socket_path_that_is_not_a_stale_socket_is_never_removed() {
    let tmp = tempfile::tempdir().unwrap();
    // Any file: refused, kept.
    let important = write(tmp.path(), "important.txt", "keep me\n");
    let out = server_on(tmp.path(), &important);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must refuse: {err}");
    assert!(
        err.contains("important.txt") && err.contains("not a socket"),
        "{err}"
    );
    assert!(!err.contains("serving on"), "{err}");
    assert_eq!(std::fs::read_to_string(&important).unwrap(), "keep me\n");
    // The store itself: refused, and the store keeps what it holds.
    let mut d = Daemon::start(tmp.path());
    let good = write(tmp.path(), "good.yaml", GOOD);
    d.ctl_ok(&["apply", "-f", good.to_str().unwrap()]);
    d.stop();
    let store = tmp.path().join("data/state.redb");
    let out = server_on(tmp.path(), &store);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("state.redb"), "{err}");
    assert!(store.exists(), "the store is kept");
    // A stale socket (nothing answers on it) is replaced; the store still has the service.
    drop(std::os::unix::net::UnixListener::bind(tmp.path().join("orchd.sock")).unwrap());
    assert!(tmp.path().join("orchd.sock").exists());
    let d = Daemon::start(tmp.path());
    assert!(d.ctl_ok(&["get", "services"]).contains("good"));
    // A live daemon's socket is refused too.
    let out = server_on(&tmp.path().join("other"), &d.socket);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("in use"), "{err}");
    assert!(d.ctl_ok(&["get", "services"]).contains("good"));
    d.ctl_ok(&["delete", "service", "good"]);
}

#[test]
fn namespaces_deletes_and_errors_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let svc = GOOD.replace("{name: good}", "{name: svc}");
    let file = write(tmp.path(), "svc.yaml", &svc);
    let f = file.to_str().unwrap();
    let ns_of = |ns: &str| -> Vec<String> {
        let out = d.ctl_ok(&["get", "services", "-n", ns, "-o", "json"]);
        if out.trim().is_empty() {
            return Vec::new();
        }
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let items = match v.get("items") {
            Some(items) => items.as_array().cloned().unwrap(),
            None => vec![v],
        };
        items
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    // -n is the namespace of objects that name none, for apply and for delete.
    assert_eq!(d.ctl_ok(&["apply", "-f", f]).trim(), "service/svc created");
    assert_eq!(
        d.ctl_ok(&["-n", "dev", "apply", "-f", f]).trim(),
        "service/svc (dev) created"
    );
    assert_eq!(ns_of("dev"), ["svc"]);
    assert_eq!(ns_of("default"), ["svc"]);
    assert_eq!(
        d.ctl_ok(&["-n", "dev", "delete", "-f", f]).trim(),
        "service/svc (dev) deleted"
    );
    assert_eq!(ns_of("default"), ["svc"], "default/svc is not touched");
    assert!(ns_of("dev").is_empty());
    // A file naming another namespace than -n is refused, naming both.
    let prod = write(
        tmp.path(),
        "prod.yaml",
        &svc.replace("{name: svc}", "{name: svc, namespace: prod}"),
    );
    for cmd in ["apply", "delete"] {
        let out = d.ctl(&["-n", "dev", cmd, "-f", prod.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("prod.yaml")
                && err.contains("\"prod\"")
                && err.contains("\"dev\""),
            "{cmd}: {err}"
        );
    }
    assert!(ns_of("prod").is_empty() && ns_of("dev").is_empty());
    // Deleting twice: the second says the objects are already gone; --ignore-not-found.
    d.ctl_ok(&["delete", "-f", f]);
    let out = d.ctl(&["delete", "-f", f]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("not found") && err.contains("nothing to delete"),
        "{err}"
    );
    assert!(!err.contains("some deletions failed"), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "one error: {err}");
    let out = d.ctl(&["delete", "-f", f, "--ignore-not-found"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = d.ctl(&["delete", "service", "svc", "--ignore-not-found"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nodes have no namespace: none is mentioned.
    let out = d.ctl(&["delete", "node", "nope"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("node \"nope\" not found"),
        "{err}"
    );
    assert!(!err.contains("namespace"), "{err}");
    // A connection error names its cause once.
    let out = std::process::Command::new(workspace_bin("orchctl"))
        .args(["--socket", "/nope", "get", "services"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("/nope"), "{err}");
    assert_eq!(err.matches("(os error 2)").count(), 1, "{err}");
    // A device reports length 0: what is read is capped all the same.
    let out = d.ctl(&["apply", "-f", "/dev/zero"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/dev/zero") && err.contains("4194304 bytes"),
        "{err}"
    );
}
