//! orch-store: the durable embedded [`Store`](orch_core::Store) ([`EmbeddedStore`], one redb
//! file) and the [`conformance`] suite that every `Store` implementation runs.
//!
//! With the cargo feature `etcd` (needs `protoc` to build), the `etcd` module adds an etcd-backed
//! store and `local_etcd` a throwaway etcd server for tests and benchmarks.
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
