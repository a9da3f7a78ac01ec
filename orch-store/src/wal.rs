//! The embedded store's write-ahead log: what makes one durable write cost one sequential
//! write and one `fdatasync`.
//!
//! A redb commit that fsyncs writes its changed B-tree pages, scattered over the file, and
//! then the header; the disk pays for every one of them on each acknowledged write. Instead,
//! each group of transactions is committed to redb *without* an fsync and its log entries
//! are appended here and synced with one `fdatasync`; only then are they acknowledged. Every
//! so often (a checkpoint) a redb commit with fsync makes everything before it durable in the
//! database file and the log starts over. At open, log records after the database's durable
//! revision are replayed into it.
//!
//! The file is preallocated (written with zeros through a temporary file renamed into place,
//! so it is complete or absent), so appends never change its size or allocation and
//! `fdatasync` flushes data only. Layout:
//!
//! ```text
//! header (4096 bytes): magic "ORCHWAL2" | store id: u64 | capacity: u64 | base: u64
//!                      | generation: u32 | crc32(all before): u32 | zeros
//! record: magic "WAL2": u32 | len: u32 | generation: u32 | index in its group: u32
//!         | revision: u64 | crc32(store id, generation, index, len, revision, payload): u32
//!         | payload
//! ```
//!
//! Records hold revisions `base + 1, base + 2, ...` in order. A checkpoint rewrites only the
//! header, with the next generation, so records of earlier generations stay on disk but are
//! never taken for current ones (nor are another store's: the checksum covers the store id).
//!
//! # Where the log ends
//!
//! The log ends at the first position that does not hold the next record. That is sound
//! only if what follows was never acknowledged. A group of records is written with one
//! write and one `fdatasync`, and the next group only after that `fdatasync` returned, so
//! only the last group can be torn by a crash. Every record says where its group started
//! (its revision minus its index), so [`Wal::open`] looks past the end for any record of the
//! current generation: one from a group that started after the missing revision proves
//! that the missing record's group was synced, i.e. acknowledged: the log is damaged in the
//! middle and is refused naming the file, the offset and the revision. Otherwise the end is
//! the last group, torn or never written, and is dropped (the caller logs a torn one).
//! The header records the preallocated size, so a truncated file is refused too. Damage to
//! the last group alone cannot be told from a torn write (as for etcd).
//!
//! Logs of the first format (`ORCHWAL1`, no store id, no generations or groups) are read
//! with the same rule (every record its own group) and turned into the current format by
//! the next [`Wal::reset`].

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use orch_core::store::Revision;

const MAGIC: &[u8; 8] = b"ORCHWAL2";
const MAGIC_V1: &[u8; 8] = b"ORCHWAL1";
const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"WAL2");
const RECORD_MAGIC_V1: u32 = u32::from_le_bytes(*b"WALR");
/// Bytes before the first record.
pub(crate) const HEADER: u64 = 4096;
/// Bytes of a record before its payload.
pub(crate) const RECORD_HEADER: usize = 28;
const RECORD_HEADER_V1: usize = 20;
/// Records start at multiples of this, so a search for them only looks there.
const ALIGN: u64 = 8;
/// Bytes of the header that are used.
const HEADER_LEN: usize = 40;

/// One logged transaction: its revision and its encoded log entry.
pub(crate) type Record = (Revision, Vec<u8>);

/// A write-ahead log file.
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    capacity: u64,
    /// Where the next record goes.
    offset: u64,
    /// Records hold the revisions after this one.
    base: Revision,
    /// The store the log belongs to (0 for a first-format log until [`Wal::claim`]).
    store_id: u64,
    /// Records of other generations are not this log's.
    generation: u32,
    /// The file is still in the first format: it must be [`Wal::reset`] before appends.
    v1: bool,
}

/// What [`Wal::open`] found besides the log itself.
pub(crate) struct Opened {
    /// `(revision, payload)` in order.
    pub(crate) records: Vec<Record>,
    /// The store id in the header; `None` for a log of the first format, which has none.
    pub(crate) store_id: Option<u64>,
    /// The offset and revision of a torn record at the end that was dropped.
    pub(crate) torn: Option<(u64, Revision)>,
}

