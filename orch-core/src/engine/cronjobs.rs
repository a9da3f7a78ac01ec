//! The cron job controller: creates a Job `NAME-<minutes since the epoch>` from a cron job's
//! `spec.job` when its schedule is due (Kubernetes' CronJob). `concurrencyPolicy` says what
//! happens when an earlier run still runs (Allow: start anyway; Forbid: the due run waits
//! until it ends, and is dropped once `startingDeadline` passes; Replace: the running job is
//! deleted and the new one starts); `suspend` starts nothing; after downtime at most the
//! latest missed run starts, and only within `startingDeadline`. Finished jobs beyond the
//! history limits are deleted, oldest first (the job controller then removes their
//! replicas), and so is every job of a deleted cron job. The decision is the pure
//! [`decide`], with the clock passed in.

use std::time::{Duration, UNIX_EPOCH};

use crate::engine::cache::Change;
use crate::engine::controller::{Action, Reconcile};
use crate::engine::ctx::Ctx;
use crate::model::cron::parse_schedule;
use crate::model::object::{
    ConcurrencyPolicy, CronJob, CronJobStatus, Job, JobState, Kind, Metadata, Object, ObjectKey,
};
use crate::model::quantity::Timestamp;
use crate::store::{create_op, delete_op, txn_chunked, update_op, Op, StoreError};

/// The label every job of a cron job carries: the cron job's name.
pub const CRONJOB_LABEL: &str = "orch.dev/cronjob";

/// The name of the run of cron job `name` due at `t`: `NAME-<minutes since the epoch>`.
pub fn job_name(name: &str, t: Timestamp) -> String {
    format!("{name}-{}", t.0 / 60_000)
}

/// What one look at a cron job decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CronActions {
    /// A job to create: its name and the time it was due.
    pub create: Option<(String, Timestamp)>,
    /// Jobs (names) to delete: the running ones a Replace run replaces, and finished ones
    /// beyond the history limits.
    pub delete: Vec<String>,
    /// The cron job's status.
    pub status: CronJobStatus,
    /// When to look again (the next due time), if ever without a change.
    pub next: Option<Timestamp>,
}

fn finished_at(j: &Job) -> Timestamp {
    j.status
        .finished
        .or(j.metadata.creation_timestamp)
        .unwrap_or_default()
}

fn fmt_time(t: Timestamp) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(t.0);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Pure decision for `cj` given its jobs (those it owns) at `now`.
pub fn decide(cj: &CronJob, jobs: &[&Job], now: Timestamp) -> CronActions {
    let spec = &cj.spec;
    let mut a = CronActions {
        status: cj.status.clone(),
        ..Default::default()
    };
    let mut active: Vec<&Job> = Vec::new();
    let mut succeeded: Vec<&Job> = Vec::new();
    let mut failed: Vec<&Job> = Vec::new();
    for j in jobs {
        match j.status.state {
            JobState::Running => active.push(j),
            JobState::Succeeded => succeeded.push(j),
            JobState::Failed => failed.push(j),
        }
    }
    active.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    if let Some(t) = succeeded.iter().map(|j| finished_at(j)).max() {
        a.status.last_successful = a.status.last_successful.max(Some(t));
    }
    // History: the newest finished jobs stay, the older ones go.
    for (mut list, keep) in [
        (succeeded, spec.successful_jobs_history_limit),
        (failed, spec.failed_jobs_history_limit),
    ] {
        list.sort_by_key(|j| std::cmp::Reverse((finished_at(j), j.metadata.name.clone())));
        a.delete.extend(
            list.iter()
                .skip(keep as usize)
                .map(|j| j.metadata.name.clone()),
        );
    }
    a.status.active = active.iter().map(|j| j.metadata.name.clone()).collect();
    let schedule = match parse_schedule(&spec.schedule, spec.time_zone.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            a.status.message = format!("spec.schedule: {e}");
            return a;
        }
    };
    a.next = schedule.next(now);
    if spec.suspend {
        a.status.message = "suspended: no new runs".into();
        a.next = None;
        return a;
    }
    a.status.message.clear();
    // The latest due time since the last run (or the cron job's creation), within the
    // starting deadline: earlier missed runs are not started (at most one after downtime).
    let since = cj
        .status
        .last_schedule
        .or(cj.metadata.creation_timestamp)
        .unwrap_or(now);
    let Some(due) = schedule.previous(now).filter(|t| *t > since) else {
        return a;
    };
    if let Some(deadline) = spec.starting_deadline {
        let late = Duration::from_millis(now.0.saturating_sub(due.0));
        if late > deadline.0 {
            a.status.message = format!(
                "skipped the run due at {}: not started within the starting deadline of {deadline}",
                fmt_time(due)
            );
            return a;
        }
    }
    let name = job_name(&cj.metadata.name, due);
    if jobs.iter().any(|j| j.metadata.name == name) {
        // Created already (the status write after it failed).
        a.status.last_schedule = Some(due);
        return a;
    }
    if !active.is_empty() {
        match spec.concurrency_policy {
            ConcurrencyPolicy::Allow => {}
            ConcurrencyPolicy::Forbid => {
                a.status.message = format!(
                    "the run due at {} waits: {} still running (concurrencyPolicy Forbid)",
                    fmt_time(due),
                    a.status.active.join(", ")
                );
                return a;
            }
            ConcurrencyPolicy::Replace => {
                a.delete.append(&mut a.status.active);
            }
        }
    }
    a.status.last_schedule = Some(due);
    a.status.active.push(name.clone());
    a.status.active.sort();
    a.create = Some((name, due));
    a
}

