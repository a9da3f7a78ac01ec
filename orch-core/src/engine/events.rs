//! Events: controllers record what happened; a background task writes them in batches and
//! keeps only the newest ones so the store does not grow without bound.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::object::{
    Event, EventType, Kind, Metadata, Object, ObjectRef, DEFAULT_NAMESPACE,
};
use crate::model::quantity::Timestamp;
use crate::store::MAX_TXN_OPS;
use crate::store::{create_op, list_objects, txn_chunked, Op, Store, StoreError};

/// Hands events to the writer task. Cloning is cheap; recording never blocks.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Event>,
    source: Arc<str>,
    uid: Arc<str>,
}

impl Recorder {
    /// The same channel, reporting as `source`.
    pub fn with_source(&self, source: &str) -> Recorder {
        Recorder {
            tx: self.tx.clone(),
            source: source.into(),
            uid: self.uid.clone(),
        }
    }

    /// The same channel, for events about the object whose uid is `uid` (recorded in
    /// `involved.uid`, so `orchctl describe` does not show them for a later object of the same
    /// name).
    pub fn about(&self, uid: &str) -> Recorder {
        Recorder {
            tx: self.tx.clone(),
            source: self.source.clone(),
            uid: uid.into(),
        }
    }

    /// Records an event about `kind` `namespace/name`.
    pub fn record(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        type_: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        let ns = if namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            namespace
        };
        let suffix: u64 = rand::random();
        let event = Event {
            metadata: Metadata {
                name: format!("{name}.{suffix:016x}"),
                namespace: ns.into(),
                ..Metadata::default()
            },
            involved: ObjectRef {
                kind: Some(kind),
                namespace: namespace.into(),
                name: name.into(),
                uid: self.uid.to_string(),
            },
            type_,
            reason: reason.into(),
            message: message.into(),
            source: self.source.to_string(),
            timestamp: Timestamp::now(),
        };
        let _ = self.tx.send(event);
    }

    /// A normal event.
    pub fn normal(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.record(kind, namespace, name, EventType::Normal, reason, message);
    }

    /// A warning.
    pub fn warning(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.record(kind, namespace, name, EventType::Warning, reason, message);
    }
}

/// Starts the writer task: batches every `interval`, keeps at most `limit` events.
pub fn spawn_writer(
    store: Arc<dyn Store>,
    limit: usize,
    interval: Duration,
    cancel: CancellationToken,
) -> Recorder {
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    tokio::spawn(async move {
        let mut kept: VecDeque<String> = match list_objects(&*store, Kind::Event, None).await {
            Ok((objs, _)) => {
                let mut evs: Vec<(Timestamp, String)> = objs
                    .iter()
                    .filter_map(|o| {
                        if let Object::Event(e) = o {
                            Some((e.timestamp, o.key()))
                        } else {
                            None
                        }
                    })
                    .collect();
                evs.sort();
                evs.into_iter().map(|(_, k)| k).collect()
            }
            Err(_) => VecDeque::new(),
        };
        let mut failing = false;
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => None,
                e = rx.recv() => e,
            };
            let Some(first) = first else { break };
            tokio::time::sleep(interval).await;
            let mut batch = vec![first];
            while let Ok(e) = rx.try_recv() {
                batch.push(e);
            }
            write_logged(&*store, &mut kept, batch, limit, &mut failing).await;
        }
        // Flush what is left on shutdown.
        let mut batch = Vec::new();
        while let Ok(e) = rx.try_recv() {
            batch.push(e);
        }
        if !batch.is_empty() {
            write_logged(&*store, &mut kept, batch, limit, &mut failing).await;
        }
    });
    Recorder {
        tx,
        source: "".into(),
        uid: "".into(),
    }
}

async fn write_batch(
    store: &dyn Store,
    kept: &mut VecDeque<String>,
    mut batch: Vec<Event>,
    limit: usize,
) -> Result<(), StoreError> {
    if batch.len() > limit {
        batch.drain(..batch.len() - limit);
    }
    let creates: Vec<Op> = batch
        .into_iter()
        .map(|e| create_op(&Object::Event(e)))
        .collect();
    let new_keys: Vec<String> = creates.iter().map(|o| o.key().to_string()).collect();
    let excess = (kept.len() + new_keys.len()).saturating_sub(limit);
    let deletes: Vec<Op> = kept
        .iter()
        .take(excess)
        .map(|k| Op::Delete {
            key: k.clone(),
            expected: None,
        })
        .collect();
    let mut ops = creates.clone();
    ops.extend(deletes);
    match txn_chunked(store, ops, MAX_TXN_OPS).await {
        Ok(_) => {
            kept.drain(..excess.min(kept.len()));
        }
        Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {
            // An event deleted by someone else fails the batch: write without deletes
            // and forget those keys.
            kept.drain(..excess.min(kept.len()));
            txn_chunked(store, creates, MAX_TXN_OPS).await?;
        }
        Err(e) => return Err(e),
    }
    kept.extend(new_keys);
    Ok(())
}

/// Writes a batch; logs the first failure of a run of failures and the recovery, not every
/// batch (events are best effort; a store outage must not flood the log).
async fn write_logged(
    store: &dyn Store,
    kept: &mut VecDeque<String>,
    batch: Vec<Event>,
    limit: usize,
    failing: &mut bool,
) {
    let n = batch.len();
    match write_batch(store, kept, batch, limit).await {
        Ok(()) if *failing => {
            *failing = false;
            tracing::info!("events: writing events again");
        }
        Ok(()) => {}
        Err(e) if !*failing => {
            *failing = true;
            tracing::warn!(error = %e, "events: could not write {n} events (dropped until the store accepts writes)");
        }
        Err(e) => tracing::debug!(error = %e, "events: could not write {n} events"),
    }
}
