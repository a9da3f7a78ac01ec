//! Replica networking throughput and latency: two hosts (network namespaces on a bridge, veth
//! links — one machine, not a real NIC), a `CniNetwork` on each, one replica namespace per
//! host. Measures replica → replica over the overlay against host → host directly, in vxlan
//! and host-gw modes: throughput with `iperf3` (median of RUNS runs of SECONDS s each, the two
//! paths alternating) and request/response latency with a 64-byte TCP ping-pong (p50/p99 of
//! ROUND_TRIPS). Needs root, iperf3, nsenter, ip, nft and the CNI plugins. Cleans up after
//! itself.
//!
//! ```sh
//! cargo build --release -p orch-benches --bin overlay && target/release/overlay
//! ```

#[path = "../../../orch-net/tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use common::{connect, Hosts, Node};
use orch_core::model::object::NetworkMode;
use orch_core::network::Network;

const RUNS: usize = 3;
const SECONDS: u32 = 5;
const ROUND_TRIPS: usize = 20_000;
const WARMUP: usize = 1_000;

/// One endpoint: a network namespace and an address in it.
struct End {
    netns: PathBuf,
    ip: IpAddr,
}

/// iperf3 from `from` to `to` (a one-shot server in `to`'s namespace); bits per second.
fn iperf(from: &End, to: &End, port: u16) -> anyhow::Result<f64> {
    let mut server = Command::new("nsenter")
        .arg(format!("--net={}", to.netns.display()))
        .args([
            "iperf3",
            "-s",
            "-1",
            "-B",
            &to.ip.to_string(),
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("run iperf3 -s")?;
    // Wait for it to listen.
    let mut out = None;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let o = Command::new("nsenter")
            .arg(format!("--net={}", from.netns.display()))
            .args([
                "iperf3",
                "-J",
                "-c",
                &to.ip.to_string(),
                "-p",
                &port.to_string(),
            ])
            .args(["-t", &SECONDS.to_string()])
            .output()
            .context("run iperf3 -c")?;
        if o.status.success() {
            out = Some(o);
            break;
        }
    }
    let _ = server.wait();
    let Some(out) = out else {
        let _ = server.kill();
        bail!("iperf3 -c {} never connected", to.ip);
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    v.pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .context("no end.sum_received.bits_per_second in iperf3's output")
}

/// p50 and p99 of ROUND_TRIPS 64-byte request/response round trips from `from` to `to`.
fn ping_pong(from: &End, to: &End, port: u16) -> anyhow::Result<(Duration, Duration)> {
    let addr = SocketAddr::new(to.ip, port);
    let (tx, rx) = std::sync::mpsc::channel();
    let netns = to.netns.clone();
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let file = std::fs::File::open(&netns)?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(addr)?;
        let _ = tx.send(());
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        for _ in 0..WARMUP + ROUND_TRIPS {
            s.read_exact(&mut buf)?;
            s.write_all(&buf)?;
        }
        Ok(())
    });
    rx.recv_timeout(Duration::from_secs(10))
        .context("the ping-pong server did not start")?;
    let times = common::in_netns(&from.netns, || -> std::io::Result<Vec<Duration>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        let mut buf = [7u8; 64];
        let mut times = Vec::with_capacity(ROUND_TRIPS);
        for i in 0..WARMUP + ROUND_TRIPS {
            let t = Instant::now();
            s.write_all(&buf)?;
            s.read_exact(&mut buf)?;
            if i >= WARMUP {
                times.push(t.elapsed());
            }
        }
        Ok(times)
    })?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the ping-pong server panicked"))??;
    let mut times = times;
    times.sort();
    Ok((times[times.len() / 2], times[times.len() * 99 / 100]))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Figures {
    overlay_bps: f64,
    direct_bps: f64,
    overlay_lat: (Duration, Duration),
    direct_lat: (Duration, Duration),
    mtu: String,
}

fn measure(mode: NetworkMode) -> anyhow::Result<Figures> {
    let hosts = Hosts::new(2);
    let a = Node::configured(&hosts, 0, mode);
    let b = Node::configured(&hosts, 1, mode);
    connect(&[&a, &b], mode);
    let ra = a.run(|n| async move { n.attach("bench.client-00000", &[]).await })?;
    let rb = b.run(|n| async move { n.attach("bench.server-00000", &[]).await })?;
    let overlay = (
        End {
            netns: ra.netns.clone(),
            ip: ra.ip.parse()?,
        },
        End {
            netns: rb.netns.clone(),
            ip: rb.ip.parse()?,
        },
    );
    let direct = (
        End {
            netns: hosts.netns(0),
            ip: hosts.address(0).parse()?,
        },
        End {
            netns: hosts.netns(1),
            ip: hosts.address(1).parse()?,
        },
    );
    let (mut o, mut d) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let port = 5201 + run as u16;
        o.push(iperf(&overlay.0, &overlay.1, port)?);
        d.push(iperf(&direct.0, &direct.1, port)?);
    }
    let overlay_lat = ping_pong(&overlay.0, &overlay.1, 7001)?;
    let direct_lat = ping_pong(&direct.0, &direct.1, 7002)?;
    let mtu = a.net.describe();
    Ok(Figures {
        overlay_bps: median(o),
        direct_bps: median(d),
        overlay_lat,
        direct_lat,
        mtu,
    })
    // a, b (remove_all) then hosts drop here.
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> anyhow::Result<()> {
    for need in ["iperf3", "nsenter", "ip", "nft"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {need}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            bail!("overlay needs {need} on PATH");
        }
    }
    if !Path::new("/usr/lib/cni/bridge").exists() {
        bail!("overlay needs the CNI plugins in /usr/lib/cni (apt-get install containernetworking-plugins)");
    }
    println!(
        "two hosts = network namespaces on one bridge (veth, one machine, not a real NIC); \
         iperf3 median of {RUNS} x {SECONDS} s; ping-pong 64 B x {ROUND_TRIPS}"
    );
    println!(
        "{:<8} {:>14} {:>14} {:>7} {:>22} {:>22}   setup",
        "mode",
        "overlay Gbit/s",
        "direct Gbit/s",
        "ratio",
        "overlay p50/p99 us",
        "direct p50/p99 us"
    );
    for (mode, target) in [(NetworkMode::Vxlan, 0.90), (NetworkMode::HostGw, 0.97)] {
        let f = measure(mode)?;
        let ratio = f.overlay_bps / f.direct_bps;
        println!(
            "{:<8} {:>14.2} {:>14.2} {:>6.1}% {:>10.1} / {:>9.1} {:>10.1} / {:>9.1}   {} (target >= {:.0}%: {})",
            mode.as_str(),
            f.overlay_bps / 1e9,
            f.direct_bps / 1e9,
            ratio * 100.0,
            us(f.overlay_lat.0),
            us(f.overlay_lat.1),
            us(f.direct_lat.0),
            us(f.direct_lat.1),
            f.mtu,
            target * 100.0,
            if ratio >= target { "met" } else { "missed" }
        );
    }
    Ok(())
}
