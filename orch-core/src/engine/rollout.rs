//! Rollouts: every change of a service's template (or placement) is a new revision, kept in
//! the service's status (the last 10, with their templates); a rollout completes when every
//! replica runs the current revision and is ready. One that misses its progress deadline
//! fails and, by default, is rolled back to the last revision that completed — automatically,
//! which Kubernetes does not do.

use std::time::Duration;

use crate::model::object::{
    RevisionRecord, RolloutState, RolloutStatus, Service, ServiceSpec, ServiceStatus,
};
use crate::model::quantity::Timestamp;

/// The progress deadline when a service sets none (Kubernetes' default).
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);

/// Revisions kept in a service's status.
pub const HISTORY: usize = 10;

/// The progress deadline of `spec`.
pub fn deadline(spec: &ServiceSpec) -> Duration {
    spec.update
        .progress_deadline
        .map_or(DEFAULT_PROGRESS_DEADLINE, |s| s.0)
}

/// Advances the rollout bookkeeping of `svc` into `status` (whose replica counts are fresh)
/// at `now`: records a new revision when the template changed, and marks the rollout
/// complete, paused or failed. When it fails and can roll back, returns the spec to write:
/// the last good revision's template and placement.
pub fn advance(
    svc: &Service,
    versions: &[String],
    desired: u32,
    status: &mut ServiceStatus,
    now: Timestamp,
) -> Option<ServiceSpec> {
    let old = &svc.status;
    status.history = old.history.clone();
    status.revision = old.revision;
    status.last_good_revision = old.last_good_revision;
    status.rollout = old.rollout.clone();
    let hash = svc.spec.revision_hash(versions);
    let next = status
        .history
        .iter()
        .map(|h| h.revision)
        .max()
        .unwrap_or(0)
        .max(status.revision)
        + 1;
    let previous = status
        .history
        .iter()
        .find(|h| h.revision == status.revision)
        .cloned();
    match status.history.iter().position(|h| h.hash == hash) {
        Some(i) if status.history[i].revision == status.revision => {}
        Some(i) => {
            // Back to a revision we had (undo, or our own rollback). As in Kubernetes it
            // becomes the newest revision: a new number (the old one goes), its creation time
            // kept, its change saying which revision it brings back.
            let mut rec = status.history.remove(i);
            let old_number = rec.revision;
            let own_rollback = status.rollout.state == RolloutState::RolledBack
                && old_number == status.last_good_revision;
            let diff = change_summary(previous.as_ref(), &rec);
            rec.change = cause_and(svc, format!("revision {old_number} again: {diff}"));
            rec.revision = next;
            if status.last_good_revision == old_number {
                status.last_good_revision = next;
            }
            status.revision = next;
            status.history.push(rec);
            if !own_rollback {
                status.rollout = RolloutStatus {
                    state: RolloutState::Progressing,
                    revision: status.revision,
                    started: Some(now),
                    message: String::new(),
                };
            }
        }
        None => {
            let mut rec = RevisionRecord {
                revision: next,
                hash,
                template: svc.spec.template.clone(),
                placement: svc.spec.placement.clone(),
                created: Some(now),
                config_versions: versions.to_vec(),
                change: String::new(),
            };
            rec.change = cause_and(svc, change_summary(previous.as_ref(), &rec));
            status.history.push(rec);
            let excess = status.history.len().saturating_sub(HISTORY);
            status.history.drain(..excess);
            status.revision = next;
            status.rollout = RolloutStatus {
                state: RolloutState::Progressing,
                revision: next,
                started: Some(now),
                message: String::new(),
            };
        }
    }
    let n = desired;
    let done = status.updated_replicas == n && status.ready_replicas == n && status.replicas == n;
    let r = &mut status.rollout;
    match r.state {
        RolloutState::Progressing | RolloutState::Paused => {
            if svc.spec.update.paused {
                r.state = RolloutState::Paused;
                return None;
            }
            if r.state == RolloutState::Paused {
                // Resumed: the deadline counts from now.
                r.state = RolloutState::Progressing;
                r.started = Some(now);
            }
            if done {
                r.state = RolloutState::Complete;
                r.message.clear();
                status.last_good_revision = status.revision;
                return None;
            }
            let limit = deadline(&svc.spec);
            let started = r.started.unwrap_or(now);
            if Duration::from_millis(now.0.saturating_sub(started.0)) <= limit {
                return None;
            }
            let why = format!(
                "revision {} did not complete within {}: {}/{n} updated, {} ready{}",
                r.revision,
                humantime::format_duration(limit),
                status.updated_replicas,
                status.ready_replicas,
                if status.message.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", status.message)
                }
            );
            let good = status.last_good_revision;
            let target = status
                .history
                .iter()
                .find(|h| h.revision == good && good != status.revision)
                .cloned();
            match target {
                Some(t) if svc.spec.update.auto_rollback.unwrap_or(true) => {
                    r.state = RolloutState::RolledBack;
                    // The next pass records it again under the next number.
                    let renumbered =
                        status.history.iter().map(|h| h.revision).max().unwrap_or(0) + 1;
                    r.message = format!(
                        "{why}; rolled back to revision {} (now revision {renumbered})",
                        t.revision
                    );
                    let mut spec = svc.spec.clone();
                    spec.template = t.template;
                    spec.placement = t.placement;
                    Some(spec)
                }
                _ => {
                    r.state = RolloutState::Failed;
                    r.message = why;
                    None
                }
            }
        }
        RolloutState::Complete | RolloutState::Failed | RolloutState::RolledBack => None,
    }
}

