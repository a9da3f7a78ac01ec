//! [`EmbeddedStore`]: a durable [`Store`] in one local file, for single-node clusters and
//! for control planes that do not want to run etcd.
//!
//! # Why redb
//!
//! The file is a [redb](https://docs.rs/redb) database. redb is pure Rust (no C toolchain, no
//! `unsafe` in our code), ACID, and built on copy-on-write B-trees: a commit writes new pages
//! and then flips the root with a checksummed header, so a crash at any point leaves either
//! the old or the new state, never a mix.
//!
//! # Durability: a write-ahead log and checkpoints
//!
//! A redb commit that fsyncs writes its changed pages all over the file, which costs the disk
//! several writes per acknowledged transaction. So a transaction is acknowledged once its log
//! entry is in the **write-ahead log** (`<file>.wal`, preallocated, see the `wal` module),
//! appended and synced with one `fdatasync`; the database file catches up at **checkpoints**
//! (every [`EmbeddedOptions::checkpoint_commits`] commits, when the log is full, at
//! compaction and on close): one redb commit with fsync of everything since the last one,
//! after which the log starts over. [`EmbeddedStore::open`] replays whatever the log holds
//! after the file's revision. A revision we hand out survives a crash or power loss either
//! way. With [`EmbeddedOptions::wal_bytes`] = 0 every transaction is its own redb commit
//! with fsync instead.
//!
//! The log must stay with its file: once a store has used one, opening it without the log
//! is refused (acknowledged writes could be in it), as is a log that does not match the file
//! (both carry the store's random id), a truncated one, and one damaged before its last
//! write (see the `wal` module).
//!
//! # Layout
//!
//! - table `kv`: key → `create_revision | mod_revision | value` (see the `codec` module);
//! - table `meta`: `format` (1), `revision` (the latest committed), `compacted` (the log
//!   covers the revisions after it), `store_id` (random, also in the write-ahead log's
//!   header), `wal` (1 once a write-ahead log is in use);
//! - table `log`: revision → every event of that transaction, so watches resume across
//!   restarts. It holds exactly the revisions `compacted + 1 ..= revision`.
//!
//! # Reads and writes
//!
//! Every key and its revisions are also held in memory (loaded at open), so a transaction is
//! planned without touching the disk; values are held in memory only until a checkpoint has
//! written them to the file (at a million replicas the values alone would take ~600 MB of
//! memory), then `get` and `list` read them from the file through redb's page cache.
//! `revision` and `watch` (recent history is in memory) never touch the disk. A read begins
//! its redb read transaction under the lock it reads memory under, so the file snapshot holds
//! the versions memory describes (a long `list` is not disturbed by checkpoints meanwhile); it
//! still checks each version it finds and starts over in the one case where the file is ahead
//! of memory for a moment (a commit that goes straight into the file: no log, or a queue
//! larger than the whole log). A transaction is planned against the in-memory keys with
//! [`plan_txn`] (a delete reads the last value from the file, for its watch event), made
//! durable (as above) and only then applied to memory and published to watchers. A failed
//! write (disk full, I/O error) changes nothing in memory and is returned
//! as [`StoreError::Unavailable`] naming the file. As with a timeout against a remote store,
//! its outcome is unknown until the store recovers (it may have reached the disk just before
//! the error). From then on the store refuses writes rather than risk planning against
//! memory that may lag the disk, and `revision` and `watch` fail too (open watches end with
//! the error), so health checks see it unavailable; `get` and `list` serve what was
//! committed (values that only the file holds once redb is reopened). A background thread
//! retries the recovery (after 0.5 s, the wait doubling up to 5 s): it reopens the database
//! if a write to it failed (redb refuses everything after an I/O error until then), catches
//! memory up with a commit that reached the file although it reported an error, checkpoints
//! what the log holds, starts the log over in a new generation (nothing of a failed append
//! can be read back) and proves with one commit that the file takes writes. A full disk
//! under the database file alone only fails checkpoints: writes go on into the preallocated
//! log until it is full, and are refused from then until a checkpoint succeeds.
//!
//! Commits run on tokio's blocking pool. Transactions that arrive while a commit is in flight
//! queue up and are committed together by the next writer (group commit): each still gets its
//! own revision, log entry and watch batch, in queue order, and is planned against the ones
//! before it; one `fdatasync` serves them all.
//!
//! # History
//!
//! Watch history is kept by orch-core's [`WatchHub`] (about [`EmbeddedOptions::history_events`]
//! events). When the hub drops old revisions, the next commit drops them from the `log` table
//! too, so the file does not grow without bound; [`EmbeddedStore::compact`] drops them on
//! demand. At open the hub is refilled from the `log` table.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use orch_core::memstore::{plan_txn, WatchHub};
use orch_core::store::{KeyValue, Op, Revision, Store, StoreError, WatchEvent, WatchStream};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};
use tokio::sync::oneshot;

use crate::codec;
use crate::compact::Compact;
use crate::wal::Wal;

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

const FORMAT_KEY: &str = "format";
const REVISION_KEY: &str = "revision";
const COMPACTED_KEY: &str = "compacted";
const FORMAT: u64 = 1;

/// Tuning for [`EmbeddedStore::open_with`].
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// About how many events of watch history to keep, in memory and in the file's `log`.
    pub history_events: usize,
    /// redb's page cache, in bytes: serves commits, and reads of values that a checkpoint
    /// has written to the file.
    pub cache_bytes: usize,
    /// The largest log entry one transaction may write: its keys and new values, the last
    /// values of the keys it deletes (which watchers receive), and 29 bytes per operation.
    /// Larger transactions fail with [`StoreError::TooLarge`]. Capped at 1 GiB.
    pub max_txn_bytes: usize,
    /// Size of the write-ahead log (`<file>.wal`, preallocated). 0: no log; every commit
    /// fsyncs the database file instead (slower, same guarantees).
    pub wal_bytes: u64,
    /// Commits between checkpoints (a database commit with fsync, after which the log
    /// starts over); a checkpoint also happens whenever the log is full.
    pub checkpoint_commits: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            history_events: 100_000,
            max_txn_bytes: codec::MAX_ENTRY,
            cache_bytes: 64 << 20,
            wal_bytes: 16 << 20,
            checkpoint_commits: 4096,
        }
    }
}

/// Why a store file could not be opened or read; carried in [`StoreError::Other`].
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// redb refused the file (unreadable, not a redb file, damaged, ...).
    #[error("cannot open store file {}: {source}", .path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What redb said.
        #[source]
        source: redb::Error,
    },
    /// The write-ahead log beside the file belongs to another store (their ids differ).
    #[error("write-ahead log {} does not belong to this store: {reason}", .path.display())]
    ForeignLog {
        /// The log.
        path: PathBuf,
        /// Which stores they belong to.
        reason: String,
    },
    /// The file is a readable redb database but its contents are not a valid store.
    #[error("store file {} is corrupt: {reason}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A durable [`Store`] in one redb file. Cheap to clone; clones share the file.
#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    /// The database. Replaced when it is reopened after a failed write (redb refuses every
    /// write after an I/O error until then); `None` while that reopen has not succeeded.
    db: RwLock<Option<Arc<Database>>>,
    /// Opens the database again.
    reopen: Reopen,
    /// Serialises redb write transactions; holds what the file has trimmed from its log.
    writer: Mutex<Writer>,
    /// Transactions waiting for the next commit, and whether a committer is draining them.
    queue: Mutex<Queue>,
    /// What readers see: only committed state.
    state: Mutex<State>,
    max_txn_bytes: usize,
    /// Transactions replayed from the write-ahead log at open.
    replayed: usize,
    /// Reads that started over because the file was ahead of memory (see [`Shared::snapshot`]).
    read_retries: std::sync::atomic::AtomicUsize,
}

/// Opens a store's database again, after an I/O error.
type Reopen = Box<dyn Fn() -> Result<Database, StoreError> + Send + Sync>;

/// Group commit: writers append here; at most one committer drains it at a time, so every
/// transaction that arrives during an fsync joins the next commit.
#[derive(Default)]
struct Queue {
    items: Vec<Pending>,
    committing: bool,
}

struct Writer {
    /// The file's `log` covers the revisions after this one.
    disk_compacted: Revision,
    /// The write-ahead log, when in use.
    wal: Option<Wal>,
    /// Commits since the last checkpoint.
    since_checkpoint: usize,
    checkpoint_commits: usize,
    /// Why the store cannot take writes (a failed write to the log, or to the database
    /// when the log cannot take it): every write is refused until [`Shared::recover`]
    /// (retried in the background) settles what is durable and makes both usable again.
    broken: Option<String>,
    /// A write to the database file failed: it is reopened before the next one.
    db_failed: bool,
    /// A background thread retries [`Shared::recover`].
    recovering: bool,
    /// When the database was last reopened (or tried): at most once per
    /// [`RECOVERY_INTERVAL`], as the checkpoint that needs it is retried at every commit.
    reopened: Option<std::time::Instant>,
    /// The id in the file's `meta` at open: a reopened file must still have it.
    store_id: Option<u64>,
    /// Committed (durable in the log) but not yet in the database file.
    pending: Unflushed,
    /// Keys (with the versions written) that commits to the database file have made
    /// durable there since memory was last told: their values can leave memory.
    flushed: Vec<BTreeMap<String, Option<KeyValue>>>,
}

