//! The cluster DNS server on the wire: hickory's resolver and `dig` (Debian's dnsutils)
//! against a real server on loopback; malformed, oversized and flooding clients. Without `dig`
//! the tests that use it say they skipped (or fail under `ORCH_TEST_REQUIRE_ALL=1`).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::Resolver;
use orch_core::discovery::{Discovery, Endpoint, EndpointPort};
use orch_core::model::object::Protocol;
use orch_dns::dns::{DnsConfig, DnsServer};

fn ep(replica: &str, ip: &str, port: u16) -> Endpoint {
    Endpoint {
        replica: replica.into(),
        node: "n1".into(),
        ip: ip.into(),
        ports: vec![EndpointPort {
            name: "http".into(),
            port,
            protocol: Protocol::Tcp,
        }],
    }
}

async fn server() -> DnsServer {
    let mut cfg = DnsConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.client_qps = 0;
    DnsServer::start(cfg).await.expect("dns server starts")
}

fn resolver(addr: SocketAddr) -> Resolver<TokioRuntimeProvider> {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
    let cfg = ResolverConfig::from_parts(None, vec![], vec![ns]);
    let mut b = Resolver::builder_with_config(cfg, TokioRuntimeProvider::default());
    b.options_mut().cache_size = 0;
    b.options_mut().attempts = 1;
    b.options_mut().timeout = Duration::from_secs(2);
    b.build().unwrap()
}

fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+time=2", "+tries=2"])
        .args(args)
        .output()
        .expect("dig runs (Debian package dnsutils; .ci/run installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hickory_resolves_services_srv_replicas_and_nxdomain() {
    let s = server().await;
    s.set_endpoints(
        "default",
        "web",
        vec![
            ep("web-a", "127.0.0.11", 8080),
            ep("web-b", "127.0.0.12", 8081),
        ],
    )
    .await
    .unwrap();
    let r = resolver(s.local_addr());
    let ips = r.lookup_ip("web.default.orch.local.").await.unwrap();
    let mut ips: Vec<IpAddr> = ips.iter().collect();
    ips.sort();
    assert_eq!(
        ips,
        [
            "127.0.0.11".parse::<IpAddr>().unwrap(),
            "127.0.0.12".parse().unwrap()
        ]
    );
    let srv = r
        .lookup("_http._tcp.web.default.orch.local.", RecordType::SRV)
        .await
        .unwrap();
    assert_eq!(
        srv_targets(&srv),
        [
            ("web-a.web.default.orch.local.".to_string(), 8080),
            ("web-b.web.default.orch.local.".to_string(), 8081)
        ]
    );
    assert_eq!(
        srv.additionals().len(),
        2,
        "SRV targets' addresses ride along"
    );
    let one = r.lookup_ip("web-b.web.default.orch.local.").await.unwrap();
    assert_eq!(
        one.iter().collect::<Vec<_>>(),
        ["127.0.0.12".parse::<IpAddr>().unwrap()]
    );
    let e = r.lookup_ip("db.default.orch.local.").await.unwrap_err();
    assert!(e.is_nx_domain(), "{e}");
    assert!(answer_ttls(&srv).iter().all(|t| *t <= 5));
}

/// `(target, port)` of each SRV answer, sorted.
fn srv_targets(l: &hickory_resolver::lookup::Lookup) -> Vec<(String, u16)> {
    let mut targets: Vec<(String, u16)> = l
        .answers()
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::SRV(s) => Some((s.target.to_string(), s.port)),
            _ => None,
        })
        .collect();
    targets.sort();
    targets
}

