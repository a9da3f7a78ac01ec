//! The cluster protocol: gRPC (tonic) over mutual TLS between a manager and its agents.
//!
//! - [`store`]: the manager's [`Store`](orch_core::store::Store) served to agents
//!   and the client side ([`store::RemoteStore`]), so the agent code is the same in one
//!   process and across hosts. What each caller may write is checked against its
//!   certificate's identity (`auth`).
//! - [`pki`]: the cluster CA a manager creates on first start, join tokens that carry its
//!   digest, node certificates issued from CSRs.
//! - `api`: the administrators' API (`orchctl` over the network): the local socket's
//!   requests and responses carried over gRPC.
//! - [`node`]: what an agent serves its manager (logs, exec, pull progress of its replicas).
//! - [`cluster`]: joining (a token buys a certificate), renewal, and the server that puts
//!   the store, joining and the administrators' API on one TCP port.
//! - [`limits`]: what those servers bear (concurrency, load shedding, a timeout), as tower
//!   layers.

pub(crate) mod api;
pub(crate) mod auth;
pub mod cluster;
pub mod limits;
pub mod node;
pub mod pki;
pub mod store;
mod wire;

/// The generated protocol types and services (`proto/orch.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("orch.v1");
}

/// The largest message either side accepts (requests and answers).
pub(crate) const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// The name every manager's certificate carries and every client checks, whatever address
/// it dials (as Docker Swarm's `swarm-manager`).
pub const MANAGER_NAME: &str = "orch-manager";
