//! Several managers on one store: the keys they share (`/cluster/leader`,
//! `/cluster/managers/NAME`, `/cluster/revoked/NAME`), the [`ManagerRecord`] each registers,
//! and what `orchctl get managers` and `orchctl manager rm` are answered from
//! ([`ManagerAccess`], implemented by the daemon that knows its election and its etcd).
//!
//! The cache skips keys whose kind it does not know, so none of these reach controllers.

use std::collections::BTreeMap;

use async_trait::async_trait;
use orch_core::store::{Op, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::protocol::{ErrorCode, ManagerRole, ManagerStatus};

/// The leader key: its value is the leader manager's name; a term is its create revision.
pub use orch_core::leader::LEADER_KEY;

/// Where managers register ([`ManagerRecord`], one key per manager name).
pub const MANAGERS_PREFIX: &str = "/cluster/managers/";

/// Removed nodes, shared by every manager of one store (empty values).
pub const REVOKED_PREFIX: &str = "/cluster/revoked/";

/// The etcd member a manager runs (`orchd manager --init-cluster` or `--join`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdMemberRef {
    /// The member id etcd gave it.
    pub member_id: u64,
    /// Its peer URL (`https://IP:2380`).
    pub peer_url: String,
    /// Its client URL (`https://IP:2379`).
    pub client_url: String,
}

/// What a manager says about itself at `/cluster/managers/NAME` (JSON). On etcd the key is
/// attached to the manager's election lease, so a dead manager's record vanishes with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagerRecord {
    /// The manager's name (`--name`).
    pub name: String,
    /// Its cluster address as agents and administrators reach it (`HOST:PORT`).
    pub address: String,
    /// The etcd member it runs, if it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdMemberRef>,
    /// When it started (RFC 3339).
    pub started: String,
    /// Its orchd version.
    pub version: String,
}

impl ManagerRecord {
    /// The store key of manager `name`'s record.
    pub fn key_of(name: &str) -> String {
        format!("{MANAGERS_PREFIX}{name}")
    }

    /// The store key of this record.
    pub fn key(&self) -> String {
        ManagerRecord::key_of(&self.name)
    }

    /// The record as stored (JSON).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A stored record; the error names what is wrong.
    pub fn decode(value: &[u8]) -> Result<ManagerRecord, String> {
        serde_json::from_slice(value).map_err(|e| format!("manager record: {e}"))
    }
}

/// Every manager record in `store` (unreadable ones are skipped with a warning), by name.
pub async fn records(store: &dyn Store) -> Result<Vec<ManagerRecord>, StoreError> {
    let (kvs, _) = store.list(MANAGERS_PREFIX).await?;
    let mut out: Vec<ManagerRecord> = kvs
        .iter()
        .filter_map(|kv| match ManagerRecord::decode(&kv.value) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(key = %kv.key, error = %e, "skipping a manager record");
                None
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The cluster addresses of the managers registered in `store`, `first` (when registered)
/// leading, the others by name: the list agents and `orchctl` fail over along.
pub async fn addresses(store: &dyn Store, first: Option<&str>) -> Result<Vec<String>, StoreError> {
    let mut out: Vec<String> = records(store)
        .await?
        .into_iter()
        .map(|r| r.address)
        .collect();
    if let Some(i) = first.and_then(|f| out.iter().position(|a| a == f)) {
        let a = out.remove(i);
        out.insert(0, a);
    }
    out.dedup();
    Ok(out)
}

/// One member of the etcd cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdMember {
    /// Its id.
    pub id: u64,
    /// Its name (empty while an added member has not started).
    pub name: String,
    /// Its peer URLs.
    pub peer_urls: Vec<String>,
    /// Its client URLs.
    pub client_urls: Vec<String>,
    /// Whether it is the etcd leader.
    pub is_leader: bool,
}

/// What a manager sees of the etcd cluster orch runs: its members, and each member's health
/// by id (`healthy`, `unhealthy: ...`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdView {
    /// The members.
    pub members: Vec<EtcdMember>,
    /// Health by member id; a member missing here is reported `unknown`.
    pub health: BTreeMap<u64, String>,
}

