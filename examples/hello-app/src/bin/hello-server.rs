//! hello-server: a tiny threaded HTTP/1.1 server for orch's examples and tests.
//! Listens on 127.0.0.1:$PORT; `GET /` answers `hello from <replica> (pid N)`, `GET /healthz`
//! answers `ok`; logs one line per request to stdout.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn handle(stream: TcpStream, me: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip headers.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = match (method, path) {
        ("GET", "/") => (
            "200 OK",
            format!("hello from {me} (pid {})\n", std::process::id()),
        ),
        ("GET", "/healthz") => ("200 OK", "ok\n".to_string()),
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let mut out = stream;
    write!(out, "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    out.flush()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "{method} {path} {}",
        status.split(' ').next().unwrap_or("")
    )?;
    stdout.flush()
}

fn main() {
    let port = match std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
    {
        Some(p) => p,
        None => {
            eprintln!("hello-server: PORT must be set to a port number (orch sets it for a template port)");
            std::process::exit(2);
        }
    };
    let me = std::env::var("ORCH_REPLICA").unwrap_or_else(|_| "hello-server".into());
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hello-server: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    println!("hello-server {me} listening on 127.0.0.1:{port}");
    for stream in listener.incoming().flatten() {
        let me = me.clone();
        std::thread::spawn(move || {
            let _ = handle(stream, &me);
        });
    }
}
