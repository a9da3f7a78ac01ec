//! Several `orchd manager`s on one machine (loopback, free ports): two on an external etcd
//! (`--store etcd://`, the second `--join`s the first), and three that run their own etcd
//! members (`--init-cluster`, then `--join`). Every manager serves the API, exactly one
//! leads, `orchctl get managers` shows the roles and the members' health; a killed leader is
//! replaced and an agent joined at it fails over; a manager's etcd member dies with it; a
//! removed manager's member leaves the etcd cluster.
//!
//! Needs the `etcd` feature and the etcd binary: `cargo test -p orchd --features etcd --test
//! managers`.
#![cfg(feature = "etcd")]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use orch_store::local_etcd::LocalEtcd;

fn managers(d: &Daemon) -> Option<Vec<serde_json::Value>> {
    let out = d.ctl(&["get", "managers", "-o", "json"]);
    out.status
        .success()
        .then(|| json_items(&String::from_utf8_lossy(&out.stdout)))
}

fn leaders(rows: &[serde_json::Value]) -> Vec<String> {
    rows.iter()
        .filter(|m| m["role"] == "leader")
        .filter_map(|m| m["name"].as_str().map(String::from))
        .collect()
}

fn manager_token(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_orchd"))
        .args(["token", "--manager", "--data-dir"])
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn sleeper(name: &str) -> String {
    format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  replicas: 1\n  template:\n    command: [/bin/sh, -c, 'exec sleep 100000']\n    stopGracePeriod: 1s\n"
    )
}

/// Manager `i` of those running.
fn m(ms: &[Option<Daemon>], i: usize) -> &Daemon {
    ms[i].as_ref().unwrap()
}

