//! Secrets, configs and volumes through `orchd server` with real processes: a replica reads
//! a secret file and a config variable; the secret never shows in `orchctl get`/`describe`,
//! events, orchd's log or the store's files; changing the config rolls the service; a named
//! volume outlives its replica; unsafe mounts are refused with clear errors.

mod common;

use std::time::Duration;

use common::*;

fn replica_of(d: &Daemon, service: &str) -> Option<String> {
    d.replicas()
        .into_iter()
        .find(|r| {
            r["spec"]["service"] == service
                && r["status"]["phase"] == "Ready"
                && r["spec"]["desired"].is_null()
        })
        .and_then(|r| r["metadata"]["name"].as_str().map(String::from))
}

/// Whether any file under `dir` (links not followed) holds `needle`.
fn files_contain(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => files_contain(&p, needle),
                Ok(t) if t.is_file() => {
                    std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
                }
                _ => false,
            }
        })
}

/// Runs a shell script in a replica; its output.
fn sh(d: &Daemon, replica: &str, script: &str) -> String {
    d.ctl_ok(&["exec", replica, "--", "/bin/sh", "-c", script])
}

/// Deletes a service and waits until none of its replicas is left.
fn delete_service(d: &Daemon, name: &str) {
    d.ctl_ok(&["delete", "service", name]);
    eventually("its replicas gone", Duration::from_secs(30), || {
        (!d.replicas().iter().any(|r| r["spec"]["service"] == name)).then_some(())
    });
}

const APP: &str = "apiVersion: orch/v1\nkind: Service\nmetadata: {name: app}\nspec:\n  replicas: 1\n  template:\n    command: [/bin/sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 0.2; done']\n    stopGracePeriod: 1s\n    env:\n      - {name: LEVEL, valueFrom: {config: app, key: level}}\n      - {name: PASSWORD, valueFrom: {secret: db, key: password}}\n    mounts:\n      - {secret: db, path: /run/secrets/db}\n      - {config: app, path: /etc/app}\n";

