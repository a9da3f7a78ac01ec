//! The node agent over the real process runtime (engine on the in-memory store, real child
//! processes): init steps run in order before the main process, once; a failing step is
//! named and retried after the restart backoff, or fails the replica with `restartPolicy:
//! Never`; `valueFrom.field`, `envFrom` and one-key mounts reach the process; `user` runs it
//! as another user (root only).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use orch_core::engine::api;
use orch_core::memstore::MemStore;
use orch_core::model::manifest;
use orch_core::model::object::{Phase, Replica};
use orch_core::runtime::Runtime;
use orch_core::{AgentConfig, Engine};
use orch_runtime::{ProcessConfig, ProcessRuntime};

const DEADLINE: Duration = Duration::from_secs(30);

/// An engine with one agent (`node-a`, restart backoff from 300 ms) over a process runtime
/// in `dir`; stops every workload when dropped.
struct Node {
    engine: Option<Engine>,
    store: Arc<MemStore>,
    runtime: Arc<ProcessRuntime>,
}

impl Node {
    async fn start(dir: &Path) -> Node {
        let store = Arc::new(MemStore::new());
        let mut engine =
            Engine::builder(store.clone(), Arc::new(orch_sched::DefaultScheduler)).start();
        let runtime = Arc::new(
            ProcessRuntime::new(ProcessConfig::new(dir.join("state")))
                .await
                .unwrap(),
        );
        let mut cfg = AgentConfig::new("node-a");
        cfg.addresses = vec!["127.0.0.1".into()];
        cfg.restart_backoff_base = Duration::from_millis(300);
        cfg.restart_backoff_max = Duration::from_secs(2);
        engine.add_agent(runtime.clone(), cfg);
        Node {
            engine: Some(engine),
            store,
            runtime,
        }
    }

    async fn apply(&self, yaml: &str) {
        let objects = manifest::parse("test.yaml", yaml).unwrap();
        api::apply(&*self.store, objects, false).await.unwrap();
    }

    fn replica(&self, svc: &str) -> Option<Replica> {
        let e = self.engine.as_ref().unwrap();
        e.cache()
            .replicas_of_service("default", svc)
            .into_iter()
            .next()
    }

