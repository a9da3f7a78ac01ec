//! Ordered services, per-replica volumes, dependsOn and cron jobs: the whole engine over the
//! in-memory store and the fake runtime, with tokio's paused clock (cron times come from the
//! wall clock: runs due now are set up by giving cron jobs a creation time in the past).

mod common;

use common::{eventually, ready, replicas};

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use orch_core::engine::api;
use orch_core::fake::FakeRuntime;
use orch_core::memstore::MemStore;
use orch_core::model::manifest;
use orch_core::model::object::{CronJob, Job, JobState, Kind, Object, Phase};
use orch_core::model::quantity::Timestamp;
use orch_core::model::validate::validate;
use orch_core::node::VolumeLayout;
use orch_core::runtime::MountSource;
use orch_core::store::{create_op, Store};
use orch_core::{AgentConfig, Engine};
use orch_sched::DefaultScheduler;

fn parse(y: &str) -> Object {
    manifest::parse("test.yaml", y).unwrap().remove(0)
}

/// `y` parsed and validated, or the errors as `PATH: MESSAGE`.
fn checked(y: &str) -> Result<Object, Vec<String>> {
    match manifest::parse("test.yaml", y) {
        Ok(mut o) => {
            let o = o.remove(0);
            let errs: Vec<String> = validate(&o)
                .into_iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect();
            if errs.is_empty() {
                Ok(o)
            } else {
                Err(errs)
            }
        }
        Err(e) => Err(e
            .0
            .iter()
            .map(|m| match &m.field {
                Some(f) => format!("{}: {}", f.path, f.message),
                None => m.message.clone(),
            })
            .collect()),
    }
}

fn service_yaml(name: &str, replicas: u32, extra: &str) -> String {
    format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  template:\n    command: [server]\n{extra}")
}

fn job_yaml(name: &str, extra: &str) -> String {
    format!("apiVersion: orch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n  template:\n    command: [migrate]\n    restartPolicy: Never\n{extra}")
}

fn service(name: &str, replicas: u32, extra: &str) -> Object {
    parse(&service_yaml(name, replicas, extra))
}

fn job(name: &str, extra: &str) -> Object {
    parse(&job_yaml(name, extra))
}

fn engine(store: Arc<MemStore>) -> Engine {
    Engine::builder(store, Arc::new(DefaultScheduler)).start()
}

/// An engine with one node, `node-a`, on the fake runtime.
fn one_node() -> (Arc<MemStore>, Engine, FakeRuntime) {
    let store = Arc::new(MemStore::new());
    let mut e = engine(store.clone());
    let rt = FakeRuntime::default();
    e.add_agent(Arc::new(rt.clone()), AgentConfig::new("node-a"));
    (store, e, rt)
}

fn names(e: &Engine, svc: &str) -> BTreeSet<String> {
    replicas(e, svc)
        .into_iter()
        .map(|r| r.metadata.name)
        .collect()
}

fn status_message(e: &Engine, svc: &str) -> String {
    e.cache()
        .service(&format!("/services/default/{svc}"))
        .map(|s| s.status.message)
        .unwrap_or_default()
}

fn job_of(e: &Engine, name: &str) -> Option<Job> {
    match e
        .cache()
        .get(Kind::Job, &Kind::Job.key("default", name))
        .as_deref()
    {
        Some(Object::Job(j)) => Some((**j).clone()),
        _ => None,
    }
}

/// Every existing ordinal's predecessors exist, and no other names: what ordered start and
/// highest-first scale-down keep at every moment.
fn prefix_closed(set: &BTreeSet<String>, svc: &str) -> bool {
    set.iter().all(|n| {
        let i: u32 = n
            .strip_prefix(&format!("{svc}-"))
            .and_then(|d| d.parse().ok())
            .unwrap_or(u32::MAX);
        i != u32::MAX && (0..i).all(|j| set.contains(&format!("{svc}-{j}")))
    })
}

