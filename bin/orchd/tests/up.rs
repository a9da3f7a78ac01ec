//! `orchd up examples/hello`: the README's first command, end to end.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn up_runs_the_hello_example_and_ctrl_c_stops_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
    let mut up = Command::new(env!("CARGO_BIN_EXE_orchd"))
        .arg("up")
        .arg(&example)
        .arg("--state-dir")
        .arg(&state)
        .args(["--refresh-ms", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Talk to it like a user would: through its socket.
    let d = Daemon {
        dir: tmp.path().to_path_buf(),
        socket: state.join("orchd.sock"),
        child: None,
    };
    eventually("socket", Duration::from_secs(20), || {
        d.socket.exists().then_some(())
    });
    let reps = eventually("3 hello + 1 client ready", Duration::from_secs(20), || {
        let r = d.replicas();
        (r.len() == 4 && r.iter().all(|r| r["status"]["phase"] == "Ready")).then_some(r)
    });
    for r in reps.iter().filter(|r| r["spec"]["service"] == "hello") {
        let body = http_get(&addr_of(r).unwrap()).unwrap();
        assert!(body.starts_with("hello from hello-"), "{body}");
    }
    // The client reaches the servers through discovery.
    let client = reps
        .iter()
        .find(|r| r["spec"]["service"] == "hello-client")
        .unwrap();
    let name = client["metadata"]["name"].as_str().unwrap().to_string();
    eventually("client got answers", Duration::from_secs(20), || {
        d.ctl_ok(&["logs", &name])
            .contains("ok 127.0.0.1:")
            .then_some(())
    });
    let pids: Vec<u32> = reps.iter().filter_map(pid_of).collect();
    assert_eq!(pids.len(), 4);

    // Ctrl-C: everything stops and orchd up exits 0.
    Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .unwrap();
    let status = eventually("exit", Duration::from_secs(30), || up.try_wait().unwrap());
    let mut out = String::new();
    up.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut err = String::new();
    up.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "orchd up failed: {err}");
    assert!(
        out.contains("SERVICES") && out.contains("hello-client") && out.contains("Ready"),
        "the live table: {out}"
    );
    assert!(err.contains("every workload has exited"), "{err}");
    for p in pids {
        assert!(!process_alive(p), "process {p} still runs after Ctrl-C");
    }
}