fn answer_ttls(l: &hickory_resolver::lookup::Lookup) -> Vec<u32> {
    l.answers().iter().map(|r| r.ttl).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_sees_records_status_codes_and_tcp_fallback() {
    if !orch_testkit::require(&["dig"]) {
        return;
    }
    let s = server().await;
    let a = s.local_addr();
    s.set_endpoints("shop", "api", vec![ep("api-1", "127.0.0.21", 9000)])
        .await
        .unwrap();
    // Sixty replicas on sixty addresses: the answer is larger than 512 bytes.
    let many: Vec<Endpoint> = (1..=60)
        .map(|i| ep(&format!("big-{i}"), &format!("127.0.1.{i}"), 80))
        .collect();
    s.set_endpoints("shop", "big", many).await.unwrap();
    let dig_ = move |args: Vec<&str>| {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        tokio::task::spawn_blocking(move || {
            dig(a, &args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };
    let out = dig_(vec!["+short", "api.shop.orch.local", "A"])
        .await
        .unwrap();
    assert_eq!(out.trim(), "127.0.0.21");
    let out = dig_(vec!["+short", "_http._tcp.api.shop.orch.local", "SRV"])
        .await
        .unwrap();
    assert_eq!(out.trim(), "0 10 9000 api-1.api.shop.orch.local.");
    let out = dig_(vec!["+short", "api-1.api.shop.orch.local"])
        .await
        .unwrap();
    assert_eq!(out.trim(), "127.0.0.21");
    let out = dig_(vec!["nothing.shop.orch.local"]).await.unwrap();
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert!(out.contains("flags: qr aa"), "authoritative: {out}");
    assert!(out.contains("SOA"), "negative answers carry the SOA: {out}");
    let out = dig_(vec!["example.com"]).await.unwrap();
    assert!(out.contains("status: REFUSED"), "{out}");
    // Over UDP without EDNS the big answer is truncated...
    let out = dig_(vec!["+noedns", "+ignore", "big.shop.orch.local"])
        .await
        .unwrap();
    assert!(out.contains(" tc"), "truncated over UDP: {out}");
    // ...and dig retries over TCP on its own and gets every address.
    let out = dig_(vec!["+noedns", "big.shop.orch.local"]).await.unwrap();
    let answers = out
        .lines()
        .filter(|l| l.starts_with("big.shop.orch.local.") && l.contains("\tA\t"))
        .count();
    assert_eq!(answers, 60, "{out}");
    let out = dig_(vec!["+tcp", "+short", "api.shop.orch.local"])
        .await
        .unwrap();
    assert_eq!(out.trim(), "127.0.0.21", "TCP answers too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_change_within_100ms_of_an_update() {
    let s = server().await;
    let r = resolver(s.local_addr());
    s.set_endpoints("default", "web", vec![ep("w1", "127.0.0.31", 80)])
        .await
        .unwrap();
    assert_eq!(
        r.lookup_ip("web.default.orch.local.")
            .await
            .unwrap()
            .iter()
            .count(),
        1
    );
    let t = Instant::now();
    s.set_endpoints("default", "web", vec![]).await.unwrap();
    let e = r.lookup_ip("web.default.orch.local.").await.unwrap_err();
    assert!(e.is_no_records_found(), "{e}");
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    s.remove_service("default", "web").await.unwrap();
    assert!(r
        .lookup_ip("web.default.orch.local.")
        .await
        .unwrap_err()
        .is_nx_domain());
}

fn query(name: &str, id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

/// Asks over UDP, retrying a few times; the answer's code.
fn ask(addr: SocketAddr, name: &str) -> Option<ResponseCode> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for id in 1..=5u16 {
        sock.send_to(&query(name, id), addr).unwrap();
        let mut buf = [0u8; 4096];
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            if let Ok(m) = Message::from_vec(&buf[..n]) {
                if m.metadata.id == id {
                    return Some(m.metadata.response_code);
                }
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_queries_do_not_stop_answers() {
    let s = server().await;
    let a = s.local_addr();
    s.set_endpoints("default", "web", vec![ep("w1", "127.0.0.41", 80)])
        .await
        .unwrap();
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut packets: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 5],
        vec![0; 12],
        // A header claiming ten questions with none following.
        vec![0, 1, 1, 0, 0, 10, 0, 0, 0, 0, 0, 0],
        // A name with a compression pointer to itself.
        [
            vec![0, 2, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0],
            vec![0xc0, 12, 0, 1, 0, 1],
        ]
        .concat(),
        vec![0x41; 60_000],
    ];
    let mut seed = 7u64;
    for _ in 0..200 {
        let len = (seed % 300) as usize;
        packets.push(
            (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 33) as u8
                })
                .collect(),
        );
    }
    for p in &packets {
        let _ = junk.send_to(p, a);
    }
    // Over TCP: a length prefix promising 65,535 bytes of junk, then a close; and a
    // connection that says nothing.
    {
        use std::io::Write;
        let mut t = std::net::TcpStream::connect(a).unwrap();
        let _ = t.write_all(&[0xff, 0xff]);
        let _ = t.write_all(&vec![0x41; 65_535]);
        let _idle = std::net::TcpStream::connect(a).unwrap();
        let code = tokio::task::spawn_blocking(move || ask(a, "web.default.orch.local."))
            .await
            .unwrap();
        assert_eq!(code, Some(ResponseCode::NoError));
    }
    let code = tokio::task::spawn_blocking(move || ask(a, "web.default.orch.local."))
        .await
        .unwrap();
    assert_eq!(code, Some(ResponseCode::NoError), "still answering");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_client_is_capped_and_others_are_answered() {
    let mut cfg = DnsConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.client_qps = 1_000;
    let s = DnsServer::start(cfg).await.unwrap();
    let a = s.local_addr();
    s.set_endpoints("default", "web", vec![ep("w1", "127.0.0.51", 80)])
        .await
        .unwrap();
    // Says when the flooder has sent more than its budget: the cap is then in force.
    let (flooding, under_way) = std::sync::mpsc::channel();
    let flood = std::thread::spawn(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let q = query("web.default.orch.local.", 9);
        let (mut sent, mut answered) = (0u64, 0u64);
        let mut buf = [0u8; 512];
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if sock.send_to(&q, a).is_ok() {
                sent += 1;
                if sent == 2_000 {
                    let _ = flooding.send(());
                }
            }
            while sock.recv_from(&mut buf).is_ok() {
                answered += 1;
            }
        }
        // The answers still on their way: read until none came for 200 ms.
        sock.set_nonblocking(false).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        while sock.recv_from(&mut buf).is_ok() {
            answered += 1;
        }
        (sent, answered)
    });
    let others = tokio::task::spawn_blocking(move || {
        under_way
            .recv_timeout(Duration::from_secs(3))
            .expect("the flood is under way");
        (0..50)
            .map(|_| ask(a, "web.default.orch.local."))
            .filter(|c| *c == Some(ResponseCode::NoError))
            .count()
    })
    .await
    .unwrap();
    let (sent, answered) = flood.join().unwrap();
    eprintln!("flood: {sent} queries sent, {answered} answered; others: {others}/50");
    assert_eq!(
        others, 50,
        "every other client's query is answered during the flood"
    );
    assert!(sent > 10_000, "the flood is a flood: {sent} queries");
    assert!(
        answered <= 3_000 + 1_000 + 200,
        "the flooder gets at most its budget: {answered} answers to {sent} queries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_outside_the_domain_are_forwarded_when_configured() {
    if !orch_testkit::require(&["dig"]) {
        return;
    }
    // The upstream: another server, authoritative for another domain.
    let mut up = DnsConfig::new("127.0.0.1:0".parse().unwrap());
    up.domain = "corp.test".into();
    let upstream = DnsServer::start(up).await.unwrap();
    upstream
        .set_endpoints("it", "wiki", vec![ep("wiki-1", "127.0.0.61", 80)])
        .await
        .unwrap();
    let mut cfg = DnsConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.forward = Some(upstream.local_addr());
    let s = DnsServer::start(cfg).await.unwrap();
    s.set_endpoints("default", "web", vec![ep("w1", "127.0.0.62", 80)])
        .await
        .unwrap();
    let a = s.local_addr();
    let out = tokio::task::spawn_blocking(move || {
        (
            dig(a, &["+short", "wiki.it.corp.test"]),
            dig(a, &["nothing.it.corp.test"]),
            dig(a, &["+short", "web.default.orch.local"]),
        )
    })
    .await
    .unwrap();
    assert_eq!(out.0.trim(), "127.0.0.61", "forwarded");
    assert!(
        out.1.contains("status: NXDOMAIN"),
        "the upstream's answer: {}",
        out.1
    );
    assert_eq!(
        out.2.trim(),
        "127.0.0.62",
        "its own names are still its own"
    );
    // A forwarder that does not answer: SERVFAIL, not a hang.
    drop(upstream);
    let out =
        tokio::task::spawn_blocking(move || dig(a, &["+tries=1", "+time=4", "wiki.it.corp.test"]))
            .await
            .unwrap();
    assert!(out.contains("status: SERVFAIL"), "{out}");
}

/// Whatever arrives on `sock` within `wait`: the packets' lengths.
fn replies(sock: &UdpSocket, wait: Duration) -> Vec<usize> {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            got.push(n);
        }
    }
    got
}

/// RFC 5452 section 5: a server never answers a response. Answering one lets a single
/// spoofed packet (source: another orch DNS server, or the server itself) bounce between
/// two servers forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_never_answered() {
    let s = server().await;
    let a = s.local_addr();
    s.set_endpoints("default", "web", vec![ep("w1", "127.0.0.61", 80)])
        .await
        .unwrap();
    let in_zone = {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("web.default.orch.local.").unwrap(),
            RecordType::A,
        ));
        m.to_vec().unwrap()
    };
    let outside = {
        let mut m = Message::new(8, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("example.com.").unwrap(),
            RecordType::A,
        ));
        m.to_vec().unwrap()
    };
    // QR set and nothing parseable after the header: not even FORMERR goes back.
    let junk_response = [vec![0, 9, 0x80, 0, 0, 10, 0, 0, 0, 0, 0, 0], vec![0xff; 20]].concat();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    for p in [&in_zone, &outside, &junk_response] {
        sock.send_to(p, a).unwrap();
    }
    let got = tokio::task::spawn_blocking(move || replies(&sock, Duration::from_millis(500)))
        .await
        .unwrap();
    assert!(got.is_empty(), "responses were answered: {got:?}");
    // Over TCP the same response gets no answer either (the server closes or stays silent).
    let tcp = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut t = std::net::TcpStream::connect(a).unwrap();
        t.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        t.write_all(&(in_zone.len() as u16).to_be_bytes()).unwrap();
        t.write_all(&in_zone).unwrap();
        let mut buf = [0u8; 512];
        t.read(&mut buf).unwrap_or(0)
    })
    .await
    .unwrap();
    assert_eq!(tcp, 0, "a response over TCP was answered");
    // Queries are still answered.
    let code = tokio::task::spawn_blocking(move || ask(a, "web.default.orch.local."))
        .await
        .unwrap();
    assert_eq!(code, Some(ResponseCode::NoError));
}

