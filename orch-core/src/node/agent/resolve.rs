//! What a template refers to, resolved before a start: `valueFrom` variables (secret and
//! config keys, the replica's own fields), `envFrom`, secret and config mounts (whole or one
//! key), volume directories, allowed host paths, and the init steps' own variables and mounts.

use std::collections::{BTreeMap, HashMap};

use crate::model::field_ref::FieldRef;
use crate::model::object::{EnvVar, Kind, Mount, Object, Replica, Template, ValueFrom};
use crate::runtime::{MountFiles, MountSource, WorkloadMount};

use super::Agent;

/// The contents of the secrets (`true`) and configs a template refers to, by name; one
/// that does not exist is absent.
pub(super) type Sources = HashMap<(bool, String), BTreeMap<String, String>>;

/// What a replica's `valueFrom.field` variables read.
pub(super) struct Fields<'a> {
    pub(super) replica: &'a Replica,
    pub(super) node: &'a str,
    pub(super) host_ip: &'a str,
    /// The replica's own address, when it has a network of its own.
    pub(super) ip: Option<&'a str>,
}

impl Fields<'_> {
    fn value(&self, f: &FieldRef) -> String {
        let md = &self.replica.metadata;
        match f {
            FieldRef::Name => md.name.clone(),
            FieldRef::Namespace => md.namespace.clone(),
            FieldRef::Uid => md.uid.clone(),
            FieldRef::Label(k) => md.labels.get(k).cloned().unwrap_or_default(),
            FieldRef::Annotation(k) => md.annotations.get(k).cloned().unwrap_or_default(),
            FieldRef::NodeName => self.node.to_string(),
            FieldRef::HostIp => self.host_ip.to_string(),
            FieldRef::PodIp => self.ip.unwrap_or(self.host_ip).to_string(),
        }
    }
}

/// A resolved template, ready for the runtime.
pub(super) struct Resolved {
    /// The template with its variables filled in (`envFrom` first, then `env`).
    pub(super) template: Template,
    /// Its mounts.
    pub(super) mounts: Vec<WorkloadMount>,
    /// Its init steps, in order: each step's name, template and mounts.
    pub(super) steps: Vec<(String, Template, Vec<WorkloadMount>)>,
    /// What was skipped and why (`envFrom` keys that cannot be variable names).
    pub(super) warnings: Vec<String>,
}

fn what(secret: bool) -> &'static str {
    if secret {
        "secret"
    } else {
        "config"
    }
}

/// The value of variable `name` from `f`: `None` when it is optional and its secret, config
/// or key is missing (the variable is then left unset).
pub(super) fn value_from(
    name: &str,
    f: &ValueFrom,
    ns: &str,
    sources: &Sources,
    fields: &Fields<'_>,
) -> Result<Option<String>, String> {
    if let Some(path) = &f.field {
        let field = FieldRef::parse(path).map_err(|e| format!("env {name}: field {path}: {e}"))?;
        return Ok(Some(fields.value(&field)));
    }
    let (secret, obj) = match (&f.secret, &f.config) {
        (Some(n), _) => (true, n),
        (_, Some(n)) => (false, n),
        _ => {
            return Err(format!(
                "env {name}: valueFrom names no secret, config or field"
            ))
        }
    };
    let kind = what(secret);
    match sources.get(&(secret, obj.clone())) {
        None if f.optional => Ok(None),
        None => Err(format!("env {name}: {kind} {ns}/{obj} does not exist")),
        Some(d) => match d.get(&f.key) {
            Some(v) => Ok(Some(v.clone())),
            None if f.optional => Ok(None),
            None => Err(format!(
                "env {name}: {kind} {ns}/{obj} has no key {:?}",
                f.key
            )),
        },
    }
}

/// `env` with every `valueFrom` filled in (optional ones that are missing left out).
/// `valueFrom` stays set: the runtime expands `$(VAR)` in plain values only.
pub(super) fn resolve_env(
    env: &[EnvVar],
    ns: &str,
    sources: &Sources,
    fields: &Fields<'_>,
) -> Result<Vec<EnvVar>, String> {
    let mut out = Vec::with_capacity(env.len());
    for e in env {
        let mut e = e.clone();
        if let Some(f) = &e.value_from {
            match value_from(&e.name, f, ns, sources, fields)? {
                Some(v) => e.value = v,
                None => continue,
            }
        }
        out.push(e);
    }
    Ok(out)
}

/// The variables a template's `envFrom` gives, in order (each source's keys sorted), and the
/// keys skipped because `PREFIX` + key is not a variable name (as Kubernetes, which skips
/// them with an event).
pub(super) fn env_from_vars(
    t: &Template,
    ns: &str,
    sources: &Sources,
) -> Result<(Vec<EnvVar>, Vec<String>), String> {
    let mut vars = Vec::new();
    let mut skipped = Vec::new();
    for (i, e) in t.env_from.iter().enumerate() {
        let (secret, name) = match (&e.secret, &e.config) {
            (Some(n), _) => (true, n),
            (_, Some(n)) => (false, n),
            _ => return Err(format!("envFrom[{i}] names no secret or config")),
        };
        let Some(data) = sources.get(&(secret, name.clone())) else {
            if e.optional {
                continue;
            }
            return Err(format!(
                "envFrom[{i}]: {} {ns}/{name} does not exist",
                what(secret)
            ));
        };
        for (k, v) in data {
            let var = format!("{}{k}", e.prefix);
            if crate::model::validate::env_name(&var).is_err() {
                skipped.push(format!("{var} (key {k:?} of {} {ns}/{name})", what(secret)));
                continue;
            }
            vars.push(EnvVar {
                name: var,
                value: v.clone(),
                // Set so the value is taken as is (no `$(VAR)` expansion), as `valueFrom`.
                value_from: Some(ValueFrom {
                    secret: e.secret.clone(),
                    config: e.config.clone(),
                    key: k.clone(),
                    field: None,
                    optional: e.optional,
                }),
            });
        }
    }
    Ok((vars, skipped))
}

