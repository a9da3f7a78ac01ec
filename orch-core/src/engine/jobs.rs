//! The job controller: runs a job's replicas to completion. It keeps up to `parallelism`
//! replicas running until `completions` have succeeded; failures (failed replicas with
//! `restartPolicy: Never`, restarts with `OnFailure`) beyond `backoffLimit`, or passing
//! `activeDeadline`, fail the job and stop what still runs. Finished replicas are kept (their
//! logs stay readable) until the job is deleted. A job's replicas belong to `job:NAME`, apart
//! from services.

use std::time::Duration;

use crate::engine::cache::Change;
use crate::engine::controller::{Action, Reconcile};
use crate::engine::ctx::Ctx;
use crate::model::object::{
    DesiredState, Job, JobState, JobStatus, Kind, Object, ObjectKey, Owner, Phase, Reason, Replica,
    RestartPolicy, JOB_LABEL, SERVICE_LABEL,
};
use crate::model::quantity::Timestamp;
use crate::store::{create_op, delete_op, txn_chunked, update_op, Op, StoreError};

/// What one look at a job decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct JobDecision {
    /// Replicas to create now.
    pub create: u32,
    /// Replicas (keys) to stop.
    pub stop: Vec<String>,
    /// The job's status.
    pub status: JobStatus,
}

fn succeeded(r: &Replica) -> bool {
    r.status.phase == Phase::Exited
}

fn failed_for_good(r: &Replica) -> bool {
    r.status.phase == Phase::Failed && r.status.reason == Reason::Error
}

/// Pure decision for `job` given its replicas at `now`.
pub fn decide(job: &Job, replicas: &[&Replica], now: Timestamp) -> JobDecision {
    let key = |r: &Replica| Kind::Replica.key(&r.metadata.namespace, &r.metadata.name);
    let spec = &job.spec;
    let mut status = job.status.clone();
    status.started.get_or_insert(now);
    let live: Vec<&&Replica> = replicas
        .iter()
        .filter(|r| r.spec.desired == DesiredState::Running && r.status.phase != Phase::Lost)
        .collect();
    status.succeeded = live.iter().filter(|r| succeeded(r)).count() as u32;
    status.failed = match spec.template.restart_policy {
        RestartPolicy::OnFailure => live.iter().map(|r| r.status.restarts).sum(),
        _ => replicas.iter().filter(|r| failed_for_good(r)).count() as u32,
    };
    let active: Vec<&&Replica> = live
        .iter()
        .copied()
        .filter(|r| !succeeded(r) && !failed_for_good(r))
        .collect();
    status.active = active.len() as u32;
    let mut d = JobDecision::default();
    if status.state == JobState::Running {
        let deadline_passed = spec.active_deadline.is_some_and(|dl| {
            Duration::from_millis(now.0.saturating_sub(status.started.unwrap_or(now).0)) > dl.0
        });
        if status.succeeded >= spec.completions {
            status.state = JobState::Succeeded;
            status.finished = Some(now);
        } else if status.failed > spec.backoff_limit {
            status.state = JobState::Failed;
            status.finished = Some(now);
            status.message = format!(
                "{} failure(s), more than the backoff limit of {}",
                status.failed, spec.backoff_limit
            );
        } else if deadline_passed {
            status.state = JobState::Failed;
            status.finished = Some(now);
            status.message = format!(
                "not complete within its active deadline of {}",
                spec.active_deadline
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            );
        }
    }
    if status.state == JobState::Running {
        let wanted = spec
            .parallelism
            .min(spec.completions.saturating_sub(status.succeeded));
        d.create = wanted.saturating_sub(status.active);
    } else {
        d.stop = active.iter().map(|r| key(r)).collect();
    }
    d.status = status;
    d
}

/// A new replica of `job`.
fn new_replica(job: &Job) -> Replica {
    let mut svc_like = crate::model::object::Service {
        metadata: job.metadata.clone(),
        spec: crate::model::object::ServiceSpec {
            placement: job.spec.placement.clone(),
            ..crate::model::object::ServiceSpec::new(1, job.spec.template.clone())
        },
        status: Default::default(),
    };
    svc_like.metadata.name = job.metadata.name.clone();
    let mut r = crate::engine::replication::new_replica(&svc_like, &[]);
    r.spec.service = Owner::Job(job.metadata.name.clone());
    r.metadata.owner = Some(format!("job/{}", job.metadata.name));
    r.metadata.labels.remove(SERVICE_LABEL);
    r.metadata
        .labels
        .insert(JOB_LABEL.into(), job.metadata.name.clone());
    r
}

