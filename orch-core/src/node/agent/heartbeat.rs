//! The node object: registration, heartbeat, and the status it reports.

use crate::model::object::{Kind, Metadata, Node, NodeCondition, NodeSpec, NodeStatus, Object};
use crate::model::quantity::Timestamp;
use std::sync::atomic::Ordering;

use crate::store::{create_op, update_op};

use super::Agent;

impl Agent {
    pub(super) fn node_status(&self, unavailable: &[(String, String)]) -> NodeStatus {
        let info = self.runtime.info();
        NodeStatus {
            endpoint: self.cfg.endpoint.clone(),
            addresses: self.cfg.addresses.clone(),
            capacity: self.cfg.capacity.clone(),
            max_replicas: self.cfg.max_replicas,
            runtimes: self
                .runtime
                .offers()
                .into_iter()
                .filter(|n| !unavailable.iter().any(|(u, _)| u == n))
                .collect(),
            runtime_problems: unavailable
                .iter()
                .map(|(n, why)| format!("{n}: {why}"))
                .collect(),
            condition: NodeCondition::Ready,
            heartbeat: Some(Timestamp::now()),
            limits: info.limits_note,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            network: self.network_status(),
            volumes: self
                .cfg
                .volumes
                .as_ref()
                .map(|v| v.list())
                .unwrap_or_default(),
        }
    }

    /// Creates or refreshes the node object (registration and heartbeat).
    pub(super) async fn heartbeat(&self) -> Result<(), crate::store::StoreError> {
        let key = Kind::Node.key("", &self.cfg.node);
        let unavailable = self.runtime.unavailable().await;
        let written = self.heartbeat_rev.load(Ordering::Relaxed);
        let cached = self
            .ctx
            .cache
            .get(Kind::Node, &key)
            .filter(|o| o.metadata().revision >= written);
        let op = match cached.as_deref() {
            Some(Object::Node(n)) => {
                let mut n = n.clone();
                n.status = self.node_status(&unavailable);
                for (k, v) in &self.cfg.labels {
                    n.metadata
                        .labels
                        .entry(k.clone())
                        .or_insert_with(|| v.clone());
                }
                for t in &self.cfg.taints {
                    if !n
                        .spec
                        .taints
                        .iter()
                        .any(|x| x.key == t.key && x.effect == t.effect)
                    {
                        n.spec.taints.push(t.clone());
                    }
                }
                update_op(&Object::Node(n))
            }
            _ => match crate::store::get_object(&*self.ctx.store, Kind::Node, "", &self.cfg.node)
                .await?
            {
                Some(Object::Node(mut n)) => {
                    n.status = self.node_status(&unavailable);
                    update_op(&Object::Node(n))
                }
                _ => create_op(&Object::Node(Node {
                    metadata: Metadata {
                        name: self.cfg.node.clone(),
                        labels: self.cfg.labels.clone().into(),
                        uid: crate::model::object::new_uid(),
                        creation_timestamp: Some(Timestamp::now()),
                        generation: 1,
                        ..Metadata::default()
                    },
                    spec: NodeSpec {
                        taints: self.cfg.taints.clone(),
                        ..NodeSpec::default()
                    },
                    status: self.node_status(&unavailable),
                })),
            },
        };
        let rev = self.ctx.store.txn(vec![op]).await?;
        self.heartbeat_rev.store(rev, Ordering::Relaxed);
        // So the next heartbeat's compare-and-swap starts from this write; but never wait
        // past a heartbeat for it: a cache that is listing again (its manager failed over)
        // must not stop the heartbeats, or a live node would be judged silent. A cache that
        // lags is passed by (above) and the store read instead.
        let _ = tokio::time::timeout(self.cfg.heartbeat, self.ctx.cache.wait_for(rev)).await;
        Ok(())
    }
}
