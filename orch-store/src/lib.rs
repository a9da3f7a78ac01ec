//! orch-store (being written).
