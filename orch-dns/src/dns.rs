//! The cluster DNS server: answers for services from the endpoints the engine publishes.
//!
//! Names, under the cluster domain (`orch.local` by default):
//! - `SERVICE.NAMESPACE.DOMAIN`: the service's virtual IP when it has one (set with
//!   [`Discovery::set_virtual_ip`]; the nodes balance it in the kernel), else (a headless
//!   service, or no replica networking) A / AAAA records of the addresses of its ready
//!   replicas (each address once; the order rotates per query);
//! - `_PORT._tcp.SERVICE.NAMESPACE.DOMAIN` (`_udp` for UDP ports): an SRV record per ready
//!   replica with its port, targeting the replica's own name, whose address is in the
//!   additional section;
//! - `REPLICA.SERVICE.NAMESPACE.DOMAIN`: that replica's address;
//! - the reverse name of a virtual IP (`D.C.B.A.in-addr.arpa`): a PTR to its service's name.
//!
//! A name is a service's or a route's (Kubernetes' Service): the engine publishes both under
//! their names, a route winning a name it shares with a service. Every name is also answered
//! under each alias domain (`svc.cluster.local` by default: [`DnsConfig::alias_domains`]), so
//! `NAME.NAMESPACE.svc.cluster.local` and `REPLICA.NAME.NAMESPACE.svc.cluster.local` resolve as
//! in Kubernetes; records carry the name asked for, SRV targets stay in the domain asked.
//!
//! Unknown names in the domain get NXDOMAIN (NOERROR with no records for a name that exists
//! with other types, or that only has names below it), with the zone's SOA for negative
//! caching; names outside it are REFUSED unless a forwarder is configured. Every record has
//! the same short TTL (5 s by default). A service's names change in one step: readers see
//! all of the old set or all of the new one.
//!
//! It serves UDP (several `SO_REUSEPORT` sockets, so work spreads over cores) and TCP on
//! hickory-server, on its configured address and on any added while it runs
//! ([`DnsServer::add_listener`]: a node's bridge gateway, once the node's network is up). Bounded against bad clients: answers larger than the client's UDP size
//! are truncated (TC), so the client retries over TCP; malformed packets are dropped or get
//! FORMERR; each client socket address gets at most `client_qps` queries a second (a token
//! bucket; queries beyond it are dropped unanswered, so a flood costs little); idle TCP
//! connections close after `tcp_timeout`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA, SRV};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol as Transport;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use orch_core::discovery::{Discovery, DiscoveryError, Endpoint, VirtualIp};
use orch_core::model::object::Protocol;

/// How the DNS server runs.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Where it listens (UDP and TCP). Port 53 for containers' resolv.conf to reach it.
    pub listen: SocketAddr,
    /// The cluster domain (`orch.local`).
    pub domain: String,
    /// Further domains every name is also answered under (default `svc.cluster.local`, so
    /// Kubernetes' names resolve); none may contain another or the cluster domain.
    pub alias_domains: Vec<String>,
    /// TTL of every answer, and of negative answers (seconds).
    pub ttl: u32,
    /// Where names outside the domain are forwarded; `None`: they are REFUSED.
    pub forward: Option<SocketAddr>,
    /// Queries a second one client socket address may make (0: no limit).
    pub client_qps: u32,
    /// UDP sockets (each served by its own task).
    pub udp_sockets: usize,
    /// Idle TCP connections close after this.
    pub tcp_timeout: Duration,
}

