//! The on-disk byte layout of [`EmbeddedStore`](crate::EmbeddedStore) records: a small
//! hand-rolled little-endian format, chosen over serde_json because values are raw bytes
//! (JSON would spell every byte as a number) and because it needs no dependency.
//!
//! A key record (table `kv`, stored under the key itself):
//!
//! ```text
//! create_revision: u64 | mod_revision: u64 | value bytes (the rest)
//! ```
//!
//! A log entry (table `log`, stored under the transaction's revision): every event of one
//! committed transaction, in operation order.
//!
//! ```text
//! count: u32 | count × event
//! event = tag: u8 (0 put, 1 delete) | key_len: u32 | key (UTF-8)
//!       | create_revision: u64 | mod_revision: u64 | value_len: u32 | value
//! ```
//!
//! A put carries the key's new value; a delete carries the key's last value, and its revision
//! is the log entry's own.

use std::sync::Arc;

use orch_core::store::{KeyValue, Revision, WatchEvent};

const TAG_PUT: u8 = 0;
const TAG_DELETE: u8 = 1;

/// Why stored bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The record ends before a field it announces.
    #[error("record truncated at byte {at} (length {len})")]
    Truncated { at: usize, len: usize },
    /// An event tag that is neither put nor delete.
    #[error("unknown event tag {0}")]
    UnknownTag(u8),
    /// A key that is not UTF-8.
    #[error("key is not utf-8")]
    KeyNotUtf8,
    /// Bytes left over after the last event.
    #[error("{0} trailing bytes after the last event")]
    Trailing(usize),
}

/// Encodes a key record.
pub(crate) fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

/// Decodes a key record stored under `key`.
pub(crate) fn decode_kv(key: &str, bytes: &[u8]) -> Result<KeyValue, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let create_revision = r.u64()?;
    let mod_revision = r.u64()?;
    Ok(KeyValue {
        key: key.to_string(),
        value: Arc::from(r.rest()),
        create_revision,
        mod_revision,
    })
}

/// The revisions of a key record (`create`, `mod`), without copying its value.
pub(crate) fn decode_revisions(bytes: &[u8]) -> Result<(Revision, Revision), DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    Ok((r.u64()?, r.u64()?))
}

/// The largest log entry (one transaction's events) the store writes: well under redb's
/// 3 GiB value limit, and every length in it fits the format's `u32`s.
pub(crate) const MAX_ENTRY: usize = 1 << 30;

/// How many bytes [`encode_events`] produces for `events`.
pub(crate) fn events_len(events: &[WatchEvent]) -> usize {
    let each = |e: &WatchEvent| {
        let kv = event_kv(e);
        1 + 4 + kv.key.len() + 16 + 4 + kv.value.len()
    };
    4 + events.iter().map(each).sum::<usize>()
}

/// Encodes the events of one transaction; callers keep [`events_len`] under [`MAX_ENTRY`].
pub(crate) fn encode_events(events: &[WatchEvent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events_len(events));
    out.extend_from_slice(&len32(events.len()).to_le_bytes());
    for e in events {
        let (tag, kv) = match e {
            WatchEvent::Put(kv) => (TAG_PUT, kv),
            WatchEvent::Delete { prev, .. } => (TAG_DELETE, prev),
        };
        out.push(tag);
        out.extend_from_slice(&len32(kv.key.len()).to_le_bytes());
        out.extend_from_slice(kv.key.as_bytes());
        out.extend_from_slice(&kv.create_revision.to_le_bytes());
        out.extend_from_slice(&kv.mod_revision.to_le_bytes());
        out.extend_from_slice(&len32(kv.value.len()).to_le_bytes());
        out.extend_from_slice(&kv.value);
    }
    out
}

/// How many events a log entry holds, reading only its header.
pub(crate) fn event_count(bytes: &[u8]) -> Result<usize, DecodeError> {
    Ok(Reader { bytes, at: 0 }.u32()? as usize)
}

