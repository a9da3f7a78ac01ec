//! orch-runtime: implementations of [`orch_core::Runtime`].
//!
//! [`ProcessRuntime`] (the embedded default) runs each replica as a real child process.

pub mod cgroup;
pub mod process;

pub use process::{ProcessConfig, ProcessRuntime};
