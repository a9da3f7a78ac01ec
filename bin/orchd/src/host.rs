//! Facts about this machine and the assembly of a node: capacity detection, the process
//! runtime, discovery, and the agent configuration.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use orch_core::model::object::{EnvVar, Resources};
use orch_core::model::quantity::{Cpu, Memory};
use orch_core::AgentConfig;

/// Sets up `tracing` output in `format` (`text` or `json`); `RUST_LOG` overrides the level.
pub fn init_logging(format: &str, default_level: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "text" => builder.init(),
        "json" => builder.json().init(),
        other => anyhow::bail!("--log-format: invalid value {other:?}: allowed: text, json"),
    }
    Ok(())
}

/// CPU cores and memory of this machine.
pub fn capacity() -> Resources {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024);
    Resources {
        cpu: Some(Cpu(cpus * 1000)),
        memory: mem.map(Memory),
    }
}

/// This machine's host name as a node name (a DNS-1123 label), or `node-1`.
pub fn default_node_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = raw
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = name.trim_matches('-').chars().take(63).collect::<String>();
    if orch_core::model::validate::dns1123_label(&name).is_ok() {
        name
    } else {
        "node-1".into()
    }
}

/// Parses `k=v,k2=v2` node labels.
pub fn parse_labels(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--labels: invalid value {part:?}: expected key=value"))?;
        orch_core::model::validate::label_key(k)
            .map_err(|e| anyhow::anyhow!("--labels: invalid key {k:?}: {e}"))?;
        orch_core::model::validate::label_value(v)
            .map_err(|e| anyhow::anyhow!("--labels: invalid value {v:?} for {k}: {e}"))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Parses `--taints key=value:Effect,key:Effect` (Effect: NoSchedule or PreferNoSchedule).
pub fn parse_taints(s: &str) -> anyhow::Result<Vec<orch_core::model::object::Taint>> {
    use orch_core::model::object::{Taint, TaintEffect};
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let bad = |why: &str| {
            anyhow::anyhow!(
                "--taints: invalid value {part:?}: {why}; expected key=value:Effect or key:Effect, Effect NoSchedule or PreferNoSchedule"
            )
        };
        let (kv, effect) = part.rsplit_once(':').ok_or_else(|| bad("no :Effect"))?;
        let effect = match effect {
            "NoSchedule" => TaintEffect::NoSchedule,
            "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
            _ => return Err(bad(&format!("unknown effect {effect:?}"))),
        };
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        orch_core::model::validate::label_key(key)
            .map_err(|e| bad(&format!("key {key:?}: {e}")))?;
        orch_core::model::validate::label_value(value)
            .map_err(|e| bad(&format!("value {value:?}: {e}")))?;
        out.push(Taint {
            key: key.into(),
            value: value.into(),
            effect,
        });
    }
    Ok(out)
}

/// The process runtime rooted at `dir`, finding bare commands next to this executable first.
pub async fn process_runtime(
    dir: &Path,
    host_ip: Option<&str>,
) -> anyhow::Result<Arc<orch_runtime::ProcessRuntime>> {
    let mut search = Vec::new();
    let exe = std::env::current_exe().ok();
    if let Some(exe_dir) = exe.as_ref().and_then(|p| p.parent().map(Path::to_path_buf)) {
        search.push(exe_dir);
    }
    let mut config = orch_runtime::ProcessConfig {
        search_path: search,
        // Each workload's output goes through `orchd log-writer`, which holds the cap exactly
        // and outlives this daemon with the workload.
        log_writer: exe.map(|e| vec![e.into_os_string(), "log-writer".into()]),
        ..orch_runtime::ProcessConfig::new(dir.to_path_buf())
    };
    if let Some(ip) = host_ip {
        config.host_ip = ip.to_string();
    }
    let rt = orch_runtime::ProcessRuntime::new(config)
        .await
        .with_context(|| format!("cannot start the process runtime in {}", dir.display()))?;
    Ok(Arc::new(rt))
}

/// The agent configuration for this machine.
pub fn agent_config(
    node: &str,
    labels: BTreeMap<String, String>,
    discovery_dir: &Path,
) -> AgentConfig {
    let mut cfg = AgentConfig::new(node);
    cfg.labels = labels;
    cfg.capacity = capacity();
    cfg.extra_env = vec![EnvVar {
        name: "ORCH_DISCOVERY_DIR".into(),
        value: discovery_dir.display().to_string(),
        value_from: None,
    }];
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_parse_and_bad_ones_name_the_problem() {
        let t = parse_taints("dedicated=db:NoSchedule,gpu:PreferNoSchedule").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].key.as_str(), t[0].value.as_str()),
            ("dedicated", "db")
        );
        assert_eq!((t[1].key.as_str(), t[1].value.as_str()), ("gpu", ""));
        assert!(parse_taints("").unwrap().is_empty());
        for (bad, says) in [
            ("dedicated=db", "no :Effect"),
            ("a=b:NoExecute", "unknown effect \"NoExecute\""),
            ("bad key=x:NoSchedule", "key \"bad key\""),
        ] {
            let e = parse_taints(bad).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("--taints"), "{bad}: {e}");
        }
    }
}

/// How a node describes itself: the flags `orchd server` and `orchd agent` share.
#[derive(clap::Args, Clone, Debug)]
pub struct NodeArgs {
    /// This node's name (default: the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// Node labels, `key=value,...`.
    #[arg(long, default_value = "")]
    pub labels: String,
    /// Node taints, `key=value:NoSchedule,key:PreferNoSchedule,...`: only replicas that
    /// tolerate them are placed here (NoSchedule) or they avoid it (PreferNoSchedule).
    #[arg(long, default_value = "")]
    pub taints: String,
}

impl NodeArgs {
    /// The node name (checked), labels and taints.
    pub fn parse(
        &self,
    ) -> anyhow::Result<(
        String,
        BTreeMap<String, String>,
        Vec<orch_core::model::object::Taint>,
    )> {
        let node = self.node.clone().unwrap_or_else(default_node_name);
        orch_core::model::validate::dns1123_label(&node)
            .map_err(|e| anyhow::anyhow!("--node: invalid value {node:?}: {e}"))?;
        Ok((
            node,
            parse_labels(&self.labels)?,
            parse_taints(&self.taints)?,
        ))
    }
}
