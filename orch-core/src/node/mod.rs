//! What runs on every node: the [`Agent`] that drives a [`Runtime`](crate::Runtime) for the
//! replicas bound to its node (and alone writes their status), the probe tracker that decides
//! from the results of their probes when they are ready and alive, and the [`VolumeLayout`]
//! of the node's named volumes.

mod agent;
pub(crate) mod probes;
pub mod volumes;

pub use agent::{Agent, AgentConfig, AgentNetwork};
pub use volumes::VolumeLayout;
