//! Deployment, StatefulSet, DaemonSet, ReplicationController, Job and CronJob.

use std::collections::BTreeSet;

use orch_core::model::object::{
    ConcurrencyPolicy, CronJob, CronJobSpec, CronJobStatus, IntOrPercent, Job, JobSpec, JobStatus,
    LabelSelector, Metadata, Object, Service, ServiceMode, ServiceSpec, ServiceStatus,
    UpdateStrategy,
};
use orch_core::model::quantity::Span;
use serde_json::Value;

use super::fields::{shown, Ctx, Fields};
use super::pod::{label_selector, pod_template, Pod};

/// A workload's kind, as far as its spec differs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicationController,
}

/// A pod template of the input, for Services' selectors and named target ports.
pub(crate) struct Seen {
    /// Its namespace.
    pub namespace: String,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its container's port names.
    pub ports: Vec<String>,
}

impl Seen {
    fn of(namespace: &str, t: &orch_core::model::object::Template) -> Seen {
        Seen {
            namespace: namespace.into(),
            labels: t.labels.clone(),
            ports: t.ports.iter().map(|p| p.name.clone()).collect(),
        }
    }
}

/// Every pod template of the input.
pub(crate) type Templates = Vec<Seen>;

/// A Deployment, StatefulSet, DaemonSet or ReplicationController's `spec` as an orch Service.
pub(crate) fn service(
    cx: &mut Ctx,
    kind: Workload,
    metadata: Metadata,
    mut spec: Fields,
    templates: &mut Templates,
) -> Option<Object> {
    let replicas = if kind == Workload::DaemonSet {
        1
    } else {
        spec.int(cx, "replicas", 0, orch_core::model::object::MAX_REPLICAS)
            .unwrap_or(1) as u32
    };
    let mut claims = BTreeSet::new();
    if kind == Workload::StatefulSet {
        for (p, c) in spec.list(cx, "volumeClaimTemplates") {
            let mut f = Fields::new(cx, c, &p);
            let name = f
                .obj(cx, "metadata")
                .and_then(|mut md| {
                    let n = md.str(cx, "name");
                    md.skip("labels");
                    md.skip("annotations");
                    md.finish(cx);
                    n
                })
                .unwrap_or_default();
            if name.is_empty() {
                cx.error(
                    &f.at("metadata.name"),
                    "",
                    "every volume claim template needs a name",
                );
            }
            f.ignore(cx, "spec", "not honoured: each replica gets a node-local orch volume CLAIM-REPLICA (e.g. data-web-0), created on first use; size, access modes and storage class do not apply");
            f.skip("apiVersion");
            f.skip("kind");
            f.ignore(cx, "status", "ignored: set by the cluster");
            f.finish(cx);
            claims.insert(name);
        }
    }
    let Pod {
        template,
        placement,
    } = template_of(cx, &mut spec, &claims)?;
    // The selector: orch's service owns its replicas; it must select the template, as
    // Kubernetes requires.
    let sel_path = spec.at("selector");
    let selector = match kind {
        Workload::ReplicationController => LabelSelector {
            match_labels: spec.str_map(cx, "selector"),
            match_expressions: Vec::new(),
        },
        _ => match spec.obj(cx, "selector") {
            Some(s) => label_selector(cx, s),
            None => {
                cx.error(
                    &sel_path,
                    "",
                    "needs a selector (matchLabels of the pod template's labels)",
                );
                LabelSelector::default()
            }
        },
    };
    if !selector.matches(&template.labels) {
        cx.error(
            &sel_path,
            "",
            "does not select the pod template's labels (spec.template.metadata.labels): Kubernetes refuses this too",
        );
    }
    templates.push(Seen::of(&metadata.namespace, &template));
    let mut update = UpdateStrategy::default();
    let mut mode = ServiceMode::Replicated;
    match kind {
        Workload::Deployment => {
            if let Some(s) = spec.obj(cx, "strategy") {
                deployment_strategy(cx, s, &mut update);
            }
            if let Some(p) = spec.int(cx, "progressDeadlineSeconds", 1, i64::MAX) {
                update.progress_deadline = Some(Span::secs(p as u64));
            }
            // Kubernetes marks a rollout that misses its deadline failed, and rolls nothing
            // back.
            update.auto_rollback = Some(false);
            if let Some(p) = spec.bool(cx, "paused") {
                update.paused = p;
            }
        }
        Workload::StatefulSet => {
            mode = ServiceMode::Ordered;
            if let Some(s) = spec.obj(cx, "updateStrategy") {
                set_strategy(cx, s, &mut update, true);
            }
            spec.skip("serviceName");
            if let Some(p) = spec.str(cx, "podManagementPolicy") {
                if p == "Parallel" {
                    cx.warn(
                        &spec.at("podManagementPolicy"),
                        "Parallel: orch starts an ordered service's replicas in order, each once the one before is Ready",
                    );
                } else if p != "OrderedReady" {
                    cx.error(
                        &spec.at("podManagementPolicy"),
                        &format!("{p:?}"),
                        "must be OrderedReady or Parallel",
                    );
                }
            }
            spec.ignore(
                cx,
                "persistentVolumeClaimRetentionPolicy",
                "ignored: per-replica volumes are kept until `orchctl volume rm`",
            );
            spec.ignore(cx, "ordinals", "ignored: ordinals start at 0");
        }
        Workload::DaemonSet => {
            mode = ServiceMode::Global;
            if let Some(s) = spec.obj(cx, "updateStrategy") {
                set_strategy(cx, s, &mut update, false);
            }
        }
        Workload::ReplicationController => {}
    }
    spec.ignore(
        cx,
        "minReadySeconds",
        "ignored: orch counts a replica available as soon as it is Ready",
    );
    spec.ignore(
        cx,
        "revisionHistoryLimit",
        "ignored: orch keeps the last 10 revisions",
    );
    spec.finish(cx);
    Some(Object::from(Service {
        metadata,
        spec: ServiceSpec {
            replicas,
            template,
            placement,
            update,
            mode,
            publish: Vec::new(),
            headless: true,
            depends_on: Vec::new(),
        },
        status: ServiceStatus::default(),
    }))
}

