//! The store's types on the wire: orch-core's key-values, operations and watch batches to
//! and from the protocol's messages, and store errors to and from gRPC statuses (the error
//! itself in the details, so a remote caller gets the same [`StoreError`]).

use orch_core::store::{KeyValue, Op, StoreError, WatchBatch, WatchEvent};
use prost::Message;
use tonic::Status;

use super::pb;

pub(crate) fn kv_to_pb(kv: KeyValue) -> pb::KeyValue {
    pb::KeyValue {
        key: kv.key,
        value: kv.value.to_vec(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
    }
}

pub(crate) fn kv_from_pb(kv: pb::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key,
        value: kv.value.into(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
    }
}

pub(crate) fn op_to_pb(op: Op) -> pb::Op {
    use pb::op::Op as P;
    pb::Op {
        op: Some(match op {
            Op::Create { key, value } => P::Create(pb::Create { key, value }),
            Op::Update {
                key,
                value,
                expected,
            } => P::Update(pb::Update {
                key,
                value,
                expected,
            }),
            Op::Delete { key, expected } => P::Delete(pb::Delete { key, expected }),
            Op::Check { key, created } => P::Check(pb::Check { key, created }),
        }),
    }
}

pub(crate) fn op_from_pb(op: pb::Op) -> Result<Op, Status> {
    use pb::op::Op as P;
    Ok(match op.op {
        Some(P::Create(c)) => Op::Create {
            key: c.key,
            value: c.value,
        },
        Some(P::Update(u)) => Op::Update {
            key: u.key,
            value: u.value,
            expected: u.expected,
        },
        Some(P::Delete(d)) => Op::Delete {
            key: d.key,
            expected: d.expected,
        },
        Some(P::Check(c)) => Op::Check {
            key: c.key,
            created: c.created,
        },
        None => return Err(Status::invalid_argument("txn: an operation with no kind")),
    })
}

pub(crate) fn batch_to_pb(b: WatchBatch) -> pb::WatchBatch {
    use pb::watch_event::Event as E;
    pb::WatchBatch {
        revision: b.revision,
        events: b
            .events
            .into_iter()
            .map(|e| pb::WatchEvent {
                event: Some(match e {
                    WatchEvent::Put(kv) => E::Put(kv_to_pb(kv)),
                    WatchEvent::Delete { prev, .. } => E::Delete(kv_to_pb(prev)),
                }),
            })
            .collect(),
    }
}

pub(crate) fn batch_from_pb(b: pb::WatchBatch) -> Result<WatchBatch, StoreError> {
    use pb::watch_event::Event as E;
    let revision = b.revision;
    let events = b
        .events
        .into_iter()
        .map(|e| match e.event {
            Some(E::Put(kv)) => Ok(WatchEvent::Put(kv_from_pb(kv))),
            Some(E::Delete(kv)) => Ok(WatchEvent::Delete {
                prev: kv_from_pb(kv),
                revision,
            }),
            None => Err(StoreError::Corrupt {
                key: String::new(),
                reason: format!("watch batch {revision}: an event with no kind"),
            }),
        })
        .collect::<Result<_, _>>()?;
    Ok(WatchBatch { revision, events })
}

/// A store error as a gRPC status, the error itself in the details so [`RemoteStore`](super::store::RemoteStore) gives
/// its caller the same [`StoreError`].
pub(crate) fn status_of(e: StoreError) -> Status {
    use pb::store_failure::Failure as F;
    use tonic::Code;
    let message = e.to_string();
    let (code, failure) = match e {
        StoreError::Conflict {
            key,
            expected,
            actual,
        } => (
            Code::Aborted,
            F::Conflict(pb::Conflict {
                key,
                expected,
                actual,
            }),
        ),
        StoreError::Fenced {
            key,
            expected,
            actual,
        } => (
            Code::FailedPrecondition,
            F::Fenced(pb::Conflict {
                key,
                expected,
                actual,
            }),
        ),
        StoreError::AlreadyExists { key } => (Code::AlreadyExists, F::AlreadyExists(key)),
        StoreError::NotFound { key } => (Code::NotFound, F::NotFound(key)),
        StoreError::Compacted { requested, oldest } => (
            Code::OutOfRange,
            F::Compacted(pb::Compacted { requested, oldest }),
        ),
        StoreError::TooLarge { what, size, limit } => (
            Code::ResourceExhausted,
            F::TooLarge(pb::TooLarge {
                what,
                size: size as u64,
                limit: limit as u64,
            }),
        ),
        StoreError::Unavailable(m) => (Code::Unavailable, F::Unavailable(m)),
        StoreError::WatchLagged => (Code::ResourceExhausted, F::WatchLagged(true)),
        StoreError::Corrupt { key, reason } => {
            (Code::DataLoss, F::Corrupt(pb::Corrupt { key, reason }))
        }
        StoreError::Other(e) => (Code::Internal, F::Other(e.to_string())),
    };
    let details = pb::StoreFailure {
        failure: Some(failure),
    }
    .encode_to_vec();
    Status::with_details(code, message, details.into())
}

/// The [`StoreError`] a status stands for: the one in its details, or for a status that
/// carries none (the connection failed, a limit was hit, permission was denied), `Unavailable`
/// for transient transport failures and `Other` with the server's message otherwise.
pub(crate) fn error_of(s: Status) -> StoreError {
    use pb::store_failure::Failure as F;
    use tonic::Code;
    if let Ok(pb::StoreFailure {
        failure: Some(f), ..
    }) = pb::StoreFailure::decode(s.details())
    {
        return match f {
            F::Conflict(c) => StoreError::Conflict {
                key: c.key,
                expected: c.expected,
                actual: c.actual,
            },
            F::Fenced(c) => StoreError::Fenced {
                key: c.key,
                expected: c.expected,
                actual: c.actual,
            },
            F::AlreadyExists(key) => StoreError::AlreadyExists { key },
            F::NotFound(key) => StoreError::NotFound { key },
            F::Compacted(c) => StoreError::Compacted {
                requested: c.requested,
                oldest: c.oldest,
            },
            F::TooLarge(t) => StoreError::TooLarge {
                what: t.what,
                size: t.size as usize,
                limit: t.limit as usize,
            },
            F::Unavailable(m) => StoreError::Unavailable(m),
            F::WatchLagged(_) => StoreError::WatchLagged,
            F::Corrupt(c) => StoreError::Corrupt {
                key: c.key,
                reason: c.reason,
            },
            F::Other(m) => StoreError::Other(m.into()),
        };
    }
    match s.code() {
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown => {
            StoreError::Unavailable(format!("manager: {}", s.message()))
        }
        _ => StoreError::Other(format!("manager refused: {} ({:?})", s.message(), s.code()).into()),
    }
}
