//! A cluster on this machine: `orchd manager` (no local agent) with its cluster port on
//! loopback, three `orchd agent`s that join it with the token over mutual TLS and run real
//! processes. Replicas spread over both; an agent killed with SIGKILL goes Unreachable and
//! its replicas are replaced on the other after the timeout; when it comes back (no token
//! needed: it kept its certificate) it stops the replicas that were replaced, so the service
//! never runs more than it asked for; a wrong token is refused with a clear error.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn nodes_of(d: &Daemon, service: &str) -> Vec<(String, String, Option<u32>)> {
    d.replicas()
        .into_iter()
        .filter(|r| r["spec"]["service"] == service && r["status"]["phase"] == "Ready")
        .map(|r| {
            (
                r["metadata"]["name"].as_str().unwrap_or("").to_string(),
                r["spec"]["node"].as_str().unwrap_or("").to_string(),
                pid_of(&r),
            )
        })
        .collect()
}

/// `orchd manager` with its cluster port on a free loopback port: the daemon, the address
/// and the worker join token (from `orchd token`).
fn manager(dir: &std::path::Path) -> (Daemon, String, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_as(dir, &["manager"], &["--listen", &addr]);
    (d, addr, token_of(dir))
}

/// [`manager`] with agents of these names joined and registered.
fn manager_with_agents<const N: usize>(
    dir: &std::path::Path,
    names: [&str; N],
) -> (Daemon, String, String, [AgentProc; N]) {
    let (d, addr, token) = manager(dir);
    let agents = names.map(|n| AgentProc::start(dir, &addr, n, Some(&token)));
    d.wait_for_nodes(&names);
    (d, addr, token, agents)
}

/// An agent on host `i` of `hosts` (advertising the host's address).
fn agent_on(
    hosts: &Hosts,
    i: usize,
    dir: &std::path::Path,
    addr: &str,
    node: &str,
    token: Option<&str>,
) -> AgentProc {
    let adv = hosts.address(i);
    AgentProc::start_in(
        Some(&hosts.names[i]),
        dir,
        addr,
        node,
        token,
        &["--advertise-address", &adv],
    )
}