/// What the write-ahead log holds and the database file does not yet.
#[derive(Clone, Default)]
struct Unflushed {
    /// The final value of every key written (`None`: deleted).
    keys: BTreeMap<String, Option<KeyValue>>,
    /// Encoded log entries, in revision order.
    log: Vec<(Revision, Vec<u8>)>,
    /// The last revision.
    last: Revision,
    /// History to drop from the file's log, up to this revision.
    trim: Option<Revision>,
}

impl Unflushed {
    fn add(
        &mut self,
        keys: BTreeMap<String, Option<KeyValue>>,
        log: Vec<(Revision, Vec<u8>)>,
        last: Revision,
        trim: Option<Revision>,
    ) {
        self.keys.extend(keys);
        self.log.extend(log);
        self.last = last;
        self.trim = self.trim.max(trim);
    }
}

struct State {
    data: BTreeMap<String, Entry>,
    revision: Revision,
    hub: WatchHub,
    /// Set while writes are refused (see [`Writer::broken`]): `revision` and `watch` fail
    /// with it, so whoever checks the store's health sees it unavailable.
    unavailable: Option<String>,
}

/// A key as readers see it.
#[derive(Clone, Debug)]
struct Entry {
    create_revision: Revision,
    mod_revision: Revision,
    /// The value while the database file may not hold this version yet (it is in the
    /// write-ahead log); `None` once a commit to the file holds it: read it from there.
    value: Option<Arc<[u8]>>,
}

impl Entry {
    /// The entry for a version about to become visible, value in memory.
    fn of(kv: &KeyValue) -> Entry {
        Entry {
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            value: Some(kv.value.clone()),
        }
    }

    fn key_value(&self, key: &str, value: Arc<[u8]>) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
        }
    }
}

/// How often a read from the file starts over because a commit straight into the file raced
/// with it before it gives up (each attempt after the first waits a millisecond; a race lasts
/// until that commit reaches memory).
const READ_ATTEMPTS: usize = 1000;

/// How soon a store that refuses writes after a failed one first tries to recover; the
/// wait doubles after each failed attempt, up to [`RECOVERY_INTERVAL_MAX`].
const RECOVERY_INTERVAL: Duration = Duration::from_millis(500);
const RECOVERY_INTERVAL_MAX: Duration = Duration::from_secs(5);

/// Where a queued transaction's outcome goes.
type Reply = oneshot::Sender<Result<Revision, StoreError>>;

struct Pending {
    ops: Vec<Op>,
    reply: Reply,
}

/// A queue of transactions planned against the committed state and each other.
struct Plan {
    /// Each transaction's reply channel and outcome, in queue order.
    outcomes: Vec<(Reply, Result<Revision, StoreError>)>,
    /// The events of each successful transaction, in revision order.
    committed: Vec<(Revision, Vec<WatchEvent>)>,
    /// The final value of every key written (`None`: deleted).
    staged: BTreeMap<String, Option<KeyValue>>,
}

impl EmbeddedStore {
    /// Opens the store in `path`, creating the file if it does not exist. A file that exists
    /// but is not a valid store (empty, truncated, damaged, another format) is an error naming
    /// the file; it is never replaced by an empty store.
    ///
    /// Blocking: it checks every page of the file and loads every key, so call it before
    /// starting the runtime or from `spawn_blocking`.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with(path, EmbeddedOptions::default())
    }

    /// [`EmbeddedStore::open`] with explicit options.
    pub fn open_with(path: &Path, options: EmbeddedOptions) -> Result<EmbeddedStore, StoreError> {
        let db = open_database(path, options.cache_bytes, true)?;
        let (again, cache_bytes) = (path.to_path_buf(), options.cache_bytes);
        let reopen = Box::new(move || open_database(&again, cache_bytes, false));
        EmbeddedStore::from_database(path.to_path_buf(), db, &options, true, reopen)
    }

    /// Builds a store on an opened database: initialises an empty one, loads a used one.
    fn from_database(
        path: PathBuf,
        db: Database,
        options: &EmbeddedOptions,
        use_wal: bool,
        reopen: Reopen,
    ) -> Result<EmbeddedStore, StoreError> {
        let load_error = |e| match e {
            LoadError::Redb(e) => open_error(&path, e),
            LoadError::Corrupt(reason) => corrupt(&path, reason),
        };
        initialise(&db).map_err(load_error)?;
        let (wal, replayed) = match use_wal && options.wal_bytes > 0 {
            true => {
                let (wal, replayed) = recover_wal(&path, &db, options.wal_bytes)?;
                (Some(wal), replayed)
            }
            false => (None, 0),
        };
        let loaded = load(&db, options.history_events).map_err(load_error)?;
        tracing::info!(
            path = %path.display(),
            keys = loaded.state.data.len(),
            revision = loaded.state.revision,
            history_after = loaded.state.hub.compacted(),
            "opened store"
        );
        Ok(EmbeddedStore {
            shared: Arc::new(Shared {
                path,
                db: RwLock::new(Some(Arc::new(db))),
                reopen,
                writer: Mutex::new(Writer {
                    disk_compacted: loaded.disk_compacted,
                    wal,
                    since_checkpoint: 0,
                    checkpoint_commits: options.checkpoint_commits.max(1),
                    broken: None,
                    db_failed: false,
                    recovering: false,
                    reopened: None,
                    store_id: loaded.store_id,
                    pending: Unflushed::default(),
                    flushed: Vec::new(),
                }),
                queue: Mutex::new(Queue::default()),
                state: Mutex::new(loaded.state),
                max_txn_bytes: options.max_txn_bytes.min(codec::MAX_ENTRY),
                replayed,
                read_retries: Default::default(),
            }),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// How many acknowledged transactions [`EmbeddedStore::open`] found only in the
    /// write-ahead log (not yet checkpointed into the store file) and replayed.
    pub fn replayed_at_open(&self) -> usize {
        self.shared.replayed
    }

    /// Forgets watch history up to and including `revision` (capped at the current revision),
    /// in memory and in the file. Keys are untouched.
    pub async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.compact(revision))
            .await
            .map_err(|e| {
                self.shared
                    .unavailable(format!("compaction task failed: {e}"))
            })?
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        for attempt in 0..READ_ATTEMPTS {
            self.shared.before_read(attempt).await;
            let (entries, _, read) = self.shared.snapshot(|state| {
                state
                    .data
                    .get(key)
                    .map(|e| (key.to_string(), e.clone()))
                    .into_iter()
                    .collect()
            })?;
            // At most one value: a point lookup, mostly in redb's page cache.
            if let Some(kv) = self.shared.read_values(entries, read)? {
                return Ok(kv.into_iter().next());
            }
        }
        Err(self.shared.raced(key))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        for attempt in 0..READ_ATTEMPTS {
            self.shared.before_read(attempt).await;
            let (entries, revision, read) = self.shared.snapshot(|state| {
                state
                    .data
                    .range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, e)| (k.clone(), e.clone()))
                    .collect()
            })?;
            let on_disk = entries.iter().filter(|(_, e)| e.value.is_none()).count();
            let found = if on_disk < 64 {
                self.shared.read_values(entries, read)?
            } else {
                let shared = self.shared.clone();
                tokio::task::spawn_blocking(move || shared.read_values(entries, read))
                    .await
                    .map_err(|e| self.shared.unavailable(format!("read task failed: {e}")))??
            };
            if let Some(kvs) = found {
                return Ok((kvs, revision));
            }
        }
        Err(self.shared.raced(prefix))
    }

    /// Commits `ops` durably. Once called, the transaction is queued: dropping the returned
    /// future does not withdraw it (as with a request already sent to a remote store).
    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        if ops.is_empty() {
            return Ok(self.shared.state().revision);
        }
        let (reply, outcome) = oneshot::channel();
        let lead = {
            let mut q = lock(&self.shared.queue);
            q.items.push(Pending { ops, reply });
            !std::mem::replace(&mut q.committing, true)
        };
        // The writer that finds no committer starts one and waits for it to finish, so a
        // store dropped after its last write really has closed its file.
        let committer = lead.then(|| {
            let (shared, rt) = (self.shared.clone(), tokio::runtime::Handle::current());
            tokio::task::spawn_blocking(move || shared.drain(&rt))
        });
        let result = outcome.await.map_err(|_| {
            self.shared
                .unavailable("commit task ended without a reply".to_string())
        });
        if let Some(c) = committer {
            c.await
                .map_err(|e| self.shared.unavailable(format!("commit task failed: {e}")))?;
        }
        result?
    }

    /// Fails while the store refuses writes after a failed one (disk full, I/O error),
    /// and open watches end then: watchers see the store unavailable until it recovers.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let mut state = self.shared.state();
        if let Some(why) = &state.unavailable {
            return Err(self.shared.refused(why));
        }
        let current = state.revision;
        state.hub.watch(prefix, after, current)
    }

    /// Fails while the store refuses writes after a failed one (disk full, I/O error), so
    /// health checks (`orchctl info`) see it unavailable; `get` and `list` keep serving
    /// what was committed.
    async fn revision(&self) -> Result<Revision, StoreError> {
        let state = self.shared.state();
        match &state.unavailable {
            Some(why) => Err(self.shared.refused(why)),
            None => Ok(state.revision),
        }
    }
}

