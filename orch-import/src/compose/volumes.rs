//! `volumes` (named → node-local orch volumes `PROJECT-V`, bind → `hostPath` from the project
//! directory, anonymous → tmpfs), `tmpfs`, and the `secrets`/`configs` a service mounts.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use orch_core::model::object::{Mount, Template};
use serde_json::Value;

use super::fields::{scalar, show, strings, Ctx, Fields};
use super::Project;

/// `path` made absolute against the project directory and normalised (`.`/`..` resolved).
pub(crate) fn host_path(ctx: &mut Ctx, proj: &Project<'_>, at: &str, src: &str) -> Option<String> {
    if src.starts_with('~') {
        ctx.error(
            at,
            src,
            "~ is not expanded here: give a path relative to the project directory, or an absolute one",
        );
        return None;
    }
    let p = Path::new(src);
    let full: PathBuf = if p.is_absolute() {
        p.to_path_buf()
    } else {
        match proj.base_dir {
            Some(b) if b.is_absolute() => b.join(p),
            Some(b) => {
                ctx.error(
                    at,
                    src,
                    format!(
                        "a relative path needs an absolute project directory (base_dir is {})",
                        b.display()
                    ),
                );
                return None;
            }
            None => {
                ctx.error(
                    at,
                    src,
                    "a relative path needs the project directory (Options::base_dir), which was not given",
                );
                return None;
            }
        }
    };
    let mut parts: Vec<String> = Vec::new();
    for c in full.components() {
        match c {
            Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    Some(format!("/{}", parts.join("/")))
}

fn named_volume(
    ctx: &mut Ctx,
    proj: &Project<'_>,
    at: &str,
    name: &str,
    target: String,
    read_only: bool,
) -> Option<Mount> {
    let Some(orch) = proj.volumes.get(name) else {
        ctx.error(
            at,
            name,
            format!("undefined volume {name:?}: declare it under the top-level volumes:"),
        );
        return None;
    };
    Some(Mount {
        path: target,
        read_only,
        volume: Some(orch.clone()),
        ..Mount::default()
    })
}

fn bind(
    ctx: &mut Ctx,
    proj: &Project<'_>,
    at: &str,
    src: &str,
    target: String,
    read_only: bool,
) -> Option<Mount> {
    let host = host_path(ctx, proj, at, src)?;
    if host.ends_with("/docker.sock") {
        ctx.warn(
            at,
            format!("the Docker socket {host}: orch does not run Docker, so the workload finds no Docker API there unless the node runs dockerd"),
        );
    }
    Some(Mount {
        path: target,
        read_only,
        host_path: Some(host),
        ..Mount::default()
    })
}

fn anonymous(ctx: &mut Ctx, at: &str, target: String) -> Mount {
    ctx.warn(
        at,
        format!("an anonymous volume at {target}: orch mounts an empty tmpfs there for the replica's life (the image's content at that path is not copied in)"),
    );
    Mount {
        path: target,
        tmpfs: true,
        ..Mount::default()
    }
}

fn short(ctx: &mut Ctx, proj: &Project<'_>, at: &str, s: &str) -> Option<Mount> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, target, mode) = match parts.as_slice() {
        [t] => return Some(anonymous(ctx, at, t.to_string())),
        [s, t] => (*s, *t, ""),
        [s, t, m] => (*s, *t, *m),
        _ => {
            ctx.error(at, s, "a volume is [SOURCE:]TARGET[:MODE]");
            return None;
        }
    };
    let mut read_only = false;
    for m in mode.split(',').filter(|m| !m.is_empty()) {
        match m {
            "ro" => read_only = true,
            "rw" | "cached" | "delegated" | "consistent" => {}
            "z" | "Z" => ctx.warn(at, format!("SELinux relabelling ({m}) is not done by orch")),
            "nocopy" => ctx.warn(
                at,
                "nocopy: orch never copies the image's content into a volume",
            ),
            other => ctx.error(
                at,
                other,
                "a volume mode is ro, rw, z, Z, nocopy (comma-separated)",
            ),
        }
    }
    let target = target.to_string();
    if src.starts_with('.') || src.starts_with('/') || src.starts_with('~') {
        bind(ctx, proj, at, src, target, read_only)
    } else {
        named_volume(ctx, proj, at, src, target, read_only)
    }
}

fn long(ctx: &mut Ctx, proj: &Project<'_>, at: &str, v: &Value) -> Option<Mount> {
    let f = Fields::of(ctx, at, v);
    let kind = f.str(ctx, "type").unwrap_or_default();
    let source = f.str(ctx, "source");
    let Some(target) = f.str(ctx, "target") else {
        ctx.error(f.at("target"), "", "must be set: where the volume appears");
        return None;
    };
    let read_only = f.bool(ctx, "read_only").unwrap_or(false);
    for (key, what) in [
        ("bind", "bind options"),
        ("volume", "volume options"),
        ("tmpfs", "tmpfs options"),
        ("image", "image options"),
        ("consistency", "consistency"),
    ] {
        if let Some(o) = f.get(key) {
            let sub = Fields::of(ctx, f.at(key), o);
            for (k, p) in sub.unread() {
                let msg = match (key, k.as_str()) {
                    ("bind", "create_host_path") => {
                        "orch does not create a missing host path: the start fails naming it"
                            .to_string()
                    }
                    ("volume", "nocopy") => {
                        "orch never copies the image's content into a volume".to_string()
                    }
                    _ => format!("{what} are not supported by orch: ignored"),
                };
                ctx.warn(p, msg);
            }
            if key == "consistency" {
                ctx.warn(f.at(key), "ignored (it has no effect on Linux)");
            }
        }
    }
    f.finish(ctx);
    match kind.as_str() {
        "bind" => match source {
            Some(s) => bind(ctx, proj, at, &s, target, read_only),
            None => {
                ctx.error(f.at("source"), "", "a bind mount needs its host path");
                None
            }
        },
        "volume" => match source {
            Some(s) => named_volume(ctx, proj, at, &s, target, read_only),
            None => Some(anonymous(ctx, at, target)),
        },
        "tmpfs" => Some(Mount {
            path: target,
            tmpfs: true,
            ..Mount::default()
        }),
        other => {
            ctx.error(
                f.at("type"),
                other,
                "orch mounts volume, bind and tmpfs (npipe, cluster and image mounts are not supported)",
            );
            None
        }
    }
}

/// `volumes:` and `tmpfs:` into `t.mounts`.
pub(crate) fn mounts(ctx: &mut Ctx, proj: &Project<'_>, f: &Fields<'_>, t: &mut Template) {
    if let Some(v) = f.get("volumes") {
        let path = f.at("volumes");
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{path}[{i}]");
                    let m = match item {
                        Value::Object(_) => long(ctx, proj, &at, item),
                        other => scalar(ctx, &at, other).and_then(|s| short(ctx, proj, &at, &s)),
                    };
                    t.mounts.extend(m);
                }
            }
            other => ctx.error(path, show(other), "must be a list of volumes"),
        }
    }
    if let Some(v) = f.get("tmpfs") {
        let path = f.at("tmpfs");
        for (i, s) in strings(ctx, &path, v).into_iter().enumerate() {
            let (target, opts) = s.split_once(':').unwrap_or((&s, ""));
            if !opts.is_empty() {
                ctx.warn(
                    format!("{path}[{i}]"),
                    format!("tmpfs options {opts:?} are not supported by orch: ignored"),
                );
            }
            t.mounts.push(Mount {
                path: target.to_string(),
                tmpfs: true,
                ..Mount::default()
            });
        }
    }
}

