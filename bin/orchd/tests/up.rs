//! `orchd up examples/hello`: the README's first command, end to end.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
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
    // The log says when each service is ready (the services' status may follow the
    // replicas' by a moment).
    let stdout = up.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut s = seen.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        })
    };
    eventually(
        "both services logged ready",
        Duration::from_secs(20),
        || {
            let s = seen.lock().unwrap();
            (s.contains("service/hello-client  1/1 ready")
                && s.contains("service/hello  3/3 ready"))
            .then_some(())
        },
    );

    // Ctrl-C: everything stops and orchd up exits 0.
    Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .unwrap();
    let status = eventually("exit", Duration::from_secs(30), || up.try_wait().unwrap());
    reader.join().unwrap();
    let out = seen.lock().unwrap().clone();
    let mut err = String::new();
    up.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "orchd up failed: {err}");
    // Not a terminal: the header once (with the socket), then a plain log of events and
    // ready counts, not a redrawn table.
    assert!(
        out.starts_with("orch up ") && out.contains(&format!("--socket {}", d.socket.display())),
        "the header: {out}"
    );
    assert!(
        out.contains("  Normal  Scaled  service/hello  "),
        "the event log: {out}"
    );
    assert!(
        !out.contains("SERVICES"),
        "no table frames in a pipe: {out}"
    );
    assert!(err.contains("every workload has exited"), "{err}");
    for p in pids {
        assert!(!process_alive(p), "process {p} still runs after Ctrl-C");
    }
}

/// `orchd up DIR | head -3`, or a terminal that closes: nobody reads stdout any more, and
/// orchd up stops every workload and removes its state instead of dying on the broken pipe
/// and leaving them running.
#[test]
fn up_stops_everything_when_its_output_closes_or_its_terminal_hangs_up() {
    for how in ["stdout closed", "SIGHUP"] {
        let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
        let mut up = up_piped(&example);
        let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
        let header = lines.next().unwrap().unwrap();
        let socket = header
            .split("--socket ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("no socket in the header: {header}"));
        let socket = PathBuf::from(socket);
        let state = socket.parent().unwrap().to_path_buf();
        let dns = lines.next().unwrap().unwrap();
        assert_eq!(dns, "cluster DNS: off (--dns-listen off)");
        let d = Daemon {
            dir: state.clone(),
            socket,
            child: None,
        };
        let reps = eventually("4 replicas ready", Duration::from_secs(20), || {
            let r = d.replicas();
            (r.len() == 4 && r.iter().all(|r| r["status"]["phase"] == "Ready")).then_some(r)
        });
        let pids: Vec<u32> = reps.iter().filter_map(pid_of).collect();
        assert_eq!(pids.len(), 4);
        if how == "SIGHUP" {
            Command::new("kill")
                .args(["-HUP", &up.id().to_string()])
                .status()
                .unwrap();
        }
        // Nothing new is printed once everything is ready: the closed pipe must be noticed
        // without a write failing.
        drop(lines);
        let status = eventually("exit", Duration::from_secs(30), || up.try_wait().unwrap());
        let mut err = String::new();
        up.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(status.success(), "{how}: orchd up failed: {status} {err}");
        let why = if how == "SIGHUP" {
            "stopping (hung up)"
        } else {
            "stopping (standard output closed"
        };
        assert!(err.contains(why), "{how}: {err}");
        assert!(err.contains("every workload has exited"), "{how}: {err}");
        for p in pids {
            assert!(!process_alive(p), "{how}: process {p} still runs");
        }
        assert!(!state.exists(), "{how}: {} left behind", state.display());
    }
}

/// On a terminal the live view redraws the screen, so whatever was printed before it is
/// wiped: the header itself says where the cluster DNS serves, or that it does not.
#[test]
fn the_live_view_header_says_how_cluster_dns_runs() {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
    // `script` (util-linux) gives orchd up a terminal.
    let cmd = format!(
        "{} up {} --refresh-ms 100 --dns-listen off",
        env!("CARGO_BIN_EXE_orchd"),
        example.display()
    );
    let mut up = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = up.stdout.take().unwrap();
    // The reader drains the terminal until `script` exits, so neither `script` nor orchd ever
    // blocks on a full pipe or dies of a closed one while it stops.
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut sent = false;
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&all);
            if !sent && text.contains("hello-client   1/1") {
                sent = seen_tx.send(text.into_owned()).is_ok();
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let seen = match seen_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(text) => text,
        Err(_) => {
            let _ = up.kill();
            panic!(
                "no frame with hello-client ready: {}",
                reader.join().unwrap()
            );
        }
    };
    // Ctrl-C on the terminal, as a user stops it.
    up.stdin.take().unwrap().write_all(b"\x03").unwrap();
    let _ = eventually("script exits", Duration::from_secs(30), || {
        up.try_wait().unwrap()
    });
    let _ = reader.join();
    let frame = seen.rsplit("\x1b[H\x1b[2J").next().unwrap();
    let mut lines = frame.lines();
    assert!(
        lines.next().unwrap_or("").starts_with("orch up "),
        "{frame}"
    );
    assert_eq!(
        lines.next().map(str::trim_end),
        Some("cluster DNS: off (--dns-listen off)"),
        "{frame}"
    );
}

/// Fields orch sets itself are ignored in what `orchd up` reads, and it says so, as `orchctl
/// apply` does.
#[test]
fn up_says_which_server_set_fields_it_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(
        tmp.path(),
        "svc.yaml",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: idle}\nspec:\n  replicas: 1\n  template: {command: [sleep, '1000'], stopGracePeriod: 1s}\nstatus: {readyReplicas: 5}\n",
    );
    let mut up = up_piped(&f);
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    assert!(lines.next().unwrap().unwrap().starts_with("orch up "));
    drop(lines);
    let status = eventually("exit", Duration::from_secs(30), || up.try_wait().unwrap());
    let mut err = String::new();
    up.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("warning: ") && err.contains("status: ignored"),
        "{err}"
    );
}

/// `orchd up PATH` without DNS, its output and errors piped to the test.
fn up_piped(path: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_orchd"))
        .arg("up")
        .arg(path)
        .args(["--refresh-ms", "100", "--dns-listen", "off"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}
