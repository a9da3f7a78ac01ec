//! End to end with real processes: `orchd server` + `orchctl` + the example HTTP server.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn replicas_run_restart_update_readopt_and_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path());
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the API socket must be owner-only");

    // 3 replicas come up and answer.
    let f = write(tmp.path(), "hello.yaml", &hello(3, "red"));
    let out = d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    assert!(out.contains("service/hello created"), "{out}");
    let first = eventually("3 replicas answer", Duration::from_secs(20), || {
        ready_addrs(&d, 3)
    });

    // kill -9 one: a replacement answers within 1 s.
    let (victim_addr, victim_pid) = first[0].clone();
    let t = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-9", &victim_pid.to_string()])
        .status()
        .unwrap()
        .success());
    let after = eventually("replacement answers", Duration::from_secs(10), || {
        ready_addrs(&d, 3).filter(|v| !v.iter().any(|(_, p)| *p == victim_pid))
    });
    let took = t.elapsed();
    println!(
        "kill -9 → replacement answering: {took:?} (old {victim_addr}, now {:?})",
        after.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    assert!(took < Duration::from_secs(1), "replacement took {took:?}");
    let reps = d.replicas();
    assert!(
        reps.iter().any(|r| r["status"]["restarts"] == 1),
        "the killed replica is restarted in place and counted"
    );

    // Change the spec (env) → every replica replaced and answering; scale → 5.
    let f = write(tmp.path(), "hello.yaml", &hello(3, "blue"));
    assert!(d
        .ctl_ok(&["apply", "-f", f.to_str().unwrap()])
        .contains("configured"));
    let old_pids: BTreeSet<u32> = after.iter().map(|x| x.1).collect();
    let updated = eventually("rolled to the new env", Duration::from_secs(30), || {
        ready_addrs(&d, 3).filter(|v| v.iter().all(|(_, p)| !old_pids.contains(p)))
    });
    for (_, pid) in &updated {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            env.split(|b| *b == 0).any(|kv| kv == b"COLOR=blue"),
            "new replicas see the new env"
        );
    }
    eventually("old processes gone", Duration::from_secs(10), || {
        old_pids.iter().all(|p| !process_alive(*p)).then_some(())
    });
    d.ctl_ok(&["scale", "service/hello", "--replicas", "5"]);
    let five = eventually("5 answer", Duration::from_secs(20), || ready_addrs(&d, 5));

    // Restart orchd → the same processes are re-adopted (no duplicates, no restarts).
    let pids: BTreeSet<u32> = five.iter().map(|x| x.1).collect();
    d.stop();
    assert!(
        pids.iter().all(|p| process_alive(*p)),
        "workloads survive the daemon stopping"
    );
    let d2 = Daemon::start(tmp.path());
    // What is tested: 2 s after it started, the new daemon has restarted or duplicated nothing.
    std::thread::sleep(Duration::from_secs(2));
    let again = eventually("re-adopted", Duration::from_secs(20), || {
        ready_addrs(&d2, 5)
    });
    let pids2: BTreeSet<u32> = again.iter().map(|x| x.1).collect();
    assert_eq!(pids, pids2, "re-adoption keeps the very same processes");

    // Delete → every process is gone.
    assert!(d2
        .ctl_ok(&["delete", "service", "hello"])
        .contains("deleted"));
    eventually("no replicas", Duration::from_secs(20), || {
        d2.replicas().is_empty().then_some(())
    });
    eventually("no processes", Duration::from_secs(10), || {
        pids2.iter().all(|p| !process_alive(*p)).then_some(())
    });
}

#[test]
fn orchctl_outputs_logs_describe_and_watch() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let f = write(tmp.path(), "hello.yaml", &hello(1, "red"));
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    let one = eventually("1 answers", Duration::from_secs(20), || ready_addrs(&d, 1));
    let name = d.replicas()[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();

    let table = d.ctl_ok(&["get", "services"]);
    assert!(
        table.starts_with("NAME") && table.contains("hello") && table.contains("1/1"),
        "{table}"
    );
    let table = d.ctl_ok(&["get", "replicas"]);
    assert!(
        table.contains(&name) && table.contains("Ready") && table.contains(&one[0].0),
        "{table}"
    );
    let nodes = d.ctl_ok(&["get", "nodes"]);
    assert!(
        nodes.contains("test-node") && nodes.contains("Ready"),
        "{nodes}"
    );
    let yaml = d.ctl_ok(&["get", "service", "hello", "-o", "yaml"]);
    assert!(
        yaml.contains("apiVersion: orch/v1")
            && yaml.contains("kind: Service")
            && yaml.contains("replicas: 1"),
        "{yaml}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&d.ctl_ok(&["get", "service", "hello", "-o", "json"])).unwrap();
    assert_eq!(json["spec"]["replicas"], 1);

    // Logs: the server logs each request.
    http_get(&one[0].0).unwrap();
    let logs = eventually("request logged", Duration::from_secs(10), || {
        let l = d.ctl_ok(&["logs", &name]);
        l.contains("GET /").then_some(l)
    });
    assert!(logs.contains("GET /"), "{logs}");

    // describe shows status and events.
    let desc = eventually("events recorded", Duration::from_secs(10), || {
        let s = d.ctl_ok(&["describe", "replica", &name]);
        s.contains("Started").then_some(s)
    });
    assert!(
        desc.contains("Phase:") && desc.contains("Ready") && desc.contains("test-node"),
        "{desc}"
    );

    // get -w prints a line when something changes.
    let mut watch = std::process::Command::new(workspace_bin("orchctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["get", "services", "-w"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (stdout, printed) = (watch.stdout.take().unwrap(), printed.clone());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let mut p = printed.lock().unwrap();
                p.push_str(&line);
                p.push('\n');
            }
        })
    };
    // The watch has started once it printed the service as it is.
    eventually("the watch lists hello", Duration::from_secs(10), || {
        printed.lock().unwrap().contains("hello").then_some(())
    });
    d.ctl_ok(&["scale", "hello", "--replicas", "2"]);
    eventually("2 answer", Duration::from_secs(20), || ready_addrs(&d, 2));
    eventually("the watch shows the scale", Duration::from_secs(10), || {
        printed.lock().unwrap().contains("/2").then_some(())
    });
    let _ = watch.kill();
    let _ = watch.wait();
    reader.join().unwrap();
    let text = printed.lock().unwrap().clone();
    assert!(
        text.lines().filter(|l| l.starts_with("hello")).count() >= 2,
        "watch printed changes: {text}"
    );
    assert!(text.contains("/2"), "watch saw the scale: {text}");
    d.ctl_ok(&["delete", "service", "hello"]);
    eventually("no replicas", Duration::from_secs(20), || {
        d.replicas().is_empty().then_some(())
    });
}

