//! orchd on a data dir whose filesystem is too small or fills up (a tmpfs mounted for the
//! test, so the real disk is never filled; needs root: otherwise each test says it skipped,
//! or fails under `ORCH_TEST_REQUIRE_ALL=1`): it says how much space the store needs, and
//! while the disk is full it reports the store unavailable (`orchctl info`, `/readyz`) and
//! recovers by itself once space is freed.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A tmpfs of `size` mounted at `dir`, unmounted on drop.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(dir).unwrap();
        if !orch_testkit::require(&["root", "mount"]) {
            return None;
        }
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallFs(dir.to_path_buf())),
            Ok(o) => {
                let why = String::from_utf8_lossy(&o.stderr).trim().to_string();
                orch_testkit::require_that("a tmpfs mount", Some(why));
                None
            }
            Err(e) => {
                orch_testkit::require_that("a tmpfs mount", Some(format!("cannot run mount: {e}")));
                None
            }
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Issue 17: a data dir on a 3 MiB filesystem could not start (16 MiB preallocated log),
/// said only `No space left on device`, and left `state.redb.wal.tmp` behind.
#[test]
fn a_data_dir_too_small_for_the_log_says_how_much_space_it_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let Some(_fs) = SmallFs::mount(&data, "3m") else {
        return;
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchd"))
        .args(["server", "--node", "test-node", "--data-dir"])
        .arg(&data)
        .arg("--socket")
        .arg(tmp.path().join("orchd.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = eventually("orchd gives up", Duration::from_secs(30), || {
        child.try_wait().unwrap()
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "orchd started on 3 MiB: {stderr}");
    assert!(stderr.contains("state.redb.wal"), "{stderr}");
    assert!(stderr.contains("16777216 bytes (16 MiB) free"), "{stderr}");
    let left: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !left.iter().any(|n| n.ends_with(".tmp")),
        "left behind: {left:?}"
    );
}

fn big_config(i: usize) -> String {
    format!(
        "apiVersion: orch/v1\nkind: Config\nmetadata: {{name: big-{i}}}\ndata:\n  blob: {}\n",
        "x".repeat(900 << 10)
    )
}

/// Issue 17: after `No space left on device` every later commit failed until orchd
/// restarted, while `orchctl info` said `available` and the node stayed Ready.
#[test]
fn a_full_disk_makes_the_store_unavailable_until_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // The 16 MiB log, and room for a checkpoint of it into the database once the filler is
    // gone (the values, the same again in the watch history, and redb's growth steps).
    let Some(_fs) = SmallFs::mount(&data, "128m") else {
        return;
    };
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_with(tmp.path(), &["--metrics-listen", &metrics]);
    eventually("ready", Duration::from_secs(20), || {
        (http_request(&metrics, "/readyz")?.0 == 200).then_some(())
    });
    assert!(d.ctl_ok(&["info"]).contains("available (revision"));

    // Fill the filesystem, then write until the log is full and the checkpoint that makes
    // room fails.
    let filler = data.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![7u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
    }
    let mut applied = Vec::new();
    let refused = loop {
        let i = applied.len();
        assert!(i < 40, "40 configs of 900 KiB fitted in a full disk");
        let f = write(tmp.path(), "big.yaml", &big_config(i));
        let out = d.ctl(&["apply", "-f", f.to_str().unwrap()]);
        if !out.status.success() {
            break String::from_utf8_lossy(&out.stderr).into_owned();
        }
        applied.push(format!("big-{i}"));
    };
    assert!(refused.contains("unavailable"), "{refused}");
    assert!(applied.len() >= 10, "only {} applied", applied.len());

    let info = eventually("info says unavailable", Duration::from_secs(10), || {
        let out = d.ctl_ok(&["info"]);
        out.contains("unavailable").then_some(out)
    });
    assert!(info.contains("state.redb"), "{info}");
    let (status, body) = eventually("not ready", Duration::from_secs(20), || {
        http_request(&metrics, "/readyz").filter(|(s, _)| *s == 503)
    });
    assert_eq!(status, 503, "{body}");

    // Space again: the store recovers by itself.
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !d.ctl_ok(&["info"]).contains("available (revision") {
        if std::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(tmp.path().join("orchd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "info still says unavailable; orchd's log ends:\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eventually("ready again", Duration::from_secs(30), || {
        (http_request(&metrics, "/readyz")?.0 == 200).then_some(())
    });
    let f = write(
        tmp.path(),
        "small.yaml",
        "apiVersion: orch/v1\nkind: Config\nmetadata: {name: small}\ndata: {a: b}\n",
    );
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    let listed = d.ctl_ok(&["get", "configs"]);
    for name in applied.iter().chain([&"small".to_string()]) {
        assert!(
            listed.contains(name.as_str()),
            "{name} missing from {listed}"
        );
    }
    drop(d);
}