/// The pod template at `spec.template` (an error when there is none).
fn template_of(cx: &mut Ctx, spec: &mut Fields, claims: &BTreeSet<String>) -> Option<Pod> {
    let tpath = spec.at("template");
    let Some(tv) = spec.take("template") else {
        cx.error(&tpath, "", "needs a pod template");
        return None;
    };
    Some(pod_template(cx, tv, &tpath, claims))
}

/// An int or a percentage (`maxSurge`, `maxUnavailable`).
fn int_or_percent(cx: &mut Ctx, f: &mut Fields, key: &str) -> Option<IntOrPercent> {
    let v = f.take(key)?;
    match v {
        Value::String(s) => {
            let ok = s
                .strip_suffix('%')
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            if ok {
                Some(IntOrPercent::Percent(s.clone()))
            } else if let Ok(n) = s.parse::<u32>() {
                Some(IntOrPercent::Int(n))
            } else {
                cx.error(
                    &f.at(key),
                    &shown(v),
                    "must be a whole number or a percentage such as \"25%\"",
                );
                None
            }
        }
        _ => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Some(IntOrPercent::Int(n)),
            None => {
                cx.error(
                    &f.at(key),
                    &shown(v),
                    "must be a whole number or a percentage such as \"25%\"",
                );
                None
            }
        },
    }
}

fn rolling(cx: &mut Ctx, f: &mut Fields, update: &mut UpdateStrategy, partition: bool) {
    if let Some(mut r) = f.obj(cx, "rollingUpdate") {
        update.max_surge = int_or_percent(cx, &mut r, "maxSurge");
        update.max_unavailable = int_or_percent(cx, &mut r, "maxUnavailable");
        if partition {
            r.ignore(cx, "partition", "ignored: orch updates every replica");
        }
        r.finish(cx);
    }
}

fn deployment_strategy(cx: &mut Ctx, mut s: Fields, update: &mut UpdateStrategy) {
    match s.str(cx, "type").as_deref() {
        None | Some("RollingUpdate") => rolling(cx, &mut s, update, false),
        Some("Recreate") => {
            update.max_surge = Some(IntOrPercent::Int(0));
            update.max_unavailable = Some(IntOrPercent::Percent("100%".into()));
            cx.warn(
                &s.at("type"),
                "Recreate: mapped to maxSurge 0, maxUnavailable 100% (old replicas stop as new ones are created; orch does not wait for every old one to be gone first)",
            );
            if s.has("rollingUpdate") {
                s.ignore(cx, "rollingUpdate", "ignored with type Recreate");
            }
        }
        Some(t) => cx.error(
            &s.at("type"),
            &format!("{t:?}"),
            "must be RollingUpdate or Recreate",
        ),
    }
    s.finish(cx);
}

/// A StatefulSet's or DaemonSet's `updateStrategy`.
fn set_strategy(cx: &mut Ctx, mut s: Fields, update: &mut UpdateStrategy, partition: bool) {
    match s.str(cx, "type").as_deref() {
        None | Some("RollingUpdate") => rolling(cx, &mut s, update, partition),
        Some("OnDelete") => {
            update.paused = true;
            cx.warn(
                &s.at("type"),
                "OnDelete: mapped to a paused rollout (replicas keep the old template until `orchctl rollout resume`; deleting one does not update it)",
            );
        }
        Some(t) => cx.error(
            &s.at("type"),
            &format!("{t:?}"),
            "must be RollingUpdate or OnDelete",
        ),
    }
    s.finish(cx);
}

