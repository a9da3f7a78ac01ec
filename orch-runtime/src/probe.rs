//! Probe checks for the runtimes here ([`Runtime::probe`]): an HTTP GET over hyper's HTTP/1.1
//! client, a TCP connect, a gRPC health check (tonic-health's client), or a command through
//! the runtime's own exec. Every check gives up
//! after its timeout.

use std::time::Duration;

use http_body_util::Empty;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use orch_core::runtime::{exec_probe_result, ProbeAction, ProbeResult, Runtime};
use tokio::net::TcpStream;

/// Runs one check of `action` against workload `id` of `runtime`, within `timeout`.
pub(crate) async fn check(
    runtime: &dyn Runtime,
    id: &str,
    action: &ProbeAction,
    timeout: Duration,
) -> ProbeResult {
    let within = |what: String| format!("{what}: no answer within {timeout:?}");
    match action {
        ProbeAction::HttpGet { host, port, path } => {
            let url = format!("http://{host}:{port}{path}");
            tokio::time::timeout(timeout, http_get(host, *port, path, &url))
                .await
                .unwrap_or_else(|_| Err(within(format!("GET {url}"))))
        }
        ProbeAction::TcpConnect { host, port } => {
            match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), *port))).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("connect {host}:{port}: {e}")),
                Err(_) => Err(within(format!("connect {host}:{port}"))),
            }
        }
        ProbeAction::Grpc {
            host,
            port,
            service,
        } => {
            let what = format!(
                "gRPC health check of {host}:{port}{}",
                service_note(service)
            );
            tokio::time::timeout(timeout, grpc_health(host, *port, service, &what))
                .await
                .unwrap_or_else(|_| Err(within(what)))
        }
        ProbeAction::Exec { command } => {
            exec_probe_result(command, timeout, runtime.exec(id, command, timeout).await)
        }
    }
}

fn service_note(service: &str) -> String {
    if service.is_empty() {
        String::new()
    } else {
        format!(" (service {service:?})")
    }
}

/// `grpc.health.v1.Health/Check` over plain-text HTTP/2 (tonic-health's generated client):
/// passes on `SERVING`.
async fn grpc_health(host: &str, port: u16, service: &str, what: &str) -> ProbeResult {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let authority = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{host}:{port}"),
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| format!("{what}: {e}"))?
        .user_agent("orch-probe")
        .map_err(|e| format!("{what}: {e}"))?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("{what}: cannot connect: {}", source_chain(&e)))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| {
            format!(
                "{what}: {}{}",
                s.code().description(),
                if s.message().is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.message())
                }
            )
        })?;
    match ServingStatus::try_from(answer.get_ref().status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(format!("{what}: {}", other.as_str_name())),
        Err(_) => Err(format!(
            "{what}: unknown status {}",
            answer.get_ref().status
        )),
    }
}

