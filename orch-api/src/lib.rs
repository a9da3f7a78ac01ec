//! orch-api (being written).
