//! CNI: the conflist orch-net writes, and running its plugins the standard way (CNI_* in the
//! environment, the network configuration on stdin, a CNI 1.0.0 result or error on stdout).

use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use crate::exec;

/// The CNI version orch-net speaks.
pub const CNI_VERSION: &str = "1.0.0";
/// The network's name in the conflist.
pub const NETWORK_NAME: &str = "orch";

/// What the conflist is made from.
pub(crate) struct ConfList<'a> {
    pub bridge: &'a str,
    pub subnet: Ipv4Net,
    pub gateway: std::net::Ipv4Addr,
    pub mtu: u32,
    pub ipam_dir: &'a Path,
}

impl ConfList<'_> {
    /// The conflist: bridge (host-local IPAM) then portmap.
    pub fn json(&self) -> Value {
        json!({
            "cniVersion": CNI_VERSION,
            "name": NETWORK_NAME,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "mtu": self.mtu,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{
                            "subnet": self.subnet.to_string(),
                            "gateway": self.gateway.to_string(),
                        }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": self.ipam_dir,
                    },
                },
                {
                    "type": "portmap",
                    "capabilities": { "portMappings": true },
                    "snat": true,
                },
            ],
        })
    }
}

/// One run of a plugin: what to do to which container.
pub(crate) struct Invocation<'a> {
    pub bin_dir: &'a Path,
    pub command: &'a str,
    pub container: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
}

/// A plugin's type (`bridge`).
pub(crate) fn plugin_type(conf: &Value) -> &str {
    conf.get("type").and_then(Value::as_str).unwrap_or("")
}

/// The path of plugin `name` in `bin_dir`, if it is an executable file there.
pub(crate) fn find_plugin(bin_dir: &Path, name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = bin_dir.join(name);
    let meta = std::fs::metadata(&path).ok()?;
    (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(path)
}

/// The network configuration a plugin of the list gets on stdin: its own object with the
/// list's `name` and `cniVersion`, the previous plugin's result, and the runtime's
/// `portMappings` when the plugin declares that capability.
pub(crate) fn netconf(plugin: &Value, prev: Option<&Value>, port_mappings: &Value) -> Value {
    let mut conf = plugin.clone();
    if let Some(obj) = conf.as_object_mut() {
        obj.insert("name".into(), json!(NETWORK_NAME));
        obj.insert("cniVersion".into(), json!(CNI_VERSION));
        if let Some(prev) = prev {
            obj.insert("prevResult".into(), prev.clone());
        }
        let wants_ports = plugin
            .pointer("/capabilities/portMappings")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if wants_ports {
            obj.insert(
                "runtimeConfig".into(),
                json!({ "portMappings": port_mappings }),
            );
        }
    }
    conf
}

/// Runs the plugin `conf` names with `conf` on stdin; its result (ADD) or `Null`.
pub(crate) async fn invoke(inv: &Invocation<'_>, conf: &Value) -> Result<Value, String> {
    let kind = plugin_type(conf);
    let path = find_plugin(inv.bin_dir, kind).ok_or_else(|| {
        format!(
            "CNI plugin {kind} not found in {} (Debian: apt-get install containernetworking-plugins)",
            inv.bin_dir.display()
        )
    })?;
    let netns = inv.netns.to_string_lossy();
    let cni_path = inv.bin_dir.to_string_lossy();
    let env = [
        ("CNI_COMMAND", inv.command),
        ("CNI_CONTAINERID", inv.container),
        ("CNI_NETNS", &*netns),
        ("CNI_IFNAME", inv.ifname),
        ("CNI_PATH", &*cni_path),
    ];
    let input = serde_json::to_vec(conf).map_err(|e| format!("CNI config: {e}"))?;
    let out = exec::run(&path, &[], &env, &input).await?;
    let what = format!("CNI plugin {kind} ({} {})", inv.command, inv.container);
    if !out.success {
        return Err(error_message(&what, &out.stdout, &out.stderr));
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{what} printed a result that is not JSON: {e}"))
}

/// A plugin's error JSON (`{code, msg, details}`) as a message naming the plugin.
pub(crate) fn error_message(what: &str, stdout: &[u8], stderr: &str) -> String {
    match serde_json::from_slice::<Value>(stdout) {
        Ok(v) if v.get("msg").is_some() => {
            let code = v.get("code").and_then(Value::as_u64).unwrap_or(0);
            let msg = v.get("msg").and_then(Value::as_str).unwrap_or("");
            let details = v.get("details").and_then(Value::as_str).unwrap_or("");
            let details = match details.is_empty() {
                true => String::new(),
                false => format!(" ({details})"),
            };
            format!("{what} failed with code {code}: {msg}{details}")
        }
        _ => format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(stdout).trim(),
            stderr
        ),
    }
}

/// The first IPv4 address of a CNI 1.0.0 result (`ips[].address`, `10.244.3.2/24`).
pub(crate) fn result_ip(result: &Value) -> Option<String> {
    result
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|ip| ip.get("address")?.as_str())
        .filter_map(|a| a.split('/').next())
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_string)
}

/// Whether a plugin's failure says the subnet has no address left (host-local's message).
pub(crate) fn is_exhausted(message: &str) -> bool {
    message.contains("no IP addresses available")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chained_plugins_get_name_version_prev_result_and_port_mappings() {
        let list = ConfList {
            bridge: "orch0",
            subnet: "10.244.3.0/24".parse().unwrap(),
            gateway: "10.244.3.1".parse().unwrap(),
            mtu: 1450,
            ipam_dir: Path::new("/var/lib/orch/network/cni/ipam"),
        }
        .json();
        let plugins = list["plugins"].as_array().unwrap();
        assert_eq!(plugins[0]["ipam"]["ranges"][0][0]["gateway"], "10.244.3.1");
        assert_eq!(plugins[0]["mtu"], 1450);
        let ports = json!([{ "hostPort": 8080, "containerPort": 80, "protocol": "tcp" }]);
        let bridge = netconf(&plugins[0], None, &ports);
        assert_eq!(bridge["name"], "orch");
        assert_eq!(bridge["cniVersion"], CNI_VERSION);
        assert!(bridge.get("runtimeConfig").is_none());
        assert!(bridge.get("prevResult").is_none());
        let prev = json!({ "ips": [{ "address": "10.244.3.2/24" }] });
        let portmap = netconf(&plugins[1], Some(&prev), &ports);
        assert_eq!(portmap["runtimeConfig"]["portMappings"], ports);
        assert_eq!(
            result_ip(&portmap["prevResult"]).as_deref(),
            Some("10.244.3.2")
        );
    }

    #[test]
    fn errors_name_the_plugin() {
        let out = br#"{"code": 11, "msg": "failed to allocate", "details": "no IP addresses available in range set"}"#;
        let m = error_message("CNI plugin bridge (ADD x)", out, "");
        assert_eq!(
            m,
            "CNI plugin bridge (ADD x) failed with code 11: failed to allocate (no IP addresses available in range set)"
        );
        assert!(is_exhausted(&m));
        let m = error_message("CNI plugin bridge (ADD x)", b"", "boom");
        assert!(m.ends_with("failed: boom"));
    }
}