impl DnsConfig {
    /// Defaults: domain `orch.local` (also answered as `svc.cluster.local`), TTL 5 s, no forwarding, 50,000 queries a second per
    /// client socket, one UDP socket per core, 10 s TCP idle timeout.
    pub fn new(listen: SocketAddr) -> DnsConfig {
        DnsConfig {
            listen,
            domain: "orch.local".into(),
            alias_domains: vec!["svc.cluster.local".into()],
            ttl: 5,
            forward: None,
            client_qps: 50_000,
            udp_sockets: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            tcp_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The domain is not a valid DNS name.
    #[error("DNS domain {domain:?}: {message}")]
    Domain {
        /// The domain given.
        domain: String,
        /// What is wrong.
        message: String,
    },
    /// A socket could not be bound.
    #[error("DNS server: cannot listen on {addr} ({proto}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `udp` or `tcp`.
        proto: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The records of one name.
#[derive(Debug, Default)]
struct RecordSet {
    a: Vec<Record>,
    aaaa: Vec<Record>,
    srv: Vec<Record>,
    ptr: Vec<Record>,
    /// Addresses of SRV targets.
    additional: Vec<Record>,
    /// A service name's SRV records, added to its A/AAAA answers when its replicas share
    /// addresses (host networking: the address alone reaches no particular replica, the port
    /// does), so that `dig SERVICE` shows where the replicas really listen.
    ports: Vec<Record>,
}

impl RecordSet {
    fn of_type(&self, t: RecordType) -> &[Record] {
        match t {
            RecordType::A => &self.a,
            RecordType::AAAA => &self.aaaa,
            RecordType::SRV => &self.srv,
            RecordType::PTR => &self.ptr,
            _ => &[],
        }
    }
}

/// The zone's contents; swapped a service at a time under one write lock.
#[derive(Default)]
struct State {
    names: HashMap<LowerName, Arc<RecordSet>>,
    /// Names that exist only because names below them do (`NAMESPACE.DOMAIN`), counted.
    ents: HashMap<LowerName, usize>,
    /// The names each service owns.
    owned: HashMap<(String, String), Vec<LowerName>>,
    /// Reverse names of virtual IPs (outside the domain), with the service owning each.
    ptrs: HashMap<LowerName, ((String, String), Arc<RecordSet>)>,
    serial: u32,
    soa: Option<Arc<Record>>,
}

/// The cluster zone: what the server answers from. It is the [`Discovery`] the endpoints
/// controller publishes to.
pub struct Zone {
    origin: Name,
    lower_origin: LowerName,
    /// The alias domains (see the module doc), each answered like the origin.
    aliases: Vec<(Name, LowerName)>,
    ttl: u32,
    state: RwLock<State>,
    /// What each service's names are built from. Held while a change is built and swapped
    /// in, so changes to one service apply in order; readers never take it.
    inputs: Mutex<HashMap<(String, String), Inputs>>,
}

/// A service's endpoints and virtual IP, as last set.
#[derive(Default)]
struct Inputs {
    endpoints: Vec<Endpoint>,
    vip: Option<IpAddr>,
}

/// What a lookup in the zone found.
#[derive(Debug)]
pub enum Lookup {
    /// The name exists (maybe with no records of the asked type).
    Found(Found),
    /// No such name in the zone.
    NxDomain,
    /// The name is not in the zone.
    NotInZone,
}

/// A name's records, shared with the zone (answering copies no record).
#[derive(Debug)]
pub struct Found {
    set: Arc<RecordSet>,
    apex_soa: Option<Arc<Record>>,
}

impl Found {
    /// The records answering `qtype`, addresses rotated by `rotate`.
    pub fn answers(&self, qtype: RecordType, rotate: usize) -> Vec<&Record> {
        if let Some(soa) = &self.apex_soa {
            return match qtype {
                RecordType::SOA | RecordType::ANY => vec![&**soa],
                _ => Vec::new(),
            };
        }
        fn rotated(rs: &[Record], rotate: usize) -> impl Iterator<Item = &Record> {
            let k = if rs.is_empty() { 0 } else { rotate % rs.len() };
            rs[k..].iter().chain(&rs[..k])
        }
        let rotated = |rs| rotated(rs, rotate);
        match qtype {
            RecordType::ANY => rotated(&self.set.a)
                .chain(rotated(&self.set.aaaa))
                .chain(&self.set.srv)
                .chain(&self.set.ptr)
                .collect(),
            RecordType::SRV => self.set.srv.iter().collect(),
            t => rotated(self.set.of_type(t)).collect(),
        }
    }

    /// Extra records for `qtype`: the addresses of SRV targets; for the addresses of a
    /// service whose replicas share them, its SRV records.
    pub fn additional(&self, qtype: RecordType) -> &[Record] {
        match qtype {
            RecordType::SRV | RecordType::ANY => &self.set.additional,
            RecordType::A | RecordType::AAAA => &self.set.ports,
            _ => &[],
        }
    }
}

impl Zone {
    /// An empty zone for `domain` with `ttl`.
    pub fn new(domain: &str, ttl: u32) -> Result<Zone, DnsError> {
        Zone::with_aliases(domain, &[], ttl)
    }

    /// An empty zone for `domain` whose names are also answered under each of `aliases`.
    pub fn with_aliases(domain: &str, aliases: &[String], ttl: u32) -> Result<Zone, DnsError> {
        fn parse(domain: &str) -> Result<Name, DnsError> {
            let bad = |message: String| DnsError::Domain {
                domain: domain.into(),
                message,
            };
            let lower = domain.trim_end_matches('.').to_ascii_lowercase();
            if lower.is_empty() {
                return Err(bad("must not be empty".into()));
            }
            let mut origin = Name::from_ascii(&lower).map_err(|e| bad(e.to_string()))?;
            origin.set_fqdn(true);
            Ok(origin)
        }
        let origin = parse(domain)?;
        let mut all = vec![LowerName::from(&origin)];
        let mut alias_names = Vec::new();
        for a in aliases {
            let name = parse(a)?;
            let lower = LowerName::from(&name);
            if let Some(other) = all.iter().find(|o| o.zone_of(&lower) || lower.zone_of(o)) {
                return Err(DnsError::Domain {
                    domain: a.clone(),
                    message: format!(
                        "an alias domain must neither contain nor be inside another domain ({other})"
                    ),
                });
            }
            all.push(lower.clone());
            alias_names.push((name, lower));
        }
        let zone = Zone {
            lower_origin: LowerName::from(&origin),
            origin,
            aliases: alias_names,
            ttl,
            state: RwLock::new(State::default()),
            inputs: Mutex::default(),
        };
        zone.write().soa = Some(Arc::new(zone.soa_record(0)));
        Ok(zone)
    }

    /// The zone's origin (`orch.local.`).
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn soa_record(&self, serial: u32) -> Record {
        self.soa_of(&self.origin, serial)
    }

    /// The SOA record of `origin` (the cluster domain or an alias).
    fn soa_of(&self, origin: &Name, serial: u32) -> Record {
        let mname = Name::from_ascii("ns")
            .and_then(|n| n.append_domain(origin))
            .unwrap_or_else(|_| origin.clone());
        let rname = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(origin))
            .unwrap_or_else(|_| origin.clone());
        let ttl = self.ttl;
        Record::from_rdata(
            origin.clone(),
            ttl,
            RData::SOA(SOA::new(mname, rname, serial, 3600, 600, 86400, ttl)),
        )
    }

    /// The zone's SOA record.
    pub fn soa(&self) -> Arc<Record> {
        let g = self.read();
        g.soa
            .clone()
            .unwrap_or_else(|| Arc::new(self.soa_record(g.serial)))
    }

    /// The SOA record for answers about `name`: its alias domain's, when it is in one, else
    /// the zone's.
    pub fn soa_for(&self, name: &LowerName) -> Arc<Record> {
        match self.aliases.iter().find(|(_, l)| l.zone_of(name)) {
            Some((alias, _)) => Arc::new(self.soa_of(alias, self.read().serial)),
            None => self.soa(),
        }
    }

    /// The origin (the cluster domain or an alias) `name` is in.
    fn origin_of(&self, name: &LowerName) -> Option<&LowerName> {
        std::iter::once(&self.lower_origin)
            .chain(self.aliases.iter().map(|(_, l)| l))
            .find(|o| o.zone_of(name))
    }

    fn name(&self, labels: &[&str]) -> Option<Name> {
        Self::name_in(&self.origin, labels)
    }

    fn name_in(origin: &Name, labels: &[&str]) -> Option<Name> {
        let mut n = Name::from_labels(labels.iter().map(|l| l.as_bytes())).ok()?;
        n = n.append_domain(origin).ok()?;
        Some(n)
    }

    /// The records of a service's endpoints (and its virtual IP), by name, under `origin`.
    fn records(
        &self,
        origin: &Name,
        ns: &str,
        svc: &str,
        eps: &[Endpoint],
        vip: Option<IpAddr>,
    ) -> Vec<(LowerName, RecordSet)> {
        let ttl = self.ttl;
        let Some(service) = Self::name_in(origin, &[svc, ns]) else {
            return Vec::new();
        };
        let addr = |name: &Name, ip: IpAddr| match ip {
            IpAddr::V4(v4) => Record::from_rdata(name.clone(), ttl, RData::A(A(v4))),
            IpAddr::V6(v6) => Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(v6))),
        };
        let mut top = RecordSet::default();
        // With a virtual IP the service's name answers it alone (the kernel balances it);
        // without one, the ready replicas' own addresses.
        let mut ips: Vec<IpAddr> = match vip {
            Some(ip) => vec![ip],
            None => eps.iter().filter_map(|e| e.ip.parse().ok()).collect(),
        };
        let listed = ips.len();
        ips.sort();
        ips.dedup();
        let shared_addresses = vip.is_none() && ips.len() < listed;
        for ip in ips {
            let r = addr(&service, ip);
            match ip {
                IpAddr::V4(_) => top.a.push(r),
                IpAddr::V6(_) => top.aaaa.push(r),
            }
        }
        let mut out = Vec::new();
        let mut srv: HashMap<Name, RecordSet> = HashMap::new();
        for e in eps {
            let Ok(ip) = e.ip.parse::<IpAddr>() else {
                continue;
            };
            let Some(own) = Self::name_in(origin, &[&e.replica, svc, ns]) else {
                continue;
            };
            let mut set = RecordSet::default();
            let r = addr(&own, ip);
            match ip {
                IpAddr::V4(_) => set.a.push(r.clone()),
                IpAddr::V6(_) => set.aaaa.push(r.clone()),
            }
            for p in &e.ports {
                let proto = match p.protocol {
                    Protocol::Tcp => "_tcp",
                    Protocol::Udp => "_udp",
                };
                let port_label = format!("_{}", p.name);
                let Some(name) = Self::name_in(origin, &[&port_label, proto, svc, ns]) else {
                    continue;
                };
                let entry = srv.entry(name.clone()).or_default();
                entry.srv.push(Record::from_rdata(
                    name,
                    ttl,
                    RData::SRV(SRV::new(0, 10, p.port, own.clone())),
                ));
                entry.additional.push(r.clone());
            }
            out.push((LowerName::from(&own), set));
        }
        if shared_addresses {
            let mut ports: Vec<Record> = srv.values().flat_map(|s| s.srv.clone()).collect();
            ports.sort_by_key(|r| r.name.to_string());
            top.ports = ports;
        }
        out.push((LowerName::from(&service), top));
        out.extend(srv.into_iter().map(|(n, s)| (LowerName::from(&n), s)));
        out
    }

