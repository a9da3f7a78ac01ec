//! Control groups: one per workload under the memory and cpu hierarchies (cgroup v1) or in the
//! unified hierarchy (v2), to enforce limits and to find every descendant when killing.
//!
//! Workload cgroups live at `<hierarchy>/<the runtime's own cgroup>/orch/<instance>/<id>`:
//! nested under the runtime's own cgroup so workloads stay inside whatever confines the runtime,
//! and under an `<instance>` directory (a hash of the state directory) so two runtimes on one
//! machine never touch each other's workloads even when ids collide.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use orch_core::model::object::Resources;
use rustix::process::{Pid, Signal};

/// The CFS period for CPU limits, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota the kernel accepts, in microseconds.
const CPU_MIN_QUOTA_US: u64 = 1_000;

#[derive(Clone, Debug)]
enum Layout {
    /// cgroup v1: separate memory and cpu hierarchies (parents of the workload cgroups).
    V1 { memory: PathBuf, cpu: PathBuf },
    /// cgroup v2: one hierarchy (parent of the workload cgroups).
    V2 { parent: PathBuf },
}

/// Where workload cgroups go, if anywhere.
#[derive(Clone, Debug)]
pub(crate) struct Cgroups {
    layout: Option<Layout>,
    note: String,
}

impl Cgroups {
    /// Detects cgroup v2 or v1 under `root` (`/sys/fs/cgroup` when `None`) and creates the
    /// parent directories for this runtime's workloads. `instance` names this runtime.
    pub fn detect(root: Option<&Path>, instance: &str) -> Cgroups {
        let root = root.unwrap_or(Path::new("/sys/fs/cgroup"));
        match detect(root, instance) {
            Ok((layout, note)) => Cgroups {
                layout: Some(layout),
                note,
            },
            Err(note) => Cgroups { layout: None, note },
        }
    }

    /// Whether memory and cpu limits are enforced.
    pub fn enforced(&self) -> bool {
        self.layout.is_some()
    }

    /// A human note on limits.
    pub fn note(&self) -> &str {
        &self.note
    }

    /// Removes this runtime's parent cgroup directories if no workload cgroup is left in them
    /// (called when the runtime goes away; with workloads still running, nothing happens).
    pub fn release(&self) {
        let parents = match &self.layout {
            None => vec![],
            Some(Layout::V1 { memory, cpu }) => vec![memory, cpu],
            Some(Layout::V2 { parent }) => vec![parent],
        };
        for p in parents {
            // Fails (ENOTEMPTY, EBUSY) while workload cgroups remain: exactly what is wanted.
            let _ = fs::remove_dir(p);
        }
    }

    /// Creates fresh cgroups for workload `id` with `resources` as limits (only the limits the
    /// template sets). Returns the directories created, memory first; empty when cgroups are
    /// not in use. A leftover cgroup of the same name (an earlier run of `id`) is emptied and
    /// replaced so counters such as `oom_kill` start from zero.
    pub async fn create(&self, id: &str, resources: &Resources) -> io::Result<Vec<PathBuf>> {
        let dirs = match &self.layout {
            None => return Ok(Vec::new()),
            Some(Layout::V1 { memory, cpu }) => vec![memory.join(id), cpu.join(id)],
            Some(Layout::V2 { parent }) => vec![parent.join(id)],
        };
        remove(&dirs).await;
        let result = self.configure(&dirs, resources);
        if result.is_err() {
            remove(&dirs).await;
        }
        result.map(|()| dirs)
    }