/// What the handler asks the daemon about the managers; the daemon knows its own record, the
/// election and the etcd cluster it runs.
#[async_trait]
pub trait ManagerAccess: Send + Sync {
    /// This manager's record (also when the store holds none, as with an embedded store).
    fn own(&self) -> ManagerRecord;

    /// Who leads now, as this manager knows it (`None` while no one does).
    async fn leader(&self) -> Option<String>;

    /// The etcd cluster orch runs; `None` when the store is not such an etcd.
    async fn etcd(&self) -> Result<Option<EtcdView>, String>;

    /// Removes etcd member `id` from the cluster.
    async fn remove_etcd_member(&self, id: u64) -> Result<(), String>;
}

fn hex(id: u64) -> String {
    format!("{id:x}")
}

/// The rows of `orchctl get managers`: every registered manager (and this one), and every
/// etcd member no running manager registers (`down`: its manager is not running), by name.
pub fn statuses(
    records: &[ManagerRecord],
    own: &ManagerRecord,
    leader: Option<&str>,
    etcd: Option<&EtcdView>,
) -> Vec<ManagerStatus> {
    let mut by_name: BTreeMap<String, ManagerRecord> = records
        .iter()
        .map(|r| (r.name.clone(), r.clone()))
        .collect();
    by_name
        .entry(own.name.clone())
        .or_insert_with(|| own.clone());
    let health = |id: u64| -> String {
        match etcd {
            Some(v) if !v.members.iter().any(|m| m.id == id) => "not a member".into(),
            Some(v) => v
                .health
                .get(&id)
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
            None => "unknown".into(),
        }
    };
    let is_leader =
        |id: u64| etcd.is_some_and(|v| v.members.iter().any(|m| m.id == id && m.is_leader));
    let mut out: Vec<ManagerStatus> = by_name
        .values()
        .map(|r| ManagerStatus {
            name: r.name.clone(),
            address: r.address.clone(),
            role: if leader == Some(r.name.as_str()) {
                ManagerRole::Leader
            } else {
                ManagerRole::Standby
            },
            etcd_member: r.etcd.as_ref().map(|e| hex(e.member_id)),
            etcd_health: r.etcd.as_ref().map(|e| health(e.member_id)),
            etcd_leader: r.etcd.as_ref().is_some_and(|e| is_leader(e.member_id)),
            started: Some(r.started.clone()),
            version: r.version.clone(),
        })
        .collect();
    if let Some(v) = etcd {
        for m in &v.members {
            let registered = by_name
                .values()
                .any(|r| r.etcd.as_ref().is_some_and(|e| e.member_id == m.id));
            if registered {
                continue;
            }
            out.push(ManagerStatus {
                name: if m.name.is_empty() {
                    format!("(member {} not started)", hex(m.id))
                } else {
                    m.name.clone()
                },
                address: String::new(),
                role: ManagerRole::Down,
                etcd_member: Some(hex(m.id)),
                etcd_health: Some(health(m.id)),
                etcd_leader: m.is_leader,
                started: None,
                version: String::new(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// What [`remove`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    /// The etcd member removed with it (hex id), if it had one.
    pub etcd_member: Option<String>,
    /// Whether its record was there and is deleted.
    pub record: bool,
}

/// Removes manager `name`: its etcd member (so the etcd cluster no longer counts it for a
/// quorum) and its record. Refuses the last manager, and the one answering (ask another:
/// removing its own member would cut this request's store away).
pub async fn remove(
    store: &dyn Store,
    access: &dyn ManagerAccess,
    name: &str,
) -> Result<Removed, (ErrorCode, String)> {
    let unavailable = |e: StoreError| (ErrorCode::Unavailable, e.to_string());
    let own = access.own();
    let records = records(store).await.map_err(unavailable)?;
    let etcd = access
        .etcd()
        .await
        .map_err(|e| (ErrorCode::Unavailable, format!("etcd members: {e}")))?;
    let rows = statuses(&records, &own, None, etcd.as_ref());
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    if !names.contains(&name) {
        return Err((
            ErrorCode::NotFound,
            format!("no manager {name:?} (managers: {})", names.join(", ")),
        ));
    }
    if names.len() == 1 {
        return Err((
            ErrorCode::Invalid,
            format!(
                "manager {name} is the only manager: a cluster needs at least one, so it stays"
            ),
        ));
    }
    if name == own.name {
        return Err((
            ErrorCode::Invalid,
            format!(
                "manager {name} is the one answering this request: ask another manager to remove it \
                 (orchctl --server ADDR manager rm {name}), then stop its orchd"
            ),
        ));
    }
    let record = records.iter().find(|r| r.name == name);
    let member = match (&etcd, record.and_then(|r| r.etcd.as_ref())) {
        (Some(v), Some(e)) => v.members.iter().find(|m| m.id == e.member_id),
        (Some(v), None) => v.members.iter().find(|m| m.name == name),
        (None, _) => None,
    };
    let etcd_member = match member {
        Some(m) => {
            access.remove_etcd_member(m.id).await.map_err(|e| {
                (
                    ErrorCode::Unavailable,
                    format!(
                        "cannot remove etcd member {} of manager {name}: {e}",
                        hex(m.id)
                    ),
                )
            })?;
            Some(hex(m.id))
        }
        None => None,
    };
    let key = ManagerRecord::key_of(name);
    let present = store.get(&key).await.map_err(unavailable)?;
    if let Some(kv) = &present {
        match store
            .txn(vec![Op::Delete {
                key: key.clone(),
                expected: Some(kv.mod_revision),
            }])
            .await
        {
            // Gone meanwhile (its lease ended): as good.
            Ok(_) | Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(unavailable(e)),
        }
    }
    Ok(Removed {
        etcd_member,
        record: present.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, member: Option<u64>) -> ManagerRecord {
        ManagerRecord {
            name: name.into(),
            address: format!("10.0.0.{}:7443", name.len()),
            etcd: member.map(|id| EtcdMemberRef {
                member_id: id,
                peer_url: "https://10.0.0.1:2380".into(),
                client_url: "https://10.0.0.1:2379".into(),
            }),
            started: "2026-01-02T03:04:05Z".into(),
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn a_record_round_trips_and_bad_ones_say_why() {
        let r = rec("m1", Some(0xdead_beef_0000_0001));
        assert_eq!(ManagerRecord::decode(&r.encode()).unwrap(), r);
        assert_eq!(r.key(), "/cluster/managers/m1");
        let e = ManagerRecord::decode(b"{}").unwrap_err();
        assert!(e.contains("manager record"), "{e}");
    }

    #[test]
    fn statuses_mark_the_leader_and_members_without_a_manager() {
        let view = EtcdView {
            members: vec![
                EtcdMember {
                    id: 1,
                    name: "m1".into(),
                    peer_urls: vec![],
                    client_urls: vec![],
                    is_leader: true,
                },
                EtcdMember {
                    id: 2,
                    name: "m2".into(),
                    peer_urls: vec![],
                    client_urls: vec![],
                    is_leader: false,
                },
                EtcdMember {
                    id: 3,
                    name: "m3".into(),
                    peer_urls: vec![],
                    client_urls: vec![],
                    is_leader: false,
                },
            ],
            health: BTreeMap::from([
                (1, "healthy".into()),
                (2, "healthy".into()),
                (3, "unreachable: connection refused".into()),
            ]),
        };
        let rows = statuses(
            &[rec("m2", Some(2))],
            &rec("m1", Some(1)),
            Some("m2"),
            Some(&view),
        );
        let leaders: Vec<bool> = rows.iter().map(|r| r.etcd_leader).collect();
        assert_eq!(leaders, [true, false, false]);
        let got: Vec<(&str, ManagerRole, Option<&str>, Option<&str>)> = rows
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.role,
                    r.etcd_member.as_deref(),
                    r.etcd_health.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("m1", ManagerRole::Standby, Some("1"), Some("healthy")),
                ("m2", ManagerRole::Leader, Some("2"), Some("healthy")),
                (
                    "m3",
                    ManagerRole::Down,
                    Some("3"),
                    Some("unreachable: connection refused")
                ),
            ]
        );
        // Without etcd (an embedded store): this manager alone, leading.
        let rows = statuses(&[], &rec("solo", None), Some("solo"), None);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].role, ManagerRole::Leader);
        assert_eq!(rows[0].etcd_member, None);
        assert!(!rows[0].etcd_leader);
    }
}