#[test]
fn agents_join_a_manager_and_a_dead_node_is_replaced() {
    if !require(NETNS) {
        return;
    }
    // Four hosts: the manager on the first, an agent on each of the others.
    let hosts = Hosts::new(4);
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("{}:7443", hosts.address(0));
    let d = Daemon::start_in(
        Some(&hosts.names[0]),
        tmp.path(),
        &["manager"],
        &["--listen", &addr],
    );
    let token = token_of(tmp.path());
    assert!(token.starts_with("ORCH-1-"), "{token}");
    let agent = |i: usize, node: &str, token: Option<&str>| {
        agent_on(&hosts, i, tmp.path(), &addr, node, token)
    };

    // A wrong token: refused, and the agent says why.
    let mut bad = agent(1, "intruder", Some(&token.replace("ORCH-1-", "ORCH-1-0")));
    assert!(!bad.wait(Duration::from_secs(20)).success());
    assert!(bad.log().contains("CA digest"), "{}", bad.log());
    let mut bad = agent(
        1,
        "intruder2",
        Some(&format!("{}x", &token[..token.len() - 1])),
    );
    assert!(!bad.wait(Duration::from_secs(20)).success());
    assert!(bad.log().contains("invalid join token"), "{}", bad.log());

    let _a1 = agent(1, "a1", Some(&token));
    let mut a2 = agent(2, "a2", Some(&token));
    let _a3 = agent(3, "a3", Some(&token));
    eventually("three nodes ready", Duration::from_secs(30), || {
        let out = d.ctl_ok(&["get", "nodes"]);
        (out.contains("a1") && out.contains("a3") && out.matches("Ready").count() >= 3)
            .then_some(())
    });
    let key_mode = std::fs::metadata(a2.dir.join("credentials/node.key"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(key_mode, 0o600);

    // An administrator logs in with the manager token: orchctl then talks to the manager
    // over mutual TLS.
    let config = tmp.path().join("orch-config.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_orchd"))
        .args(["token", "--manager", "--data-dir"])
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    let manager_token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_ne!(manager_token, token);
    let login = Command::new(workspace_bin("orchctl"))
        .arg("--config")
        .arg(&config)
        .args(["login", &addr, "--token", &manager_token, "--name", "alice"])
        .output()
        .unwrap();
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    let remote = |args: &[&str]| {
        Command::new(workspace_bin("orchctl"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("ORCH_SOCKET")
            .output()
            .unwrap()
    };
    let contexts = remote(&["config", "get-contexts"]);
    assert!(String::from_utf8_lossy(&contexts.stdout).contains(&format!("* orch\t{addr}")));
    let nodes = remote(&["node", "ls"]);
    assert!(
        nodes.status.success(),
        "{}",
        String::from_utf8_lossy(&nodes.stderr)
    );
    let nodes = String::from_utf8_lossy(&nodes.stdout);
    assert!(
        nodes.contains("a1") && nodes.contains("a2") && nodes.contains("a3"),
        "{nodes}"
    );

    // logs, logs -f, exec and describe reach a replica on an agent through the manager.
    let ticker = write(
        tmp.path(),
        "ticker.yaml",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: ticker}\nspec:\n  replicas: 1\n  template:\n    command: [/bin/sh, -c, 'echo start $ORCH_REPLICA; while true; do echo tick; sleep 0.2; done']\n    env: [{name: COLOR, value: green}]\n    stopGracePeriod: 1s\n",
    );
    assert!(remote(&["apply", "-f", ticker.to_str().unwrap()])
        .status
        .success());
    let (tick, tick_node) = eventually("the ticker runs", Duration::from_secs(30), || {
        d.replicas()
            .into_iter()
            .find(|r| r["spec"]["service"] == "ticker" && r["status"]["phase"] == "Ready")
            .map(|r| {
                (
                    r["metadata"]["name"].as_str().unwrap().to_string(),
                    r["spec"]["node"].as_str().unwrap().to_string(),
                )
            })
    });
    let logs = eventually("logs over the network", Duration::from_secs(10), || {
        let out = remote(&["logs", &tick]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text.contains("tick")).then_some(text)
    });
    assert!(logs.starts_with(&format!("start {tick}")), "{logs}");
    let mut follow = Command::new(workspace_bin("orchctl"))
        .arg("--config")
        .arg(&config)
        .args(["logs", "-f", "--tail-bytes", "0", &tick])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    for _ in 0..3 {
        assert_eq!(
            lines.next().unwrap().unwrap(),
            "tick",
            "logs -f streams new lines"
        );
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let exec = remote(&["exec", &tick, "--", "/bin/sh", "-c", "echo $COLOR; exit 7"]);
    assert_eq!(exec.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&exec.stdout).trim(), "green");
    let described = remote(&["describe", "replica", &tick]);
    assert!(String::from_utf8_lossy(&described.stdout).contains(&tick_node));
    assert!(remote(&["delete", "service", "ticker"]).status.success());

    let f = write(tmp.path(), "hello.yaml", &hello(4, "blue"));
    let applied = remote(&["apply", "-f", f.to_str().unwrap()]);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert!(remote(&["scale", "hello", "--replicas", "6"])
        .status
        .success());
    let placed = eventually("6 ready over three nodes", Duration::from_secs(30), || {
        let r = nodes_of(&d, "hello");
        (r.len() == 6
            && ["a1", "a2", "a3"]
                .iter()
                .all(|n| r.iter().any(|x| x.1 == *n)))
        .then_some(r)
    });
    for r in d.replicas() {
        let body = http_get(&addr_of(&r).unwrap()).unwrap();
        assert!(body.starts_with("hello from"), "{body}");
    }
    let on_a2: Vec<(String, u32)> = placed
        .iter()
        .filter(|x| x.1 == "a2")
        .map(|x| (x.0.clone(), x.2.unwrap()))
        .collect();

    // a2 dies: Unreachable after the grace, replaced after the timeout.
    a2.kill();
    let t = std::time::Instant::now();
    eventually("a2 unreachable", Duration::from_secs(15), || {
        let out = d.ctl_ok(&["get", "nodes"]);
        out.lines()
            .any(|l| l.starts_with("a2") && l.contains("Unreachable"))
            .then_some(())
    });
    let unreachable_after = t.elapsed();
    eventually("6 ready on a1 and a3", Duration::from_secs(40), || {
        let r = nodes_of(&d, "hello");
        (r.len() == 6 && r.iter().all(|x| x.1 != "a2")).then_some(())
    });
    let replaced_after = t.elapsed();
    eprintln!(
        "a2 unreachable after {unreachable_after:?}, replicas replaced after {replaced_after:?}"
    );
    assert!(
        unreachable_after >= Duration::from_secs(2),
        "{unreachable_after:?}"
    );
    assert!(
        replaced_after >= Duration::from_secs(9),
        "{replaced_after:?}"
    );
    // Its processes still ran meanwhile (the node was cut off, not its work).
    for (_, pid) in &on_a2 {
        assert!(
            process_alive(*pid),
            "a2's replica process {pid} died with its agent"
        );
    }

    // a2 returns with its saved certificate: the replaced replicas are stopped there.
    let _a2 = agent(2, "a2", None);
    eventually("a2 ready again", Duration::from_secs(30), || {
        let out = d.ctl_ok(&["get", "nodes"]);
        out.lines()
            .any(|l| l.starts_with("a2") && l.contains("Ready"))
            .then_some(())
    });
    eventually(
        "a2's old processes stopped",
        Duration::from_secs(30),
        || on_a2.iter().all(|(_, p)| !process_alive(*p)).then_some(()),
    );
    assert_eq!(nodes_of(&d, "hello").len(), 6);
    assert_eq!(d.replicas().len(), 6, "exactly the desired replicas");

    assert!(remote(&["delete", "service", "hello"]).status.success());
    eventually("all gone", Duration::from_secs(30), || {
        d.replicas().is_empty().then_some(())
    });
}

/// The manager stops for 60 s: the agent keeps its replicas running and restarts a crashed
/// one on its own; the manager comes back on the same state and port, and nothing is
/// duplicated.
#[test]
fn agents_keep_working_while_the_manager_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut d, addr, _, [_a1]) = manager_with_agents(tmp.path(), ["a1"]);
    let f = write(tmp.path(), "hello.yaml", &hello(2, "blue"));
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    let before = eventually("2 ready", Duration::from_secs(30), || {
        let r = nodes_of(&d, "hello");
        (r.len() == 2).then_some(r)
    });

    d.stop();
    let down = std::time::Instant::now();
    let victim = before[0].2.unwrap();
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    // The survivor keeps serving; the victim's replacement process answers on its port.
    let survivor = before[1].2.unwrap();
    eventually(
        "the crashed replica restarted by the agent alone",
        Duration::from_secs(20),
        || {
            let out = Command::new("pgrep")
                .args(["-f", "hello-server"])
                .output()
                .ok()?;
            let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            let mine: Vec<u32> = pids
                .into_iter()
                .filter(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/environ"))
                        .map(|e| e.contains(&before[0].0))
                        .unwrap_or(false)
                })
                .collect();
            mine.iter().any(|p| *p != victim).then_some(())
        },
    );
    // What is tested: for 60 s without a manager no replica stops (sampled every 500 ms).
    while down.elapsed() < Duration::from_secs(60) {
        assert!(
            process_alive(survivor),
            "a replica stopped while the manager was down"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let d = Daemon::start_as(tmp.path(), &["manager"], &["--listen", &addr]);
    let after = eventually(
        "reconciled: the same 2 replicas, ready",
        Duration::from_secs(30),
        || {
            let r = nodes_of(&d, "hello");
            (r.len() == 2 && d.replicas().len() == 2).then_some(r)
        },
    );
    let mut names: Vec<&String> = after.iter().map(|x| &x.0).collect();
    names.sort();
    let mut was: Vec<&String> = before.iter().map(|x| &x.0).collect();
    was.sort();
    assert_eq!(names, was, "no replica was replaced or duplicated");
    assert!(after.iter().any(|x| x.2 == Some(survivor)));
    d.delete_and_wait("service", "hello");
}

/// `orchctl node drain` moves a node's 6 replicas to the other node at the service's update
/// pace (ready replicas never drop below replicas - maxUnavailable) and leaves it cordoned;
/// `orchctl node rm` refuses a Ready node without --force, and once removed the node's agent
/// is refused by the manager and the node does not come back.
#[test]
fn drain_then_remove_a_node() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, addr, _, [_a1, a2]) = manager_with_agents(tmp.path(), ["a1", "a2"]);
    let svc = hello(12, "blue").replace(
        "    stopGracePeriod: 2s\n",
        "    stopGracePeriod: 2s\n  update: {maxSurge: 1, maxUnavailable: 1}\n",
    );
    let f = write(tmp.path(), "hello.yaml", &svc);
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    eventually("12 ready, 6 on each node", Duration::from_secs(30), || {
        let r = nodes_of(&d, "hello");
        (r.len() == 12 && r.iter().filter(|x| x.1 == "a2").count() == 6).then_some(())
    });

    // `orchd admin` on the manager's machine writes a context too.
    let config = tmp.path().join("admin-config.yaml");
    let admin = Command::new(env!("CARGO_BIN_EXE_orchd"))
        .args(["admin", "--name", "ops", "--server", &addr, "--data-dir"])
        .arg(tmp.path().join("data"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        admin.status.success(),
        "{}",
        String::from_utf8_lossy(&admin.stderr)
    );
    let ls = Command::new(workspace_bin("orchctl"))
        .arg("--config")
        .arg(&config)
        .args(["node", "ls"])
        .env_remove("ORCH_SOCKET")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&ls.stdout).contains("a2"));

    let socket = d.socket.clone();
    let drain = std::thread::spawn(move || {
        Command::new(workspace_bin("orchctl"))
            .arg("--socket")
            .arg(&socket)
            .args(["node", "drain", "a2", "--timeout", "60s"])
            .output()
            .unwrap()
    });
    let mut lowest = usize::MAX;
    while !drain.is_finished() {
        lowest = lowest.min(nodes_of(&d, "hello").len());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = drain.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("node/a2 drained"));
    assert!(
        lowest >= 11,
        "ready replicas dropped to {lowest} during the drain (max unavailable 1)"
    );
    let after = eventually("12 ready on a1", Duration::from_secs(30), || {
        let r = nodes_of(&d, "hello");
        (r.len() == 12).then_some(r)
    });
    assert!(after.iter().all(|x| x.1 == "a1"), "{after:?}");
    let node = d.ctl_ok(&["get", "node", "a2", "-o", "json"]);
    assert!(node.contains("\"unschedulable\": true"), "{node}");

    // Remove: refused while Ready, then forced; the agent is refused from then on.
    let refused = d.ctl(&["node", "rm", "a2"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    d.ctl_ok(&["node", "rm", "a2", "--force"]);
    eventually(
        "the agent is told it was removed",
        Duration::from_secs(15),
        || {
            a2.log()
                .contains("was removed from the cluster")
                .then_some(())
        },
    );
    // What is tested: 2 s after being told, the removed node has still not come back.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!d.ctl_ok(&["get", "nodes"]).contains("a2"), "a2 came back");
    d.delete_and_wait("service", "hello");
}

/// Hosts in network namespaces on one bridge: the manager on one, agents on two others. One
/// agent's link is cut for 30 s (the replace timeout is 40 s): the node goes Unreachable but
/// nothing is replaced. Cut again for longer: its replicas are replaced on the other node,
/// and once the link is back exactly the desired replicas run.
#[test]
fn a_cut_link_is_tolerated_until_the_replace_timeout() {
    if !require(NETNS) {
        return;
    }
    let hosts = Hosts::new(3);
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("{}:7443", hosts.address(0));
    let d = Daemon::start_in(
        Some(&hosts.names[0]),
        tmp.path(),
        &["manager"],
        &["--listen", &addr, "--node-replace-timeout", "40s"],
    );
    let token = token_of(tmp.path());
    let agent = |i: usize, node: &str| agent_on(&hosts, i, tmp.path(), &addr, node, Some(&token));
    let _a1 = agent(1, "a1");
    let _a2 = agent(2, "a2");
    eventually("two nodes ready", Duration::from_secs(30), || {
        let out = d.ctl_ok(&["get", "nodes"]);
        (out.matches("Ready").count() >= 2).then_some(())
    });
    let f = write(tmp.path(), "hello.yaml", &hello(4, "blue"));
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    let placed = eventually("4 ready over both", Duration::from_secs(30), || {
        let r = nodes_of(&d, "hello");
        (r.len() == 4 && r.iter().any(|x| x.1 == "a2")).then_some(r)
    });
    let mut names: Vec<String> = placed.iter().map(|x| x.0.clone()).collect();
    names.sort();
    let replica_names = |d: &Daemon| {
        let mut v: Vec<String> = d
            .replicas()
            .iter()
            .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let node_line = |d: &Daemon| {
        d.ctl_ok(&["get", "nodes"])
            .lines()
            .find(|l| l.starts_with("a2"))
            .unwrap_or("")
            .to_string()
    };

    // 30 s cut, shorter than the 40 s replace timeout: Unreachable, nothing replaced.
    hosts.link(2, false);
    let t = std::time::Instant::now();
    eventually("a2 unreachable", Duration::from_secs(15), || {
        node_line(&d).contains("Unreachable").then_some(())
    });
    // What is tested: nothing is replaced for the 30 s of the cut (sampled every 500 ms).
    while t.elapsed() < Duration::from_secs(30) {
        assert_eq!(replica_names(&d), names, "replaced during a short cut");
        std::thread::sleep(Duration::from_millis(500));
    }
    hosts.link(2, true);
    eventually("a2 ready again", Duration::from_secs(20), || {
        node_line(&d).contains("Ready").then_some(())
    });
    assert_eq!(replica_names(&d), names);
    eventually("all 4 ready again", Duration::from_secs(20), || {
        (nodes_of(&d, "hello").len() == 4).then_some(())
    });

    // A longer cut: replaced on a1 after the timeout; the link returns; exactly 4 run.
    hosts.link(2, false);
    let t = std::time::Instant::now();
    eventually("replaced on a1", Duration::from_secs(70), || {
        let r = nodes_of(&d, "hello");
        (r.len() == 4 && r.iter().all(|x| x.1 == "a1")).then_some(())
    });
    let replaced_after = t.elapsed();
    eprintln!("a2 cut off: its replicas replaced after {replaced_after:?} (timeout 40 s)");
    assert!(
        replaced_after >= Duration::from_secs(39),
        "{replaced_after:?}"
    );
    hosts.link(2, true);
    eventually("a2 ready again", Duration::from_secs(20), || {
        node_line(&d).contains("Ready").then_some(())
    });
    eventually(
        "exactly 4 replicas, none on a2",
        Duration::from_secs(30),
        || {
            let all = d.replicas();
            (all.len() == 4 && all.iter().all(|r| r["spec"]["node"] == "a1")).then_some(())
        },
    );
    // a2's old processes (in its namespace) stop.
    eventually("a2's old replicas stopped", Duration::from_secs(20), || {
        let ns_pids = Command::new("ip")
            .args(["netns", "pids", &hosts.names[2]])
            .output()
            .ok()?;
        let left = String::from_utf8_lossy(&ns_pids.stdout)
            .split_whitespace()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.contains("hello-server"))
            })
            .count();
        (left == 0).then_some(())
    });
    d.delete_and_wait("service", "hello");
}