/// The files a secret or config mount shows: all keys, or only `key` (then one file at the
/// mount's path).
pub(super) fn mount_files(
    m: &Mount,
    ns: &str,
    sources: &Sources,
) -> Option<Result<MountSource, String>> {
    let name = m.secret.as_ref().or(m.config.as_ref())?;
    let secret = m.secret.is_some();
    let kind = what(secret);
    let Some(data) = sources.get(&(secret, name.clone())) else {
        return Some(Err(format!(
            "mount {}: {kind} {ns}/{name} does not exist",
            m.path
        )));
    };
    Some(match &m.key {
        None => Ok(MountSource::Files(MountFiles {
            secret,
            files: data
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .collect(),
        })),
        Some(k) => match data.get(k) {
            Some(v) => Ok(MountSource::File(MountFiles {
                secret,
                files: vec![(k.clone(), v.clone().into_bytes())],
            })),
            None => Err(format!(
                "mount {}: {kind} {ns}/{name} has no key {k:?} (keys: {})",
                m.path,
                data.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        },
    })
}

/// The template an init step runs (under the replica's own workload id, so it shares the
/// replica's log, tmpfs mounts, network and hostname): the replica's template (its
/// variables, user) with the step's image, command, arguments, working directory and variables
/// (after the template's), without ports, probes or steps of its own, never restarted by the
/// runtime.
pub(super) fn step_template(
    t: &Template,
    step: &crate::model::object::InitStep,
    env: Vec<EnvVar>,
) -> Template {
    let mut s = t.clone();
    if step.image.is_some() {
        s.image = step.image.clone();
    }
    s.command = step.command.clone();
    s.args = step.args.clone();
    if step.working_dir.is_some() {
        s.working_dir = step.working_dir.clone();
    }
    s.env.extend(env);
    s.mounts.extend(step.mounts.iter().cloned());
    s.ports.clear();
    s.readiness_probe = None;
    s.liveness_probe = None;
    s.startup_probe = None;
    s.init.clear();
    s.restart_policy = crate::model::object::RestartPolicy::Never;
    s
}

impl Agent {
    /// The secrets and configs `t` refers to, read from the store (missing ones absent).
    async fn sources(&self, t: &Template, ns: &str) -> Result<Sources, String> {
        let mut data = Sources::new();
        for (secret, name) in t.references() {
            let kind = if secret { Kind::Secret } else { Kind::Config };
            let obj = crate::store::get_object(&*self.ctx.store, kind, ns, name)
                .await
                .map_err(|e| format!("cannot read {} {ns}/{name}: {e}", what(secret)))?;
            let values = match obj {
                Some(Object::Secret(s)) => s.data,
                Some(Object::Config(c)) => c.data,
                _ => continue,
            };
            data.insert((secret, name.to_string()), values);
        }
        Ok(data)
    }

    /// The template with `envFrom` and `valueFrom` variables filled in (`ip`: the replica's
    /// own address, for `status.podIP`), its mounts and its init steps' resolved: secret and
    /// config contents read from the store, volume directories created on first use, host
    /// paths checked against the node's allowed prefixes (symlinks resolved first). An error
    /// names what is missing or refused.
    pub(super) async fn resolve(&self, r: &Replica, ip: Option<&str>) -> Result<Resolved, String> {
        let t = &r.spec.template;
        let ns = r.metadata.namespace.as_str();
        let sources = self.sources(t, ns).await?;
        let host_ip = self
            .cfg
            .addresses
            .first()
            .map_or("127.0.0.1", String::as_str);
        let fields = Fields {
            replica: r,
            node: &self.cfg.node,
            host_ip,
            ip,
        };
        let mut template = (**t).clone();
        let (mut env, warnings) = env_from_vars(t, ns, &sources)?;
        env.extend(resolve_env(&t.env, ns, &sources, &fields)?);
        template.env = env;
        let mounts = self.resolve_mounts(&t.mounts, ns, &sources)?;
        let mut steps = Vec::with_capacity(t.init.len());
        for step in &t.init {
            let env = resolve_env(&step.env, ns, &sources, &fields)
                .map_err(|e| format!("init step {}: {e}", step.name))?;
            let mut step_mounts = mounts.clone();
            step_mounts.extend(
                self.resolve_mounts(&step.mounts, ns, &sources)
                    .map_err(|e| format!("init step {}: {e}", step.name))?,
            );
            let st = step_template(&template, step, env);
            steps.push((step.name.clone(), st, step_mounts));
        }
        Ok(Resolved {
            template,
            mounts,
            steps,
            warnings,
        })
    }

    fn resolve_mounts(
        &self,
        list: &[Mount],
        ns: &str,
        sources: &Sources,
    ) -> Result<Vec<WorkloadMount>, String> {
        let mut mounts = Vec::new();
        for m in list {
            let source = if let Some(files) = mount_files(m, ns, sources) {
                files?
            } else if let Some(v) = &m.volume {
                let volumes = self.cfg.volumes.as_ref().ok_or(format!(
                    "volume {v}: node {} keeps no volumes",
                    self.cfg.node
                ))?;
                MountSource::Dir(volumes.create(v)?)
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
        Ok(mounts)
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
