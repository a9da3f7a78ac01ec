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
//! header (4096 bytes): magic "ORCHWAL1" | base: u64 | crc32(magic, base): u32 | zeros
//! record: magic "WALR": u32 | len: u32 | revision: u64 | crc32(revision, payload): u32 | payload
//! ```
//!
//! Records hold revisions `base + 1, base + 2, ...` in order; the first record that is torn,
//! fails its checksum or does not carry the next revision ends the log. A checkpoint rewrites
//! only the header, so records of earlier generations stay on disk, but every one of them
//! carries a revision at or below the new base and so can never be taken for the next one.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use orch_core::store::Revision;

const MAGIC: &[u8; 8] = b"ORCHWAL1";
const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"WALR");
/// Bytes before the first record.
pub(crate) const HEADER: u64 = 4096;
/// Bytes of a record before its payload.
pub(crate) const RECORD_HEADER: usize = 20;

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
    #[error("write-ahead log {} is corrupt: {reason}", .path.display())]
    Corrupt { path: PathBuf, reason: String },
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

    /// Creates a log of `capacity` bytes whose records start after `base`, atomically (a
    /// temporary file, synced, renamed into place, directory synced).
    pub(crate) fn create(path: &Path, capacity: u64, base: Revision) -> Result<Wal, WalError> {
        let capacity = capacity.max(HEADER * 2);
        let tmp = path.with_extension("wal.tmp");
        let err = |e| io_error(path, e);
        {
            let mut f = File::create(&tmp).map_err(err)?;
            let zeros = vec![0u8; 1 << 20];
            let mut left = capacity;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n]).map_err(err)?;
                left -= n as u64;
            }
            f.write_all_at(&header(base), 0).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, path).map_err(err)?;
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
        })
    }

    /// Opens an existing log and reads its records: `(revision, payload)` in order.
    pub(crate) fn open(path: &Path) -> Result<(Wal, Vec<Record>), WalError> {
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
        let capacity = file.metadata().map_err(err)?.len();
        if capacity < HEADER * 2 {
            return Err(corrupt(format!(
                "it is {capacity} bytes, shorter than the smallest log ({} bytes)",
                HEADER * 2
            )));
        }
        let mut head = [0u8; 20];
        file.read_exact_at(&mut head, 0).map_err(err)?;
        if &head[..8] != MAGIC {
            return Err(corrupt("it does not start with ORCHWAL1".into()));
        }
        let base = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(head[16..20].try_into().unwrap_or_default());
        if crc != crc32fast::hash(&head[..16]) {
            return Err(corrupt("its header fails its checksum".into()));
        }
        let mut records = Vec::new();
        let mut offset = HEADER;
        let mut next = base + 1;
        let mut rh = [0u8; RECORD_HEADER];
        while offset + RECORD_HEADER as u64 <= capacity {
            file.read_exact_at(&mut rh, offset).map_err(err)?;
            let field =
                |at: usize| u32::from_le_bytes(rh[at..at + 4].try_into().unwrap_or_default());
            let (magic, len) = (field(0), field(4) as u64);
            let revision = u64::from_le_bytes(rh[8..16].try_into().unwrap_or_default());
            let end = offset + RECORD_HEADER as u64 + len;
            if magic != RECORD_MAGIC || revision != next || end > capacity {
                break;
            }
            let mut payload = vec![0u8; len as usize];
            file.read_exact_at(&mut payload, offset + RECORD_HEADER as u64)
                .map_err(err)?;
            if field(16) != record_crc(revision, &payload) {
                break;
            }
            records.push((revision, payload));
            offset = end;
            next += 1;
        }
        Ok((
            Wal {
                file,
                path: path.to_path_buf(),
                capacity,
                offset,
                base,
            },
            records,
        ))
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
        self.offset + (count * RECORD_HEADER + bytes) as u64 <= self.capacity
    }

    /// Appends records and makes them durable (`fdatasync`) before returning. The caller
    /// checks [`Wal::fits`] first.
    pub(crate) fn append(&mut self, records: &[(Revision, &[u8])]) -> Result<(), WalError> {
        let size: usize = records.iter().map(|(_, p)| RECORD_HEADER + p.len()).sum();
        let mut buf = Vec::with_capacity(size);
        for (revision, payload) in records {
            buf.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&revision.to_le_bytes());
            buf.extend_from_slice(&record_crc(*revision, payload).to_le_bytes());
            buf.extend_from_slice(payload);
        }
        let err = |e| io_error(&self.path, e);
        self.file.write_all_at(&buf, self.offset).map_err(err)?;
        self.file.sync_data().map_err(err)?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// Starts over after a checkpoint: records now start after `base` (which the database
    /// file holds durably).
    pub(crate) fn reset(&mut self, base: Revision) -> Result<(), WalError> {
        let err = |e| io_error(&self.path, e);
        self.file.write_all_at(&header(base), 0).map_err(err)?;
        self.file.sync_data().map_err(err)?;
        self.offset = HEADER;
        self.base = base;
        Ok(())
    }
}

fn header(base: Revision) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&base.to_le_bytes());
    let crc = crc32fast::hash(&h[..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

fn record_crc(revision: Revision, payload: &[u8]) -> u32 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_reset_hides_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb.wal");
        let mut wal = Wal::create(&path, 64 << 10, 7).unwrap();
        wal.append(&[(8, b"eight"), (9, b"nine")]).unwrap();
        wal.append(&[(10, b"ten")]).unwrap();
        let (wal2, records) = Wal::open(&path).unwrap();
        assert_eq!(wal2.base(), 7);
        assert_eq!(
            records,
            vec![
                (8, b"eight".to_vec()),
                (9, b"nine".to_vec()),
                (10, b"ten".to_vec())
            ]
        );
        assert_eq!(wal2.used(), wal.used());
        // A checkpoint at 10: the old records stay on disk but are not read back.
        wal.reset(10).unwrap();
        assert_eq!(Wal::open(&path).unwrap().1, vec![]);
        wal.append(&[(11, b"x")]).unwrap();
        assert_eq!(Wal::open(&path).unwrap().1, vec![(11, b"x".to_vec())]);
    }

    #[test]
    fn a_torn_or_damaged_record_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.wal");
        let mut wal = Wal::create(&path, 64 << 10, 0).unwrap();
        wal.append(&[(1, b"one"), (2, b"two"), (3, b"three")])
            .unwrap();
        // Flip one payload byte of record 2.
        let at = HEADER + (RECORD_HEADER + 3) as u64 + RECORD_HEADER as u64;
        let f = File::options().write(true).open(&path).unwrap();
        f.write_all_at(b"T", at).unwrap();
        assert_eq!(Wal::open(&path).unwrap().1, vec![(1, b"one".to_vec())]);
    }

    #[test]
    fn damaged_headers_and_short_files_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.wal");
        Wal::create(&path, 64 << 10, 3).unwrap();
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
        let wal = Wal::create(&dir.path().join("s.wal"), HEADER * 2, 0).unwrap();
        assert!(wal.fits(1, 100));
        assert!(!wal.fits(1, HEADER as usize));
        assert_eq!(wal.capacity(), HEADER * 2);
    }
}
