//! orch-dns (being written).
