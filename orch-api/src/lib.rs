//! orch-api: the protocol `orchctl` and other clients speak to a daemon, its server and a
//! typed client. Today the transport is newline-delimited JSON over a local unix socket
//! (mode 0600: whoever can open it is an administrator). The messages are transport-neutral
//! so the gRPC transport of the cluster issue can carry the same requests.

pub mod client;
pub mod config;
pub mod files;
pub mod grpc;
pub mod handler;
pub mod protocol;
pub mod render;
pub mod server;

pub use client::Client;
pub use protocol::{ErrorCode, Request, Response};
