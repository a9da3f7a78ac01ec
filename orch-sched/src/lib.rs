//! orch-sched (being written).