    fn inputs(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Inputs>> {
        self.inputs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces a service's names with those of `eps` (and its virtual IP, if it has one),
    /// atomically.
    pub fn set(&self, ns: &str, svc: &str, eps: &[Endpoint]) {
        let mut inputs = self.inputs();
        let i = inputs.entry((ns.into(), svc.into())).or_default();
        i.endpoints = eps.to_vec();
        self.swap(ns, svc, i);
    }

    /// Sets (`None`: removes) a service's virtual IP: its name answers it instead of its
    /// replicas' addresses, and the IP's reverse name points at the service.
    pub fn set_virtual_ip(&self, ns: &str, svc: &str, vip: Option<IpAddr>) {
        let mut inputs = self.inputs();
        let key = (ns.to_string(), svc.to_string());
        if vip.is_none() && !inputs.contains_key(&key) {
            return;
        }
        let i = inputs.entry(key).or_default();
        if i.vip == vip {
            return;
        }
        i.vip = vip;
        self.swap(ns, svc, i);
    }

    /// Builds a service's names from `inputs` and swaps them in under one write lock.
    fn swap(&self, ns: &str, svc: &str, inputs: &Inputs) {
        let mut sets = self.records(&self.origin, ns, svc, &inputs.endpoints, inputs.vip);
        for (alias, _) in &self.aliases {
            sets.extend(self.records(alias, ns, svc, &inputs.endpoints, inputs.vip));
        }
        let key = (ns.to_string(), svc.to_string());
        let ptr = inputs.vip.zip(self.name(&[svc, ns])).map(|(ip, service)| {
            let mut reverse = Name::from(ip);
            reverse.set_fqdn(true);
            let set = RecordSet {
                ptr: vec![Record::from_rdata(
                    reverse.clone(),
                    self.ttl,
                    RData::PTR(PTR(service)),
                )],
                ..RecordSet::default()
            };
            (LowerName::from(&reverse), (key.clone(), Arc::new(set)))
        });
        let mut g = self.write();
        self.remove_locked(&mut g, ns, svc);
        if let Some((name, entry)) = ptr {
            g.ptrs.insert(name, entry);
        }
        let mut owned = Vec::with_capacity(sets.len());
        for (name, set) in sets {
            let apex = self
                .origin_of(&name)
                .map_or(self.lower_origin.num_labels(), |o| o.num_labels());
            let mut parent = name.base_name();
            while parent.num_labels() > apex {
                *g.ents.entry(parent.clone()).or_default() += 1;
                parent = parent.base_name();
            }
            g.names.insert(name.clone(), Arc::new(set));
            owned.push(name);
        }
        g.owned.insert((ns.into(), svc.into()), owned);
        self.bump(&mut g);
    }

    /// Removes a service's names (and forgets its virtual IP).
    pub fn remove(&self, ns: &str, svc: &str) {
        let mut inputs = self.inputs();
        inputs.remove(&(ns.to_string(), svc.to_string()));
        let mut g = self.write();
        if self.remove_locked(&mut g, ns, svc) {
            self.bump(&mut g);
        }
    }

    fn bump(&self, g: &mut State) {
        g.serial = g.serial.wrapping_add(1);
        g.soa = Some(Arc::new(self.soa_record(g.serial)));
    }

    fn remove_locked(&self, g: &mut State, ns: &str, svc: &str) -> bool {
        let key = (ns.to_string(), svc.to_string());
        g.ptrs.retain(|_, (owner, _)| *owner != key);
        let Some(names) = g.owned.remove(&key) else {
            return false;
        };
        for name in names {
            g.names.remove(&name);
            let apex = self
                .origin_of(&name)
                .map_or(self.lower_origin.num_labels(), |o| o.num_labels());
            let mut parent = name.base_name();
            while parent.num_labels() > apex {
                if let Some(n) = g.ents.get_mut(&parent) {
                    *n -= 1;
                    if *n == 0 {
                        g.ents.remove(&parent);
                    }
                }
                parent = parent.base_name();
            }
        }
        true
    }

    /// Looks `name` up.
    pub fn lookup(&self, name: &LowerName) -> Lookup {
        let Some(origin) = self.origin_of(name) else {
            return match self.read().ptrs.get(name) {
                Some((_, set)) => Lookup::Found(Found {
                    set: set.clone(),
                    apex_soa: None,
                }),
                None => Lookup::NotInZone,
            };
        };
        if name == origin {
            return Lookup::Found(Found {
                set: Arc::default(),
                apex_soa: Some(self.soa_for(name)),
            });
        }
        let g = self.read();
        match g.names.get(name) {
            Some(set) => Lookup::Found(Found {
                set: set.clone(),
                apex_soa: None,
            }),
            None if g.ents.contains_key(name) => Lookup::Found(Found {
                set: Arc::default(),
                apex_soa: None,
            }),
            None => Lookup::NxDomain,
        }
    }

    /// Whether `name` is in the zone (or is the reverse name of a virtual IP).
    pub fn contains(&self, name: &LowerName) -> bool {
        self.origin_of(name).is_some() || self.read().ptrs.contains_key(name)
    }
}

/// Queries a second per client socket address: a token bucket each, in shards so cores do
/// not queue on one lock; a shard forgets quiet clients when it grows large.
struct Limiter {
    qps: u32,
    shards: Vec<Mutex<HashMap<SocketAddr, (f64, Instant)>>>,
}

impl Limiter {
    const SHARDS: usize = 16;
    const MAX_CLIENTS_PER_SHARD: usize = 10_000;

    fn new(qps: u32) -> Limiter {
        Limiter {
            qps,
            shards: (0..Self::SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn allow(&self, src: SocketAddr) -> bool {
        if self.qps == 0 {
            return true;
        }
        let now = Instant::now();
        let rate = f64::from(self.qps);
        let shard = (src.port() as usize ^ ip_hash(src.ip())) % Self::SHARDS;
        let mut g = self.shards[shard].lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= Self::MAX_CLIENTS_PER_SHARD {
            // Forget clients that have been quiet for a second (their buckets are full).
            g.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(1));
        }
        let (tokens, at) = g.entry(src).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn ip_hash(ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as usize,
        IpAddr::V6(v6) => (u128::from(v6) as usize) ^ ((u128::from(v6) >> 64) as usize),
    }
}

/// The request handler hickory-server calls.
struct Handler {
    zone: Arc<Zone>,
    forward: Option<SocketAddr>,
    limiter: Limiter,
    counter: AtomicUsize,
}

fn header_only(metadata: Metadata) -> ResponseInfo {
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

impl Handler {
    /// Asks the forwarder, over UDP, with the client's own bytes.
    async fn forward(&self, upstream: SocketAddr, raw: &[u8]) -> Option<Message> {
        let local: SocketAddr = if upstream.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = tokio::net::UdpSocket::bind(local).await.ok()?;
        sock.connect(upstream).await.ok()?;
        sock.send(raw).await.ok()?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        Message::from_vec(&buf[..n]).ok()
    }
}

/// The handler as hickory-server's TCP serving holds it; the UDP loops share it.
#[derive(Clone)]
struct Shared(Arc<Handler>);

#[async_trait]
impl RequestHandler for Shared {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.0.handle(request, response_handle).await
    }
}

impl Handler {
    /// Answers one request.
    async fn handle<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        if request.metadata.message_type == MessageType::Response {
            // A response is never answered (see `serve_udp`); over TCP too.
            return header_only(metadata);
        }
        // UDP is limited in `serve_udp`, before the packet is even parsed.
        if request.protocol() != Transport::Udp && !self.limiter.allow(request.src()) {
            // Over its budget: no answer at all, so a flood costs one lookup in the table.
            metadata.response_code = ResponseCode::Refused;
            return header_only(metadata);
        }
        metadata.recursion_available = self.forward.is_some();
        let mut edns = None;
        if let Some(req) = &request.edns {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().clamp(512, 4096));
            edns = Some(e);
        }
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let code = |c: ResponseCode| {
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = c;
            m
        };
        if request.metadata.op_code != OpCode::Query {
            let r = builder.build_no_records(code(ResponseCode::NotImp));
            return send(&mut response_handle, r, &request.metadata).await;
        }
        let Ok(info) = request.request_info() else {
            let r = builder.build_no_records(code(ResponseCode::FormErr));
            return send(&mut response_handle, r, &request.metadata).await;
        };
        let query = info.query;
        if query.query_class() != DNSClass::IN && query.query_class() != DNSClass::ANY {
            let r = builder.build_no_records(code(ResponseCode::Refused));
            return send(&mut response_handle, r, &request.metadata).await;
        }
        let rotate = self.counter.fetch_add(1, Ordering::Relaxed);
        match self.zone.lookup(query.name()) {
            Lookup::Found(found) => {
                metadata.authoritative = true;
                let qtype = query.query_type();
                let answers = found.answers(qtype, rotate);
                let soa = self.zone.soa_for(query.name());
                let soa: Option<&Record> = answers.is_empty().then_some(&*soa);
                let r = builder.build(metadata, answers, None, soa, found.additional(qtype));
                send(&mut response_handle, r, &request.metadata).await
            }
            Lookup::NxDomain => {
                metadata.authoritative = true;
                metadata.response_code = ResponseCode::NXDomain;
                let soa = self.zone.soa_for(query.name());
                let r = builder.build(metadata, None, None, Some(&*soa), None);
                send(&mut response_handle, r, &request.metadata).await
            }
            Lookup::NotInZone => {
                match self.forward {
                    None => {
                        metadata.response_code = ResponseCode::Refused;
                        let r = builder.build_no_records(metadata);
                        send(&mut response_handle, r, &request.metadata).await
                    }
                    Some(upstream) => match self.forward(upstream, request.as_slice()).await {
                        Some(m) => {
                            metadata.response_code = m.metadata.response_code;
                            metadata.truncation = m.metadata.truncation;
                            let r = MessageResponseBuilder::new(&request.queries, edns.as_ref())
                                .build(metadata, &m.answers, &m.authorities, None, &m.additionals);
                            send(&mut response_handle, r, &request.metadata).await
                        }
                        None => {
                            metadata.response_code = ResponseCode::ServFail;
                            let r = builder.build_no_records(metadata);
                            send(&mut response_handle, r, &request.metadata).await
                        }
                    },
                }
            }
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Metadata,
) -> ResponseInfo {
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "dns: cannot send a response");
            let mut m = Metadata::response_from_request(request);
            m.response_code = ResponseCode::ServFail;
            header_only(m)
        }
    }
}

/// Sends a UDP response straight from the serving loop's socket.
#[derive(Clone)]
struct UdpResponder {
    socket: Arc<tokio::net::UdpSocket>,
    dst: SocketAddr,
}

#[async_trait]
impl ResponseHandler for UdpResponder {
    async fn send_response<'a>(
        &mut self,
        response: hickory_server::zone_handler::MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        // The client's UDP size, or 512 without EDNS: what does not fit is truncated (TC).
        let max = response.edns().map(|e| e.max_payload()).unwrap_or(512);
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = hickory_proto::serialize::binary::BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = response.destructive_emit(&mut encoder)?;
        self.socket.send_to(&bytes, self.dst).await?;
        Ok(info)
    }
}

/// Whether a DNS packet is a response: the QR bit, the top bit of the third byte.
fn is_response(packet: &[u8]) -> bool {
    packet.get(2).is_some_and(|flags| flags & 0x80 != 0)
}

/// Serves one UDP socket: receive, answer in place, send; no task or channel per query.
/// Forwarded names (which wait on another server) get a task of their own.
async fn serve_udp(socket: Arc<tokio::net::UdpSocket>, handler: Arc<Handler>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, src) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "dns: udp receive failed");
                continue;
            }
        };
        // Shorter than a header: nothing to answer. A response (QR set) is never answered,
        // not even with FORMERR: answering one lets a single spoofed packet bounce between
        // two servers (or a server and itself) forever (RFC 5452 section 5). Over budget:
        // dropped before parsing.
        if n < 12 || is_response(&buf[..n]) || !handler.limiter.allow(src) {
            continue;
        }
        let responder = UdpResponder {
            socket: socket.clone(),
            dst: src,
        };
        let request = match Request::from_bytes(buf[..n].to_vec(), src, Transport::Udp) {
            Ok(r) => r,
            Err(_) => {
                let mut m = Message::new(
                    u16::from_be_bytes([buf[0], buf[1]]),
                    MessageType::Response,
                    OpCode::Query,
                );
                m.metadata.response_code = ResponseCode::FormErr;
                if let Ok(bytes) = m.to_vec() {
                    let _ = socket.send_to(&bytes, src).await;
                }
                continue;
            }
        };
        let forwarded = handler.forward.is_some()
            && request
                .queries
                .queries()
                .first()
                .is_some_and(|q| !handler.zone.contains(q.name()));
        if forwarded {
            let handler = handler.clone();
            tokio::spawn(async move {
                handler.handle(&request, responder).await;
            });
        } else {
            handler.handle(&request, responder).await;
        }
    }
}