/// Certificates renew before they expire without dropping work: with 20 s certificates the
/// agent renews twice in 30 s, stays Ready throughout and its replica keeps running.
#[test]
fn certificates_renew_without_dropping_work() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_as(
        tmp.path(),
        &["manager"],
        &["--listen", &addr, "--cert-validity", "20s"],
    );
    let token = token_of(tmp.path());
    let a1 = AgentProc::start(tmp.path(), &addr, "a1", Some(&token));
    let f = write(tmp.path(), "hello.yaml", &hello(1, "blue"));
    d.wait_for_nodes(&["a1"]);
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    let before = eventually("ready", Duration::from_secs(30), || {
        let r = nodes_of(&d, "hello");
        (r.len() == 1).then_some(r)
    });
    let first_cert = std::fs::read_to_string(a1.dir.join("credentials/node.pem")).unwrap();
    // Ready throughout, until the certificate was renewed twice (or 60 s went by).
    let t = std::time::Instant::now();
    while a1.log().matches("certificate renewed").count() < 2
        && t.elapsed() < Duration::from_secs(60)
    {
        let nodes = d.ctl_ok(&["get", "nodes"]);
        assert!(
            nodes
                .lines()
                .any(|l| l.starts_with("a1") && l.contains("Ready")),
            "{nodes}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let renewed = a1.log().matches("certificate renewed").count();
    assert!(renewed >= 2, "renewed {renewed} time(s): {}", a1.log());
    assert_ne!(
        std::fs::read_to_string(a1.dir.join("credentials/node.pem")).unwrap(),
        first_cert
    );
    let after = nodes_of(&d, "hello");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].2, before[0].2, "the replica kept running");
    // The manager still reaches the agent with its renewed certificate.
    let logs = d.ctl(&["logs", &after[0].0]);
    assert!(
        logs.status.success(),
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
    d.delete_and_wait("service", "hello");
}