/// The job of cron job `cj` due at `due`, named `name`.
fn new_job(cj: &CronJob, name: String) -> Job {
    let mut labels = cj.metadata.labels.clone();
    labels.insert(CRONJOB_LABEL.into(), cj.metadata.name.clone());
    Job {
        metadata: Metadata {
            name,
            namespace: cj.metadata.namespace.clone(),
            labels,
            uid: crate::model::object::new_uid(),
            creation_timestamp: Some(Timestamp::now()),
            owner: Some(owner_of(&cj.metadata.name)),
            generation: 1,
            ..Metadata::default()
        },
        spec: cj.spec.job.clone(),
        status: Default::default(),
    }
}

/// The `metadata.owner` of the jobs of cron job `name`: `cronjob/NAME`.
pub fn owner_of(name: &str) -> String {
    format!("cronjob/{name}")
}

/// The jobs in `ns` owned by cron job `name`.
fn jobs_of(ctx: &Ctx, ns: &str, name: &str) -> Vec<std::sync::Arc<Object>> {
    let owner = owner_of(name);
    ctx.cache
        .list(Kind::Job)
        .into_iter()
        .filter(|o| {
            let m = o.metadata();
            m.namespace == ns && m.owner.as_deref() == Some(owner.as_str())
        })
        .collect()
}

/// Reconciles one cron job; returns when to look again.
async fn reconcile(ctx: &Ctx, key: &ObjectKey) -> Result<Option<Timestamp>, StoreError> {
    let (ns, name) = (key.namespace.as_str(), key.name.as_str());
    let objects = jobs_of(ctx, ns, name);
    let jobs: Vec<&Job> = objects
        .iter()
        .filter_map(|o| match o.as_ref() {
            Object::Job(j) => Some(&**j),
            _ => None,
        })
        .collect();
    let cj = match ctx.cache.get(Kind::CronJob, &key.store_key()).as_deref() {
        Some(Object::CronJob(c)) => (**c).clone(),
        _ => {
            // Deleted: so are its jobs (and, through the job controller, their replicas).
            let ops: Vec<Op> = objects.iter().map(|o| delete_op(o)).collect();
            if let Some(rev) = txn_chunked(&*ctx.store, ops, crate::store::MAX_TXN_OPS).await? {
                ctx.cache.wait_for(rev).await;
            }
            return Ok(None);
        }
    };
    let a = decide(&cj, &jobs, Timestamp::now());
    let mut ops: Vec<Op> = Vec::new();
    for j in &jobs {
        if a.delete.contains(&j.metadata.name) {
            ops.push(delete_op(&Object::Job(Box::new((*j).clone()))));
        }
    }
    if let Some((job, _)) = &a.create {
        ops.push(create_op(&Object::Job(Box::new(new_job(&cj, job.clone())))));
    }
    if a.status != cj.status {
        let mut c = cj.clone();
        c.status = a.status.clone();
        ops.push(update_op(&Object::CronJob(Box::new(c))));
    }
    if ops.is_empty() {
        return Ok(a.next);
    }
    let rev = txn_chunked(&*ctx.store, ops, crate::store::MAX_TXN_OPS).await?;
    let rec = ctx.recorder.about(&cj.metadata.uid);
    if let Some((job, due)) = &a.create {
        rec.normal(
            Kind::CronJob,
            ns,
            name,
            "SuccessfulCreate",
            format!("created job {job} for the run due at {}", fmt_time(*due)),
        );
    }
    if a.status.message != cj.status.message && a.status.message.starts_with("skipped") {
        rec.warning(
            Kind::CronJob,
            ns,
            name,
            "MissedSchedule",
            a.status.message.clone(),
        );
    }
    if let Some(rev) = rev {
        ctx.cache.wait_for(rev).await;
    }
    Ok(a.next)
}

