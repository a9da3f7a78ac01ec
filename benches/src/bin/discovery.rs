//! Discovery (issue 8), one run on this machine, peers measured in the same run:
//! - `dns`: dnsperf against orch-dns and against dnsmasq (Debian `dnsmasq-base`, started as
//!   `../shared/PEERS.md` says) serving the same 1,000 names: queries/s and lost at full load
//!   (`dnsperf -l 10 -c 4 -Q 1000000`), then latency percentiles from a verbose run;
//! - `proxy`: the service proxy against connecting to the backend directly: bulk MB/s over
//!   one connection, and keep-alive request/response rate and latency over 32 connections
//!   (a synthetic echo backend); then HTTP GETs per second to three replicas of the example
//!   server, each on a new connection;
//! - `vip`: new TCP connections per second through a service virtual IP (nftables DNAT, in
//!   network namespaces: a node with a bridge, three replicas and a client on it) against
//!   connecting to the replicas' own addresses in turn, from the node and from the client.
//!
//! `cargo build --release -p orch-benches --bin discovery && target/release/discovery [dns|proxy|vip]`

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_core::discovery::{Discovery, Endpoint, EndpointPort, Published};
use orch_core::model::object::{Balance, Protocol};
use orch_dns::dns::{DnsConfig, DnsServer};
use orch_dns::proxy::{ProxyConfig, ProxyMode, ServiceProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[path = "../../../orch-dns/tests/common/netns.rs"]
mod netns;

/// The allocator orchd uses, so figures are those of the daemon.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NAMES: usize = 1000;

fn ip(i: usize) -> String {
    format!("10.0.{}.{}", i / 256, i % 256)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// dnsperf's summary: queries/s, lost, average latency (s).
struct Perf {
    qps: f64,
    lost: u64,
    sent: u64,
    avg: f64,
}

fn field<'a>(out: &'a str, label: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
}

fn dnsperf(port: u16, queries: &std::path::Path, extra: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("dnsperf")
        .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
        .arg(queries)
        .args(extra)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("dnsperf (Debian package dnsperf): {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn full_load(port: u16, queries: &std::path::Path) -> anyhow::Result<Perf> {
    let out = dnsperf(port, queries, &["-l", "10", "-c", "4", "-Q", "1000000"])?;
    let num = |label| -> anyhow::Result<f64> {
        field(&out, label)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("dnsperf printed no {label:?}:\n{out}"))
    };
    Ok(Perf {
        qps: num("Queries per second:")?,
        lost: num("Queries lost:")? as u64,
        sent: num("Queries sent:")? as u64,
        avg: num("Average Latency (s):")?,
    })
}

/// p50 and p99 latency (ms) from a verbose run at full speed.
fn percentiles(port: u16, queries: &std::path::Path) -> anyhow::Result<(f64, f64)> {
    let out = dnsperf(port, queries, &["-l", "3", "-c", "4", "-v"])?;
    let mut lat: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with('>'))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    anyhow::ensure!(!lat.is_empty(), "dnsperf -v printed no queries");
    lat.sort_by(f64::total_cmp);
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)] * 1000.0;
    Ok((at(0.50), at(0.99)))
}

fn check_answer(port: u16, name: &str, want: &str) -> anyhow::Result<()> {
    let out = Command::new("dig")
        .args(["+short", "@127.0.0.1", "-p", &port.to_string(), name])
        .output()?;
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    anyhow::ensure!(
        got == want,
        "{name} on port {port}: {got:?}, expected {want}"
    );
    Ok(())
}

