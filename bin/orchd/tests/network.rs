//! Replica networking end to end (issue 19), with real parts only: hosts are network
//! namespaces on a bridge; on each, an `orchd agent` (started with `nsenter --net`, so it
//! shares the mount namespace with its containerd and the CNI plugins) with
//! `--replica-network on` and a containerd of its own; `orchd manager` on the first host with
//! a cluster CIDR of the test's own (never the hosts' 10.x addresses). Containers are busybox
//! (`httpd` answering with its replica's name); connections are made from inside replicas
//! with `orchctl exec ... wget`, names resolved by the cluster DNS at the node's gateway.
//!
//! - three hosts: every replica on host B answers a replica on host A on its own IP and the
//!   one fixed port; `SERVICE:PORT` (DNS → virtual IP) reaches every ready replica; a replica
//!   made unready gets no new connection; two services on port 8080 share a node; `get
//!   replicas -o wide`, `describe node` and `get services` show the IPs, subnet and VIP;
//! - a dead host: its replicas come back elsewhere with new IPs, the VIP keeps answering,
//!   its routes go from the other hosts;
//! - deleting everything around an agent restart and a `kill -9`: no namespace, veth,
//!   host-local lease, route or nft rule is left;
//! - bad input: overlapping CIDRs, a CIDR holding a host address, an exhausted subnet,
//!   missing plugins, each refused with the value named and nothing set up.
#![cfg(feature = "containerd")]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::{netns_prefix, Cluster, NEEDS};
use common::*;
use orch_runtime::containerd::testing::busybox_image;
use orch_runtime::containerd::{Containerd, LocalContainerd};

/// The image every replica runs, imported into each host's containerd.
const IMAGE: &str = "localhost/orch-net-test/busybox:1";

/// The port every web replica listens on, in its own network namespace.
const PORT: u16 = 8080;

/// [`Cluster::new`] with the busybox [`IMAGE`] on every host.
fn cluster(n: usize, which: u8, extra: &[&str]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let parts = busybox_image(dir.path(), IMAGE).unwrap();
    Cluster::new(n, which, extra, &[parts])
}

/// A web service: `replicas` busybox httpd on [`PORT`] answering with their replica's name,
/// ready while `/www/ready` exists; `extra` is more of the spec (indented two spaces).
fn web(name: &str, replicas: u32, extra: &str) -> String {
    format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n{extra}  template:\n    image: {IMAGE}\n    command: [/bin/sh, -c, 'mkdir -p /www && echo $ORCH_REPLICA > /www/index.html && touch /www/ready && exec httpd -f -p {PORT} -h /www']\n    ports: [{{name: http, port: {PORT}}}]\n    stopGracePeriod: 1s\n    readinessProbe: {{exec: {{command: [/bin/sh, -c, 'test -f /www/ready']}}, period: 200ms, failureThreshold: 1}}\n"
    )
}

