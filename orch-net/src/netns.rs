//! Network namespaces as bind-mounted files under `/run/netns/`, named
//! `orch-<8 hex of a hash of the state dir>-<workload id>`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where named network namespaces live (as `ip netns` keeps them).
pub const NETNS_DIR: &str = "/run/netns";

/// FNV-1a (32 bits) of `bytes`: stable across builds and machines, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The name prefix of every namespace of the agent keeping state in `state_dir`.
pub(crate) fn prefix(state_dir: &Path) -> String {
    format!(
        "orch-{:08x}-",
        fnv1a(state_dir.as_os_str().as_encoded_bytes())
    )
}

/// Whether `id` can name a namespace (and a CNI container id): `[A-Za-z0-9][A-Za-z0-9._-]*`,
/// at most 200 bytes.
pub(crate) fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    match ok {
        true => Ok(()),
        false => Err(format!(
            "workload id {id:?} cannot name a network namespace: it must be 1 to 200 of A-Z a-z 0-9 . _ - starting with a letter or digit"
        )),
    }
}

/// Whether `path` is a namespace bind mount (its device differs from its directory's).
pub(crate) fn is_mounted(path: &Path) -> bool {
    let (Ok(file), Some(Ok(dir))) = (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    file.dev() != dir.dev()
}

/// Creates namespace `name` (a new one, bind-mounted at `/run/netns/NAME`); an existing one is
/// kept.
pub(crate) async fn create(name: &str) -> Result<PathBuf, String> {
    let path = Path::new(NETNS_DIR).join(name);
    if is_mounted(&path) {
        return Ok(path);
    }
    // A file left by a crash between creating and mounting it.
    remove(&path)?;
    rtnetlink::NetworkNamespace::add(name.to_string())
        .await
        .map_err(|e| format!("cannot create network namespace {}: {e}", path.display()))?;
    Ok(path)
}

/// Unmounts and removes the namespace file at `path`; already gone is fine.
pub(crate) fn remove(path: &Path) -> Result<(), String> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(format!("cannot unmount {}: {e}", path.display())),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

/// The workload ids of the namespaces named with `prefix`.
pub(crate) fn list(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter_map(|n| n.strip_prefix(prefix).map(str::to_string))
        .collect();
    ids.sort();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_stable_and_differs_per_state_dir() {
        let a = prefix(Path::new("/var/lib/orch/network"));
        assert_eq!(a, prefix(Path::new("/var/lib/orch/network")));
        assert_ne!(a, prefix(Path::new("/var/lib/orch2/network")));
        assert_eq!(a.len(), "orch-".len() + 8 + 1);
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("default.web-x7k2p").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("../x").is_err());
        assert!(check_id("a/b").is_err());
    }
}
