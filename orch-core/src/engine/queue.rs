//! A per-key work queue: keys are deduplicated, one key is never processed twice at once,
//! failures back off exponentially, and keys can be re-added after a delay.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

struct State<K> {
    queue: VecDeque<K>,
    queued: HashSet<K>,
    processing: HashSet<K>,
    dirty: HashSet<K>,
    failures: HashMap<K, u32>,
}

/// A deduplicating queue of keys to reconcile.
pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    notify: Notify,
    base_backoff: Duration,
    max_backoff: Duration,
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> WorkQueue<K> {
    /// A queue whose failures back off from `base` doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Arc<WorkQueue<K>> {
        Arc::new(WorkQueue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued: HashSet::new(),
                processing: HashSet::new(),
                dirty: HashSet::new(),
                failures: HashMap::new(),
            }),
            notify: Notify::new(),
            base_backoff: base,
            max_backoff: max,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` unless it is already queued; a key being processed is queued again once done.
    pub fn add(&self, key: K) {
        let mut g = self.lock();
        if g.processing.contains(&key) {
            g.dirty.insert(key);
            return;
        }
        if g.queued.insert(key.clone()) {
            g.queue.push_back(key);
            drop(g);
            self.notify.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(self: &Arc<Self>, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let q = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    /// Records a failure of `key` and queues it again after its backoff.
    pub fn retry(self: &Arc<Self>, key: K) -> Duration {
        let n = {
            let mut g = self.lock();
            let n = g.failures.entry(key.clone()).or_default();
            *n += 1;
            *n
        };
        let delay = self
            .base_backoff
            .saturating_mul(1u32 << (n - 1).min(16))
            .min(self.max_backoff);
        self.add_after(key, delay);
        delay
    }

    /// Clears the failure count of `key`.
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    /// Waits for a key and marks it processing. Call [`WorkQueue::done`] after.
    pub async fn next(&self) -> K {
        loop {
            let notified = self.notify.notified();
            if let Some(k) = self.try_take() {
                return k;
            }
            notified.await;
        }
    }

    fn try_take(&self) -> Option<K> {
        let mut g = self.lock();
        let k = g.queue.pop_front()?;
        g.queued.remove(&k);
        g.processing.insert(k.clone());
        if !g.queue.is_empty() {
            self.notify.notify_one();
        }
        Some(k)
    }

    /// Waits for at least one key, then takes up to `max` queued keys at once.
    pub async fn next_batch(&self, max: usize) -> Vec<K> {
        let first = self.next().await;
        let mut out = vec![first];
        while out.len() < max {
            match self.try_take() {
                Some(k) => out.push(k),
                None => break,
            }
        }
        out
    }

    /// Marks `key` processed; queues it again if it was added meanwhile.
    pub fn done(&self, key: &K) {
        let mut g = self.lock();
        g.processing.remove(key);
        if g.dirty.remove(key) && g.queued.insert(key.clone()) {
            g.queue.push_back(key.clone());
            drop(g);
            self.notify.notify_one();
        }
    }

    /// Keys waiting.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn dedups_and_backs_off() {
        let q = WorkQueue::<u32>::new(Duration::from_millis(100), Duration::from_secs(1));
        q.add(1);
        q.add(1);
        q.add(2);
        assert_eq!(q.len(), 2);
        let k = q.next().await;
        q.add(k); // added while processing: requeued on done
        assert_eq!(q.len(), 1);
        q.done(&k);
        assert_eq!(q.len(), 2);
        let batch = q.next_batch(10).await;
        assert_eq!(batch.len(), 2);
        for k in &batch {
            q.done(k);
        }
        assert_eq!(q.retry(7), Duration::from_millis(100));
        assert_eq!(q.retry(7), Duration::from_millis(200));
        for _ in 0..10 {
            q.retry(8);
        }
        assert_eq!(q.retry(8), Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(150)).await;
        tokio::task::yield_now().await;
        assert_eq!(q.next().await, 7);
    }
}