#[test]
fn replicas_on_three_hosts_reach_each_other_by_ip_and_through_the_virtual_ip() {
    if !require(NEEDS) {
        return;
    }
    let c = cluster(3, 1, &[]);
    c.apply("web", &web("web", 6, "  placement: {maxPerNode: 2}\n"));
    let reps = c.wait_ready("web", 6);
    let on = |node: &str| -> Vec<(String, String)> {
        reps.iter()
            .filter(|(_, (n, _))| n == node)
            .map(|(k, (_, ip))| (k.clone(), ip.clone()))
            .collect()
    };
    assert_eq!(on("h0").len(), 2, "{reps:?}");
    assert_eq!(on("h1").len(), 2, "{reps:?}");
    // Every replica has an address of its node's subnet, all different.
    let ips: BTreeSet<&String> = reps.values().map(|(_, ip)| ip).collect();
    assert_eq!(ips.len(), 6, "{reps:?}");
    for (name, (node, ip)) in &reps {
        let subnet: ipnet::Ipv4Net = c.wait_network_ready(node).parse().unwrap();
        assert!(
            subnet.contains(&ip.parse::<std::net::Ipv4Addr>().unwrap()),
            "{name} on {node}: {ip} not in {subnet}"
        );
    }

    // From a replica on host A, every replica on host B answers on its own IP and the port.
    let from = &on("h0")[0].0;
    for (name, ip) in on("h1").iter().chain(on("h2").iter()) {
        let body = c.reach(from, &format!("http://{ip}:{PORT}/"));
        assert_eq!(&body, name);
    }

    // By name: web → the virtual IP → every ready replica, over repeated connections.
    let vip = c.virtual_ip("web");
    let svc: ipnet::Ipv4Net = c.cidrs.1.parse().unwrap();
    assert!(
        svc.contains(&vip.parse::<std::net::Ipv4Addr>().unwrap()),
        "{vip}"
    );
    let looked_up = c
        .manager
        .ctl(&["exec", from, "--", "nslookup", "web.default.orch.local"]);
    let said = String::from_utf8_lossy(&looked_up.stdout);
    assert!(
        said.contains(&vip),
        "{said} {}",
        String::from_utf8_lossy(&looked_up.stderr)
    );
    let resolv = c
        .manager
        .ctl_ok(&["exec", from, "--", "cat", "/etc/resolv.conf"]);
    let gateway = format!("nameserver {}", ipnet_gateway(&c.wait_network_ready("h0")));
    assert!(resolv.contains(&gateway), "{resolv}");
    c.reaches_every(from, &format!("http://web:{PORT}/"), reps.keys());

    // A replica made unready gets no new connection from the moment it is not Ready.
    let (gone, (gone_node, _)) = reps.iter().nth(3).unwrap();
    c.manager
        .ctl_ok(&["exec", gone, "--", "/bin/busybox", "rm", "/www/ready"]);
    eventually(
        &format!("{gone} not ready"),
        Duration::from_secs(10),
        || (c.replicas_of("web")[gone].2 != "Ready").then_some(()),
    );
    for _ in 0..20 {
        let b = c
            .wget(from, &format!("http://{vip}:{PORT}/"))
            .expect("the VIP answers");
        assert_ne!(
            &b, gone,
            "an unready replica on {gone_node} got a new connection"
        );
    }

    // Two services that both listen on 8080 run on one node, each answering on its IP.
    c.apply(
        "api",
        &web("api", 1, "  placement: {nodeSelector: {host: h2}}\n"),
    );
    let api = c.wait_ready("api", 1);
    let (api_name, (api_node, api_ip)) = api.iter().next().unwrap();
    assert_eq!(api_node, "h2");
    let body = c.wget(from, &format!("http://{api_ip}:{PORT}/")).unwrap();
    assert_eq!(&body, api_name);
    for (name, ip) in on("h2") {
        assert_eq!(c.wget(from, &format!("http://{ip}:{PORT}/")), Some(name));
    }

    // What a user sees: IPs in `get replicas -o wide`, the subnet in `describe node`, the
    // virtual IP in `get services`.
    let wide = c.manager.ctl_ok(&["get", "replicas", "-o", "wide"]);
    for (_, ip) in reps.values() {
        assert!(wide.contains(ip.as_str()), "{wide}");
    }
    let subnet = c.wait_network_ready("h1");
    let described = c.manager.ctl_ok(&["describe", "node", "h1"]);
    assert!(described.contains(&subnet), "{described}");
    let services = c.manager.ctl_ok(&["get", "services"]);
    assert!(services.contains(&vip), "{services}");
}

#[test]
fn a_dead_hosts_replicas_come_back_elsewhere_with_new_ips_and_its_routes_go() {
    if !require(NEEDS) {
        return;
    }
    let mut c = cluster(3, 2, &[]);
    c.apply("web", &web("web", 3, "  placement: {maxPerNode: 2}\n"));
    let before = c.wait_ready("web", 3);
    let dead_subnet = c.wait_network_ready("h2");
    // Host 0 and 1 route to host 2's subnet.
    for i in [0, 1] {
        eventually("a route to h2's subnet", Duration::from_secs(20), || {
            c.routes(i).contains(&dead_subnet).then_some(())
        });
    }
    let vip = c.virtual_ip("web");
    // Make sure something runs on h2, then kill the host: agent, containerd, link.
    assert!(before.values().any(|(n, _)| n == "h2"), "{before:?}");
    c.agents[2].as_mut().unwrap().kill();
    c.containerds[2].stop_daemon();
    c.hosts.link(2, false);
    let after = eventually(
        "h2's replicas replaced elsewhere",
        Duration::from_secs(60),
        || {
            let r = c.wait_ready("web", 3);
            r.values().all(|(n, _)| n != "h2").then_some(r)
        },
    );
    let old_ips: BTreeSet<&String> = before
        .values()
        .filter(|(n, _)| n == "h2")
        .map(|(_, ip)| ip)
        .collect();
    for (name, (node, ip)) in &after {
        if !before.contains_key(name) {
            assert!(!old_ips.contains(ip), "{name} on {node} reused {ip}");
        }
    }
    let from = after.keys().next().unwrap();
    c.reaches_every(from, &format!("http://{vip}:{PORT}/"), after.keys());
    for i in [0, 1] {
        eventually("h2's route gone", Duration::from_secs(30), || {
            (!c.routes(i).contains(&dead_subnet)).then_some(())
        });
    }
}

