//! orch-runtime: [`ProcessRuntime`], the [`orch_core::runtime::Runtime`] that runs workloads
//! as real processes on this machine (the embedded default).
//!
//! Workloads run in their own process group, write their output to size-capped files (through
//! a log writer process running [`copy_capped`], or straight to the file), are confined by
//! cgroups where the machine allows, and are re-adopted by a new runtime on the same state
//! directory after the host process restarts.

mod cgroup;
#[cfg(feature = "containerd")]
pub mod containerd;
mod logs;
mod mounts;
mod probe;
mod process;
mod procfs;
mod state;

pub use logs::copy_capped;
pub use process::{ProcessConfig, ProcessRuntime};
