//! hello-server: a tiny threaded HTTP/1.1 server for orch's examples and tests (std only).
//!
//! Listens on `127.0.0.1:$PORT`. `GET /` answers `hello from <replica> (pid N)`, where the
//! replica is `$ORCH_REPLICA` or else the host name; `GET /healthz` answers `ok`, or 503 while
//! the file `$HEALTHZ_FAIL_FILE` exists or for the first `$HEALTHZ_DELAY_MS` milliseconds after
//! the start (for probe tests); anything else is 404. One thread per connection (at most [`MAX_CONNECTIONS`] at once; beyond that the
//! server answers 503), `Connection: close` on every response, one log line per request on
//! stdout. SIGTERM ends it with the default action.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connections served at once; more are answered 503 straight away.
const MAX_CONNECTIONS: usize = 512;
/// The most bytes of request line and headers read from one request.
const MAX_HEAD_BYTES: u64 = 16 * 1024;
/// How long a client may take to send its request or read the response.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// One response: status line text and body.
struct Response {
    status: &'static str,
    body: String,
}

/// Decides the response for a request line's method and path.
fn route(method: &str, path: &str, me: &str) -> Response {
    let path = path.split('?').next().unwrap_or(path);
    match (method, path) {
        ("GET", "/healthz") if !healthy() => Response {
            status: "503 Service Unavailable",
            body: "unhealthy\n".into(),
        },
        ("GET", "/") => Response {
            status: "200 OK",
            body: format!("hello from {me} (pid {})\n", std::process::id()),
        },
        ("GET", "/healthz") => Response {
            status: "200 OK",
            body: "ok\n".into(),
        },
        _ => Response {
            status: "404 Not Found",
            body: "not found\n".into(),
        },
    }
}

/// When the process started (for `HEALTHZ_DELAY_MS`).
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Whether `/healthz` should pass now.
fn healthy() -> bool {
    if let Ok(f) = std::env::var("HEALTHZ_FAIL_FILE") {
        if std::path::Path::new(&f).exists() {
            return false;
        }
    }
    let delay = std::env::var("HEALTHZ_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    STARTED
        .get()
        .is_none_or(|t| t.elapsed() >= Duration::from_millis(delay))
}

/// Reads the request line and skips the headers; `None` when the client sent no complete
/// request head (closed early, timed out, or sent more than [`MAX_HEAD_BYTES`]).
fn read_request_line(stream: &TcpStream) -> Option<String> {
    let mut reader = BufReader::new(stream.take(MAX_HEAD_BYTES));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).ok()? == 0 {
        return None;
    }
    let mut header = String::new();
    loop {
        header.clear();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => return None,
            Ok(_) if header.trim_end_matches(['\r', '\n']).is_empty() => break,
            Ok(_) => {}
        }
    }
    Some(request_line)
}

fn write_response(mut stream: &TcpStream, r: &Response) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        r.status,
        r.body.len(),
        r.body
    )?;
    stream.flush()
}

/// Closes a connection so the client sees the whole response: half-close, then discard
/// whatever the client still sends (a close with unread data would reset the connection).
fn close(mut stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut sink = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    while left > 0 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

fn log(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn serve(stream: TcpStream, peer: SocketAddr, me: &str) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let (method, path, response) = match read_request_line(&stream) {
        Some(line) => {
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let response = if path.is_empty() || parts.next().is_none() {
                Response {
                    status: "400 Bad Request",
                    body: "bad request\n".into(),
                }
            } else {
                route(&method, &path, me)
            };
            (method, path, response)
        }
        None => {
            log(format_args!("{peer} - - closed before a full request"));
            return;
        }
    };
    let result = write_response(&stream, &response);
    close(&stream);
    let code = response.status.split(' ').next().unwrap_or("");
    match result {
        Ok(()) => log(format_args!("{peer} {method} {path} {code}")),
        Err(e) => log(format_args!(
            "{peer} {method} {path} {code} (write failed: {e})"
        )),
    }
}

/// Counts a live connection; the count drops when this does.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The port from `$PORT`, or a message saying what is wrong.
fn port_from_env() -> Result<u16, String> {
    let raw = std::env::var("PORT").map_err(|_| {
        "PORT is not set: set it to the port to listen on (orch sets it for the first template port)"
            .to_string()
    })?;
    match raw.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "PORT must be a port number from 1 to 65535, got {raw:?}"
        )),
    }
}

/// `$ORCH_REPLICA`, else the host name, else `hello-server`.
fn identity() -> String {
    std::env::var("ORCH_REPLICA")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "hello-server".into())
}

fn main() -> ExitCode {
    let port = match port_from_env() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hello-server: {e}");
            return ExitCode::from(2);
        }
    };
    STARTED.get_or_init(std::time::Instant::now);
    let me: Arc<str> = identity().into();
    // The address orch picked the port on (the node's address), else loopback.
    let host = std::env::var("ORCH_HOST_IP").unwrap_or_else(|_| "127.0.0.1".into());
    let listener = match TcpListener::bind((host.as_str(), port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hello-server: cannot listen on {host}:{port}: {e}");
            return ExitCode::from(1);
        }
    };
    log(format_args!(
        "hello-server {me} (pid {}) listening on 127.0.0.1:{port}",
        std::process::id()
    ));
    let live = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: say so, and do not spin.
                eprintln!("hello-server: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if live.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            let _slot = Slot(live.clone());
            let busy = Response {
                status: "503 Service Unavailable",
                body: "busy\n".into(),
            };
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = write_response(&stream, &busy);
            log(format_args!("{peer} - - 503 (too many connections)"));
            continue;
        }
        let slot = Slot(live.clone());
        let me = me.clone();
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                let _slot = slot;
                serve(stream, peer, &me);
            });
        if let Err(e) = spawned {
            eprintln!("hello-server: cannot start a thread for {peer}: {e}");
        }
    }
}
