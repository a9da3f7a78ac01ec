//! The reconciliation engine (being written).
