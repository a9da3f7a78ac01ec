//! Leader election, cluster administration, quorum loss and TLS on real etcd members, which
//! each test starts itself ([`LocalEtcdCluster`], tuned like orch-run members: heartbeat 50
//! ms, election timeout 500 ms, so a 1 s lease is granted as asked). Needs the `etcd` binary
//! (`apt-get install etcd-server`); without it each test says it skipped, or fails under
//! `ORCH_TEST_REQUIRE_ALL=1`.
//!
//! Run with `cargo test -p orch-store --features etcd --test election -- --nocapture` to see
//! the measured failover times.
#![cfg(feature = "etcd")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use orch_core::leader::{Elector, Term};
use orch_core::store::{Op, Store, StoreError};
use orch_store::conformance;
use orch_store::etcd::{Election, ElectionConfig, EtcdAdmin, EtcdStore, EtcdTls};
use orch_store::local_etcd::{LocalEtcdCluster, LocalEtcdTls};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const LEADER_KEY: &str = "/cluster/leader";

/// A fresh cluster of `n` members, or `None` (the test skips) without the `etcd` binary.
async fn cluster(n: usize) -> Option<LocalEtcdCluster> {
    if !orch_testkit::require(&["etcd"]) {
        return None;
    }
    Some(
        LocalEtcdCluster::start(n)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
}

async fn store(endpoints: &[String], prefix: &str) -> EtcdStore {
    EtcdStore::connect(endpoints, prefix)
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoints:?}: {e}"))
}

fn candidate(store: &EtcdStore, name: &str) -> Arc<Election> {
    Arc::new(Election::new(store, name, ElectionConfig::default()).unwrap())
}