fn dns(rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hosts = dir.path().join("hosts");
    let queries = dir.path().join("queries");
    let mut h = String::new();
    let mut q = String::new();
    for i in 0..NAMES {
        h.push_str(&format!("{} svc{i}.default.orch.local\n", ip(i)));
        q.push_str(&format!("svc{i}.default.orch.local A\n"));
    }
    std::fs::write(&hosts, h)?;
    std::fs::write(&queries, q)?;

    // orch-dns in this process, on its own runtime's two worker threads.
    let server = rt.block_on(DnsServer::start(DnsConfig::new("127.0.0.1:0".parse()?)))?;
    for i in 0..NAMES {
        let ep = Endpoint {
            replica: format!("svc{i}-1"),
            node: "n1".into(),
            ip: ip(i),
            ports: vec![EndpointPort {
                name: "http".into(),
                port: 80,
                protocol: Protocol::Tcp,
            }],
        };
        rt.block_on(server.set_endpoints("default", &format!("svc{i}"), vec![ep]))?;
    }
    let orch_port = server.local_addr().port();

    let dm_port = free_port();
    let mut dnsmasq = Command::new("dnsmasq")
        .args([
            "--no-daemon",
            &format!("--port={dm_port}"),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
        ])
        .arg(format!("--addn-hosts={}", hosts.display()))
        .arg("--cache-size=10000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("dnsmasq (Debian package dnsmasq-base): {e}"))?;
    let t = Instant::now();
    while check_answer(dm_port, "svc7.default.orch.local", &ip(7)).is_err() {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(10),
            "dnsmasq does not answer"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    check_answer(orch_port, "svc7.default.orch.local", &ip(7))?;
    check_answer(orch_port, "svc999.default.orch.local", &ip(999))?;

    println!("dnsperf -l 10 -c 4 -Q 1000000, {NAMES} names, A queries over UDP; latency percentiles from a 3 s `dnsperf -v` run\n");
    println!("| server | queries/s | sent | lost | avg latency | p50 | p99 |");
    println!("|---|---|---|---|---|---|---|");
    let mut qps = Vec::new();
    for (name, port) in [("dnsmasq", dm_port), ("orch-dns", orch_port)] {
        let p = full_load(port, &queries)?;
        let (p50, p99) = percentiles(port, &queries)?;
        println!(
            "| {name} | {:.0} | {} | {} | {:.3} ms | {p50:.3} ms | {p99:.3} ms |",
            p.qps,
            p.sent,
            p.lost,
            p.avg * 1000.0
        );
        qps.push(p.qps);
    }
    println!(
        "\norch-dns / dnsmasq queries/s: {:.2}",
        qps[1] / qps[0].max(1.0)
    );
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    drop(server);
    Ok(())
}

/// A backend: for bulk, streams `bulk` bytes after a 1-byte request `B`; otherwise answers
/// each 64-byte request with 64 bytes until the client closes.
async fn backend() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut req = [0u8; 64];
                if s.read_exact(&mut req[..1]).await.is_err() {
                    return;
                }
                if req[0] == b'B' {
                    let chunk = vec![7u8; 256 * 1024];
                    while s.write_all(&chunk).await.is_ok() {}
                    return;
                }
                if s.read_exact(&mut req[1..]).await.is_err() {
                    return;
                }
                loop {
                    if s.write_all(&req).await.is_err() || s.read_exact(&mut req).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// MB/s read over one connection for `secs`.
async fn bulk(addr: SocketAddr, secs: f64) -> anyhow::Result<f64> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"B").await?;
    let mut buf = vec![0u8; 256 * 1024];
    let t = Instant::now();
    let mut total = 0u64;
    while t.elapsed().as_secs_f64() < secs {
        let n = s.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "bulk stream closed");
        total += n as u64;
    }
    Ok(total as f64 / t.elapsed().as_secs_f64() / 1e6)
}

/// Requests/s and p50/p99 latency (µs) over `conns` keep-alive connections for `secs`.
async fn rr(addr: SocketAddr, conns: usize, secs: f64) -> anyhow::Result<(f64, f64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (stop, count) = (stop.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return lat;
            };
            let _ = s.set_nodelay(true);
            let req = [1u8; 64];
            let mut resp = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if s.write_all(&req).await.is_err() || s.read_exact(&mut resp).await.is_err() {
                    break;
                }
                lat.push(t.elapsed().as_micros() as u32);
                count.fetch_add(1, Ordering::Relaxed);
            }
            lat
        }));
    }
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = t.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await?);
    }
    anyhow::ensure!(!lat.is_empty(), "no request completed");
    lat.sort_unstable();
    let at = |q: f64| f64::from(lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)]);
    Ok((
        count.load(Ordering::Relaxed) as f64 / elapsed,
        at(0.5),
        at(0.99),
    ))
}

