//! orch-store: the durable embedded [`Store`](orch_core::Store) ([`EmbeddedStore`], one redb
//! file) and the [`conformance`] suite that every `Store` implementation runs.
//!
//! The contract lives in `orch_core::store`; this crate only implements and checks it.

mod codec;
pub mod compact;
pub mod conformance;
pub mod embedded;

pub use compact::Compact;
pub use embedded::{EmbeddedOptions, EmbeddedStore};
