//! Who a caller is (from the client certificate the TLS layer verified against the cluster
//! CA) and what a node may write: its own node object, the status of replicas bound to it
//! (and deleting those it has stopped), and events. Anonymous callers get nothing but
//! `Cluster/Join`.

use orch_core::model::object::{Kind, Object};
use orch_core::store::{Op, Store};
use tonic::{Request, Status};

/// A verified caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// An agent: certificate subject `CN=node:NAME`.
    Node(String),
    /// A manager or an administrator (`CN=manager`, `CN=admin:NAME`): may do anything.
    Admin(String),
}

/// The common name certificates carry for node `name`.
pub fn node_cn(name: &str) -> String {
    format!("node:{name}")
}

/// The identity a certificate's common name stands for.
pub fn identity_of_cn(cn: &str) -> Option<Identity> {
    if let Some(n) = cn.strip_prefix("node:") {
        return (!n.is_empty()).then(|| Identity::Node(n.to_string()));
    }
    if cn == "manager" {
        return Some(Identity::Admin(cn.to_string()));
    }
    cn.strip_prefix("admin:")
        .filter(|n| !n.is_empty())
        .map(|n| Identity::Admin(n.to_string()))
}

/// The common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(String::from)
}

/// The caller of `req`, from its verified client certificate; `Unauthenticated` without one.
pub fn identity<T>(req: &Request<T>) -> Result<Identity, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated(
            "anonymous requests are refused: present a cluster certificate (agents get one by \
             joining with a token; orchctl reads its own from its context)",
        )
    })?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let cn = common_name(leaf)
        .ok_or_else(|| Status::unauthenticated("the client certificate has no common name"))?;
    identity_of_cn(&cn).ok_or_else(|| {
        Status::permission_denied(format!(
            "certificate subject CN={cn:?} is neither a node nor an administrator"
        ))
    })
}

/// Which nodes were removed, so their certificates are refused (a cluster manager keeps the
/// list; [`StoreService`](super::store::StoreService) asks it on every call).
pub trait Revocations: Send + Sync {
    /// Whether node `name` was removed.
    fn is_revoked(&self, name: &str) -> bool;
}

/// The refusal a removed node gets.
pub fn removed(node: &str) -> Status {
    Status::permission_denied(format!(
        "node {node} was removed from the cluster; join again with a token to come back"
    ))
}

fn denied(node: &str, key: &str, why: &str) -> Status {
    Status::permission_denied(format!("node {node} may not write {key}: {why}"))
}

/// Checks that node `node` may apply `ops`: its own `/nodes/NAME`; updates of replicas bound
/// to it that change only their status; deletes of replicas bound to it; events. Anything
/// else is refused naming the key.
pub async fn check_txn(store: &dyn Store, node: &str, ops: &[Op]) -> Result<(), Status> {
    for op in ops {
        let key = op.key();
        if let Op::Check { .. } = op {
            return Err(denied(
                node,
                key,
                "fence checks are the leader's, not a node's",
            ));
        }
        match Kind::of_key(key) {
            Some(Kind::Node) => {
                if key != Kind::Node.key("", node) {
                    return Err(denied(node, key, "a node writes only its own node object"));
                }
                // Cordon and drain are the operator's, the network lease the manager's: a
                // node cannot change them. (A write based on an older revision fails its
                // compare-and-swap anyway; only one that would apply is checked.)
                if let Op::Update {
                    value, expected, ..
                } = op
                {
                    let current = store.get(key).await.map_err(super::wire::status_of)?;
                    let spec = |b: &[u8]| match Object::decode(b, 0) {
                        Ok(Object::Node(n)) => {
                            Some((n.spec.unschedulable, n.spec.draining, n.spec.network))
                        }
                        _ => None,
                    };
                    if let Some(kv) = current.filter(|kv| kv.mod_revision == *expected) {
                        if spec(&kv.value) != spec(value) {
                            return Err(denied(
                                node,
                                key,
                                "cordon, drain and the network lease are set by operators and the manager, not by the node",
                            ));
                        }
                    }
                }
            }
            Some(Kind::Event) => {}
            Some(Kind::Replica) => {
                let current = store
                    .get(key)
                    .await
                    .map_err(super::wire::status_of)?
                    .and_then(|kv| Object::decode(&kv.value, 0).ok());
                let Some(Object::Replica(current)) = current else {
                    return Err(denied(
                        node,
                        key,
                        "nodes do not create replicas (missing or unreadable)",
                    ));
                };
                if current.spec.node.as_deref() != Some(node) {
                    return Err(denied(node, key, "the replica is not bound to this node"));
                }
                match op {
                    Op::Create { .. } => {
                        return Err(denied(node, key, "nodes do not create replicas"))
                    }
                    Op::Delete { .. } | Op::Check { .. } => {}
                    Op::Update { value, .. } => {
                        let Ok(Object::Replica(mut new)) = Object::decode(value, 0) else {
                            return Err(denied(node, key, "the new value is not a replica"));
                        };
                        new.status = current.status.clone();
                        if new != current {
                            return Err(denied(
                                node,
                                key,
                                "a node changes only a replica's status",
                            ));
                        }
                    }
                }
            }
            _ => {
                return Err(denied(
                    node,
                    key,
                    "nodes write only nodes, replica status and events",
                ))
            }
        }
    }
    Ok(())
}

/// Whether `node` may read secret `key` (`/secrets/NS/NAME`): only while a replica bound to
/// it, meant to run, refers to that secret. Secrets reach the nodes that need them, no more.
pub async fn node_may_read_secret(store: &dyn Store, node: &str, key: &str) -> Result<(), Status> {
    let rest = key.strip_prefix(&Kind::Secret.prefix()).unwrap_or_default();
    let (ns, name) = rest.split_once('/').unwrap_or((rest, ""));
    let (kvs, _) = store
        .list(&format!("{}{ns}/", Kind::Replica.prefix()))
        .await
        .map_err(super::wire::status_of)?;
    let needed = kvs.iter().any(|kv| {
        matches!(
            Object::decode(&kv.value, kv.mod_revision),
            Ok(Object::Replica(r)) if r.spec.node.as_deref() == Some(node)
                && r.spec.desired == orch_core::model::object::DesiredState::Running
                && r.spec.template.references().contains(&(true, name))
        )
    });
    if needed {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "node {node} may not read secret {ns}/{name}: no replica bound to it uses that secret"
        )))
    }
}

/// Whether a store key is a secret's (never listed or watched by nodes).
pub fn is_secret_key(key: &str) -> bool {
    key.starts_with(&Kind::Secret.prefix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_map_to_identities() {
        assert_eq!(identity_of_cn("node:n1"), Some(Identity::Node("n1".into())));
        assert_eq!(
            identity_of_cn("admin:alice"),
            Some(Identity::Admin("alice".into()))
        );
        assert_eq!(
            identity_of_cn("manager"),
            Some(Identity::Admin("manager".into()))
        );
        assert_eq!(identity_of_cn("node:"), None);
        assert_eq!(identity_of_cn("somebody"), None);
    }
}