#[tokio::test(start_paused = true)]
async fn an_ordered_service_starts_in_order_scales_down_from_the_top_and_replaces_under_the_same_name(
) {
    let store = Arc::new(MemStore::new());
    let mut e = engine(store.clone());
    e.add_agent(Arc::new(FakeRuntime::default()), AgentConfig::new("node-a"));
    e.add_agent(Arc::new(FakeRuntime::default()), AgentConfig::new("node-b"));
    api::apply(&*store, vec![service("web", 3, "  mode: ordered\n")], false)
        .await
        .unwrap();
    // While they come up: never a replica whose predecessors are not all there, and a new
    // ordinal only once the one before is ready.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while ready(&e, "web") < 3 {
        let reps = replicas(&e, "web");
        let set: BTreeSet<String> = reps.iter().map(|r| r.metadata.name.clone()).collect();
        assert!(prefix_closed(&set, "web"), "{set:?}");
        for r in &reps {
            let i: u32 = r.metadata.name["web-".len()..].parse().unwrap();
            if i > 0 {
                let before = reps
                    .iter()
                    .find(|p| p.metadata.name == format!("web-{}", i - 1))
                    .unwrap();
                assert!(
                    before.status.started_at.is_some()
                        && before.status.started_at <= r.metadata.creation_timestamp,
                    "{} created before {} started",
                    r.metadata.name,
                    before.metadata.name
                );
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "3 ready: {set:?}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        names(&e, "web"),
        ["web-0", "web-1", "web-2"].map(String::from).into()
    );
    // A deleted replica comes back under its name.
    let gone = replicas(&e, "web")
        .into_iter()
        .find(|r| r.metadata.name == "web-1")
        .unwrap();
    api::delete(&*store, Kind::Replica, "default", "web-1")
        .await
        .unwrap();
    eventually("web-1 again", || {
        replicas(&e, "web").iter().any(|r| {
            r.metadata.name == "web-1"
                && r.metadata.uid != gone.metadata.uid
                && r.status.phase == Phase::Ready
        })
    })
    .await;
    // Scaled to 1: web-2 goes before web-1.
    api::scale(&*store, "default", "web", 1).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while names(&e, "web") != ["web-0".to_string()].into() {
        let set = names(&e, "web");
        assert!(prefix_closed(&set, "web"), "{set:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "scale down: {set:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    e.shutdown().await;
}

static DIRS: AtomicU32 = AtomicU32::new(0);

/// A temporary directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "orch-workloads-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn with_volumes(node: &str, dir: &TempDir) -> AgentConfig {
    let mut cfg = AgentConfig::new(node);
    cfg.capacity.cpu = Some(orch_core::model::quantity::Cpu(4000));
    cfg.volumes = Some(VolumeLayout::at(dir.0.join(node)));
    cfg
}

#[tokio::test(start_paused = true)]
async fn per_replica_volumes_are_named_for_the_replica_and_bring_it_back_to_their_node() {
    let dir = TempDir::new();
    let store = Arc::new(MemStore::new());
    let mut e = engine(store.clone());
    let a = FakeRuntime::default();
    e.add_agent(Arc::new(a.clone()), with_volumes("node-a", &dir));
    let web = parse("apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  replicas: 1\n  mode: ordered\n  template:\n    command: [server]\n    resources: {cpu: 100m}\n    mounts:\n    - {path: /data, volume: www, perReplica: true}\n");
    // node-a gets busy: the scheduler would rather put anything new on node-b.
    let busy = service("busy", 3, "    resources: {cpu: '1'}\n");
    api::apply(&*store, vec![web, busy], false).await.unwrap();
    eventually("web-0 and busy ready", || {
        ready(&e, "web") == 1 && ready(&e, "busy") == 3
    })
    .await;
    let id = replicas(&e, "web")[0].runtime_name();
    let spec = a.spec_of(&id).expect("web-0 runs on node-a");
    let dirs: Vec<_> = spec
        .mounts
        .iter()
        .filter_map(|m| match &m.source {
            MountSource::Dir(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(dirs, [dir.0.join("node-a").join("www-web-0")]);
    assert!(dirs[0].is_dir());
    // node-a reports the volume; a second, empty node joins (spread would pick it).
    eventually("node-a holds www-web-0", || {
        e.cache().nodes().iter().any(|n| {
            n.metadata.name == "node-a" && n.status.volumes.contains(&"www-web-0".to_string())
        })
    })
    .await;
    e.add_agent(
        Arc::new(FakeRuntime::default()),
        with_volumes("node-b", &dir),
    );
    eventually("node-b ready", || e.cache().nodes().len() == 2).await;
    let before = replicas(&e, "web")[0].metadata.uid.clone();
    api::delete(&*store, Kind::Replica, "default", "web-0")
        .await
        .unwrap();
    eventually("web-0 back", || {
        replicas(&e, "web")
            .iter()
            .any(|r| r.metadata.uid != before && r.spec.node.is_some())
    })
    .await;
    let back = replicas(&e, "web").into_iter().next().unwrap();
    assert_eq!(back.metadata.name, "web-0");
    assert_eq!(
        back.spec.node.as_deref(),
        Some("node-a"),
        "back to its volume"
    );
    // A new replica, web-1, gets its own volume (anywhere: nobody holds www-web-1 yet).
    api::scale(&*store, "default", "web", 2).await.unwrap();
    eventually("web-1 ready", || ready(&e, "web") == 2).await;
    let web1 = replicas(&e, "web")
        .into_iter()
        .find(|r| r.metadata.name == "web-1")
        .unwrap();
    let node = web1.spec.node.clone().unwrap();
    assert!(dir.0.join(&node).join("www-web-1").is_dir());
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn depends_on_holds_a_service_until_its_dependency_is_ready() {
    let (store, e, rt) = one_node();
    let web = service(
        "web",
        2,
        "  dependsOn:\n  - {name: db, condition: ready}\n  - {name: cache}\n",
    );
    api::apply(&*store, vec![web], false).await.unwrap();
    eventually("web says it waits for both", || {
        status_message(&e, "web") == "waiting for service db (not found), service cache (not found)"
    })
    .await;
    // db (ordered, so its replica's name is known: db-0) fails its readiness probe until
    // the test says otherwise.
    rt.set_probe_result("default.db-0", Err("not yet".into()));
    let db = service(
        "db",
        1,
        "    readinessProbe: {exec: {command: [check]}, period: 200ms}\n  mode: ordered\n",
    );
    api::apply(&*store, vec![db, service("cache", 1, "")], false)
        .await
        .unwrap();
    eventually("waits for db to be ready", || {
        status_message(&e, "web") == "waiting for db to be ready (0/1)"
    })
    .await;
    assert!(ready(&e, "cache") == 1 && replicas(&e, "db")[0].status.phase.is_up());
    // Held while db runs but is not ready.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(replicas(&e, "web").is_empty());
    let opened = Timestamp::now();
    rt.set_probe_result("default.db-0", Ok(()));
    // Until db is ready web has no replica; its first come after.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while replicas(&e, "web").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "web never started");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(ready(&e, "db"), 1, "web started before db was ready");
    for r in replicas(&e, "web") {
        assert!(r.metadata.creation_timestamp.unwrap() >= opened);
    }
    eventually("web ready", || ready(&e, "web") == 2).await;
    // Replicas that exist are never stopped for a dependency.
    api::delete(&*store, Kind::Service, "default", "db")
        .await
        .unwrap();
    eventually("db gone", || replicas(&e, "db").is_empty()).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(ready(&e, "web"), 2);
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn depends_on_a_job_waits_for_its_completion_and_a_failure_holds_for_good() {
    let (store, e, rt) = one_node();
    let web = service(
        "web",
        1,
        "  dependsOn:\n  - {name: migrate, kind: Job, condition: completed}\n",
    );
    // A job that waits for the service to start, and the migration.
    let report = job("report", "  dependsOn:\n  - {name: web}\n");
    api::apply(&*store, vec![web, report, job("migrate", "")], false)
        .await
        .unwrap();
    eventually("migrate runs", || rt.running().len() == 1).await;
    eventually("web waits", || {
        status_message(&e, "web") == "waiting for job migrate to complete"
    })
    .await;
    eventually("report waits", || {
        job_of(&e, "report").is_some_and(|j| {
            j.status.message == "waiting for web to start (no replica running)"
                && j.status.started.is_none()
        })
    })
    .await;
    assert!(replicas(&e, "web").is_empty());
    rt.crash(&rt.running()[0], Some(0), None);
    eventually("migrate succeeded", || {
        job_of(&e, "migrate").is_some_and(|j| j.status.state == JobState::Succeeded)
    })
    .await;
    eventually("web ready", || ready(&e, "web") == 1).await;
    eventually("report started", || {
        job_of(&e, "report")
            .is_some_and(|j| j.status.started.is_some() && j.status.message.is_empty())
    })
    .await;
    let migrated = job_of(&e, "migrate").unwrap().status.finished.unwrap();
    assert!(replicas(&e, "web")[0].metadata.creation_timestamp.unwrap() >= migrated);
    // A failed job: the dependent says it will not start, with a warning event.
    let api2 = service(
        "api",
        1,
        "  dependsOn:\n  - {name: seed, kind: Job, condition: completed}\n",
    );
    api::apply(
        &*store,
        vec![api2, job("seed", "  backoffLimit: 0\n")],
        false,
    )
    .await
    .unwrap();
    eventually("seed runs", || rt.running().len() == 3).await;
    let seed = orch_core::store::list_objects(&*store, Kind::Replica, None)
        .await
        .unwrap()
        .0
        .into_iter()
        .find_map(|o| match o {
            Object::Replica(r)
                if r.metadata.labels.get("orch/job").map(String::as_str) == Some("seed") =>
            {
                Some(r.runtime_name())
            }
            _ => None,
        })
        .unwrap();
    rt.crash(&seed, Some(1), None);
    eventually("api will not start", || {
        status_message(&e, "api") == "will not start: job seed failed"
    })
    .await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while common::events_with(&store, "DependencyFailed").await.len() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "one DependencyFailed warning"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(replicas(&e, "api").is_empty());
    e.shutdown().await;
}

fn cron_job(name: &str, extra: &str, minutes_ago: u64) -> CronJob {
    let o = parse(&format!("apiVersion: orch/v1\nkind: CronJob\nmetadata: {{name: {name}}}\nspec:\n  schedule: '* * * * *'\n{extra}  job:\n    template:\n      command: [run]\n      restartPolicy: Never\n"));
    let Object::CronJob(c) = o else {
        unreachable!()
    };
    let mut c = *c;
    c.metadata.namespace = "default".into();
    c.metadata.uid = format!("uid-{name}");
    c.metadata.creation_timestamp = Some(Timestamp(Timestamp::now().0 - minutes_ago * 60_000));
    c
}

/// A job of cron job `cj` as if an earlier run made it, in `state`.
fn earlier_run(cj: &CronJob, minutes_ago: u64, state: JobState) -> Job {
    let t = Timestamp::now().0 / 60_000 - minutes_ago;
    let Object::Job(j) = job(&format!("{}-{t}", cj.metadata.name), "") else {
        unreachable!()
    };
    let mut j = *j;
    j.metadata.namespace = "default".into();
    j.metadata.owner = Some(format!("cronjob/{}", cj.metadata.name));
    j.metadata.creation_timestamp = Some(Timestamp(t * 60_000));
    j.status.state = state;
    if state != JobState::Running {
        j.status.started = Some(Timestamp(t * 60_000));
        j.status.finished = Some(Timestamp(t * 60_000 + 1_000));
    }
    j
}

fn jobs_of(e: &Engine, cj: &str) -> Vec<Job> {
    e.cache()
        .list(Kind::Job)
        .iter()
        .filter_map(|o| match o.as_ref() {
            Object::Job(j) if j.metadata.owner.as_deref() == Some(&format!("cronjob/{cj}")) => {
                Some((**j).clone())
            }
            _ => None,
        })
        .collect()
}

fn cron_status(e: &Engine, cj: &str) -> Option<orch_core::model::object::CronJobStatus> {
    match e
        .cache()
        .get(Kind::CronJob, &Kind::CronJob.key("default", cj))
        .as_deref()
    {
        Some(Object::CronJob(c)) => Some(c.status.clone()),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_cron_job_runs_when_due_by_its_concurrency_policy_and_keeps_its_history() {
    let (store, e, rt) = one_node();
    // Each cron job was created a few minutes ago with an earlier run still running.
    let mut ops = Vec::new();
    let mut earlier = std::collections::BTreeMap::new();
    for (name, policy) in [
        ("allow", "Allow"),
        ("forbid", "Forbid"),
        ("replace", "Replace"),
    ] {
        let cj = cron_job(name, &format!("  concurrencyPolicy: {policy}\n"), 3);
        let old = earlier_run(&cj, 2, JobState::Running);
        earlier.insert(name, old.metadata.name.clone());
        ops.push(create_op(&Object::from(cj)));
        ops.push(create_op(&Object::from(old)));
    }
    // History: four successful runs and two failed ones, limits 2 and 1.
    let hist = cron_job(
        "hist",
        "  successfulJobsHistoryLimit: 2\n  failedJobsHistoryLimit: 1\n  suspend: true\n",
        30,
    );
    for (ago, state) in [
        (10, JobState::Succeeded),
        (9, JobState::Succeeded),
        (8, JobState::Failed),
        (7, JobState::Succeeded),
        (6, JobState::Failed),
        (5, JobState::Succeeded),
    ] {
        ops.push(create_op(&Object::from(earlier_run(&hist, ago, state))));
    }
    ops.push(create_op(&Object::from(hist)));
    store.txn(ops).await.unwrap();

    let now_minute = Timestamp::now().0 / 60_000;
    let due = |name: &str| format!("{name}-{now_minute}");
    // Allow: a new run beside the running one.
    eventually("allow ran", || {
        jobs_of(&e, "allow").len() == 2
            && cron_status(&e, "allow").is_some_and(|s| s.active.len() == 2)
    })
    .await;
    let new = jobs_of(&e, "allow")
        .into_iter()
        .find(|j| j.metadata.name != earlier["allow"])
        .unwrap();
    assert!(
        new.metadata.name == due("allow")
            || new.metadata.name == format!("allow-{}", now_minute + 1),
        "{}",
        new.metadata.name
    );
    assert_eq!(
        new.metadata
            .labels
            .get("orch.dev/cronjob")
            .map(String::as_str),
        Some("allow")
    );
    // Replace: the running one is deleted (its replica with it), the new one runs.
    eventually("replace replaced", || {
        let jobs = jobs_of(&e, "replace");
        jobs.len() == 1 && jobs[0].metadata.name != earlier["replace"]
    })
    .await;
    eventually("old replica gone", || {
        e.cache()
            .replicas_of_service("default", &format!("job:{}", earlier["replace"]))
            .is_empty()
    })
    .await;
    // Forbid: nothing new while the earlier one runs; the status says why.
    eventually("forbid waits", || {
        cron_status(&e, "forbid").is_some_and(|s| s.message.contains("concurrencyPolicy Forbid"))
    })
    .await;
    assert_eq!(jobs_of(&e, "forbid").len(), 1);
    // History: the two newest successes and the newest failure stay.
    eventually("history trimmed", || jobs_of(&e, "hist").len() == 3).await;
    let kept: BTreeSet<String> = jobs_of(&e, "hist")
        .into_iter()
        .map(|j| j.metadata.name)
        .collect();
    let want: BTreeSet<String> = [7, 6, 5]
        .map(|ago| format!("hist-{}", now_minute - ago))
        .into();
    // The minute may have turned between setting up and now: allow either reading.
    if kept != want {
        let shifted: BTreeSet<String> = [7, 6, 5]
            .map(|ago| format!("hist-{}", now_minute - ago - 1))
            .into();
        assert_eq!(kept, shifted);
    }
    assert!(cron_status(&e, "hist").is_some_and(|s| s.message.starts_with("suspended")));
    // The forbidden run starts once the earlier one finishes.
    let forbid_replica = e
        .cache()
        .replicas_of_service("default", &format!("job:{}", earlier["forbid"]));
    let id = forbid_replica[0].runtime_name();
    eventually("forbid's earlier run runs", || rt.running().contains(&id)).await;
    rt.crash(&id, Some(0), None);
    eventually("forbid ran after", || jobs_of(&e, "forbid").len() == 2).await;
    // Deleting a cron job deletes its jobs and their replicas.
    api::delete(&*store, Kind::CronJob, "default", "allow")
        .await
        .unwrap();
    eventually("allow's jobs gone", || jobs_of(&e, "allow").is_empty()).await;
    eventually("allow's replicas gone", || {
        e.cache()
            .replicas()
            .iter()
            .all(|r| !r.spec.service.to_string().starts_with("job:allow-"))
    })
    .await;
    e.shutdown().await;
}

#[test]
fn validation_names_the_workload_fields() {
    let has = |y: String, path: &str, says: &str| {
        let errs = checked(&y).expect_err("refused");
        assert!(
            errs.iter().any(|e| e.starts_with(path) && e.contains(says)),
            "{path} {says}: {errs:?}"
        );
    };
    let ok = |y: String| {
        if let Err(e) = checked(&y) {
            panic!("{y}: {e:?}");
        }
    };
    has(
        service_yaml("web", 10_001, "  mode: ordered\n"),
        "spec.replicas",
        "at most 10000",
    );
    ok(service_yaml("web", 10_000, "  mode: ordered\n"));
    has(
        service_yaml(&"w".repeat(61), 100, "  mode: ordered\n"),
        "metadata.name",
        "NAME-ORDINAL",
    );
    has(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  template:\n    command: [x]\n    mounts:\n    - {path: /d, tmpfs: true, perReplica: true}\n".into(),
        "spec.template.mounts[0].perReplica",
        "only for volume mounts",
    );
    has(
        format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  mode: ordered\n  template:\n    command: [x]\n    mounts:\n    - {{path: /d, volume: {}, perReplica: true}}\n", "v".repeat(58)),
        "spec.template.mounts[0].volume",
        "VOLUME-REPLICA",
    );
    ok("apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  mode: ordered\n  template:\n    command: [x]\n    mounts:\n    - {path: /d, volume: www, perReplica: true}\n".into());
    has(
        service_yaml("web", 1, "  dependsOn:\n  - {name: web}\n"),
        "spec.dependsOn[0].name",
        "itself",
    );
    has(
        service_yaml(
            "web",
            1,
            "  dependsOn:\n  - {name: db}\n  - {name: db, condition: ready}\n",
        ),
        "spec.dependsOn[1].name",
        "duplicate",
    );
    // A job and a service of one name are two dependencies.
    ok(service_yaml(
        "web",
        1,
        "  dependsOn:\n  - {name: db}\n  - {name: db, kind: Job}\n",
    ));
    has(
        service_yaml(
            "web",
            1,
            "  dependsOn:\n  - {name: db, condition: completed}\n",
        ),
        "spec.dependsOn[0].condition",
        "completed is for jobs",
    );
    has(
        job_yaml(
            "j",
            "  dependsOn:\n  - {name: m, kind: Job, condition: ready}\n",
        ),
        "spec.dependsOn[0].condition",
        "ready is for services",
    );
    has(
        job_yaml("j", "  dependsOn:\n  - {name: j, kind: Job}\n"),
        "spec.dependsOn[0].name",
        "itself",
    );
    let cron = |schedule: &str, extra: &str| {
        format!("apiVersion: orch/v1\nkind: CronJob\nmetadata: {{name: c}}\nspec:\n  schedule: '{schedule}'\n{extra}  job:\n    template:\n      command: [run]\n      restartPolicy: Never\n")
    };
    ok(cron("*/5 * * * *", ""));
    ok(cron("@hourly", "  timeZone: UTC\n"));
    has(cron("* * *", ""), "spec.schedule", "five cron fields");
    has(cron("@every 1m", ""), "spec.schedule", "@hourly");
    ok(cron("* * * * *", "  timeZone: Europe/Paris\n"));
    has(
        cron("* * * * *", "  timeZone: Europe/Nowhere\n"),
        "spec.timeZone",
        "IANA time zone name",
    );
}
