//! `--metrics-listen ADDR`: `/metrics` (Prometheus text format), `/healthz` (the process
//! answers) and `/readyz` (the engine has listed the store and reaches it) over plain HTTP.
//! GET only; requests are read up to 8 KiB, each connection answers once and closes. Both
//! `/readyz` and `/metrics` say who leads (`orch_manager_leader_info{manager, leader}`).

use std::sync::Arc;
use std::time::Duration;

use orch_core::engine::Ctx;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Who this daemon is among the managers: its name, and whether it takes part in an
/// election (without one, it leads).
#[derive(Clone, Debug)]
pub struct Role {
    /// The manager's name.
    pub manager: String,
    /// Whether leadership is elected (several managers on etcd).
    pub elected: bool,
}

/// Serves until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<Ctx>,
    role: Role,
    cancel: CancellationToken,
) {
    loop {
        let (mut conn, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (ctx, role) = (ctx.clone(), role.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut len = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    let n = conn.read(&mut buf[len..]).await?;
                    if n == 0 {
                        break;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let mut parts = head.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, content_type, body) = respond(&ctx, &role, method, path);
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// Who leads, as this manager knows it (empty while no one does), and this one's role.
fn leadership(ctx: &Ctx, role: &Role) -> (String, &'static str) {
    if !role.elected {
        return (role.manager.clone(), "leader");
    }
    let l = ctx.leadership().borrow().clone();
    if l.leading {
        (role.manager.clone(), "leader")
    } else {
        (l.leader.unwrap_or_default(), "standby")
    }
}

/// A Prometheus label value.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn respond(
    ctx: &Ctx,
    role: &Role,
    method: &str,
    path: &str,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" {
        return ("405 Method Not Allowed", TEXT, "only GET\n".into());
    }
    match path.split('?').next().unwrap_or("") {
        "/metrics" => {
            let (leader, _) = leadership(ctx, role);
            let mut body = ctx.render_metrics();
            body.push_str(&format!(
                "# HELP orch_manager_leader_info Which manager leads, as this one knows it (leader empty while none does).\n# TYPE orch_manager_leader_info gauge\norch_manager_leader_info{{manager=\"{}\",leader=\"{}\"}} 1\n",
                label(&role.manager),
                label(&leader)
            ));
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
        }
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" => {
            let (leader, mine) = leadership(ctx, role);
            let who = format!(
                "manager: {} ({mine})\nleader: {}\n",
                role.manager,
                if leader.is_empty() { "none" } else { &leader }
            );
            match ctx.readiness() {
                Ok(()) => ("200 OK", TEXT, format!("ok\n{who}")),
                Err(why) => (
                    "503 Service Unavailable",
                    TEXT,
                    format!("not ready: {why}\n{who}"),
                ),
            }
        }
        _ => (
            "404 Not Found",
            TEXT,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}
