//! The server and client over a real unix socket, against the in-memory store and the fake
//! runtime: one-shot requests, streaming watch and logs, errors, and the socket's mode.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use futures::StreamExt;
use orch_api::client::{ApplyResult, WatchEvent};
use orch_api::handler::Backend;
use orch_api::protocol::{ErrorCode, ManifestText, Request, Response, WatchType};
use orch_api::server::{bind, serve, serve_listener, ServeLimits};
use orch_api::Client;
use orch_core::fake::FakeRuntime;
use orch_core::memstore::MemStore;
use orch_core::model::object::{Kind, Object};
use orch_core::runtime::{LogOptions, Runtime, WorkloadSpec};
use orch_core::store::Store;
use tokio_util::sync::CancellationToken;

const WEB: &str = "apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  replicas: 2\n  template: {command: [server]}\n";

type Started = (
    tempfile::TempDir,
    Client,
    Arc<MemStore>,
    FakeRuntime,
    CancellationToken,
);

async fn start() -> Started {
    start_with(None).await
}

/// [`start`] with the server's limits (default: [`serve`]'s).
async fn start_with(limits: Option<ServeLimits>) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let store = Arc::new(MemStore::new());
    let rt = FakeRuntime::default();
    let backend = Arc::new(Backend {
        store: store.clone(),
        runtimes: HashMap::from([("n1".to_string(), Arc::new(rt.clone()) as Arc<dyn Runtime>)]),
        store_name: "memory".into(),
        scheduler: Arc::new(orch_sched::DefaultScheduler),
        on_node_removed: None,
        nodes: None,
        port_check: None,
        managers: None,
        volumes: Default::default(),
    });
    let cancel = CancellationToken::new();
    match limits {
        None => drop(tokio::spawn(serve(socket.clone(), backend, cancel.clone()))),
        Some(limits) => {
            let listener = bind(&socket).await.unwrap();
            tokio::spawn(serve_listener(
                listener,
                socket.clone(),
                backend.clone(),
                cancel.clone(),
                limits,
            ));
        }
    }
    while !socket.exists() {
        tokio::task::yield_now().await;
    }
    (dir, Client::new(&socket), store, rt, cancel)
}

/// `text` as the manifest file `web.yaml`.
fn manifest(text: &str) -> Vec<ManifestText> {
    vec![ManifestText {
        source: "web.yaml".into(),
        text: text.into(),
    }]
}

