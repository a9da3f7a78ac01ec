//! Existing applications run unchanged (issue 20), end to end on real parts: two hosts
//! (network namespaces, each with its own containerd and `orchd agent` with replica
//! networking), `orchd manager` on the first, and `orchctl` as a user runs it. The
//! applications are the fixtures as they are — the guestbook and the voting app's Kubernetes
//! specifications (`orchctl apply -f DIR`), three awesome-compose apps (`orchctl compose up`;
//! a service with only `build:` gets `image:` in the test's own copy of the file) — with
//! their images made locally under the names they use (`import/images.rs`): busybox
//! stand-ins that listen on the declared ports and report whether they reach their peers by
//! the manifests' names and ports, and a real redis from Debian's packages.
//!
//! - the guestbook: the frontend reaches redis-master and redis-replica; a message written
//!   through the frontend's route is read back from the replicas (real redis replication);
//!   the frontend answers on its node port on both hosts; `NAME`, `NAME.NAMESPACE` and
//!   `NAME.NAMESPACE.svc.cluster.local` resolve inside a container;
//! - the voting app: a vote through vote's node port goes vote → redis → worker → db and
//!   shows in result's page on the other host's node port; vote's route maps 8080 → 80;
//! - flask-redis (a real redis behind published ports), nginx-golang-postgres
//!   (`depends_on: condition: service_healthy`: the backend starts only once the database is
//!   Ready, timestamps asserted; a file secret; a bind-mounted config), wordpress-mysql (the
//!   fixture file itself);
//! - `orchctl delete -f` and `orchctl compose down` leave no replica, service, route, secret
//!   or container behind;
//! - bad input (no cluster needed): each refusal names the file, the document and the field,
//!   exits non-zero and applies nothing.
#![cfg(feature = "containerd")]

mod common;
#[path = "import/images.rs"]
mod images;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, NEEDS};
use common::*;
use orch_core::model::quantity::Timestamp;

/// What the cluster test needs besides a [`Cluster`]'s needs.
const NEEDS_TOO: &[&str] = &["ctr", "mmdebstrap"];

/// The fixtures (real applications, never edited): `shared/fixtures` beside the checkout
/// (or beside a folder holding it, for a worktree).
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/fixtures"))
        .find(|f| f.is_dir())
        .expect("shared/fixtures beside the checkout")
}

/// How long an application may take to come up.
const UP: Duration = Duration::from_secs(90);

/// Runs orchctl on the cluster's manager: its output.
fn ctl(c: &Cluster, args: &[&str]) -> Output {
    c.manager.ctl(args)
}

