//! orch-runtime (being written).
