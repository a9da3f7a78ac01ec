//! `deploy` (replicas, mode, resources, update_config, restart_policy, placement, labels,
//! endpoint_mode) and the service-level resource keys (`cpus`, `mem_limit`,
//! `mem_reservation`).

use std::collections::BTreeMap;

use super::fields::{list_or_dict, Ctx, Fields};
use orch_core::model::object::{
    IntOrPercent, LabelSelectorRequirement, Placement, Resources, RestartPolicy, SelectorOperator,
    ServiceMode, UpdateOrder, UpdateStrategy,
};
use orch_core::model::quantity::{Cpu, Memory};

/// What `deploy` says.
#[derive(Default)]
pub(crate) struct Deploy {
    pub(crate) replicas: Option<u32>,
    pub(crate) mode: ServiceMode,
    /// `mode: replicated-job` / `global-job`.
    pub(crate) job: bool,
    pub(crate) placement: Placement,
    pub(crate) update: UpdateStrategy,
    pub(crate) restart: Option<RestartPolicy>,
    pub(crate) limits: Limits,
    pub(crate) labels: Vec<(String, String)>,
}

/// CPU and memory limits and reservations, wherever they were written.
#[derive(Default)]
pub(crate) struct Limits {
    pub(crate) cpu_limit: Option<(Cpu, String)>,
    pub(crate) mem_limit: Option<(Memory, String)>,
    pub(crate) cpu_reserve: Option<(Cpu, String)>,
    pub(crate) mem_reserve: Option<(Memory, String)>,
}

/// Docker's memory sizes: bytes, or a number with b, k, m, g (binary; `kb`, `mb`, `gb` too).
pub(crate) fn docker_memory(s: &str) -> Result<Memory, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("invalid memory size {s:?}: a number of bytes or a number with b, k, m, g (e.g. \"512m\", \"1g\")")),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid memory size {s:?}: a number of bytes or a number with b, k, m, g (e.g. \"512m\", \"1g\")"))?;
    let bytes = n * mult as f64;
    if !bytes.is_finite() || !(0.0..=1e18).contains(&bytes) {
        return Err(format!("invalid memory size {s:?}: out of range"));
    }
    Ok(Memory(bytes.round() as u64))
}

impl Limits {
    /// Reads `cpus` and `memory` of `f` as limits (`limit`) or reservations.
    pub(crate) fn read(
        &mut self,
        ctx: &mut Ctx,
        f: &Fields<'_>,
        cpus: Option<&str>,
        memory: Option<&str>,
        limit: bool,
    ) {
        if let Some((cpus, c)) = cpus.and_then(|k| Some((k, f.str(ctx, k)?))) {
            match Cpu::parse(&c) {
                Ok(v) => {
                    let slot = if limit {
                        &mut self.cpu_limit
                    } else {
                        &mut self.cpu_reserve
                    };
                    *slot = Some((v, f.at(cpus)));
                }
                Err(e) => ctx.error(f.at(cpus), c, e),
            }
        }
        if let Some((memory, m)) = memory.and_then(|k| Some((k, f.str(ctx, k)?))) {
            match docker_memory(&m) {
                Ok(v) => {
                    let slot = if limit {
                        &mut self.mem_limit
                    } else {
                        &mut self.mem_reserve
                    };
                    *slot = Some((v, f.at(memory)));
                }
                Err(e) => ctx.error(f.at(memory), m, e),
            }
        }
    }

    /// orch's one amount per resource: the limit when given, else the reservation (orch
    /// enforces what it reserves), with a warning for each difference.
    pub(crate) fn resources(&self, ctx: &mut Ctx) -> Resources {
        fn pick<T: Copy + PartialEq + std::fmt::Display>(
            ctx: &mut Ctx,
            limit: &Option<(T, String)>,
            reserve: &Option<(T, String)>,
        ) -> Option<T> {
            match (limit, reserve) {
                (Some((l, _)), Some((r, rp))) => {
                    if l != r {
                        ctx.warn(rp, format!("orch reserves and limits one amount: the limit {l} is used, the reservation {r} is not"));
                    }
                    Some(*l)
                }
                (Some((l, _)), None) => Some(*l),
                (None, Some((r, rp))) => {
                    ctx.warn(
                        rp,
                        format!("orch reserves and limits one amount: {r} is also the limit"),
                    );
                    Some(*r)
                }
                (None, None) => None,
            }
        }
        Resources {
            cpu: pick(ctx, &self.cpu_limit, &self.cpu_reserve),
            memory: pick(ctx, &self.mem_limit, &self.mem_reserve),
        }
    }
}

fn span_note(ctx: &mut Ctx, f: &Fields<'_>, key: &str, what: &str) {
    if f.has(key) {
        f.skip(key);
        ctx.warn(f.at(key), what);
    }
}

