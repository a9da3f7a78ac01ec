//! A cluster of real parts for the multi-host tests: hosts are network namespaces on a bridge
//! ([`Hosts`]); on each, an `orchd agent` (started with `nsenter --net`, so it shares the mount
//! namespace with its containerd and the CNI plugins) with `--replica-network on` and a
//! containerd of its own; `orchd manager` on the first host with a cluster CIDR of the test's
//! own (never the hosts' 10.x addresses). Connections are made from inside replicas with
//! `orchctl exec ... wget`, names resolved by the cluster DNS at the node's gateway.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use orch_runtime::containerd::{Containerd, ImageParts, LocalContainerd};

use super::*;

/// What a [`Cluster`] needs: root, `ip` and `nsenter` for the hosts, nft, containerd and
/// runc, busybox for the test images, the CNI plugins of replica networking.
pub const NEEDS: &[&str] = &[
    "root",
    "ip",
    "nsenter",
    "nft",
    "containerd",
    "runc",
    "/bin/busybox",
    "/usr/lib/cni/bridge",
    "/usr/lib/cni/host-local",
    "/usr/lib/cni/loopback",
    "/usr/lib/cni/portmap",
];

/// A cluster of `orchd manager` and one agent per host, each with its containerd.
pub struct Cluster {
    // Dropped in order: agents, then their containerds, the manager, the hosts.
    /// The agents, `None` while a test has one stopped.
    pub agents: Vec<Option<AgentProc>>,
    /// Each host's containerd.
    pub containerds: Vec<LocalContainerd>,
    /// `orchd manager` on host 0; `manager.ctl` is orchctl as an administrator runs it.
    pub manager: Daemon,
    /// The manager's cluster address.
    pub addr: String,
    /// The worker join token.
    pub token: String,
    /// The hosts.
    pub hosts: Hosts,
    /// State of the manager and the agents (`hI`).
    pub tmp: tempfile::TempDir,
    /// (cluster CIDR, service CIDR) of this cluster.
    pub cidrs: (String, String),
    /// For the containerd clients.
    pub rt: tokio::runtime::Runtime,
    /// More flags for every agent.
    pub agent_args: Vec<String>,
}

impl Drop for Cluster {
    /// Agents and containerds stop (SIGTERM leaves replicas running, as in production; the
    /// containerd's shims and containers are killed with it), then the namespaces the agents
    /// bind-mounted under /run/netns — the one thing of theirs outside the hosts' namespaces
    /// and the temp dir — are removed.
    fn drop(&mut self) {
        let prefixes: Vec<String> = (0..self.hosts.names.len())
            .chain(std::iter::once(9))
            .map(|i| netns_prefix(&self.tmp.path().join(format!("h{i}"))))
            .collect();
        self.agents.clear();
        self.containerds.clear();
        remove_netns(&prefixes);
    }
}

/// The name prefix of the namespaces of the agent with data dir `data`.
pub fn netns_prefix(data: &Path) -> String {
    let config = orch_net::NetConfig::new("h", [0, 0, 0, 0].into(), data.join("network"));
    orch_net::CniNetwork::new(config)
        .unwrap()
        .netns_prefix()
        .to_string()
}

/// Removes the namespaces under /run/netns named with any of `prefixes`.
fn remove_netns(prefixes: &[String]) {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &name])
                .status();
        }
    }
}

impl Cluster {
    /// `n` hosts; the manager on host 0 with `--cluster-cidr 172.N.0.0/16` (N from `which`)
    /// and `extra` flags; an agent on every host, node `hI`, labelled `host=hI`, with every
    /// image of `images` imported into its containerd.
    pub fn new(n: usize, which: u8, extra: &[&str], images: &[ImageParts]) -> Cluster {
        Cluster::with_agent_args(n, which, extra, &[], images)
    }

