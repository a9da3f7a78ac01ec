//! The example server answers over real sockets, and the client finds it through an endpoint
//! file laid out as orch's file discovery writes it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long any one expected event may take.
const DEADLINE: Duration = Duration::from_secs(10);

/// A child process, killed and reaped when dropped (also when a test fails).
struct Proc {
    child: Child,
    lines: Receiver<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn");
        let lines = forward_lines(child.stdout.take().expect("stdout"));
        Proc { child, lines }
    }

    /// Discards the stdout lines received so far.
    fn drain(&self) {
        while self.lines.try_recv().is_ok() {}
    }

    /// The next stdout line that satisfies `want`, skipping others; panics at the deadline.
    fn wait_line(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if want(&l) => return l,
                Ok(l) => seen.push(l),
                Err(_) => panic!("no line {what} within {DEADLINE:?}; saw {seen:#?}"),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward_lines(out: ChildStdout) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts hello-server as replica `replica` and waits until it listens.
fn server(replica: &str) -> (Proc, u16) {
    let port = free_port();
    let p = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_hello-server"))
            .env("PORT", port.to_string())
            .env("ORCH_REPLICA", replica),
    );
    p.wait_line("saying it listens", |l| {
        l.contains(&format!("listening on 127.0.0.1:{port}"))
    });
    (p, port)
}

/// Sends `request` and returns (status code, body).
fn request(port: u16, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a full response");
    assert!(head.contains("Connection: close"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(body.len(), length, "{raw}");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

fn get(port: u16, path: &str) -> (u16, String) {
    request(port, &format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"))
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p =
            std::env::temp_dir().join(format!("orch-hello-test-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes an endpoint file atomically, as orch's file discovery does.
fn write_endpoints(dir: &Path, namespace: &str, service: &str, text: &str) {
    let ns = dir.join(namespace);
    std::fs::create_dir_all(&ns).unwrap();
    let tmp = ns.join(format!(".{service}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, ns.join(service)).unwrap();
}

fn client(dir: &Path, service: &str, extra: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hello-client"));
    cmd.env("TARGET_SERVICE", service)
        .env("ORCH_DISCOVERY_DIR", dir)
        .env("INTERVAL_MS", "20")
        .env_remove("TARGET_NAMESPACE")
        .env_remove("ORCH_NAMESPACE");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Proc::spawn(&mut cmd)
}

#[test]
fn server_answers_root_healthz_and_not_found() {
    let (srv, port) = server("web-1");
    let pid = srv.child.id();
    assert_eq!(
        get(port, "/"),
        (200, format!("hello from web-1 (pid {pid})\n"))
    );
    assert_eq!(get(port, "/?x=1").0, 200);
    assert_eq!(get(port, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(get(port, "/nope").0, 404);
    assert_eq!(
        request(port, "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi").0,
        404
    );
    assert_eq!(request(port, "nonsense\r\n\r\n").0, 400);
    // Each connection logs from its own thread after answering, so lines may come in any
    // order: wait for both, skipping neither.
    let mut want = vec!["GET /healthz 200", "GET /nope 404"];
    while !want.is_empty() {
        let line = srv.wait_line("logging GET /healthz and GET /nope", |l| {
            want.iter().any(|w| l.ends_with(w))
        });
        want.retain(|w| !line.ends_with(w));
    }
}

#[test]
fn server_serves_many_connections_at_once() {
    let (_srv, port) = server("web-1");
    // Idle connections do not hold up others.
    let idle: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    assert_eq!(get(port, "/healthz").0, 200);
    let workers: Vec<_> = (0..16)
        .map(|_| {
            std::thread::spawn(move || {
                (0..20)
                    .map(|_| get(port, "/").0)
                    .filter(|c| *c == 200)
                    .count()
            })
        })
        .collect();
    let ok: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(ok, 16 * 20);
    drop(idle);
}

#[test]
fn server_needs_a_valid_port() {
    for port in [None, Some("http"), Some("0"), Some("70000")] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hello-server"));
        cmd.env_remove("PORT");
        if let Some(p) = port {
            cmd.env("PORT", p);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "PORT={port:?}: {err}");
        assert!(err.starts_with("hello-server: PORT "), "{err}");
    }
}

#[test]
fn client_waits_for_endpoints_then_calls_each_in_turn() {
    let (_a, port_a) = server("web-1");
    let (_b, port_b) = server("web-2");
    let dir = TempDir::new();
    let c = client(&dir.0, "web", &[]);
    c.wait_line("waiting for endpoints", |l| {
        l == "waiting for endpoints of web"
    });

    // An empty file is no better than none. After the write and a drain, at most one line
    // comes from a tick that read the file before; the second surely read the empty file.
    write_endpoints(&dir.0, "default", "web", "");
    c.drain();
    for _ in 0..2 {
        c.wait_line("still waiting", |l| l == "waiting for endpoints of web");
    }

    write_endpoints(
        &dir.0,
        "default",
        "web",
        &format!(
            "web-1 127.0.0.1:{port_a} http={port_a}\nweb-2 127.0.0.1:{port_b} http={port_b}\n"
        ),
    );
    let ok_a = format!("ok 127.0.0.1:{port_a} hello from web-1 (pid ");
    let ok_b = format!("ok 127.0.0.1:{port_b} hello from web-2 (pid ");
    let first = c.wait_line("calling an endpoint", |l| l.starts_with("ok "));
    // Round robin: the next call goes to the other replica.
    let (now, then) = if first.starts_with(&ok_a) {
        (&ok_a, &ok_b)
    } else {
        (&ok_b, &ok_a)
    };
    assert!(first.starts_with(now.as_str()), "{first}");
    let second = c.wait_line("calling the other endpoint", |l| l.starts_with("ok "));
    assert!(second.starts_with(then.as_str()), "{second}");
}

#[test]
fn client_reports_an_endpoint_that_refuses() {
    let dead = free_port();
    let dir = TempDir::new();
    write_endpoints(&dir.0, "prod", "api", &format!("api-1 127.0.0.1:{dead}\n"));
    let c = client(&dir.0, "api", &[("ORCH_NAMESPACE", "prod")]);
    let line = c.wait_line("an error", |l| l.starts_with("error "));
    assert!(
        line.starts_with(&format!("error 127.0.0.1:{dead} connect: ")),
        "{line}"
    );
}

/// Runs hello-client with `unset` removed from and `set` added to its environment, expects
/// exit code 2, and returns its stderr.
fn client_rejects(dir: &Path, unset: &[&str], set: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hello-client"));
    cmd.env("ORCH_DISCOVERY_DIR", dir);
    for k in unset {
        cmd.env_remove(k);
    }
    for (k, v) in set {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    err
}

#[test]
fn client_needs_a_target() {
    let dir = TempDir::new();
    let err = client_rejects(&dir.0, &["TARGET_SERVICE"], &[]);
    assert!(err.contains("TARGET_SERVICE is not set"), "{err}");
    let err = client_rejects(
        &dir.0,
        &["ORCH_DISCOVERY_DIR"],
        &[("TARGET_SERVICE", "web")],
    );
    assert!(err.contains("ORCH_DISCOVERY_DIR is not set"), "{err}");
    let err = client_rejects(
        &dir.0,
        &[],
        &[("TARGET_SERVICE", "web"), ("INTERVAL_MS", "soon")],
    );
    assert!(err.contains("INTERVAL_MS must be"), "{err}");
}