fn proxy(rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    rt.block_on(async {
        let back = backend().await?;
        println!("client, proxy and backend in one process on this machine's 2 cores; 64-byte requests and responses; 5 s per figure\n");
        println!("| path | bulk MB/s (1 connection) | requests/s (32 keep-alive connections) | p50 | p99 |");
        println!("|---|---|---|---|---|");
        let (mb, rps, p50, p99) = measure(back).await?;
        println!("| direct | {mb:.0} | {rps:.0} | {p50:.0} µs | {p99:.0} µs |");
        for mode in modes() {
            let (p, front) = published(mode, &[back]).await?;
            let (pmb, prps, pp50, pp99) = measure(front).await?;
            println!("| through the proxy, {mode:?} | {pmb:.0} | {prps:.0} | {pp50:.0} µs | {pp99:.0} µs |");
            println!(
                "| ratio to direct, {mode:?} | {:.2} | {:.2} | +{:.0} µs | |",
                pmb / mb,
                prps / rps,
                pp50 - p50
            );
            drop(p);
        }
        Ok(())
    })
}

/// Bulk MB/s, then requests/s, p50 and p99 (µs) at `addr`.
async fn measure(addr: SocketAddr) -> anyhow::Result<(f64, f64, f64, f64)> {
    let mb = bulk(addr, 5.0).await?;
    let (rps, p50, p99) = rr(addr, 32, 5.0).await?;
    Ok((mb, rps, p50, p99))
}

/// The proxy modes this machine can run (nftables needs root and `nft`).
fn modes() -> Vec<ProxyMode> {
    let mut m = vec![ProxyMode::Userspace];
    if ServiceProxy::nftables_available() {
        m.push(ProxyMode::Nftables);
    }
    m
}

