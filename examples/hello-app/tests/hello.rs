//! The example server answers, and the client finds it through an endpoints file.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf)
}

#[test]
fn server_answers_and_client_finds_it() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_hello-server"))
        .env("PORT", port.to_string())
        .env("ORCH_REPLICA", "web-1")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let body = loop {
        if let Some(b) = get(port, "/") {
            break b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "server did not answer"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        body.starts_with("HTTP/1.1 200") && body.contains("hello from web-1"),
        "{body}"
    );
    assert!(get(port, "/healthz").unwrap().ends_with("ok\n"));
    assert!(get(port, "/nope").unwrap().starts_with("HTTP/1.1 404"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("default")).unwrap();
    std::fs::write(
        dir.path().join("default/web"),
        format!("web-1 127.0.0.1:{port} http={port}\n"),
    )
    .unwrap();
    let mut client = Command::new(env!("CARGO_BIN_EXE_hello-client"))
        .env("TARGET_SERVICE", "web")
        .env("ORCH_DISCOVERY_DIR", dir.path())
        .env("INTERVAL_MS", "50")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with(&format!("ok 127.0.0.1:{port} hello from web-1")),
        "{line}"
    );
    let _ = client.kill();
    let _ = server.kill();
    let _ = client.wait();
    let _ = server.wait();
}