/// A service with a virtual IP answers it; a headless one (no virtual IP) its replicas'
/// addresses; per-replica and SRV records stay; the VIP's reverse name is a PTR; a listener
/// added while the server runs answers the same (UDP and TCP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_sees_virtual_ips_headless_services_and_a_listener_added_at_run_time() {
    use orch_core::discovery::VirtualIp;
    if !orch_testkit::require(&["dig"]) {
        return;
    }
    let s = server().await;
    let vip = VirtualIp {
        ip: "10.96.0.10".parse().unwrap(),
        ports: vec![EndpointPort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
        }],
    };
    s.set_virtual_ip("shop", "api", Some(vip)).await.unwrap();
    let two = |name: &str, ip: &str, port| {
        (1..=2)
            .map(|i| ep(&format!("{name}-{i}"), &format!("{ip}{i}"), port))
            .collect::<Vec<_>>()
    };
    let api = two("api", "127.0.0.2", 8080);
    s.set_endpoints("shop", "api", api).await.unwrap();
    let db = two("db", "127.0.0.3", 5432);
    s.set_endpoints("shop", "db", db).await.unwrap();
    let dig_at = |addr: SocketAddr, args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut lines: Vec<String> = dig(addr, &args)
                .lines()
                .map(|l| l.trim().to_string())
                .collect();
            lines.sort();
            lines.join("\n")
        })
    };
    let a = s.local_addr();
    assert_eq!(
        dig_at(a, &["+short", "api.shop.orch.local"]).await.unwrap(),
        "10.96.0.10"
    );
    assert_eq!(
        dig_at(a, &["+short", "db.shop.orch.local"]).await.unwrap(),
        "127.0.0.31\n127.0.0.32",
        "headless: the replicas' addresses"
    );
    assert_eq!(
        dig_at(a, &["+short", "api-2.api.shop.orch.local"])
            .await
            .unwrap(),
        "127.0.0.22"
    );
    assert_eq!(
        dig_at(a, &["+short", "_http._tcp.api.shop.orch.local", "SRV"])
            .await
            .unwrap(),
        "0 10 8080 api-1.api.shop.orch.local.\n0 10 8080 api-2.api.shop.orch.local."
    );
    assert_eq!(
        dig_at(a, &["+short", "-x", "10.96.0.10"]).await.unwrap(),
        "api.shop.orch.local."
    );
    // A listener added at run time, on another address, answers the same.
    s.add_listener("127.0.0.2:0".parse().unwrap()).unwrap();
    let added = *s
        .listen_addrs()
        .iter()
        .find(|l| l.ip() == "127.0.0.2".parse::<IpAddr>().unwrap())
        .expect("the added listener is listed");
    s.add_listener(added).unwrap();
    assert_eq!(s.listen_addrs().len(), 2, "{:?}", s.listen_addrs());
    for tcp in ["+notcp", "+tcp"] {
        assert_eq!(
            dig_at(added, &[tcp, "+short", "api.shop.orch.local"])
                .await
                .unwrap(),
            "10.96.0.10"
        );
    }
    // Adding the same address again is fine; one taken by another server is an error.
    let other = server().await;
    let e = s.add_listener(other.local_addr()).unwrap_err();
    assert!(
        e.to_string().contains(&other.local_addr().to_string()),
        "{e}"
    );
    // The virtual IP goes: the name answers the replicas again.
    s.set_virtual_ip("shop", "api", None).await.unwrap();
    assert_eq!(
        dig_at(added, &["+short", "api.shop.orch.local"])
            .await
            .unwrap(),
        "127.0.0.21\n127.0.0.22"
    );
}

