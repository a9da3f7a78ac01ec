//! The typed client: one connection per request over the local socket, or requests over
//! gRPC with mutual TLS to a manager ([`Client::remote`]).

use std::path::{Path, PathBuf};

use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LinesCodec};

use crate::protocol::{ErrorCode, Request, Response, MAX_LINE_BYTES};

/// Errors talking to a daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {}: {error} (is orchd running? start it with `orchd server`, or pass --socket)", .path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why: part of the message, so not also reported as the error's source (an error
        /// chain would print it twice).
        error: std::io::Error,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// Category.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
    /// A manager could not be reached over the network (or refused the caller).
    #[error("{addr}: {message}")]
    Remote {
        /// Its address.
        addr: String,
        /// Why.
        message: String,
    },
    /// The connection broke or the daemon sent nonsense.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// A client for one daemon: its local socket, or a manager's address.
#[derive(Clone, Debug)]
pub struct Client {
    path: PathBuf,
    remote: Option<(String, tonic::transport::Channel)>,
}

impl Client {
    /// A client for the socket at `path` (nothing is opened yet).
    pub fn new(path: impl AsRef<Path>) -> Client {
        Client {
            path: path.as_ref().to_path_buf(),
            remote: None,
        }
    }

    /// A client for the manager at `addr` (its `--listen`), authenticated with an
    /// administrator's credentials (nothing is opened yet).
    pub fn remote(
        addr: &str,
        creds: &crate::grpc::cluster::Credentials,
    ) -> Result<Client, ClientError> {
        let channel =
            crate::grpc::cluster::channel(addr, creds).map_err(|e| ClientError::Remote {
                addr: addr.into(),
                message: e.to_string(),
            })?;
        Ok(Client {
            path: PathBuf::new(),
            remote: Some((addr.to_string(), channel)),
        })
    }

    fn grpc(
        &self,
    ) -> Option<(
        &str,
        crate::grpc::pb::api_client::ApiClient<tonic::transport::Channel>,
    )> {
        let (addr, ch) = self.remote.as_ref()?;
        let c = crate::grpc::pb::api_client::ApiClient::new(ch.clone())
            .max_decoding_message_size(crate::grpc::MAX_MESSAGE)
            .max_encoding_message_size(crate::grpc::MAX_MESSAGE);
        Some((addr, c))
    }

    async fn open(&self, req: &Request) -> Result<Framed<UnixStream, LinesCodec>, ClientError> {
        let line = serde_json::to_string(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if line.len() > MAX_LINE_BYTES {
            return Err(ClientError::Api {
                code: ErrorCode::TooLarge,
                message: format!(
                    "request is {} bytes; the limit is {MAX_LINE_BYTES} bytes (16 MiB)",
                    line.len()
                ),
            });
        }
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|error| ClientError::Connect {
                    path: self.path.clone(),
                    error,
                })?;
        let mut framed = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE_BYTES));
        if let Err(e) = framed.send(line).await {
            // The daemon may have refused the request before reading it all (too many
            // connections, too large): its answer says why better than the broken pipe.
            if let Ok(Some(Ok(answer))) =
                tokio::time::timeout(std::time::Duration::from_secs(1), framed.next()).await
            {
                into_result(parse(&answer)?)?;
            }
            return Err(ClientError::Protocol(e.to_string()));
        }
        Ok(framed)
    }

    /// Sends a one-shot request; an `Error` response becomes `Err`.
    pub async fn call(&self, req: Request) -> Result<Response, ClientError> {
        if let Some((addr, mut c)) = self.grpc() {
            let m = c.call(message(&req)?).await.map_err(|s| remote(addr, s))?;
            return into_result(parse(&m.into_inner().json)?);
        }
        let mut framed = self.open(&req).await?;
        match framed.next().await {
            Some(Ok(line)) => into_result(parse(&line)?),
            Some(Err(e)) => Err(ClientError::Protocol(e.to_string())),
            None => Err(ClientError::Protocol(
                "the daemon closed the connection without answering".into(),
            )),
        }
    }

    /// Sends a streaming request (`Watch`, `Logs`); the stream ends after `End` or an error.
    pub async fn stream(
        &self,
        req: Request,
    ) -> Result<BoxStream<'static, Result<Response, ClientError>>, ClientError> {
        if let Some((addr, mut c)) = self.grpc() {
            let addr = addr.to_string();
            let s = c
                .stream(message(&req)?)
                .await
                .map_err(|s| remote(&addr, s))?
                .into_inner();
            return Ok(s
                .map(move |m| match m {
                    Ok(m) => parse(&m.json).and_then(into_result),
                    Err(s) => Err(remote(&addr, s)),
                })
                .take_while(|r| std::future::ready(!matches!(r, Ok(Response::End))))
                .boxed());
        }
        let framed = self.open(&req).await?;
        Ok(framed
            .map(|line| match line {
                Ok(l) => parse(&l).and_then(into_result),
                Err(e) => Err(ClientError::Protocol(e.to_string())),
            })
            .take_while(|r| std::future::ready(!matches!(r, Ok(Response::End))))
            .boxed())
    }
}

fn message(req: &Request) -> Result<crate::grpc::pb::ApiMessage, ClientError> {
    let json = serde_json::to_string(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    // The frame adds a few bytes to the JSON.
    let limit = crate::grpc::MAX_MESSAGE - 16;
    if json.len() > limit {
        return Err(ClientError::Api {
            code: ErrorCode::TooLarge,
            message: format!(
                "request is {} bytes; the cluster API's message limit is {} bytes (4 MiB)",
                json.len(),
                crate::grpc::MAX_MESSAGE
            ),
        });
    }
    Ok(crate::grpc::pb::ApiMessage { json })
}

fn remote(addr: &str, s: tonic::Status) -> ClientError {
    ClientError::Remote {
        addr: addr.into(),
        message: match s.code() {
            tonic::Code::Unavailable => format!("cannot reach the manager: {}", s.message()),
            _ => s.message().to_string(),
        },
    }
}

fn parse(line: &str) -> Result<Response, ClientError> {
    serde_json::from_str(line).map_err(|e| ClientError::Protocol(format!("bad response: {e}")))
}

fn into_result(r: Response) -> Result<Response, ClientError> {
    match r {
        Response::Error { code, message } => Err(ClientError::Api { code, message }),
        other => Ok(other),
    }
}