#[tokio::test]
async fn apply_get_scale_delete_and_errors() {
    let (dir, client, _store, _rt, cancel) = start().await;
    let mode = std::fs::metadata(dir.path().join("api.sock"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let results = client
        .apply(manifest(WEB), false, None)
        .await
        .unwrap()
        .results;
    assert_eq!(results[0].action, "created");
    let results = client
        .apply(manifest(WEB), false, None)
        .await
        .unwrap()
        .results;
    assert_eq!(results[0].action, "unchanged", "apply is idempotent");
    let dry = manifest(&WEB.replace("replicas: 2", "replicas: 3"));
    let ApplyResult { results, dry_run } = client.apply(dry, true, None).await.unwrap();
    assert!(dry_run && results[0].action == "configured");
    assert_eq!(results[0].changes, ["spec.replicas: 2 → 3"], "the diff");
    let Object::Service(s) = client.get(Kind::Service, "default", "web").await.unwrap() else {
        panic!()
    };
    assert_eq!(s.spec.replicas, 2, "a dry run writes nothing");
    client.scale("default", "web", 4).await.unwrap();
    let err = client.scale("default", "web", -1).await.unwrap_err();
    assert!(err.to_string().contains("0 to 100000"), "{err}");
    // A bad document among good ones: nothing applied, the error names source and document.
    let bad = format!(
        "{}---\n{}",
        WEB.replace("name: web", "name: other"),
        WEB.replace("replicas: 2", "replicas: -2")
    );
    let err = client.apply(manifest(&bad), false, None).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("web.yaml: document 2: spec.replicas"),
        "{err}"
    );
    let err = client
        .get(Kind::Service, "default", "other")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            orch_api::client::ClientError::Api {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{err}"
    );
    client
        .delete(Kind::Service, "default", "web")
        .await
        .unwrap();
    let err = client
        .delete(Kind::Service, "default", "web")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    cancel.cancel();
}

#[tokio::test]
async fn watch_streams_current_objects_then_changes() {
    let (_dir, client, _store, _rt, cancel) = start().await;
    client.apply(manifest(WEB), false, None).await.unwrap();
    let mut w = client
        .watch(Kind::Service, Some("default"), None)
        .await
        .unwrap();
    let Some(Ok(WatchEvent {
        event: WatchType::Added,
        ..
    })) = w.next().await
    else {
        panic!("first the current object")
    };
    client.scale("default", "web", 5).await.unwrap();
    let Some(Ok(WatchEvent {
        event: WatchType::Modified,
        object: Object::Service(s),
    })) = w.next().await
    else {
        panic!("then the change")
    };
    assert_eq!(s.spec.replicas, 5);
    client
        .delete(Kind::Service, "default", "web")
        .await
        .unwrap();
    let Some(Ok(WatchEvent {
        event: WatchType::Deleted,
        ..
    })) = w.next().await
    else {
        panic!("then the delete")
    };
    cancel.cancel();
}

#[tokio::test]
async fn logs_come_from_the_replicas_node_runtime() {
    let (_dir, client, store, rt, cancel) = start().await;
    // A replica bound to n1 whose workload has written output.
    client.apply(manifest(WEB), false, None).await.unwrap();
    let Some(Object::Service(svc)) =
        orch_core::store::get_object(&*store, Kind::Service, "default", "web")
            .await
            .unwrap()
    else {
        panic!()
    };
    let mut r = orch_core::engine::replication::new_replica(&svc, &[]);
    r.spec.node = Some("n1".into());
    store
        .txn(vec![orch_core::store::create_op(&Object::Replica(
            r.clone(),
        ))])
        .await
        .unwrap();
    let id = r.runtime_name();
    rt.start(&WorkloadSpec {
        network: None,
        id: id.clone(),
        replica_uid: r.metadata.uid.clone(),
        service: "web".into(),
        namespace: "default".into(),
        template: (*r.spec.template).clone(),
        template_hash: r.spec.template_hash.clone(),
        extra_env: vec![],
        dns: None,
        mounts: Vec::new(),
    })
    .await
    .unwrap();
    rt.write_log(&id, b"line one\nline two\n");
    let opts = LogOptions {
        follow: false,
        tail_bytes: Some(9),
        tail_lines: None,
    };
    let chunks: Vec<String> = client
        .logs("default", &r.metadata.name, opts)
        .await
        .unwrap()
        .filter_map(|c| async move { c.ok() })
        .collect()
        .await;
    assert_eq!(chunks.concat(), "line two\n");
    let err = client
        .logs("default", "nope", LogOptions::default())
        .await
        .unwrap()
        .next()
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    cancel.cancel();
}

#[tokio::test]
async fn malformed_requests_get_an_error_not_a_crash() {
    let (dir, client, _store, _rt, cancel) = start().await;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut s = tokio::net::UnixStream::connect(dir.path().join("api.sock"))
        .await
        .unwrap();
    s.write_all(b"{not json\n").await.unwrap();
    let mut line = String::new();
    BufReader::new(&mut s).read_line(&mut line).await.unwrap();
    assert!(line.contains("malformed request"), "{line}");
    // Still serving.
    client.info().await.unwrap();
    cancel.cancel();
}

#[tokio::test]
async fn an_oversized_request_is_refused_with_the_limit_named() {
    let (dir, client, _store, _rt, cancel) = start().await;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let s = tokio::net::UnixStream::connect(dir.path().join("api.sock"))
        .await
        .unwrap();
    let (r, mut w) = s.into_split();
    // Write past the limit without a newline; the server answers without reading it all.
    let writer = tokio::spawn(async move {
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..20 {
            if w.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await.unwrap();
    assert!(
        line.contains("TooLarge") && line.contains("larger than 16777216 bytes"),
        "{line}"
    );
    writer.abort();
    client.info().await.unwrap();
    cancel.cancel();
}

fn node(name: &str, cpu: &str) -> Object {
    use orch_core::model::object::{Metadata, Node, NodeStatus, Resources};
    Object::Node(Node {
        metadata: Metadata {
            name: name.into(),
            uid: name.into(),
            ..Metadata::default()
        },
        spec: Default::default(),
        status: NodeStatus {
            capacity: Resources {
                cpu: Some(orch_core::model::quantity::Cpu::parse(cpu).unwrap()),
                memory: None,
            },
            runtimes: vec!["process".into()],
            ..NodeStatus::default()
        },
    })
}

#[tokio::test]
async fn plan_shows_placements_and_pending_reasons_and_writes_nothing() {
    let (_dir, client, store, _rt, cancel) = start().await;
    store
        .txn(vec![
            orch_core::store::create_op(&node("a", "1")),
            orch_core::store::create_op(&node("b", "1")),
        ])
        .await
        .unwrap();
    let before = store.revision().await.unwrap();
    let big = WEB.replace("replicas: 2", "replicas: 3").replace(
        "{command: [server]}",
        "{command: [server], resources: {cpu: 600m}}",
    );
    let plan = client.plan(manifest(&big), None).await.unwrap();
    assert_eq!(
        store.revision().await.unwrap(),
        before,
        "a plan wrote something"
    );
    let web = &plan.services[0];
    assert_eq!(
        (web.name.as_str(), web.action.as_str(), web.kept),
        ("web", "created", 0)
    );
    let mut nodes: Vec<_> = web
        .placements
        .iter()
        .filter_map(|p| p.node.clone())
        .collect();
    nodes.sort();
    assert_eq!(
        nodes,
        ["a", "b"],
        "one 600m replica per 1-cpu node: {plan:?}"
    );
    let pending: Vec<_> = web.placements.iter().filter(|p| p.node.is_none()).collect();
    assert_eq!(pending.len(), 1, "{plan:?}");
    assert!(
        pending[0].reason.contains("0/2 nodes"),
        "{}",
        pending[0].reason
    );
    assert!(pending[0].reason.contains("cpu"), "{}", pending[0].reason);
    let text = orch_api::render::plan(&plan);
    assert!(
        text.contains("<pending>") && text.contains("nothing was changed"),
        "{text}"
    );

    // Bad input is refused as apply refuses it, naming the field.
    let bad = vec![ManifestText {
        source: "bad.yaml".into(),
        text: WEB.replace("replicas: 2", "replicas: -1"),
    }];
    let message = client.plan(bad, None).await.unwrap_err().to_string();
    assert!(
        message.contains("bad.yaml") && message.contains("replicas"),
        "{message}"
    );
    cancel.cancel();
}

/// A watch resumes from a revision: no listing, only the changes after it.
#[tokio::test]
async fn a_watch_resumes_from_a_revision() {
    let (_dir, client, _store, _rt, cancel) = start().await;
    client.apply(manifest(WEB), false, None).await.unwrap();
    client.scale("default", "web", 4).await.unwrap();
    let seen = client
        .get(Kind::Service, "default", "web")
        .await
        .unwrap()
        .metadata()
        .revision;
    client.scale("default", "web", 6).await.unwrap();
    let mut w = client.watch(Kind::Service, None, Some(seen)).await.unwrap();
    let Some(Ok(WatchEvent {
        event: WatchType::Modified,
        object: Object::Service(s),
    })) = w.next().await
    else {
        panic!("the change after the revision, not a listing")
    };
    assert_eq!(s.spec.replicas, 6);
    assert!(s.metadata.revision > seen);
    cancel.cancel();
}

const SECRET: &str =
    "apiVersion: orch/v1\nkind: Secret\nmetadata: {name: db}\ndata: {password: aHVudGVyMg==}\n";

/// Sends one raw JSON line and reads the one answer line.
async fn raw(dir: &std::path::Path, line: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut s = tokio::net::UnixStream::connect(dir.join("api.sock"))
        .await
        .unwrap();
    s.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    let mut answer = String::new();
    BufReader::new(&mut s).read_line(&mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn no_answer_carries_a_secret_value_delete_included() {
    let (dir, client, store, _rt, cancel) = start().await;
    client.apply(manifest(SECRET), false, None).await.unwrap();
    let stored = orch_core::store::get_object(&*store, Kind::Secret, "default", "db")
        .await
        .unwrap()
        .unwrap();
    let Object::Secret(s) = &stored else { panic!() };
    let plain = s.data["password"].clone();
    for line in [
        r#"{"op":"get","kind":"Secret","namespace":null,"name":null}"#,
        r#"{"op":"get","kind":"Secret","namespace":"default","name":"db"}"#,
        r#"{"op":"delete","kind":"Secret","namespace":"default","name":"db"}"#,
    ] {
        let answer = raw(dir.path(), line).await;
        assert!(answer.contains("<redacted: "), "{line}: {answer}");
        assert!(!answer.contains(&plain), "{line} leaks the value: {answer}");
    }
    // The gRPC transport answers through `answer`: the same redaction.
    client.apply(manifest(SECRET), false, None).await.unwrap();
    let backend = Backend {
        store: store.clone(),
        runtimes: HashMap::new(),
        store_name: "memory".into(),
        scheduler: Arc::new(orch_sched::DefaultScheduler),
        on_node_removed: None,
        nodes: None,
        port_check: None,
        managers: None,
        volumes: Default::default(),
    };
    let resp = orch_api::handler::answer(
        &backend,
        &orch_api::handler::Caller::Admin("test".into()),
        Request::Delete {
            kind: Kind::Secret,
            namespace: "default".into(),
            name: "db".into(),
        },
    )
    .await;
    let Response::Done {
        object: Object::Secret(s),
    } = &resp
    else {
        panic!("{resp:?}")
    };
    assert!(s.data["password"].starts_with("<redacted: "), "{resp:?}");
    cancel.cancel();
}

#[tokio::test]
async fn an_idle_or_partial_request_is_closed_after_the_read_timeout() {
    let limits = ServeLimits {
        request_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let (dir, client, _store, _rt, cancel) = start_with(Some(limits)).await;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut s = tokio::net::UnixStream::connect(dir.path().join("api.sock"))
        .await
        .unwrap();
    s.write_all(b"{\"op\":\"in").await.unwrap();
    let mut line = String::new();
    let mut r = BufReader::new(&mut s);
    r.read_line(&mut line).await.unwrap();
    assert!(
        line.contains("no complete request line within 300ms"),
        "{line}"
    );
    line.clear();
    assert_eq!(r.read_line(&mut line).await.unwrap(), 0, "then closed");
    client.info().await.unwrap();
    cancel.cancel();
}

#[tokio::test]
async fn partial_requests_together_stay_within_the_buffer_budget() {
    let limits = ServeLimits {
        max_request_bytes: 1 << 20,
        request_buffer_budget: 2 << 20,
        ..Default::default()
    };
    let (dir, client, _store, _rt, cancel) = start_with(Some(limits)).await;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    // Over the frame cap: refused while reading, with the limit named.
    let s = tokio::net::UnixStream::connect(dir.path().join("api.sock"))
        .await
        .unwrap();
    let (r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&vec![b'a'; 3 << 20]).await;
        w
    });
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await.unwrap();
    assert!(
        line.contains("TooLarge") && line.contains("larger than 1048576 bytes"),
        "{line}"
    );
    drop(writer.await);
    // Connections under the cap each, over the budget together: later ones are refused.
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..8 {
        let mut s = tokio::net::UnixStream::connect(dir.path().join("api.sock"))
            .await
            .unwrap();
        // Refused while writing: the answer is there to read all the same.
        let _ = s.write_all(&vec![b' '; 900 << 10]).await;
        let mut probe = [0u8; 1];
        use tokio::io::AsyncReadExt;
        match tokio::time::timeout(std::time::Duration::from_millis(200), s.read(&mut probe)).await
        {
            Ok(_) => {
                let mut rest = String::new();
                let _ = BufReader::new(&mut s).read_line(&mut rest).await;
                refused = Some(format!("{}{rest}", probe[0] as char));
                break;
            }
            Err(_) => held.push(s),
        }
    }
    let refused = refused.expect("a connection past the budget is refused");
    assert!(
        refused.contains("Unavailable") && refused.contains("2097152 bytes buffered"),
        "{refused}"
    );
    assert!(!held.is_empty(), "one fits the budget");
    // Closed connections give their share back.
    drop(held);
    client.info().await.unwrap();
    let mut s = tokio::net::UnixStream::connect(dir.path().join("api.sock"))
        .await
        .unwrap();
    s.write_all(&vec![b' '; 900 << 10]).await.unwrap();
    s.write_all(b"{\"op\":\"info\"}\n").await.unwrap();
    let mut answer = String::new();
    BufReader::new(&mut s).read_line(&mut answer).await.unwrap();
    assert!(answer.contains("\"info\""), "{answer}");
    cancel.cancel();
}

#[tokio::test]
async fn connections_past_the_limit_are_refused_and_the_rest_served() {
    let limits = ServeLimits {
        max_connections: 3,
        ..Default::default()
    };
    let (dir, client, _store, _rt, cancel) = start_with(Some(limits)).await;
    use tokio::io::AsyncBufReadExt;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(
            tokio::net::UnixStream::connect(dir.path().join("api.sock"))
                .await
                .unwrap(),
        );
    }
    // The server takes each in turn; a fourth is answered with the limit and closed.
    let err = loop {
        match client.info().await {
            Err(e) => break e.to_string(),
            Ok(_) => tokio::task::yield_now().await,
        }
    };
    assert!(
        err.contains("too many connections") && err.contains("at most 3"),
        "{err}"
    );
    let mut line = String::new();
    let s = tokio::net::UnixStream::connect(dir.path().join("api.sock"))
        .await
        .unwrap();
    tokio::io::BufReader::new(s)
        .read_line(&mut line)
        .await
        .unwrap();
    assert!(line.contains("too many connections"), "{line}");
    drop(idle);
    let served = async {
        while client.info().await.is_err() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), served)
        .await
        .expect("served again once the idle connections closed");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_applies_each_diff_against_the_version_they_replaced() {
    let (_dir, client, _store, _rt, cancel) = start().await;
    client.apply(manifest(WEB), false, None).await.unwrap();
    let mut tasks = Vec::new();
    for n in 3..19 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let text = WEB.replace("replicas: 2", &format!("replicas: {n}"));
            client.apply(manifest(&text), false, None).await.unwrap()
        }));
    }
    let mut from = Vec::new();
    for t in tasks {
        let results = t.await.unwrap().results;
        assert_eq!(results[0].action, "configured");
        let [change] = results[0].changes.as_slice() else {
            panic!("{:?}", results[0].changes)
        };
        let (old, new) = change
            .strip_prefix("spec.replicas: ")
            .and_then(|c| c.split_once(" → "))
            .unwrap_or_else(|| panic!("{change}"));
        from.push((old.to_string(), new.to_string()));
    }
    // Every version was replaced by exactly one apply: the diffs chain from 2 through all.
    let mut olds: Vec<&str> = from.iter().map(|(o, _)| o.as_str()).collect();
    olds.sort();
    let before = olds.len();
    olds.dedup();
    assert_eq!(
        olds.len(),
        before,
        "two applies claim to replace one version: {from:?}"
    );
    cancel.cancel();
}

