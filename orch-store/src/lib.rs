//! orch-store: the durable embedded [`Store`](orch_core::Store) ([`EmbeddedStore`], one redb
//! file) and the [`conformance`] suite that every `Store` implementation runs.
//!
//! With the cargo feature `etcd` (needs `protoc` to build), the `etcd` module adds an etcd-backed
//! store (plain or TLS), leader election over it (`etcd::Election`) and cluster
//! administration (`etcd::EtcdAdmin`), and `local_etcd` throwaway etcd servers and clusters
//! for tests and benchmarks.
//!
//! The contract lives in `orch_core::store`; this crate only implements and checks it.

mod codec;
pub mod compact;
pub mod conformance;
pub mod embedded;
pub mod encrypted;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "etcd")]
pub mod local_etcd;
mod wal;

pub use compact::Compact;
pub use embedded::{EmbeddedOptions, EmbeddedStore};
