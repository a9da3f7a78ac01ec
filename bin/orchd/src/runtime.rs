//! `--runtime`: which runtimes this node offers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use orch_core::runtime::{Runtime, Runtimes};

/// The runtime flags shared by `orchd server` and `orchd up`.
#[derive(Args, Clone, Debug)]
pub struct RuntimeArgs {
    /// Runtimes this node offers: `process` (real child processes), `containerd` (images;
    /// needs the `containerd` build feature), both (`process,containerd`: a replica's template
    /// decides), or `fake` (runs nothing; for control-plane benchmarks and demos).
    #[arg(long = "runtime", default_value = "process")]
    pub names: String,
    /// containerd's socket (for `--runtime containerd`).
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub containerd_socket: PathBuf,
    /// The containerd namespace orch's containers live in.
    #[arg(long, default_value = "orch")]
    pub containerd_namespace: String,
    /// The containerd snapshotter for containers' root filesystems (`overlayfs`, `native`).
    #[arg(long, default_value = "overlayfs")]
    pub containerd_snapshotter: String,
    /// A registry (`HOST:PORT`) reached over plain HTTP (loopback ones always are); repeatable.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// A PEM file of certificate authorities to trust for registries, besides the system's;
    /// repeatable.
    #[arg(long = "registry-ca")]
    pub registry_cas: Vec<PathBuf>,
    /// A file of registry credentials, one `HOST[:PORT] USER PASSWORD` per line (`#` starts a
    /// comment); keep it mode 0600.
    #[arg(long)]
    pub registry_auth_file: Option<PathBuf>,
    /// A host directory (and everything below it) replicas may mount with `hostPath`;
    /// repeatable. None by default: host paths are refused.
    #[arg(long = "allow-host-path")]
    pub allow_host_paths: Vec<PathBuf>,
}

impl RuntimeArgs {
    /// Sets the agent's volumes (in DATA_DIR/volumes) and allowed host paths.
    pub fn configure(&self, agent: &mut orch_core::AgentConfig, data_dir: &Path) {
        agent.volumes = Some(orch_core::node::VolumeLayout::in_data_dir(data_dir));
        agent.allowed_host_paths = self.allow_host_paths.clone();
    }
}

impl RuntimeArgs {
    /// The runtimes `--runtime` names, checked.
    pub fn names(&self) -> anyhow::Result<Vec<String>> {
        parse(&self.names)
    }

    /// Opens the runtimes `names` (from [`RuntimeArgs::names`]), keeping their state under
    /// `data_dir`; process replicas get their ports on `host_ip` (default loopback).
    pub async fn open(
        &self,
        names: &[String],
        data_dir: &Path,
        host_ip: Option<&str>,
    ) -> anyhow::Result<Arc<dyn Runtime>> {
        let containerd = ContainerdArgs {
            socket: self.containerd_socket.clone(),
            namespace: self.containerd_namespace.clone(),
            snapshotter: self.containerd_snapshotter.clone(),
            insecure_registries: self.insecure_registries.clone(),
            registry_cas: self.registry_cas.clone(),
            credentials: match &self.registry_auth_file {
                Some(path) => read_registry_auth(path)?,
                None => Default::default(),
            },
        };
        open(names, data_dir, &containerd, host_ip).await
    }
}

/// What `--runtime` allows.
pub const ALLOWED: &str = "process, containerd, process,containerd, fake";

/// The runtimes `--runtime` names, in order.
pub fn parse(value: &str) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = value.split(',').map(|s| s.trim().to_string()).collect();
    for n in &names {
        if !matches!(n.as_str(), "process" | "containerd" | "fake") {
            anyhow::bail!("--runtime: invalid value {n:?} in {value:?}: allowed: {ALLOWED}");
        }
    }
    if names.iter().any(|n| n == "fake") && names.len() > 1 {
        anyhow::bail!("--runtime: fake cannot be combined with other runtimes");
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
        anyhow::bail!("--runtime: {dup} named twice in {value:?}");
    }
    Ok(names)
}