    fn configure(&self, dirs: &[PathBuf], resources: &Resources) -> io::Result<()> {
        for d in dirs {
            fs::create_dir(d).map_err(|e| with_path(e, "cannot create", d))?;
        }
        match &self.layout {
            None => {}
            Some(Layout::V1 { .. }) => {
                let (mem, cpu) = (&dirs[0], &dirs[1]);
                if let Some(m) = resources.memory {
                    write(&mem.join("memory.limit_in_bytes"), &m.0.to_string())?;
                    // Memory plus swap; only present with swap accounting, so a failure is fine.
                    let _ = fs::write(mem.join("memory.memsw.limit_in_bytes"), m.0.to_string());
                }
                if let Some(c) = resources.cpu {
                    write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&cpu.join("cpu.cfs_quota_us"), &quota_us(c.0).to_string())?;
                }
            }
            Some(Layout::V2 { .. }) => {
                let d = &dirs[0];
                if let Some(m) = resources.memory {
                    write(&d.join("memory.max"), &m.0.to_string())?;
                    // No swapping instead of being limited; absent without swap, so ignored.
                    let _ = fs::write(d.join("memory.swap.max"), "0");
                }
                if let Some(c) = resources.cpu {
                    write(
                        &d.join("cpu.max"),
                        &format!("{} {CPU_PERIOD_US}", quota_us(c.0)),
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// The CFS quota for `millicores` per 100 ms period.
fn quota_us(millicores: u64) -> u64 {
    millicores
        .saturating_mul(CPU_PERIOD_US / 1000)
        .max(CPU_MIN_QUOTA_US)
}

fn detect(root: &Path, instance: &str) -> Result<(Layout, String), String> {
    const NOT_ENFORCED: &str = "memory and cpu limits not enforced";
    if let Ok(controllers) = fs::read_to_string(root.join("cgroup.controllers")) {
        let have: Vec<&str> = controllers.split_whitespace().collect();
        if !(have.contains(&"memory") && have.contains(&"cpu")) {
            return Err(format!(
                "{NOT_ENFORCED}: cgroup v2 at {} does not offer the memory and cpu controllers (it offers: {})",
                root.display(),
                controllers.trim()
            ));
        }
        let base = own_dir(root, own_cgroup(None));
        let orch = base.join("orch");
        let parent = orch.join(instance);
        // v2 allows controllers in a child only when its parent delegates them; a cgroup with
        // processes of its own (other than the root) cannot delegate, and then this fails.
        for (dir, next) in [(&base, &orch), (&orch, &parent)] {
            enable_v2(dir).map_err(|e| format!("{NOT_ENFORCED}: {e}"))?;
            create_dir(next).map_err(|e| format!("{NOT_ENFORCED}: {e}"))?;
        }
        enable_v2(&parent).map_err(|e| format!("{NOT_ENFORCED}: {e}"))?;
        let note = format!(
            "memory and cpu limits enforced with cgroup v2 under {}",
            parent.display()
        );
        return Ok((Layout::V2 { parent }, note));
    }
    let (memory, cpu) = (root.join("memory"), root.join("cpu"));
    if !(memory.is_dir() && cpu.is_dir()) {
        return Err(format!(
            "{NOT_ENFORCED}: no cgroup v2 controllers and no v1 memory and cpu hierarchies under {}",
            root.display()
        ));
    }
    let memory = own_dir(&memory, own_cgroup(Some("memory")))
        .join("orch")
        .join(instance);
    let cpu = own_dir(&cpu, own_cgroup(Some("cpu")))
        .join("orch")
        .join(instance);
    for d in [&memory, &cpu] {
        create_dir(d).map_err(|e| format!("{NOT_ENFORCED}: {e}"))?;
    }
    let note = format!(
        "memory and cpu limits enforced with cgroup v1 under {} and {}",
        memory.display(),
        cpu.display()
    );
    Ok((Layout::V1 { memory, cpu }, note))
}

/// `dir` joined with the cgroup path `own`, or `dir` itself when that does not exist (for
/// example inside a container with its own cgroup namespace view).
fn own_dir(dir: &Path, own: Option<String>) -> PathBuf {
    own.map(|p| dir.join(p.trim_start_matches('/')))
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| dir.to_path_buf())
}

/// This process's cgroup path in the v1 hierarchy of `controller`, or in v2 with `None`.
fn own_cgroup(controller: Option<&str>) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match controller {
            None => controllers.is_empty(),
            Some(c) => controllers.split(',').any(|x| x == c),
        };
        matches.then(|| path.to_string())
    })
}

fn enable_v2(dir: &Path) -> Result<(), String> {
    let path = dir.join("cgroup.subtree_control");
    let current = fs::read_to_string(&path).unwrap_or_default();
    let have: Vec<&str> = current.split_whitespace().collect();
    if have.contains(&"memory") && have.contains(&"cpu") {
        return Ok(());
    }
    fs::write(&path, "+memory +cpu").map_err(|e| describe(&e, "cannot write", &path))
}

fn create_dir(d: &Path) -> Result<(), String> {
    fs::create_dir_all(d).map_err(|e| describe(&e, "cannot write", d))
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| with_path(e, "cannot write", path))
}

fn describe(e: &io::Error, what: &str, path: &Path) -> String {
    format!("{what} {}: {}", path.display(), e.kind())
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), describe(&e, what, path))
}

/// Process ids in the cgroup `dir`.
pub(crate) fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// SIGKILLs every process in the cgroups `dirs` (with `cgroup.kill` where the kernel has it).
/// Returns how many processes were found.
///
/// Reading `cgroup.procs` and killing is not atomic: a listed process may exit and its pid be
/// reused in between. The window is tiny and the kernel hands out pids in increasing order.
pub(crate) fn kill_all(dirs: &[PathBuf]) -> usize {
    let mut found = 0;
    for d in dirs {
        let pids = procs(d);
        found += pids.len();
        if pids.is_empty() {
            continue;
        }
        if fs::write(d.join("cgroup.kill"), "1").is_ok() {
            continue;
        }
        for pid in pids {
            if let Some(p) = Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
        }
    }
    found
}

/// Whether the kernel's OOM killer struck in the cgroups `dirs` (v1 `memory.oom_control`,
/// v2 `memory.events`: the `oom_kill` counter).
pub(crate) fn oom_killed(dirs: &[PathBuf]) -> bool {
    dirs.iter().any(|d| {
        ["memory.oom_control", "memory.events"].iter().any(|f| {
            fs::read_to_string(d.join(f))
                .map(|text| oom_kill_count(&text) > 0)
                .unwrap_or(false)
        })
    })
}

fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Kills whatever is left in the cgroups `dirs` and removes them, retrying for up to two
/// seconds while processes finish dying. Failures are logged, not returned: a leftover empty
/// cgroup is harmless and is replaced by the next [`Cgroups::create`] of the same id.
pub(crate) async fn remove(dirs: &[PathBuf]) {
    for d in dirs {
        let mut tries = 0;
        loop {
            kill_all(std::slice::from_ref(d));
            match fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if tries >= 40 => {
                    tracing::warn!(cgroup = %d.display(), error = %e, "cannot remove cgroup");
                    break;
                }
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oom_counters() {
        assert_eq!(
            oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            2
        );
        assert_eq!(
            oom_kill_count("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n"),
            1
        );
        assert_eq!(oom_kill_count("oom_kill_disable 0\n"), 0);
    }

    #[test]
    fn cpu_quota_per_period() {
        assert_eq!(quota_us(500), 50_000);
        assert_eq!(quota_us(2000), 200_000);
        assert_eq!(quota_us(1), CPU_MIN_QUOTA_US);
    }

    #[test]
    fn no_hierarchies_means_not_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cgroups::detect(Some(dir.path()), "x");
        assert!(!c.enforced());
        assert!(
            c.note().starts_with("memory and cpu limits not enforced: "),
            "{}",
            c.note()
        );
    }
}