/// An error with its sources (tonic's transport errors say little at the top).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// Aborts the connection task when the check ends (answered, failed or timed out).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `GET url` (`http://host:port/path`): passes on a status from 200 to 399.
async fn http_get(host: &str, port: u16, path: &str, url: &str) -> ProbeResult {
    let failed = |e: &dyn std::fmt::Display| format!("GET {url}: {e}");
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| failed(&e))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed(&e))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let request = hyper::Request::get(path)
        .header(HOST, format!("{host}:{port}"))
        .header(USER_AGENT, "orch-probe")
        .header(CONNECTION, "close")
        .body(Empty::<&'static [u8]>::new())
        .map_err(|e| failed(&e))?;
    let response = send.send_request(request).await.map_err(|e| {
        if e.is_parse() || e.is_incomplete_message() {
            format!("GET {url}: not an HTTP answer")
        } else {
            failed(&e)
        }
    })?;
    let code = response.status().as_u16();
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP {code} from GET {url}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every connection with `answer` (after reading the request head).
    async fn serve(answer: &'static str) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        port
    }

    fn get(port: u16) -> ProbeAction {
        ProbeAction::HttpGet {
            host: "127.0.0.1".into(),
            port,
            path: "/healthz?x=1".into(),
        }
    }

    async fn run(action: &ProbeAction, timeout: Duration) -> ProbeResult {
        let rt = orch_core::FakeRuntime::default();
        check(&rt, "ns.r", action, timeout).await
    }

    #[tokio::test]
    async fn http_checks_pass_on_2xx_and_3xx_only() {
        let second = Duration::from_secs(5);
        let ok = serve("HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(run(&get(ok), second).await, Ok(()));
        let moved = serve("HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(run(&get(moved), second).await, Ok(()));
        let bad = serve("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nnope").await;
        assert_eq!(
            run(&get(bad), second).await,
            Err(format!(
                "HTTP 503 from GET http://127.0.0.1:{bad}/healthz?x=1"
            ))
        );
        let junk = serve("SSH-2.0-OpenSSH\r\n\r\n").await;
        assert_eq!(
            run(&get(junk), second).await,
            Err(format!(
                "GET http://127.0.0.1:{junk}/healthz?x=1: not an HTTP answer"
            ))
        );
        let hangs_up = serve("").await;
        assert_eq!(
            run(&get(hangs_up), second).await,
            Err(format!(
                "GET http://127.0.0.1:{hangs_up}/healthz?x=1: not an HTTP answer"
            ))
        );
        // Connected (the kernel accepts into the backlog) but never answered.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let err = run(&get(port), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            format!("GET http://127.0.0.1:{port}/healthz?x=1: no answer within 200ms")
        );
        drop(silent);
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let err = run(&get(port), second).await.unwrap_err();
        assert!(err.contains("Connection refused"), "{err}");
        let err = run(
            &ProbeAction::TcpConnect {
                host: "127.0.0.1".into(),
                port,
            },
            second,
        )
        .await
        .unwrap_err();
        assert!(
            err.starts_with(&format!("connect 127.0.0.1:{port}: ")) && err.contains("refused"),
            "{err}"
        );
        assert_eq!(
            run(
                &ProbeAction::TcpConnect {
                    host: "127.0.0.1".into(),
                    port: ok
                },
                second
            )
            .await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn http_checks_send_the_host_path_and_user_agent() {
        // The server answers 200 only to the request it expects.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
            let want = format!("host: 127.0.0.1:{echo}\r\n");
            let code = if head.starts_with("get /healthz?x=1 http/1.1\r\n")
                && head.contains(&want)
                && head.contains("user-agent: orch-probe\r\n")
            {
                200
            } else {
                500
            };
            let _ = s
                .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await;
        });
        assert_eq!(run(&get(echo), Duration::from_secs(5)).await, Ok(()));
    }

    /// A real gRPC server on loopback with tonic-health's service: the whole server and
    /// `orch.Ready` serving, `orch.Down` not serving.
    async fn health_server() -> u16 {
        use tonic_health::ServingStatus;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("orch.Ready", ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("orch.Down", ServingStatus::NotServing)
            .await;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _keep = reporter;
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                .await
                .unwrap();
        });
        port
    }

    fn grpc(port: u16, service: &str) -> ProbeAction {
        ProbeAction::Grpc {
            host: "127.0.0.1".into(),
            port,
            service: service.into(),
        }
    }

    #[tokio::test]
    async fn grpc_checks_ask_the_health_service() {
        let port = health_server().await;
        let t = Duration::from_secs(5);
        assert_eq!(run(&grpc(port, ""), t).await, Ok(()));
        assert_eq!(run(&grpc(port, "orch.Ready"), t).await, Ok(()));
        let down = run(&grpc(port, "orch.Down"), t).await.unwrap_err();
        assert!(
            down.ends_with("(service \"orch.Down\"): NOT_SERVING"),
            "{down}"
        );
        let unknown = run(&grpc(port, "orch.Nope"), t).await.unwrap_err();
        assert!(unknown.contains("not found"), "{unknown}");
        // Nothing listens; and an HTTP/1 server is not a gRPC one.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let refused = run(&grpc(closed, ""), t).await.unwrap_err();
        assert!(refused.contains("cannot connect"), "{refused}");
        let http1 = serve("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        assert!(run(&grpc(http1, ""), Duration::from_secs(2)).await.is_err());
    }
}
