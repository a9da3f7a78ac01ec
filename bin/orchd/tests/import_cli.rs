//! Kubernetes manifests and Compose files through orchctl against a running daemon (process
//! runtime: image replicas stay pending here, so these tests prove conversion, apply, dry
//! runs, delete -f, compose up/ps/down and refusals; running them on containers is
//! `tests/import.rs`): `orchctl apply|delete -f`, `orchctl convert`, `orchctl compose`, and bad
//! input refused naming file, document and field with nothing applied.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const DEPLOYMENT_AND_SERVICE: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports: [{containerPort: 80, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
";

const COMPOSE: &str = "services:
  web:
    image: nginx:1.27
    ports: [\"8080:80\"]
    depends_on: [cache]
    volumes: [\"pages:/usr/share/nginx/html\"]
  cache:
    image: redis:7
    ports: [\"6380:6379\"]
volumes:
  pages: {}
";

/// `orchctl ARGS` without a daemon (for `convert`), in `dir`.
fn orchctl_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(workspace_bin("orchctl"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run orchctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every object of every kind in every namespace, as `KIND/NAME` lines (events excepted).
fn everything(d: &Daemon) -> Vec<String> {
    let mut out = Vec::new();
    for kind in [
        "services", "jobs", "cronjobs", "routes", "secrets", "configs",
    ] {
        let json = d.ctl_ok(&["get", kind, "-A", "-o", "json"]);
        if json.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let items = match v.get("items") {
            Some(items) => items.as_array().cloned().unwrap_or_default(),
            None => vec![v],
        };
        for o in items {
            out.push(format!(
                "{kind}/{}",
                o["metadata"]["name"].as_str().unwrap_or_default()
            ));
        }
    }
    out
}

#[test]
fn get_routes_and_cronjobs_list_their_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    for kind in ["routes", "route", "rt", "cronjobs", "cronjob", "cj"] {
        let out = d.ctl(&["get", kind]);
        assert!(out.status.success(), "{kind}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("No resources found"), "{kind}");
    }
}

#[test]
fn convert_prints_orch_manifests_and_refuses_compose_files_inside_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let orch = "apiVersion: orch/v1\nkind: Service\nmetadata: {name: app}\nspec:\n  template: {command: [sleep, '100']}\nstatus: {replicas: 3}\n";
    let path = write(tmp.path(), "app.yaml", orch);
    let out = orchctl_in(tmp.path(), &["convert", "-f", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert!(
        yaml.contains("kind: Service") && yaml.contains("name: app"),
        "{yaml}"
    );
    assert!(!yaml.contains("status"), "{yaml}");
    assert!(
        text(&out.stderr).contains("app.yaml: document 1: status: ignored"),
        "{}",
        text(&out.stderr)
    );
    // --strict: that warning refuses.
    let out = orchctl_in(
        tmp.path(),
        &["convert", "--strict", "-f", path.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("app.yaml: document 1: status"),
        "{}",
        text(&out.stderr)
    );
    // JSON.
    let out = orchctl_in(
        tmp.path(),
        &["convert", "-o", "json", "-f", path.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "Service");
    // A Compose file in a directory of manifests is named and refused.
    let dir = tmp.path().join("app");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "app.yaml", orch);
    write(&dir, "compose.yaml", COMPOSE);
    let out = orchctl_in(tmp.path(), &["convert", "-f", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("compose.yaml: a Compose file in a directory of manifests")
            && err.contains("orchctl compose up -f"),
        "{err}"
    );
}

#[test]
fn apply_strict_refuses_an_orch_file_with_ignored_fields_and_applies_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let good = "apiVersion: orch/v1\nkind: Config\nmetadata: {name: c}\ndata: {a: b}\n";
    let with_status = "apiVersion: orch/v1\nkind: Service\nmetadata: {name: app}\nspec:\n  template: {command: [sleep, '100']}\nstatus: {replicas: 3}\n";
    let path = write(tmp.path(), "app.yaml", &format!("{good}---\n{with_status}"));
    let out = d.ctl(&["apply", "--strict", "-f", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("app.yaml: document 2: status: ignored"),
        "{}",
        text(&out.stderr)
    );
    assert!(everything(&d).is_empty(), "{:?}", everything(&d));
    // Without --strict it applies, saying what it ignored (once).
    let out = d.ctl(&["apply", "-f", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr).matches("status: ignored").count(), 1);
}

#[test]
fn a_kubernetes_deployment_and_service_apply_dry_run_diff_and_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let path = write(tmp.path(), "web.yaml", DEPLOYMENT_AND_SERVICE);
    let file = path.to_str().unwrap();

    // convert: what it becomes.
    let out = orchctl_in(tmp.path(), &["convert", "-f", file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert!(
        yaml.contains("kind: Service") && yaml.contains("kind: Route"),
        "{yaml}"
    );
    assert!(yaml.contains("orch.dev/kube-kind: Deployment"), "{yaml}");

    // --dry-run writes nothing.
    let out = d.ctl(&["apply", "--dry-run", "-f", file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("service/web created (dry run)"), "{said}");
    assert!(said.contains("route/web created (dry run)"), "{said}");
    assert!(everything(&d).is_empty());

    // --plan: where the replicas would go (here: nowhere, the node runs no images).
    let out = d.ctl(&["apply", "--plan", "-f", file]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // apply: both objects, and a warning that the node has no replica networking.
    let out = d.ctl(&["apply", "-f", file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no node has replica networking"),
        "{}",
        text(&out.stderr)
    );
    let mut all = everything(&d);
    all.sort();
    assert_eq!(all, ["routes/web", "services/web"]);
    assert!(d.ctl_ok(&["get", "routes"]).contains("web"));

    // A change shows as a diff in --dry-run.
    let scaled = write(
        tmp.path(),
        "web.yaml",
        &DEPLOYMENT_AND_SERVICE.replace("replicas: 2", "replicas: 3"),
    );
    let out = d.ctl(&["apply", "--dry-run", "-f", scaled.to_str().unwrap()]);
    let said = text(&out.stdout);
    assert!(said.contains("service/web configured (dry run)"), "{said}");
    assert!(said.contains("spec.replicas"), "{said}");

    // delete -f removes what the file made.
    let out = d.ctl(&["delete", "-f", file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("route/web deleted"));
    eventually("everything gone", Duration::from_secs(20), || {
        everything(&d).is_empty().then_some(())
    });
}

/// The voting app's Kubernetes folder (a Deployment and a Service per file) as one input:
/// every Service finds its pods in another file, so no warning; a dry run creates nothing.
#[test]
fn a_folder_of_kubernetes_files_is_one_input() {
    let dir = Path::new("/work/shared/fixtures/example-voting-app/k8s-specifications");
    if !dir.is_dir() {
        println!(
            "skipped: a_folder_of_kubernetes_files_is_one_input: the shared fixtures are not here"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let out = d.ctl(&["apply", "--dry-run", "-f", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    for name in ["db", "redis", "result", "vote"] {
        assert!(
            said.contains(&format!("service/{name} created (dry run)")),
            "{said}"
        );
        assert!(
            said.contains(&format!("route/{name} created (dry run)")),
            "{said}"
        );
    }
    assert!(said.contains("service/worker created (dry run)"), "{said}");
    assert!(
        !text(&out.stderr).contains("selects no pod template"),
        "{}",
        text(&out.stderr)
    );
    assert!(everything(&d).is_empty());
}

#[test]
fn compose_up_ps_down_on_a_compose_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let project = tmp.path().join("shop");
    std::fs::create_dir(&project).unwrap();
    write(&project, "compose.yaml", COMPOSE);
    let ctl = |args: &[&str]| {
        Command::new(workspace_bin("orchctl"))
            .current_dir(&project)
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .output()
            .expect("run orchctl")
    };
    // up: the file found in the current directory, the project named after it. --wait
    // gives up after its timeout naming what is not ready (nothing runs images here).
    let out = ctl(&["compose", "up", "--wait", "--wait-timeout", "1"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("project shop: not ready after 1 s: "), "{err}");
    assert!(err.contains("service web (0/1 ready"), "{err}");
    let said = text(&out.stdout);
    assert!(said.contains("service/web (shop) created"), "{said}");
    assert!(said.contains("service/cache (shop) created"), "{said}");
    let services = d.ctl_ok(&["-n", "shop", "get", "services"]);
    assert!(
        services.contains("web") && services.contains("cache"),
        "{services}"
    );

    // ps: cache's replica (pending here: the node runs no images). web depends on cache
    // (`service_started`), so it has no replica until one of cache's runs, and says so.
    let ps = eventually("cache's replica listed", Duration::from_secs(20), || {
        let out = ctl(&["compose", "ps"]);
        let t = text(&out.stdout);
        t.contains("cache-1").then_some(t)
    });
    assert!(
        ps.contains("SERVICE") && ps.contains("STATE") && ps.contains("PORTS"),
        "{ps}"
    );
    assert!(ps.contains("6380->6379/tcp"), "{ps}");
    assert!(!ps.contains("web-1"), "web started before cache: {ps}");
    let web = d.ctl_ok(&["-n", "shop", "describe", "service", "web"]);
    assert!(web.contains("waiting for cache"), "{web}");

    // logs: nothing ran, but it answers (per replica) without failing.
    let out = ctl(&["compose", "logs"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // down: every object of the project, said so; the named volume kept.
    let out = ctl(&["compose", "down"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("service/web (shop) deleted"), "{said}");
    assert!(said.contains("service/cache (shop) deleted"), "{said}");
    assert!(
        text(&out.stderr).contains("volumes kept: shop-pages"),
        "{}",
        text(&out.stderr)
    );
    assert!(everything(&d).is_empty(), "{:?}", everything(&d));
    let out = ctl(&["compose", "down"]);
    assert!(text(&out.stderr).contains("nothing to remove"));

    // -p and -f name another project and file.
    let out = ctl(&[
        "compose",
        "-p",
        "other",
        "-f",
        "compose.yaml",
        "up",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("service/web (other) created (dry run)"));
}

/// Each bad input is refused with a message naming the file, the document (or the Compose
/// service) and the field; nothing is applied.
#[test]
fn bad_kubernetes_and_compose_input_is_refused_naming_file_document_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let two_containers = DEPLOYMENT_AND_SERVICE.replace(
        "        ports: [{containerPort: 80, name: http}]\n",
        "        ports: [{containerPort: 80, name: http}]\n      - {name: sidecar, image: busybox}\n",
    );
    let cases: Vec<(&str, &str, String, Vec<&str>)> = vec![
            (
                "unknown kind",
                "kinds.yaml",
                format!("{DEPLOYMENT_AND_SERVICE}---\napiVersion: example.com/v1\nkind: Frobnicator\nmetadata: {{name: x}}\n"),
                vec!["kinds.yaml", "document 3", "Frobnicator"],
            ),
            (
                "two containers",
                "pod.yaml",
                two_containers,
                vec!["pod.yaml", "document 1", "spec.template.spec.containers"],
            ),
            (
                "broken base64",
                "secret.yaml",
                format!("{DEPLOYMENT_AND_SERVICE}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\ndata: {{password: 'not base64!'}}\n"),
                vec!["secret.yaml", "document 3", "data[\"password\"]", "base64"],
            ),
            (
                "compose cycle",
                "cycle.yaml",
                "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [a]}\n"
                    .to_string(),
                vec!["cycle.yaml", "depends_on", "cycle"],
            ),
            (
                "unknown compose key",
                "unknown.yaml",
                "services:\n  a: {image: x, colour: blue}\n".to_string(),
                vec!["unknown.yaml", "colour"],
            ),
    ];
    for (case, file, contents, expect) in cases {
        let path = write(tmp.path(), file, &contents);
        for verb in [
            &["apply", "-f"][..],
            &["apply", "--dry-run", "-f"],
            &["delete", "-f"],
        ] {
            let mut args = verb.to_vec();
            args.push(path.to_str().unwrap());
            let out = d.ctl(&args);
            let err = text(&out.stderr);
            println!("{case} ({verb:?}): {}", err.trim());
            assert!(!out.status.success(), "{case}: must fail");
            for e in &expect {
                assert!(err.contains(e), "{case}: error should name {e:?}: {err}");
            }
            assert!(!err.contains("panicked"), "{case}: {err}");
            assert!(everything(&d).is_empty(), "{case}: nothing may be applied");
        }
    }
    // A Service selecting nothing is a warning (its route waits for endpoints); --strict
    // refuses it, naming the field.
    let lonely = write(
        tmp.path(),
        "lonely.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: lonely}\nspec:\n  selector: {app: nobody}\n  ports: [{port: 80}]\n",
    );
    let out = d.ctl(&["apply", "--strict", "-f", lonely.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("lonely.yaml: document 1: spec.selector")
            && err.contains("selects no pod template"),
        "{err}"
    );
    assert!(everything(&d).is_empty());
    let out = d.ctl(&["apply", "--dry-run", "-f", lonely.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("warning: "),
        "{}",
        text(&out.stderr)
    );
}

/// `orchd up DIR` with a Compose file in DIR runs that file (in the project's namespace).
#[test]
fn orchd_up_runs_the_compose_file_of_a_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("upapp");
    std::fs::create_dir(&app).unwrap();
    write(&app, "docker-compose.yml", COMPOSE);
    let state = tmp.path().join("state");
    let up = Stopped(Some(
        Command::new(env!("CARGO_BIN_EXE_orchd"))
            .arg("up")
            .arg(&app)
            .arg("--state-dir")
            .arg(&state)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let d = Daemon {
        dir: tmp.path().to_path_buf(),
        socket: state.join("orchd.sock"),
        child: None,
    };
    let services = eventually("the project's services", Duration::from_secs(20), || {
        let out = d.ctl(&["-n", "upapp", "get", "services"]);
        let t = text(&out.stdout);
        (t.contains("web") && t.contains("cache")).then_some(t)
    });
    assert!(services.contains("web"), "{services}");
    drop(up);
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped, also when a test fails.
struct Stopped(Option<std::process::Child>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            terminate(c);
        }
    }
}

/// `compose ps`, `logs` and `down -v` over a project's real (process) replicas: objects
/// labelled with the project in its namespace, as `compose up` makes them.
#[test]
fn compose_ps_logs_and_down_v_on_running_replicas() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(tmp.path(), &["--dns-listen", "off"]);
    let project = "orch.dev/compose-project: shop";
    let manifest = format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: web, namespace: shop, labels: {{{project}}}}}\nspec:\n  replicas: 2\n  template:\n    command: [/bin/sh, -c, 'echo \"line one of $ORCH_REPLICA\"; printf \"line two\\n\"; trap \"exit 0\" TERM; while true; do sleep 0.2; done']\n    stopGracePeriod: 1s\n    mounts: [{{volume: shop-data, path: /data}}]\n---\napiVersion: orch/v1\nkind: Config\nmetadata: {{name: settings, namespace: shop, labels: {{{project}}}}}\ndata: {{a: b}}\n---\napiVersion: orch/v1\nkind: Config\nmetadata: {{name: not-ours, namespace: shop}}\ndata: {{a: b}}\n"
    );
    let path = write(tmp.path(), "shop.yaml", &manifest);
    d.ctl_ok(&["apply", "-f", path.to_str().unwrap()]);
    let ps = eventually("two replicas ready", Duration::from_secs(30), || {
        let t = d.ctl_ok(&["compose", "-p", "shop", "ps"]);
        (t.matches("Ready").count() == 2).then_some(t)
    });
    assert!(ps.contains("web-1") && ps.contains("web-2"), "{ps}");
    assert!(ps.contains("127.0.0.1") || ps.contains("(host)"), "{ps}");

    // logs: every line of both replicas, each behind its prefix (no colour: not a terminal).
    let logs = eventually("both replicas' lines", Duration::from_secs(20), || {
        let t = d.ctl_ok(&["compose", "-p", "shop", "logs"]);
        (t.matches("line two").count() == 2).then_some(t)
    });
    for prefix in ["web-1 | line one of web-", "web-2 | line one of web-"] {
        assert!(logs.contains(prefix), "{logs}");
    }
    assert!(logs.lines().all(|l| l.starts_with("web-")), "{logs}");
    assert!(!logs.contains('\x1b'), "{logs}");
    let only = d.ctl(&["compose", "-p", "shop", "logs", "nope"]);
    assert!(!only.status.success());
    assert!(text(&only.stderr).contains("no service \"nope\" in project shop; its services: web"));

    // down -v: the project's objects (not the unlabelled config) and its volume.
    eventually(
        "the node reports the volume",
        Duration::from_secs(10),
        || {
            d.ctl_ok(&["volume", "ls"])
                .contains("shop-data")
                .then_some(())
        },
    );
    let out = d.ctl(&["compose", "-p", "shop", "down", "-v"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("service/web (shop) deleted"), "{said}");
    assert!(said.contains("config/settings (shop) deleted"), "{said}");
    assert!(
        said.contains("volume shop-data removed from node test-node"),
        "{said}"
    );
    assert!(!said.contains("not-ours"), "{said}");
    assert_eq!(everything(&d), ["configs/not-ours"]);
    // The node's list of volumes follows with its next heartbeat.
    eventually(
        "the volume gone from the node",
        Duration::from_secs(20),
        || (!d.ctl_ok(&["volume", "ls"]).contains("shop-data")).then_some(()),
    );
}
