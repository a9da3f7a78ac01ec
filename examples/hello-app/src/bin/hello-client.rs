//! hello-client: every `$INTERVAL_MS` (default 1000) reads the endpoints of `$TARGET_SERVICE`
//! from the file orch's discovery keeps, `$ORCH_DISCOVERY_DIR/<namespace>/<service>`, and GETs
//! `/` from the next endpoint in turn (std only).
//!
//! The namespace is `$TARGET_NAMESPACE`, else `$ORCH_NAMESPACE`, else `default`. Each line of
//! the file is `<replica> <ip>:<port> [<portname>=<port> ...]`; the first `ip:port` field is
//! called. Prints one line per tick: `ok <addr> <body>`, `error <addr> <error>`, or
//! `waiting for endpoints of <service>` while the file is missing or lists no endpoint.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Connect, send and receive must all finish within this.
const TIMEOUT: Duration = Duration::from_secs(1);
/// The most bytes of response read.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// What the client was told to do.
struct Settings {
    service: String,
    file: PathBuf,
    interval: Duration,
}

fn settings() -> Result<Settings, String> {
    let service = std::env::var("TARGET_SERVICE")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .ok_or("TARGET_SERVICE is not set: set it to the name of the service to call")?;
    let namespace = std::env::var("TARGET_NAMESPACE")
        .or_else(|_| std::env::var("ORCH_NAMESPACE"))
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "default".into());
    let dir = std::env::var_os("ORCH_DISCOVERY_DIR").ok_or(
        "ORCH_DISCOVERY_DIR is not set: orch sets it for every replica; set it to the directory of endpoint files",
    )?;
    let interval = match std::env::var("INTERVAL_MS") {
        Err(_) => Duration::from_millis(1000),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => {
                return Err(format!(
                    "INTERVAL_MS must be a whole number of milliseconds above 0, got {v:?}"
                ))
            }
        },
    };
    let file = Path::new(&dir).join(&namespace).join(&service);
    Ok(Settings {
        service,
        file,
        interval,
    })
}

/// The address in one field: `1.2.3.4:80`, `[::1]:80`, or `::1:80` as the file may write IPv6.
fn address(field: &str) -> Option<SocketAddr> {
    if field.contains('=') {
        return None;
    }
    if let Ok(a) = field.parse() {
        return Some(a);
    }
    let (ip, port) = field.rsplit_once(':')?;
    Some(SocketAddr::new(
        ip.parse::<IpAddr>().ok()?,
        port.parse().ok()?,
    ))
}

/// The endpoints listed in an endpoint file: the first address on each line that has one.
fn endpoints(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_whitespace().skip(1).find_map(address))
        .collect()
}

/// GETs `/` from `addr`; the body (on one line) of a 2xx response, or what went wrong.
fn get(addr: SocketAddr) -> Result<String, String> {
    let deadline = Instant::now() + TIMEOUT;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "timed out".to_string())
    };
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: hello-client\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        s.set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&chunk[..n]);
                if raw.len() as u64 > MAX_RESPONSE_BYTES {
                    return Err(format!("response longer than {MAX_RESPONSE_BYTES} bytes"));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("timed out".into())
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("incomplete HTTP response")?;
    let status = head.lines().next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if !code.starts_with('2') || code.len() != 3 {
        return Err(format!("HTTP status {status:?}"));
    }
    Ok(body.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn run(s: &Settings) -> ! {
    let mut next = 0usize;
    loop {
        let started = Instant::now();
        match std::fs::read_to_string(&s.file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                say(format_args!("error {} {e}", s.file.display()));
            }
            result => {
                let eps = endpoints(&result.unwrap_or_default());
                if eps.is_empty() {
                    say(format_args!("waiting for endpoints of {}", s.service));
                } else {
                    let addr = eps[next % eps.len()];
                    next = next.wrapping_add(1);
                    match get(addr) {
                        Ok(body) => say(format_args!("ok {addr} {body}")),
                        Err(e) => say(format_args!("error {addr} {e}")),
                    }
                }
            }
        }
        std::thread::sleep(s.interval.saturating_sub(started.elapsed()));
    }
}

fn main() -> ExitCode {
    match settings() {
        Ok(s) => run(&s),
        Err(e) => {
            eprintln!("hello-client: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_address_of_each_line() {
        let file = "web-1 10.0.0.1:8080 http=8080 admin=9090\n\
                    web-2 10.0.0.2\n\
                    \n\
                    # a comment\n\
                    web-3 [::1]:81 http=81\n\
                    web-4 ::1:82 http=82\n";
        let want: Vec<SocketAddr> = ["10.0.0.1:8080", "[::1]:81", "[::1]:82"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(endpoints(file), want);
        assert!(endpoints("").is_empty());
    }
}
