//! What `orchctl describe`, `get` and `rollout` print, through the real binaries: describe's
//! revision hash is the replicas' `templateHash` for a service that uses a config or a
//! secret, it shows
//! the spec's probes, published ports, update strategy and pause, and only the events of this
//! service (not of an earlier one of the same name); `rollout history` after an undo is sorted
//! by number with the restored revision renumbered, and `rollout status` never reports a
//! status the controller has not yet written; `get` says `Running` until a replica is Ready;
//! `get -o wide` and `describe` show the network a replica, node and service are on.

mod common;

use std::time::Duration;

use common::*;

fn service(port: u16, arg: &str, replicas: u32) -> String {
    format!(
        "apiVersion: orch/v1\nkind: Config\nmetadata: {{name: app}}\ndata: {{greeting: hi}}\n---\napiVersion: orch/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  publish: [{{port: {port}}}]\n  update: {{maxSurge: 1, maxUnavailable: 0}}\n  template:\n    command: [sleep]\n    args: ['{arg}']\n    ports: [{{name: http}}]\n    stopGracePeriod: 1s\n    env: [{{name: G, valueFrom: {{config: app, key: greeting}}}}]\n    readinessProbe: {{exec: {{command: ['true']}}, period: 200ms}}\n"
    )
}

fn of(d: &Daemon, service: &str) -> Vec<serde_json::Value> {
    d.replicas()
        .into_iter()
        .filter(|r| r["spec"]["service"] == service)
        .collect()
}

fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(str::trim)
}

#[test]
fn describe_service_agrees_with_its_replicas_and_shows_only_its_own_events() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let port = free_port();
    let f = write(tmp.path(), "web.yaml", &service(port, "1000", 2));
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    let hash = eventually("two replicas", Duration::from_secs(30), || {
        let reps = of(&d, "web");
        (reps.len() == 2).then(|| {
            reps[0]["spec"]["templateHash"]
                .as_str()
                .unwrap()
                .to_string()
        })
    });
    let text = d.ctl_ok(&["describe", "service", "web"]);
    assert_eq!(
        value(&text, "Revision hash"),
        Some(hash.as_str()),
        "describe's revision hash is the replicas' templateHash:\n{text}"
    );
    for want in [
        "Readiness probe:  exec [\"true\"] delay=0s timeout=1s period=200ms #success=1 #failure=3",
        &format!("Published:        {port} on every node → http (RoundRobin)"),
        "Update strategy:  max surge 1, max unavailable 0",
        "Paused:           false",
        "Uses:             config/app@",
    ] {
        assert!(text.contains(want), "{want:?} missing in\n{text}");
    }

    // Deleted and created again: the new service's events only.
    let scaled = |text: &str| text.matches("created 2 replica(s) of web").count();
    eventually("the first Scaled event", Duration::from_secs(10), || {
        (scaled(&d.ctl_ok(&["describe", "service", "web"])) == 1).then_some(())
    });
    d.delete_and_wait("service", "web");
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    eventually(
        "the new service's Scaled event",
        Duration::from_secs(10),
        || {
            d.ctl_ok(&["get", "events"])
                .matches("created 2 replica(s) of web")
                .count()
                .eq(&2)
                .then_some(())
        },
    );
    let text = d.ctl_ok(&["describe", "service", "web"]);
    assert_eq!(
        scaled(&text),
        1,
        "only the events of this service, not of the one deleted before:\n{text}"
    );
    d.delete_and_wait("service", "web");
}

#[test]
fn describe_shows_the_replicas_template_hash_for_a_service_that_uses_a_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let yaml = "apiVersion: orch/v1\nkind: Secret\nmetadata: {name: token}\ndata: {value: s3cret}\n---\napiVersion: orch/v1\nkind: Service\nmetadata: {name: api}\nspec:\n  replicas: 1\n  template:\n    command: [sleep]\n    args: ['1000']\n    stopGracePeriod: 1s\n    env: [{name: TOKEN, valueFrom: {secret: token, key: value}}]\n";
    let f = write(tmp.path(), "api.yaml", yaml);
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    let hash = eventually("a replica", Duration::from_secs(30), || {
        of(&d, "api")
            .first()
            .map(|r| r["spec"]["templateHash"].as_str().unwrap().to_string())
    });
    let text = d.ctl_ok(&["describe", "service", "api"]);
    assert_eq!(
        value(&text, "Revision hash"),
        Some(hash.as_str()),
        "describe's revision hash is the replicas' templateHash:\n{text}"
    );
    assert!(text.contains("Uses:             secret/token@"), "{text}");
    d.delete_and_wait("service", "api");
}