/// Reconciles one job (by store key).
pub async fn reconcile(ctx: &Ctx, key: &ObjectKey) -> Result<bool, StoreError> {
    let (ns, name) = (key.namespace.as_str(), key.name.as_str());
    let job = match ctx.cache.get(Kind::Job, &key.store_key()).as_deref() {
        Some(Object::Job(j)) => Some((**j).clone()),
        _ => None,
    };
    let objects = ctx
        .cache
        .replica_objects_of_service(ns, &Owner::Job(name.to_string()).to_string());
    let replicas: Vec<&Replica> = objects.iter().filter_map(|o| o.as_replica()).collect();
    let mut ops: Vec<Op> = Vec::new();
    let Some(job) = job else {
        // Deleted: its replicas go (running ones are stopped first by their agent).
        for r in replicas {
            if r.spec.node.is_none() || !r.status.phase.is_up() {
                ops.push(delete_op(&Object::Replica(r.clone())));
            } else if r.spec.desired != DesiredState::Stopped {
                let mut r = r.clone();
                r.spec.desired = DesiredState::Stopped;
                ops.push(update_op(&Object::Replica(r)));
            }
        }
        return Ok(txn_chunked(&*ctx.store, ops, crate::store::MAX_TXN_OPS)
            .await?
            .is_some());
    };
    // dependsOn: no first replica (and no start) before every dependency holds.
    if replicas.is_empty() && job.status.started.is_none() && job.status.state == JobState::Running
    {
        let gate = crate::engine::depends::gate_in(ctx, ns, &job.spec.depends_on);
        let message = match &gate {
            crate::engine::depends::Gate::Open => None,
            crate::engine::depends::Gate::Wait(m) | crate::engine::depends::Gate::Never(m) => {
                Some(m.clone())
            }
        };
        if let Some(message) = message {
            if job.status.message == message {
                return Ok(false);
            }
            if matches!(gate, crate::engine::depends::Gate::Never(_)) {
                ctx.recorder.about(&job.metadata.uid).warning(
                    Kind::Job,
                    ns,
                    name,
                    "DependencyFailed",
                    message.clone(),
                );
            }
            let mut j = job.clone();
            j.status.message = message;
            if let Some(rev) = txn_chunked(
                &*ctx.store,
                vec![update_op(&Object::Job(Box::new(j)))],
                crate::store::MAX_TXN_OPS,
            )
            .await?
            {
                ctx.cache.wait_for(rev).await;
            }
            return Ok(false);
        }
    }
    let mut d = decide(&job, &replicas, Timestamp::now());
    // The gate opened: what it said is over.
    let gated = |m: &str| m.starts_with("waiting for ") || m.starts_with("will not start: ");
    if gated(&job.status.message) && d.status.message == job.status.message {
        d.status.message.clear();
    }
    for k in &d.stop {
        if let Some(r) = replicas
            .iter()
            .find(|r| Kind::Replica.key(ns, &r.metadata.name) == *k)
        {
            let mut r = (*r).clone();
            r.spec.desired = DesiredState::Stopped;
            ops.push(update_op(&Object::Replica(r)));
        }
    }
    for _ in 0..d.create {
        ops.push(create_op(&Object::Replica(new_replica(&job))));
    }
    let finished = d.status.state != JobState::Running && job.status.state == JobState::Running;
    if d.status != job.status {
        let mut j = job.clone();
        j.status = d.status.clone();
        ops.push(update_op(&Object::Job(Box::new(j))));
    }
    if ops.is_empty() {
        return Ok(d.status.state == JobState::Running);
    }
    let rev = txn_chunked(&*ctx.store, ops, crate::store::MAX_TXN_OPS).await?;
    if finished {
        let (reason, msg) = match d.status.state {
            JobState::Succeeded => (
                "Completed",
                format!(
                    "{} of {} succeeded",
                    d.status.succeeded, job.spec.completions
                ),
            ),
            _ => ("Failed", d.status.message.clone()),
        };
        let rec = ctx.recorder.about(&job.metadata.uid);
        if d.status.state == JobState::Succeeded {
            rec.normal(Kind::Job, ns, name, reason, msg);
        } else {
            rec.warning(Kind::Job, ns, name, reason, msg);
        }
    }
    if let Some(rev) = rev {
        ctx.cache.wait_for(rev).await;
    }
    Ok(d.status.state == JobState::Running)
}