    /// [`Cluster::new`] with `agent_args` for every agent.
    pub fn with_agent_args(
        n: usize,
        which: u8,
        extra: &[&str],
        agent_args: &[&str],
        images: &[ImageParts],
    ) -> Cluster {
        let hosts = Hosts::new(n);
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let addr = format!("{}:7443", hosts.address(0));
        let cidrs = (
            format!("172.{}.0.0/16", 20 + which),
            format!("172.{}.0.0/16", 30 + which),
        );
        let mut args = vec![
            "--listen",
            &addr,
            "--cluster-cidr",
            &cidrs.0,
            "--service-cidr",
            &cidrs.1,
            "--node-grace",
            "1s",
            "--node-replace-timeout",
            "3s",
        ];
        args.extend_from_slice(extra);
        let manager = Daemon::start_in(Some(&hosts.names[0]), tmp.path(), &["manager"], &args);
        let token = token_of(tmp.path());
        let mut c = Cluster {
            agents: Vec::new(),
            containerds: Vec::new(),
            manager,
            addr,
            token,
            hosts,
            tmp,
            cidrs,
            rt,
            agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
        };
        for i in 0..n {
            let ctd = c.rt.block_on(LocalContainerd::start()).expect("containerd");
            let ns = ctd.namespace();
            let client =
                c.rt.block_on(Containerd::connect(ctd.socket(), &ns))
                    .unwrap();
            for parts in images {
                c.rt.block_on(client.import(parts, "overlayfs"))
                    .unwrap_or_else(|e| panic!("import {}: {e}", parts.name));
            }
            c.containerds.push(ctd);
            let a = c.start_agent(i, &[]);
            c.agents.push(Some(a));
        }
        let names: Vec<String> = (0..n).map(|i| format!("h{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        c.manager.wait_for_nodes(&names);
        for name in &names {
            c.wait_network_ready(name);
        }
        c
    }

    /// Starts the agent of host `i` (again), with `extra` flags.
    pub fn start_agent(&self, i: usize, extra: &[&str]) -> AgentProc {
        let ctd = &self.containerds[i];
        let socket = ctd.socket().display().to_string();
        let ns = ctd.namespace();
        let adv = self.hosts.address(i);
        let label = format!("host=h{i}");
        let mut args = vec![
            "--advertise-address",
            &adv,
            "--labels",
            &label,
            "--runtime",
            "containerd",
            "--containerd-socket",
            &socket,
            "--containerd-namespace",
            &ns,
            "--heartbeat",
            "300ms",
        ];
        if !extra.iter().any(|a| a.starts_with("--replica-network")) {
            args.extend(["--replica-network", "on"]);
        }
        args.extend(self.agent_args.iter().map(String::as_str));
        args.extend_from_slice(extra);
        AgentProc::start_in(
            Some(&self.hosts.names[i]),
            self.tmp.path(),
            &self.addr,
            &format!("h{i}"),
            Some(&self.token),
            &args,
        )
    }

    /// The node object of `node`.
    pub fn node(&self, node: &str) -> serde_json::Value {
        let out = self.manager.ctl_ok(&["get", "node", node, "-o", "json"]);
        serde_json::from_str(&out).unwrap()
    }

    /// Waits until `node` has a subnet and says its network is ready; the subnet.
    pub fn wait_network_ready(&self, node: &str) -> String {
        eventually(
            &format!("{node}'s network ready"),
            Duration::from_secs(30),
            || {
                let n = self.node(node);
                let subnet = n["spec"]["network"]["subnet"].as_str()?.to_string();
                (n["status"]["network"]["ready"] == true).then_some(subnet)
            },
        )
    }

    pub fn apply(&self, name: &str, text: &str) {
        let f = write(self.tmp.path(), &format!("{name}.yaml"), text);
        self.manager.ctl_ok(&["apply", "-f", f.to_str().unwrap()]);
    }

    /// The replicas of `service`: name → (node, ip, phase).
    pub fn replicas_of(&self, service: &str) -> BTreeMap<String, (String, String, String)> {
        self.manager
            .replicas()
            .into_iter()
            .filter(|r| r["spec"]["service"] == service)
            .map(|r| {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
                (
                    s(&r["metadata"]["name"]),
                    (
                        s(&r["spec"]["node"]),
                        s(&r["status"]["ip"]),
                        s(&r["status"]["phase"]),
                    ),
                )
            })
            .collect()
    }

    /// Waits until `service` has `n` Ready replicas with IPs; name → (node, ip).
    pub fn wait_ready(&self, service: &str, n: usize) -> BTreeMap<String, (String, String)> {
        eventually(
            &format!("{n} replicas of {service} ready with IPs"),
            Duration::from_secs(60),
            || {
                let r = self.replicas_of(service);
                let ready: BTreeMap<_, _> = r
                    .into_iter()
                    .filter(|(_, (_, ip, phase))| phase == "Ready" && !ip.is_empty())
                    .map(|(k, (node, ip, _))| (k, (node, ip)))
                    .collect();
                (ready.len() == n).then_some(ready)
            },
        )
    }

    /// `wget [-q] -O - URL` inside replica `from` (5 s at most): what orchctl exec said.
    fn exec_wget(&self, from: &str, url: &str, quiet: bool) -> std::process::Output {
        let mut args = vec!["exec", "--timeout", "5s", from, "--", "/bin/wget"];
        if quiet {
            args.push("-q");
        }
        args.extend(["-O", "-", url]);
        self.manager.ctl(&args)
    }

    /// `wget -O - URL` inside replica `from`: the body, or `None`.
    pub fn wget(&self, from: &str, url: &str) -> Option<String> {
        let out = self.exec_wget(from, url, true);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Connects to `url` from replica `from` again and again until every one of `replicas`
    /// has answered (30 s); an answer from any other replica fails the test.
    pub fn reaches_every<'a>(
        &self,
        from: &str,
        url: &str,
        replicas: impl Iterator<Item = &'a String>,
    ) {
        let all: BTreeSet<String> = replicas.cloned().collect();
        let mut seen = BTreeSet::new();
        eventually(
            &format!("{url} reaches every replica"),
            Duration::from_secs(30),
            || {
                if let Some(b) = self.wget(from, url) {
                    assert!(all.contains(&b), "{b} is not one of {all:?}");
                    seen.insert(b);
                }
                (seen == all).then_some(())
            },
        );
    }

    /// The service's virtual IP.
    pub fn virtual_ip(&self, service: &str) -> String {
        eventually(
            &format!("{service} has a virtual IP"),
            Duration::from_secs(20),
            || {
                let out = self
                    .manager
                    .ctl_ok(&["get", "service", service, "-o", "json"]);
                let v: serde_json::Value = serde_json::from_str(&out).ok()?;
                v["status"]["virtualIp"].as_str().map(str::to_string)
            },
        )
    }

    /// What the hosts' networks look like, for a failure message: addresses, routes, VXLAN
    /// neighbours and FDB entries, the last agent log lines.
    pub fn diagnose(&self) -> String {
        let mut out = String::new();
        for i in 0..self.hosts.names.len() {
            out += &format!("--- host {i} ({})\n", self.hosts.names[i]);
            for args in [
                &["-br", "addr"][..],
                &["route"],
                &["neigh", "show", "dev", "orch.vxlan"],
                &["-d", "link", "show", "orch.vxlan"],
            ] {
                out += &self.hosts.ip(i, args);
            }
            let fdb = self
                .hosts
                .run(i, "bridge", &["fdb", "show", "dev", "orch.vxlan"]);
            out += &String::from_utf8_lossy(&fdb.stdout);
            if let Some(a) = &self.agents[i] {
                let log = a.log();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                out += &tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                out += "\n";
            }
        }
        out
    }

    /// [`Cluster::wget`] until it answers (20 s), else fails with what the exec said and
    /// [`Cluster::diagnose`].
    pub fn reach(&self, from: &str, url: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(body) = self.wget(from, url) {
                return body;
            }
            if std::time::Instant::now() > deadline {
                let loud = self.exec_wget(from, url, false);
                let inside = self
                    .manager
                    .ctl(&["exec", from, "--", "/bin/busybox", "ip", "route"]);
                let from_host: Vec<String> = (0..self.hosts.names.len())
                    .map(|i| {
                        let o = self.hosts.run(
                            i,
                            "timeout",
                            &["5", "/bin/busybox", "wget", "-O", "-", url],
                        );
                        format!(
                            "host {i}: {:?} {}",
                            o.status,
                            String::from_utf8_lossy(&o.stderr)
                        )
                    })
                    .collect();
                let sysctl = self.hosts.run(
                    0,
                    "sysctl",
                    &["net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"],
                );
                panic!(
                    "{from} cannot reach {url}: {} {}\nroutes inside: {}{}\nfrom the hosts: {from_host:?}\nsysctl: {}{}\n{}",
                    String::from_utf8_lossy(&loud.stdout),
                    String::from_utf8_lossy(&loud.stderr),
                    String::from_utf8_lossy(&inside.stdout),
                    String::from_utf8_lossy(&inside.stderr),
                    String::from_utf8_lossy(&sysctl.stdout),
                    String::from_utf8_lossy(&sysctl.stderr),
                    self.diagnose()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `ip -n HOST route` of host `i`.
    pub fn routes(&self, i: usize) -> String {
        self.hosts.ip(i, &["route"])
    }
}
