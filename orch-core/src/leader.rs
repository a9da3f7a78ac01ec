//! Leadership among several engines over one store: only the engine that holds the current
//! [`Term`] runs the control plane, and every write its controllers make carries an
//! [`Op::Check`](crate::store::Op::Check) on the term's key, so a deposed leader that has not
//! noticed yet cannot write.
//!
//! An [`Elector`] is how a candidate becomes leader and learns it no longer is: `orch-store`'s
//! etcd `Election` (an etcd lease and a key) for managers on etcd; [`StoreElector`] (a lease
//! key renewed by compare-and-swap, over any [`Store`]) for tests and embedders without etcd.
//! [`EngineBuilder::elector`](crate::engine::EngineBuilder) hands one to the engine, whose
//! leadership loop campaigns, starts the control plane over a [`Fenced`] store when elected,
//! and stops it when [`Elector::lost`] resolves — which an elector makes happen before its
//! lease can have ended, so two control planes never run at once.

use async_trait::async_trait;

use crate::store::{Revision, StoreError};

/// One term of leadership: the key that stands for it and the revision it was created at.
/// Writes fenced by the term carry `Op::Check { key, created }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    /// The leader key, in the store's key space (e.g. `/cluster/leader`).
    pub key: String,
    /// The key's create revision: it differs for every term.
    pub created: Revision,
    /// The leader's name (the candidate's [`Elector::name`]).
    pub holder: String,
}

/// How one candidate takes part in an election.
#[async_trait]
pub trait Elector: Send + Sync {
    /// This candidate's name (a manager's name), recorded as the term's holder.
    fn name(&self) -> &str;

    /// Waits until this candidate leads and returns its term. Errors are transient store
    /// failures: the caller waits and campaigns again.
    async fn campaign(&self) -> Result<Term, StoreError>;

    /// Resolves when `term` has ended or may end soon: the key is gone or held by another, or
    /// the lease could not be renewed for long enough that it might expire. It must resolve
    /// early enough that the caller can stop its controllers before the lease ends.
    async fn lost(&self, term: &Term);

    /// Gives `term` up at once (a clean shutdown), so another candidate need not wait for the
    /// lease to expire. Best effort.
    async fn resign(&self, term: &Term);

    /// Who leads now, if anyone (read from the store).
    async fn leader(&self) -> Result<Option<String>, StoreError>;
}