#[async_trait]
impl Compact for EmbeddedStore {
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        EmbeddedStore::compact(self, revision).await
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn unavailable(&self, what: String) -> StoreError {
        StoreError::Unavailable(format!("store file {}: {what}", self.path.display()))
    }

    /// The database, unless it is being reopened after an I/O error.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        let db = self.db.read().unwrap_or_else(|p| p.into_inner()).clone();
        db.ok_or_else(|| self.unavailable("it is being reopened after an I/O error".into()))
    }

    /// An error while writes are refused (see [`Writer::broken`]).
    fn refused(&self, why: &str) -> StoreError {
        StoreError::Unavailable(self.refused_text(why))
    }

    fn refused_text(&self, why: &str) -> String {
        format!(
            "store file {} cannot take writes: {why} (it recovers by itself once the cause is gone)",
            self.path.display(),
        )
    }

    /// Waits a moment before every read attempt after the first (and counts it).
    async fn before_read(&self, attempt: usize) {
        if attempt > 0 {
            self.read_retries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    fn raced(&self, key: &str) -> StoreError {
        self.unavailable(format!(
            "reading {key}: the file kept changing under {READ_ATTEMPTS} attempts"
        ))
    }

    /// What readers see of `keys` (sorted): their entries, the revision, and, when some value
    /// is only in the file, a read transaction begun under the same lock. Memory is told a
    /// version is in the file only after the commit that wrote it, and (with the write-ahead
    /// log) the file only receives versions memory already has, so that snapshot holds
    /// exactly the versions the entries describe; without the log a commit lands in the file
    /// just before memory hears of it, which [`Shared::read_values`] notices.
    #[allow(clippy::type_complexity)]
    fn snapshot(
        &self,
        keys: impl FnOnce(&State) -> Vec<(String, Entry)>,
    ) -> Result<
        (
            Vec<(String, Entry)>,
            Revision,
            Option<redb::ReadTransaction>,
        ),
        StoreError,
    > {
        let state = self.state();
        let entries = keys(&state);
        let read = match entries.iter().any(|(_, e)| e.value.is_none()) {
            true => Some(
                self.db()?
                    .begin_read()
                    .map_err(|e| self.unavailable(format!("cannot read: {e}")))?,
            ),
            false => None,
        };
        Ok((entries, state.revision, read))
    }

    /// The values of `entries` (sorted by key), those not in memory read from the file
    /// through `read` (from [`Shared::snapshot`]). `None` when the file holds another version
    /// than an entry describes (a commit raced with the snapshot): read memory again.
    /// Blocking when many values are on disk.
    fn read_values(
        &self,
        entries: Vec<(String, Entry)>,
        read: Option<redb::ReadTransaction>,
    ) -> Result<Option<Vec<KeyValue>>, StoreError> {
        let (Some(first), Some(read)) = (entries.iter().position(|(_, e)| e.value.is_none()), read)
        else {
            return Ok(Some(
                entries
                    .into_iter()
                    .map(|(k, e)| e.key_value(&k, e.value.clone().unwrap_or_default()))
                    .collect(),
            ));
        };
        let failed = |e: redb::Error| self.unavailable(format!("cannot read: {e}"));
        let table = read.open_table(KV).map_err(|e| failed(e.into()))?;
        let mut file = table
            .range::<&str>(entries[first].0.as_str()..)
            .map_err(|e| failed(e.into()))?;
        let mut out = Vec::with_capacity(entries.len());
        for (key, entry) in entries {
            if let Some(value) = &entry.value {
                out.push(entry.key_value(&key, value.clone()));
                continue;
            }
            // Both are in key order: move the file's cursor up to this key.
            let found = loop {
                let Some(row) = file.next() else { break None };
                let (k, v) = row.map_err(|e| failed(e.into()))?;
                match k.value().cmp(key.as_str()) {
                    std::cmp::Ordering::Less => continue,
                    std::cmp::Ordering::Equal => {
                        break Some(codec::decode_kv(&key, v.value()).map_err(|e| {
                            self.unavailable(format!("key {key} is unreadable: {e}"))
                        })?)
                    }
                    std::cmp::Ordering::Greater => break None,
                }
            };
            match found {
                Some(kv) if kv.mod_revision == entry.mod_revision => out.push(kv),
                _ => return Ok(None),
            }
        }
        Ok(Some(out))
    }

    /// Tells memory which versions the file now holds, so their values leave memory.
    fn forget_flushed(&self, writer: &mut Writer) {
        if writer.flushed.is_empty() {
            return;
        }
        let flushed = std::mem::take(&mut writer.flushed);
        let mut state = self.state();
        for keys in flushed {
            for (key, kv) in keys {
                let Some(kv) = kv else { continue };
                if let Some(e) = state.data.get_mut(&key) {
                    if e.mod_revision == kv.mod_revision {
                        e.value = None;
                    }
                }
            }
        }
    }

    /// Commits queued transactions, one group per commit, until the queue is empty. After a
    /// few groups under sustained load it hands over to a fresh committer, so the writer that
    /// started this one is not kept waiting by everyone else's writes. Blocking.
    fn drain(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        struct Reset<'a>(&'a Shared);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                // Only on a panic: a later writer must be able to start a committer again.
                lock(&self.0.queue).committing = false;
            }
        }
        let reset = Reset(self);
        for round in 0.. {
            {
                // Checked and cleared under one lock: a writer that pushes after this sees
                // `committing == false` and starts the next committer.
                let mut q = lock(&self.queue);
                if q.items.is_empty() {
                    q.committing = false;
                    break;
                }
            }
            if round == 4 {
                let (shared, handle) = (self.clone(), rt.clone());
                rt.spawn_blocking(move || shared.drain(&handle));
                break;
            }
            self.commit_queued();
        }
        std::mem::forget(reset);
    }

    /// Commits every queued transaction in one redb write transaction. Blocking.
    fn commit_queued(self: &Arc<Self>) {
        let mut writer = lock(&self.writer);
        let queued = std::mem::take(&mut lock(&self.queue).items);
        if queued.is_empty() {
            return;
        }
        if let Some(why) = &writer.broken {
            for Pending { reply, .. } in queued {
                let _ = reply.send(Err(self.refused(why)));
            }
            return;
        }
        // `None` while the file waits to be reopened after a failed checkpoint: only a
        // delete of a value that is in the file alone needs it.
        let db = self.db().ok();
        let (plan, trim) = {
            let state = self.state();
            let plan = plan_queue(&state, db.as_deref(), queued, self.max_txn_bytes);
            // History the hub let go of since the last commit leaves the file too.
            let hub_compacted = state.hub.compacted();
            (
                plan,
                (hub_compacted > writer.disk_compacted).then_some(hub_compacted),
            )
        };
        let Plan {
            outcomes,
            committed,
            staged,
        } = plan;
        if committed.is_empty() {
            for (reply, outcome) in outcomes {
                let _ = reply.send(outcome);
            }
            return;
        }
        let last = committed.last().map_or(0, |(rev, _)| *rev);
        drop(db);
        if let Err(e) = self.write(&mut writer, staged.clone(), &committed, last, trim) {
            tracing::error!(path = %self.path.display(), error = %e, "store commit failed; nothing applied");
            let message = format!("cannot commit to store file {}: {e}", self.path.display());
            for (reply, _) in outcomes {
                let _ = reply.send(Err(StoreError::Unavailable(message.clone())));
            }
            // Its outcome is unknown (it may have reached the disk just before the error):
            // refuse writes until a recovery settles it from the files.
            writer.broken.get_or_insert(e);
            self.forget_flushed(&mut writer);
            self.became_unavailable(&mut writer);
            return;
        }
        {
            let mut state = self.state();
            for (key, value) in staged {
                match value {
                    Some(kv) => state.data.insert(key, Entry::of(&kv)),
                    None => state.data.remove(&key),
                };
            }
            state.revision = last;
            for (rev, events) in committed {
                state.hub.publish(rev, events);
            }
        }
        for (reply, outcome) in outcomes {
            let _ = reply.send(outcome);
        }
        // Checkpoints that are due run once memory holds what they write, so every value
        // they make durable in the file can then leave memory.
        if writer.wal.is_some()
            && writer.broken.is_none()
            && writer.since_checkpoint >= writer.checkpoint_commits
        {
            // The queue is durable in the log already; a failed checkpoint is retried.
            if let Err(e) = self.checkpoint(&mut writer) {
                tracing::warn!(path = %self.path.display(), error = %e, "store checkpoint failed; will retry");
                // redb refuses even reads after an I/O error: reopen it now, not at the
                // next checkpoint (the log holds what the file lacks).
                if let Err(e) = self.ensure_db(&mut writer) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot reopen the store file");
                }
            }
        }
        self.forget_flushed(&mut writer);
        if writer.broken.is_some() {
            self.became_unavailable(&mut writer);
        }
    }

    /// Writes are refused from now until [`Shared::recover`] succeeds: readers of the
    /// store's health see it unavailable, open watches end with that error, and a thread
    /// retries the recovery every [`RECOVERY_INTERVAL`].
    fn became_unavailable(self: &Arc<Self>, writer: &mut Writer) {
        let Some(why) = writer.broken.clone() else {
            return;
        };
        {
            let mut state = self.state();
            if state.unavailable.is_none() {
                tracing::error!(path = %self.path.display(), error = %why, "store unavailable: writes are refused until it recovers (retried in the background)");
                let error = self.refused_text(&why);
                state.unavailable = Some(why);
                state
                    .hub
                    .fail_all(|| StoreError::Unavailable(error.clone()));
            }
        }
        if writer.recovering {
            return;
        }
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("orch-store-recover".into())
            .spawn(move || {
                let mut wait = RECOVERY_INTERVAL;
                loop {
                    std::thread::sleep(wait);
                    let Some(shared) = weak.upgrade() else { return };
                    if shared.try_recover() {
                        return;
                    }
                    wait = (wait * 2).min(RECOVERY_INTERVAL_MAX);
                }
            });
        match spawned {
            Ok(_) => writer.recovering = true,
            Err(e) => tracing::error!(error = %e, "cannot start the store's recovery thread"),
        }
    }

    /// One attempt of [`Shared::recover`]; whether the thread that retries it is done.
    fn try_recover(&self) -> bool {
        let mut writer = lock(&self.writer);
        if writer.broken.is_none() {
            writer.recovering = false;
            return true;
        }
        let result = self.recover(&mut writer);
        self.forget_flushed(&mut writer);
        match result {
            Ok(()) => {
                writer.broken = None;
                writer.recovering = false;
                self.state().unavailable = None;
                tracing::info!(path = %self.path.display(), "store recovered: writes are accepted again");
                true
            }
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "store still unavailable");
                false
            }
        }
    }

    /// Makes the store writable again after a failed write: reopens the database if a write
    /// to it failed (catching memory up with a commit that landed although it reported an
    /// error), writes what the log holds to it, starts the log over in a new generation (so
    /// nothing of a failed append can be read back) and proves with one commit with fsync
    /// that the file takes writes. Blocking; the writer lock is held.
    fn recover(&self, writer: &mut Writer) -> Result<(), String> {
        let db = self.ensure_db(writer)?;
        self.checkpoint(writer)?;
        let revision = self.state().revision;
        if let Some(wal) = &mut writer.wal {
            wal.reset(revision).map_err(|e| e.to_string())?;
        }
        let probe = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(META)?.insert(REVISION_KEY, revision)?;
            txn.commit()?;
            Ok(())
        };
        probe().map_err(|e| {
            writer.db_failed = true;
            format!("store file {}: {e}", self.path.display())
        })
    }

    /// The database for a write: reopened first if a write to it failed (redb refuses
    /// every later one until then). A commit that reported an error may still have landed
    /// (straight into the file, without the log): memory catches up with it from the file's
    /// `log` table, and the write-ahead log starts over after it. Blocking; the writer lock
    /// is held.
    fn ensure_db(&self, writer: &mut Writer) -> Result<Arc<Database>, String> {
        if !writer.db_failed {
            return self.db().map_err(|e| e.to_string());
        }
        let now = std::time::Instant::now();
        if let Some(last) = writer.reopened {
            if now < last + RECOVERY_INTERVAL {
                return Err(format!(
                    "store file {}: waiting to reopen it after an I/O error",
                    self.path.display()
                ));
            }
        }
        writer.reopened = Some(now);
        let old = self.db.write().unwrap_or_else(|p| p.into_inner()).take();
        drop(old);
        let db = (self.reopen)()
            .map(Arc::new)
            .map_err(|e| format!("cannot reopen it: {e}"))?;
        let (file_revision, file_compacted, id) = (|| -> Result<_, redb::Error> {
            let read = db.begin_read()?;
            let meta = read.open_table(META)?;
            let get = |k: &str| -> Result<Option<u64>, redb::Error> {
                Ok(meta.get(k)?.map(|v| v.value()))
            };
            Ok((
                get(REVISION_KEY)?.unwrap_or(0),
                get(COMPACTED_KEY)?.unwrap_or(0),
                get(STORE_ID_KEY)?,
            ))
        })()
        .map_err(|e| format!("store file {}: {e}", self.path.display()))?;
        if id != writer.store_id {
            return Err(format!(
                "store file {} was replaced by another store while open",
                self.path.display()
            ));
        }
        let memory = self.state().revision;
        if file_revision > memory {
            // Only a commit straight into the file, which then refuses writes until
            // recovered, can leave the file ahead: nothing has been planned since.
            if writer.broken.is_none() {
                let why = format!(
                    "store file {} is at revision {file_revision}, ahead of memory at {memory}",
                    self.path.display()
                );
                writer.broken = Some(why.clone());
                return Err(why);
            }
            self.catch_up(&db, memory, file_revision)?;
            // Everything pending went into the file with it.
            writer.pending = Unflushed::default();
            writer.since_checkpoint = 0;
            if let Some(wal) = &mut writer.wal {
                wal.reset(file_revision).map_err(|e| e.to_string())?;
            }
        }
        writer.disk_compacted = file_compacted;
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = Some(db.clone());
        writer.db_failed = false;
        tracing::info!(path = %self.path.display(), revision = file_revision, "reopened the store file after a failed write");
        Ok(db)
    }

    /// Applies to memory, and publishes, the transactions `after + 1 ..= through` that the
    /// file holds but memory does not.
    fn catch_up(&self, db: &Database, after: Revision, through: Revision) -> Result<(), String> {
        let failed = |e: String| format!("store file {}: {e}", self.path.display());
        let read = db.begin_read().map_err(|e| failed(e.to_string()))?;
        let log = read.open_table(LOG).map_err(|e| failed(e.to_string()))?;
        let mut batches = Vec::new();
        for rev in after + 1..=through {
            let entry = log
                .get(rev)
                .map_err(|e| failed(e.to_string()))?
                .ok_or_else(|| failed(format!("its log lacks revision {rev}")))?;
            let events = codec::decode_events(rev, entry.value())
                .map_err(|e| failed(format!("log entry {rev}: {e}")))?;
            batches.push((rev, events));
        }
        let mut state = self.state();
        for (rev, events) in batches {
            for event in &events {
                match event {
                    WatchEvent::Put(kv) => {
                        let entry = Entry {
                            value: None,
                            ..Entry::of(kv)
                        };
                        state.data.insert(kv.key.clone(), entry);
                    }
                    WatchEvent::Delete { prev, .. } => {
                        state.data.remove(&prev.key);
                    }
                }
            }
            state.revision = rev;
            state.hub.publish(rev, events);
        }
        tracing::warn!(path = %self.path.display(), from = after + 1, through, "a commit reported as failed had reached the store file; applied it");
        Ok(())
    }

    /// Makes a planned queue durable. Without the write-ahead log: one redb commit (keys,
    /// one log entry per revision, meta) with fsync. With it: the log entries are appended to
    /// the write-ahead log and synced, and the changes wait in [`Unflushed`] for the next
    /// checkpoint, which writes everything pending to the database in one commit with fsync
    /// and starts the log over (every `checkpoint_commits` commits, or when the log is full).
    /// On `Err` nothing of this queue is durable or pending. Blocking.
    fn write(
        &self,
        writer: &mut Writer,
        staged: BTreeMap<String, Option<KeyValue>>,
        committed: &[(Revision, Vec<WatchEvent>)],
        last: Revision,
        trim: Option<Revision>,
    ) -> Result<(), String> {
        if let Some(why) = &writer.broken {
            return Err(why.clone());
        }
        let entries: Vec<(Revision, Vec<u8>)> = committed
            .iter()
            .map(|(rev, events)| (*rev, codec::encode_events(events)))
            .collect();
        let bytes: usize = entries.iter().map(|(_, e)| e.len()).sum();
        let fits = |w: &Writer| w.wal.as_ref().is_some_and(|w| w.fits(entries.len(), bytes));
        if writer.wal.is_some() && !fits(writer) {
            // Make room: what is pending goes to the database, the log starts over.
            self.checkpoint(writer)?;
        }
        if fits(writer) {
            let records: Vec<(Revision, &[u8])> =
                entries.iter().map(|(r, e)| (*r, e.as_slice())).collect();
            if let Some(wal) = &mut writer.wal {
                if let Err(e) = wal.append(&records) {
                    // After a failed write or fdatasync the record may or may not be on disk
                    // (and Linux may have dropped the dirty pages): refuse everything until
                    // a recovery starts the log over.
                    let why = e.to_string();
                    writer.broken = Some(why.clone());
                    return Err(why);
                }
            }
            writer.pending.add(staged, entries, last, trim);
            writer.since_checkpoint += 1;
            return Ok(());
        }
        // No log, or a queue larger than the whole log: straight into the database, with
        // whatever is pending, in one commit with fsync.
        let mut all = writer.pending.clone();
        all.add(staged, entries, last, trim);
        let db = self.ensure_db(writer)?;
        let written = self.write_db(
            &db,
            &all.keys,
            &all.log,
            all.last,
            all.trim,
            writer.disk_compacted,
        );
        if let Err(e) = written {
            writer.db_failed = true;
            return Err(e.to_string());
        }
        self.checkpointed(writer, all.keys, last, all.trim);
        Ok(())
    }

    /// Writes everything pending to the database in one commit with fsync and starts the
    /// write-ahead log over. Blocking.
    fn checkpoint(&self, writer: &mut Writer) -> Result<(), String> {
        if writer.pending.log.is_empty() {
            return Ok(());
        }
        let db = self.ensure_db(writer)?;
        let p = &writer.pending;
        let written = self.write_db(&db, &p.keys, &p.log, p.last, p.trim, writer.disk_compacted);
        if let Err(e) = written {
            writer.db_failed = true;
            return Err(e.to_string());
        }
        let (last, trim) = (p.last, p.trim);
        let keys = std::mem::take(&mut writer.pending.keys);
        self.checkpointed(writer, keys, last, trim);
        Ok(())
    }

    /// The database holds everything through `last` durably (`keys` were written), its log
    /// trimmed through `trim`. [`Shared::forget_flushed`] then lets go of their values.
    fn checkpointed(
        &self,
        writer: &mut Writer,
        keys: BTreeMap<String, Option<KeyValue>>,
        last: Revision,
        trim: Option<Revision>,
    ) {
        if let Some(trim) = trim {
            writer.disk_compacted = writer.disk_compacted.max(trim);
        }
        writer.flushed.push(keys);
        writer.pending = Unflushed::default();
        writer.since_checkpoint = 0;
        if let Some(wal) = &mut writer.wal {
            // On failure the header on disk may name the next generation (so appends in
            // this one would not be read back) or not: refuse writes until a reset works.
            // The database holds every record, so nothing is lost.
            if let Err(e) = wal.reset(last) {
                tracing::warn!(error = %e, "cannot start the write-ahead log over");
                writer.broken = Some(format!("cannot start the write-ahead log over: {e}"));
            }
        }
    }

    /// One redb transaction with fsync: keys, log entries (those after `disk_compacted`),
    /// the trim of old log entries and the revision.
    fn write_db(
        &self,
        db: &Database,
        staged: &BTreeMap<String, Option<KeyValue>>,
        entries: &[(Revision, Vec<u8>)],
        last: Revision,
        trim: Option<Revision>,
        disk_compacted: Revision,
    ) -> Result<(), redb::Error> {
        let txn = db.begin_write()?;
        {
            let mut kv = txn.open_table(KV)?;
            for (key, value) in staged {
                match value {
                    Some(value) => {
                        kv.insert(key.as_str(), codec::encode_kv(value).as_slice())?;
                    }
                    None => {
                        kv.remove(key.as_str())?;
                    }
                }
            }
            let mut log = txn.open_table(LOG)?;
            for (rev, entry) in entries {
                if *rev > disk_compacted.max(trim.unwrap_or(0)) {
                    log.insert(*rev, entry.as_slice())?;
                }
            }
            let mut meta = txn.open_table(META)?;
            if let Some(trim) = trim {
                log.retain_in(..=trim, |_, _| false)?;
                meta.insert(COMPACTED_KEY, trim)?;
            }
            meta.insert(REVISION_KEY, last)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Drops history up to `revision` (capped at the current revision). Blocking.
    fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut writer = lock(&self.writer);
        // The file's log must hold what it trims: write what is pending first.
        self.checkpoint(&mut writer).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot compact store file {}: {e}",
                self.path.display()
            ))
        })?;
        self.forget_flushed(&mut writer);
        let (target, disk_target) = {
            let state = self.state();
            let target = revision.min(state.revision);
            (target, target.max(state.hub.compacted()))
        };
        if disk_target > writer.disk_compacted {
            let failed = |e: String| {
                StoreError::Unavailable(format!(
                    "cannot compact store file {}: {e}",
                    self.path.display()
                ))
            };
            let db = self.ensure_db(&mut writer).map_err(failed)?;
            if let Err(e) = trim_log(&db, disk_target) {
                writer.db_failed = true;
                return Err(failed(e.to_string()));
            }
            writer.disk_compacted = disk_target;
        }
        self.state().hub.compact(target);
        Ok(())
    }
}