/// Job fields orch does not honour.
const JOB_IGNORED: &[(&str, &str)] = &[
    (
        "ttlSecondsAfterFinished",
        "ignored: finished jobs stay until deleted (a CronJob's history limits delete its own)",
    ),
    (
        "completionMode",
        "ignored: orch's job replicas are not indexed (NonIndexed)",
    ),
    ("suspend", "ignored: the job starts when applied"),
    (
        "podFailurePolicy",
        "ignored: every failure counts against backoffLimit",
    ),
    (
        "backoffLimitPerIndex",
        "ignored: orch's job replicas are not indexed",
    ),
    (
        "maxFailedIndexes",
        "ignored: orch's job replicas are not indexed",
    ),
    (
        "podReplacementPolicy",
        "ignored: a failed replica is replaced once it has stopped",
    ),
    (
        "successPolicy",
        "ignored: the job succeeds after `completions` successes",
    ),
    ("managedBy", "ignored: orch's job controller runs it"),
    ("manualSelector", "ignored: the job owns its replicas"),
    ("selector", "ignored: the job owns its replicas"),
];

/// A Job's `spec` (also a CronJob's `jobTemplate.spec`).
pub(crate) fn job_spec(
    cx: &mut Ctx,
    mut spec: Fields,
    namespace: &str,
    templates: &mut Templates,
) -> Option<JobSpec> {
    let Pod {
        template,
        placement,
    } = template_of(cx, &mut spec, &BTreeSet::new())?;
    templates.push(Seen::of(namespace, &template));
    let completions = spec.int(cx, "completions", 1, 10_000).map(|n| n as u32);
    let parallelism = spec.int(cx, "parallelism", 1, 10_000).map(|n| n as u32);
    if completions.is_none() && parallelism.is_some_and(|p| p > 1) {
        cx.warn(
            &spec.at("parallelism"),
            "without completions Kubernetes finishes after the first success (a work queue); orch needs completions: 1 is used",
        );
    }
    let backoff_limit = spec.u32(cx, "backoffLimit").unwrap_or(6);
    let active_deadline = spec
        .int(cx, "activeDeadlineSeconds", 1, i64::MAX)
        .map(|s| Span::secs(s as u64));
    spec.ignore_all(cx, JOB_IGNORED);
    spec.finish(cx);
    Some(JobSpec {
        template,
        placement,
        completions: completions.unwrap_or(1),
        parallelism: parallelism.unwrap_or(1),
        backoff_limit,
        active_deadline,
        depends_on: Vec::new(),
    })
}

/// A Job.
pub(crate) fn job(
    cx: &mut Ctx,
    metadata: Metadata,
    spec: Fields,
    templates: &mut Templates,
) -> Option<Object> {
    let spec = job_spec(cx, spec, &metadata.namespace, templates)?;
    Some(Object::from(Job {
        metadata,
        spec,
        status: JobStatus::default(),
    }))
}

/// A CronJob.
pub(crate) fn cron_job(
    cx: &mut Ctx,
    metadata: Metadata,
    mut spec: Fields,
    templates: &mut Templates,
) -> Option<Object> {
    let schedule = spec.str(cx, "schedule").unwrap_or_default();
    if schedule.trim().is_empty() {
        cx.error(
            &spec.at("schedule"),
            "",
            "needs a schedule (five cron fields or a macro such as @hourly)",
        );
    }
    let time_zone = spec.str(cx, "timeZone");
    let concurrency_policy = spec
        .choice(
            cx,
            "concurrencyPolicy",
            &[
                ("Allow", ConcurrencyPolicy::Allow),
                ("Forbid", ConcurrencyPolicy::Forbid),
                ("Replace", ConcurrencyPolicy::Replace),
            ],
        )
        .unwrap_or_default();
    let suspend = spec.bool(cx, "suspend").unwrap_or(false);
    let starting_deadline = spec
        .int(cx, "startingDeadlineSeconds", 0, i64::MAX)
        .map(|s| Span::secs(s as u64));
    let successful_jobs_history_limit = spec.u32(cx, "successfulJobsHistoryLimit").unwrap_or(3);
    let failed_jobs_history_limit = spec.u32(cx, "failedJobsHistoryLimit").unwrap_or(1);
    let jt_path = spec.at("jobTemplate");
    let job = match spec.obj(cx, "jobTemplate") {
        Some(mut jt) => {
            if let Some(mut md) = jt.obj(cx, "metadata") {
                md.ignore(
                    cx,
                    "labels",
                    "ignored: the jobs carry the cron job's name, not these labels",
                );
                md.ignore(
                    cx,
                    "annotations",
                    "ignored: jobs carry no annotations of their own",
                );
                md.finish(cx);
            }
            let job = match jt.obj(cx, "spec") {
                Some(js) => job_spec(cx, js, &metadata.namespace, templates),
                None => {
                    cx.error(&format!("{jt_path}.spec"), "", "needs a job spec");
                    None
                }
            };
            jt.finish(cx);
            job
        }
        None => {
            cx.error(&jt_path, "", "needs a jobTemplate");
            None
        }
    };
    spec.finish(cx);
    Some(Object::from(CronJob {
        metadata,
        spec: CronJobSpec {
            schedule,
            time_zone,
            job: job?,
            concurrency_policy,
            suspend,
            starting_deadline,
            successful_jobs_history_limit,
            failed_jobs_history_limit,
        },
        status: CronJobStatus::default(),
    }))
}