/// `secrets:` (`secret: true`) or `configs:` of a service into `t.mounts`; the names used go
/// into `used`.
pub(crate) fn references(
    ctx: &mut Ctx,
    proj: &Project<'_>,
    f: &Fields<'_>,
    secret: bool,
    t: &mut Template,
    used: &mut BTreeSet<String>,
) {
    let key = if secret { "secrets" } else { "configs" };
    let Some(v) = f.get(key) else { return };
    let path = f.at(key);
    let Value::Array(items) = v else {
        ctx.error(path, show(v), format!("must be a list of {key}"));
        return;
    };
    let defs = if secret { &proj.secrets } else { &proj.configs };
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let (source, target) = match item {
            Value::Object(_) => {
                let lf = Fields::of(ctx, &at, item);
                let source = lf.str(ctx, "source");
                let target = lf.str(ctx, "target");
                for k in ["uid", "gid", "mode"] {
                    if lf.has(k) {
                        lf.skip(k);
                        ctx.warn(
                            lf.at(k),
                            if secret {
                                "not honoured: orch's secret files are mode 0400, owned by the workload's user"
                            } else {
                                "not honoured: orch's config files are mode 0444"
                            },
                        );
                    }
                }
                lf.finish(ctx);
                match source {
                    Some(s) => (s, target),
                    None => {
                        ctx.error(lf.at("source"), "", "must be set");
                        continue;
                    }
                }
            }
            other => match scalar(ctx, &at, other) {
                Some(s) => (s, None),
                None => continue,
            },
        };
        let Some(def) = defs.get(&source) else {
            ctx.error(
                &at,
                &source,
                format!(
                    "undefined {}: declare it under the top-level {key}:",
                    &key[..key.len() - 1]
                ),
            );
            continue;
        };
        let mount_path = match (secret, target) {
            (_, Some(t)) if t.starts_with('/') => t,
            (true, Some(t)) => format!("/run/secrets/{t}"),
            (false, Some(t)) => format!("/{t}"),
            (true, None) => format!("/run/secrets/{source}"),
            (false, None) => format!("/{source}"),
        };
        used.insert(source.clone());
        let object = Some(def.object.clone());
        t.mounts.push(Mount {
            path: mount_path,
            read_only: true,
            secret: if secret { object.clone() } else { None },
            config: if secret { None } else { object },
            key: Some(def.key.clone()),
            ..Mount::default()
        });
    }
}