/// A log that cannot be used; the message names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WalError {
    #[error("write-ahead log {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    // `error` is not a `source`: the message already ends with it (said once in a chain).
    #[error(
        "cannot create write-ahead log {}: it is preallocated and needs {bytes} bytes ({} MiB) free on its filesystem: {error}",
        .path.display(),
        .bytes.div_ceil(1 << 20)
    )]
    NoSpace {
        path: PathBuf,
        bytes: u64,
        error: io::Error,
    },
    #[error("write-ahead log {} is corrupt: {reason}", .path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// How records are laid out in a file of either format.
#[derive(Clone, Copy)]
enum Layout {
    V1,
    V2 { store_id: u64, generation: u32 },
}

/// What a position in the log holds.
enum Slot {
    /// A whole record of this log's generation.
    Record {
        revision: Revision,
        /// Where its group started.
        group: Revision,
        payload: Vec<u8>,
        end: u64,
    },
    /// The start of a record of this generation that fails its checksum or length.
    Bad,
    /// Anything else: zeros, an older generation's record, the middle of one.
    Empty,
}

impl Layout {
    fn record_header(self) -> usize {
        match self {
            Layout::V1 => RECORD_HEADER_V1,
            Layout::V2 { .. } => RECORD_HEADER,
        }
    }

    /// Reads the record at `offset`, if any.
    fn read(self, file: &File, offset: u64, capacity: u64) -> io::Result<Slot> {
        let size = self.record_header();
        if offset + size as u64 > capacity {
            return Ok(Slot::Empty);
        }
        let mut rh = [0u8; RECORD_HEADER];
        file.read_exact_at(&mut rh[..size], offset)?;
        let u32_at = |at: usize| u32::from_le_bytes(rh[at..at + 4].try_into().unwrap_or_default());
        let u64_at = |at: usize| u64::from_le_bytes(rh[at..at + 8].try_into().unwrap_or_default());
        let (len, revision, group, crc) = match self {
            Layout::V1 => {
                if u32_at(0) != RECORD_MAGIC_V1 {
                    return Ok(Slot::Empty);
                }
                let revision = u64_at(8);
                (u32_at(4), revision, revision, u32_at(16))
            }
            Layout::V2 { generation, .. } => {
                if u32_at(0) != RECORD_MAGIC || u32_at(8) != generation {
                    return Ok(Slot::Empty);
                }
                let revision = u64_at(16);
                let index = u64::from(u32_at(12));
                (
                    u32_at(4),
                    revision,
                    revision.wrapping_sub(index),
                    u32_at(24),
                )
            }
        };
        let end = offset + size as u64 + u64::from(len);
        if end > capacity {
            return Ok(Slot::Bad);
        }
        let mut payload = vec![0u8; len as usize];
        file.read_exact_at(&mut payload, offset + size as u64)?;
        let expected = match self {
            Layout::V1 => v1_crc(revision, &payload),
            Layout::V2 {
                store_id,
                generation,
            } => record_crc(store_id, generation, u32_at(12), revision, &payload),
        };
        if crc != expected {
            return Ok(Slot::Bad);
        }
        let end = match self {
            Layout::V1 => end,
            Layout::V2 { .. } => end.next_multiple_of(ALIGN),
        };
        Ok(Slot::Record {
            revision,
            group,
            payload,
            end,
        })
    }

    /// The first whole record at or after `from` whose group started after `revision`: proof
    /// that the group holding `revision` was synced before it (only the first format has
    /// no groups: there every record is its own).
    fn later_group(
        self,
        file: &File,
        from: u64,
        capacity: u64,
        revision: Revision,
    ) -> io::Result<Option<(u64, Revision)>> {
        let (step, magic) = match self {
            Layout::V1 => (1, RECORD_MAGIC_V1),
            Layout::V2 { .. } => (ALIGN, RECORD_MAGIC),
        };
        let magic = magic.to_le_bytes();
        const CHUNK: u64 = 1 << 20;
        const ZEROS: &[u8] = &[0; 4096];
        let mut buf = vec![0u8; CHUNK as usize + 4];
        let mut start = from.next_multiple_of(step);
        while start + 4 <= capacity {
            let n = (CHUNK + 4).min(capacity - start) as usize;
            file.read_exact_at(&mut buf[..n], start)?;
            let mut at = 0usize;
            while at + 4 <= n && (at as u64) < CHUNK {
                // This runs over the rest of the log at every open: skip zeroed blocks (of
                // the preallocated file) with one comparison each.
                if at % ZEROS.len() == 0
                    && buf.get(at..at + ZEROS.len()).is_some_and(|b| b == ZEROS)
                {
                    at += ZEROS.len();
                    continue;
                }
                if buf[at] == magic[0] && buf[at..at + 4] == magic {
                    let offset = start + at as u64;
                    if let Slot::Record {
                        revision: found,
                        group,
                        ..
                    } = self.read(file, offset, capacity)?
                    {
                        if group > revision {
                            return Ok(Some((offset, found)));
                        }
                    }
                }
                at += step as usize;
            }
            start += CHUNK;
        }
        Ok(None)
    }
}

