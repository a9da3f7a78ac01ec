//! orch-core: the object model, manifest parsing and validation, the four traits
//! (`Store`, `Scheduler`, `Runtime`, `Discovery`) and the reconciliation engine.
//!
//! Nothing in this crate knows a wire format, a CLI, a database or a container engine.
//! In-memory implementations ([`memstore::MemStore`], [`fake::FakeRuntime`],
//! [`discovery::MemDiscovery`]) ship here so downstream crates can test with them.

pub mod api;
pub mod discovery;
pub mod engine;
pub mod expand;
pub mod fake;
mod jsondiff;
pub mod manifest;
pub mod memstore;
pub mod metrics;
pub mod object;
pub mod quantity;
pub mod runtime;
pub mod scheduler;
pub mod store;
pub mod validate;

pub use discovery::Discovery;
pub use object::{Kind, Object};
pub use runtime::Runtime;
pub use scheduler::Scheduler;
pub use store::Store;