/// A loaded but alive node is not declared dead: four busy loops saturate both cores for
/// 12 s (four times the grace period) and the node stays Ready throughout.
#[test]
fn a_loaded_node_stays_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, _, _, [_a1]) = manager_with_agents(tmp.path(), ["a1"]);
    let hog = write(
        tmp.path(),
        "hog.yaml",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: hog}\nspec:\n  replicas: 4\n  template:\n    command: [/bin/sh, -c, 'while :; do :; done']\n    stopGracePeriod: 1s\n",
    );
    d.ctl_ok(&["apply", "-f", hog.to_str().unwrap()]);
    eventually("4 busy loops", Duration::from_secs(30), || {
        (nodes_of(&d, "hog").len() == 4).then_some(())
    });
    // What is tested: Ready for all of the 12 s (sampled every 200 ms).
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(12) {
        let nodes = d.ctl_ok(&["get", "nodes"]);
        assert!(
            nodes
                .lines()
                .any(|l| l.starts_with("a1") && l.contains("Ready")),
            "a loaded node was declared unreachable: {nodes}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    d.delete_and_wait("service", "hog");
}

/// A global service runs one replica on every eligible node: a node that joins gets one, a
/// cordoned node loses its own, and uncordoning brings it back.
#[test]
fn a_global_service_follows_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, addr, token, [_a1, _a2]) = manager_with_agents(tmp.path(), ["a1", "a2"]);
    let f = write(
        tmp.path(),
        "agent.yaml",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: per-node}\nspec:\n  mode: global\n  template:\n    command: [hello-server]\n    ports: [{name: http}]\n    stopGracePeriod: 1s\n",
    );
    d.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    let nodes = |d: &Daemon| {
        let mut v: Vec<String> = nodes_of(d, "per-node").into_iter().map(|x| x.1).collect();
        v.sort();
        v
    };
    eventually("one on each node", Duration::from_secs(30), || {
        (nodes(&d) == ["a1", "a2"] && d.replicas().len() == 2).then_some(())
    });
    let _a3 = AgentProc::start(tmp.path(), &addr, "a3", Some(&token));
    eventually("the new node gets one", Duration::from_secs(30), || {
        (nodes(&d) == ["a1", "a2", "a3"]).then_some(())
    });
    d.ctl_ok(&["node", "cordon", "a2"]);
    eventually(
        "the cordoned node's replica goes",
        Duration::from_secs(30),
        || (nodes(&d) == ["a1", "a3"] && d.replicas().len() == 2).then_some(()),
    );
    d.ctl_ok(&["node", "uncordon", "a2"]);
    eventually(
        "back on the uncordoned node",
        Duration::from_secs(30),
        || (nodes(&d) == ["a1", "a2", "a3"]).then_some(()),
    );
    d.delete_and_wait("service", "per-node");
}