impl Wal {
    /// The log's path for a store file: `<store file>.wal`.
    pub(crate) fn path_for(store: &Path) -> PathBuf {
        let mut name = store.as_os_str().to_owned();
        name.push(".wal");
        PathBuf::from(name)
    }

    /// Whether a log exists at `path`.
    pub(crate) fn exists(path: &Path) -> Result<bool, WalError> {
        path.try_exists().map_err(|e| io_error(path, e))
    }

    /// Creates a log of `capacity` bytes for store `store_id` whose records start after
    /// `base`, atomically (a temporary file, synced, renamed into place, directory synced).
    /// If it cannot be written the temporary file is removed; a full disk says how much
    /// space the log needs.
    pub(crate) fn create(
        path: &Path,
        capacity: u64,
        base: Revision,
        store_id: u64,
    ) -> Result<Wal, WalError> {
        let capacity = capacity.max(HEADER * 2);
        let generation = 1;
        let tmp = path.with_extension("wal.tmp");
        let written = (|| {
            let mut f = File::create(&tmp)?;
            let zeros = vec![0u8; 1 << 20];
            let mut left = capacity;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            f.write_all_at(&header(store_id, capacity, base, generation), 0)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, path)
        })();
        if let Err(source) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(match source.kind() {
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => WalError::NoSpace {
                    path: path.to_path_buf(),
                    bytes: capacity,
                    error: source,
                },
                _ => io_error(path, source),
            });
        }
        let err = |e| io_error(path, e);
        sync_dir(path).map_err(err)?;
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(err)?;
        Ok(Wal {
            file,
            path: path.to_path_buf(),
            capacity,
            offset: HEADER,
            base,
            store_id,
            generation,
            v1: false,
        })
    }

    /// Opens an existing log and reads its records. A torn last group is dropped (and
    /// reported in [`Opened::torn`]); a record that cannot be read but has acknowledged
    /// records after it, a truncated file or a damaged header is an error naming the file.
    pub(crate) fn open(path: &Path) -> Result<(Wal, Opened), WalError> {
        let err = |e| io_error(path, e);
        let corrupt = |reason: String| WalError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        if len < HEADER * 2 {
            return Err(corrupt(format!(
                "it is {len} bytes, shorter than the smallest log ({} bytes)",
                HEADER * 2
            )));
        }
        let mut head = [0u8; HEADER_LEN];
        file.read_exact_at(&mut head, 0).map_err(err)?;
        let u64_at =
            |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap_or_default());
        let u32_at =
            |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().unwrap_or_default());
        let (layout, capacity, base, store_id) = match &head[..8] {
            m if m == MAGIC => {
                if u32_at(36) != crc32fast::hash(&head[..36]) {
                    return Err(corrupt("its header fails its checksum".into()));
                }
                let (store_id, capacity, base, generation) =
                    (u64_at(8), u64_at(16), u64_at(24), u32_at(32));
                if len < capacity {
                    return Err(corrupt(format!(
                        "it is {len} bytes but was created with {capacity}: it was truncated, and acknowledged writes may be in the part that is missing"
                    )));
                }
                let layout = Layout::V2 {
                    store_id,
                    generation,
                };
                (layout, capacity, base, Some(store_id))
            }
            m if m == MAGIC_V1 => {
                if u32_at(16) != crc32fast::hash(&head[..16]) {
                    return Err(corrupt("its header fails its checksum".into()));
                }
                (Layout::V1, len, u64_at(8), None)
            }
            _ => {
                return Err(corrupt(
                    "it does not start with ORCHWAL2 (nor the first format's ORCHWAL1)".into(),
                ))
            }
        };
        let mut records = Vec::new();
        let mut offset = HEADER;
        let mut next = base + 1;
        let torn = loop {
            match layout.read(&file, offset, capacity).map_err(err)? {
                Slot::Record {
                    revision,
                    payload,
                    end,
                    ..
                } if revision == next => {
                    records.push((revision, payload));
                    offset = end;
                    next += 1;
                }
                Slot::Bad => break Some((offset, next)),
                _ => break None,
            }
        };
        if let Some((at, found)) = layout
            .later_group(&file, offset, capacity, next)
            .map_err(err)?
        {
            return Err(corrupt(format!(
                "revision {next} at offset {offset} is damaged or missing, but revision {found} at offset {at} was written after it was acknowledged: refusing to drop acknowledged writes (restore the log, or move the store file and its log aside to start empty)"
            )));
        }
        let (generation, v1) = match layout {
            Layout::V1 => (0, true),
            Layout::V2 { generation, .. } => (generation, false),
        };
        Ok((
            Wal {
                file,
                path: path.to_path_buf(),
                capacity,
                offset,
                base,
                store_id: store_id.unwrap_or(0),
                generation,
                v1,
            },
            Opened {
                records,
                store_id,
                torn,
            },
        ))
    }

    /// Makes a first-format log (which names no store) this store's, from the next
    /// [`Wal::reset`] on.
    pub(crate) fn claim(&mut self, store_id: u64) {
        if self.v1 {
            self.store_id = store_id;
        }
    }

    /// The revision records start after.
    pub(crate) fn base(&self) -> Revision {
        self.base
    }

    /// Bytes the log holds.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes of records written since the last [`Wal::reset`].
    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        self.offset - HEADER
    }

    /// Whether records of `bytes` payload bytes in `count` records fit.
    pub(crate) fn fits(&self, count: usize, bytes: usize) -> bool {
        !self.v1
            && self.offset + (count * (RECORD_HEADER + ALIGN as usize) + bytes) as u64
                <= self.capacity
    }

    /// Appends records (one group) and makes them durable (`fdatasync`) before returning.
    /// The caller checks [`Wal::fits`] first.
    pub(crate) fn append(&mut self, records: &[(Revision, &[u8])]) -> Result<(), WalError> {
        let size: usize = records
            .iter()
            .map(|(_, p)| (RECORD_HEADER + p.len()).next_multiple_of(ALIGN as usize))
            .sum();
        let mut buf = Vec::with_capacity(size);
        for (index, (revision, payload)) in records.iter().enumerate() {
            let index = index as u32;
            buf.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&self.generation.to_le_bytes());
            buf.extend_from_slice(&index.to_le_bytes());
            buf.extend_from_slice(&revision.to_le_bytes());
            let crc = record_crc(self.store_id, self.generation, index, *revision, payload);
            buf.extend_from_slice(&crc.to_le_bytes());
            buf.extend_from_slice(payload);
            buf.resize(buf.len().next_multiple_of(ALIGN as usize), 0);
        }
        let err = |e| io_error(&self.path, e);
        self.file.write_all_at(&buf, self.offset).map_err(err)?;
        self.file.sync_data().map_err(err)?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// Starts over after a checkpoint: records now start after `base` (which the database
    /// file holds durably), in the next generation. A first-format log becomes the current
    /// format here. On `Err` the header on disk may be either one: the caller must not
    /// append until a later reset succeeds.
    pub(crate) fn reset(&mut self, base: Revision) -> Result<(), WalError> {
        let err = |e| io_error(&self.path, e);
        let generation = self.generation.wrapping_add(1).max(1);
        let head = header(self.store_id, self.capacity, base, generation);
        self.file.write_all_at(&head, 0).map_err(err)?;
        self.file.sync_data().map_err(err)?;
        self.offset = HEADER;
        self.base = base;
        self.generation = generation;
        self.v1 = false;
        Ok(())
    }
}

