//! What runs on every node: the [`agent`] that drives a [`Runtime`](crate::Runtime) for the
//! replicas bound to its node, and the [`probes`] that decide when they are ready and alive.

pub mod agent;
pub mod probes;
pub mod volumes;

pub use agent::{Agent, AgentConfig};
pub use volumes::VolumeLayout;