#[test]
fn rollout_history_after_undo_is_sorted_renumbered_and_tells_revisions_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let port = free_port();
    let apply = |arg: &str, replicas: u32| {
        let f = write(tmp.path(), "web.yaml", &service(port, arg, replicas));
        d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    };
    let status = || d.ctl(&["rollout", "status", "web", "--timeout", "60s"]);
    let rolled_out = |out: &std::process::Output| {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains("revision 0"),
            "never a status the controller has not written:\n{text}"
        );
        text
    };
    // Right after a create, status waits for the controller (no `revision 0 ... Complete`).
    apply("1000", 12);
    rolled_out(&status());
    for arg in ["1001", "1002"] {
        apply(arg, 12);
        rolled_out(&status());
    }
    let rows = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .skip(1)
            .map(|l| l.split_whitespace().map(String::from).collect())
            .collect()
    };
    let before = d.ctl_ok(&["rollout", "history", "web"]);
    let numbers = |text: &str| -> Vec<String> { rows(text).iter().map(|r| r[0].clone()).collect() };
    assert_eq!(numbers(&before), ["1", "2", "3"], "{before}");
    // Each line says what distinguishes it: the revisions differ only in their argument.
    let bodies: Vec<String> = before
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert!(
        bodies[1].contains("sleep 1001") && bodies[2].contains("sleep 1002"),
        "{before}"
    );
    assert!(
        bodies[2].contains(r#"template.args[0]: "1001" → "1002""#),
        "{before}"
    );
    let created = |text: &str, n: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(n))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("20")))
            .map(String::from)
    };
    let created_2 = created(&before, "2").expect("revision 2's creation time");

    // Undo: revision 2's template is back as revision 4; 2 is gone, its time kept.
    d.ctl_ok(&["rollout", "undo", "web"]);
    rolled_out(&status());
    let after = d.ctl_ok(&["rollout", "history", "web"]);
    assert_eq!(numbers(&after), ["1", "3", "4"], "{after}");
    let four = after.lines().find(|l| l.starts_with("4 ")).unwrap();
    assert!(
        four.contains("current")
            && four.contains("sleep 1001")
            && four.contains("revision 2 again"),
        "{after}"
    );
    assert_eq!(created(&after, "4"), Some(created_2), "{after}");
    d.delete_and_wait("service", "web");
}

#[test]
fn get_says_running_until_ready_and_describe_reads_a_failure_count_right() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let f = write(
        tmp.path(),
        "web.yaml",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  template:\n    command: [sleep, '1000']\n    stopGracePeriod: 1s\n    readinessProbe: {exec: {command: ['false']}, period: 100ms, failureThreshold: 2}\n",
    );
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    // Failing past its threshold: the count reads as a count, not as `5/2`.
    let name = eventually(
        "a readiness failure past the threshold",
        Duration::from_secs(30),
        || {
            let r = of(&d, "web").into_iter().next()?;
            let probes = r["status"]["probes"].as_array()?.clone();
            let line = probes.first()?.as_str()?.to_string();
            let failures: u32 = line
                .split(|c: char| !c.is_ascii_digit())
                .find(|w| !w.is_empty())?
                .parse()
                .ok()?;
            (failures > 2).then(|| r["metadata"]["name"].as_str().unwrap().to_string())
        },
    );
    let described = d.ctl_ok(&["describe", "replica", &name]);
    let probe = described
        .lines()
        .find(|l| l.starts_with("Probe:"))
        .unwrap_or_default();
    assert!(
        probe.contains("readiness: failing (") && probe.contains(" consecutive, threshold 2)"),
        "{described}"
    );
    assert!(
        described.contains("Phase:            Running"),
        "{described}"
    );
    // `get` shows the phase the README names: Running (not an endpoint) until Ready.
    let table = d.ctl_ok(&["get", "replicas"]);
    let row = table.lines().find(|l| l.starts_with(&name)).unwrap();
    assert_eq!(row.split_whitespace().nth(3), Some("Running"), "{table}");
    d.delete_and_wait("service", "web");
}

/// The network columns through the real binaries, on a cluster without replica networking
/// (the process runtime on the host network): `get replicas -o wide` adds IP with the node's
/// address marked `(host)`; `get services` has VIRTUAL-IP `<none>`; `describe` says the node
/// has no subnet lease, the replica is on the host network and the service has no virtual IP.
#[test]
fn get_wide_and_describe_show_the_host_network_for_a_cluster_without_one() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let f = write(
        tmp.path(),
        "web.yaml",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  template:\n    command: [sleep, '1000']\n    ports: [{name: http}]\n    stopGracePeriod: 1s\n",
    );
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    let (name, host) = eventually("a running replica", Duration::from_secs(30), || {
        let r = of(&d, "web").into_iter().next()?;
        let host = r["status"]["hostIp"].as_str()?.to_string();
        Some((r["metadata"]["name"].as_str()?.to_string(), host))
    });

    let table = d.ctl_ok(&["get", "replicas", "-o", "wide"]);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("NAME") && header.ends_with("IP"),
        "{table}"
    );
    let row = table.lines().find(|l| l.starts_with(&name)).unwrap();
    assert!(row.ends_with(&format!("{host} (host)")), "{table}");
    assert!(row.contains("test-node"), "the NODE column: {table}");
    let plain = d.ctl_ok(&["get", "replicas"]);
    assert!(!plain.lines().next().unwrap().ends_with(" IP"), "{plain}");

    let services = d.ctl_ok(&["get", "services"]);
    let header: Vec<&str> = services
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let column = header
        .iter()
        .position(|h| *h == "VIRTUAL-IP")
        .expect("a VIRTUAL-IP column");
    let row = services.lines().find(|l| l.starts_with("web")).unwrap();
    assert_eq!(
        row.split_whitespace().nth(column),
        Some("<none>"),
        "{services}"
    );
    // -o wide on a kind without wide columns is the normal table.
    let wide = d.ctl_ok(&["get", "services", "-o", "wide"]);
    assert_eq!(wide.lines().next(), services.lines().next(), "{wide}");

    let node = d.ctl_ok(&["describe", "node", "test-node"]);
    assert!(
        node.contains("Network:\n  Subnet:         <none> (no lease"),
        "{node}"
    );
    let replica = d.ctl_ok(&["describe", "replica", &name]);
    assert!(
        replica.contains(&format!("IP:               {host} (host)\n"))
            && replica.contains("Network:          the host network"),
        "{replica}"
    );
    let service = d.ctl_ok(&["describe", "service", "web"]);
    assert!(
        service.contains("Virtual IP:       <none> (not leased"),
        "{service}"
    );
    let help = d.ctl_ok(&["get", "--help"]);
    assert!(help.contains("wide"), "{help}");
    d.delete_and_wait("service", "web");
}