/// containerd settings from the command line.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "containerd"), allow(dead_code))]
pub struct ContainerdArgs {
    /// containerd's socket.
    pub socket: PathBuf,
    /// The containerd namespace.
    pub namespace: String,
    /// The snapshotter.
    pub snapshotter: String,
    /// Registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Extra CA files for registries.
    pub registry_cas: Vec<PathBuf>,
    /// `host` → (user, password).
    pub credentials: std::collections::HashMap<String, (String, String)>,
}

/// Reads a registry credentials file: `HOST[:PORT] USER PASSWORD` per line, `#` comments.
pub fn read_registry_auth(
    path: &Path,
) -> anyhow::Result<std::collections::HashMap<String, (String, String)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--registry-auth-file {}: {e}", path.display()))?;
    parse_registry_auth(&text)
        .map_err(|e| anyhow::anyhow!("--registry-auth-file {}: {e}", path.display()))
}

fn parse_registry_auth(
    text: &str,
) -> Result<std::collections::HashMap<String, (String, String)>, String> {
    let mut out = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [host, user, password] = fields[..] else {
            return Err(format!(
                "line {}: expected `HOST[:PORT] USER PASSWORD`, found {} field(s)",
                n + 1,
                fields.len()
            ));
        };
        if out
            .insert(host.to_string(), (user.to_string(), password.to_string()))
            .is_some()
        {
            return Err(format!("line {}: {host} is named twice", n + 1));
        }
    }
    Ok(out)
}

/// Opens the named runtimes; several are combined ([`Runtimes`]).
pub async fn open(
    names: &[String],
    data_dir: &Path,
    containerd: &ContainerdArgs,
    host_ip: Option<&str>,
) -> anyhow::Result<Arc<dyn Runtime>> {
    let mut all: Vec<Arc<dyn Runtime>> = Vec::new();
    for n in names {
        all.push(match n.as_str() {
            "process" => crate::host::process_runtime(&data_dir.join("runtime"), host_ip).await?,
            "fake" => Arc::new(orch_core::fake::FakeRuntime::default()),
            _ => open_containerd(&data_dir.join("containerd"), containerd).await?,
        });
    }
    Ok(if all.len() == 1 {
        all.remove(0)
    } else {
        Arc::new(Runtimes::new(all))
    })
}

#[cfg(feature = "containerd")]
async fn open_containerd(dir: &Path, args: &ContainerdArgs) -> anyhow::Result<Arc<dyn Runtime>> {
    use anyhow::Context;
    use orch_runtime::containerd::{ContainerdConfig, ContainerdRuntime};
    let config = ContainerdConfig {
        namespace: args.namespace.clone(),
        snapshotter: args.snapshotter.clone(),
        registry: orch_runtime::containerd::registry::RegistryConfig {
            credentials: args.credentials.clone(),
            insecure: args.insecure_registries.clone(),
            ca_files: args.registry_cas.clone(),
        },
        ..ContainerdConfig::new(&args.socket, dir)
    };
    let rt = ContainerdRuntime::new(config).await.with_context(|| {
        format!(
            "cannot use containerd at {} (--containerd-socket)",
            args.socket.display()
        )
    })?;
    Ok(Arc::new(rt))
}

#[cfg(not(feature = "containerd"))]
async fn open_containerd(_dir: &Path, _args: &ContainerdArgs) -> anyhow::Result<Arc<dyn Runtime>> {
    anyhow::bail!(
        "--runtime containerd: this orchd was built without containerd support; rebuild with \
         `cargo build --release -p orchd --features containerd` (needs protoc)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_lists_parse_and_bad_ones_name_the_value() {
        assert_eq!(parse("process").unwrap(), ["process"]);
        assert_eq!(
            parse("process, containerd").unwrap(),
            ["process", "containerd"]
        );
        let e = parse("docker").unwrap_err().to_string();
        assert!(e.contains("\"docker\"") && e.contains("allowed"), "{e}");
        assert!(parse("fake,process").is_err());
        assert!(parse("process,process")
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn registry_auth_files_parse_and_bad_lines_are_named() {
        let creds = parse_registry_auth("# mine\nreg.example:5000 alice s3cret\n\n").unwrap();
        assert_eq!(creds["reg.example:5000"], ("alice".into(), "s3cret".into()));
        let e = parse_registry_auth("a b\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("2 field"), "{e}");
        let e = parse_registry_auth("a b c\na d e\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("twice"), "{e}");
    }
}