/// The cron job controller (see the module doc).
pub(crate) struct CronJobs;

#[async_trait::async_trait]
impl Reconcile for CronJobs {
    type Error = StoreError;
    const NAME: &'static str = "cronjobs";

    fn keys_for(&self, _: &Ctx, c: &Change) -> Vec<ObjectKey> {
        let Change::Object {
            kind,
            key,
            old,
            new,
            ..
        } = c
        else {
            return Vec::new();
        };
        match kind {
            Kind::CronJob => ObjectKey::parse(key).into_iter().collect(),
            Kind::Job => {
                let mut keys: Vec<ObjectKey> = [old, new]
                    .into_iter()
                    .flatten()
                    .filter_map(|o| {
                        let m = o.metadata();
                        let owner = m.owner.as_deref()?.strip_prefix("cronjob/")?;
                        Some(ObjectKey::new(Kind::CronJob, &m.namespace, owner))
                    })
                    .collect();
                keys.dedup();
                keys
            }
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, ctx: &Ctx) -> Vec<ObjectKey> {
        let mut keys: Vec<ObjectKey> = ctx
            .cache
            .list(Kind::CronJob)
            .iter()
            .map(|o| ObjectKey::of(o))
            .collect();
        // Cron jobs deleted while their jobs remain.
        for o in ctx.cache.list(Kind::Job) {
            let m = o.metadata();
            if let Some(owner) = m.owner.as_deref().and_then(|o| o.strip_prefix("cronjob/")) {
                keys.push(ObjectKey::new(Kind::CronJob, &m.namespace, owner));
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    async fn reconcile(&self, key: &ObjectKey, ctx: &Ctx) -> Result<Action, StoreError> {
        Ok(match reconcile(ctx, key).await? {
            Some(next) => {
                let wait = Duration::from_millis(next.0.saturating_sub(Timestamp::now().0));
                // A little past the due minute, so the run is due when the look comes.
                Action::requeue(wait + Duration::from_millis(50))
            }
            None => Action::await_change(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn cron(body: &str) -> CronJob {
        let text = format!(
            "apiVersion: orch/v1\nkind: CronJob\nmetadata: {{name: c}}\nspec:\n{body}  job:\n    template:\n      command: [x]\n      restartPolicy: Never\n"
        );
        match crate::model::manifest::parse("c.yaml", &text)
            .unwrap()
            .remove(0)
        {
            Object::CronJob(c) => {
                let mut c = *c;
                c.metadata.creation_timestamp = Some(Timestamp(100 * MIN));
                c
            }
            _ => unreachable!(),
        }
    }

    fn job(name: &str, state: JobState, finished: u64) -> Job {
        let c = cron("  schedule: '* * * * *'\n");
        let mut j = new_job(&c, name.into());
        j.status.state = state;
        if state != JobState::Running {
            j.status.finished = Some(Timestamp(finished));
        }
        j
    }

    #[test]
    fn schedules_parse_five_fields_and_macros_in_their_time_zone() {
        use crate::model::cron::parse_schedule;
        for ok in [
            "* * * * *",
            "*/5 1-3 * * MON-FRI",
            "0 0 1 1 *",
            "@hourly",
            "@Daily",
            "@midnight",
        ] {
            assert!(parse_schedule(ok, None).is_ok(), "{ok}");
        }
        assert!(parse_schedule("* * * * *", Some("UTC")).is_ok());
        for (bad, says) in [
            ("", "has 0 field(s)"),
            ("* * * *", "has 4 field(s)"),
            ("0 * * * * *", "has 6 field(s)"),
            ("@every 5m", "is not one of them"),
            ("61 * * * *", "\"61 * * * *\""),
            ("a b c d e", "\"a b c d e\""),
        ] {
            let e = parse_schedule(bad, None).unwrap_err();
            assert!(
                e.contains("five cron fields") && e.contains(says),
                "{bad}: {e}"
            );
        }
        let e = parse_schedule("* * * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(e.contains("\"Mars/Olympus\"") && e.contains("IANA"), "{e}");
        // In a time zone: 09:00 in Berlin is 08:00 UTC in winter, 07:00 in summer.
        let berlin = parse_schedule("0 9 * * *", Some("Europe/Berlin")).unwrap();
        let jan_1 = Timestamp(1_767_225_600_000); // 2026-01-01T00:00:00Z
        assert_eq!(berlin.next(jan_1), Some(Timestamp(jan_1.0 + 8 * 3_600_000)));
        let jul_1 = Timestamp(1_782_864_000_000); // 2026-07-01T00:00:00Z
        assert_eq!(berlin.next(jul_1), Some(Timestamp(jul_1.0 + 7 * 3_600_000)));
        // Times: every 15 minutes; the previous at or before, the next after.
        let s = parse_schedule("*/15 * * * *", None).unwrap();
        assert_eq!(
            s.previous(Timestamp(31 * MIN + 5)),
            Some(Timestamp(30 * MIN))
        );
        assert_eq!(s.previous(Timestamp(30 * MIN)), Some(Timestamp(30 * MIN)));
        assert_eq!(s.next(Timestamp(30 * MIN)), Some(Timestamp(45 * MIN)));
    }

    #[test]
    fn decide_runs_when_due_by_policy_and_keeps_history() {
        let every = "  schedule: '*/10 * * * *'\n";
        // (spec lines, last schedule, jobs, now) → (created, deleted, active, message part)
        struct Case {
            what: &'static str,
            spec: String,
            last: Option<u64>,
            jobs: Vec<Job>,
            now: u64,
            create: Option<&'static str>,
            delete: &'static [&'static str],
            active: &'static [&'static str],
            message: &'static str,
        }
        let running = |n: &str| job(n, JobState::Running, 0);
        let cases = vec![
            Case {
                what: "not due yet",
                spec: every.into(),
                last: None,
                jobs: vec![],
                now: 105 * MIN,
                create: None,
                delete: &[],
                active: &[],
                message: "",
            },
            Case {
                what: "due",
                spec: every.into(),
                last: None,
                jobs: vec![],
                now: 110 * MIN + 3,
                create: Some("c-110"),
                delete: &[],
                active: &["c-110"],
                message: "",
            },
            Case {
                what: "already ran",
                spec: every.into(),
                last: Some(110),
                jobs: vec![],
                now: 115 * MIN,
                create: None,
                delete: &[],
                active: &[],
                message: "",
            },
            Case {
                what: "downtime: only the latest missed run",
                spec: every.into(),
                last: Some(110),
                jobs: vec![],
                now: 175 * MIN,
                create: Some("c-170"),
                delete: &[],
                active: &["c-170"],
                message: "",
            },
            Case {
                what: "downtime past the starting deadline",
                spec: format!("{every}  startingDeadline: 60s\n"),
                last: Some(110),
                jobs: vec![],
                now: 175 * MIN,
                create: None,
                delete: &[],
                active: &[],
                message: "skipped the run due at",
            },
            Case {
                what: "within the starting deadline",
                spec: format!("{every}  startingDeadline: 60s\n"),
                last: Some(110),
                jobs: vec![],
                now: 170 * MIN + 59_000,
                create: Some("c-170"),
                delete: &[],
                active: &["c-170"],
                message: "",
            },
            Case {
                what: "allow: runs beside the active one",
                spec: every.into(),
                last: Some(110),
                jobs: vec![running("c-110")],
                now: 120 * MIN,
                create: Some("c-120"),
                delete: &[],
                active: &["c-110", "c-120"],
                message: "",
            },
            Case {
                what: "forbid: waits",
                spec: format!("{every}  concurrencyPolicy: Forbid\n"),
                last: Some(110),
                jobs: vec![running("c-110")],
                now: 120 * MIN,
                create: None,
                delete: &[],
                active: &["c-110"],
                message: "c-110 still running (concurrencyPolicy Forbid)",
            },
            Case {
                what: "forbid: runs once the other finished",
                spec: format!("{every}  concurrencyPolicy: Forbid\n"),
                last: Some(110),
                jobs: vec![job("c-110", JobState::Succeeded, 121 * MIN)],
                now: 121 * MIN,
                create: Some("c-120"),
                delete: &[],
                active: &["c-120"],
                message: "",
            },
            Case {
                what: "replace: the running one goes",
                spec: format!("{every}  concurrencyPolicy: Replace\n"),
                last: Some(110),
                jobs: vec![running("c-110")],
                now: 120 * MIN,
                create: Some("c-120"),
                delete: &["c-110"],
                active: &["c-120"],
                message: "",
            },
            Case {
                what: "suspended",
                spec: format!("{every}  suspend: true\n"),
                last: Some(110),
                jobs: vec![],
                now: 120 * MIN,
                create: None,
                delete: &[],
                active: &[],
                message: "suspended",
            },
            Case {
                what: "the job exists already",
                spec: every.into(),
                last: Some(110),
                jobs: vec![running("c-120")],
                now: 120 * MIN,
                create: None,
                delete: &[],
                active: &["c-120"],
                message: "",
            },
            Case {
                what: "history limits: 2 successful, 1 failed kept",
                spec: format!(
                    "{every}  successfulJobsHistoryLimit: 2\n  failedJobsHistoryLimit: 1\n"
                ),
                last: Some(110),
                jobs: vec![
                    job("c-70", JobState::Succeeded, 71 * MIN),
                    job("c-80", JobState::Succeeded, 81 * MIN),
                    job("c-90", JobState::Succeeded, 91 * MIN),
                    job("c-100", JobState::Failed, 101 * MIN),
                    job("c-110", JobState::Failed, 111 * MIN),
                ],
                now: 115 * MIN,
                create: None,
                delete: &["c-70", "c-100"],
                active: &[],
                message: "",
            },
            Case {
                what: "history limit 0",
                spec: format!("{every}  successfulJobsHistoryLimit: 0\n"),
                last: Some(110),
                jobs: vec![job("c-110", JobState::Succeeded, 111 * MIN)],
                now: 115 * MIN,
                create: None,
                delete: &["c-110"],
                active: &[],
                message: "",
            },
        ];
        for c in cases {
            let mut cj = cron(&c.spec);
            cj.status.last_schedule = c.last.map(|m| Timestamp(m * MIN));
            let jobs: Vec<&Job> = c.jobs.iter().collect();
            let a = decide(&cj, &jobs, Timestamp(c.now));
            assert_eq!(
                a.create.as_ref().map(|(n, _)| n.as_str()),
                c.create,
                "{}: {a:?}",
                c.what
            );
            let mut deleted = a.delete.clone();
            deleted.sort();
            let mut want: Vec<&str> = c.delete.to_vec();
            want.sort();
            assert_eq!(deleted, want, "{}", c.what);
            assert_eq!(a.status.active, c.active, "{}", c.what);
            assert!(
                a.status.message.contains(c.message),
                "{}: {:?}",
                c.what,
                a.status.message
            );
            if c.message.is_empty() {
                assert!(
                    a.status.message.is_empty(),
                    "{}: {:?}",
                    c.what,
                    a.status.message
                );
            }
            if let Some((_, due)) = a.create {
                assert_eq!(a.status.last_schedule, Some(due), "{}", c.what);
            }
            if !cj.spec.suspend {
                assert!(
                    a.next.is_some_and(|n| n.0 > c.now),
                    "{}: {:?}",
                    c.what,
                    a.next
                );
            }
        }
        // The last success is the newest finished successful job.
        let cj = cron(every);
        let done = job("c-110", JobState::Succeeded, 112 * MIN);
        let a = decide(&cj, &[&done], Timestamp(115 * MIN));
        assert_eq!(a.status.last_successful, Some(Timestamp(112 * MIN)));
    }
}
