//! [`Hosts`]: test hosts on one machine, each a network namespace with a veth into a bridge of
//! its own in the root namespace (made with `ip`; needs root).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What [`Hosts`] needs: root (to make network namespaces, bridges and veths) and `ip`.
pub const NETNS: &[&str] = &["root", "ip"];

/// Runs `ip args`, panicking with its stderr when it fails; its stdout.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Hosts on one bridge: a network namespace per host with a veth into a bridge of its own,
/// addresses `10.(200+S).N.(i+1)/24` (S counts the sets of this test process, N comes from its
/// pid), the bridge itself `.254` so the test reaches them. Everything is removed on drop.
pub struct Hosts {
    /// The bridge in the root namespace.
    pub bridge: String,
    /// The hosts' namespace names (`ip netns`).
    pub names: Vec<String>,
    prefix: String,
    subnet: String,
}

impl Hosts {
    /// Creates `n` hosts.
    pub fn new(n: usize) -> Hosts {
        static SETS: AtomicUsize = AtomicUsize::new(0);
        let set = SETS.fetch_add(1, Ordering::Relaxed) % 50;
        let id = std::process::id() % 10_000;
        let prefix = format!("o{id}s{set}");
        let bridge = format!("{prefix}br");
        let subnet = format!("10.{}.{}", 200 + set, id % 250);
        let hosts = Hosts {
            bridge: bridge.clone(),
            names: (0..n).map(|i| format!("{prefix}h{i}")).collect(),
            prefix: prefix.clone(),
            subnet: subnet.clone(),
        };
        ip(&["link", "add", &bridge, "type", "bridge"]);
        // The test itself (in the root namespace) reaches the hosts through the bridge.
        ip(&["addr", "add", &format!("{subnet}.254/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        for (i, ns) in hosts.names.iter().enumerate() {
            let (host_end, ns_end) = (hosts.uplink_root_end(i), hosts.uplink(i));
            ip(&["netns", "add", ns]);
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
            ]);
            ip(&["link", "set", &host_end, "master", &bridge, "up"]);
            ip(&["link", "set", &ns_end, "netns", ns]);
            let addr = format!("{}/24", hosts.address(i));
            ip(&["-n", ns, "addr", "add", &addr, "dev", &ns_end]);
            ip(&["-n", ns, "link", "set", &ns_end, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    /// Host `i`'s address.
    pub fn address(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    /// Host `i`'s network namespace file (`/run/netns/NAME`).
    pub fn netns(&self, i: usize) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.names[i])
    }

    /// The name of host `i`'s link to the bridge, inside its namespace.
    pub fn uplink(&self, i: usize) -> String {
        format!("{}p{i}", self.prefix)
    }

    fn uplink_root_end(&self, i: usize) -> String {
        format!("{}v{i}", self.prefix)
    }

    /// Cuts (or restores) host `i`'s link to the bridge.
    pub fn link(&self, i: usize, up: bool) {
        let end = self.uplink_root_end(i);
        ip(&["link", "set", &end, if up { "up" } else { "down" }]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for (i, ns) in self.names.iter().enumerate() {
            let _ = Command::new("ip")
                .args(["link", "del", &self.uplink_root_end(i)])
                .status();
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}