/// Decodes the events of the transaction committed at `revision`.
pub(crate) fn decode_events(
    revision: Revision,
    bytes: &[u8],
) -> Result<Vec<WatchEvent>, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let count = r.u32()? as usize;
    // Each event takes at least 21 bytes; do not trust `count` for the allocation.
    let mut events = Vec::with_capacity(count.min(bytes.len() / 21));
    for _ in 0..count {
        let tag = r.u8()?;
        let key_len = r.u32()? as usize;
        let key = std::str::from_utf8(r.take(key_len)?)
            .map_err(|_| DecodeError::KeyNotUtf8)?
            .to_string();
        let create_revision = r.u64()?;
        let mod_revision = r.u64()?;
        let value_len = r.u32()? as usize;
        let value = Arc::from(r.take(value_len)?);
        let kv = KeyValue {
            key,
            value,
            create_revision,
            mod_revision,
        };
        events.push(match tag {
            TAG_PUT => WatchEvent::Put(kv),
            TAG_DELETE => WatchEvent::Delete { prev: kv, revision },
            other => return Err(DecodeError::UnknownTag(other)),
        });
    }
    match r.rest().len() {
        0 => Ok(events),
        n => Err(DecodeError::Trailing(n)),
    }
}

fn event_kv(e: &WatchEvent) -> &KeyValue {
    match e {
        WatchEvent::Put(kv) => kv,
        WatchEvent::Delete { prev, .. } => prev,
    }
}

fn len32(n: usize) -> u32 {
    debug_assert!(n <= MAX_ENTRY, "field of {n} bytes is over the entry limit");
    n as u32
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len());
        let Some(end) = end else {
            return Err(DecodeError::Truncated {
                at: self.at,
                len: self.bytes.len(),
            });
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut b = [0; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn rest(&mut self) -> &'a [u8] {
        let out = &self.bytes[self.at..];
        self.at = self.bytes.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &[u8], create_revision: Revision, mod_revision: Revision) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision,
            mod_revision,
        }
    }

    #[test]
    fn kv_round_trips() {
        let k = kv("/a/b", b"\x00\xffvalue", 3, 9);
        assert_eq!(decode_kv("/a/b", &encode_kv(&k)).unwrap(), k);
        let empty = kv("/e", b"", 1, 1);
        assert_eq!(decode_kv("/e", &encode_kv(&empty)).unwrap(), empty);
    }

    #[test]
    fn events_round_trip() {
        let events = vec![
            WatchEvent::Put(kv("/a/1", b"x", 7, 7)),
            WatchEvent::Delete {
                prev: kv("/a/2", b"old", 2, 5),
                revision: 7,
            },
            WatchEvent::Put(kv("/ü/ключ", b"", 1, 7)),
        ];
        let bytes = encode_events(&events);
        assert_eq!(event_count(&bytes).unwrap(), 3);
        assert_eq!(decode_events(7, &bytes).unwrap(), events);
        assert_eq!(bytes.len(), events_len(&events));
        assert_eq!(decode_events(7, &encode_events(&[])).unwrap(), vec![]);
    }

    #[test]
    fn damaged_records_are_errors() {
        let bytes = encode_events(&[WatchEvent::Put(kv("/a/1", b"x", 7, 7))]);
        for cut in 0..bytes.len() {
            assert!(
                decode_events(7, &bytes[..cut]).is_err(),
                "cut at {cut} decoded"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(matches!(
            decode_events(7, &extra),
            Err(DecodeError::Trailing(1))
        ));
        let mut bad_tag = bytes.clone();
        bad_tag[4] = 9;
        assert!(matches!(
            decode_events(7, &bad_tag),
            Err(DecodeError::UnknownTag(9))
        ));
        assert!(matches!(
            decode_kv("/k", &[0; 15]),
            Err(DecodeError::Truncated { .. })
        ));
        let huge_count = u32::MAX.to_le_bytes();
        assert!(decode_events(1, &huge_count).is_err());
    }
}