fn trim_log(db: &Database, through: Revision) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        txn.open_table(LOG)?.retain_in(..=through, |_, _| false)?;
        txn.open_table(META)?.insert(COMPACTED_KEY, through)?;
    }
    txn.commit()?;
    Ok(())
}

impl Drop for Shared {
    /// Ends every open watch with an error, so watchers re-watch rather than think the
    /// stream simply finished; writes what the log holds to the file (best effort: the log
    /// is replayed at the next open anyway).
    fn drop(&mut self) {
        let mut writer = std::mem::replace(
            &mut *lock(&self.writer),
            Writer {
                disk_compacted: 0,
                wal: None,
                since_checkpoint: 0,
                checkpoint_commits: 1,
                broken: None,
                db_failed: false,
                recovering: false,
                reopened: None,
                store_id: None,
                pending: Unflushed::default(),
                flushed: Vec::new(),
            },
        );
        if writer.broken.is_none() {
            if let Err(e) = self.checkpoint(&mut writer) {
                tracing::warn!(path = %self.path.display(), error = %e, "store: final checkpoint failed; the log is replayed at the next open");
            }
        }
        let path = self.path.display().to_string();
        self.state()
            .hub
            .fail_all(|| StoreError::Unavailable(format!("store file {path} was closed")));
    }
}