/// `orchctl node drain` on the only node says at once that the service's replicas have
/// nowhere to go and changes nothing; with `--force` it marks the node draining, says the
/// same and returns, and the service keeps all its replicas ready with no surplus ones.
#[test]
fn draining_the_only_node_says_so_and_keeps_the_service_available() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let f = write(tmp.path(), "hello.yaml", &hello(4, "red"));
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    eventually("4 ready", Duration::from_secs(20), || ready_addrs(&d, 4));
    let t = Instant::now();
    let out = d.ctl(&["node", "drain", "test-node", "--timeout", "20s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "no other schedulable node for service default/hello's replicas (4 on test-node)"
        ) && err.contains("--force"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let node = d.ctl_ok(&["get", "node", "test-node", "-o", "json"]);
    assert!(
        !node.contains("\"draining\": true"),
        "refused, yet changed: {node}"
    );

    let t = Instant::now();
    let out = d.ctl(&["node", "drain", "test-node", "--force", "--timeout", "20s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("4 replica(s) stay") && err.contains("no other schedulable node"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let node = d.ctl_ok(&["get", "node", "test-node", "-o", "json"]);
    assert!(node.contains("\"draining\": true"), "{node}");
    // Nothing is stopped for replacements that cannot be placed.
    // What is tested: for 3 s nothing moves (sampled every 50 ms).
    let t = Instant::now();
    let (mut lowest, mut most) = (usize::MAX, 0);
    while t.elapsed() < Duration::from_secs(3) {
        let reps = d.replicas();
        let active = reps
            .iter()
            .filter(|r| r["spec"]["desired"] != "Stopped")
            .count();
        let ready = reps
            .iter()
            .filter(|r| r["status"]["phase"] == "Ready")
            .count();
        lowest = lowest.min(ready);
        most = most.max(active);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        (lowest, most),
        (4, 4),
        "ready fell to {lowest}, {most} replicas"
    );
    d.ctl_ok(&["node", "uncordon", "test-node"]);
    d.delete_and_wait("service", "hello");
}

/// `$(VAR)` in command, args and env values is expanded as Kubernetes does, with the replica's
/// dynamic port: a real process replica prints what it was given.
#[test]
fn dollar_references_in_args_and_env_are_expanded() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let f = write(
        tmp.path(),
        "args.yaml",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: args}\nspec:\n  replicas: 1\n  template:\n    command: [/bin/sh, -c, 'echo \"port=$1 url=$2 literal=$3 unknown=$4 env=$URL\"; exec sleep 1000', sh]\n    args: ['$(PORT)', '$(URL)', '$$(PORT)', '$(NOPE)']\n    env: [{name: URL, value: 'http://127.0.0.1:$(ORCH_PORT_HTTP)/'}]\n    ports: [{name: http}]\n    stopGracePeriod: 1s\n",
    );
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    let (name, port) = eventually("running", Duration::from_secs(20), || {
        let r = d.replicas().into_iter().next()?;
        let port = r["status"]["ports"][0]["port"].as_u64()?;
        Some((r["metadata"]["name"].as_str()?.to_string(), port))
    });
    let line = eventually("it printed its arguments", Duration::from_secs(20), || {
        let l = d.ctl_ok(&["logs", &name]);
        l.lines()
            .find(|l| l.starts_with("port="))
            .map(str::to_string)
    });
    assert_eq!(
        line,
        format!(
            "port={port} url=http://127.0.0.1:{port}/ literal=$(PORT) unknown=$(NOPE) env=http://127.0.0.1:{port}/"
        )
    );
    d.delete_and_wait("service", "args");
}
