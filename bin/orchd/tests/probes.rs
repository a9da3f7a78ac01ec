//! Probes against real processes through `orchd server`: an HTTP readiness probe takes a
//! replica out of Ready while its server fails and back when it recovers; an HTTP liveness
//! probe restarts it; a TCP probe on a closed port keeps it NotReady; an exec probe runs in
//! the replica's environment; a startup probe holds readiness back until it passes.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn service(name: &str, replicas: u32, env: &str, probes: &str) -> String {
    format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  template:\n    command: [hello-server]\n    ports: [{{name: http}}]\n    stopGracePeriod: 1s\n    env: [{env}]\n{probes}"
    )
}

fn of(d: &Daemon, service: &str) -> Vec<serde_json::Value> {
    d.replicas()
        .into_iter()
        .filter(|r| r["spec"]["service"] == service)
        .collect()
}

fn phases(d: &Daemon, service: &str) -> Vec<String> {
    of(d, service)
        .iter()
        .map(|r| r["status"]["phase"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn http_tcp_exec_and_startup_probes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let fail = tmp.path().join("fail-readiness");
    let kill = tmp.path().join("fail-liveness");
    let ready_file = tmp.path().join("ready");
    let files = [
        service(
            "ready",
            2,
            &format!("{{name: HEALTHZ_FAIL_FILE, value: {}}}", fail.display()),
            "    readinessProbe: {httpGet: {path: /healthz, port: http}, period: 200ms, failureThreshold: 2}\n",
        ),
        service(
            "live",
            1,
            &format!("{{name: HEALTHZ_FAIL_FILE, value: {}}}", kill.display()),
            "    livenessProbe: {httpGet: {path: /healthz, port: http}, period: 200ms, failureThreshold: 2}\n",
        ),
        service(
            "closed",
            1,
            "",
            "    readinessProbe: {tcpSocket: {port: 1}, period: 200ms, failureThreshold: 1}\n",
        ),
        service(
            "exec",
            1,
            &format!("{{name: READY_FILE, value: {}}}", ready_file.display()),
            "    readinessProbe: {exec: {command: [/bin/sh, -c, 'test -f $READY_FILE']}, period: 200ms, failureThreshold: 1}\n",
        ),
    ];
    let start = Instant::now();
    for (i, f) in files.iter().enumerate() {
        let path = write(tmp.path(), &format!("s{i}.yaml"), f);
        d.ctl_ok(&["apply", "-f", path.to_str().unwrap()]);
    }
    let slow = write(
        tmp.path(),
        "slow.yaml",
        &service(
            "slow",
            1,
            "{name: HEALTHZ_DELAY_MS, value: '1500'}",
            "    startupProbe: {httpGet: {path: /healthz, port: http}, period: 100ms, failureThreshold: 50}\n",
        ),
    );
    d.ctl_ok(&["apply", "-f", slow.to_str().unwrap()]);
    let slow_applied = Instant::now();

    // Startup: Starting (Running, not Ready) until /healthz passes after 1.5 s.
    let r = eventually("slow is running", Duration::from_secs(10), || {
        of(&d, "slow")
            .into_iter()
            .find(|r| r["status"]["phase"] == "Running")
    });
    assert_eq!(r["status"]["reason"], "Starting", "{r}");
    eventually("slow is ready", Duration::from_secs(10), || {
        (phases(&d, "slow") == ["Ready"]).then_some(())
    });
    let took = slow_applied.elapsed();
    assert!(took >= Duration::from_millis(1400), "ready after {took:?}");

    eventually("ready and live are ready", Duration::from_secs(10), || {
        (phases(&d, "ready") == ["Ready", "Ready"] && phases(&d, "live") == ["Ready"]).then_some(())
    });
    // TCP on a closed port: never ready, and says why.
    let closed = eventually("closed says why", Duration::from_secs(10), || {
        of(&d, "closed").into_iter().find(|r| {
            r["status"]["reason"] == "NotReady"
                && r["status"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("connect") && m.contains(":1"))
        })
    });
    assert_eq!(closed["status"]["phase"], "Running");
    // Exec: not ready until the file exists (the command sees the replica's environment).
    eventually("exec not ready", Duration::from_secs(10), || {
        (phases(&d, "exec") == ["Running"]).then_some(())
    });
    std::fs::write(&ready_file, "").unwrap();
    eventually("exec ready", Duration::from_secs(10), || {
        (phases(&d, "exec") == ["Ready"]).then_some(())
    });

    // Readiness fails: out of Ready (not an endpoint), describe says why; then back.
    std::fs::write(&fail, "").unwrap();
    eventually("ready fails", Duration::from_secs(10), || {
        (phases(&d, "ready") == ["Running", "Running"]).then_some(())
    });
    let name = of(&d, "ready")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let described = d.ctl_ok(&["describe", "replica", &name]);
    assert!(
        described.contains("readiness: failing") && described.contains("HTTP 503"),
        "{described}"
    );
    let pids: Vec<u32> = of(&d, "ready").iter().filter_map(pid_of).collect();
    std::fs::remove_file(&fail).unwrap();
    eventually("ready recovers", Duration::from_secs(10), || {
        (phases(&d, "ready") == ["Ready", "Ready"]).then_some(())
    });
    let again: Vec<u32> = of(&d, "ready").iter().filter_map(pid_of).collect();
    assert_eq!(pids, again, "readiness never restarts");

    // Liveness fails: restarted (a new process), then stays once healthy again.
    let before = pid_of(&of(&d, "live")[0]).unwrap();
    std::fs::write(&kill, "").unwrap();
    let restarted = eventually("live restarted", Duration::from_secs(15), || {
        let r = of(&d, "live").into_iter().next()?;
        (r["status"]["restarts"].as_u64()? >= 1 && pid_of(&r).is_some_and(|p| p != before))
            .then_some(r)
    });
    std::fs::remove_file(&kill).unwrap();
    assert!(!process_alive(before));
    eventually("live ready again", Duration::from_secs(15), || {
        (phases(&d, "live") == ["Ready"]).then_some(())
    });
    let _ = restarted;
    eprintln!("probes test took {:?}", start.elapsed());
    for s in ["ready", "live", "closed", "exec", "slow"] {
        d.ctl_ok(&["delete", "service", s]);
    }
    eventually("all gone", Duration::from_secs(30), || {
        d.replicas().is_empty().then_some(())
    });
}

/// A replica that keeps crashing backs off up to its service's cap (here 1 s instead of the
/// default 30 s), and its status says it is crash-looping with the exit code and the end of
/// its output.
#[test]
fn a_crash_loop_backs_off_to_the_services_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let f = write(
        tmp.path(),
        "crash.yaml",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: crash}\nspec:\n  replicas: 1\n  template:\n    command: [/bin/sh, -c, 'echo booting; echo boom >&2; exit 3']\n    restartBackoffMax: 1s\n",
    );
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    let t = Instant::now();
    let r = eventually("crash-looping", Duration::from_secs(20), || {
        of(&d, "crash")
            .into_iter()
            .find(|r| r["status"]["reason"] == "CrashLoopBackOff")
    });
    let message = r["status"]["message"].as_str().unwrap_or("").to_string();
    assert!(
        message.contains("exit code 3") && message.contains("boom"),
        "{message}"
    );
    // With a 1 s cap: restarts at about 0, 1, 2, 3 ... s; the default cap would give 0, 1, 3, 7.
    // Until 6 restarts, or 8 s: the count in 8 s is what is measured.
    let restarts = loop {
        let n = of(&d, "crash")[0]["status"]["restarts"].as_u64().unwrap();
        if n >= 6 || t.elapsed() >= Duration::from_secs(8) {
            break n;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("{restarts} restarts in {:?}", t.elapsed());
    assert!(restarts >= 6, "{restarts} restarts in 8 s with a 1 s cap");
    d.delete_and_wait("service", "crash");
}

/// A replica that runs 0.2 s and crashes, restarted every second, is never reported Ready (it
/// has not stayed up since it exited) and its service never counts it: sampled every 50 ms
/// for 6 s, through `get replicas` and `get services`.
#[test]
fn a_crash_looping_replica_is_never_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let f = write(
        tmp.path(),
        "flap.yaml",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: flap}\nspec:\n  replicas: 1\n  template:\n    command: [/bin/sh, -c, 'sleep 0.2; exit 3']\n    restartBackoffMax: 1s\n",
    );
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    eventually("restarted twice", Duration::from_secs(20), || {
        of(&d, "flap")
            .first()
            .filter(|r| r["status"]["restarts"].as_u64() >= Some(2))
            .map(|_| ())
    });
    // What is tested: never Ready in 6 s of crash looping (sampled every 50 ms).
    let t = Instant::now();
    let (mut samples, mut ready, mut counted) = (0, 0, 0);
    let mut reasons = std::collections::BTreeSet::new();
    while t.elapsed() < Duration::from_secs(6) {
        for r in of(&d, "flap") {
            ready += usize::from(r["status"]["phase"] == "Ready");
            reasons.insert(r["status"]["reason"].as_str().unwrap_or("").to_string());
        }
        let svc: serde_json::Value =
            serde_json::from_str(&d.ctl_ok(&["get", "service", "flap", "-o", "json"])).unwrap();
        counted += usize::from(svc["status"]["readyReplicas"].as_u64() == Some(1));
        samples += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{samples} samples, reasons {reasons:?}");
    assert_eq!(ready, 0, "seen Ready in {ready} of {samples} samples");
    assert_eq!(
        counted, 0,
        "counted ready in {counted} of {samples} samples"
    );
    assert!(reasons.contains("CrashLoopBackOff"), "{reasons:?}");
    d.delete_and_wait("service", "flap");
}

/// A rolling update of 10 replicas with max-unavailable 1 whose new replicas take 0.5 s to
/// pass their readiness probe: sampled every 50 ms, ready replicas never drop below 9, and
/// the update completes.
#[test]
fn a_rolling_update_keeps_nine_of_ten_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let svc = |color: &str| {
        format!(
            "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: roll}}\nspec:\n  replicas: 10\n  update: {{maxSurge: 1, maxUnavailable: 1}}\n  template:\n    command: [hello-server]\n    ports: [{{name: http}}]\n    stopGracePeriod: 1s\n    env: [{{name: COLOR, value: {color}}}, {{name: HEALTHZ_DELAY_MS, value: '500'}}]\n    readinessProbe: {{httpGet: {{path: /healthz, port: http}}, period: 100ms}}\n"
        )
    };
    let f = write(tmp.path(), "roll.yaml", &svc("blue"));
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    let ready = |d: &Daemon| -> (usize, usize) {
        let all = of(d, "roll");
        let ready = all
            .iter()
            .filter(|r| r["status"]["phase"] == "Ready")
            .count();
        let green_ready = all
            .iter()
            .filter(|r| {
                r["status"]["phase"] == "Ready"
                    && r["spec"]["template"]["env"][0]["value"] == "green"
            })
            .count();
        (ready, green_ready)
    };
    eventually("10 ready", Duration::from_secs(30), || {
        (ready(&d).0 == 10).then_some(())
    });
    let f = write(tmp.path(), "roll.yaml", &svc("green"));
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    let t = Instant::now();
    let mut lowest = usize::MAX;
    let mut samples = 0;
    loop {
        let (all, green) = ready(&d);
        lowest = lowest.min(all);
        samples += 1;
        if green == 10 && of(&d, "roll").len() == 10 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the update did not complete"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "rolling update of 10: {:?}, {samples} samples, lowest ready {lowest}",
        t.elapsed()
    );
    assert!(lowest >= 9, "ready dropped to {lowest}");
    d.delete_and_wait("service", "roll");
}

