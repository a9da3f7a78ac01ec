//! The per-workload state file `state_dir/<id>/state.json`: what a restarted runtime needs to
//! re-adopt (or bury) a workload.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use orch_core::model::object::{BoundPort, ExitStatus};
use orch_core::model::quantity::Timestamp;
use serde::{Deserialize, Serialize};

/// The file name of the state file inside a workload directory.
pub(crate) const STATE_FILE: &str = "state.json";

/// Everything recorded about one workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Format version (1).
    pub version: u32,
    /// The workload id.
    pub id: String,
    /// The replica uid it was started for.
    pub replica_uid: String,
    /// The template hash it was started with.
    pub template_hash: String,
    /// The process id; also the process group id.
    pub pid: i32,
    /// `/proc/<pid>/stat` field 22 at start: tells this process from a later one with the
    /// same pid.
    pub start_time: u64,
    /// Ports handed to the workload.
    pub ports: Vec<BoundPort>,
    /// The address the ports are reached at.
    pub host_ip: String,
    /// When it started.
    pub started_at: Timestamp,
    /// How it ended, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitStatus>,
    /// The cgroup directories created for it (memory first), if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<PathBuf>,
    /// The log writer process reading its output, if it has one (else the output goes straight
    /// to the log file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_writer: Option<Proc>,
}

/// A process told apart from later ones with the same pid by its start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Proc {
    /// The process id.
    pub pid: i32,
    /// `/proc/<pid>/stat` field 22.
    pub start_time: u64,
}

/// Writes `record` to `path` atomically: a temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write(path: &Path, record: &Record) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Makes the rename itself durable.
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads a state file.
pub(crate) fn read(path: &Path) -> io::Result<Record> {
    let bytes = fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        let mut rec = Record {
            version: 1,
            id: "default.web-0".into(),
            replica_uid: "u1".into(),
            template_hash: "abc".into(),
            pid: 42,
            start_time: 7,
            ports: vec![BoundPort {
                name: "http".into(),
                port: 8080,
            }],
            host_ip: "127.0.0.1".into(),
            started_at: Timestamp(1_700_000_000_000),
            exit: None,
            cgroups: vec![],
            log_writer: Some(Proc {
                pid: 43,
                start_time: 8,
            }),
        };
        write(&path, &rec).unwrap();
        assert_eq!(read(&path).unwrap(), rec);
        rec.exit = Some(ExitStatus {
            code: Some(3),
            ..ExitStatus::default()
        });
        write(&path, &rec).unwrap();
        assert_eq!(read(&path).unwrap(), rec);
        assert!(!path.with_extension("json.tmp").exists());
    }
}