/// Plans queued transactions in order, each against the committed keys plus the ones before.
/// The writer lock is held, so no commit to `db` runs meanwhile: a key whose value is not in
/// memory has that very version in the file.
fn plan_queue(
    state: &State,
    db: Option<&Database>,
    queued: Vec<Pending>,
    max_txn_bytes: usize,
) -> Plan {
    let mut plan = Plan {
        outcomes: Vec::with_capacity(queued.len()),
        committed: Vec::new(),
        staged: BTreeMap::new(),
    };
    let mut revision = state.revision;
    for Pending { ops, reply } in queued {
        let next = revision + 1;
        let staged = &plan.staged;
        let on_disk = |key: &str| {
            !staged.contains_key(key) && state.data.get(key).is_some_and(|e| e.value.is_none())
        };
        // Compares need revisions only; a value left in the file is read (below) only for
        // a delete's event.
        let current = |key: &str| match staged.get(key) {
            Some(value) => value.clone(),
            None => state
                .data
                .get(key)
                .map(|e| e.key_value(key, e.value.clone().unwrap_or_default())),
        };
        let planned = plan_txn(&ops, next, current)
            .and_then(|mut events| {
                let mut deleted = events.iter_mut().filter_map(|e| match e {
                    WatchEvent::Delete { prev, .. } if on_disk(&prev.key) => Some(prev),
                    _ => None,
                });
                read_deleted(db, &mut deleted)?;
                Ok(events)
            })
            .and_then(|events| match codec::events_len(&events) {
                size if size > max_txn_bytes => Err(StoreError::TooLarge {
                    what: "transaction".into(),
                    size,
                    limit: max_txn_bytes,
                }),
                _ => Ok(events),
            });
        match planned {
            Ok(events) => {
                for event in &events {
                    match event {
                        WatchEvent::Put(kv) => plan.staged.insert(kv.key.clone(), Some(kv.clone())),
                        WatchEvent::Delete { prev, .. } => {
                            plan.staged.insert(prev.key.clone(), None)
                        }
                    };
                }
                revision = next;
                plan.committed.push((next, events));
                plan.outcomes.push((reply, Ok(next)));
            }
            Err(e) => plan.outcomes.push((reply, Err(e))),
        }
    }
    plan
}