/// A proxy in `mode` publishing a fresh port for `backends`; the proxy and its address.
async fn published(
    mode: ProxyMode,
    backends: &[SocketAddr],
) -> anyhow::Result<(ServiceProxy, SocketAddr)> {
    let mut cfg = ProxyConfig::new("bench", "127.0.0.1".parse()?);
    cfg.mode = mode;
    let p = ServiceProxy::new(cfg);
    let port = free_port();
    p.set_published(
        "default",
        "web",
        vec![Published {
            port,
            target: "http".into(),
            balance: Balance::RoundRobin,
        }],
    )
    .await?;
    let eps = backends
        .iter()
        .enumerate()
        .map(|(i, a)| Endpoint {
            replica: format!("web-{i}"),
            node: "bench".into(),
            ip: a.ip().to_string(),
            ports: vec![EndpointPort {
                name: "http".into(),
                port: a.port(),
                protocol: Protocol::Tcp,
            }],
        })
        .collect();
    p.set_endpoints("default", "web", eps).await?;
    Ok((p, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// HTTP GETs a second, each on a new connection (as `hello-server` closes every one), from
/// `threads` client threads for `secs`; `addrs` are used in turn.
fn http_rate(addrs: &[SocketAddr], threads: usize, secs: f64) -> (f64, u64) {
    let get = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let from = Client::default();
    conn_rate(addrs, threads, secs, &from, get, |b| {
        b.starts_with(b"HTTP/1.1 200")
    })
}

/// Where a client connects from: a network namespace (else this one), a source address
/// (else the kernel's choice).
#[derive(Clone, Default)]
struct Client {
    netns: Option<String>,
    source: Option<std::net::IpAddr>,
}

impl Client {
    fn connect(&self, to: SocketAddr) -> std::io::Result<std::net::TcpStream> {
        let Some(source) = self.source else {
            return std::net::TcpStream::connect(to);
        };
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.bind(&SocketAddr::new(source, 0).into())?;
        s.connect(&to.into())?;
        Ok(s.into())
    }
}

/// Exchanges a second, each on a new connection: send `request`, read until the server
/// closes, `ok` judges the answer; from `threads` client threads (connecting `from`) for
/// `secs`; `addrs` are used in turn.
fn conn_rate(
    addrs: &[SocketAddr],
    threads: usize,
    secs: f64,
    from: &Client,
    request: &'static [u8],
    ok: fn(&[u8]) -> bool,
) -> (f64, u64) {
    use std::io::{Read, Write};
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (stop, done, failed, addrs) =
                (stop.clone(), done.clone(), failed.clone(), addrs.to_vec());
            let from = from.clone();
            std::thread::spawn(move || {
                if let Some(path) = &from.netns {
                    netns::enter(path);
                }
                let mut i = t;
                let mut buf = Vec::with_capacity(1024);
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let answered = from
                        .connect(addrs[i % addrs.len()])
                        .and_then(|mut s| {
                            if !request.is_empty() {
                                s.write_all(request)?;
                            }
                            buf.clear();
                            s.read_to_end(&mut buf)
                        })
                        .is_ok_and(|_| ok(&buf));
                    if answered {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let elapsed = t.elapsed().as_secs_f64();
    for w in workers {
        let _ = w.join();
    }
    (
        done.load(Ordering::Relaxed) as f64 / elapsed,
        failed.load(Ordering::Relaxed),
    )
}

/// Three replicas of the example server (`hello-server`, next to this binary) behind the
/// proxy, against the client calling them directly in turn.
fn http(rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let server = exe.with_file_name("hello-server");
    anyhow::ensure!(
        server.exists(),
        "{} is missing: cargo build --release -p orch-example-hello",
        server.display()
    );
    let mut children = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..3 {
        let port = free_port();
        children.push(
            Command::new(&server)
                .env("PORT", port.to_string())
                .env("ORCH_REPLICA", format!("web-{i}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        addrs.push(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    for a in &addrs {
        let t = Instant::now();
        while std::net::TcpStream::connect(a).is_err() {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(5), "{a} does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!("3 replicas of the example HTTP server (a thread per connection, `Connection: close`); 4 client threads, a new connection per GET, 5 s per figure\n");
    println!("| path | GET/s | failed | ratio to direct |");
    println!("|---|---|---|---|");
    let (direct, df) = http_rate(&addrs, 4, 5.0);
    println!("| direct (client picks the replica in turn) | {direct:.0} | {df} | |");
    for mode in modes() {
        let (p, front) = rt.block_on(published(mode, &addrs))?;
        let (proxied, pf) = http_rate(&[front], 4, 5.0);
        println!(
            "| through the proxy, {mode:?} (round robin) | {proxied:.0} | {pf} | {:.2} |",
            proxied / direct.max(1.0)
        );
        drop(p);
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(())
}

/// New connections a second through a virtual IP against straight to the replicas, in
/// network namespaces (see `netns.rs`): the proxy's rules in the node's namespace, three
/// replicas answering their name and closing, a fourth namespace on the bridge as a client.
/// Every figure is measured from a source address of its own, with the node's connection
/// tracking table flushed before: a client that connected to a replica directly and then
/// through the virtual IP from the same address and port would meet the replica's
/// TIME_WAIT socket of the direct connection with a sequence number chosen for the virtual
/// IP's address, and stall a second for a SYN retransmission (the same happens to a real
/// client that mixes both paths within a minute; one path per client is the normal case).
fn vip() -> anyhow::Result<()> {
    use orch_core::discovery::VirtualIp;
    anyhow::ensure!(
        ServiceProxy::nftables_available(),
        "the vip case needs root and nft (package nftables), and `ip` (iproute2)"
    );
    const PORT: u16 = 8080;
    const SECS: f64 = 5.0;
    const THREADS: usize = 4;
    let mut lan = netns::Lan::new(4);
    lan.serve_names(PORT);
    let backends: Vec<SocketAddr> = lan.replicas[..3]
        .iter()
        .map(|r| SocketAddr::from((r.ip, PORT)))
        .collect();
    let endpoints: Vec<Endpoint> = lan.replicas[..3]
        .iter()
        .map(|r| Endpoint {
            replica: r.name.clone(),
            node: "bench".into(),
            ip: r.ip.to_string(),
            ports: vec![EndpointPort {
                name: "http".into(),
                port: PORT,
                protocol: Protocol::Tcp,
            }],
        })
        .collect();
    let vip = SocketAddr::from(([10, 96, 0, 10], 80));
    let client = format!("/run/netns/{}", lan.replicas[3].ns.name);
    // Source addresses, one per figure: on the node's bridge and on the client's veth.
    let subnet = netns::SUBNET;
    let source = move |k: u8| std::net::Ipv4Addr::new(subnet[0], subnet[1], subnet[2], k);
    for k in 0..4 {
        lan.node.ip(&[
            "addr",
            "add",
            &format!("{}/24", source(200 + k)),
            "dev",
            "br0",
        ]);
        lan.replicas[3].ns.ip(&[
            "addr",
            "add",
            &format!("{}/24", source(100 + k)),
            "dev",
            "eth0",
        ]);
    }
    let node = format!("/run/netns/{}", lan.node.name);
    let gateway = lan.gateway;
    println!("a node namespace with a bridge; 3 replicas (a thread each: accept, write its name, close) and a client namespace on it; {THREADS} client threads, a new connection per exchange, {SECS} s per figure, the two paths alternated twice\n");
    println!("| client | path | connections/s | failed | ratio to direct |");
    println!("|---|---|---|---|---|");
    let rows = std::thread::spawn(move || -> anyhow::Result<Vec<String>> {
        netns::enter(&node);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let p = ServiceProxy::new(ProxyConfig::new("bench", gateway.into()));
        let v = VirtualIp {
            ip: vip.ip(),
            ports: vec![EndpointPort {
                name: "http".into(),
                port: vip.port(),
                protocol: Protocol::Tcp,
            }],
        };
        rt.block_on(p.set_virtual_ip("default", "web", Some(v)))?;
        rt.block_on(p.set_endpoints("default", "web", endpoints))?;
        let named = |b: &[u8]| b.starts_with(b"r");
        let mut rows = Vec::new();
        let clients = [
            ("the node (output hook)", None, 200),
            ("a namespace on the bridge (prerouting)", Some(client), 100),
        ];
        for (who, netns, base) in clients {
            for round in 0..2u8 {
                let from = |k: u8| {
                    // A fresh table for each figure (both paths are tracked here).
                    let _ = Command::new("conntrack")
                        .arg("-F")
                        .stderr(Stdio::null())
                        .status();
                    Client {
                        netns: netns.clone(),
                        source: Some(source(base + 2 * round + k).into()),
                    }
                };
                let (direct, df) = conn_rate(&backends, THREADS, SECS, &from(0), b"", named);
                rows.push(format!(
                    "| {who} | direct to the replicas in turn | {direct:.0} | {df} | |"
                ));
                let (through, tf) = conn_rate(&[vip], THREADS, SECS, &from(1), b"", named);
                rows.push(format!(
                    "| {who} | through the virtual IP | {through:.0} | {tf} | {:.2} |",
                    through / direct.max(1.0)
                ));
            }
        }
        drop(p);
        Ok(rows)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the node thread panicked"))??;
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if which == "dns" || which == "all" {
        dns(&rt)?;
        println!();
    }
    if which == "proxy" || which == "all" {
        proxy(&rt)?;
        println!();
        http(&rt)?;
    }
    if which == "vip" || which == "all" {
        println!();
        vip()?;
    }
    Ok(())
}
