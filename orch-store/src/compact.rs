//! [`Compact`]: forgetting old watch history, for stores that can (the `Store` trait has no
//! such operation, so the conformance suite and operators reach it through this trait).

use std::sync::Arc;

use async_trait::async_trait;
use orch_core::memstore::MemStore;
use orch_core::store::{Revision, StoreError};

/// A store whose watch history can be dropped up to a revision.
#[async_trait]
pub trait Compact: Send + Sync {
    /// Forgets watch history up to and including `revision`: a later watch from a revision
    /// before it fails with [`StoreError::Compacted`]. Keys and their values are untouched.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;
}

#[async_trait]
impl Compact for MemStore {
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        MemStore::compact(self, revision);
        Ok(())
    }
}

#[async_trait]
impl<T: Compact + ?Sized> Compact for Arc<T> {
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        (**self).compact(revision).await
    }
}
