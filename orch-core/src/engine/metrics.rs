//! The engine's metrics in the Prometheus text format: reconcile counts and latencies per
//! controller, scheduler pass latency and bindings, store latency per operation, and gauges
//! read from the cache at scrape time (replicas by phase, nodes by condition).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::store::{KeyValue, Op, Revision, Store, StoreError, WatchStream};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

#[derive(Default)]
struct Inner {
    /// (controller, result) → latency.
    reconciles: BTreeMap<(&'static str, &'static str), Histogram>,
    /// (operation, result) → latency.
    store: BTreeMap<(&'static str, &'static str), Histogram>,
    passes: Histogram,
    bound: u64,
}

/// A gauge series set: name, help, and `(labels, value)` pairs (`phase="Ready"`, 2).
pub type Gauge<'a> = (&'a str, &'a str, Vec<(String, f64)>);

/// The engine's counters and histograms.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn result(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "error"
    }
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// One reconcile of `controller` took `d`.
    pub fn reconcile(&self, controller: &'static str, ok: bool, d: Duration) {
        self.with(|m| {
            m.reconciles
                .entry((controller, result(ok)))
                .or_default()
                .observe(d)
        });
    }

    /// One scheduler pass took `d` and bound `bound` replicas.
    pub fn pass(&self, d: Duration, bound: usize) {
        self.with(|m| {
            m.passes.observe(d);
            m.bound += bound as u64;
        });
    }

    /// One store operation took `d`.
    pub fn store(&self, op: &'static str, ok: bool, d: Duration) {
        self.with(|m| m.store.entry((op, result(ok))).or_default().observe(d));
    }

    /// The text exposition, with `gauges` after the engine's own series.
    pub fn render(&self, gauges: &[Gauge<'_>]) -> String {
        let mut out = String::new();
        self.with(|m| {
            out.push_str("# HELP orch_reconcile_seconds Time of one reconcile, by controller and result.\n# TYPE orch_reconcile_seconds histogram\n");
            for ((c, r), h) in &m.reconciles {
                h.render(&mut out, "orch_reconcile_seconds", &format!("controller=\"{c}\",result=\"{r}\""));
            }
            out.push_str("# HELP orch_scheduler_pass_seconds Time of one scheduling pass.\n# TYPE orch_scheduler_pass_seconds histogram\n");
            m.passes.render(&mut out, "orch_scheduler_pass_seconds", "");
            let _ = writeln!(
                out,
                "# HELP orch_scheduler_bindings_total Replicas bound to nodes.\n# TYPE orch_scheduler_bindings_total counter\norch_scheduler_bindings_total {}",
                m.bound
            );
            out.push_str("# HELP orch_store_seconds Time of one store operation, by operation and result.\n# TYPE orch_store_seconds histogram\n");
            for ((op, r), h) in &m.store {
                h.render(&mut out, "orch_store_seconds", &format!("op=\"{op}\",result=\"{r}\""));
            }
        });
        for (name, help, series) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, v) in series {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        }
        out
    }
}

/// Appends the leadership series to `out`: `orch_leader` (1 while this engine leads),
/// `orch_leader_changes_total`, `orch_leader_since_seconds` and
/// `orch_leader_first_reconcile_seconds` (unix times as floats, 0 when there is none) and
/// `orch_leader_term` (the term's create revision, 0 when none).
pub(crate) fn render_leadership(out: &mut String, l: &crate::leader::Leadership) {
    let unix = |t: Option<std::time::SystemTime>| {
        t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge(
        out,
        "orch_leader",
        "1 while this engine leads (runs the control plane).",
        if l.leading { 1.0 } else { 0.0 },
    );
    let _ = writeln!(
        out,
        "# HELP orch_leader_changes_total Times this engine became leader or stopped being it.\n# TYPE orch_leader_changes_total counter\norch_leader_changes_total {}",
        l.changes
    );
    gauge(
        out,
        "orch_leader_since_seconds",
        "Unix time this engine's control plane started (0 while it does not lead).",
        unix(l.since),
    );
    gauge(
        out,
        "orch_leader_first_reconcile_seconds",
        "Unix time the first reconcile of this engine's term finished (0 before).",
        unix(l.first_reconcile),
    );
    gauge(
        out,
        "orch_leader_term",
        "Create revision of the leader key of this engine's term (0 without one).",
        l.term.as_ref().map_or(0.0, |t| t.created as f64),
    );
}

/// A store that times every operation into [`Metrics`].
pub struct TimedStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl TimedStore {
    /// Times `inner`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> TimedStore {
        TimedStore { inner, metrics }
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let t = std::time::Instant::now();
        let r = f.await;
        self.metrics.store(op, r.is_ok(), t.elapsed());
        r
    }
}

#[async_trait]
impl Store for TimedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.timed("get", self.inner.get(key)).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.timed("list", self.inner.list(prefix)).await
    }
    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.timed("txn", self.inner.txn(ops)).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.timed("watch", self.inner.watch(prefix, after)).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.timed("revision", self.inner.revision()).await
    }
    fn max_txn_ops(&self) -> usize {
        self.inner.max_txn_ops()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_cumulative_buckets_and_gauges() {
        let m = Metrics::default();
        m.reconcile("replication", true, Duration::from_millis(3));
        m.reconcile("replication", true, Duration::from_millis(300));
        m.pass(Duration::from_millis(1), 7);
        let text = m.render(&[(
            "orch_replicas",
            "Replicas by phase.",
            vec![("phase=\"Ready\"".into(), 2.0)],
        )]);
        assert!(text.contains("orch_reconcile_seconds_bucket{controller=\"replication\",result=\"ok\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("orch_reconcile_seconds_bucket{controller=\"replication\",result=\"ok\",le=\"0.5\"} 2"), "{text}");
        assert!(text
            .contains("orch_reconcile_seconds_count{controller=\"replication\",result=\"ok\"} 2"));
        assert!(text.contains("orch_scheduler_bindings_total 7"));
        assert!(text.contains("orch_scheduler_pass_seconds_count 1"));
        assert!(text.contains("# TYPE orch_replicas gauge\norch_replicas{phase=\"Ready\"} 2"));
    }
}
