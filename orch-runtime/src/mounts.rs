//! Mounts on the node's side: secret and config files written on tmpfs (never on disk),
//! tmpfs directories, and — for process replicas, which share the node's filesystem — the
//! replica's own root (`$ORCH_ROOT`) where each mount appears at its path as a symlink.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use orch_core::runtime::{MountFiles, MountSource, WorkloadMount};

/// tmpfs's magic number in `statfs`.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Whether `path` is on tmpfs.
pub(crate) fn is_tmpfs(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type == TMPFS_MAGIC)
}

/// Where a runtime keeps workloads' tmpfs content: `/dev/shm/orch-<tag>` (`tag` tells
/// runtimes apart), or `fallback` when /dev/shm is not tmpfs (then secrets do touch a disk;
/// the runtime says so).
pub(crate) fn tmpfs_root(tag: &str, fallback: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    if is_tmpfs(shm) {
        shm.join(format!("orch-{tag}"))
    } else {
        tracing::warn!(
            "/dev/shm is not tmpfs: secret files of replicas go to {}",
            fallback.display()
        );
        fallback.to_path_buf()
    }
}

/// A short stable tag for a state directory (FNV-1a).
pub(crate) fn tag_of(state_dir: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in state_dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:08x}", h & 0xffff_ffff)
}

fn mkdir(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
}

/// Writes `files` into a new directory `dir` (replacing what was there): mode 0400 files in
/// a 0500 directory for a secret, 0444 in 0555 for a config, owned by `owner` when given.
pub(crate) fn write_files(
    dir: &Path,
    files: &MountFiles,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    remove_tree(dir)?;
    mkdir(dir, 0o700)?;
    let (file_mode, dir_mode) = if files.secret {
        (0o400, 0o500)
    } else {
        (0o444, 0o555)
    };
    for (name, content) in &files.files {
        // Keys are validated ([-._a-zA-Z0-9], not . or ..); check again: no path may leave.
        if name.contains('/') || name == "." || name == ".." || name.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("key {name:?} cannot be a file name"),
            ));
        }
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file_mode)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)?;
        io::Write::write_all(&mut f, content)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(dir_mode))?;
    Ok(())
}

/// Removes `path` and everything below it, making read-only directories (a secret's 0500)
/// writable first so a non-root daemon can empty them. Gone already is fine.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => return std::fs::remove_file(path),
        Ok(_) => {}
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    for e in std::fs::read_dir(path)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            remove_tree(&e.path())?;
        }
    }
    std::fs::remove_dir_all(path)
}