    /// Polls the service's first replica until `check` says something.
    async fn until<T>(&self, svc: &str, what: &str, check: impl Fn(&Replica) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let r = self.replica(svc);
            if let Some(t) = r.as_ref().and_then(&check) {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; replica: {:#?}",
                r.map(|r| r.status)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(e) = self.engine.take() {
            e.shutdown().await;
        }
        for w in self.runtime.list().await.unwrap_or_default() {
            let _ = self.runtime.stop(&w.id, "SIGKILL", Duration::ZERO).await;
            let _ = self.runtime.remove(&w.id).await;
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

async fn logs(rt: &ProcessRuntime, id: &str) -> String {
    use futures::StreamExt;
    let mut s = rt
        .logs(id, orch_core::runtime::LogOptions::default())
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(Ok(c)) = s.next().await {
        out.extend(c);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn service(name: &str, template: &str) -> String {
    format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  replicas: 1\n  template:\n{template}")
}

#[tokio::test]
async fn init_steps_run_in_order_once_before_the_main_process() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path()).await;
    let out = tmp.path().join("order");
    node.apply(&service(
        "app",
        &format!(
            "    env: [{{name: OUT, value: {out}}}]
    command: [/bin/sh, -c, 'echo main >> $OUT; sleep 0.3; exit 1']
    stopGracePeriod: 1s
    init:
      - {{name: first, command: [/bin/sh, -c, 'sleep 0.3; echo first >> $OUT; echo out of first']}}
      - {{name: second, command: [/bin/sh, -c, 'echo second >> $OUT; echo out of second']}}
",
            out = out.display()
        ),
    ))
    .await;
    // While the first step runs the replica says so.
    let msg = node
        .until("app", "the first step running", |r| {
            (r.status.reason.as_str() == "Init").then(|| r.status.message.clone())
        })
        .await;
    assert_eq!(msg, "init step 1/2 (first) running");
    // The main process restarts (it exits 1); the steps do not run again.
    let r = node
        .until("app", "two restarts", |r| {
            (r.status.restarts >= 2).then(|| r.clone())
        })
        .await;
    let lines = read(&out);
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(&lines[..3], ["first", "second", "main"], "{lines:?}");
    assert!(lines[3..].iter().all(|l| *l == "main"), "{lines:?}");
    // The steps' output is in the replica's log, before the main process's runs.
    let log = logs(&node.runtime, &r.runtime_name()).await;
    let (a, b) = (log.find("out of first"), log.find("out of second"));
    assert!(a.is_some() && b.is_some() && a < b, "{log}");
    node.stop().await;
}

#[tokio::test]
async fn a_failing_step_is_named_and_retried_after_the_backoff() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path()).await;
    let dir = tmp.path().display().to_string();
    node.apply(&service(
        "flaky",
        &format!(
            "    env: [{{name: DIR, value: {dir}}}]
    command: [/bin/sh, -c, 'touch $DIR/main; exec sleep 60']
    stopGracePeriod: 1s
    init:
      - {{name: ok, command: [/bin/true]}}
      - {{name: migrate, command: [/bin/sh, -c, 'if [ -e $DIR/tried ]; then exit 0; fi; touch $DIR/tried; echo no database; exit 3']}}
"
        ),
    ))
    .await;
    let failed = node
        .until("flaky", "the step's failure", |r| {
            (r.status.phase == Phase::Failed).then(|| r.status.clone())
        })
        .await;
    assert!(
        failed
            .message
            .contains("init step 2/2 (migrate) failed: exit code 3; last output: no database"),
        "{}",
        failed.message
    );
    assert_eq!(failed.last_exit.as_ref().and_then(|e| e.code), Some(3));
    assert!(!tmp.path().join("main").exists());
    // Retried after the backoff (from the first step), then the main process runs.
    node.until("flaky", "ready after the retry", |r| {
        (r.status.phase == Phase::Ready).then_some(())
    })
    .await;
    assert!(tmp.path().join("main").exists());
    node.stop().await;
}

#[tokio::test]
async fn a_failing_step_fails_a_replica_that_never_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path()).await;
    let main = tmp.path().join("main");
    node.apply(&service(
        "once",
        &format!(
            "    command: [/bin/sh, -c, 'touch {}']
    restartPolicy: Never
    init:
      - {{name: check, command: [/bin/sh, -c, 'exit 2']}}
",
            main.display()
        ),
    ))
    .await;
    let st = node
        .until("once", "failed for good", |r| {
            (r.status.phase == Phase::Failed && r.status.reason.as_str() == "Error")
                .then(|| r.status.clone())
        })
        .await;
    assert_eq!(
        st.message,
        "init step 1/1 (check) failed: exit code 2; restart policy Never"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!main.exists(), "the main process must not run");
    let r = node.replica("once").unwrap();
    assert_eq!(r.status.phase, Phase::Failed);
    // Deleting the service leaves nothing of the failed step in the runtime.
    orch_core::engine::api::delete(
        &*node.store,
        orch_core::model::object::Kind::Service,
        "default",
        "once",
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !node.runtime.list().await.unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the step's run is left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.stop().await;
}

#[tokio::test]
async fn fields_env_from_and_one_key_mounts_reach_the_process() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path()).await;
    let out = tmp.path().join("env");
    node.apply(
        "apiVersion: orch/v1\nkind: Secret\nmetadata: {name: db}\ndata: {password: hunter2, user: app}\n---\napiVersion: orch/v1\nkind: Config\nmetadata: {name: settings}\ndata: {MODE: fast, '1st': x}\n",
    )
    .await;
    node.apply(&service(
        "envy",
        &format!(
            "    labels: {{tier: web}}
    envFrom:
      - {{config: settings, prefix: APP_}}
      - {{secret: missing, optional: true}}
    env:
      - {{name: OUT, value: {out}}}
      - {{name: POD, valueFrom: {{field: metadata.name}}}}
      - {{name: NS, valueFrom: {{field: metadata.namespace}}}}
      - {{name: NODE, valueFrom: {{field: spec.nodeName}}}}
      - {{name: IP, valueFrom: {{field: status.podIP}}}}
      - {{name: TIER, valueFrom: {{field: \"metadata.labels['tier']\"}}}}
      - {{name: NOPE, valueFrom: {{secret: db, key: nope, optional: true}}}}
    mounts:
      - {{path: /run/secrets/pw, secret: db, key: password}}
    command: [/bin/sh, -c, 'echo \"$POD $NS $NODE $IP $TIER $APP_MODE ${{NOPE-unset}} $(cat $ORCH_ROOT/run/secrets/pw)\" > $OUT.tmp; mv $OUT.tmp $OUT; exec sleep 60']
    stopGracePeriod: 1s
",
            out = out.display()
        ),
    ))
    .await;
    let r = node
        .until("envy", "ready", |r| {
            (r.status.phase == Phase::Ready).then(|| r.clone())
        })
        .await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !out.exists() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        read(&out).trim(),
        format!(
            "{} default node-a 127.0.0.1 web fast unset hunter2",
            r.metadata.name
        )
    );
    // The one-key mount is a file, not a directory.
    node.stop().await;
}

#[tokio::test]
async fn a_process_runs_as_the_template_user() {
    if !orch_testkit::require(&["root", "setpriv"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let node = Node::start(tmp.path()).await;
    let out = tmp.path().join("id");
    node.apply("apiVersion: orch/v1\nkind: Secret\nmetadata: {name: tok}\ndata: {token: abc}\n")
        .await;
    node.apply(&service(
        "nobody",
        &format!(
            "    user: '65534:65534'
    mounts: [{{path: /run/secrets/token, secret: tok, key: token}}]
    command: [/bin/sh, -c, 'echo \"$(id -u) $(id -g) $(cat $ORCH_ROOT/run/secrets/token)\" > {out}; exec sleep 60']
    init:
      - {{name: who, command: [/bin/sh, -c, 'id -u > {out}.init']}}
    stopGracePeriod: 1s
",
            out = out.display()
        ),
    ))
    .await;
    node.until("nobody", "ready", |r| {
        (r.status.phase == Phase::Ready).then_some(())
    })
    .await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while read(&out).is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The secret file is the user's to read; init steps run as the user too.
    assert_eq!(read(&out).trim(), "65534 65534 abc");
    assert_eq!(read(&tmp.path().join("id.init")).trim(), "65534");
    node.stop().await;
}