#[test]
fn secrets_and_configs_reach_replicas_and_nowhere_else() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(tmp.path(), &["--dns-listen", "off"]);
    let secret = format!("s3cret-{}", std::process::id());
    d.ctl_ok(&[
        "create",
        "secret",
        "db",
        "--from-literal",
        &format!("password={secret}"),
    ]);
    d.ctl_ok(&["create", "config", "app", "--from-literal", "level=debug"]);
    let path = write(tmp.path(), "app.yaml", APP);
    d.ctl_ok(&["apply", "-f", path.to_str().unwrap()]);
    let name = eventually("app ready", Duration::from_secs(30), || {
        replica_of(&d, "app")
    });
    // The plan counts the config's revision as the controller does: nothing to replace.
    let plan = d.ctl_ok(&["apply", "--plan", "-f", path.to_str().unwrap()]);
    let row: Vec<&str> = plan
        .lines()
        .find(|l| l.starts_with("app "))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        ["app", "default", "unchanged", "1", "0", "0", "0"],
        "{plan}"
    );
    let seen = sh(&d, &name, "cat $ORCH_ROOT/run/secrets/db/password; echo; echo $PASSWORD $LEVEL; cat $ORCH_ROOT/etc/app/level; echo; stat -L -c %a $ORCH_ROOT/run/secrets/db/password");
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], secret, "the secret file: {seen}");
    assert_eq!(lines[1], format!("{secret} debug"), "env from both: {seen}");
    assert_eq!(lines[2], "debug", "the config file: {seen}");
    assert_eq!(
        lines[3], "400",
        "the secret file is owner-read-only: {seen}"
    );

    // Nowhere else: get (yaml and json), describe, events, orchd's log, the store's bytes.
    for args in [
        &["get", "secret", "db", "-o", "yaml"][..],
        &["get", "secrets", "-o", "json"],
        &["describe", "secret", "db"],
        &["get", "events", "-o", "yaml"],
        &["describe", "replica", &name],
        &["get", "replicas", "-o", "yaml"],
    ] {
        let out = d.ctl_ok(args);
        assert!(
            !out.contains(&secret),
            "orchctl {args:?} shows the secret: {out}"
        );
    }
    let shown = d.ctl_ok(&["get", "secret", "db", "-o", "yaml"]);
    assert!(shown.contains("<redacted: "), "{shown}");
    // Applying the placeholder back is refused, so a get → edit → apply cannot lose it.
    let back = write(tmp.path(), "back.yaml", &shown);
    let out = d.ctl(&["apply", "-f", back.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("placeholder"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Too big: refused, saying the limit.
    let big = tmp.path().join("big");
    std::fs::write(&big, vec![b'x'; (1 << 20) + 1]).unwrap();
    let out = d.ctl(&[
        "create",
        "secret",
        "big",
        "--from-file",
        big.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no more than 1048576 bytes"),
        "{err}"
    );
    let log = std::fs::read_to_string(tmp.path().join("orchd.log")).unwrap();
    assert!(!log.contains(&secret), "orchd's log holds the secret");
    let data = tmp.path().join("data");
    assert!(
        !files_contain(&data.join("state.redb"), secret.as_bytes())
            && !files_contain(&data, secret.as_bytes()),
        "the store's files hold the plaintext"
    );
    assert!(data.join("secret-keys").exists(), "the key lives apart");

    // Changing the config rolls the service: the new replica sees the new value.
    d.ctl_ok(&["create", "config", "app", "--from-literal", "level=info"]);
    let level = eventually(
        "a new replica with the new value",
        Duration::from_secs(30),
        || {
            let n = replica_of(&d, "app").filter(|n| *n != name)?;
            let out = d.ctl(&["exec", &n, "--", "/bin/sh", "-c", "echo $LEVEL"]);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        },
    );
    assert_eq!(level, "info");
    d.delete_and_wait("service", "app");
    // The replica's tmpfs files are gone with it.
    let leftovers = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .any(|e| files_contain(&e.path(), secret.as_bytes()));
    assert!(!leftovers, "secret files left on tmpfs");
}

#[test]
fn a_named_volume_outlives_its_replica_and_unsafe_mounts_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    std::os::unix::fs::symlink("/etc", allowed.join("escape")).unwrap();
    let d = Daemon::start_with(
        tmp.path(),
        &[
            "--dns-listen",
            "off",
            "--allow-host-path",
            allowed.to_str().unwrap(),
        ],
    );
    let svc = |name: &str, mount: &str| {
        format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  replicas: 1\n  template:\n    command: [/bin/sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 0.2; done']\n    stopGracePeriod: 1s\n    mounts: [{mount}]\n")
    };
    let path = write(
        tmp.path(),
        "db.yaml",
        &svc(
            "db",
            "{volume: data, path: /var/lib/db}, {tmpfs: true, path: /scratch}",
        ),
    );
    d.ctl_ok(&["apply", "-f", path.to_str().unwrap()]);
    let first = eventually("db ready", Duration::from_secs(30), || replica_of(&d, "db"));
    // The tmpfs directory lives as long as the replica: a crash and restart keeps it.
    sh(&d, &first, "echo warm > $ORCH_ROOT/scratch/cache");
    let pid = d
        .replicas()
        .iter()
        .find(|r| r["metadata"]["name"] == first.as_str())
        .and_then(pid_of)
        .unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    eventually("restarted in place", Duration::from_secs(20), || {
        d.replicas()
            .iter()
            .find(|r| r["metadata"]["name"] == first.as_str())
            .filter(|r| r["status"]["restarts"] == 1 && r["status"]["phase"] == "Ready")
            .map(|_| ())
    });
    let kept = sh(&d, &first, "cat $ORCH_ROOT/scratch/cache");
    assert_eq!(kept.trim(), "warm");
    sh(&d, &first, "echo kept > $ORCH_ROOT/var/lib/db/file");
    // The node reports the volume.
    eventually(
        "the node reports the volume",
        Duration::from_secs(10),
        || {
            d.ctl_ok(&["get", "node", "test-node", "-o", "yaml"])
                .contains("- data")
                .then_some(())
        },
    );
    // The replica is deleted; its replacement finds the data.
    d.ctl_ok(&["delete", "replica", &first]);
    let second = eventually("a replacement", Duration::from_secs(30), || {
        replica_of(&d, "db").filter(|n| *n != first)
    });
    let read = sh(&d, &second, "cat $ORCH_ROOT/var/lib/db/file");
    assert_eq!(read.trim(), "kept");

    // Unsafe mounts, refused at apply with the field and the reason.
    for (mount, says) in [
        ("{tmpfs: true, path: relative}", "must be an absolute path"),
        ("{tmpfs: true, path: /a/../etc}", "must not contain .."),
        ("{volume: data, tmpfs: true, path: /x}", "exactly one of"),
        ("{volume: ../x, path: /x}", "spec.template.mounts[0].volume"),
    ] {
        let p = write(tmp.path(), "bad.yaml", &svc("bad", mount));
        let out = d.ctl(&["apply", "-f", p.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{mount} was accepted");
        assert!(
            err.contains(says) && err.contains("spec.template.mounts[0]"),
            "{mount}: {err}"
        );
    }
    // Host paths: refused where the node does not allow them, and through a symlink out of
    // the allowed directory; the replica fails with the reason.
    for (host, says) in [
        ("/etc", "node test-node allows"),
        (
            allowed.join("escape").to_str().unwrap(),
            "resolves to /etc (through a symlink)",
        ),
    ] {
        let p = write(
            tmp.path(),
            "host.yaml",
            &svc("host", &format!("{{hostPath: {host}, path: /h}}")),
        );
        d.ctl_ok(&["apply", "-f", p.to_str().unwrap()]);
        eventually(
            "the replica fails with the reason",
            Duration::from_secs(20),
            || {
                d.replicas()
                    .into_iter()
                    .find(|r| {
                        r["spec"]["service"] == "host"
                            && r["status"]["message"]
                                .as_str()
                                .is_some_and(|m| m.contains(says) && m.contains("hostPath"))
                    })
                    .map(|_| ())
            },
        );
        delete_service(&d, "host");
    }
    // An allowed host path works.
    std::fs::write(allowed.join("hello"), "from the host").unwrap();
    let p = write(
        tmp.path(),
        "host.yaml",
        &svc(
            "host",
            &format!(
                "{{hostPath: {}, path: /h, readOnly: true}}",
                allowed.display()
            ),
        ),
    );
    d.ctl_ok(&["apply", "-f", p.to_str().unwrap()]);
    let h = eventually("host ready", Duration::from_secs(30), || {
        replica_of(&d, "host")
    });
    let out = sh(&d, &h, "cat $ORCH_ROOT/h/hello");
    assert_eq!(out.trim(), "from the host");
    delete_service(&d, "host");

    // `orchctl volume`: listed; not removed while a replica uses it; removed after.
    let ls = d.ctl_ok(&["volume", "ls"]);
    assert!(ls.contains("data") && ls.contains("test-node"), "{ls}");
    let out = d.ctl(&["volume", "rm", "data"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("in use by default/db-"),
        "{err}"
    );
    d.delete_and_wait("service", "db");
    d.ctl_ok(&["volume", "rm", "data"]);
    assert!(!tmp.path().join("data/volumes/data").exists());
    eventually(
        "the node stops reporting it",
        Duration::from_secs(10),
        || (!d.ctl_ok(&["volume", "ls"]).contains("data")).then_some(()),
    );
}
