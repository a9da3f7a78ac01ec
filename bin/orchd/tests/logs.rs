//! Process replicas through `orchd server` and `orchctl`: the log cap under a flood, across a
//! daemon restart; children forked at start go with their replica; `orchctl logs` tails at
//! line boundaries and marks restarts.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// The default cap of `orchd`'s process runtime (10 MiB per file, one rotated file kept).
const CAP: u64 = 10 << 20;

fn service(name: &str, replicas: u32, command: &str) -> String {
    format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  template:\n    command: {command}\n    stopGracePeriod: 1s\n"
    )
}

/// The workload directories under the daemon's runtime state.
fn workload_dirs(d: &Daemon) -> Vec<PathBuf> {
    std::fs::read_dir(d.dir.join("data/runtime"))
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("state.json").exists())
                .collect()
        })
        .unwrap_or_default()
}

/// `(pid, log writer pid)` from a workload's state file.
fn pids(dir: &Path) -> (u32, Option<u32>) {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    let pid = state["pid"].as_u64().unwrap() as u32;
    let writer = state["log_writer"]["pid"].as_u64().map(|p| p as u32);
    (pid, writer)
}

fn sizes(dir: &Path) -> [u64; 3] {
    ["output.log", "output.log.1", "output.log.2"]
        .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
}

/// Kills a workload when a failing test unwinds.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if process_alive(self.0) {
            kill9(self.0);
        }
    }
}

fn kill9(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}

/// Watches the log files of `dir` for at least `span` and until `done` (at most 30 s); kills
/// `pid` and fails at once if one outgrows the cap (so a regression cannot fill the disk).
/// Returns the largest sizes seen.
fn watch_cap(dir: &Path, pid: u32, span: Duration, mut done: impl FnMut() -> bool) -> [u64; 3] {
    let start = Instant::now();
    let mut worst = [0; 3];
    while start.elapsed() < span || !done() {
        if start.elapsed() > Duration::from_secs(30) {
            kill9(pid);
            panic!("timed out watching the log files");
        }
        let s = sizes(dir);
        for (w, s) in worst.iter_mut().zip(s) {
            *w = (*w).max(s);
        }
        if s.iter().any(|s| *s > CAP) || s[2] > 0 {
            kill9(pid);
            panic!("log files {s:?} past the cap of {CAP} bytes (or a second rotated file)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    worst
}

/// `yes` at full speed (issue 17: a 2.2 GiB `output.log` within seconds): the 10 MiB cap holds
/// while orchd runs, while it is stopped (the log writer outlives it) and after it re-adopts
/// the replica; `orchctl logs -f` still follows; delete ends the workload and its writer.
#[test]
fn the_log_cap_holds_under_a_flood_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path());
    let f = write(tmp.path(), "yes.yaml", &service("flood", 1, "[\"yes\"]"));
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    let dir = eventually("the replica's directory", Duration::from_secs(20), || {
        workload_dirs(&d)
            .into_iter()
            .find(|p| p.join("output.log.1").exists())
    });
    let (pid, writer) = pids(&dir);
    let _guard = KillOnDrop(pid);
    let worst = watch_cap(&dir, pid, Duration::from_secs(3), || true);
    println!("yes, orchd running, 3 s: largest sizes {worst:?} (cap {CAP})");
    let writer = writer.expect("a log writer in the state file");

    d.stop();
    assert!(
        process_alive(pid) && process_alive(writer),
        "both outlive orchd"
    );
    // The writer keeps rotating with orchd stopped.
    let ino = || {
        std::fs::metadata(dir.join("output.log.1"))
            .map_or(0, |m| std::os::unix::fs::MetadataExt::ino(&m))
    };
    let rotated = ino();
    let worst = watch_cap(&dir, pid, Duration::from_secs(2), || ino() != rotated);
    println!("yes, orchd stopped, 2 s and a rotation: largest sizes {worst:?}");

    let d = Daemon::start(tmp.path());
    let name = eventually("the replica re-adopted", Duration::from_secs(20), || {
        d.replicas()
            .into_iter()
            .find(|r| pid_of(r) == Some(pid))
            .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
    });
    let mut follow = std::process::Command::new(workspace_bin("orchctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["logs", "-f", "--tail-bytes", "0", &name])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    follow.stdout.take().unwrap().read_exact(&mut buf).unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(buf.chunks(2).all(|c| c == b"y\n") || buf.starts_with(b"\n"));
    let worst = watch_cap(&dir, pid, Duration::from_secs(1), || true);
    println!("yes, re-adopted, 1 s: largest sizes {worst:?}");

    d.delete_and_wait("service", "flood");
    eventually(
        "yes and its log writer gone",
        Duration::from_secs(10),
        || (!process_alive(pid) && !process_alive(writer)).then_some(()),
    );
}

/// Live pids whose command line holds `word` as an argument.
fn processes_with_arg(word: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == word.as_bytes()))
                && process_alive(*pid)
        })
        .collect()
}