/// Fills in the values of `deleted` from the database file, which holds those versions (the
/// caller checked, holding the writer lock). `None`: the file is waiting to be reopened.
fn read_deleted(
    db: Option<&Database>,
    deleted: &mut dyn Iterator<Item = &mut KeyValue>,
) -> Result<(), StoreError> {
    let mut deleted = deleted.peekable();
    if deleted.peek().is_none() {
        return Ok(());
    }
    let Some(db) = db else {
        return Err(StoreError::Unavailable(
            "the store file is being reopened after an I/O error".into(),
        ));
    };
    let failed =
        |e: redb::Error| StoreError::Unavailable(format!("cannot read the store file: {e}"));
    let read = db.begin_read().map_err(|e| failed(e.into()))?;
    let table = read.open_table(KV).map_err(|e| failed(e.into()))?;
    for prev in deleted {
        let row = table.get(prev.key.as_str()).map_err(|e| failed(e.into()))?;
        let kv = row
            .map(|row| codec::decode_kv(&prev.key, row.value()))
            .transpose()
            .map_err(|e| StoreError::Unavailable(format!("{} is unreadable: {e}", prev.key)))?;
        match kv {
            Some(kv) if kv.mod_revision == prev.mod_revision => prev.value = kv.value,
            _ => {
                return Err(StoreError::Unavailable(format!(
                    "{} at revision {} is missing from the store file",
                    prev.key, prev.mod_revision
                )))
            }
        }
    }
    Ok(())
}

/// Creates the tables and the format marker in a new file; leaves a used one alone and
/// refuses a redb file that holds someone else's tables.
fn initialise(db: &Database) -> Result<(), LoadError> {
    {
        let read = db.begin_read()?;
        match read.open_table(META) {
            Ok(_) => return Ok(()),
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let foreign = read.list_tables()?.next().map(|t| t.name().to_string());
        if let Some(table) = foreign {
            return Err(LoadError::Corrupt(format!(
                "it is a redb database but not an orch store (it has table {table} and no meta)"
            )));
        }
    }
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        meta.insert(FORMAT_KEY, FORMAT)?;
        meta.insert(REVISION_KEY, 0)?;
        meta.insert(COMPACTED_KEY, 0)?;
        meta.insert(STORE_ID_KEY, new_store_id())?;
        txn.open_table(KV)?;
        txn.open_table(LOG)?;
    }
    txn.commit()?;
    Ok(())
}

struct Loaded {
    state: State,
    disk_compacted: Revision,
    store_id: Option<u64>,
}

enum LoadError {
    Redb(redb::Error),
    Corrupt(String),
}

impl<E: Into<redb::Error>> From<E> for LoadError {
    fn from(e: E) -> Self {
        LoadError::Redb(e.into())
    }
}

/// Meta key set once the store uses a write-ahead log (so a missing log is noticed).
const WAL_KEY: &str = "wal";
/// Meta key: the store's random id, which its write-ahead log carries too (so another
/// store's log is refused). Stores of the first format get one at their next open.
const STORE_ID_KEY: &str = "store_id";

/// Opens (or creates) the store's write-ahead log and replays into the database every
/// transaction it holds after the database's durable revision, then starts the log over.
/// A log of another store (its id differs from the one in the file's `meta`) is refused;
/// a store and log of the first format (no ids) get one here.
fn recover_wal(path: &Path, db: &Database, bytes: u64) -> Result<(Wal, usize), StoreError> {
    let wal_path = Wal::path_for(path);
    let wal_err = |e: crate::wal::WalError| StoreError::Other(Box::new(e));
    let redb_err = |e: redb::Error| open_error(path, e);
    let (durable, in_use, file_id) = {
        let read = db.begin_read().map_err(|e| redb_err(e.into()))?;
        let meta = read.open_table(META).map_err(|e| redb_err(e.into()))?;
        let get = |k: &str| -> Result<Option<u64>, StoreError> {
            Ok(meta
                .get(k)
                .map_err(|e| redb_err(e.into()))?
                .map(|v| v.value()))
        };
        (
            get(REVISION_KEY)?.unwrap_or(0),
            get(WAL_KEY)? == Some(1),
            get(STORE_ID_KEY)?,
        )
    };
    let opened = match Wal::exists(&wal_path).map_err(wal_err)? {
        true => Some(Wal::open(&wal_path).map_err(wal_err)?),
        false if in_use => {
            return Err(corrupt(
                &wal_path,
                format!(
                    "it is missing but the store file {} has used it: writes acknowledged after revision {durable} would be lost. Restore it, or move both files aside to start empty",
                    path.display()
                ),
            ))
        }
        false => None,
    };
    let foreign = |why: String| {
        StoreError::Other(Box::new(EmbeddedError::ForeignLog {
            path: wal_path.clone(),
            reason: format!(
                "{why}: it is another store's log, and replaying it would write that store's objects into this one. Put back the log that was beside {}, or move both files aside to start empty",
                path.display()
            ),
        }))
    };
    if let Some((wal, opened)) = &opened {
        match (opened.store_id, file_id) {
            (Some(log), Some(file)) if log != file => {
                return Err(foreign(format!(
                    "it belongs to store {log:016x} but the store file {} is store {file:016x}",
                    path.display()
                )))
            }
            (Some(log), None) => {
                return Err(foreign(format!(
                    "it belongs to store {log:016x} but the store file {} is of the first format, which had no store id",
                    path.display()
                )))
            }
            // A first-format log beside a store with an id: only the leftover of an upgrade
            // that crashed before the log was rewritten, which holds nothing newer.
            (None, Some(file)) if opened.records.iter().any(|(r, _)| *r > durable) => {
                return Err(foreign(format!(
                    "it is of the first format (no store id) but the store file {} is store {file:016x}",
                    path.display()
                )))
            }
            _ => {}
        }
        if wal.base() > durable {
            return Err(corrupt(
                &wal_path,
                format!(
                    "its records start after revision {} but the store file {} holds only revision {durable}; they do not belong together",
                    wal.base(),
                    path.display()
                ),
            ));
        }
        if let Some((offset, revision)) = opened.torn {
            tracing::warn!(path = %wal_path.display(), offset, revision, "dropped a torn record at the end of the write-ahead log (its write never completed, so it was never acknowledged)");
        }
    }
    // The file names its store before any log does.
    let id = match file_id {
        Some(id) => id,
        None => {
            let id = new_store_id();
            write_meta(db, &[(STORE_ID_KEY, id)]).map_err(redb_err)?;
            id
        }
    };
    let mut replayed = 0;
    let mut wal = match opened {
        Some((mut wal, opened)) => {
            let replay: Vec<_> = opened
                .records
                .into_iter()
                .filter(|(r, _)| *r > durable)
                .collect();
            if let Some((last, _)) = replay.last() {
                replay_into(db, &replay).map_err(|e| match e {
                    LoadError::Redb(e) => redb_err(e),
                    LoadError::Corrupt(reason) => corrupt(&wal_path, reason),
                })?;
                tracing::info!(path = %wal_path.display(), transactions = replay.len(), revision = last, "replayed the write-ahead log");
                replayed = replay.len();
            }
            wal.claim(id);
            wal
        }
        None => Wal::create(&wal_path, bytes, durable, id).map_err(wal_err)?,
    };
    let base = durable
        .max(wal.base())
        .max(replayed_revision(db).map_err(redb_err)?);
    wal.reset(base).map_err(wal_err)?;
    if !in_use {
        write_meta(db, &[(WAL_KEY, 1)]).map_err(redb_err)?;
    }
    Ok((wal, replayed))
}

/// A random store id (never 0, which first-format logs use for none).
fn new_store_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