#[tokio::test]
async fn the_namespace_asked_for_is_the_default_and_another_one_is_refused() {
    let (_dir, client, store, _rt, cancel) = start().await;
    let results = client
        .apply(manifest(WEB), false, Some("dev"))
        .await
        .unwrap()
        .results;
    assert_eq!(results[0].namespace, "dev");
    assert!(
        orch_core::store::get_object(&*store, Kind::Service, "dev", "web")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        orch_core::store::get_object(&*store, Kind::Service, "default", "web")
            .await
            .unwrap()
            .is_none()
    );
    // A file naming a namespace: kept when it is the one asked for, refused otherwise.
    let prod = WEB.replace("{name: web}", "{name: web, namespace: prod}");
    let err = client
        .apply(manifest(&prod), false, Some("dev"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("web.yaml: document 1") && err.contains("\"prod\"") && err.contains("\"dev\""),
        "{err}"
    );
    client
        .apply(manifest(&prod), false, Some("prod"))
        .await
        .unwrap();
    client.apply(manifest(&prod), false, None).await.unwrap();
    let err = client
        .apply(manifest(WEB), false, Some("Not_A_Name"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("namespace \"Not_A_Name\""), "{err}");
    cancel.cancel();
}

/// The server says which fields of which object's document it ignored, so a client need
/// not parse the manifests itself to warn; an object without any gets none.
#[tokio::test]
async fn apply_answers_the_ignored_fields_of_each_object() {
    let (_dir, client, _store, _rt, cancel) = start().await;
    let text = format!(
        "{WEB}---\n{}status: {{readyReplicas: 9}}\n",
        WEB.replace("name: web", "name: api")
    );
    let ApplyResult { results, .. } = client
        .apply(
            vec![
                ManifestText {
                    source: "two.yaml".into(),
                    text,
                },
                ManifestText {
                    source: "one.yaml".into(),
                    text: WEB
                        .replace("name: web", "name: db")
                        .replace("metadata: {", "metadata: {uid: x, "),
                },
            ],
            true,
            None,
        )
        .await
        .unwrap();
    let warnings: Vec<_> = results.iter().map(|r| r.warnings.clone()).collect();
    assert!(warnings[0].is_empty(), "{warnings:?}");
    assert_eq!(
        warnings[1],
        ["two.yaml: document 2: status: ignored: set by orch, not by manifests"],
        "{warnings:?}"
    );
    assert_eq!(warnings[2].len(), 1, "{warnings:?}");
    assert!(
        warnings[2][0].starts_with("one.yaml: document 1: metadata.uid"),
        "{warnings:?}"
    );
    cancel.cancel();
}