/// A route as the engine publishes it: a StatefulSet's governing headless route `nginx`
/// (per-replica names `web-0.nginx...`), a route `front` with a virtual IP whose port 80 goes
/// to each replica's 8080; every name also under `svc.cluster.local`, and short names through
/// a search list like the one workloads get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_per_replica_names_and_kubernetes_names_resolve_on_the_wire() {
    use orch_core::discovery::VirtualIp;
    let s = server().await;
    let web = |i: u8| Endpoint {
        replica: format!("web-{i}"),
        node: "n1".into(),
        ip: format!("127.0.0.{}", 40 + i),
        ports: vec![EndpointPort {
            name: "web".into(),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
    };
    s.set_endpoints("default", "nginx", vec![web(0), web(1)])
        .await
        .unwrap();
    let vip = VirtualIp {
        ip: "10.96.0.20".parse().unwrap(),
        ports: vec![EndpointPort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
        }],
    };
    s.set_virtual_ip("shop", "front", Some(vip)).await.unwrap();
    let front: Vec<Endpoint> = [web(0), web(1)]
        .into_iter()
        .map(|mut e| {
            e.ports[0].name = "http".into();
            e
        })
        .collect();
    s.set_endpoints("shop", "front", front).await.unwrap();
    let r = resolver(s.local_addr());
    let ips = |l: hickory_resolver::lookup_ip::LookupIp| {
        let mut v: Vec<String> = l.iter().map(|ip| ip.to_string()).collect();
        v.sort();
        v
    };
    for domain in ["orch.local", "svc.cluster.local"] {
        let name = format!("web-0.nginx.default.{domain}.");
        assert_eq!(
            ips(r.lookup_ip(name.as_str()).await.unwrap()),
            ["127.0.0.40"],
            "{name}"
        );
        let name = format!("nginx.default.{domain}.");
        assert_eq!(
            ips(r.lookup_ip(name.as_str()).await.unwrap()),
            ["127.0.0.40", "127.0.0.41"],
            "{name}: headless, the endpoints"
        );
        let name = format!("front.shop.{domain}.");
        assert_eq!(
            ips(r.lookup_ip(name.as_str()).await.unwrap()),
            ["10.96.0.20"],
            "{name}"
        );
        // SRV: the endpoints' target port, targets in the domain asked.
        let name = format!("_http._tcp.front.shop.{domain}.");
        let srv = r.lookup(name.as_str(), RecordType::SRV).await.unwrap();
        assert_eq!(
            srv_targets(&srv),
            [
                (format!("web-0.front.shop.{domain}."), 8080),
                (format!("web-1.front.shop.{domain}."), 8080)
            ]
        );
        let e = r
            .lookup_ip(format!("nothing.default.{domain}.").as_str())
            .await
            .unwrap_err();
        assert!(e.is_nx_domain(), "{e}");
    }
    // Outside both domains: refused (no forwarder).
    let e = r.lookup_ip("web.default.cluster.local.").await.unwrap_err();
    assert!(!e.is_nx_domain(), "{e}");
    // A workload's search list in namespace shop: NAME and NAME.NAMESPACE resolve too.
    let mut udp = ConnectionConfig::udp();
    udp.port = s.local_addr().port();
    let ns = NameServerConfig::new(s.local_addr().ip(), true, vec![udp]);
    let search: Vec<Name> = [
        "shop.orch.local.",
        "orch.local.",
        "shop.svc.cluster.local.",
        "svc.cluster.local.",
    ]
    .iter()
    .map(|n| Name::from_ascii(n).unwrap())
    .collect();
    let cfg = ResolverConfig::from_parts(None, search, vec![ns]);
    let mut b = Resolver::builder_with_config(cfg, TokioRuntimeProvider::default());
    b.options_mut().cache_size = 0;
    b.options_mut().ndots = 5;
    let searching = b.build().unwrap();
    for name in ["front", "front.shop", "front.shop.svc.cluster.local"] {
        assert_eq!(
            ips(searching.lookup_ip(name).await.unwrap()),
            ["10.96.0.20"],
            "{name}"
        );
    }
    assert_eq!(
        ips(searching.lookup_ip("web-1.nginx.default").await.unwrap()),
        ["127.0.0.41"]
    );
    if orch_testkit::require(&["dig"]) {
        let a = s.local_addr();
        let out = tokio::task::spawn_blocking(move || {
            dig(a, &["+short", "web-1.nginx.default.svc.cluster.local"])
        })
        .await
        .unwrap();
        assert_eq!(out.trim(), "127.0.0.41");
        let out = tokio::task::spawn_blocking(move || dig(a, &["nothing.svc.cluster.local"]))
            .await
            .unwrap();
        assert!(
            out.contains("NXDOMAIN") && out.contains("svc.cluster.local.\t") && out.contains("SOA"),
            "an alias's negative answer carries its own SOA: {out}"
        );
    }
}
