//! hello-client: every INTERVAL_MS reads the endpoints of TARGET_SERVICE from the file orch's
//! discovery keeps (`$ORCH_DISCOVERY_DIR/<namespace>/<service>`) and calls the next one in turn.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

fn endpoints(file: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(String::from))
        .collect()
}

fn get(addr: &str) -> Result<String, String> {
    let sa: SocketAddr = addr.parse().map_err(|e| format!("bad address: {e}"))?;
    let mut s =
        TcpStream::connect_timeout(&sa, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    Ok(buf
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string())
}

fn main() {
    let Ok(service) = std::env::var("TARGET_SERVICE") else {
        eprintln!("hello-client: set TARGET_SERVICE to the service to call");
        std::process::exit(2);
    };
    let ns = std::env::var("TARGET_NAMESPACE")
        .or_else(|_| std::env::var("ORCH_NAMESPACE"))
        .unwrap_or_else(|_| "default".into());
    let dir = std::env::var("ORCH_DISCOVERY_DIR").unwrap_or_else(|_| ".".into());
    let file = PathBuf::from(dir).join(ns).join(&service);
    let interval = Duration::from_millis(
        std::env::var("INTERVAL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
    );
    let mut next = 0usize;
    loop {
        let eps = endpoints(&file);
        let mut out = std::io::stdout().lock();
        if eps.is_empty() {
            let _ = writeln!(out, "waiting for endpoints of {service}");
        } else {
            let addr = &eps[next % eps.len()];
            next = next.wrapping_add(1);
            let _ = match get(addr) {
                Ok(body) => writeln!(out, "ok {addr} {body}"),
                Err(e) => writeln!(out, "error {addr} {e}"),
            };
        }
        let _ = out.flush();
        drop(out);
        std::thread::sleep(interval);
    }
}