/// Rollouts: a revision whose replicas never become ready fails at its progress deadline and
/// is rolled back automatically while the old revision serves throughout (`rollout status`
/// exits 1 saying so); pause holds a rollout, resume finishes it (`rollout status` exits 0);
/// `rollout history` lists the revisions and `rollout undo` goes back.
#[test]
fn a_failed_rollout_rolls_back_and_rollouts_can_be_paused_and_undone() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let broken = tmp.path().join("broken");
    std::fs::write(&broken, "").unwrap();
    let svc = |color: &str, fail_file: &str| {
        format!(
            "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  replicas: 3\n  update: {{maxSurge: 1, maxUnavailable: 0, progressDeadline: 4s}}\n  template:\n    command: [hello-server]\n    ports: [{{name: http}}]\n    stopGracePeriod: 1s\n    env: [{{name: COLOR, value: {color}}}, {{name: HEALTHZ_FAIL_FILE, value: '{fail_file}'}}]\n    readinessProbe: {{httpGet: {{path: /healthz, port: http}}, period: 100ms, failureThreshold: 1}}\n"
        )
    };
    let apply = |text: &str| {
        let f = write(tmp.path(), "web.yaml", text);
        d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    };
    let color_ready = |d: &Daemon, color: &str| {
        of(d, "web")
            .iter()
            .filter(|r| {
                r["status"]["phase"] == "Ready" && r["spec"]["template"]["env"][0]["value"] == color
            })
            .count()
    };
    apply(&svc("blue", "/nonexistent"));
    let first = d.ctl(&["rollout", "status", "web", "--timeout", "30s"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("revision 1 rolled out"));

    // Revision 2 never gets ready: rolled back at the deadline; blue serves all along.
    apply(&svc("green", broken.to_str().unwrap()));
    let socket = d.socket.clone();
    let status = std::thread::spawn(move || {
        std::process::Command::new(workspace_bin("orchctl"))
            .arg("--socket")
            .arg(&socket)
            .args(["rollout", "status", "web", "--timeout", "60s"])
            .output()
            .unwrap()
    });
    let mut lowest = usize::MAX;
    while !status.is_finished() {
        lowest = lowest.min(color_ready(&d, "blue"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = status.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("revision 2 did not complete within 4s")
            && err.contains("rolled back to revision 1"),
        "{err}"
    );
    assert_eq!(lowest, 3, "the old revision served throughout");
    eventually(
        "back to three blue, no green",
        Duration::from_secs(20),
        || {
            let all = of(&d, "web");
            (all.len() == 3 && color_ready(&d, "blue") == 3).then_some(())
        },
    );
    let events = d.ctl_ok(&["get", "events", "-o", "json"]);
    let events: serde_json::Value = serde_json::from_str(&events).unwrap();
    let events = events["items"].as_array().cloned().unwrap_or_default();
    let with = |reason: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["reason"] == reason)
            .map(|e| e["message"].as_str().unwrap_or("").to_string())
            .collect()
    };
    // The probe failure is a warning of its own, once per replica (not per probe period),
    // and the rollback names it. The first failure a replica's probe meets may be a refused
    // connection (the server not listening yet) rather than the 503 that follows.
    let unhealthy = with("Unhealthy");
    assert!(
        !unhealthy.is_empty()
            && unhealthy.iter().all(|m| {
                m.starts_with("readiness probe failed: HTTP 503 from GET ")
                    || (m.starts_with("readiness probe failed: GET ")
                        && m.contains("Connection refused"))
            }),
        "{unhealthy:?}"
    );
    assert!(unhealthy.len() <= 2, "{unhealthy:?}");
    let rolled = with("RolledBack");
    assert!(
        rolled.len() == 1 && rolled[0].contains("readiness probe failed: HTTP 503"),
        "{rolled:?}"
    );
    assert!(err.contains("readiness probe failed: HTTP 503"), "{err}");

    // Pause holds a good rollout; resume completes it.
    d.ctl_ok(&["rollout", "pause", "web"]);
    apply(&svc("red", "/nonexistent"));
    // What is tested: for 2 s after the apply, a paused rollout replaces nothing.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(color_ready(&d, "red"), 0, "paused: nothing replaced");
    assert_eq!(color_ready(&d, "blue"), 3);
    d.ctl_ok(&["rollout", "resume", "web"]);
    let done = d.ctl(&["rollout", "status", "web", "--timeout", "30s"]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    eventually("three red", Duration::from_secs(20), || {
        (color_ready(&d, "red") == 3 && of(&d, "web").len() == 3).then_some(())
    });

    // History and undo.
    let history = d.ctl_ok(&["rollout", "history", "web"]);
    assert!(
        history.contains("COLOR=blue") && history.contains("COLOR=green"),
        "{history}"
    );
    assert!(
        history
            .lines()
            .any(|l| l.contains("COLOR=red") && l.contains(" current")),
        "{history}"
    );
    d.ctl_ok(&["rollout", "undo", "web"]);
    let undone = d.ctl(&["rollout", "status", "web", "--timeout", "30s"]);
    assert!(
        undone.status.success(),
        "{}",
        String::from_utf8_lossy(&undone.stderr)
    );
    eventually("blue again", Duration::from_secs(20), || {
        (color_ready(&d, "blue") == 3 && of(&d, "web").len() == 3).then_some(())
    });
    let bad = d.ctl(&["rollout", "undo", "web", "--to-revision", "99"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no such revision"));
    d.delete_and_wait("service", "web");
}