/// Campaigns in a task; yields the term and when it was won.
fn campaign(election: &Arc<Election>) -> JoinHandle<(Term, Instant)> {
    let election = election.clone();
    tokio::spawn(async move {
        loop {
            match election.campaign().await {
                Ok(term) => return (term, Instant::now()),
                Err(e) => {
                    eprintln!("{}: campaign failed, again: {e}", election.name());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

async fn within<T>(what: &str, limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// Waits for the first of `campaigns` to win; returns its index, term and time.
async fn first_winner(campaigns: &mut Vec<JoinHandle<(Term, Instant)>>) -> (usize, Term, Instant) {
    let (result, index, _) = within(
        "a candidate is elected",
        Duration::from_secs(10),
        futures::future::select_all(campaigns.iter_mut()),
    )
    .await;
    let (term, at) = result.expect("campaign task");
    campaigns.remove(index);
    (index, term, at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_among_three_candidates() {
    let Some(etcd) = cluster(1).await else {
        return;
    };
    let s = store(&etcd.endpoints(), "/one").await;
    let names = ["a", "b", "c"];
    let candidates: Vec<_> = names.iter().map(|n| candidate(&s, n)).collect();
    for c in &candidates {
        assert_eq!(
            within("a lease", Duration::from_secs(5), c.ready())
                .await
                .unwrap(),
            Duration::from_secs(1),
            "etcd tuned like orch-run members grants the 1 s asked for"
        );
    }
    let mut campaigns: Vec<_> = candidates.iter().map(campaign).collect();
    let (winner, term, _) = first_winner(&mut campaigns).await;
    assert_eq!(term.holder, names[winner]);
    assert_eq!(term.key, LEADER_KEY);
    let kv = s.get(LEADER_KEY).await.unwrap().expect("the leader key");
    assert_eq!(
        kv.create_revision, term.created,
        "a term is the key's create revision"
    );
    assert_eq!(kv.value.as_ref(), names[winner].as_bytes());
    // A quiet window (the thing under test): over three lease TTLs nobody else is elected,
    // and the leader keeps its term.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        campaigns.iter().all(|c| !c.is_finished()),
        "a second candidate was elected while the first leads"
    );
    assert_eq!(
        s.get(LEADER_KEY).await.unwrap().unwrap().create_revision,
        term.created,
        "the leader's term ended although its candidate lives"
    );
    for c in &candidates {
        assert_eq!(c.leader().await.unwrap().as_deref(), Some(names[winner]));
    }
    for c in campaigns {
        c.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_dropped_without_resigning_is_replaced_within_the_ttl_and_half_a_second() {
    let Some(etcd) = cluster(1).await else {
        return;
    };
    let s = store(&etcd.endpoints(), "/drop").await;
    let ttl = Duration::from_secs(1);
    let mut candidates: Vec<Option<Arc<Election>>> = Vec::new();
    let mut campaigns = Vec::new();
    let mut names = Vec::new();
    for i in 0..3 {
        let name = format!("c{i}");
        let c = candidate(&s, &name);
        c.ready().await.unwrap();
        campaigns.push(Some(campaign(&c)));
        candidates.push(Some(c));
        names.push(name);
    }
    let mut figures = Vec::new();
    let mut previous: Option<Term> = None;
    let mut killed_at = None;
    for round in 0..7 {
        // `select_all` indexes the campaigns still running, in order.
        let live: Vec<usize> = (0..campaigns.len())
            .filter(|&i| campaigns[i].is_some())
            .collect();
        let (result, index, _) = within(
            "a new leader",
            Duration::from_secs(10),
            futures::future::select_all(campaigns.iter_mut().filter_map(Option::as_mut)),
        )
        .await;
        let (term, at) = result.unwrap();
        let winner = live[index];
        campaigns[winner] = None;
        assert_eq!(term.holder, names[winner]);
        if let (Some(previous), Some(killed_at)) = (&previous, killed_at) {
            assert_ne!(term.created, previous.created, "a new term");
            let took: Duration = at - killed_at;
            figures.push(took);
            eprintln!(
                "round {round}: {} leads {took:?} after the kill",
                term.holder
            );
        }
        // "Kill" the leader: drop its election without resigning (its keepalives stop; its
        // lease expires in etcd), and start a fresh candidate in its place. The kill comes
        // at a random moment (this sleep is the thing under test): a leader elected just
        // now would die in step with etcd's 500 ms expiry checks.
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..500))).await;
        let dead = candidates[winner].take().unwrap();
        killed_at = Some(Instant::now());
        drop(dead);
        let name = format!("c{}", names.len());
        let c = candidate(&s, &name);
        campaigns.push(Some(campaign(&c)));
        candidates.push(Some(c));
        names.push(name);
        previous = Some(term);
    }
    figures.sort();
    eprintln!(
        "failover after a dropped leader (lease TTL {ttl:?}): min {:?}, median {:?}, max {:?} over {}",
        figures[0],
        figures[figures.len() / 2],
        figures[figures.len() - 1],
        figures.len()
    );
    // etcd expires a lease at most TTL after the last keepalive it received (before the
    // kill) and looks for expired leases every 500 ms; then the revoke is committed, the
    // standby hears the delete and wins with a txn: a few ms, more on a busy machine.
    let limit = ttl + Duration::from_millis(500 + 150);
    for took in &figures {
        assert!(*took <= limit, "a failover took {took:?}, over {limit:?}");
    }
    for c in campaigns.into_iter().flatten() {
        c.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resign_hands_over_at_once_and_a_deposed_leaders_fenced_write_lands_nowhere() {
    let Some(etcd) = cluster(1).await else {
        return;
    };
    let s = store(&etcd.endpoints(), "/resign").await;
    let a = candidate(&s, "a");
    let b = candidate(&s, "b");
    let term_a = within("a leads", Duration::from_secs(5), a.campaign())
        .await
        .unwrap();
    let mut campaign_b = campaign(&b);
    let lost_a = {
        let (a, term) = (a.clone(), term_a.clone());
        tokio::spawn(async move {
            a.lost(&term).await;
            Instant::now()
        })
    };
    // While a leads, its fenced writes land.
    s.txn(vec![
        Op::Check {
            key: LEADER_KEY.into(),
            created: term_a.created,
        },
        Op::Create {
            key: "/services/default/by-a".into(),
            value: b"1".to_vec(),
        },
    ])
    .await
    .expect("the leader's fenced write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!campaign_b.is_finished(), "b leads while a does");

    let resigned = Instant::now();
    a.resign(&term_a).await;
    let (term_b, at) = within("b leads", Duration::from_secs(2), &mut campaign_b)
        .await
        .unwrap();
    let handover = at - resigned;
    eprintln!("resign -> b leads in {handover:?}");
    assert!(
        handover < Duration::from_millis(300),
        "resign handed over in {handover:?}"
    );
    assert_eq!(term_b.holder, "b");
    let lost = within("a's lost resolves", Duration::from_secs(2), lost_a)
        .await
        .unwrap();
    assert!(lost <= at + Duration::from_millis(100));

    // a, deposed, writes with its old term: fenced, and nothing lands.
    match s
        .txn(vec![
            Op::Create {
                key: "/services/default/stale".into(),
                value: b"x".to_vec(),
            },
            Op::Check {
                key: LEADER_KEY.into(),
                created: term_a.created,
            },
        ])
        .await
    {
        Err(StoreError::Fenced {
            key,
            expected,
            actual,
        }) => {
            assert_eq!(key, LEADER_KEY);
            assert_eq!(expected, term_a.created);
            assert_eq!(actual, term_b.created);
        }
        other => panic!("a deposed leader's write: expected Fenced, got {other:?}"),
    }
    assert!(s.get("/services/default/stale").await.unwrap().is_none());
    // The new leader's fenced writes land.
    s.txn(vec![
        Op::Check {
            key: LEADER_KEY.into(),
            created: term_b.created,
        },
        Op::Create {
            key: "/services/default/by-b".into(),
            value: b"1".to_vec(),
        },
    ])
    .await
    .expect("the new leader's fenced write");
    assert_eq!(b.leader().await.unwrap().as_deref(), Some("b"));
    assert_eq!(a.leader().await.unwrap().as_deref(), Some("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_keys_live_on_the_lease_and_come_back_after_a_new_one() {
    let Some(etcd) = cluster(1).await else {
        return;
    };
    let s = store(&etcd.endpoints(), "/register").await;
    let a = candidate(&s, "a");
    a.register("/cluster/managers/a", b"{\"name\":\"a\"}".to_vec())
        .await
        .unwrap();
    within("the record appears", Duration::from_secs(5), async {
        while s.get("/cluster/managers/a").await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Revoking the lease (a close) removes it at once; a campaign brings a new lease and
    // the record back.
    a.close().await;
    assert!(s.get("/cluster/managers/a").await.unwrap().is_none());
    let term = a.campaign().await.unwrap();
    within("the record is put again", Duration::from_secs(5), async {
        while s.get("/cluster/managers/a").await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // A dead candidate's record vanishes with its lease.
    drop(a);
    let dropped = Instant::now();
    within("the record expires", Duration::from_secs(3), async {
        while s.get("/cluster/managers/a").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    eprintln!("record gone {:?} after the drop", dropped.elapsed());
    assert!(s.get(LEADER_KEY).await.unwrap().is_none(), "term {term:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_resolves_before_the_lease_expires_when_the_leaders_etcd_member_freezes() {
    let Some(etcd) = cluster(3).await else {
        return;
    };
    let leader = etcd.leader().await.unwrap();
    // The candidate's only member is a follower, so freezing it costs etcd no election.
    let frozen = (0..3).find(|&i| i != leader).unwrap();
    let others: Vec<String> = (0..3)
        .filter(|&i| i != frozen)
        .map(|i| etcd.endpoint(i))
        .collect();
    let sa = store(&[etcd.endpoint(frozen)], "/freeze").await;
    let sb = store(&others, "/freeze").await;
    let a = candidate(&sa, "a");
    let b = candidate(&sb, "b");
    let term_a = within("a leads", Duration::from_secs(5), a.campaign())
        .await
        .unwrap();
    let campaign_b = campaign(&b);
    // Let a few keepalives go through first.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let lost_a = {
        let (a, term) = (a.clone(), term_a.clone());
        tokio::spawn(async move {
            a.lost(&term).await;
            Instant::now()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !lost_a.is_finished(),
        "a lost its term before anything happened"
    );

    etcd.freeze(frozen).unwrap();
    let frozen_at = Instant::now();
    let lost = within("a's lost resolves", Duration::from_secs(3), lost_a)
        .await
        .unwrap();
    let (term_b, b_at) = within("b leads", Duration::from_secs(5), campaign_b)
        .await
        .unwrap();
    etcd.thaw(frozen).unwrap();
    eprintln!(
        "member frozen: a's lost after {:?}, b leads after {:?}, {:?} after a stopped",
        lost - frozen_at,
        b_at - frozen_at,
        b_at - lost
    );
    assert_eq!(term_b.holder, "b");
    assert!(
        lost < b_at,
        "a still counted itself leader when b was elected"
    );
    // The last acknowledged keepalive was sent before the freeze: lost resolves within
    // TTL - TTL/4 of it.
    assert!(
        lost - frozen_at <= Duration::from_millis(750 + 100),
        "lost took {:?}",
        lost - frozen_at
    );
    // b's lease is intact.
    assert_eq!(b.leader().await.unwrap().as_deref(), Some("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_listed_added_removed_and_the_leadership_moved() {
    let Some(mut etcd) = cluster(3).await else {
        return;
    };
    let s = etcd.store("/admin").await.unwrap();
    let admin = EtcdAdmin::new(&s);
    let members = admin.members().await.unwrap();
    let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["m0", "m1", "m2"]);
    assert_eq!(members.iter().filter(|m| m.is_leader).count(), 1);
    for m in &members {
        assert_eq!(m.client_urls.len(), 1, "{m:?}");
        assert_eq!(m.peer_urls.len(), 1, "{m:?}");
    }
    let leader = admin.leader_id().await.unwrap().expect("a leader");
    let health = admin.health().await;
    assert_eq!(health.len(), 3);
    for h in &health {
        assert!(h.healthy(), "{h:?}");
        assert_eq!(h.leader_id, Some(leader), "{h:?}");
        assert!(h.raft_term > 0 && h.db_size > 0, "{h:?}");
    }

    // Move the leadership to a follower, then away from it again.
    let target = members.iter().find(|m| !m.is_leader).unwrap().id;
    admin.move_leader(target).await.unwrap();
    within("the leadership moves", Duration::from_secs(5), async {
        while admin.leader_id().await.ok().flatten() != Some(target) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        admin.move_leader_away(leader).await.unwrap(),
        None,
        "{leader:x} does not lead any more"
    );
    let moved_to = admin
        .move_leader_away(target)
        .await
        .unwrap()
        .expect("moved away from the leader");
    assert_ne!(moved_to, target);
    within("the leadership moves away", Duration::from_secs(5), async {
        while admin.leader_id().await.ok().flatten() != Some(moved_to) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let target = moved_to;
    admin
        .move_leader(target)
        .await
        .expect("moving to the leader is a no-op");
    match admin.move_leader(12345).await {
        Err(StoreError::Other(e)) => assert!(e.to_string().contains("not a member"), "{e}"),
        other => panic!("move to a non-member: {other:?}"),
    }

    // Add a fourth member: it starts, joins, and serves.
    let added = etcd.add_member().await.unwrap();
    let members = admin.members().await.unwrap();
    assert_eq!(members.len(), 4, "{members:?}");
    assert!(members.iter().any(|m| m.name == "m3"), "{members:?}");
    let on_new = store(&[etcd.endpoint(added)], "/admin").await;
    s.txn(vec![Op::Create {
        key: "/k".into(),
        value: b"v".to_vec(),
    }])
    .await
    .unwrap();
    within(
        "the new member serves the write",
        Duration::from_secs(5),
        async {
            while on_new.get("/k").await.ok().flatten().is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
    assert_eq!(admin.health().await.len(), 4);

    // Remove it again.
    etcd.remove_member(added).await.unwrap();
    let members = admin.members().await.unwrap();
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(!members.iter().any(|m| m.name == "m3"), "{members:?}");
    match admin.remove_member(12345).await {
        Err(e) => assert!(
            e.to_string().contains("12345") || e.to_string().contains("3039"),
            "{e}"
        ),
        Ok(()) => panic!("removing a non-member succeeded"),
    }
    match admin.add_member(&[]).await {
        Err(e) => assert!(e.to_string().contains("no peer URL"), "{e}"),
        Ok(_) => panic!("adding a member without a peer URL succeeded"),
    }
}

fn no_quorum(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(m) if m.contains("has no quorum (no leader)"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_members_down_means_no_quorum_and_one_back_means_service() {
    let Some(mut etcd) = cluster(3).await else {
        return;
    };
    let one = store(&[etcd.endpoint(0)], "/quorum").await;
    let all = store(&etcd.endpoints(), "/quorum").await;
    let r = one
        .txn(vec![Op::Create {
            key: "/a".into(),
            value: b"1".to_vec(),
        }])
        .await
        .unwrap();
    let mut watch = one.watch("/", r).await.unwrap();
    etcd.kill(1);
    etcd.kill(2);
    let killed = Instant::now();
    for (name, s) in [("member 0", &one), ("all members", &all)] {
        let err = within(
            "a write fails for lack of quorum",
            Duration::from_secs(15),
            async {
                let mut i = 0;
                loop {
                    i += 1;
                    let write = s
                        .txn(vec![Op::Create {
                            key: format!("/{name}-{i}"),
                            value: b"x".to_vec(),
                        }])
                        .await;
                    match write {
                        Err(e) if no_quorum(&e) => return e,
                        Err(StoreError::Unavailable(_)) => {}
                        other => panic!("{name}: a write without quorum: {other:?}"),
                    }
                }
            },
        )
        .await;
        eprintln!("{name}: {:?} after the kill: {err}", killed.elapsed());
        assert!(
            err.to_string()
                .contains(&format!("etcd at {}", s.endpoints())),
            "{err}"
        );
        // Reads fail the same way, at once now.
        let started = Instant::now();
        match s.get("/a").await {
            Err(e) if no_quorum(&e) => {}
            other => panic!("{name}: a read without quorum: {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    // The watch on the member left alone ends instead of staying silent.
    match within("the watch ends", Duration::from_secs(10), watch.next()).await {
        Some(Err(e)) if no_quorum(&e) => {
            eprintln!("watch: {:?} after the kill: {e}", killed.elapsed())
        }
        other => panic!("a watch on a member without quorum: {other:?}"),
    }

    etcd.restart(1).await.unwrap();
    let back = Instant::now();
    within("writes succeed again", Duration::from_secs(15), async {
        let mut i = 0;
        loop {
            i += 1;
            let write = one
                .txn(vec![Op::Create {
                    key: format!("/again-{i}"),
                    value: b"x".to_vec(),
                }])
                .await;
            match write {
                Ok(_) => return,
                Err(StoreError::Unavailable(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("a write after recovery: {e}"),
            }
        }
    })
    .await;
    eprintln!(
        "writes succeed {:?} after the member is back",
        back.elapsed()
    );
    all.txn(vec![Op::Create {
        key: "/again-all".into(),
        value: b"x".to_vec(),
    }])
    .await
    .expect("a write over every endpoint after recovery");
    let mut watch = one.watch("/", 0).await.expect("a watch after recovery");
    within(
        "the new watch replays",
        Duration::from_secs(5),
        watch.next(),
    )
    .await
    .expect("watch open")
    .expect("an event");
}

/// A CA, a serving certificate for 127.0.0.1 and a client certificate, with rcgen.
fn certificates() -> LocalEtcdTls {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "orch test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |cn: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = vec![
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
            SanType::DnsName("localhost".try_into().unwrap()),
        ];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    LocalEtcdTls {
        ca_pem: ca_cert.pem(),
        server: leaf("etcd", ExtendedKeyUsagePurpose::ServerAuth),
        client: leaf("orch", ExtendedKeyUsagePurpose::ClientAuth),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_conforms_and_refuses_what_it_should() {
    if !orch_testkit::require(&["etcd"]) {
        return;
    }
    let tls = certificates();
    let etcd = LocalEtcdCluster::start_with(1, Some(tls.clone()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let endpoint = etcd.endpoint(0);
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    let n = AtomicUsize::new(0);
    conformance::run_all(|| {
        let prefix = format!("/tls-{}", n.fetch_add(1, Ordering::Relaxed));
        let endpoint = endpoint.clone();
        let tls = tls.client();
        async move {
            EtcdStore::connect_with(&[endpoint], &prefix, Some(tls))
                .await
                .unwrap_or_else(|e| panic!("connect over TLS: {e}"))
        }
    })
    .await;

    // An election over TLS.
    let s = etcd.store("/tls-election").await.unwrap();
    let a = candidate(&s, "a");
    let term = within("a leads", Duration::from_secs(5), a.campaign())
        .await
        .unwrap();
    assert_eq!(term.holder, "a");
    assert!(EtcdAdmin::new(&s)
        .health()
        .await
        .iter()
        .all(|h| h.healthy()));

    // Without TLS, with TLS to an http:// URL, with half an identity: clear errors up front.
    let err = EtcdStore::connect(std::slice::from_ref(&endpoint), "/x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no TLS is configured"), "{err}");
    let http = endpoint.replace("https://", "http://");
    let err = EtcdStore::connect_with(&[http], "/x", Some(tls.client()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("use https://"), "{err}");
    let half = EtcdTls {
        key_pem: String::new(),
        ..tls.client()
    };
    let err = EtcdStore::connect_with(std::slice::from_ref(&endpoint), "/x", Some(half))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("give both or neither"), "{err}");
    // A CA that did not sign the server's certificate, or no client certificate: refused.
    let stranger = certificates();
    let untrusted = EtcdTls {
        ca_pem: stranger.ca_pem.clone(),
        ..tls.client()
    };
    assert!(
        EtcdStore::connect_with(std::slice::from_ref(&endpoint), "/x", Some(untrusted))
            .await
            .is_err(),
        "a server certificate from another CA was accepted"
    );
    let anonymous = EtcdTls {
        cert_pem: String::new(),
        key_pem: String::new(),
        ..tls.client()
    };
    assert!(
        EtcdStore::connect_with(std::slice::from_ref(&endpoint), "/x", Some(anonymous))
            .await
            .is_err(),
        "a client without a certificate was let in"
    );
    let foreign = EtcdTls {
        cert_pem: stranger.client.0.clone(),
        key_pem: stranger.client.1.clone(),
        ..tls.client()
    };
    assert!(
        EtcdStore::connect_with(&[endpoint], "/x", Some(foreign))
            .await
            .is_err(),
        "a client certificate from another CA was let in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_election_config_is_refused_with_the_field_named() {
    let Some(etcd) = cluster(1).await else {
        return;
    };
    let s = store(&etcd.endpoints(), "/bad").await;
    let cases = [
        ("", ElectionConfig::default(), "candidate name is empty"),
        (
            "a",
            ElectionConfig {
                key: "cluster/leader".into(),
                ..ElectionConfig::default()
            },
            "not an orch key",
        ),
        (
            "a",
            ElectionConfig {
                ttl: Duration::ZERO,
                ..ElectionConfig::default()
            },
            "ttl is 0",
        ),
    ];
    for (name, config, want) in cases {
        match Election::new(&s, name, config.clone()) {
            Err(e) => assert!(e.to_string().contains(want), "{config:?}: {e}"),
            Ok(_) => panic!("{name:?} {config:?} was accepted"),
        }
    }
    // 1.2 s is asked as 2 s (whole seconds, rounded up).
    let c = Election::new(
        &s,
        "a",
        ElectionConfig {
            ttl: Duration::from_millis(1200),
            ..ElectionConfig::default()
        },
    )
    .unwrap();
    assert_eq!(c.ready().await.unwrap(), Duration::from_secs(2));
}

/// Writes one after another for `span` (each a fresh key); returns (successes, failures —
/// the first few messages —, the slowest write).
async fn write_for(s: &EtcdStore, tag: &str, span: Duration) -> (usize, Vec<String>, Duration) {
    let (mut ok, mut failed, mut slowest) = (0, Vec::new(), Duration::ZERO);
    let end = Instant::now() + span;
    let mut i = 0;
    while Instant::now() < end {
        i += 1;
        let started = Instant::now();
        let write = s
            .txn(vec![Op::Create {
                key: format!("/{tag}/{i}"),
                value: b"x".to_vec(),
            }])
            .await;
        slowest = slowest.max(started.elapsed());
        match write {
            Ok(_) => ok += 1,
            Err(e) => failed.push(e.to_string()),
        }
    }
    (ok, failed, slowest)
}

fn firsts(failed: &[String]) -> &[String] {
    &failed[..failed.len().min(3)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_of_three_lost_interrupts_nothing() {
    let Some(mut etcd) = cluster(3).await else {
        return;
    };
    let s = etcd.store("/one-lost").await.unwrap();
    let leader = etcd.leader().await.unwrap();
    let follower = (0..3).find(|&i| i != leader).unwrap();

    // A follower killed: its endpoint refuses connections, the store stops using it. A
    // write that was on its way there when it died fails (its outcome unknown); no other.
    let writes = {
        let s = s.clone();
        tokio::spawn(async move { write_for(&s, "killed", Duration::from_secs(3)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    etcd.kill(follower);
    let (ok, failed, slowest) = writes.await.unwrap();
    eprintln!(
        "follower killed: {ok} writes, {} failed, slowest {slowest:?}: {:?}",
        failed.len(),
        firsts(&failed)
    );
    assert!(
        failed.len() <= 1,
        "writes failed with a follower down: {:?}",
        firsts(&failed)
    );
    assert!(!s.endpoints_in_use().contains(&etcd.endpoint(follower)));
    etcd.restart(follower).await.unwrap();
    within(
        "the store uses the member again",
        Duration::from_secs(5),
        async {
            while !s.endpoints_in_use().contains(&etcd.endpoint(follower)) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;

    // A follower frozen (a host that is gone: connections open, nothing answers): the store
    // stops sending to it within about a second and a half; a write that went there fails
    // then (its outcome unknown), and watches end (one on it would stay silent), so their
    // consumers watch again on the members in use.
    let mut watch = s.watch("/", s.revision().await.unwrap()).await.unwrap();
    etcd.freeze(follower).unwrap();
    let frozen = Instant::now();
    let ended = tokio::spawn(async move {
        loop {
            match watch.next().await {
                Some(Ok(_)) => {}
                Some(Err(StoreError::Unavailable(e))) => return (Instant::now(), e),
                other => panic!("a watch when a member froze: {other:?}"),
            }
        }
    });
    let (ok, failed, slowest) = write_for(&s, "frozen", Duration::from_secs(4)).await;
    eprintln!(
        "follower frozen: {ok} writes, {} failed, slowest {slowest:?}: {:?}",
        failed.len(),
        firsts(&failed)
    );
    assert!(
        failed.len() <= 1,
        "writes failed with a follower frozen: {:?}",
        firsts(&failed)
    );
    // The member is out of use after a status probe times out (1 s) at the next check
    // (every 0.5 s), and a waiting request looks every 0.5 s: about 2 s.
    assert!(
        slowest < Duration::from_millis(3500),
        "a write took {slowest:?}"
    );
    let (at, e) = within("the watch ends", Duration::from_secs(1), ended)
        .await
        .unwrap();
    eprintln!("follower frozen: watches end after {:?}: {e}", at - frozen);
    assert!(at - frozen < Duration::from_secs(4), "{:?}", at - frozen);
    let mut watch = s.watch("/", s.revision().await.unwrap()).await.unwrap();
    let (ok, failed, slowest) = write_for(&s, "frozen-later", Duration::from_secs(1)).await;
    within(
        "a new watch sees the writes",
        Duration::from_secs(2),
        watch.next(),
    )
    .await
    .expect("open")
    .expect("an event");
    assert!(
        failed.is_empty() && ok > 0 && slowest < Duration::from_millis(500),
        "writes once the frozen member is out of use: {ok} ok, slowest {slowest:?}, failed {:?}",
        firsts(&failed)
    );
    etcd.thaw(follower).unwrap();

    // The etcd leader killed: writes fail ("no quorum (no leader)") through the etcd
    // election, then go on.
    etcd.kill(leader);
    let killed = Instant::now();
    let mut failures = 0;
    let resumed = within("writes resume", Duration::from_secs(10), async {
        let mut i = 0;
        loop {
            i += 1;
            let write = s
                .txn(vec![Op::Create {
                    key: format!("/leader/{i}"),
                    value: b"x".to_vec(),
                }])
                .await;
            match write {
                Ok(_) => return killed.elapsed(),
                Err(StoreError::Unavailable(_)) => failures += 1,
                Err(e) => panic!("a write during the etcd election: {e}"),
            }
        }
    })
    .await;
    eprintln!("etcd leader killed: writes resume after {resumed:?} ({failures} failed meanwhile)");
    let (_, failed, _) = write_for(&s, "leader-later", Duration::from_secs(1)).await;
    assert!(
        failed.is_empty(),
        "writes after the etcd election: {:?}",
        firsts(&failed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watch_over_several_members_stays_open() {
    let Some(etcd) = cluster(3).await else {
        return;
    };
    let s = etcd.store("/idle").await.unwrap();
    let r = s.revision().await.unwrap();
    let mut watch = s.watch("/", r).await.unwrap();
    // A quiet window (the thing under test): etcd closes a connection whose client pings
    // more often than every 5 s (GOAWAY too_many_pings), which broke idle watches after
    // about 8 s when the store pinged every 2 s.
    if let Ok(next) = tokio::time::timeout(Duration::from_secs(12), watch.next()).await {
        panic!("an idle watch ended or spoke: {next:?}");
    }
    s.txn(vec![Op::Create {
        key: "/x".into(),
        value: b"1".to_vec(),
    }])
    .await
    .unwrap();
    let batch = within("the event", Duration::from_secs(2), watch.next())
        .await
        .expect("the watch is open")
        .expect("an event");
    assert_eq!(batch.events.len(), 1, "{batch:?}");
}