/// Discovery across hosts: each agent runs its own DNS server and proxy (in its own network
/// namespace, on the default 127.0.0.153:53), fed by its own endpoints controller; both answer
/// for replicas on every node.
#[test]
fn every_node_answers_dns_and_proxies_for_the_whole_cluster() {
    if !require(&["root", "ip", "dig"]) {
        return;
    }
    let hosts = Hosts::new(3);
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("{}:7443", hosts.address(0));
    let d = Daemon::start_in(
        Some(&hosts.names[0]),
        tmp.path(),
        &["manager"],
        &["--listen", &addr],
    );
    let token = token_of(tmp.path());
    let _a1 = agent_on(&hosts, 1, tmp.path(), &addr, "a1", Some(&token));
    let _a2 = agent_on(&hosts, 2, tmp.path(), &addr, "a2", Some(&token));
    d.wait_for_nodes(&["a1", "a2"]);
    let port = free_port();
    let manifest = format!(
        "{}  placement: {{maxPerNode: 2}}\n  publish: [{{port: {port}}}]\n",
        hello(4, "blue")
    );
    let path = write(tmp.path(), "hello.yaml", &manifest);
    d.ctl_ok(&["apply", "-f", path.to_str().unwrap()]);
    eventually("2 ready on each node", Duration::from_secs(40), || {
        let n = nodes_of(&d, "hello");
        (n.len() == 4 && n.iter().filter(|(_, node, _)| node == "a1").count() == 2).then_some(())
    });
    let h1 = hosts.address(1);
    // Each node's DNS answers the service's virtual IP (the manager leases one to every
    // service; replicas on both nodes are behind it).
    let vip = eventually("hello has a virtual IP", Duration::from_secs(10), || {
        let out = d.ctl_ok(&["get", "service", "hello", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v["status"]["virtualIp"].as_str().map(str::to_string)
    });
    for i in [1, 2] {
        eventually(
            "the node's DNS answers both",
            Duration::from_secs(10),
            || {
                let out = netns_command(Some(&hosts.names[i]), "dig")
                    .args([
                        "@127.0.0.153",
                        "+short",
                        "+time=1",
                        "hello.default.orch.local",
                    ])
                    .output()
                    .unwrap();
                let out = String::from_utf8_lossy(&out.stdout).to_string();
                let got: Vec<&str> = out.lines().collect();
                (got == [vip.as_str()]).then_some(())
            },
        );
    }
    // The published port on one node reaches the replicas on both.
    let front = format!("{h1}:{port}");
    let mut seen = std::collections::HashSet::new();
    eventually(
        "a1's proxy reaches all four replicas",
        Duration::from_secs(10),
        || {
            for _ in 0..20 {
                if let Some(body) = http_get(&front) {
                    seen.insert(body.split_whitespace().nth(2).unwrap_or("").to_string());
                }
            }
            (seen.len() == 4).then_some(())
        },
    );
    d.delete_and_wait("service", "hello");

    // A secret reaches replicas on both agents (each node may read it only because a
    // replica bound to it uses it).
    d.ctl_ok(&[
        "create",
        "secret",
        "db",
        "--from-literal",
        "password=across-hosts",
    ]);
    let vault = write(
        tmp.path(),
        "vault.yaml",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: vault}\nspec:\n  replicas: 2\n  placement: {maxPerNode: 1}\n  template:\n    command: [/bin/sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 0.2; done']\n    stopGracePeriod: 1s\n    mounts: [{secret: db, path: /run/secrets/db}]\n",
    );
    d.ctl_ok(&["apply", "-f", vault.to_str().unwrap()]);
    let names = eventually(
        "a vault replica on each agent",
        Duration::from_secs(30),
        || {
            let n = nodes_of(&d, "vault");
            (n.len() == 2 && n[0].1 != n[1].1).then_some(n)
        },
    );
    for (name, node, _) in names {
        let got = d.ctl_ok(&[
            "exec",
            &name,
            "--",
            "/bin/sh",
            "-c",
            "cat $ORCH_ROOT/run/secrets/db/password",
        ]);
        assert_eq!(got.trim(), "across-hosts", "on {node}");
    }
    d.delete_and_wait("service", "vault");

    // Named volumes on agents: listed per node, removed from the one named.
    let store = write(
        tmp.path(),
        "store.yaml",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: store}\nspec:\n  replicas: 2\n  placement: {maxPerNode: 1}\n  template:\n    command: [/bin/sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 0.2; done']\n    stopGracePeriod: 1s\n    mounts: [{volume: data, path: /data}]\n",
    );
    d.ctl_ok(&["apply", "-f", store.to_str().unwrap()]);
    eventually(
        "both nodes hold the volume",
        Duration::from_secs(30),
        || {
            let ls = d.ctl_ok(&["volume", "ls"]);
            (ls.contains("a1") && ls.contains("a2")).then_some(())
        },
    );
    d.delete_and_wait("service", "store");
    let out = d.ctl(&["volume", "rm", "data"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("several nodes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.ctl_ok(&["volume", "rm", "data", "--node", "a1"]);
    eventually("only a2 holds it", Duration::from_secs(10), || {
        let ls = d.ctl_ok(&["volume", "ls"]);
        (!ls.contains("a1") && ls.contains("a2")).then_some(())
    });
}