/// A running DNS server. It is also the [`Discovery`] that feeds it. Stops when dropped.
pub struct DnsServer {
    zone: Arc<Zone>,
    local: SocketAddr,
    handler: Arc<Handler>,
    udp_sockets: usize,
    tcp_timeout: Duration,
    /// The listeners, as one: `add_listener` registers with the server and remembers the
    /// address under this lock.
    listeners: Mutex<Listeners>,
}

struct Listeners {
    server: hickory_server::Server<Shared>,
    udp: Vec<tokio::task::JoinHandle<()>>,
    /// The addresses served, as asked for and as bound.
    addrs: HashSet<SocketAddr>,
}

/// The sockets of one listening address: TCP, then UDP on the port TCP got.
struct Bound {
    tcp: tokio::net::TcpListener,
    local: SocketAddr,
    udp: Vec<tokio::net::UdpSocket>,
}

fn bind(addr: SocketAddr, udp_sockets: usize) -> Result<Bound, DnsError> {
    let bind_err = |proto, addr, source| DnsError::Bind {
        addr,
        proto,
        source,
    };
    // TCP first: its bind is exclusive, so a second server on the same address fails here
    // instead of sharing the UDP port through SO_REUSEPORT.
    let tcp = tcp_listener(addr, 1024).map_err(|e| bind_err("tcp", addr, e))?;
    let local = tcp.local_addr().map_err(|e| bind_err("tcp", addr, e))?;
    let udp = (0..udp_sockets.max(1))
        .map(|_| udp_socket(local).map_err(|e| bind_err("udp", local, e)))
        .collect::<Result<_, _>>()?;
    Ok(Bound { tcp, local, udp })
}