/// The annotation whose value a new revision records as its change cause (kubectl's
/// `kubernetes.io/change-cause`).
pub const CHANGE_CAUSE: &str = "orch/change-cause";

/// `svc`'s change cause (if annotated), then `change`.
fn cause_and(svc: &Service, change: String) -> String {
    match svc.metadata.annotations.get(CHANGE_CAUSE) {
        Some(cause) if !cause.is_empty() => format!("{cause}; {change}"),
        _ => change,
    }
}

/// Changes listed in a summary before `(+N more)`.
const SUMMARY_FIELDS: usize = 3;
/// Characters of a value shown in a summary.
const SUMMARY_VALUE: usize = 40;

/// What `next` changes from `prev` (its template, placement and the secrets' and configs'
/// revisions): up to three `path: old → new`, then how many more; `created` without `prev`.
pub fn change_summary(prev: Option<&RevisionRecord>, next: &RevisionRecord) -> String {
    use serde_json::Value;
    let Some(prev) = prev else {
        return "created".into();
    };
    fn parts(r: &RevisionRecord) -> Value {
        serde_json::json!({
            "template": r.template,
            "placement": r.placement,
            "uses": r.config_versions,
        })
    }
    let show = |_: &str, v: Option<&Value>| {
        let s = match v {
            None | Some(Value::Null) => "(none)".to_string(),
            Some(v) => v.to_string(),
        };
        if s.chars().count() > SUMMARY_VALUE {
            let cut: String = s.chars().take(SUMMARY_VALUE - 1).collect();
            format!("{cut}…")
        } else {
            s
        }
    };
    let mut out = crate::model::jsondiff::changes(&parts(prev), &parts(next), &show);
    if out.is_empty() {
        return "no change".into();
    }
    let more = out.len().saturating_sub(SUMMARY_FIELDS);
    out.truncate(SUMMARY_FIELDS);
    let mut s = out.join("; ");
    if more > 0 {
        s.push_str(&format!(" (+{more} more)"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::object::Object;

    fn svc(color: &str, deadline: &str) -> Service {
        let text = format!(
            "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  replicas: 2\n  update: {{progressDeadline: {deadline}}}\n  template:\n    command: [web]\n    env: [{{name: COLOR, value: {color}}}]\n"
        );
        match crate::model::manifest::parse("web.yaml", &text)
            .unwrap()
            .remove(0)
        {
            Object::Service(s) => *s,
            _ => unreachable!(),
        }
    }

    fn counts(updated: u32, ready: u32) -> ServiceStatus {
        ServiceStatus {
            replicas: 2,
            updated_replicas: updated,
            ready_replicas: ready,
            ..Default::default()
        }
    }

    #[test]
    fn revisions_complete_fail_and_roll_back() {
        let t0 = Timestamp(1_000_000);
        let at = |s: u64| Timestamp(t0.0 + s * 1000);
        // First revision: progressing, then complete.
        let mut s = svc("blue", "5s");
        let mut st = counts(0, 0);
        assert!(advance(&s, &[], 2, &mut st, t0).is_none());
        assert_eq!(
            (st.revision, st.rollout.state),
            (1, RolloutState::Progressing)
        );
        s.status = st;
        let mut st = counts(2, 2);
        advance(&s, &[], 2, &mut st, at(1));
        assert_eq!(st.rollout.state, RolloutState::Complete);
        assert_eq!(st.last_good_revision, 1);
        // A new template: revision 2, which never gets ready.
        let mut s2 = svc("green", "5s");
        s2.status = st;
        let mut st = counts(1, 1);
        advance(&s2, &[], 2, &mut st, at(2));
        assert_eq!(
            (st.revision, st.rollout.state),
            (2, RolloutState::Progressing)
        );
        assert_eq!(st.history.len(), 2);
        s2.status = st;
        let mut st = counts(1, 1);
        assert!(
            advance(&s2, &[], 2, &mut st, at(6)).is_none(),
            "within the deadline"
        );
        s2.status = st;
        let mut st = counts(1, 1);
        let back = advance(&s2, &[], 2, &mut st, at(8)).expect("rolled back after the deadline");
        assert_eq!(back.template.env[0].value, "blue");
        assert_eq!(st.rollout.state, RolloutState::RolledBack);
        assert!(
            st.rollout
                .message
                .contains("revision 2 did not complete within 5s"),
            "{}",
            st.rollout.message
        );
        assert!(
            st.rollout
                .message
                .contains("rolled back to revision 1 (now revision 3)"),
            "{}",
            st.rollout.message
        );
        // The service now has revision 1's template again: it stays RolledBack, and (as in
        // Kubernetes) revision 1 becomes revision 3, created when revision 1 was.
        let mut s3 = svc("blue", "5s");
        s3.status = st;
        let mut st = counts(2, 2);
        advance(&s3, &[], 2, &mut st, at(9));
        assert_eq!(
            (st.revision, st.rollout.state),
            (3, RolloutState::RolledBack)
        );
        assert_eq!(st.last_good_revision, 3);
        let numbers: Vec<u64> = st.history.iter().map(|h| h.revision).collect();
        assert_eq!(numbers, [2, 3]);
        assert_eq!(st.history[1].created, Some(t0));
        // Without auto-rollback the rollout just fails.
        let mut s4 = svc("red", "5s");
        s4.spec.update.auto_rollback = Some(false);
        s4.status = st;
        let mut st = counts(0, 0);
        advance(&s4, &[], 2, &mut st, at(10));
        assert_eq!(st.revision, 4);
        s4.status = st;
        let mut st = counts(0, 0);
        assert!(advance(&s4, &[], 2, &mut st, at(20)).is_none());
        assert_eq!(st.rollout.state, RolloutState::Failed);
    }

    /// Applies `s` over `prev`'s status at `t` with every replica ready.
    fn step(s: Service, prev: &ServiceStatus, t: u64) -> ServiceStatus {
        step_with(s, &[], prev, t)
    }

    /// [`step`] with the template's secrets and configs at `versions`.
    fn step_with(
        mut s: Service,
        versions: &[String],
        prev: &ServiceStatus,
        t: u64,
    ) -> ServiceStatus {
        s.status = prev.clone();
        let mut st = counts(2, 2);
        advance(&s, versions, 2, &mut st, Timestamp(t));
        st
    }

    #[test]
    fn an_undo_renumbers_keeps_the_creation_time_and_says_what_changed() {
        let st = step(svc("blue", "5s"), &ServiceStatus::default(), 1_000);
        let st = step(svc("green", "5s"), &st, 2_000);
        let mut red = svc("red", "5s");
        red.metadata
            .annotations
            .insert(CHANGE_CAUSE.into(), "paint it red".into());
        let st = step(red, &st, 3_000);
        let changes: Vec<&str> = st.history.iter().map(|h| h.change.as_str()).collect();
        assert_eq!(
            changes,
            [
                "created",
                r#"template.env[0].value: "blue" → "green""#,
                r#"paint it red; template.env[0].value: "green" → "red""#,
            ]
        );
        // Undo to green (revision 2): it becomes revision 4; 2 is gone; sorted by number.
        let st = step(svc("green", "5s"), &st, 4_000);
        let numbers: Vec<u64> = st.history.iter().map(|h| h.revision).collect();
        assert_eq!(numbers, [1, 3, 4]);
        assert_eq!((st.revision, st.last_good_revision), (4, 4));
        let back = st.history.last().unwrap();
        assert_eq!(
            back.created,
            Some(Timestamp(2_000)),
            "its creation time is kept"
        );
        assert_eq!(
            back.change,
            r#"revision 2 again: template.env[0].value: "red" → "green""#
        );
        assert_eq!(st.rollout.state, RolloutState::Complete);
        // A secret's or config's new revision alone is a change too, and says so.
        let mut s = svc("green", "5s");
        s.spec.template.env[0].value = "green".into();
        let st = step_with(s, &["config/app@7".into()], &st, 5_000);
        assert_eq!(st.revision, 5);
        assert_eq!(
            st.history.last().unwrap().change,
            r#"uses[0]: (none) → "config/app@7""#
        );
    }

    #[test]
    fn a_change_summary_names_three_fields_and_counts_the_rest() {
        let a = svc("blue", "5s");
        let mut b = svc("x".repeat(60).as_str(), "5s");
        b.spec.template.args = vec!["1".into(), "2".into(), "3".into()];
        let rec = |s: &Service| RevisionRecord {
            revision: 1,
            hash: s.spec.revision_hash(&[]),
            template: s.spec.template.clone(),
            placement: s.spec.placement.clone(),
            created: None,
            config_versions: Vec::new(),
            change: String::new(),
        };
        let sum = change_summary(Some(&rec(&a)), &rec(&b));
        assert!(
            sum.starts_with(r#"template.args: (none) → ["1","2","3"]"#),
            "{sum}"
        );
        assert!(
            sum.contains(r#"template.env[0].value: "blue" → "xxxx"#),
            "{sum}"
        );
        assert!(sum.contains('…'), "long values are cut: {sum}");
        assert_eq!(change_summary(Some(&rec(&a)), &rec(&a)), "no change");
        assert_eq!(change_summary(None, &rec(&a)), "created");
    }

    #[test]
    fn a_paused_rollout_waits_and_history_is_bounded() {
        let mut s = svc("c0", "5s");
        s.spec.update.paused = true;
        let mut st = counts(0, 0);
        advance(&s, &[], 2, &mut st, Timestamp(0));
        assert_eq!(st.rollout.state, RolloutState::Paused);
        s.status = st;
        let mut st = counts(0, 0);
        assert!(
            advance(&s, &[], 2, &mut st, Timestamp(100_000)).is_none(),
            "no deadline while paused"
        );
        assert_eq!(st.rollout.state, RolloutState::Paused);
        let mut st2 = st.clone();
        for i in 1..15 {
            let mut s = svc(&format!("c{i}"), "5s");
            s.status = st2.clone();
            let mut next = counts(2, 2);
            advance(&s, &[], 2, &mut next, Timestamp(200_000 + i));
            st2 = next;
        }
        assert_eq!(st2.history.len(), HISTORY);
        assert_eq!(st2.revision, 15);
    }
}