fn update_config(ctx: &mut Ctx, f: &Fields<'_>, u: &mut UpdateStrategy) {
    let parallelism = f.uint(ctx, "parallelism", u64::from(u32::MAX));
    let order = f.str(ctx, "order");
    let count = match parallelism {
        Some(0) => IntOrPercent::Percent("100%".into()),
        Some(n) => IntOrPercent::Int(n as u32),
        None => IntOrPercent::Int(1),
    };
    match order.as_deref() {
        Some("start-first") => {
            u.order = Some(UpdateOrder::StartFirst);
            u.max_surge = Some(count);
        }
        None | Some("stop-first") => {
            u.order = Some(UpdateOrder::StopFirst);
            u.max_unavailable = Some(count);
        }
        Some(other) => ctx.error(f.at("order"), other, "must be start-first or stop-first"),
    }
    match f.str(ctx, "failure_action").as_deref() {
        None | Some("rollback") => {
            if f.has("failure_action") {
                u.auto_rollback = Some(true);
            }
        }
        Some("pause") => ctx.warn(
            f.at("failure_action"),
            "orch does not pause a failed rollout: it rolls back to the last revision that completed",
        ),
        Some("continue") => {
            u.auto_rollback = Some(false);
            ctx.warn(
                f.at("failure_action"),
                "orch does not go on past a failed rollout: it stops and keeps the replicas it has (no rollback)",
            )
        }
        Some(other) => ctx.error(
            f.at("failure_action"),
            other,
            "must be continue, rollback or pause",
        ),
    }
    span_note(
        ctx,
        f,
        "delay",
        "not honoured: orch replaces the next replicas as soon as the new ones are ready",
    );
    span_note(ctx, f, "monitor", "not honoured: orch judges a rollout by its progress deadline (10m), not by failures within a monitor window");
    span_note(
        ctx,
        f,
        "max_failure_ratio",
        "not honoured: a failed rollout is one that misses its progress deadline",
    );
    f.finish(ctx);
}

fn restart_policy(ctx: &mut Ctx, f: &Fields<'_>) -> Option<RestartPolicy> {
    let p = match f.str(ctx, "condition").as_deref() {
        None => None,
        Some("none") => Some(RestartPolicy::Never),
        Some("on-failure") => Some(RestartPolicy::OnFailure),
        Some("any") => Some(RestartPolicy::Always),
        Some(other) => {
            ctx.error(f.at("condition"), other, "must be none, on-failure or any");
            None
        }
    };
    span_note(
        ctx,
        f,
        "delay",
        "not honoured: orch restarts at once, then after 1s doubling up to 30s",
    );
    span_note(
        ctx,
        f,
        "max_attempts",
        "not honoured: orch restarts without a limit",
    );
    span_note(
        ctx,
        f,
        "window",
        "not honoured: a run of 10s resets orch's restart backoff",
    );
    f.finish(ctx);
    p
}

fn placement(ctx: &mut Ctx, f: &Fields<'_>, pl: &mut Placement) {
    let path = f.at("constraints");
    for (i, c) in f.strings(ctx, "constraints").into_iter().enumerate() {
        let at = format!("{path}[{i}]");
        let (lhs, op, rhs) = match (c.split_once("=="), c.split_once("!=")) {
            (Some((l, r)), _) => (l.trim(), "==", r.trim()),
            (None, Some((l, r))) => (l.trim(), "!=", r.trim()),
            _ => {
                ctx.error(
                    &at,
                    &c,
                    "a constraint is ATTRIBUTE==VALUE or ATTRIBUTE!=VALUE",
                );
                continue;
            }
        };
        if let Some(label) = lhs.strip_prefix("node.labels.") {
            if op == "==" {
                pl.node_selector.insert(label.to_string(), rhs.to_string());
            } else {
                pl.node_affinity.push(LabelSelectorRequirement {
                    key: label.to_string(),
                    operator: SelectorOperator::NotIn,
                    values: vec![rhs.to_string()],
                });
            }
            continue;
        }
        let msg = match lhs {
            "node.role" => "orch has no manager or worker roles for placement: ignored (label the nodes and use node.labels.KEY)",
            "node.hostname" | "node.id" => "orch places by node labels: ignored (label the node and use node.labels.KEY)",
            l if l.starts_with("engine.labels.") => "orch places by node labels: engine labels are ignored",
            l if l.starts_with("node.platform.") => "orch places by node labels: ignored (label the nodes with their platform and use node.labels.KEY)",
            _ => {
                ctx.error(&at, &c, "an attribute is node.labels.KEY, node.role, node.hostname, node.id, node.platform.os|arch or engine.labels.KEY");
                continue;
            }
        };
        ctx.warn(at, msg);
    }
    if f.has("preferences") {
        f.skip("preferences");
        ctx.warn(
            f.at("preferences"),
            "not honoured: orch spreads replicas over the least allocated nodes",
        );
    }
    if let Some(n) = f.uint(ctx, "max_replicas_per_node", u64::from(u32::MAX)) {
        if n > 0 {
            pl.max_per_node = Some(n as u32);
        }
    }
    f.finish(ctx);
}