/// Issue 17's walk: 2 of 5 replicas of `( setsid sleep & ) ; exec sleep` left the detached
/// sleep behind after `orchctl delete`. Every process a replica starts is in its cgroup now.
#[test]
fn detached_children_go_with_their_replica() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let escaped = format!("{}1", 3_100_000 + std::process::id());
    let command = format!("[sh, -c, '( setsid sleep {escaped} & ) ; exec sleep 1000']");
    let f = write(tmp.path(), "fork.yaml", &service("fork", 5, &command));
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    eventually("5 detached children", Duration::from_secs(30), || {
        (processes_with_arg(&escaped).len() == 5).then_some(())
    });
    let with_cgroups = workload_dirs(&d).iter().all(|dir| {
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
        state["cgroups"].as_array().is_some_and(|c| !c.is_empty())
    });
    d.delete_and_wait("service", "fork");
    let left = eventually("no replica left", Duration::from_secs(10), || {
        workload_dirs(&d)
            .is_empty()
            .then(|| processes_with_arg(&escaped))
    });
    for pid in &left {
        kill9(*pid);
    }
    let no_cgroups = (!with_cgroups)
        .then(|| "the replicas got none: only their process groups were killed".into());
    if !require_that("cgroups", no_cgroups) {
        return;
    }
    assert!(
        left.is_empty(),
        "{} of 5 detached children outlived the delete",
        left.len()
    );
}

/// `orchctl logs`: a separator line between runs, `--tail N` lines, `--tail-bytes N` from a
/// line start (issue 17: it cut a line in half, and runs ran together).
#[test]
fn logs_mark_restarts_and_tail_whole_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let command = "[sh, -c, 'echo run $$$$; echo a fairly long second line of output; exit 1']";
    let f = write(tmp.path(), "crash.yaml", &service("crash", 1, command));
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    let name = eventually("a restart", Duration::from_secs(30), || {
        d.replicas()
            .into_iter()
            .find(|r| r["status"]["restarts"].as_u64() >= Some(2))
            .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
    });
    let whole = |l: &str| {
        l == "a fairly long second line of output"
            || l.strip_prefix("run ")
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            || (l.starts_with("--- restarted at ") && l.ends_with(" (exit code 1) ---"))
    };
    let all = d.ctl_ok(&["logs", &name]);
    let lines: Vec<&str> = all.lines().collect();
    assert!(lines.iter().all(|l| whole(l)), "{all}");
    assert!(lines.len() >= 8, "{all}");
    assert!(
        lines[0].starts_with("run ") && lines[2].starts_with("--- restarted at "),
        "{all}"
    );
    assert!(lines[3].starts_with("run "), "{all}");

    let two = d.ctl_ok(&["logs", "--tail", "2", &name]);
    assert_eq!(two.lines().count(), 2, "{two}");
    assert!(all.ends_with(&two), "{two}");
    // Shorter than the last line: its cut is all that fits.
    let cut = d.ctl_ok(&["logs", "--tail-bytes", "30", &name]);
    assert_eq!(cut, "ly long second line of output\n");
    for n in ["40", "50", "61", "100"] {
        let tail = d.ctl_ok(&["logs", "--tail-bytes", n, &name]);
        assert!(tail.len() <= n.parse().unwrap(), "{tail}");
        assert!(tail.lines().all(whole), "--tail-bytes {n}: {tail:?}");
    }
    let both = d.ctl_ok(&["logs", "--tail", "5", "--tail-bytes", "40", &name]);
    assert_eq!(both.lines().count(), 1, "{both}");
    d.delete_and_wait("service", "crash");
}