impl DnsServer {
    /// Binds TCP and UDP on `config.listen` and serves until dropped. With port 0, both use
    /// the same port (the one TCP got).
    pub async fn start(config: DnsConfig) -> Result<DnsServer, DnsError> {
        let zone = Arc::new(Zone::with_aliases(
            &config.domain,
            &config.alias_domains,
            config.ttl,
        )?);
        let bound = bind(config.listen, config.udp_sockets)?;
        let local = bound.local;
        let handler = Handler {
            zone: zone.clone(),
            forward: config.forward,
            limiter: Limiter::new(config.client_qps),
            counter: AtomicUsize::new(0),
        };
        let handler = Arc::new(handler);
        let mut listeners = Listeners {
            server: hickory_server::Server::new(Shared(handler.clone())),
            udp: Vec::new(),
            addrs: HashSet::from([config.listen, local]),
        };
        listeners.serve(bound, &handler, config.tcp_timeout);
        Ok(DnsServer {
            zone,
            local,
            handler,
            udp_sockets: config.udp_sockets,
            tcp_timeout: config.tcp_timeout,
            listeners: Mutex::new(listeners),
        })
    }

    /// Also serves on `addr` (UDP and TCP, with the same limits), until the server stops:
    /// a node's bridge gateway, say, once the node's network is configured, for replicas in
    /// network namespaces of their own. Idempotent: an address already served is fine.
    /// With port 0, both use the port TCP got.
    pub fn add_listener(&self, addr: SocketAddr) -> std::io::Result<()> {
        let mut g = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        if g.addrs.contains(&addr) {
            return Ok(());
        }
        let bound = bind(addr, self.udp_sockets).map_err(|e| match e {
            DnsError::Bind { ref source, .. } => std::io::Error::new(source.kind(), e.to_string()),
            other => std::io::Error::other(other.to_string()),
        })?;
        let local = bound.local;
        g.serve(bound, &self.handler, self.tcp_timeout);
        g.addrs.extend([addr, local]);
        tracing::info!(%local, "cluster DNS also serving");
        Ok(())
    }