fn header(store_id: u64, capacity: u64, base: Revision, generation: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&store_id.to_le_bytes());
    h[16..24].copy_from_slice(&capacity.to_le_bytes());
    h[24..32].copy_from_slice(&base.to_le_bytes());
    h[32..36].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32fast::hash(&h[..36]);
    h[36..40].copy_from_slice(&crc.to_le_bytes());
    h
}

fn record_crc(
    store_id: u64,
    generation: u32,
    index: u32,
    revision: Revision,
    payload: &[u8],
) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&store_id.to_le_bytes());
    h.update(&generation.to_le_bytes());
    h.update(&index.to_le_bytes());
    h.update(&(payload.len() as u32).to_le_bytes());
    h.update(&revision.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn v1_crc(revision: Revision, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&revision.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn io_error(path: &Path, source: io::Error) -> WalError {
    WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes a rename in `path`'s directory durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// A log of the first format (`len` bytes): header magic, base, crc; records magic, len,
/// revision, crc(revision, payload), payload.
#[cfg(test)]
pub(crate) fn v1_log(len: usize, base: Revision, records: &[(Revision, &[u8])]) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    bytes[..8].copy_from_slice(MAGIC_V1);
    bytes[8..16].copy_from_slice(&base.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..16]);
    bytes[16..20].copy_from_slice(&crc.to_le_bytes());
    let mut at = HEADER as usize;
    for (rev, payload) in records {
        bytes[at..at + 4].copy_from_slice(&RECORD_MAGIC_V1.to_le_bytes());
        bytes[at + 4..at + 8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes[at + 8..at + 16].copy_from_slice(&rev.to_le_bytes());
        bytes[at + 16..at + 20].copy_from_slice(&v1_crc(*rev, payload).to_le_bytes());
        bytes[at + 20..at + 20 + payload.len()].copy_from_slice(payload);
        at += 20 + payload.len();
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: u64 = 0x5eed;

    fn records(path: &Path) -> Vec<Record> {
        Wal::open(path).unwrap().1.records
    }

    fn flip(path: &Path, at: u64) {
        let f = File::options().read(true).write(true).open(path).unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
    }

    /// The offset of the `n`th record (from 0) when every payload is `len` bytes.
    fn record_at(n: u64, len: usize) -> u64 {
        HEADER + n * (RECORD_HEADER + len).next_multiple_of(ALIGN as usize) as u64
    }

    #[test]
    fn records_survive_reopen_and_reset_hides_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb.wal");
        let mut wal = Wal::create(&path, 64 << 10, 7, ID).unwrap();
        wal.append(&[(8, b"eight"), (9, b"nine")]).unwrap();
        wal.append(&[(10, b"ten")]).unwrap();
        let (wal2, opened) = Wal::open(&path).unwrap();
        assert_eq!(wal2.base(), 7);
        assert_eq!(opened.store_id, Some(ID));
        assert!(opened.torn.is_none());
        assert_eq!(
            opened.records,
            vec![
                (8, b"eight".to_vec()),
                (9, b"nine".to_vec()),
                (10, b"ten".to_vec())
            ]
        );
        assert_eq!(wal2.used(), wal.used());
        // A checkpoint at 10: the old records stay on disk but are not read back.
        wal.reset(10).unwrap();
        assert_eq!(records(&path), vec![]);
        wal.append(&[(11, b"x")]).unwrap();
        assert_eq!(records(&path), vec![(11, b"x".to_vec())]);
        // Nor after a reset to a base below them (a checkpoint whose header write landed
        // but not the reset of the next one): their generation is over.
        wal.reset(7).unwrap();
        assert_eq!(records(&path), vec![]);
    }

    #[test]
    fn a_torn_last_group_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.wal");
        let mut wal = Wal::create(&path, 64 << 10, 0, ID).unwrap();
        wal.append(&[(1, b"one")]).unwrap();
        wal.append(&[(2, b"two"), (3, b"tri"), (4, b"for")])
            .unwrap();
        // Damage record 3, in the last group: a torn write (never acknowledged).
        flip(&path, record_at(2, 3) + RECORD_HEADER as u64);
        let (_, opened) = Wal::open(&path).unwrap();
        assert_eq!(
            opened.records,
            vec![(1, b"one".to_vec()), (2, b"two".to_vec())]
        );
        assert_eq!(opened.torn, Some((record_at(2, 3), 3)));
        // So is a group whose first record is torn.
        flip(&path, record_at(1, 3) + 2);
        let (_, opened) = Wal::open(&path).unwrap();
        assert_eq!(opened.records, vec![(1, b"one".to_vec())]);
    }

    #[test]
    fn damage_before_a_later_group_is_refused_naming_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.wal");
        let mut wal = Wal::create(&path, 64 << 10, 0, ID).unwrap();
        for rev in 1..=5u64 {
            wal.append(&[(rev, b"abc")]).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        // In a payload, in a header field, in the magic, in the first record.
        for (what, at) in [
            ("payload of 3", record_at(2, 3) + RECORD_HEADER as u64 + 1),
            ("length of 3", record_at(2, 3) + 5),
            ("magic of 2", record_at(1, 3)),
            ("revision of 1", record_at(0, 3) + 16),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            flip(&path, at);
            let e = Wal::open(&path)
                .err()
                .unwrap_or_else(|| panic!("{what}: opened"));
            let e = e.to_string();
            assert!(
                e.contains("s.wal") && e.contains("acknowledged"),
                "{what}: {e}"
            );
            let rec = (at - HEADER) / record_at(1, 3).saturating_sub(HEADER);
            assert!(
                e.contains(&format!("offset {}", record_at(rec, 3))),
                "{what}: {e}"
            );
        }
        // Truncation is refused, even to a length that keeps every record.
        std::fs::write(&path, &bytes[..bytes.len() - 4096]).unwrap();
        let e = Wal::open(&path).err().unwrap().to_string();
        assert!(e.contains("s.wal") && e.contains("truncated"), "{e}");
    }

    #[test]
    fn other_stores_records_are_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.wal"), dir.path().join("b.wal"));
        let mut wa = Wal::create(&a, 64 << 10, 0, 1).unwrap();
        wa.append(&[(1, b"mine")]).unwrap();
        let wb = Wal::create(&b, 64 << 10, 0, 2).unwrap();
        drop(wb);
        // b's header over a's records: they do not carry b's id.
        let mut bytes = std::fs::read(&a).unwrap();
        bytes[..HEADER as usize].copy_from_slice(&std::fs::read(&b).unwrap()[..HEADER as usize]);
        std::fs::write(&b, &bytes).unwrap();
        let (_, opened) = Wal::open(&b).unwrap();
        assert_eq!((opened.store_id, opened.records), (Some(2), vec![]));
    }

    #[test]
    fn first_format_logs_are_read_and_upgraded_by_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.wal");
        let bytes = v1_log(64 << 10, 4, &[(5, b"five"), (6, b"six")]);
        std::fs::write(&path, &bytes).unwrap();
        let (mut wal, opened) = Wal::open(&path).unwrap();
        assert_eq!(opened.store_id, None);
        assert_eq!(
            opened.records,
            vec![(5, b"five".to_vec()), (6, b"six".to_vec())]
        );
        assert!(!wal.fits(1, 1), "appends in the first format");
        wal.claim(ID);
        wal.reset(6).unwrap();
        wal.append(&[(7, b"seven")]).unwrap();
        let (_, opened) = Wal::open(&path).unwrap();
        assert_eq!(opened.store_id, Some(ID));
        assert_eq!(opened.records, vec![(7, b"seven".to_vec())]);
    }

    #[test]
    fn damaged_headers_and_short_files_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.wal");
        Wal::create(&path, 64 << 10, 3, ID).unwrap();
        let f = File::options().write(true).open(&path).unwrap();
        f.write_all_at(&[9], 9).unwrap();
        let e = Wal::open(&path).err().unwrap().to_string();
        assert!(e.contains("s.wal") && e.contains("checksum"), "{e}");
        f.set_len(100).unwrap();
        let e = Wal::open(&path).err().unwrap().to_string();
        assert!(e.contains("s.wal") && e.contains("shorter"), "{e}");
        f.write_all_at(b"NOTAWAL!", 0).unwrap();
        f.set_len(1 << 16).unwrap();
        let e = Wal::open(&path).err().unwrap().to_string();
        assert!(e.contains("ORCHWAL1"), "{e}");
    }

    #[test]
    fn full_logs_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::create(&dir.path().join("s.wal"), HEADER * 2, 0, ID).unwrap();
        assert!(wal.fits(1, 100));
        assert!(!wal.fits(1, HEADER as usize));
        assert_eq!(wal.capacity(), HEADER * 2);
    }
}