/// `root` joined with absolute `path`, after checking every existing component below `root`
/// is a real directory, not a symlink (a workload could otherwise point one outside its
/// root and have orch create or replace files there); missing ones are created 0755.
pub(crate) fn inside(root: &Path, path: &str) -> io::Result<PathBuf> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    let rel = Path::new(path)
        .strip_prefix("/")
        .map_err(|_| bad(format!("mount path {path} is not absolute")))?;
    let mut at = root.to_path_buf();
    let comps: Vec<Component> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let Component::Normal(name) = c else {
            return Err(bad(format!("mount path {path} has a {c:?} component")));
        };
        at.push(name);
        let last = i + 1 == comps.len();
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() && !last => {
                return Err(bad(format!(
                    "mount path {path}: {} is a symlink; refusing to follow it out of {}",
                    at.display(),
                    root.display()
                )))
            }
            Ok(m) if !last && !m.is_dir() => {
                return Err(bad(format!(
                    "mount path {path}: {} is not a directory",
                    at.display()
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !last {
                    mkdir(&at, 0o755)?;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

/// Makes a process replica's mounts under `root`: each path becomes a symlink to the files
/// (written under `tmp`), the tmpfs directory (under `tmp`, kept across restarts of the
/// replica) or the node directory.
pub(crate) fn link_process_mounts(
    root: &Path,
    tmp: &Path,
    mounts: &[WorkloadMount],
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    mkdir(root, 0o755)?;
    if let Some((uid, gid)) = owner {
        // The workload's user reaches its files through `tmp` (0700, its own) and the
        // directory holding it (traversable, not listable).
        if let Some(parent) = tmp.parent() {
            use std::os::unix::fs::PermissionsExt;
            mkdir(parent, 0o700)?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))?;
        }
        mkdir(tmp, 0o700)?;
        std::os::unix::fs::chown(tmp, Some(uid), Some(gid))?;
    }
    for (i, m) in mounts.iter().enumerate() {
        let target = match &m.source {
            MountSource::Files(files) => {
                let d = tmp.join(i.to_string());
                write_files(&d, files, owner)?;
                d
            }
            MountSource::File(files) => {
                // One key: the link at the path points at the file itself.
                let d = tmp.join(i.to_string());
                write_files(&d, files, owner)?;
                d.join(
                    files
                        .files
                        .first()
                        .map(|f| f.0.as_str())
                        .unwrap_or_default(),
                )
            }
            MountSource::Tmpfs => {
                // Kept across restarts of the replica; removed with it.
                let d = tmp.join(i.to_string());
                mkdir(&d, 0o700)?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(&d, Some(uid), Some(gid))?;
                }
                d
            }
            MountSource::Dir(d) => d.clone(),
        };
        let at = inside(root, &m.path)?;
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => std::fs::remove_file(&at)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "mount path {}: {} exists and is not orch's link",
                        m.path,
                        at.display()
                    ),
                ))
            }
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&target, &at)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(secret: bool) -> MountFiles {
        MountFiles {
            secret,
            files: vec![("password".into(), b"hunter2".to_vec())],
        }
    }

    #[test]
    fn secret_files_are_owner_read_only_and_configs_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("s");
        write_files(&s, &files(true), None).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&s.join("password")), 0o400);
        assert_eq!(mode(&s), 0o500);
        assert_eq!(std::fs::read(s.join("password")).unwrap(), b"hunter2");
        let c = d.path().join("c");
        write_files(&c, &files(false), None).unwrap();
        assert_eq!(mode(&c.join("password")), 0o444);
        let bad = MountFiles {
            secret: true,
            files: vec![("../x".into(), vec![])],
        };
        assert!(write_files(&d.path().join("b"), &bad, None).is_err());
    }

    #[test]
    fn a_symlink_out_of_the_root_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc")).unwrap();
        let e = inside(&root, "/etc/app").unwrap_err().to_string();
        assert!(e.contains("symlink") && e.contains("/etc/app"), "{e}");
        assert!(!outside.join("app").exists());
        let ok = inside(&root, "/run/secrets/db").unwrap();
        assert_eq!(ok, root.join("run/secrets/db"));
        assert!(root.join("run/secrets").is_dir());
        assert!(inside(&root, "relative").is_err());
    }

    #[test]
    fn process_mounts_are_links_into_tmpfs_and_node_dirs() {
        let d = tempfile::tempdir().unwrap();
        let (root, tmp, vol) = (
            d.path().join("root"),
            d.path().join("tmp"),
            d.path().join("vol"),
        );
        std::fs::create_dir_all(&vol).unwrap();
        let mounts = vec![
            WorkloadMount {
                path: "/run/secrets/db".into(),
                read_only: true,
                source: MountSource::Files(files(true)),
            },
            WorkloadMount {
                path: "/data".into(),
                read_only: false,
                source: MountSource::Dir(vol.clone()),
            },
            WorkloadMount {
                path: "/scratch".into(),
                read_only: false,
                source: MountSource::Tmpfs,
            },
        ];
        link_process_mounts(&root, &tmp, &mounts, None).unwrap();
        assert_eq!(
            std::fs::read(root.join("run/secrets/db/password")).unwrap(),
            b"hunter2"
        );
        std::fs::write(root.join("data/f"), "x").unwrap();
        assert!(vol.join("f").exists());
        assert!(root.join("scratch").is_dir());
        // Again (a restart): the links are replaced, not refused, and the tmpfs directory
        // keeps what the last run wrote.
        std::fs::write(root.join("scratch/kept"), "x").unwrap();
        link_process_mounts(&root, &tmp, &mounts, None).unwrap();
        assert!(root.join("scratch/kept").exists());
    }
}