    /// Every address it serves on (as bound), sorted.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        let g = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<SocketAddr> = g.addrs.iter().filter(|a| a.port() != 0).copied().collect();
        v.sort();
        v
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The zone it answers from.
    pub fn zone(&self) -> &Arc<Zone> {
        &self.zone
    }
}

impl Listeners {
    /// Serves `bound`: a task per UDP socket, TCP on hickory-server.
    fn serve(&mut self, bound: Bound, handler: &Arc<Handler>, tcp_timeout: Duration) {
        for s in bound.udp {
            self.udp
                .push(tokio::spawn(serve_udp(Arc::new(s), handler.clone())));
        }
        self.server
            .register_listener(bound.tcp, tcp_timeout, 64 * 1024);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let g = self.listeners.get_mut().unwrap_or_else(|p| p.into_inner());
        g.server.shutdown_token().cancel();
        for t in &g.udp {
            t.abort();
        }
    }
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    // Room for bursts: queries wait here rather than being dropped by the kernel.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(s.into())
}

/// A listening TCP socket on `addr` (`SO_REUSEADDR`, so a restart does not wait out
/// TIME_WAIT), non-blocking, for tokio; shared with the proxy.
pub(crate) fn tcp_listener(
    addr: SocketAddr,
    backlog: i32,
) -> std::io::Result<tokio::net::TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    tokio::net::TcpListener::from_std(s.into())
}

