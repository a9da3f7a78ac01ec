//! What a template refers to, resolved before a start: `valueFrom` variables, secret and config
//! mounts, volume directories and allowed host paths.

use std::collections::HashMap;

use crate::model::object::{Kind, Object, Replica};
use crate::runtime::{MountFiles, MountSource, WorkloadMount};

use super::Agent;

impl Agent {
    /// The template with `valueFrom` variables filled in, and its mounts resolved: secret and
    /// config contents read from the store, volume directories created on first use, host
    /// paths checked against the node's allowed prefixes (symlinks resolved first). An error
    /// names what is missing or refused.
    pub(super) async fn resolve(
        &self,
        r: &Replica,
    ) -> Result<(crate::model::object::Template, Vec<WorkloadMount>), String> {
        let t = &r.spec.template;
        let ns = r.metadata.namespace.as_str();
        let mut data: HashMap<(bool, String), std::collections::BTreeMap<String, String>> =
            HashMap::new();
        for (secret, name) in t.references() {
            let kind = if secret { Kind::Secret } else { Kind::Config };
            let what = if secret { "secret" } else { "config" };
            let obj = crate::store::get_object(&*self.ctx.store, kind, ns, name)
                .await
                .map_err(|e| format!("cannot read {what} {ns}/{name}: {e}"))?;
            let values = match obj {
                Some(Object::Secret(s)) => s.data,
                Some(Object::Config(c)) => c.data,
                _ => return Err(format!("{what} {ns}/{name} does not exist")),
            };
            data.insert((secret, name.to_string()), values);
        }
        let mut template = (**t).clone();
        for e in &mut template.env {
            // `valueFrom` stays set: the runtime expands `$(VAR)` in plain values only.
            if let Some(f) = e.value_from.clone() {
                let (secret, name) = match (&f.secret, &f.config) {
                    (Some(n), _) => (true, n),
                    (_, Some(n)) => (false, n),
                    _ => continue,
                };
                let what = if secret { "secret" } else { "config" };
                e.value = data
                    .get(&(secret, name.clone()))
                    .and_then(|d| d.get(&f.key))
                    .cloned()
                    .ok_or(format!(
                        "env {}: {what} {ns}/{name} has no key {:?}",
                        e.name, f.key
                    ))?;
            }
        }
        let mut mounts = Vec::new();
        for m in &t.mounts {
            let source = if let Some(name) = m.secret.as_ref().or(m.config.as_ref()) {
                let secret = m.secret.is_some();
                let files = data
                    .get(&(secret, name.clone()))
                    .map(|d| {
                        d.iter()
                            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                            .collect()
                    })
                    .unwrap_or_default();
                MountSource::Files(MountFiles { secret, files })
            } else if let Some(v) = m.volume_name(&r.metadata.name) {
                // A per-replica volume is `VOLUME-REPLICA`: the scheduler placed the
                // replica on the node that holds it, if one does.
                let volumes = self.cfg.volumes.as_ref().ok_or(format!(
                    "volume {v}: node {} keeps no volumes",
                    self.cfg.node
                ))?;
                MountSource::Dir(volumes.create(&v)?)
            } else if let Some(h) = &m.host_path {
                MountSource::Dir(self.allowed_host_path(h)?)
            } else {
                MountSource::Tmpfs
            };
            mounts.push(WorkloadMount {
                path: m.path.clone(),
                read_only: m.read_only || m.secret.is_some() || m.config.is_some(),
                source,
            });
        }
        Ok((template, mounts))
    }

    /// `path`'s real location (symlinks resolved), if it is under an allowed prefix.
    pub(super) fn allowed_host_path(&self, path: &str) -> Result<std::path::PathBuf, String> {
        let refused = |why: String| {
            format!(
                "hostPath {path}: {why}; node {} allows {}",
                self.cfg.node,
                if self.cfg.allowed_host_paths.is_empty() {
                    "no host paths (orchd --allow-host-path PREFIX)".to_string()
                } else {
                    self.cfg
                        .allowed_host_paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )
        };
        let real = std::fs::canonicalize(path).map_err(|e| refused(e.to_string()))?;
        let allowed = self
            .cfg
            .allowed_host_paths
            .iter()
            .any(|prefix| std::fs::canonicalize(prefix).is_ok_and(|p| real.starts_with(p)));
        if allowed {
            Ok(real)
        } else if real != std::path::Path::new(path) {
            Err(refused(format!(
                "it resolves to {} (through a symlink), which is not allowed",
                real.display()
            )))
        } else {
            Err(refused("not allowed".into()))
        }
    }
}
