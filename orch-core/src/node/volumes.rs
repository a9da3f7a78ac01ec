//! Where a node keeps its named local volumes: one directory per volume, `DIR/NAME`, with
//! `DIR` the node's `DATA_DIR/volumes`. The agent creates them on first use and reports them
//! in the node's status; the API and the node RPC remove them (`orchctl volume rm`).

use std::path::{Path, PathBuf};

/// The layout of one node's named volumes. Every place that finds, lists or removes a volume
/// directory goes through it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeLayout {
    dir: PathBuf,
}

impl VolumeLayout {
    /// The volumes of a node whose data directory is `data_dir`: `DATA_DIR/volumes/NAME`.
    pub fn in_data_dir(data_dir: &Path) -> VolumeLayout {
        VolumeLayout::at(data_dir.join("volumes"))
    }

    /// Volumes kept directly in `dir` (`DIR/NAME`).
    pub fn at(dir: impl Into<PathBuf>) -> VolumeLayout {
        VolumeLayout { dir: dir.into() }
    }

    /// The directory the volumes are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks that `name` can name a volume (a DNS-1123 label, so never a path);
    /// the error reads `volume "NAME": WHY`.
    pub fn check_name(name: &str) -> Result<(), String> {
        crate::model::validate::dns1123_label(name).map_err(|e| format!("volume {name:?}: {e}"))
    }

    /// Where volume `name` lives, if `name` can name a volume.
    pub fn path(&self, name: &str) -> Result<PathBuf, String> {
        VolumeLayout::check_name(name)?;
        Ok(self.dir.join(name))
    }

    /// Volume `name`'s directory, created if it does not exist yet (its first use).
    pub fn create(&self, name: &str) -> Result<PathBuf, String> {
        let path = self.path(name)?;
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("volume {name}: cannot create {}: {e}", path.display()))?;
        Ok(path)
    }

    /// The volumes there are, sorted by name (none if the directory does not exist).
    pub fn list(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        v.sort();
        v
    }

    /// Deletes volume `name` and everything in it; the error reads `cannot remove PATH: WHY`
    /// (or is [`check_name`](VolumeLayout::check_name)'s).
    pub async fn remove(&self, name: &str) -> Result<(), String> {
        let path = self.path(name)?;
        tokio::fs::remove_dir_all(&path)
            .await
            .map_err(|e| format!("cannot remove {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn volumes_are_directories_named_by_dns_labels() {
        let tmp = std::env::temp_dir().join(format!("orch-volumes-{}", std::process::id()));
        let layout = VolumeLayout::in_data_dir(&tmp);
        assert_eq!(layout.dir(), tmp.join("volumes"));
        assert!(layout.list().is_empty());
        assert_eq!(layout.create("db").unwrap(), tmp.join("volumes/db"));
        layout.create("cache").unwrap();
        std::fs::write(tmp.join("volumes/a-file"), "").unwrap();
        assert_eq!(layout.list(), ["cache", "db"]);
        assert!(layout
            .path("../etc")
            .unwrap_err()
            .starts_with("volume \"../etc\": "));
        layout.remove("db").await.unwrap();
        assert_eq!(layout.list(), ["cache"]);
        let err = layout.remove("db").await.unwrap_err();
        assert!(err.starts_with("cannot remove "), "{err}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
