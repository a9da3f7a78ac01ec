//! The unix-socket transport: accepts connections on a socket (mode 0600: whoever can open
//! it is an administrator), reads one request line within [`ServeLimits`] and answers it
//! through [`crate::handler`].

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::handler::{answer_into, error, send, Backend, Caller, ResponseSink};
use crate::protocol::{ErrorCode, Request, Response, MAX_LINE_BYTES};

/// Limits of the unix-socket server: what one client, or many, may make it hold.
#[derive(Clone, Debug)]
pub struct ServeLimits {
    /// Connections served at once (streams such as `watch -w` included); more are answered
    /// with an error and closed.
    pub max_connections: usize,
    /// The request line must arrive within this long of connecting (an idle or partial
    /// request is answered with an error and closed).
    pub request_timeout: Duration,
    /// The largest request line, in bytes (refused while reading, not after).
    pub max_request_bytes: usize,
    /// What all connections together may buffer of requests still arriving, in bytes; a
    /// connection that would go past it is answered `Unavailable` and closed.
    pub request_buffer_budget: usize,
}

impl Default for ServeLimits {
    fn default() -> ServeLimits {
        ServeLimits {
            max_connections: 256,
            request_timeout: Duration::from_secs(10),
            max_request_bytes: MAX_LINE_BYTES,
            request_buffer_budget: 64 << 20,
        }
    }
}

/// Binds `path` (replacing only a stale socket, see [`bind`]), restricts it to its owner
/// (0600) and serves until `cancel` fires.
pub async fn serve(
    path: PathBuf,
    backend: Arc<Backend>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let listener = bind(&path).await?;
    serve_listener(listener, path, backend, cancel, ServeLimits::default()).await
}

/// Serves on a listener from [`bind`] within `limits` until `cancel` fires, then removes the
/// socket file at `path`.
pub async fn serve_listener(
    listener: UnixListener,
    path: PathBuf,
    backend: Arc<Backend>,
    cancel: CancellationToken,
    limits: ServeLimits,
) -> std::io::Result<()> {
    let limits = Arc::new(limits);
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let budget = Arc::new(Budget {
        left: std::sync::Mutex::new(limits.request_buffer_budget),
    });
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                // Out of file descriptors and the like: the listener itself is fine, and
                // the connections being served are not dropped.
                Err(e) => {
                    tracing::warn!(error = %e, "api socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (backend, cancel, limits, budget) = (
            backend.clone(),
            cancel.clone(),
            limits.clone(),
            budget.clone(),
        );
        let permit = connections.clone().try_acquire_owned();
        tokio::spawn(async move {
            let mut out = LineSink(stream);
            let Ok(_permit) = permit else {
                let refusal = error(
                    ErrorCode::Unavailable,
                    format!(
                        "too many connections: the daemon serves at most {} at once; retry later",
                        limits.max_connections
                    ),
                );
                let _ = tokio::time::timeout(Duration::from_secs(1), send(&mut out, refusal)).await;
                return;
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = handle(&mut out, &backend, &limits, &budget) => {}
            }
        });
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Binds a unix socket with mode 0600. Something already at `path` is removed only when it
/// is a stale socket (a socket nothing answers on); a live daemon's socket, or any other
/// file, is refused with an error naming the path.
pub async fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it (choose another --socket path)",
                    path.display()
                ),
            ));
        }
        Ok(_) => match UnixStream::connect(path).await {
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is in use by another running daemon", path.display()),
                ))
            }
            // Nothing listens: a socket left behind by a daemon that did not stop cleanly.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path)?
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "{} is a socket that cannot be checked ({e}); refusing to replace it",
                        path.display()
                    ),
                ))
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            ))
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Bytes of requests still arriving that all connections may hold together.
struct Budget {
    left: std::sync::Mutex<usize>,
}

/// What one connection holds of a [`Budget`]; given back when dropped.
struct Held<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Held<'_> {
    /// Takes `more` bytes, or says the budget is spent.
    fn take(&mut self, more: usize) -> bool {
        let mut left = self.budget.left.lock().unwrap_or_else(|p| p.into_inner());
        if *left < more {
            return false;
        }
        *left -= more;
        self.bytes += more;
        true
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        *self.budget.left.lock().unwrap_or_else(|p| p.into_inner()) += self.bytes;
    }
}

/// Reads one request line (without its newline) within the limits, or the error to answer.
/// `Ok(None)`: the client closed the connection before sending a whole line.
async fn read_request(
    stream: &mut UnixStream,
    limits: &ServeLimits,
    budget: &Budget,
) -> Result<Option<Vec<u8>>, Response> {
    use tokio::io::AsyncReadExt;
    let max = limits.max_request_bytes;
    let too_large = || {
        error(
            ErrorCode::TooLarge,
            format!(
                "request is larger than {max} bytes (the limit is {max} bytes); the connection is closed"
            ),
        )
    };
    let mut held = Held { budget, bytes: 0 };
    let mut line: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => n,
        };
        let (data, end) = match chunk[..n].iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (&chunk[..n], false),
        };
        let need = line.len() + data.len();
        if need > max {
            return Err(too_large());
        }
        if need > line.capacity() {
            let want = need.max(line.capacity() * 2).min(max);
            if !held.take(want - line.capacity()) {
                return Err(error(
                    ErrorCode::Unavailable,
                    format!(
                        "the daemon is receiving too many large requests at once (at most {} bytes buffered); retry",
                        limits.request_buffer_budget
                    ),
                ));
            }
            line.reserve_exact(want - line.len());
        }
        line.extend_from_slice(data);
        if end {
            return Ok(Some(line));
        }
    }
}

async fn handle(out: &mut LineSink, backend: &Backend, limits: &ServeLimits, budget: &Budget) {
    let read = tokio::time::timeout(
        limits.request_timeout,
        read_request(&mut out.0, limits, budget),
    )
    .await;
    let line = match read {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) => return,
        Ok(Err(resp)) => {
            let _ = send(out, resp).await;
            return;
        }
        Err(_) => {
            let resp = error(
                ErrorCode::Invalid,
                format!(
                    "no complete request line within {:?}; the connection is closed",
                    limits.request_timeout
                ),
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), send(out, resp)).await;
            return;
        }
    };
    let req: Request = match serde_json::from_slice(&line) {
        Ok(r) => r,
        Err(e) => {
            let _ = send(
                out,
                error(ErrorCode::Invalid, format!("malformed request: {e}")),
            )
            .await;
            return;
        }
    };
    drop(line);
    answer_into(backend, &Caller::Local, req, out).await;
}

/// A unix-socket connection: responses as JSON lines.
struct LineSink(UnixStream);

#[async_trait::async_trait]
impl ResponseSink for LineSink {
    async fn put(&mut self, resp: &Response) -> Result<(), ()> {
        use tokio::io::AsyncWriteExt;
        let mut line = serde_json::to_string(resp).unwrap_or_else(|e| {
            format!("{{\"type\":\"error\",\"code\":\"Internal\",\"message\":\"encode: {e}\"}}")
        });
        line.push('\n');
        self.0.write_all(line.as_bytes()).await.map_err(|_| ())
    }
}
