//! orch-core: the object model, manifest parsing and validation, the four traits
//! (`Store`, `Scheduler`, `Runtime`, `Discovery`) and the reconciliation engine.
//!
//! The crate has three parts:
//! - [`model`]: the objects, their validation and manifests — no I/O;
//! - [`engine`]: the control plane — the [`Cache`], the controllers and the server-side
//!   operations ([`apply`], [`delete`], [`scale`], [`plan`]);
//! - [`node`]: the node [`Agent`] and its probes.
//!
//! Nothing in this crate knows a wire format, a CLI, a database or a container engine.
//! In-memory implementations ([`MemStore`], [`FakeRuntime`], [`FakeNetwork`], [`MemDiscovery`]) ship here so
//! downstream crates can test with them.

pub mod discovery;
pub mod engine;
pub mod fake;
pub mod leader;
pub mod memstore;
pub mod model;
pub mod network;
pub mod node;
pub mod runtime;
pub mod scheduler;
pub mod store;

pub use discovery::{Discovery, MemDiscovery};
pub use engine::api::{apply, delete, plan, scale};
pub use engine::{Cache, Engine, EngineConfig};
pub use fake::{FakeNetwork, FakeRuntime};
pub use memstore::MemStore;
pub use model::object::{Kind, Object};
pub use network::Network;
pub use node::{Agent, AgentConfig};
pub use runtime::Runtime;
pub use scheduler::Scheduler;
pub use store::Store;
