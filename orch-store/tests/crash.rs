//! Crash safety of the embedded store: a writer process acknowledges writes while it is
//! killed with SIGKILL at random moments; after every kill each acknowledged write is present
//! and the revision never goes back. The writer is this test binary re-run in a child process
//! (`ORCH_CRASH_WRITER` set), so no extra binary is needed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orch_core::store::{Op, Store};
use orch_store::EmbeddedStore;

/// The child side: writes `/crash/<n>` for n = start.. and prints `ack <n> <revision>` after
/// each acknowledged (durable) write, until killed.
#[test]
fn crash_writer_child() {
    let Ok(path) = std::env::var("ORCH_CRASH_WRITER") else {
        return;
    };
    let start: u64 = std::env::var("ORCH_CRASH_START").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = EmbeddedStore::open(std::path::Path::new(&path)).unwrap();
        let mut out = std::io::stdout().lock();
        for n in start.. {
            let rev = store
                .txn(vec![Op::Create {
                    key: format!("/crash/{n:08}"),
                    value: n.to_string().into_bytes(),
                }])
                .await
                .unwrap();
            use std::io::Write;
            writeln!(out, "ack {n} {rev}").unwrap();
            out.flush().unwrap();
        }
    });
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let exe = std::env::current_exe().unwrap();
    let (mut acked, mut last_rev, mut kills, mut replayed) = (0u64, 0u64, 0u32, 0usize);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    while acked < 1_000 || kills < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "too slow: {acked} acked, {kills} kills"
        );
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_writer_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("ORCH_CRASH_WRITER", &path)
            .env("ORCH_CRASH_START", acked.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill after a random number of acknowledgements (1..=120), at a random point in time
        // relative to the write that is in flight.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let wanted = 1 + seed % 120;
        let mut seen = 0;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        while seen < wanted {
            let Some(Ok(line)) = lines.next() else { break };
            // libtest may print "test crash_writer_child ... " on the same line first.
            let Some(at) = line.find("ack ") else {
                continue;
            };
            let mut parts = line[at + 4..].split_whitespace();
            let n: u64 = parts.next().unwrap().parse().unwrap();
            let rev: u64 = parts.next().unwrap().parse().unwrap();
            assert_eq!(n, acked, "acks are in order");
            assert!(rev > last_rev, "revision went back: {rev} after {last_rev}");
            acked = n + 1;
            last_rev = rev;
            seen += 1;
        }
        // A kill at a random point of the writes is what is tested: this delay picks it.
        std::thread::sleep(Duration::from_micros(seed % 500));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        // Every acknowledged write is there, and the revision did not go back.
        let store =
            EmbeddedStore::open(&path).unwrap_or_else(|e| panic!("reopen after kill {kills}: {e}"));
        replayed += store.replayed_at_open();
        let (kvs, rev) = rt.block_on(store.list("/crash/")).unwrap();
        assert!(
            rev >= last_rev,
            "revision went back after kill {kills}: {rev} < {last_rev}"
        );
        assert!(
            kvs.len() as u64 >= acked,
            "kill {kills}: {} keys, {acked} acknowledged",
            kvs.len()
        );
        for (i, kv) in kvs.iter().enumerate().take(acked as usize) {
            assert_eq!(kv.key, format!("/crash/{i:08}"));
            assert_eq!(&*kv.value, i.to_string().as_bytes());
        }
        // A write that was in flight may have landed without its ack: continue after it.
        acked = kvs.len() as u64;
        last_rev = rev;
    }
    println!("{kills} SIGKILLs, {acked} writes, final revision {last_rev}, {replayed} replayed from the write-ahead log: nothing acknowledged was lost");
    // Acknowledged writes live in the write-ahead log until a checkpoint (every 4,096
    // commits): the reopens must have had to replay them.
    assert!(replayed > 0, "no reopen replayed the write-ahead log");
}