/// What replica networking leaves on host `i` of `c` beyond the host itself: netns bind
/// mounts of this agent, veths, host-local leases, nft rules naming the cluster's ranges.
fn leftovers(c: &Cluster, i: usize) -> Vec<String> {
    let mut left = Vec::new();
    let data = c.tmp.path().join(format!("h{i}"));
    let prefix = netns_prefix(&data);
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    for l in String::from_utf8_lossy(&netns.stdout).lines() {
        if l.starts_with(&prefix) {
            left.push(format!("netns {l}"));
        }
    }
    let veths = c.hosts.ip(i, &["-o", "link", "show", "type", "veth"]);
    for l in veths.lines() {
        // The host's own link to the bridge is not ours.
        if !l.contains(&c.hosts.uplink(i)) {
            left.push(format!("veth {l}"));
        }
    }
    left.extend(leases(&data.join("network")));
    // Rules naming a range (masquerading, hairpin for the node's subnet) stay with the node;
    // a rule naming one address of the ranges (a virtual IP, a replica) is left over.
    let ranges: Vec<ipnet::Ipv4Net> = [&c.cidrs.0, &c.cidrs.1]
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
    let nft = c.hosts.run(i, "nft", &["list", "ruleset"]);
    for l in String::from_utf8_lossy(&nft.stdout).lines() {
        let names_one = l
            .split(|ch: char| !(ch.is_ascii_digit() || ch == '.' || ch == '/'))
            .filter_map(|w| w.parse::<std::net::Ipv4Addr>().ok())
            .any(|a| ranges.iter().any(|r| r.contains(&a)));
        if names_one {
            left.push(format!("host {i} nft: {}", l.trim()));
        }
    }
    left
}

/// The first address of `subnet` (the replicas' gateway).
fn ipnet_gateway(subnet: &str) -> std::net::Ipv4Addr {
    let net: ipnet::Ipv4Net = subnet.parse().unwrap();
    net.hosts().next().unwrap()
}

/// host-local's lease files (named by IP) under `dir`.
fn leases(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from(dir)];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e
                .file_name()
                .to_string_lossy()
                .parse::<std::net::Ipv4Addr>()
                .is_ok()
            {
                out.push(format!("lease {}", p.display()));
            }
        }
    }
    out
}