/// The job controller (see the module doc).
pub(crate) struct Jobs {
    /// Jobs by what they depend on: a change of a dependency wakes the jobs that wait for it.
    dependents: crate::engine::depends::Dependents,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            dependents: crate::engine::depends::Dependents::of_jobs(),
        }
    }
}

#[async_trait::async_trait]
impl Reconcile for Jobs {
    type Error = StoreError;
    const NAME: &'static str = "jobs";

    fn keys_for(&self, ctx: &Ctx, c: &Change) -> Vec<ObjectKey> {
        let mut keys = if matches!(c.kind(), Some(Kind::Job | Kind::Service | Kind::Replica)) {
            self.dependents.keys_for(ctx, c)
        } else {
            Vec::new()
        };
        keys.extend(match c {
            Change::Object {
                kind: Kind::Job,
                key,
                ..
            } => ObjectKey::parse(key).into_iter().collect(),
            Change::Object {
                kind: Kind::Replica,
                ..
            } => c
                .replicas()
                .filter_map(|r| {
                    let name = r.spec.service.job()?;
                    Some(ObjectKey::new(Kind::Job, &r.metadata.namespace, name))
                })
                .collect(),
            _ => Vec::new(),
        });
        keys
    }

    fn all_keys(&self, ctx: &Ctx) -> Vec<ObjectKey> {
        let jobs = ctx.cache.list(Kind::Job);
        self.dependents.rebuild(&jobs);
        let mut keys: Vec<ObjectKey> = jobs.iter().map(|o| ObjectKey::of(o)).collect();
        for (ns, owner) in ctx.cache.services_with_replicas() {
            if let Owner::Job(name) = owner {
                keys.push(ObjectKey::new(Kind::Job, ns, name));
            }
        }
        keys
    }

    async fn reconcile(&self, key: &ObjectKey, ctx: &Ctx) -> Result<Action, StoreError> {
        Ok(if reconcile(ctx, key).await? {
            // For the active deadline.
            Action::requeue(Duration::from_secs(1))
        } else {
            Action::await_change()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(body: &str) -> Job {
        let text = format!("apiVersion: orch/v1\nkind: Job\nmetadata: {{name: j}}\nspec:\n{body}  template:\n    command: [x]\n    restartPolicy: Never\n");
        match crate::model::manifest::parse("j.yaml", &text)
            .unwrap()
            .remove(0)
        {
            Object::Job(j) => *j,
            _ => unreachable!(),
        }
    }

    fn rep(j: &Job, phase: Phase, reason: &str) -> Replica {
        let mut r = new_replica(j);
        r.status.phase = phase;
        r.status.reason = reason.into();
        r
    }

    #[test]
    fn parallelism_completions_backoff_and_deadline() {
        let j = job("  completions: 3\n  parallelism: 2\n");
        let now = Timestamp(1_000_000);
        let d = decide(&j, &[], now);
        assert_eq!(d.create, 2, "parallelism caps the first wave");
        let a = rep(&j, Phase::Exited, "Completed");
        let b = rep(&j, Phase::Ready, "");
        let d = decide(&j, &[&a, &b], now);
        assert_eq!((d.create, d.status.succeeded, d.status.active), (1, 1, 1));
        let c = rep(&j, Phase::Exited, "Completed");
        let e = rep(&j, Phase::Exited, "Completed");
        let d = decide(&j, &[&a, &c, &e], now);
        assert_eq!(d.status.state, JobState::Succeeded);
        assert_eq!(d.create, 0);
        // Backoff limit 1: the second failure fails the job and stops what runs.
        let j = job("  backoffLimit: 1\n  parallelism: 2\n  completions: 5\n");
        let f1 = rep(&j, Phase::Failed, "Error");
        let f2 = rep(&j, Phase::Failed, "Error");
        let run = rep(&j, Phase::Ready, "");
        let d = decide(&j, &[&f1, &run], now);
        assert_eq!(d.status.state, JobState::Running);
        let d = decide(&j, &[&f1, &f2, &run], now);
        assert_eq!(d.status.state, JobState::Failed);
        assert_eq!(d.stop.len(), 1);
        // The deadline counts from the start the status recorded.
        let mut j = job("  activeDeadline: 2s\n");
        j.status.started = Some(now);
        let r = rep(&j, Phase::Ready, "");
        assert_eq!(
            decide(&j, &[&r], Timestamp(now.0 + 1_000)).status.state,
            JobState::Running
        );
        let d = decide(&j, &[&r], Timestamp(now.0 + 3_000));
        assert_eq!(d.status.state, JobState::Failed);
        assert!(
            d.status.message.contains("active deadline of 2s"),
            "{}",
            d.status.message
        );
    }
}