fn write_meta(db: &Database, values: &[(&str, u64)]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        for (key, value) in values {
            meta.insert(*key, *value)?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// The revision the database holds.
fn replayed_revision(db: &Database) -> Result<Revision, redb::Error> {
    let read = db.begin_read()?;
    let meta = read.open_table(META)?;
    let rev = meta.get(REVISION_KEY)?.map(|v| v.value());
    Ok(rev.unwrap_or(0))
}

/// Applies logged transactions (in revision order, the first right after the database's
/// revision) to the database in one durable commit.
fn replay_into(db: &Database, records: &[(Revision, Vec<u8>)]) -> Result<(), LoadError> {
    let txn = db.begin_write()?;
    {
        let mut kv = txn.open_table(KV)?;
        let mut log = txn.open_table(LOG)?;
        for (rev, entry) in records {
            let events = codec::decode_events(*rev, entry)
                .map_err(|e| LoadError::Corrupt(format!("record {rev}: {e}")))?;
            for event in &events {
                match event {
                    WatchEvent::Put(value) => {
                        kv.insert(value.key.as_str(), codec::encode_kv(value).as_slice())?;
                    }
                    WatchEvent::Delete { prev, .. } => {
                        kv.remove(prev.key.as_str())?;
                    }
                }
            }
            log.insert(*rev, entry.as_slice())?;
        }
        if let Some((last, _)) = records.last() {
            txn.open_table(META)?.insert(REVISION_KEY, *last)?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Reads every key and the recent log, checking that they agree with `meta`.
fn load(db: &Database, history_events: usize) -> Result<Loaded, LoadError> {
    let bad = |reason: String| LoadError::Corrupt(reason);
    let read = db.begin_read()?;
    let meta = read.open_table(META)?;
    let meta_value = |key: &str| -> Result<u64, LoadError> {
        meta.get(key)?
            .map(|v| v.value())
            .ok_or_else(|| bad(format!("meta has no {key}")))
    };
    let format = meta_value(FORMAT_KEY)?;
    if format != FORMAT {
        return Err(bad(format!(
            "format {format} is not supported (this build reads format {FORMAT})"
        )));
    }
    let revision = meta_value(REVISION_KEY)?;
    let compacted = meta_value(COMPACTED_KEY)?;
    if compacted > revision {
        return Err(bad(format!(
            "compacted revision {compacted} is after the current revision {revision}"
        )));
    }

    let mut data = BTreeMap::new();
    for entry in read.open_table(KV)?.iter()? {
        let (key, value) = entry?;
        let key = key.value();
        // Values stay in the file; memory holds revisions.
        let (create_revision, mod_revision) =
            codec::decode_revisions(value.value()).map_err(|e| bad(format!("key {key}: {e}")))?;
        if create_revision == 0 || create_revision > mod_revision || mod_revision > revision {
            return Err(bad(format!(
                "key {key} has revisions {create_revision}/{mod_revision} but the store is at {revision}"
            )));
        }
        data.insert(
            key.to_string(),
            Entry {
                create_revision,
                mod_revision,
                value: None,
            },
        );
    }

    let log = read.open_table(LOG)?;
    let expected = revision - compacted;
    let first = log.first()?.map(|(k, _)| k.value());
    let last = log.last()?.map(|(k, _)| k.value());
    let len = log.len()?;
    let contiguous = match (first, last) {
        (None, None) => expected == 0,
        (Some(first), Some(last)) => first == compacted + 1 && last == revision && len == expected,
        _ => false,
    };
    if !contiguous {
        return Err(bad(format!(
            "log holds {len} entries ({first:?}..={last:?}) but should hold revisions {}..={revision}",
            compacted + 1
        )));
    }
    // Replay only the newest entries the hub would keep (at least one).
    let mut start = revision + 1;
    let mut events = 0usize;
    for entry in log.iter()?.rev() {
        let (rev, value) = entry?;
        let count = codec::event_count(value.value())
            .map_err(|e| bad(format!("log entry {}: {e}", rev.value())))?;
        if start <= revision && events + count > history_events {
            break;
        }
        events += count;
        start = rev.value();
    }
    let mut hub = WatchHub::new(start - 1, history_events);
    for entry in log.range(start..)? {
        let (rev, value) = entry?;
        let rev = rev.value();
        let events = codec::decode_events(rev, value.value())
            .map_err(|e| bad(format!("log entry {rev}: {e}")))?;
        hub.publish(rev, events);
    }
    Ok(Loaded {
        state: State {
            data,
            revision,
            hub,
            unavailable: None,
        },
        disk_compacted: compacted,
        store_id: meta.get(STORE_ID_KEY)?.map(|v| v.value()),
    })
}

/// Opens the redb file. `first`: the first open, which creates a missing file and checks
/// every page; a reopen after an I/O error does neither (the file must still be there).
fn open_database(path: &Path, cache_bytes: usize, first: bool) -> Result<Database, StoreError> {
    let exists = !first
        || path
            .try_exists()
            .map_err(|e| open_error(path, redb::Error::Io(e)))?;
    let check = first;
    let mut builder = redb::Builder::new();
    builder
        .set_cache_size(cache_bytes)
        .set_check_integrity_on_open(check);
    // `create` would initialise an existing empty file; only a missing file starts empty.
    let opened = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if exists {
            builder.open(path)
        } else {
            builder.create(path)
        }
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(StoreError::Unavailable(format!(
            "store file {} is already open by another process or handle",
            path.display()
        ))),
        Ok(Err(e)) => Err(open_error(path, e.into())),
        Err(_) => Err(corrupt(path, "redb panicked while opening it")),
    }
}

fn open_error(path: &Path, source: redb::Error) -> StoreError {
    StoreError::Other(Box::new(EmbeddedError::Open {
        path: path.to_path_buf(),
        source,
    }))
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Other(Box::new(EmbeddedError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicBool, Ordering};

    use futures::{FutureExt, StreamExt};
    use redb::backends::InMemoryBackend;
    use redb::StorageBackend;

    use super::*;

    /// An in-memory disk that fails every write while `full` is set, like a full disk.
    #[derive(Debug)]
    struct FullDisk {
        inner: Arc<InMemoryBackend>,
        full: Arc<AtomicBool>,
    }

    /// A database on a [`FullDisk`] that is full while `full` is set, and how to reopen it.
    fn full_disk(full: &Arc<AtomicBool>) -> (Database, Reopen) {
        let inner = Arc::new(InMemoryBackend::new());
        let disk = |inner: &Arc<InMemoryBackend>, full: &Arc<AtomicBool>| FullDisk {
            inner: inner.clone(),
            full: full.clone(),
        };
        let db = redb::Builder::new()
            .create_with_backend(disk(&inner, full))
            .unwrap();
        let full = full.clone();
        let reopen = Box::new(move || {
            redb::Builder::new()
                .create_with_backend(disk(&inner, &full))
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        });
        (db, reopen)
    }

    impl FullDisk {
        fn check(&self) -> Result<(), io::Error> {
            match self.full.load(Ordering::SeqCst) {
                true => Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "no space left on device",
                )),
                false => Ok(()),
            }
        }
    }

    impl StorageBackend for FullDisk {
        fn len(&self) -> Result<u64, io::Error> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), io::Error> {
            self.check()?;
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> Result<(), io::Error> {
            self.check()?;
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
            self.check()?;
            self.inner.write(offset, data)
        }
    }

    fn create(key: &str) -> Op {
        Op::Create {
            key: key.into(),
            value: b"v".to_vec(),
        }
    }

    #[tokio::test]
    async fn failed_commit_changes_nothing() {
        let full = Arc::new(AtomicBool::new(false));
        let (db, reopen) = full_disk(&full);
        let store = EmbeddedStore::from_database(
            "/virtual/full.redb".into(),
            db,
            &EmbeddedOptions::default(),
            false,
            reopen,
        )
        .unwrap();
        let r1 = store.txn(vec![create("/a")]).await.unwrap();
        let mut w = store.watch("/", r1).await.unwrap();
        let before = store.list("").await.unwrap();

        full.store(true, Ordering::SeqCst);
        let err = store
            .txn(vec![create("/b"), create("/c")])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(err.to_string().contains("/virtual/full.redb"), "{err}");
        assert!(err.is_transient());
        // `list` shows the revision did not move; `revision` (the health check) says the
        // store cannot take writes.
        assert_eq!(store.list("").await.unwrap(), before);
        let e = store.revision().await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        assert!(store.get("/b").await.unwrap().is_none());
        // The failed commit was not published: the watch ends with the error instead.
        match w.next().now_or_never() {
            Some(Some(Err(StoreError::Unavailable(_)))) => {}
            other => panic!("{:?}", other.map(|o| o.map(|b| b.map(|b| b.revision)))),
        }

        // Once the disk has room again the store reopens the database by itself and
        // commits the next revision: it never skips a revision or half-applies.
        full.store(false, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let rev = loop {
            match store.txn(vec![create("/b")]).await {
                Ok(rev) => break rev,
                Err(e) => {
                    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
                    assert_eq!(store.list("").await.unwrap(), before);
                    assert!(std::time::Instant::now() < deadline, "not recovered: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        };
        assert_eq!(rev, r1 + 1);
        assert_eq!(store.revision().await.unwrap(), r1 + 1);
    }

    #[tokio::test]
    async fn a_full_disk_under_the_log_refuses_writes_once_the_log_is_full_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let full = Arc::new(AtomicBool::new(false));
        let (db, reopen) = full_disk(&full);
        let options = EmbeddedOptions {
            wal_bytes: 32 << 10,
            checkpoint_commits: 4,
            ..EmbeddedOptions::default()
        };
        let path = dir.path().join("full.redb");
        let store = EmbeddedStore::from_database(path.clone(), db, &options, true, reopen).unwrap();
        store.txn(vec![create("/before")]).await.unwrap();

        // The database file's disk fills up; the preallocated log still takes writes, and
        // failed checkpoints are retried, until the log itself is full.
        full.store(true, Ordering::SeqCst);
        let mut accepted = Vec::new();
        let err = loop {
            let key = format!("/k/{:04}", accepted.len());
            match store
                .txn(vec![Op::Create {
                    key: key.clone(),
                    value: vec![b'x'; 1000],
                }])
                .await
            {
                Ok(rev) => accepted.push((key, rev)),
                Err(e) => break e,
            }
            assert!(accepted.len() < 100, "a 32 KiB log took 100 KiB");
        };
        assert!(
            accepted.len() >= 4,
            "only {} writes went to the log",
            accepted.len()
        );
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(err.to_string().contains("full.redb"), "{err}");
        // The store now says it is unavailable; what it serves did not move.
        assert!(matches!(
            store.revision().await,
            Err(StoreError::Unavailable(_))
        ));
        let rev = store.list("").await.unwrap().1;
        assert_eq!(
            rev,
            accepted.last().unwrap().1,
            "a refused write moved the revision"
        );

        // Space again: the store recovers by itself (reopens the database, checkpoints) and
        // the next write goes through; nothing was lost.
        full.store(false, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let next = loop {
            match store.txn(vec![create("/after")]).await {
                Ok(next) => break next,
                Err(e) => {
                    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
                    assert!(std::time::Instant::now() < deadline, "not recovered: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        };
        assert_eq!(next, rev + 1);
        for (key, _) in &accepted {
            assert!(store.get(key).await.unwrap().is_some(), "{key} lost");
        }
    }

    /// The store id kept in the file at `path`.
    fn stored_id(path: &Path) -> u64 {
        let db = Database::open(path).unwrap();
        let id = db
            .begin_read()
            .unwrap()
            .open_table(META)
            .unwrap()
            .get(STORE_ID_KEY)
            .unwrap()
            .unwrap()
            .value();
        id
    }

    /// Stores and logs of the first format (no store id) keep opening: the log is replayed
    /// and rewritten in the current format, and the file gets an id.
    #[tokio::test]
    async fn first_format_stores_are_upgraded_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        store.txn(vec![create("/a")]).await.unwrap();
        drop(store); // checkpointed: the file holds revision 1
        let first_format = |base: Revision, rev: Revision, key: &str| {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().remove(STORE_ID_KEY).unwrap();
            txn.commit().unwrap();
            let event = vec![WatchEvent::Put(KeyValue {
                key: key.into(),
                value: b"v".to_vec().into(),
                create_revision: rev,
                mod_revision: rev,
            })];
            let entry = codec::encode_events(&event);
            let log = crate::wal::v1_log(1 << 20, base, &[(rev, &entry)]);
            std::fs::write(Wal::path_for(&path), log).unwrap();
        };
        first_format(1, 2, "/b");
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(store.replayed_at_open(), 1);
        assert!(store.get("/b").await.unwrap().is_some());
        assert_eq!(store.txn(vec![create("/c")]).await.unwrap(), 3);
        drop(store);
        let log = std::fs::read(Wal::path_for(&path)).unwrap();
        assert_eq!(&log[..8], b"ORCHWAL2");
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(store.revision().await.unwrap(), 3);
        drop(store);

        // A first-format log beside a store that has an id: refused when it holds writes
        // the file lacks (it cannot be this store's)...
        let id = stored_id(&path);
        let entry = codec::encode_events(&[]);
        let log = crate::wal::v1_log(1 << 20, 3, &[(4, &entry)]);
        std::fs::write(Wal::path_for(&path), log).unwrap();
        let e = EmbeddedStore::open(&path)
            .err()
            .expect("opened with a stranger's log");
        assert!(e.to_string().contains("another store"), "{e}");
        // ... and taken when it holds nothing newer (an upgrade that crashed before the log
        // was rewritten).
        let log = crate::wal::v1_log(1 << 20, 2, &[(3, &entry)]);
        std::fs::write(Wal::path_for(&path), log).unwrap();
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(
            (store.replayed_at_open(), store.revision().await.unwrap()),
            (0, 3)
        );
        drop(store);
        assert_eq!(stored_id(&path), id);
    }

    #[tokio::test]
    async fn queued_transactions_plan_against_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        // Queue three transactions by hand and commit them as one group.
        let mut replies = Vec::new();
        for ops in [
            vec![create("/q")],
            vec![create("/q")],
            vec![Op::Delete {
                key: "/q".into(),
                expected: Some(1),
            }],
        ] {
            let (reply, rx) = oneshot::channel();
            lock(&store.shared.queue).items.push(Pending { ops, reply });
            replies.push(rx);
        }
        let shared = store.shared.clone();
        tokio::task::spawn_blocking(move || shared.commit_queued())
            .await
            .unwrap();
        let outcomes: Vec<_> = futures::future::join_all(replies)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert!(matches!(outcomes[0], Ok(1)), "{outcomes:?}");
        assert!(
            matches!(&outcomes[1], Err(StoreError::AlreadyExists { .. })),
            "{outcomes:?}"
        );
        assert!(matches!(outcomes[2], Ok(2)), "{outcomes:?}");
        let history: Vec<_> = store.watch("/", 0).await.unwrap().take(2).collect().await;
        assert_eq!(
            history
                .iter()
                .map(|b| b.as_ref().unwrap().revision)
                .collect::<Vec<_>>(),
            [1, 2]
        );
        drop(store);
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(
            (
                store.revision().await.unwrap(),
                store.get("/q").await.unwrap()
            ),
            (2, None)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checkpointed_values_leave_memory_and_are_read_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("values.redb");
        let options = EmbeddedOptions {
            checkpoint_commits: 2,
            ..EmbeddedOptions::default()
        };
        let store = EmbeddedStore::open_with(&path, options.clone()).unwrap();
        let value = |i: usize, round: usize| format!("value {i} of round {round}").into_bytes();
        for i in 0..10 {
            let ops = vec![Op::Create {
                key: format!("/k/{i}"),
                value: value(i, 0),
            }];
            store.txn(ops).await.unwrap();
        }
        let in_memory = |store: &EmbeddedStore| {
            let state = store.shared.state();
            state.data.values().filter(|e| e.value.is_some()).count()
        };
        // Ten commits, a checkpoint after every second one: none waits in memory.
        assert_eq!(in_memory(&store), 0);
        // One more commit: it waits in the log (and memory) for the next checkpoint.
        let rev = store
            .txn(vec![Op::Update {
                key: "/k/3".into(),
                value: value(3, 1),
                expected: 4,
            }])
            .await
            .unwrap();
        assert_eq!(in_memory(&store), 1);
        let (kvs, at) = store.list("/k/").await.unwrap();
        assert_eq!(at, rev);
        assert_eq!(kvs.len(), 10);
        for kv in &kvs {
            let i: usize = kv.key.trim_start_matches("/k/").parse().unwrap();
            let round = usize::from(i == 3);
            assert_eq!(*kv.value, *value(i, round), "{}", kv.key);
            assert_eq!(kv.mod_revision, if i == 3 { rev } else { i as u64 + 1 });
        }
        let got = store.get("/k/7").await.unwrap().unwrap();
        assert_eq!((&*got.value, got.create_revision), (&*value(7, 0), 8));
        // A delete's event carries the last value, read from the file.
        let mut watch = store.watch("/k/", rev).await.unwrap();
        store
            .txn(vec![Op::Delete {
                key: "/k/7".into(),
                expected: Some(8),
            }])
            .await
            .unwrap();
        let batch = watch.next().await.unwrap().unwrap();
        match &batch.events[..] {
            [WatchEvent::Delete { prev, .. }] => assert_eq!(*prev.value, *value(7, 0)),
            other => panic!("{other:?}"),
        }
        assert!(store.get("/k/7").await.unwrap().is_none());
        drop((watch, store));
        // Reopened: every value is in the file only, and reads still see them.
        let store = EmbeddedStore::open_with(&path, options).unwrap();
        assert_eq!(in_memory(&store), 0);
        let (kvs, _) = store.list("/").await.unwrap();
        assert_eq!(kvs.len(), 9);
        assert_eq!(
            *store.get("/k/3").await.unwrap().unwrap().value,
            *value(3, 1)
        );
    }

    /// A long list while every commit is checkpointed reads one consistent file snapshot: it
    /// never starts over, and every value is the one of its key's listed revision.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lists_read_one_snapshot_while_checkpoints_rewrite_the_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open_with(
            &dir.path().join("snapshot.redb"),
            EmbeddedOptions {
                checkpoint_commits: 1,
                ..EmbeddedOptions::default()
            },
        )
        .unwrap();
        let keys = 5_000;
        let ops = (0..keys)
            .map(|i| Op::Create {
                key: format!("/k/{i:05}"),
                value: format!("/k/{i:05}@1").into_bytes(),
            })
            .collect();
        store.txn(ops).await.unwrap();
        // A writer rewrites keys spread over the range (a checkpoint after each commit), its
        // value naming the key and the revision it will be written at.
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for round in 0..200usize {
                    let key = format!("/k/{:05}", (round * 7919) % keys);
                    let kv = store.get(&key).await.unwrap().unwrap();
                    // The only writer: its commit is the next revision.
                    let next = store.revision().await.unwrap() + 1;
                    let ops = vec![Op::Update {
                        key: key.clone(),
                        value: format!("{key}@{next}").into_bytes(),
                        expected: kv.mod_revision,
                    }];
                    let _ = store.txn(ops).await;
                }
            })
        };
        while !writer.is_finished() {
            let (kvs, _) = store.list("/k/").await.unwrap();
            assert_eq!(kvs.len(), keys);
            for kv in &kvs {
                let text = String::from_utf8(kv.value.to_vec()).unwrap();
                let (key, rev) = text.split_once('@').unwrap();
                assert_eq!(key, kv.key);
                // Created at revision 1, or written by the writer at the revision it named.
                assert_eq!(rev.parse::<u64>().unwrap(), kv.mod_revision, "{}", kv.key);
            }
        }
        writer.await.unwrap();
        assert_eq!(
            store
                .shared
                .read_retries
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}