#[test]
fn deleting_everything_around_an_agent_restart_and_a_kill_leaves_nothing() {
    if !require(NEEDS) {
        return;
    }
    let mut c = cluster(2, 3, &[]);
    c.apply("web", &web("web", 4, "  placement: {maxPerNode: 2}\n"));
    c.wait_ready("web", 4);
    c.virtual_ip("web");
    // Restart the agent of host 1 while the service is being deleted.
    c.manager.ctl_ok(&["delete", "service", "web"]);
    c.agents[1] = None;
    c.agents[1] = Some(c.start_agent(1, &[]));
    eventually("every replica gone", Duration::from_secs(60), || {
        c.manager.replicas().is_empty().then_some(())
    });
    // Again, and kill -9 the agent of host 0 mid-way; it comes back.
    c.apply("web", &web("web", 4, "  placement: {maxPerNode: 2}\n"));
    c.wait_ready("web", 4);
    c.manager.ctl_ok(&["delete", "service", "web"]);
    c.agents[0].as_mut().unwrap().kill();
    c.agents[0] = Some(c.start_agent(0, &[]));
    eventually("every replica gone", Duration::from_secs(60), || {
        c.manager.replicas().is_empty().then_some(())
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<String> = (0..2).flat_map(|i| leftovers(&c, i)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind after 30 s: {left:#?}\n{}",
            c.diagnose()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Removing a node takes its routes from the other.
    let subnet1 = c.wait_network_ready("h1");
    assert!(c.routes(0).contains(&subnet1));
    c.agents[1] = None;
    c.manager.ctl_ok(&["delete", "node", "h1"]);
    eventually("h1's route gone from h0", Duration::from_secs(30), || {
        (!c.routes(0).contains(&subnet1)).then_some(())
    });
}

/// `orchd ARGS...` with the manager's state in `dir` in host `netns`: its output.
fn orchd_in(netns: &str, dir: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = netns_command(Some(netns), env!("CARGO_BIN_EXE_orchd"));
    let mut child = cmd
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--socket")
        .arg(dir.join("orchd.sock"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = eventually("orchd refuses", Duration::from_secs(20), || {
        child.try_wait().unwrap()
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    std::process::Output {
        status,
        stdout: Vec::new(),
        stderr: stderr.into_bytes(),
    }
}

#[test]
fn bad_cidrs_are_refused_naming_the_value_and_nothing_is_set_up() {
    if !require(NEEDS) {
        return;
    }
    let hosts = Hosts::new(1);
    let tmp = tempfile::tempdir().unwrap();
    let listen = format!("{}:7443", hosts.address(0));
    let host_cidr = format!("{}.0/24", hosts.address(0).rsplit_once('.').unwrap().0);
    for (args, says) in [
        (
            vec![
                "--cluster-cidr",
                "10.96.0.0/12",
                "--service-cidr",
                "10.96.0.0/16",
            ],
            vec!["10.96.0.0/12", "10.96.0.0/16", "disjoint"],
        ),
        (
            vec!["--cluster-cidr", host_cidr.as_str()],
            vec![
                host_cidr.as_str(),
                hosts.address(0).as_str(),
                "choose a range",
            ],
        ),
        (
            vec!["--cluster-cidr", "10.244.1.0/16"],
            vec!["10.244.1.0/16", "10.244.0.0/16"],
        ),
        (
            vec!["--cluster-cidr", "10.244.0.0"],
            vec!["10.244.0.0", "ADDRESS/PREFIX"],
        ),
        (vec!["--node-subnet-size", "30"], vec!["/30", "/28"]),
    ] {
        let mut all = vec!["manager", "--listen", listen.as_str()];
        all.extend(args.iter());
        let out = orchd_in(&hosts.names[0], tmp.path(), &all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        for s in says {
            assert!(err.contains(s), "{args:?}: {s:?} not in {err}");
        }
    }
    assert!(hosts.ip(0, &["link", "show", "orch0"]).is_empty());
    assert!(!tmp.path().join("data").join("network").exists());
}

#[test]
fn missing_plugins_are_named_and_an_exhausted_subnet_says_so() {
    if !require(NEEDS) {
        return;
    }
    // Missing plugins: `--replica-network on` refuses to start, naming the directory.
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("no-plugins");
    std::fs::create_dir_all(&empty).unwrap();
    let c = cluster(1, 4, &[]);
    let data = c.tmp.path().join("h9");
    let mut refused = AgentProc::start_in(
        Some(&c.hosts.names[0]),
        c.tmp.path(),
        &c.addr,
        "h9",
        Some(&c.token),
        &[
            "--advertise-address",
            &c.hosts.address(0),
            "--runtime",
            "containerd",
            "--containerd-socket",
            &c.containerds[0].socket().display().to_string(),
            "--replica-network",
            "on",
            "--cni-bin-dir",
            empty.to_str().unwrap(),
            "--dns-listen",
            "off",
        ],
    );
    assert!(!refused.wait(Duration::from_secs(20)).success());
    let log = refused.log();
    assert!(
        log.contains(empty.to_str().unwrap()) && log.contains("bridge"),
        "{log}"
    );
    assert!(!data.join("network").exists(), "half set up");
    assert!(
        c.hosts
            .ip(0, &["-o", "link", "show", "type", "veth"])
            .lines()
            .count()
            == 1
    );

    // An exhausted subnet: a /28 holds 13 replicas besides the gateway; the rest say why.
    drop(c);
    let c = cluster(1, 5, &["--node-subnet-size", "28"]);
    c.apply("many", &web("many", 15, ""));
    c.wait_ready("many", 13);
    let msg = eventually(
        "the rest say the subnet is full",
        Duration::from_secs(30),
        || {
            let out = c.manager.ctl_ok(&["describe", "service", "many"]);
            let subnet = c.wait_network_ready("h0");
            (out.contains(&subnet) && out.to_ascii_lowercase().contains("no address"))
                .then_some(out)
        },
    );
    assert!(msg.contains("/28"), "{msg}");
}

/// `orchd up` in host `netns` on containerd `ctd` with `extra` flags: the child, stdout read
/// line by line into the returned buffer by a thread.
fn up_in(
    netns: &str,
    dir: &Path,
    ctd: &LocalContainerd,
    extra: &[&str],
) -> (
    std::process::Child,
    std::sync::Arc<std::sync::Mutex<String>>,
) {
    let mut up = netns_command(Some(netns), env!("CARGO_BIN_EXE_orchd"))
        .arg("up")
        .arg(dir.join("app"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args([
            "--refresh-ms",
            "100",
            "--runtime",
            "containerd",
            "--dns-listen",
            "off",
        ])
        .arg("--containerd-socket")
        .arg(ctd.socket())
        .args(["--containerd-namespace", &ctd.namespace()])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stdout = up.stdout.take().unwrap();
    let sink = out.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    (up, out)
}

#[test]
fn orchd_up_says_whether_replicas_got_their_own_network() {
    if !require(NEEDS) {
        return;
    }
    let hosts = Hosts::new(1);
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ctd = rt.block_on(LocalContainerd::start()).expect("containerd");
    let client = rt
        .block_on(Containerd::connect(ctd.socket(), &ctd.namespace()))
        .unwrap();
    let parts = busybox_image(&ctd.scratch().join("img"), IMAGE).unwrap();
    rt.block_on(client.import(&parts, "overlayfs")).unwrap();
    std::fs::create_dir_all(tmp.path().join("app")).unwrap();
    write(&tmp.path().join("app"), "web.yaml", &web("web", 2, ""));
    let cidrs = [
        "--cluster-cidr",
        "172.26.0.0/16",
        "--service-cidr",
        "172.36.0.0/16",
    ];

    // Plugins present: containers get their own IPs from the node's subnet.
    let (mut up, out) = up_in(&hosts.names[0], tmp.path(), &ctd, &cidrs);
    let header = eventually("the header", Duration::from_secs(20), || {
        let s = out.lock().unwrap().clone();
        s.contains("replica network:").then_some(s)
    });
    assert!(
        header.contains("replica network: containers get their own IP"),
        "{header}"
    );
    let d = Daemon {
        dir: tmp.path().to_path_buf(),
        socket: tmp.path().join("state").join("orchd.sock"),
        child: None,
    };
    eventually("2 replicas with own IPs", Duration::from_secs(60), || {
        let reps = d.replicas();
        (reps.len() == 2
            && reps.iter().all(|r| {
                r["status"]["phase"] == "Ready"
                    && r["status"]["ip"]
                        .as_str()
                        .is_some_and(|ip| ip.starts_with("172.26."))
            }))
        .then_some(())
    });
    signal_and_wait(&mut up);

    // No plugins: the host network, and the header says why.
    let empty = tmp.path().join("no-plugins");
    std::fs::create_dir_all(&empty).unwrap();
    let mut args = cidrs.to_vec();
    args.extend(["--cni-bin-dir", empty.to_str().unwrap()]);
    let (mut up, out) = up_in(&hosts.names[0], tmp.path(), &ctd, &args);
    let header = eventually("the header", Duration::from_secs(20), || {
        let s = out.lock().unwrap().clone();
        s.contains("replica network:").then_some(s)
    });
    assert!(
        header.contains("replica network: host network (")
            && header.contains("missing")
            && header.contains(empty.to_str().unwrap()),
        "{header}"
    );
    signal_and_wait(&mut up);
}

/// SIGINT (Ctrl-C) to `orchd up`, then waits for it to stop everything and exit.
fn signal_and_wait(up: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status();
    let status = eventually("orchd up exits", Duration::from_secs(30), || {
        up.try_wait().unwrap()
    });
    assert!(status.success(), "{status}");
}
