//! Jobs through `orchd server` with real processes: a job runs its replicas to completion
//! (completions, parallelism) and succeeds; one whose replicas fail beyond its backoff limit
//! fails; one past its active deadline fails and its replica is stopped; deleting a job
//! removes its replicas; a job that would restart forever is refused at apply.

mod common;

use std::time::Duration;

use common::*;

fn job(name: &str, body: &str) -> String {
    format!("apiVersion: orch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n{body}")
}

fn get_job(d: &Daemon, name: &str) -> serde_json::Value {
    let out = d.ctl_ok(&["get", "job", name, "-o", "json"]);
    serde_json::from_str(&out).unwrap()
}

fn replicas_of(d: &Daemon, name: &str) -> Vec<serde_json::Value> {
    d.replicas()
        .into_iter()
        .filter(|r| r["spec"]["service"] == format!("job:{name}"))
        .collect()
}

#[test]
fn jobs_run_to_completion_or_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let files = [
        job("ok", "  completions: 3\n  parallelism: 2\n  template:\n    command: [/bin/sh, -c, 'echo work by $ORCH_REPLICA; sleep 0.2']\n    restartPolicy: Never\n"),
        job("bad", "  backoffLimit: 1\n  template:\n    command: [/bin/sh, -c, 'exit 1']\n    restartPolicy: Never\n"),
        job("slow", "  activeDeadline: 1s\n  template:\n    command: [/bin/sleep, '100']\n    restartPolicy: Never\n    stopGracePeriod: 1s\n"),
    ];
    for (i, f) in files.iter().enumerate() {
        let p = write(tmp.path(), &format!("j{i}.yaml"), f);
        d.ctl_ok(&["apply", "-f", p.to_str().unwrap()]);
    }
    // Parallelism 2: never more than two running at once.
    let mut most = 0;
    let ok = eventually("ok succeeds", Duration::from_secs(30), || {
        let running = replicas_of(&d, "ok")
            .iter()
            .filter(|r| r["status"]["phase"] == "Ready")
            .count();
        most = most.max(running);
        let j = get_job(&d, "ok");
        (j["status"]["state"] == "Succeeded").then_some(j)
    });
    assert_eq!(ok["status"]["succeeded"], 3, "{ok}");
    assert!(most <= 2, "{most} ran at once");
    let table = d.ctl_ok(&["get", "jobs"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("3/3") && l.contains("Succeeded")),
        "{table}"
    );
    let done = replicas_of(&d, "ok");
    assert_eq!(done.len(), 3, "finished replicas are kept for their logs");
    let name = done[0]["metadata"]["name"].as_str().unwrap().to_string();
    assert!(d
        .ctl_ok(&["logs", &name])
        .contains(&format!("work by {name}")));

    let bad = eventually("bad fails", Duration::from_secs(30), || {
        let j = get_job(&d, "bad");
        (j["status"]["state"] == "Failed").then_some(j)
    });
    assert_eq!(bad["status"]["failed"], 2, "{bad}");
    assert!(
        bad["status"]["message"]
            .as_str()
            .unwrap()
            .contains("more than the backoff limit of 1"),
        "{bad}"
    );
    let slow = eventually(
        "slow fails at its deadline",
        Duration::from_secs(30),
        || {
            let j = get_job(&d, "slow");
            (j["status"]["state"] == "Failed").then_some(j)
        },
    );
    assert!(
        slow["status"]["message"]
            .as_str()
            .unwrap()
            .contains("active deadline of 1s"),
        "{slow}"
    );
    eventually("slow's replica stopped", Duration::from_secs(30), || {
        replicas_of(&d, "slow").is_empty().then_some(())
    });
    let events = d.ctl_ok(&["get", "events"]);
    assert!(
        events.contains("Completed") && events.contains("Failed"),
        "{events}"
    );

    // A job that would restart for ever is refused.
    let p = write(
        tmp.path(),
        "always.yaml",
        &job("always", "  template:\n    command: [/bin/true]\n"),
    );
    let out = d.ctl(&["apply", "-f", p.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.template.restartPolicy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for j in ["ok", "bad", "slow"] {
        d.ctl_ok(&["delete", "job", j]);
    }
    eventually("their replicas go", Duration::from_secs(30), || {
        d.replicas().is_empty().then_some(())
    });
}
