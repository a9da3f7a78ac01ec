//! Attachment records: for each workload, the exact CNI configuration its ADD used and the
//! result, under `STATE_DIR/attachments/ID.json`, so DEL uses the same configuration later
//! (after a restart too). A record is written before the ADD (without a result) so a crash
//! mid-way leaves something DEL can undo.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One workload's attachment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    pub id: String,
    pub netns: PathBuf,
    /// The plugins of the chain ADD ran, in order (as in the conflist).
    pub chain: Vec<Value>,
    /// The runtime's `portMappings` (portmap's `runtimeConfig`).
    pub port_mappings: Value,
    /// The chain's final result, once ADD succeeded.
    pub result: Option<Value>,
    /// The address from the result.
    pub ip: Option<String>,
}

/// Where the records are.
pub(crate) fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("attachments")
}

fn path(state_dir: &Path, id: &str) -> PathBuf {
    dir(state_dir).join(format!("{id}.json"))
}

/// The record of `id`, if there is one (an unreadable one is an error naming the file).
pub(crate) fn read(state_dir: &Path, id: &str) -> Result<Option<Record>, String> {
    let p = path(state_dir, id);
    match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("attachment record {} is not readable: {e}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", p.display())),
    }
}

/// Writes `record` (atomically: a temporary file renamed over it).
pub(crate) fn write(state_dir: &Path, record: &Record) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    write_file(&path(state_dir, &record.id), &bytes)
}

/// Writes `bytes` to `path` atomically, making its directory.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Removes `id`'s record; none is fine.
pub(crate) fn remove(state_dir: &Path, id: &str) -> Result<(), String> {
    let p = path(state_dir, id);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", p.display())),
    }
}

/// The ids that have a record.
pub(crate) fn ids(state_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
        .collect();
    ids.sort();
    ids
}