/// orchctl that must succeed: its stdout.
fn ctl_ok(c: &Cluster, args: &[&str]) -> String {
    let out = ctl(c, args);
    assert!(
        out.status.success(),
        "orchctl {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The objects `orchctl get KIND -n NS -o json` lists.
fn items(d: &Daemon, kind: &str, ns: &str) -> Vec<serde_json::Value> {
    json_items(&d.ctl_ok(&["get", kind, "-n", ns, "-o", "json"]))
}

/// A replica as the tests look at it.
#[derive(Clone, Debug)]
struct Rep {
    name: String,
    node: String,
    ip: String,
    started: Option<Timestamp>,
}

/// Waits until every `(service, n)` of `want` in `ns` has `n` Ready replicas with their own
/// IPs; them, by service.
fn wait_ready(c: &Cluster, ns: &str, want: &[(&str, usize)]) -> Vec<Vec<Rep>> {
    let start = Instant::now();
    loop {
        let reps = items(&c.manager, "replicas", ns);
        let of = |svc: &str| -> Vec<Rep> {
            reps.iter()
                .filter(|r| {
                    r["spec"]["service"] == svc
                        && r["status"]["phase"] == "Ready"
                        && r["status"]["ip"].is_string()
                })
                .map(|r| Rep {
                    name: r["metadata"]["name"].as_str().unwrap().to_string(),
                    node: r["spec"]["node"].as_str().unwrap_or("").to_string(),
                    ip: r["status"]["ip"].as_str().unwrap().to_string(),
                    started: r["status"]["startedAt"]
                        .as_str()
                        .and_then(|t| Timestamp::parse(t).ok()),
                })
                .collect()
        };
        let got: Vec<Vec<Rep>> = want.iter().map(|(s, _)| of(s)).collect();
        if want.iter().zip(&got).all(|((_, n), g)| g.len() == *n) {
            return got;
        }
        if start.elapsed() > UP {
            let table = ctl(c, &["get", "replicas", "-n", ns, "-o", "wide"]);
            let why: Vec<String> = reps
                .iter()
                .filter(|r| r["status"]["phase"] != "Ready")
                .map(|r| {
                    format!(
                        "{}: {} {} {}",
                        r["metadata"]["name"],
                        r["status"]["phase"],
                        r["status"]["reason"],
                        r["status"]["message"]
                    )
                })
                .collect();
            let services: Vec<String> = items(&c.manager, "services", ns)
                .iter()
                .map(|s| format!("{}: {}", s["metadata"]["name"], s["status"]))
                .collect();
            panic!(
                "{ns}: not every one of {want:?} ready after {UP:?}:\n{}\nnot ready: {why:#?}\nservices: {services:#?}",
                String::from_utf8_lossy(&table.stdout),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// GET `url` from host `i` (its network namespace, as a process on the node would): the
/// body, or `None`.
fn host_get(c: &Cluster, i: usize, url: &str) -> Option<String> {
    let out = c.hosts.run(
        i,
        "timeout",
        &["5", "/bin/busybox", "wget", "-q", "-O", "-", url],
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`host_get`] until the body contains every one of `says` (60 s); the body.
fn host_get_until(c: &Cluster, i: usize, url: &str, says: &[&str]) -> String {
    let mut last = None;
    let start = Instant::now();
    loop {
        let body = host_get(c, i, url);
        if let Some(b) = &body {
            if says.iter().all(|s| b.contains(s)) {
                return b.clone();
            }
        }
        last = body.or(last);
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{url} from host {i} never said {says:?}; last answer: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// GET `url` from the test process itself (the root namespace: node addresses only).
fn root_get_until(url: &str, says: &[&str]) -> String {
    let addr = url.trim_start_matches("http://");
    let (hostport, path) = addr.split_once('/').unwrap_or((addr, ""));
    let path = format!("/{path}");
    let mut last = None;
    let start = Instant::now();
    loop {
        if let Some((200, body)) = http_request(hostport, &path) {
            if says.iter().all(|s| body.contains(s)) {
                return body;
            }
            last = Some(body);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{url} never said {says:?}; last answer: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `orchctl -n NS exec REPLICA -- ARGS...` until it succeeds (30 s): its stdout.
fn exec_ok(c: &Cluster, ns: &str, replica: &str, args: &[&str]) -> String {
    let mut full = vec!["-n", ns, "exec", "--timeout", "10s", replica, "--"];
    full.extend_from_slice(args);
    let start = Instant::now();
    loop {
        let out = ctl(c, &full);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "exec {args:?} in {ns}/{replica}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The route `name` of `ns` as JSON, once it has a virtual IP (if `vip`) and node ports (if
/// `node_ports`).
fn route(c: &Cluster, ns: &str, name: &str, vip: bool, node_ports: bool) -> serde_json::Value {
    eventually(
        &format!("route {ns}/{name}"),
        Duration::from_secs(30),
        || {
            let out = ctl(c, &["get", "route", name, "-n", ns, "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let ok = (!vip || v["status"]["virtualIp"].is_string())
                && (!node_ports
                    || v["status"]["nodePorts"]
                        .as_object()
                        .is_some_and(|m| !m.is_empty()));
            ok.then_some(v)
        },
    )
}

/// The one node port of a route.
fn node_port(route: &serde_json::Value) -> u64 {
    let ports = route["status"]["nodePorts"].as_object().unwrap();
    assert_eq!(ports.len(), 1, "{route}");
    ports.values().next().unwrap().as_u64().unwrap()
}

/// What is left in `ns`: every replica, service, job, route, secret and config (by kind and
/// name).
fn left_in(c: &Cluster, ns: &str) -> Vec<String> {
    let mut left = Vec::new();
    for kind in [
        "replicas", "services", "jobs", "routes", "secrets", "configs",
    ] {
        for o in items(&c.manager, kind, ns) {
            left.push(format!("{kind}/{}", o["metadata"]["name"]));
        }
    }
    left
}

/// The containers in every host's containerd.
fn containers(c: &Cluster) -> Vec<String> {
    let mut all = Vec::new();
    for ctd in &c.containerds {
        let out = std::process::Command::new("ctr")
            .arg("--address")
            .arg(ctd.socket())
            .args(["--namespace", &ctd.namespace(), "containers", "ls", "-q"])
            .output()
            .expect("run ctr");
        all.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string),
        );
    }
    all
}

/// Waits until nothing of `ns` is left and no container runs on any host.
fn wait_all_gone(c: &Cluster, ns: &str) {
    let start = Instant::now();
    loop {
        let left = left_in(c, ns);
        let ctrs = containers(c);
        if left.is_empty() && ctrs.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{ns}: left after 60 s: {left:?}, containers {ctrs:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The nodes the replicas run on, deduplicated.
fn nodes_of(reps: &[Vec<Rep>]) -> std::collections::BTreeSet<String> {
    reps.iter().flatten().map(|r| r.node.clone()).collect()
}

/// The address of host `hN` (`node`).
fn host_address(c: &Cluster, node: &str) -> String {
    let i: usize = node.trim_start_matches('h').parse().unwrap();
    c.hosts.address(i)
}

/// `orchctl apply -n NS -f DIR` of a fixture folder: the folder.
fn apply_fixture(c: &Cluster, ns: &str, folder: &str) -> PathBuf {
    let dir = fixtures().join(folder);
    let out = ctl(c, &["apply", "-n", ns, "-f", dir.to_str().unwrap()]);
    eprintln!(
        "{folder} applied in {ns}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "apply -f {}", dir.display());
    dir
}

/// `orchctl delete -n NS -f DIR`, then nothing of `ns` is left.
fn delete_fixture(c: &Cluster, ns: &str, dir: &Path) {
    ctl_ok(c, &["delete", "-n", ns, "-f", dir.to_str().unwrap()]);
    wait_all_gone(c, ns);
}

fn guestbook(c: &Cluster) {
    let ns = "guestbook";
    let dir = apply_fixture(c, ns, "k8s-examples-guestbook/web/guestbook");
    let reps = wait_ready(
        c,
        ns,
        &[("frontend", 3), ("redis-master", 1), ("redis-replica", 2)],
    );
    assert_eq!(nodes_of(&reps).len(), 2, "on one host only: {reps:?}");
    // Each frontend, from a host: it reaches both redis routes by name (real redis: PONG).
    for (i, fe) in reps[0].iter().enumerate() {
        host_get_until(
            c,
            i % 2,
            &format!("http://{}:80/", fe.ip),
            &[
                &format!("standin gb-frontend {}", fe.name),
                "peer redis-master:6379 redis ok: PONG",
                "peer redis-replica:6379 redis ok: PONG",
            ],
        );
    }
    // A message written through the frontend's virtual IP (to the master) is read back from
    // the replicas: real replication between real redis servers on two hosts.
    let fe = route(c, ns, "frontend", true, true);
    let vip = fe["status"]["virtualIp"].as_str().unwrap();
    host_get_until(
        c,
        1,
        &format!("http://{vip}:80/guestbook.php?cmd=set&key=messages&value=hello-orch"),
        &[r#"{"message": "OK"}"#],
    );
    for i in 0..2 {
        host_get_until(
            c,
            i,
            &format!("http://{vip}:80/guestbook.php?cmd=get&key=messages"),
            &[r#"{"data": "hello-orch"}"#],
        );
    }
    // NodePort: the frontend on every node's address, from outside the cluster.
    let port = node_port(&fe);
    for i in 0..2 {
        root_get_until(
            &format!("http://{}:{port}/", c.hosts.address(i)),
            &["standin gb-frontend", "redis ok: PONG"],
        );
    }
    // The Kubernetes DNS names resolve inside a container (glibc's resolver in the real
    // redis image, with the search list the node gives it) to the route's virtual IP.
    let master = route(c, ns, "redis-master", true, false);
    let master_vip = master["status"]["virtualIp"].as_str().unwrap();
    let replica = &reps[2][0].name;
    for name in [
        "redis-master".to_string(),
        format!("redis-master.{ns}"),
        format!("redis-master.{ns}.svc.cluster.local"),
    ] {
        let said = exec_ok(c, ns, replica, &["getent", "hosts", &name]);
        assert!(
            said.split_whitespace().next() == Some(master_vip),
            "{name} → {said:?}, not {master_vip}"
        );
    }
    // The replicas really replicate from redis-master (by the name their image uses).
    let info = exec_ok(c, ns, replica, &["redis-cli", "info", "replication"]);
    assert!(
        info.contains("role:slave") && info.contains("master_link_status:up"),
        "{info}"
    );
    delete_fixture(c, ns, &dir);
}

fn voting_app(c: &Cluster) {
    let ns = "vote";
    let dir = apply_fixture(c, ns, "example-voting-app/k8s-specifications");
    let reps = wait_ready(
        c,
        ns,
        &[
            ("db", 1),
            ("redis", 1),
            ("vote", 1),
            ("worker", 1),
            ("result", 1),
        ],
    );
    eprintln!("voting app on {:?}", nodes_of(&reps));
    // The fixed node ports of the manifests: vote on 31000, result on 31001, on every node.
    let vote = route(c, ns, "vote", true, true);
    assert_eq!(node_port(&vote), 31000, "{vote}");
    let result = route(c, ns, "result", true, true);
    assert_eq!(node_port(&result), 31001, "{result}");
    let h0 = c.hosts.address(0);
    let h1 = c.hosts.address(1);
    root_get_until(
        &format!("http://{h0}:31000/"),
        &["standin vote", "peer redis:6379 redis ok: PONG"],
    );
    root_get_until(
        &format!("http://{h1}:31001/"),
        &["standin result", "peer db:5432 http ok: standin postgres"],
    );
    let worker = &reps[3][0].name;
    let said = exec_ok(c, ns, worker, &["/bin/standin", "report"]);
    assert!(
        said.contains("peer redis:6379 redis ok: PONG")
            && said.contains("peer db:5432 http ok: standin postgres"),
        "{said}"
    );
    // A vote: vote → redis (real) → worker → db → result.
    root_get_until(&format!("http://{h0}:31000/?vote=a"), &["queued a"]);
    root_get_until(&format!("http://{h1}:31001/"), &["result: votes a=1 b=0"]);
    // vote's route maps port 8080 to the container's 80, by every Kubernetes name.
    let from = &reps[4][0].name;
    for name in [
        "vote".to_string(),
        format!("vote.{ns}"),
        format!("vote.{ns}.svc.cluster.local"),
    ] {
        let body = exec_ok(
            c,
            ns,
            from,
            &["wget", "-q", "-O", "-", &format!("http://{name}:8080/")],
        );
        assert!(body.starts_with("standin vote"), "{name}: {body}");
    }
    delete_fixture(c, ns, &dir);
}

/// A copy of an awesome-compose app's directory in `tmp` for the test (the fixtures are never
/// edited): its compose.yaml with each `(from, to)` of `swaps` replaced (each must occur),
/// and the extra `files` (relative path, content) the app's repository has beside it.
fn variant(tmp: &Path, app: &str, swaps: &[(&str, &str)], files: &[(&str, &str)]) -> PathBuf {
    let fixture = fixtures()
        .join("awesome-compose")
        .join(app)
        .join("compose.yaml");
    let mut text = std::fs::read_to_string(&fixture).unwrap();
    for (from, to) in swaps {
        assert!(text.contains(from), "{app}: {from:?} not in the fixture");
        text = text.replace(from, to);
    }
    let dir = tmp.join(app);
    std::fs::create_dir_all(&dir).unwrap();
    for (path, content) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    let file = dir.join("compose.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

/// `orchctl compose VERB -f FILE -p PROJECT`, which must succeed: its output (warnings
/// included).
fn compose(c: &Cluster, verb: &str, file: &Path, project: &str) -> String {
    let out = ctl(
        c,
        &["compose", verb, "-f", file.to_str().unwrap(), "-p", project],
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "compose {verb} {project}: {said}");
    said
}

/// `compose down`, then nothing of the project is left.
fn compose_down(c: &Cluster, file: &Path, project: &str) {
    compose(c, "down", file, project);
    wait_all_gone(c, project);
}

fn flask_redis(c: &Cluster, tmp: &Path) {
    let p = "flask-redis";
    let file = variant(
        tmp,
        p,
        &[(
            "    build:\n      context: .\n      target: builder\n",
            "    image: localhost/awesome-compose/flask-redis-web:latest\n",
        )],
        &[],
    );
    let up = compose(c, "up", &file, p);
    eprintln!("flask-redis up:\n{up}");
    let reps = wait_ready(c, p, &[("redis", 1), ("web", 1)]);
    let ps = compose(c, "ps", &file, p);
    assert!(ps.contains("redis") && ps.contains("web"), "{ps}");
    // Published ports on the node the replica runs on: web's page counts hits in real redis.
    let web = host_address(c, &reps[1][0].node);
    let first = root_get_until(
        &format!("http://{web}:8000/"),
        &["peer redis:6379 redis ok: PONG", "I have been seen"],
    );
    let second = root_get_until(&format!("http://{web}:8000/"), &["I have been seen"]);
    assert_ne!(first, second, "the hit count did not move");
    // redis' own published port answers the redis protocol.
    let addr = format!("{}:6379", host_address(c, &reps[0][0].node));
    let pong = eventually("redis PING", Duration::from_secs(30), || {
        use std::io::{Read, Write};
        let mut s =
            std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(1))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"PING\r\n").ok()?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    });
    assert_eq!(pong, "+PONG\r\n");
    compose_down(c, &file, p);
}

/// The awesome-compose app's proxy configuration (its repository's proxy/nginx.conf).
const NGINX_CONF: &str =
    "server {\n  listen 80;\n  location / {\n    proxy_pass http://backend:8000;\n  }\n}\n";

fn nginx_golang_postgres(c: &Cluster, tmp: &Path) {
    let p = "nginx-golang-postgres";
    let file = variant(
        tmp,
        p,
        &[(
            "    build:\n      context: backend\n      target: builder\n",
            "    image: localhost/awesome-compose/nginx-golang-postgres-backend:latest\n",
        )],
        &[
            ("db/password.txt", "db-78n9n"),
            ("proxy/nginx.conf", NGINX_CONF),
        ],
    );
    let up = compose(c, "up", &file, p);
    eprintln!("nginx-golang-postgres up:\n{up}");
    // While the database is not ready, the backend is held, and its status says what for.
    let waiting = eventually(
        "db started and backend waiting for it",
        Duration::from_secs(60),
        || {
            let reps = items(&c.manager, "replicas", p);
            let started = |svc: &str| {
                reps.iter()
                    .any(|r| r["spec"]["service"] == svc && r["status"]["startedAt"].is_string())
            };
            let backend = items(&c.manager, "services", p)
                .into_iter()
                .find(|s| s["metadata"]["name"] == "backend")?;
            let message = backend["status"]["message"]
                .as_str()
                .unwrap_or("")
                .to_string();
            assert!(!started("backend"), "backend started before db was ready");
            (started("db") && message.contains("waiting for db")).then_some(message)
        },
    );
    eprintln!("backend while db is not ready: {waiting}");
    let reps = wait_ready(c, p, &[("db", 1), ("backend", 1), ("proxy", 1)]);
    let (db, backend) = (&reps[0][0], &reps[1][0]);
    let ready_since: u64 = exec_ok(c, p, &db.name, &["cat", "/tmp/standin/ready-since"])
        .trim()
        .parse()
        .unwrap();
    let db_started = db.started.unwrap().0;
    let backend_started = backend.started.unwrap().0;
    eprintln!(
        "db started {db_started} ms, its pg_isready first passed in second {ready_since}, backend started {backend_started} ms"
    );
    assert!(
        backend_started >= db_started + images::DB_READY_AFTER_SECS * 1000,
        "backend started {} ms after db, before db could be ready ({} s)",
        backend_started.saturating_sub(db_started),
        images::DB_READY_AFTER_SECS
    );
    assert!(
        backend_started / 1000 >= ready_since,
        "backend started at {backend_started} ms, before db's first passing check (second {ready_since})"
    );
    // The chain by the names and ports the app uses: proxy (nginx.conf) → backend:8000 →
    // db:5432, the secret file in both; the database runs as `user: postgres`.
    let said = exec_ok(c, p, &backend.name, &["/bin/standin", "report"]);
    assert!(
        said.contains("peer db:5432 http ok: standin postgres")
            && said.contains("secret db-password: 8 bytes"),
        "{said}"
    );
    let said = exec_ok(c, p, &db.name, &["/bin/standin", "report"]);
    assert!(
        said.contains("password file /run/secrets/db-password: 8 bytes")
            && said.contains("user postgres"),
        "{said}"
    );
    let proxy = host_address(c, &reps[2][0].node);
    root_get_until(
        &format!("http://{proxy}:80/"),
        &[
            "standin nginx",
            "peer backend:8000 http ok: standin go-backend",
        ],
    );
    compose_down(c, &file, p);
}

fn wordpress_mysql(c: &Cluster) {
    let p = "wordpress-mysql";
    let file = fixtures().join("awesome-compose/wordpress-mysql/compose.yaml");
    let up = compose(c, "up", &file, p);
    eprintln!("wordpress-mysql up:\n{up}");
    let reps = wait_ready(c, p, &[("db", 1), ("wordpress", 1)]);
    let wp = host_address(c, &reps[1][0].node);
    root_get_until(
        &format!("http://{wp}:80/"),
        &["standin wordpress", "peer db:3306 http ok: standin mariadb"],
    );
    compose_down(c, &file, p);
}

/// A panic's message.
fn message(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

#[test]
fn applications_run_unchanged_on_two_hosts() {
    if !require(NEEDS) || !require(NEEDS_TOO) {
        return;
    }
    let t = Instant::now();
    let scratch = tempfile::tempdir().unwrap();
    let parts = images::all(&scratch.path().join("images")).expect("the test images");
    eprintln!("images made in {:?}", t.elapsed());
    let tmp = scratch.path();
    // Bind mounts of the Compose apps are under the test's folder, which the nodes allow.
    let allow = tmp.display().to_string();
    let c = Cluster::with_agent_args(2, 7, &[], &["--allow-host-path", &allow], &parts);
    eprintln!("cluster up in {:?}", t.elapsed());
    // One cluster for every application, in turn (each removes itself at its end; a failing
    // one is removed after it); a failure is reported and the others still run.
    // ORCH_TEST_APPS=NAME,NAME runs only those.
    let guestbook_dir = fixtures().join("k8s-examples-guestbook/web/guestbook");
    let voting_dir = fixtures().join("example-voting-app/k8s-specifications");
    let wordpress = fixtures().join("awesome-compose/wordpress-mysql/compose.yaml");
    let delete = |ns: &str, dir: &Path| {
        ctl(&c, &["delete", "-n", ns, "-f", dir.to_str().unwrap()]);
    };
    let down = |p: &str, file: &Path| {
        ctl(
            &c,
            &["compose", "down", "-f", file.to_str().unwrap(), "-p", p],
        );
    };
    type Step<'a> = &'a dyn Fn();
    let apps: [(&str, Step, Step); 5] = [
        ("guestbook", &|| guestbook(&c), &|| {
            delete("guestbook", &guestbook_dir)
        }),
        ("voting app", &|| voting_app(&c), &|| {
            delete("vote", &voting_dir)
        }),
        ("flask-redis", &|| flask_redis(&c, tmp), &|| {
            down("flask-redis", &tmp.join("flask-redis/compose.yaml"))
        }),
        (
            "nginx-golang-postgres",
            &|| nginx_golang_postgres(&c, tmp),
            &|| {
                down(
                    "nginx-golang-postgres",
                    &tmp.join("nginx-golang-postgres/compose.yaml"),
                )
            },
        ),
        ("wordpress-mysql", &|| wordpress_mysql(&c), &|| {
            down("wordpress-mysql", &wordpress)
        }),
    ];
    let only = std::env::var("ORCH_TEST_APPS").ok();
    let mut failed = Vec::new();
    for (name, run, clean_up) in apps {
        if only
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|n| n == name))
        {
            continue;
        }
        let start = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
        eprintln!(
            "{name}: {} in {:?}",
            if outcome.is_ok() { "passed" } else { "FAILED" },
            start.elapsed()
        );
        if let Err(e) = outcome {
            failed.push(format!("{name}: {}", message(e)));
            clean_up();
        }
    }
    eprintln!("all applications in {:?}", t.elapsed());
    drop(c);
    eprintln!("cluster down in {:?}", t.elapsed());
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// orchctl's output for a refusal: exit code non-zero and stderr naming `says`.
fn refused(d: &Daemon, args: &[&str], says: &[&str]) {
    let out = d.ctl(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted: {err}");
    for s in says {
        assert!(err.contains(s), "{args:?}: {s:?} not in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// Everything in every namespace, as `get KIND -A` lists it.
fn everything(d: &Daemon) -> Vec<String> {
    [
        "services", "routes", "secrets", "configs", "jobs", "cronjobs",
    ]
    .iter()
    .map(|k| d.ctl_ok(&["get", k, "-A"]))
    .collect()
}

#[test]
fn bad_input_is_refused_naming_file_document_and_field_and_nothing_is_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let before = everything(&d);
    let dir = tmp.path();
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: fine}\nspec:\n  selector: {matchLabels: {app: fine}}\n  template:\n    metadata: {labels: {app: fine}}\n    spec:\n      containers: [{name: c, image: busybox}]\n";
    // Each file is valid in its first document, the second is wrong: nothing is applied.
    let cases: [(&str, String, &[&str]); 4] = [
        (
            "unknown-kind.yaml",
            format!("{deployment}---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: web}}\nspec: {{}}\n"),
            &["document 2", "kind", "Ingress"],
        ),
        (
            "two-containers.yaml",
            format!("{deployment}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: pair}}\nspec:\n  selector: {{matchLabels: {{app: pair}}}}\n  template:\n    metadata: {{labels: {{app: pair}}}}\n    spec:\n      containers: [{{name: a, image: busybox}}, {{name: b, image: busybox}}]\n"),
            &["document 2", "spec.template.spec.containers"],
        ),
        (
            "bad-secret.yaml",
            format!("{deployment}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: creds}}\ndata:\n  password: 'not base64!'\n"),
            &["document 2", "data[\"password\"]", "base64"],
        ),
        (
            "no-selector.yaml",
            format!("{deployment}---\napiVersion: v1\nkind: Service\nmetadata: {{name: nothing}}\nspec:\n  ports: [{{port: 80}}]\n"),
            &["document 2", "spec.selector"],
        ),
    ];
    for (name, text, says) in &cases {
        let f = write(dir, name, text);
        let mut all = vec![f.to_str().unwrap()];
        all.extend_from_slice(says);
        refused(&d, &["apply", "-f", f.to_str().unwrap()], &all);
    }
    // A Service whose selector matches no pod template: a warning naming it (the route would
    // wait for endpoints), and with --strict a refusal.
    let lonely = write(
        dir,
        "lonely.yaml",
        &format!("{deployment}---\napiVersion: v1\nkind: Service\nmetadata: {{name: lonely}}\nspec:\n  selector: {{app: nobody}}\n  ports: [{{port: 80}}]\n"),
    );
    let lonely = lonely.to_str().unwrap();
    let says = [lonely, "document 2", "spec.selector"];
    refused(&d, &["apply", "--strict", "-f", lonely], &says);
    let dry = d.ctl(&["apply", "--dry-run", "-f", lonely]);
    let warned = String::from_utf8_lossy(&dry.stderr);
    assert!(dry.status.success(), "{warned}");
    for s in says {
        assert!(warned.contains(s), "{s:?} not in the warning: {warned}");
    }
    // Compose: a cycle in depends_on, an unknown key.
    let compose_dir = dir.join("cycle");
    std::fs::create_dir_all(&compose_dir).unwrap();
    let cycle = write(
        &compose_dir,
        "compose.yaml",
        "services:\n  a:\n    image: busybox\n    depends_on: [b]\n  b:\n    image: busybox\n    depends_on:\n      a: {condition: service_started}\n",
    );
    refused(
        &d,
        &["compose", "up", "-f", cycle.to_str().unwrap(), "-p", "bad"],
        &[cycle.to_str().unwrap(), "depends_on", "cycle", "a", "b"],
    );
    let unknown = write(
        &compose_dir,
        "unknown.yaml",
        "services:\n  web:\n    image: busybox\n    bogus_key: 1\n",
    );
    refused(
        &d,
        &[
            "compose",
            "up",
            "-f",
            unknown.to_str().unwrap(),
            "-p",
            "bad",
        ],
        &[unknown.to_str().unwrap(), "services.web.bogus_key"],
    );
    refused(
        &d,
        &["apply", "-f", unknown.to_str().unwrap()],
        &[unknown.to_str().unwrap(), "services.web.bogus_key"],
    );
    assert_eq!(everything(&d), before, "something was applied");
}