#[async_trait]
impl Discovery for DnsServer {
    async fn set_endpoints(
        &self,
        namespace: &str,
        service: &str,
        endpoints: Vec<Endpoint>,
    ) -> Result<(), DiscoveryError> {
        self.zone.set(namespace, service, &endpoints);
        Ok(())
    }

    async fn remove_service(&self, namespace: &str, service: &str) -> Result<(), DiscoveryError> {
        self.zone.remove(namespace, service);
        Ok(())
    }

    async fn set_virtual_ip(
        &self,
        namespace: &str,
        service: &str,
        vip: Option<VirtualIp>,
    ) -> Result<(), DiscoveryError> {
        self.zone
            .set_virtual_ip(namespace, service, vip.map(|v| v.ip));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_core::discovery::EndpointPort;

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

    fn lower(n: &str) -> LowerName {
        LowerName::from(Name::from_ascii(n).unwrap())
    }

    /// What the zone answers, records copied out.
    #[derive(Debug)]
    enum R {
        Found(Vec<Record>, Vec<Record>),
        Nx,
        Out,
    }

    fn q(z: &Zone, name: &str, t: RecordType, k: usize) -> R {
        match z.lookup(&lower(name)) {
            Lookup::Found(f) => R::Found(
                f.answers(t, k).into_iter().cloned().collect(),
                f.additional(t).to_vec(),
            ),
            Lookup::NxDomain => R::Nx,
            Lookup::NotInZone => R::Out,
        }
    }

    #[test]
    fn services_replicas_and_srv_records_are_answered() {
        let z = Zone::new("Orch.Local", 5).unwrap();
        z.set(
            "default",
            "web",
            &[
                ep("web-1", "10.0.0.1", 8080),
                ep("web-2", "10.0.0.1", 8081),
                ep("web-3", "fd00::3", 9000),
            ],
        );
        let R::Found(answers, _) = q(&z, "WEB.default.orch.local.", RecordType::A, 0) else {
            panic!("web found")
        };
        assert_eq!(answers.len(), 1, "one A per distinct address: {answers:?}");
        assert_eq!(answers[0].ttl, 5);
        let R::Found(answers, _) = q(&z, "web.default.orch.local.", RecordType::AAAA, 0) else {
            panic!()
        };
        assert_eq!(answers.len(), 1);
        let R::Found(answers, additional) =
            q(&z, "_http._tcp.web.default.orch.local.", RecordType::SRV, 0)
        else {
            panic!()
        };
        let mut ports: Vec<u16> = answers
            .iter()
            .map(|r| match &r.data {
                RData::SRV(s) => s.port,
                _ => 0,
            })
            .collect();
        ports.sort();
        assert_eq!(ports, [8080, 8081, 9000]);
        assert_eq!(additional.len(), 3);
        assert!(matches!(
            q(&z, "web-2.web.default.orch.local.", RecordType::A, 0),
            R::Found(a, _) if a.len() == 1
        ));
        // Names that only have names below them exist, with no records.
        assert!(matches!(
            q(&z, "default.orch.local.", RecordType::A, 0),
            R::Found(a, _) if a.is_empty()
        ));
        assert!(matches!(
            q(&z, "orch.local.", RecordType::SOA, 0),
            R::Found(a, _) if a.len() == 1
        ));
        assert!(matches!(
            q(&z, "db.default.orch.local.", RecordType::A, 0),
            R::Nx
        ));
        assert!(matches!(q(&z, "example.com.", RecordType::A, 0), R::Out));
        // Replacing swaps the whole set; removing forgets every name.
        z.set("default", "web", &[ep("web-4", "10.0.0.4", 80)]);
        assert!(matches!(
            q(&z, "web-1.web.default.orch.local.", RecordType::A, 0),
            R::Nx
        ));
        z.remove("default", "web");
        for n in [
            "web.default.orch.local.",
            "web-4.web.default.orch.local.",
            "default.orch.local.",
            "_tcp.web.default.orch.local.",
        ] {
            assert!(matches!(q(&z, n, RecordType::A, 0), R::Nx), "{n}");
        }
    }

    #[test]
    fn a_virtual_ip_answers_the_service_name_and_has_a_ptr() {
        let z = Zone::new("orch.local", 5).unwrap();
        let vip: IpAddr = "10.96.0.10".parse().unwrap();
        // Set before the endpoints: the name answers at once.
        z.set_virtual_ip("default", "web", Some(vip));
        let a = |name| match q(&z, name, RecordType::A, 0) {
            R::Found(a, _) => a.into_iter().map(|r| r.data).collect::<Vec<_>>(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(
            a("web.default.orch.local."),
            [RData::A(A::new(10, 96, 0, 10))]
        );
        z.set(
            "default",
            "web",
            &[ep("web-1", "10.244.1.2", 80), ep("web-2", "10.244.1.2", 81)],
        );
        assert_eq!(
            a("web.default.orch.local."),
            [RData::A(A::new(10, 96, 0, 10))]
        );
        assert_eq!(
            a("web-2.web.default.orch.local."),
            [RData::A(A::new(10, 244, 1, 2))]
        );
        let R::Found(srv, _) = q(&z, "_http._tcp.web.default.orch.local.", RecordType::SRV, 0)
        else {
            panic!()
        };
        assert_eq!(srv.len(), 2);
        let R::Found(answers, extra) = q(&z, "web.default.orch.local.", RecordType::A, 0) else {
            panic!()
        };
        assert_eq!(answers.len(), 1);
        assert!(
            extra.is_empty(),
            "no port hints with a virtual IP: {extra:?}"
        );
        let R::Found(ptr, _) = q(&z, "10.0.96.10.in-addr.arpa.", RecordType::PTR, 0) else {
            panic!("the virtual IP's reverse name is answered")
        };
        assert_eq!(
            ptr[0].data,
            RData::PTR(PTR(Name::from_ascii("web.default.orch.local.").unwrap()))
        );
        assert!(z.contains(&lower("10.0.96.10.in-addr.arpa.")));
        assert!(matches!(
            q(&z, "11.0.96.10.in-addr.arpa.", RecordType::PTR, 0),
            R::Out
        ));
        // Without it (headless), the replicas' addresses again; the PTR goes.
        z.set_virtual_ip("default", "web", None);
        assert_eq!(
            a("web.default.orch.local."),
            [RData::A(A::new(10, 244, 1, 2))]
        );
        assert!(matches!(
            q(&z, "10.0.96.10.in-addr.arpa.", RecordType::PTR, 0),
            R::Out
        ));
        z.set_virtual_ip("default", "web", Some(vip));
        z.remove("default", "web");
        assert!(matches!(
            q(&z, "web.default.orch.local.", RecordType::A, 0),
            R::Nx
        ));
        assert!(matches!(
            q(&z, "10.0.96.10.in-addr.arpa.", RecordType::PTR, 0),
            R::Out
        ));
        // Removing a virtual IP of a service never seen creates nothing.
        z.set_virtual_ip("default", "db", None);
        assert!(matches!(
            q(&z, "db.default.orch.local.", RecordType::A, 0),
            R::Nx
        ));
    }

    #[test]
    fn answers_rotate_and_the_soa_serial_moves() {
        let z = Zone::new("orch.local", 5).unwrap();
        let s0 = z.soa();
        z.set(
            "ns",
            "api",
            &[ep("a-1", "10.0.0.1", 1), ep("a-2", "10.0.0.2", 1)],
        );
        let first = |k| match q(&z, "api.ns.orch.local.", RecordType::A, k) {
            R::Found(a, _) => a[0].data.clone(),
            other => panic!("{other:?}"),
        };
        assert_ne!(first(0), first(1));
        assert_ne!(s0.data, z.soa().data);
    }

    #[test]
    fn alias_domains_answer_every_name_and_must_not_nest() {
        let z = Zone::with_aliases("orch.local", &["svc.cluster.local".into()], 5).unwrap();
        z.set("default", "web", &[ep("web-0", "10.0.0.1", 80)]);
        for n in [
            "web.default.svc.cluster.local.",
            "web-0.web.default.svc.cluster.local.",
            "default.svc.cluster.local.",
            "svc.cluster.local.",
        ] {
            assert!(matches!(q(&z, n, RecordType::A, 0), R::Found(..)), "{n}");
        }
        let R::Found(a, _) = q(&z, "web.default.svc.cluster.local.", RecordType::A, 0) else {
            panic!()
        };
        assert_eq!(a[0].name.to_string(), "web.default.svc.cluster.local.");
        z.remove("default", "web");
        assert!(matches!(
            q(&z, "default.svc.cluster.local.", RecordType::A, 0),
            R::Nx
        ));
        for (domain, alias) in [
            ("orch.local", "orch.local"),
            ("cluster.local", "svc.cluster.local"),
        ] {
            let e = Zone::with_aliases(domain, &[alias.into()], 5)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("alias domain") && e.contains(alias), "{e}");
        }
    }

    #[test]
    fn bad_domains_are_named() {
        let e = Zone::new("", 5).err().unwrap().to_string();
        assert!(e.contains("domain") && e.contains("empty"), "{e}");
    }

    #[test]
    fn the_limiter_caps_one_client_and_not_another() {
        let l = Limiter::new(100);
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let allowed = (0..1000).filter(|_| l.allow(a)).count();
        assert!((100..=110).contains(&allowed), "{allowed}");
        assert!(l.allow(b));
    }
}
