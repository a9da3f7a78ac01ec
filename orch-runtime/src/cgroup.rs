//! CPU and memory limits through Linux cgroups (v1 `memory` and `cpu` hierarchies, or the v2
//! unified hierarchy), one group per workload under `orch/`.

use std::path::{Path, PathBuf};

/// Which cgroup layout this machine has, and where orch's groups live.
#[derive(Clone, Debug)]
pub enum Cgroups {
    /// Separate `memory` and `cpu` hierarchies.
    V1 {
        /// `.../memory/orch`.
        memory: PathBuf,
        /// `.../cpu/orch`.
        cpu: PathBuf,
    },
    /// The unified hierarchy: `.../orch`.
    V2 {
        /// `.../orch`.
        root: PathBuf,
    },
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

impl Cgroups {
    /// Detects the layout under `mount` (normally `/sys/fs/cgroup`) and prepares
    /// `orch/<scope>/` (one scope per runtime, so runtimes on one machine never share groups).
    /// The error says why limits cannot be enforced.
    pub fn detect(mount: &Path, scope: &str) -> Result<Cgroups, String> {
        let v2 = mount.join("cgroup.controllers");
        if v2.exists() {
            let controllers = std::fs::read_to_string(&v2).unwrap_or_default();
            if !(controllers.contains("memory") && controllers.contains("cpu")) {
                return Err(format!(
                    "memory and cpu limits not enforced: {} lists {:?}",
                    v2.display(),
                    controllers.trim()
                ));
            }
            let top = mount.join("orch");
            let root = top.join(scope);
            std::fs::create_dir_all(&root).map_err(|e| {
                format!(
                    "memory and cpu limits not enforced: cannot create {}: {e}",
                    root.display()
                )
            })?;
            // Let workload groups below orch/ use the memory and cpu controllers.
            let _ = write(&mount.join("cgroup.subtree_control"), "+memory +cpu");
            let _ = write(&top.join("cgroup.subtree_control"), "+memory +cpu");
            write(&root.join("cgroup.subtree_control"), "+memory +cpu")
                .map_err(|e| format!("memory and cpu limits not enforced: {e}"))?;
            return Ok(Cgroups::V2 { root });
        }
        let (memory, cpu) = (mount.join("memory"), mount.join("cpu"));
        if !memory.is_dir() || !cpu.is_dir() {
            return Err(format!(
                "memory and cpu limits not enforced: no cgroup memory and cpu controllers under {}",
                mount.display()
            ));
        }
        let (memory, cpu) = (
            memory.join("orch").join(scope),
            cpu.join("orch").join(scope),
        );
        for d in [&memory, &cpu] {
            std::fs::create_dir_all(d).map_err(|e| {
                format!(
                    "memory and cpu limits not enforced: cannot create {}: {e}",
                    d.display()
                )
            })?;
        }
        Ok(Cgroups::V1 { memory, cpu })
    }

    /// A short description for status.
    pub fn describe(&self) -> String {
        match self {
            Cgroups::V1 { memory, .. } => format!(
                "memory and cpu limits enforced with cgroup v1 ({})",
                memory.display()
            ),
            Cgroups::V2 { root } => format!(
                "memory and cpu limits enforced with cgroup v2 ({})",
                root.display()
            ),
        }
    }

    fn dirs(&self, id: &str) -> Vec<PathBuf> {
        match self {
            Cgroups::V1 { memory, cpu } => vec![memory.join(id), cpu.join(id)],
            Cgroups::V2 { root } => vec![root.join(id)],
        }
    }

    /// Creates the workload's groups with its limits (`cpu` in millicores, `memory` in bytes).
    pub fn create(&self, id: &str, cpu: Option<u64>, memory: Option<u64>) -> std::io::Result<()> {
        for d in self.dirs(id) {
            std::fs::create_dir_all(&d)?;
        }
        match self {
            Cgroups::V1 { memory: m, cpu: c } => {
                if let Some(bytes) = memory {
                    write(
                        &m.join(id).join("memory.limit_in_bytes"),
                        &bytes.to_string(),
                    )?;
                    // No swap beyond the limit, so the limit really binds.
                    let _ = write(
                        &m.join(id).join("memory.memsw.limit_in_bytes"),
                        &bytes.to_string(),
                    );
                }
                if let Some(millis) = cpu {
                    write(&c.join(id).join("cpu.cfs_period_us"), "100000")?;
                    write(
                        &c.join(id).join("cpu.cfs_quota_us"),
                        &(millis * 100).max(1000).to_string(),
                    )?;
                }
            }
            Cgroups::V2 { root } => {
                if let Some(bytes) = memory {
                    write(&root.join(id).join("memory.max"), &bytes.to_string())?;
                    let _ = write(&root.join(id).join("memory.swap.max"), "0");
                }
                if let Some(millis) = cpu {
                    write(
                        &root.join(id).join("cpu.max"),
                        &format!("{} 100000", (millis * 100).max(1000)),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Moves `pid` into the workload's groups.
    pub fn add(&self, id: &str, pid: u32) -> std::io::Result<()> {
        for d in self.dirs(id) {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Every process in the workload's groups.
    pub fn pids(&self, id: &str) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .dirs(id)
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// How many times the kernel's OOM killer fired in the workload's memory group.
    pub fn oom_kills(&self, id: &str) -> u64 {
        let (file, key) = match self {
            Cgroups::V1 { memory, .. } => (memory.join(id).join("memory.oom_control"), "oom_kill"),
            Cgroups::V2 { root } => (root.join(id).join("memory.events"), "oom_kill"),
        };
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// Removes this scope's empty groups and the scope itself when nothing runs in it (called
    /// when a runtime is dropped; groups of workloads still running stay for re-adoption).
    pub fn cleanup(&self) {
        let bases = match self {
            Cgroups::V1 { memory, cpu } => vec![memory.clone(), cpu.clone()],
            Cgroups::V2 { root } => vec![root.clone()],
        };
        for base in bases {
            if let Ok(children) = std::fs::read_dir(&base) {
                for c in children.flatten().filter(|c| c.path().is_dir()) {
                    let empty = std::fs::read_to_string(c.path().join("cgroup.procs"))
                        .is_ok_and(|p| p.trim().is_empty());
                    if empty {
                        let _ = std::fs::remove_dir(c.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&base);
        }
    }

    /// Removes the workload's groups; they must be empty, so a few retries give the kernel
    /// time to let go of processes that were just killed.
    pub fn remove(&self, id: &str) {
        for d in self.dirs(id) {
            for _ in 0..50 {
                match std::fs::remove_dir(&d) {
                    Err(e)
                        if e.kind() != std::io::ErrorKind::NotFound && self.pids(id).is_empty() =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(2))
                    }
                    _ => break,
                }
            }
        }
    }
}