/// `deploy:`.
pub(crate) fn deploy(ctx: &mut Ctx, f: &Fields<'_>) -> Deploy {
    let mut d = Deploy {
        replicas: f
            .uint(
                ctx,
                "replicas",
                orch_core::model::object::MAX_REPLICAS as u64,
            )
            .map(|n| n as u32),
        ..Deploy::default()
    };
    match f.str(ctx, "mode").as_deref() {
        None | Some("replicated") => {}
        Some("global") => d.mode = ServiceMode::Global,
        Some("replicated-job") => d.job = true,
        Some("global-job") => {
            d.job = true;
            ctx.warn(
                f.at("mode"),
                "orch runs a job's replicas where the scheduler places them, not one per node",
            );
        }
        Some(other) => ctx.error(
            f.at("mode"),
            other,
            "must be replicated, global, replicated-job or global-job",
        ),
    }
    if let Some(v) = f.get("labels") {
        for (k, val) in list_or_dict(ctx, &f.at("labels"), v) {
            d.labels.push((k, val.unwrap_or_default()));
        }
    }
    if let Some(m) = f.str(ctx, "endpoint_mode") {
        if m != "dnsrr" {
            ctx.warn(
                f.at("endpoint_mode"),
                format!("{m}: orch's service names resolve to the replicas' own addresses (as dnsrr); published ports are balanced by every node"),
            );
        }
    }
    if let Some(v) = f.get("resources") {
        let rf = Fields::of(ctx, f.at("resources"), v);
        for (key, limit) in [("limits", true), ("reservations", false)] {
            if let Some(v) = rf.get(key) {
                let lf = Fields::of(ctx, rf.at(key), v);
                d.limits.read(ctx, &lf, Some("cpus"), Some("memory"), limit);
                span_note(ctx, &lf, "pids", "not honoured: orch sets no process limit");
                span_note(
                    ctx,
                    &lf,
                    "devices",
                    "not honoured: orch gives containers no devices",
                );
                span_note(
                    ctx,
                    &lf,
                    "generic_resources",
                    "not honoured: orch schedules by CPU and memory only",
                );
                lf.finish(ctx);
            }
        }
        rf.finish(ctx);
    }
    if let Some(v) = f.get("update_config") {
        let uf = Fields::of(ctx, f.at("update_config"), v);
        update_config(ctx, &uf, &mut d.update);
    }
    span_note(
        ctx,
        f,
        "rollback_config",
        "not honoured: orch rolls back as it rolls out (update_config)",
    );
    if let Some(v) = f.get("restart_policy") {
        let rf = Fields::of(ctx, f.at("restart_policy"), v);
        d.restart = restart_policy(ctx, &rf);
    }
    if let Some(v) = f.get("placement") {
        let pf = Fields::of(ctx, f.at("placement"), v);
        placement(ctx, &pf, &mut d.placement);
    }
    f.finish(ctx);
    d
}

/// Labels into `out` where orch takes them (label keys and values); the rest into
/// `annotations`, with a warning.
pub(crate) fn split_labels(
    ctx: &mut Ctx,
    path: &str,
    labels: Vec<(String, String)>,
    out: &mut BTreeMap<String, String>,
    annotations: &mut BTreeMap<String, String>,
) {
    use orch_core::model::validate::{label_key, label_value};
    for (k, v) in labels {
        if label_key(&k).is_ok() && label_value(&v).is_ok() {
            out.insert(k, v);
        } else if label_key(&k).is_ok() {
            ctx.warn(
                format!("{path}.{k}"),
                format!("{v:?} is not a valid orch label value: kept as an annotation of the orch object"),
            );
            annotations.insert(k, v);
        } else {
            ctx.warn(format!("{path}.{k}"), "not a valid orch label key: dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_are_binary() {
        for (s, want) in [
            ("1048576", 1 << 20),
            ("512m", 512 << 20),
            ("1g", 1 << 30),
            ("1GB", 1 << 30),
            ("100k", 100 << 10),
            ("1.5g", 3 << 29),
        ] {
            assert_eq!(docker_memory(s).unwrap().0, want, "{s}");
        }
        for bad in ["", "x", "1q", "-1m"] {
            assert!(docker_memory(bad).is_err(), "{bad}");
        }
    }
}