fn kill(d: &mut Daemon) {
    if let Some(mut c) = d.child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The pids of etcd processes whose command line names `data_dir`.
fn etcd_pids(data_dir: &Path) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("etcd .*{}", data_dir.display())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn two_managers_on_one_etcd_serve_the_api_one_leads_and_agents_fail_over() {
    if !require(&["etcd"]) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = rt
        .block_on(LocalEtcd::start())
        .unwrap_or_else(|e| panic!("{e}"));
    let tmp = tempfile::tempdir().unwrap();
    let store = format!("etcd://{}/managers-test", etcd.address());
    let (d0, d1) = (tmp.path().join("m0"), tmp.path().join("m1"));
    std::fs::create_dir_all(&d0).unwrap();
    std::fs::create_dir_all(&d1).unwrap();
    let (a0, a1) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut m0 = Daemon::start_as(
        &d0,
        &["manager"],
        &["--name", "m0", "--listen", &a0, "--store", &store],
    );

    // A manager of another cluster (its own CA) on the same prefix is refused.
    let stranger = tmp.path().join("stranger");
    let out = Command::new(env!("CARGO_BIN_EXE_orchd"))
        .args(["manager", "--name", "x", "--store", &store, "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(stranger.join("data"))
        .arg("--socket")
        .arg(stranger.join("orchd.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("belongs to another orch cluster") && err.contains("--join"),
        "{err}"
    );

    // The worker token does not admit a manager.
    let worker = token_of(&d0);
    let out = Command::new(env!("CARGO_BIN_EXE_orchd"))
        .args([
            "manager", "--name", "m1", "--store", &store, "--listen", &a1,
        ])
        .args(["--join", &a0, "--token", &worker])
        .arg("--data-dir")
        .arg(stranger.join("data2"))
        .arg("--socket")
        .arg(stranger.join("orchd2.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid manager token"), "{err}");

    let token = manager_token(&d0);
    let mut m1 = Daemon::start_as(
        &d1,
        &["manager"],
        &[
            "--name", "m1", "--listen", &a1, "--store", &store, "--join", &a0, "--token", &token,
        ],
    );
    let rows = eventually(
        "two managers, one leader, seen alike by both",
        Duration::from_secs(20),
        || {
            let (r0, r1) = (managers(&m0)?, managers(&m1)?);
            (r0.len() == 2 && leaders(&r0).len() == 1 && leaders(&r0) == leaders(&r1)).then_some(r0)
        },
    );
    let addresses: Vec<&str> = rows.iter().filter_map(|m| m["address"].as_str()).collect();
    assert_eq!(addresses, [a0.as_str(), a1.as_str()]);
    assert!(
        rows.iter().all(|m| m["etcdMember"].is_null()),
        "an external etcd: no member of their own: {rows:?}"
    );
    assert_eq!(
        std::fs::read(d0.join("data/secret-keys")).unwrap(),
        std::fs::read(d1.join("data/secret-keys")).unwrap(),
        "the joined manager seals secrets with the cluster's keyring"
    );
    let table = m1.ctl_ok(&["get", "managers"]);
    assert!(
        table.starts_with("NAME   ADDRESS") && table.contains("ROLE") && table.contains("standby"),
        "{table}"
    );

    // Both serve the API over one store.
    let f = write(tmp.path(), "web.yaml", &sleeper("web"));
    m1.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    assert!(m0.ctl_ok(&["get", "services"]).contains("web"));

    // An agent joins at m0 and learns both managers.
    let agent = AgentProc::start(tmp.path(), &a0, "n1", Some(&worker));
    m0.wait_for_nodes(&["n1"]);
    m0.wait_ready("web");
    let listed = eventually(
        "the agent knows both managers",
        Duration::from_secs(10),
        || {
            let t = std::fs::read_to_string(agent.dir.join("credentials/managers")).ok()?;
            (t.contains(&a0) && t.contains(&a1)).then_some(t)
        },
    );
    eprintln!("agent's managers: {listed:?}");

    // The leader dies: the other leads, the agent's heartbeat reaches it, nothing moves.
    let leader = leaders(&rows).remove(0);
    let before = m0.replicas();
    let (dead, survivor) = if leader == "m0" {
        (&mut m0, &m1)
    } else {
        (&mut m1, &m0)
    };
    let killed = Instant::now();
    kill(dead);
    let took = eventually("the survivor leads", Duration::from_secs(15), || {
        let r = managers(survivor)?;
        (r.len() == 1 && leaders(&r).len() == 1).then(|| killed.elapsed())
    });
    eprintln!("{leader} killed; the other manager leads (and the record of the dead one went) {took:?} later");
    std::thread::sleep(Duration::from_secs(4));
    let nodes = survivor.ctl_ok(&["get", "nodes"]);
    assert!(
        nodes.contains("n1") && nodes.contains("Ready") && !nodes.contains("Unreachable"),
        "{nodes}"
    );
    let after = survivor.replicas();
    let names = |r: &[serde_json::Value]| -> Vec<String> {
        r.iter()
            .map(|r| r["metadata"]["name"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(names(&before), names(&after), "no replica replaced");
    let f = write(tmp.path(), "api.yaml", &sleeper("api"));
    survivor.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    survivor.wait_ready("api");
    if leader == "m0" {
        assert!(
            agent.log().contains("switched to another manager"),
            "{}",
            agent.log()
        );
    }
    survivor.ctl_ok(&["delete", "service", "web"]);
    survivor.ctl_ok(&["delete", "service", "api"]);
    eventually("replicas stopped", Duration::from_secs(30), || {
        survivor.replicas().is_empty().then_some(())
    });
}

#[test]
fn init_cluster_and_join_form_one_etcd_cluster_and_a_removed_manager_leaves_it() {
    if !require(&["etcd"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = |i: usize| {
        let d = tmp.path().join(format!("m{i}"));
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let start = |i: usize, first: Option<&str>| {
        let (client, peer) = (free_port().to_string(), free_port().to_string());
        let name = format!("m{i}");
        let mut args = vec![
            "--name",
            &name,
            "--listen",
            &addrs[i],
            "--etcd-client-port",
            &client,
            "--etcd-peer-port",
            &peer,
        ];
        let token;
        match first {
            None => args.push("--init-cluster"),
            Some(first) => {
                token = manager_token(&dir(0));
                args.extend(["--join", first, "--token", &token]);
            }
        }
        let began = Instant::now();
        let d = Daemon::start_as(&dir(i), &["manager"], &args);
        eprintln!("m{i} serving {:?} after its start", began.elapsed());
        d
    };
    let mut ms: Vec<Option<Daemon>> = vec![
        Some(start(0, None)),
        Some(start(1, Some(&addrs[0]))),
        Some(start(2, Some(&addrs[0]))),
    ];
    let raft_leader = |r: &[serde_json::Value]| -> Option<String> {
        let l: Vec<&serde_json::Value> = r.iter().filter(|m| m["etcdLeader"] == true).collect();
        (l.len() == 1).then(|| l[0]["name"].as_str().unwrap_or("").to_string())
    };
    // The leader moves etcd's raft leadership off its own member (checked every 5 s).
    let rows = eventually(
        "three managers with healthy etcd members, one leader, raft led by another",
        Duration::from_secs(40),
        || {
            let r = managers(m(&ms, 2))?;
            (r.len() == 3
                && leaders(&r).len() == 1
                && r.iter().all(|m| m["etcdHealth"] == "healthy")
                && raft_leader(&r).is_some_and(|l| l != leaders(&r)[0]))
            .then_some(r)
        },
    );
    let members: Vec<&str> = rows
        .iter()
        .filter_map(|m| m["etcdMember"].as_str())
        .collect();
    assert_eq!(members.len(), 3, "{rows:?}");
    let info = m(&ms, 1).ctl_ok(&["info"]);
    assert!(info.contains("member run by this manager"), "{info}");
    assert!(dir(0).join("data/etcd.log").exists());
    let leader = leaders(&rows).remove(0);
    eprintln!(
        "{leader} leads; etcd's raft leader is {}'s member",
        raft_leader(&rows).unwrap_or_default()
    );
    let l: usize = leader[1..].parse().unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let (a, b) = (others[0], others[1]);

    // A manager cannot remove itself, nor one that is not there.
    let out = m(&ms, a).ctl(&["manager", "rm", &format!("m{a}")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is the one answering this request"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = m(&ms, a).ctl(&["manager", "rm", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no manager \"nope\""));

    // The leader dies (SIGKILL): its etcd member dies with it, another manager leads.
    let dead_data = dir(l).join("data");
    assert_eq!(etcd_pids(&dead_data).len(), 1, "m{l} runs its etcd member");
    let killed = Instant::now();
    kill(ms[l].as_mut().unwrap());
    ms[l] = None;
    let took = eventually("a survivor leads", Duration::from_secs(15), || {
        [a, b].into_iter().find_map(|i| {
            let r = managers(m(&ms, i))?;
            let me = format!("m{i}");
            r.iter()
                .any(|row| row["name"] == me.as_str() && row["role"] == "leader")
                .then(|| killed.elapsed())
        })
    });
    eprintln!("leader m{l} killed; a survivor leads {took:?} later");
    eventually(
        "the dead leader's etcd member died with it",
        Duration::from_secs(5),
        || etcd_pids(&dead_data).is_empty().then_some(()),
    );
    let down = eventually(
        "the dead manager shows as down",
        Duration::from_secs(15),
        || {
            let r = managers(m(&ms, a))?;
            let row = r
                .iter()
                .find(|x| x["name"] == format!("m{l}").as_str())?
                .clone();
            (row["role"] == "down" && row["etcdHealth"] != "healthy").then_some(row)
        },
    );
    eprintln!("m{l} after its death: {down}");
    // The two left still have a quorum: applies work at either.
    let f = write(tmp.path(), "web.yaml", &sleeper("web"));
    m(&ms, b).ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    assert!(m(&ms, a).ctl_ok(&["get", "services"]).contains("web"));

    // Removing it takes its member out of the etcd cluster.
    let out = m(&ms, a).ctl_ok(&["manager", "rm", &format!("m{l}")]);
    assert!(
        out.contains(&format!("manager/m{l} removed (etcd member")),
        "{out}"
    );
    let rows = eventually("two managers left", Duration::from_secs(10), || {
        let r = managers(m(&ms, b))?;
        (r.len() == 2).then_some(r)
    });
    assert!(
        rows.iter().all(|m| m["etcdHealth"] == "healthy"),
        "{rows:?}"
    );
    let names: Vec<String> = rows
        .iter()
        .filter_map(|m| m["name"].as_str().map(String::from))
        .collect();
    assert_eq!(names, [format!("m{a}"), format!("m{b}")]);
    m(&ms, a).ctl_ok(&["delete", "service", "web"]);
}
