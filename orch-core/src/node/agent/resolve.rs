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
        let mounts = self.resolve_mounts(&t.mounts, &r.metadata.name, ns, &sources)?;
        let mut steps = Vec::with_capacity(t.init.len());
        for step in &t.init {
            let env = resolve_env(&step.env, ns, &sources, &fields)
                .map_err(|e| format!("init step {}: {e}", step.name))?;
            let mut step_mounts = mounts.clone();
            step_mounts.extend(
                self.resolve_mounts(&step.mounts, &r.metadata.name, ns, &sources)
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
        replica: &str,
        ns: &str,
        sources: &Sources,
    ) -> Result<Vec<WorkloadMount>, String> {
        let mut mounts = Vec::new();
        for m in list {
            let source = if let Some(files) = mount_files(m, ns, sources) {
                files?
            } else if let Some(v) = m.volume_name(replica) {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::object::{Owner, ReplicaSpec};

    fn template(json: serde_json::Value) -> Template {
        serde_json::from_value(json).expect("a template")
    }

    fn replica(t: Template) -> Replica {
        let mut md = crate::model::object::Metadata {
            name: "web-0".into(),
            namespace: "shop".into(),
            uid: "u-1".into(),
            ..Default::default()
        };
        md.labels.insert("app".into(), "web".into());
        md.annotations.insert("team".into(), "blue".into());
        Replica {
            metadata: md,
            spec: ReplicaSpec {
                service: Owner::Service("web".into()),
                template_hash: "h".into(),
                template: Arc::new(t),
                placement: Arc::default(),
                node: Some("n1".into()),
                desired: Default::default(),
            },
            status: Default::default(),
        }
    }

    fn sources() -> Sources {
        let mut s = Sources::new();
        s.insert(
            (true, "db".into()),
            BTreeMap::from([
                ("password".to_string(), "hunter2".to_string()),
                ("user".to_string(), "app".to_string()),
                ("bad key".to_string(), "x".to_string()),
                ("1st".to_string(), "y".to_string()),
            ]),
        );
        s.insert(
            (false, "settings".into()),
            BTreeMap::from([("MODE".to_string(), "fast".to_string())]),
        );
        s
    }

    /// The resolved environment of `t` (as `name=value`), or the error.
    fn env_of(
        t: serde_json::Value,
        ip: Option<&str>,
    ) -> Result<(Vec<String>, Vec<String>), String> {
        let t = template(t);
        let r = replica(t.clone());
        let fields = Fields {
            replica: &r,
            node: "n1",
            host_ip: "192.0.2.7",
            ip,
        };
        let (mut env, skipped) = env_from_vars(&t, "shop", &sources())?;
        env.extend(resolve_env(&t.env, "shop", &sources(), &fields)?);
        Ok((
            env.iter()
                .map(|e| format!("{}={}", e.name, e.value))
                .collect(),
            skipped,
        ))
    }

    #[test]
    fn field_refs_read_the_replica_and_its_node() {
        let t = serde_json::json!({"command": ["x"], "env": [
            {"name": "NAME", "valueFrom": {"field": "metadata.name"}},
            {"name": "NS", "valueFrom": {"field": "metadata.namespace"}},
            {"name": "UID", "valueFrom": {"field": "metadata.uid"}},
            {"name": "APP", "valueFrom": {"field": "metadata.labels['app']"}},
            {"name": "NONE", "valueFrom": {"field": "metadata.labels['missing']"}},
            {"name": "TEAM", "valueFrom": {"field": "metadata.annotations['team']"}},
            {"name": "NODE", "valueFrom": {"field": "spec.nodeName"}},
            {"name": "HOST", "valueFrom": {"field": "status.hostIP"}},
            {"name": "POD", "valueFrom": {"field": "status.podIP"}},
        ]});
        let want = |pod: &str| {
            vec![
                "NAME=web-0".to_string(),
                "NS=shop".into(),
                "UID=u-1".into(),
                "APP=web".into(),
                "NONE=".into(),
                "TEAM=blue".into(),
                "NODE=n1".into(),
                "HOST=192.0.2.7".into(),
                format!("POD={pod}"),
            ]
        };
        // podIP: the replica's own address when it has one, else the node's.
        assert_eq!(
            env_of(t.clone(), Some("10.244.1.5")).unwrap().0,
            want("10.244.1.5")
        );
        assert_eq!(env_of(t, None).unwrap().0, want("192.0.2.7"));
    }

    #[test]
    fn optional_references_leave_the_variable_unset() {
        let t = serde_json::json!({"command": ["x"], "env": [
            {"name": "A", "valueFrom": {"secret": "nope", "key": "k", "optional": true}},
            {"name": "B", "valueFrom": {"secret": "db", "key": "nope", "optional": true}},
            {"name": "C", "valueFrom": {"secret": "db", "key": "user", "optional": true}},
            {"name": "D", "value": "plain"},
        ]});
        assert_eq!(env_of(t, None).unwrap().0, ["C=app", "D=plain"]);
        for (env, want) in [
            (
                serde_json::json!({"name": "A", "valueFrom": {"secret": "nope", "key": "k"}}),
                "env A: secret shop/nope does not exist",
            ),
            (
                serde_json::json!({"name": "B", "valueFrom": {"config": "settings", "key": "k"}}),
                "env B: config shop/settings has no key \"k\"",
            ),
        ] {
            let t = serde_json::json!({"command": ["x"], "env": [env]});
            assert_eq!(env_of(t, None).unwrap_err(), want);
        }
    }

    #[test]
    fn env_from_prefixes_keys_before_env_and_skips_invalid_names() {
        let t = serde_json::json!({"command": ["x"],
            "envFrom": [
                {"secret": "db", "prefix": "DB_"},
                {"config": "settings"},
                {"config": "absent", "optional": true},
            ],
            "env": [{"name": "DB_user", "value": "override"}],
        });
        let (env, skipped) = env_of(t, None).unwrap();
        // Keys in order; `env` comes after (the runtime's later entry wins).
        assert_eq!(
            env,
            [
                "DB_1st=y",
                "DB_password=hunter2",
                "DB_user=app",
                "MODE=fast",
                "DB_user=override"
            ]
        );
        assert_eq!(skipped, ["DB_bad key (key \"bad key\" of secret shop/db)"]);
        // Without a prefix a key starting with a digit is no variable name either.
        let t = serde_json::json!({"command": ["x"], "envFrom": [{"secret": "db"}]});
        let (env, skipped) = env_of(t, None).unwrap();
        assert_eq!(env, ["password=hunter2", "user=app"]);
        assert_eq!(skipped.len(), 2);
        let t = serde_json::json!({"command": ["x"], "envFrom": [{"config": "absent"}]});
        assert_eq!(
            env_of(t, None).unwrap_err(),
            "envFrom[0]: config shop/absent does not exist"
        );
    }

    #[test]
    fn one_key_mounts_carry_only_that_key() {
        let m = |json: serde_json::Value| -> Mount { serde_json::from_value(json).unwrap() };
        let one = mount_files(
            &m(serde_json::json!({"path": "/run/secrets/pw", "secret": "db", "key": "password"})),
            "shop",
            &sources(),
        );
        assert_eq!(
            one,
            Some(Ok(MountSource::File(MountFiles {
                secret: true,
                files: vec![("password".into(), b"hunter2".to_vec())],
            })))
        );
        let all = mount_files(
            &m(serde_json::json!({"path": "/etc/app", "config": "settings"})),
            "shop",
            &sources(),
        );
        assert_eq!(
            all,
            Some(Ok(MountSource::Files(MountFiles {
                secret: false,
                files: vec![("MODE".into(), b"fast".to_vec())],
            })))
        );
        let missing = mount_files(
            &m(serde_json::json!({"path": "/x", "config": "settings", "key": "nope"})),
            "shop",
            &sources(),
        );
        assert_eq!(
            missing,
            Some(Err(
                "mount /x: config shop/settings has no key \"nope\" (keys: MODE)".into()
            ))
        );
        assert_eq!(
            mount_files(
                &m(serde_json::json!({"path": "/x", "tmpfs": true})),
                "shop",
                &sources()
            ),
            None
        );
    }

    #[test]
    fn references_count_env_from_and_init_steps() {
        // What the agent reads, what a node may read in a cluster, and what rolls the service.
        let t = template(serde_json::json!({"command": ["x"],
            "envFrom": [{"config": "settings"}, {"secret": "db", "optional": true}],
            "init": [{"name": "a", "command": ["y"],
                "env": [{"name": "T", "valueFrom": {"secret": "token", "key": "t"}}],
                "mounts": [{"path": "/c", "config": "certs", "key": "ca"}]}],
        }));
        assert_eq!(
            t.references(),
            [
                (false, "certs"),
                (false, "settings"),
                (true, "db"),
                (true, "token")
            ]
        );
    }

    #[test]
    fn init_steps_inherit_the_template_and_replace_the_command() {
        let t = template(serde_json::json!({
            "image": "app:1", "command": ["serve"], "user": "1000",
            "env": [{"name": "A", "value": "1"}],
            "ports": [{"name": "http", "port": 80}],
            "readinessProbe": {"tcpSocket": {"port": 80}},
            "restartPolicy": "Always",
            "init": [{"name": "migrate", "command": ["migrate", "up"], "workingDir": "/app"}],
        }));
        let step = &t.init[0];
        let env = vec![EnvVar {
            name: "B".into(),
            value: "2".into(),
            value_from: None,
        }];
        let s = step_template(&t, step, env);
        assert_eq!(s.image.as_deref(), Some("app:1"));
        assert_eq!(s.command, ["migrate", "up"]);
        assert_eq!(s.working_dir.as_deref(), Some("/app"));
        assert_eq!(s.user.as_deref(), Some("1000"));
        assert_eq!(
            s.env.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["A", "B"]
        );
        assert!(s.ports.is_empty() && s.readiness_probe.is_none() && s.init.is_empty());
        assert_eq!(s.restart_policy, crate::model::object::RestartPolicy::Never);
    }
}
