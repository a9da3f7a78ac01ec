//! orch-api: the protocol `orchctl` and other clients speak to a daemon, its server and a
//! typed client. One request handler ([`handler`]) answers every [`Request`]; two transports
//! carry the same transport-neutral messages to it: newline-delimited JSON over a local unix
//! socket ([`server`]; mode 0600: whoever can open it is an administrator) and gRPC over
//! mutual TLS (the administrators' API of [`grpc`], for administrators with a cluster certificate).

pub mod client;
pub mod config;
pub mod files;
pub mod grpc;
pub mod handler;
pub mod managers;
pub mod protocol;
pub mod render;
pub mod server;

pub use client::Client;
pub use protocol::{ErrorCode, Request, Response};
