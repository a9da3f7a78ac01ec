//! Time to N running containers (N = 20 and 100), one image, one machine, one run:
//! - orch: the engine in-process (in-memory store, scheduler, one node agent on
//!   `ContainerdRuntime`) from `apply` of a service to every replica Ready;
//! - ctr: `ctr run -d` N times in parallel on the same containerd (the floor: no orchestration);
//! - Docker Swarm: `docker service create --replicas N` until N/N (dockerd of its own with
//!   its own containerd, started as PEERS.md says), when `dockerd` is installed.
//!
//!
//! Then (issue 7): crash → replacement running for a container killed with SIGKILL, and a
//! rolling update of 40 replicas one at a time (stop grace 1 s, readiness honoured) through orch
//! and through Swarm (`docker service create --init --stop-grace-period 1s
//! --update-parallelism 1`, then `docker service update`).
//!
//! `cargo build --release -p orch-benches --bin containers --features containerd && sudo target/release/containers`
//! (needs root, Debian `containerd runc busybox-static`, and `docker.io` for the Swarm column).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use orch_core::memstore::MemStore;
use orch_core::model::object::Phase;
use orch_core::{AgentConfig, Engine, EngineConfig};
use orch_runtime::containerd::testing::busybox_image;
use orch_runtime::containerd::{Containerd, ContainerdConfig, ContainerdRuntime, LocalContainerd};

/// The allocator orchd uses, so figures are those of the daemon.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const IMAGE: &str = "localhost/busybox:bench";
const SIZES: [usize; 2] = [20, 100];

/// `ctr run -d` of `n` containers in parallel; time until every one has returned (its task
/// started).
fn ctr(ctd: &LocalContainerd, ns: &str, n: usize) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|i| {
            Command::new("ctr")
                .arg("-a")
                .arg(ctd.socket())
                .args([
                    "-n",
                    ns,
                    "run",
                    "-d",
                    "--snapshotter",
                    "overlayfs",
                    "--net-host",
                ])
                .arg(IMAGE)
                .arg(format!("ctr-{ns}-{n}-{i}"))
                .args(["/bin/sleep", "100000"])
                .stdout(Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut c in children {
        anyhow::ensure!(c.wait()?.success(), "ctr run failed");
    }
    Ok(t.elapsed())
}

/// orch: apply a service of `n` replicas; time until all are Ready.
async fn orch(engine: &Engine, store: &MemStore, n: usize) -> anyhow::Result<Duration> {
    orch_until(engine, store, n, |_| true).await
}

/// [`orch`], until every replica is Ready and `done` holds for it too.
async fn orch_until(
    engine: &Engine,
    store: &MemStore,
    n: usize,
    done: impl Fn(&orch_core::model::object::Replica) -> bool,
) -> anyhow::Result<Duration> {
    let name = format!("web-{n}");
    let yaml = format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  replicas: {n}\n  template:\n    image: {IMAGE}\n    command: [/bin/sleep, '100000']\n    stopGracePeriod: 1s\n"
    );
    let objects = orch_core::model::manifest::parse("bench.yaml", &yaml)?;
    let t = Instant::now();
    orch_core::engine::api::apply(store, objects, false).await?;
    loop {
        let reps = engine.cache().replicas_of_service("default", &name);
        if reps.len() == n
            && reps
                .iter()
                .all(|r| r.status.phase == Phase::Ready && done(r))
        {
            return Ok(t.elapsed());
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(300),
            "{name}: not ready after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The command the rolling-update replicas run: exits at once on SIGTERM.
const LOOP: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

/// orch: a service of 40 replicas (one at a time: max surge 1, max unavailable 0; a readiness
/// probe that execs into the container), then a change of its template; time from the change
/// to every replica running the new revision and ready, the old ones gone.
async fn orch_rolling(engine: &Engine, store: &MemStore, n: usize) -> anyhow::Result<Duration> {
    let yaml = |v: &str| {
        format!(
            "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: roll}}\nspec:\n  replicas: {n}\n  update: {{maxSurge: 1, maxUnavailable: 0}}\n  template:\n    image: {IMAGE}\n    command: [/bin/sh, -c, \"{LOOP}\"]\n    env: [{{name: V, value: '{v}'}}]\n    stopGracePeriod: 1s\n    readinessProbe: {{exec: {{command: [/bin/true]}}, period: 1s}}\n"
        )
    };
    let converged = |v: &'static str| async move {
        let t = Instant::now();
        loop {
            let reps = engine.cache().replicas_of_service("default", "roll");
            if reps.len() == n
                && reps
                    .iter()
                    .all(|r| r.status.phase == Phase::Ready && r.spec.template.env[0].value == v)
            {
                return Ok::<_, anyhow::Error>(());
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(600),
                "roll: not converged"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    orch_core::engine::api::apply(
        store,
        orch_core::model::manifest::parse("a.yaml", &yaml("1"))?,
        false,
    )
    .await?;
    converged("1").await?;
    let t = Instant::now();
    orch_core::engine::api::apply(
        store,
        orch_core::model::manifest::parse("b.yaml", &yaml("2"))?,
        false,
    )
    .await?;
    converged("2").await?;
    Ok(t.elapsed())
}

/// orch: SIGKILL the process of one running replica (no readiness probe); time until the
/// replica is Ready again with a new process. Median of `samples` kills.
async fn orch_crash(engine: &Engine, samples: usize) -> anyhow::Result<Duration> {
    let mut took = Vec::new();
    for i in 0..samples {
        let reps = engine.cache().replicas_of_service("default", "web-20");
        let r = reps
            .get(i % reps.len())
            .context("no replica of web-20 to kill")?
            .clone();
        let before = r.status.runtime_id.clone();
        // `pid 1234, container ...`
        let pid: String = before
            .strip_prefix("pid ")
            .unwrap_or("")
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        anyhow::ensure!(!pid.is_empty(), "no pid in runtime id {before:?}");
        let t = Instant::now();
        Command::new("kill").args(["-9", &pid]).status()?;
        loop {
            let now = engine
                .cache()
                .replicas_of_service("default", "web-20")
                .into_iter()
                .find(|x| x.metadata.name == r.metadata.name);
            if now.is_some_and(|x| x.status.phase == Phase::Ready && x.status.runtime_id != before)
            {
                took.push(t.elapsed());
                break;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(60),
                "not replaced in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Let the backoff of this replica settle before the next sample.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    took.sort();
    Ok(took[took.len() / 2])
}

/// A dockerd of its own in swarm mode (PEERS.md), with the busybox image built in it.
struct Swarm {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Swarm {
    fn docker(&self) -> Command {
        let mut c = Command::new("/usr/bin/docker");
        c.env(
            "DOCKER_HOST",
            format!("unix://{}", self.dir.path().join("docker.sock").display()),
        );
        c
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.docker().args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn start() -> anyhow::Result<Swarm> {
        let dir = tempfile::Builder::new().prefix("orch-swarm-").tempdir()?;
        let d = dir.path();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .args(["--iptables=false", "--bridge=none"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("dockerd.log"))?)
            .spawn()
            .context("dockerd (Debian docker.io)")?;
        let s = Swarm { child, dir };
        let t = Instant::now();
        while s.run(&["info"]).is_err() {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(60),
                "dockerd did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let ctx = s.dir.path().join("ctx");
        std::fs::create_dir_all(&ctx)?;
        std::fs::copy("/bin/busybox", ctx.join("busybox"))?;
        std::fs::write(
            ctx.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
        )?;
        s.run(&[
            "build",
            "-q",
            "-t",
            "local/busybox:latest",
            ctx.to_str().unwrap_or("."),
        ])?;
        s.run(&["swarm", "init", "--advertise-addr", "127.0.0.1"])?;
        Ok(s)
    }

    /// `docker service create --init --stop-grace-period 1s --update-parallelism 1` of `n`
    /// replicas, then `docker service update --env-add`: time of the update (the command
    /// returns when the service has converged).
    fn rolling(&self, n: usize) -> anyhow::Result<Duration> {
        self.run(&[
            "service",
            "create",
            "--quiet",
            "--init",
            "--stop-grace-period",
            "1s",
            "--update-parallelism",
            "1",
            "--name",
            "roll",
            "--replicas",
            &n.to_string(),
            "local/busybox:latest",
            "sh",
            "-c",
            LOOP,
        ])?;
        let t = Instant::now();
        self.run(&["service", "update", "--quiet", "--env-add", "V=2", "roll"])?;
        let took = t.elapsed();
        let _ = self.run(&["service", "rm", "roll"]);
        Ok(took)
    }

    /// `docker service create --replicas n`; time until `n/n` running.
    fn replicas(&self, n: usize) -> anyhow::Result<Duration> {
        self.replicas_on(n, None)
    }

    /// [`Swarm::replicas`] with `--network NETWORK` (an overlay: every task an address of
    /// its own on it).
    fn replicas_on(&self, n: usize, network: Option<&str>) -> anyhow::Result<Duration> {
        let name = format!("web{n}{}", network.unwrap_or(""));
        let count = n.to_string();
        let mut args = vec![
            "service",
            "create",
            "--detach",
            "--quiet",
            "--name",
            &name,
            "--replicas",
            &count,
        ];
        if let Some(net) = network {
            args.extend(["--network", net]);
        }
        args.extend(["local/busybox:latest", "sleep", "100000"]);
        let t = Instant::now();
        self.run(&args)?;
        loop {
            let out = self.run(&[
                "service",
                "ls",
                "--filter",
                &format!("name={name}"),
                "--format",
                "{{.Replicas}}",
            ])?;
            if out.trim() == format!("{n}/{n}") {
                let took = t.elapsed();
                let _ = self.run(&["service", "rm", &name]);
                // The next measurement starts with no task of this one still stopping.
                let t = Instant::now();
                while !self.run(&["ps", "-aq"])?.trim().is_empty()
                    && t.elapsed() < Duration::from_secs(120)
                {
                    std::thread::sleep(Duration::from_millis(200));
                }
                return Ok(took);
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(300),
                "swarm: {name} not running after 300 s ({out})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let _ = self.run(&["swarm", "leave", "--force"]);
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        // dockerd's own containerd and shims, found by our directory in their command lines.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(self.dir.path().to_string_lossy().as_ref())
            .status();
        let _ = Command::new("umount")
            .args(["-R", "-l"])
            .arg(self.dir.path().join("root"))
            .stderr(Stdio::null())
            .status();
    }
}

/// The address of the harness's node in its network namespace (on a veth standing in for
/// the uplink): the node address replica networking is given.
const NODE_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 168, 250, 1);

/// Runs this harness again inside a network namespace of its own (a veth holding
/// [`NODE_ADDRESS`], loopback up), so the bridge, routes and nft tables replica networking
/// makes, and Swarm's overlay, go with the namespace; the namespace is removed afterwards.
/// `None` when already inside it.
fn rerun_in_own_netns() -> anyhow::Result<Option<std::process::ExitStatus>> {
    if std::env::var_os("ORCH_BENCH_NETNS").is_some() {
        return Ok(None);
    }
    let name = format!("orch-bench-{}", std::process::id());
    let ip = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("ip")
            .args(args)
            .output()
            .context("ip (iproute2)")?;
        anyhow::ensure!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    ip(&["netns", "add", &name])?;
    let addr = format!("{NODE_ADDRESS}/24");
    let status = (|| {
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        // A veth pair (the `dummy` module is not always there) stands in for the uplink.
        ip(&[
            "-n", &name, "link", "add", "bench0", "type", "veth", "peer", "name", "bench1",
        ])?;
        ip(&["-n", &name, "addr", "add", &addr, "dev", "bench0"])?;
        ip(&["-n", &name, "link", "set", "bench1", "up"])?;
        ip(&["-n", &name, "link", "set", "bench0", "up"])?;
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{name}"))
            .arg(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env("ORCH_BENCH_NETNS", &name)
            .status()
            .context("nsenter (util-linux)")
    })();
    let _ = ip(&["netns", "del", &name]);
    status.map(Some)
}

/// orch with replica networking: a second engine whose node gives every container a network
/// namespace and an address of its own (CNI bridge + host-local, `orch_net::CniNetwork`);
/// apply → `n` replicas Ready, each with its IP. `None` (and why on stderr) when this machine
/// cannot do replica networking.
async fn orch_own_ips(
    ctd: &LocalContainerd,
    ns: &str,
    n: usize,
) -> anyhow::Result<Option<Duration>> {
    let mut config =
        orch_net::NetConfig::new("bench-net", NODE_ADDRESS, ctd.scratch().join("network"));
    config.cni_bin_dir = "/usr/lib/cni".into();
    let net = match orch_net::CniNetwork::new(config) {
        Ok(net) => net,
        Err(e) => {
            eprintln!("replica network: not measured: {e}");
            return Ok(None);
        }
    };
    import(ctd, ns, &ctd.scratch().join("img-net")).await?;
    let network = Some(orch_core::engine::ClusterNetwork::default());
    let (store, mut engine, runtime, mut agent) =
        engine_on(ctd, ns, "orch-net-state", "bench-net", network).await?;
    agent.addresses = vec![NODE_ADDRESS.to_string()];
    agent.network = Some(orch_core::node::AgentNetwork(Arc::new(net)));
    engine.add_agent(runtime, agent);
    // Containers get their own network once the node's lease is configured.
    let t = Instant::now();
    while !engine
        .cache()
        .nodes()
        .iter()
        .any(|n| n.status.network.as_ref().is_some_and(|s| s.ready))
    {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "replica network: the node's network is not ready after 60 s: {:?}",
            engine
                .cache()
                .nodes()
                .first()
                .map(|n| n.status.network.clone())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = orch_until(&engine, &store, n, |r| r.status.ip.is_some()).await?;
    // Delete, and wait until every container and namespace is gone.
    orch_core::engine::api::delete(
        &*store,
        orch_core::Kind::Service,
        "default",
        &format!("web-{n}"),
    )
    .await?;
    let t = Instant::now();
    while !engine.cache().replicas().is_empty() && t.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    engine.shutdown().await;
    Ok(Some(took))
}

/// An in-process engine (in-memory store, `network` leases) and, for it, a containerd runtime
/// on namespace `ns` (state in the scratch dir's `state`) and the configuration of its node
/// `node` (up to 1,000 replicas), for the caller to add.
async fn engine_on(
    ctd: &LocalContainerd,
    ns: &str,
    state: &str,
    node: &str,
    network: Option<orch_core::engine::ClusterNetwork>,
) -> anyhow::Result<(Arc<MemStore>, Engine, Arc<ContainerdRuntime>, AgentConfig)> {
    let store = Arc::new(MemStore::new());
    let engine = Engine::builder(store.clone(), Arc::new(orch_sched::DefaultScheduler))
        .config(EngineConfig {
            network,
            ..EngineConfig::default()
        })
        .start();
    let mut config = ContainerdConfig::new(ctd.socket(), ctd.scratch().join(state));
    config.namespace = ns.to_string();
    let runtime = Arc::new(ContainerdRuntime::new(config).await?);
    let mut agent = AgentConfig::new(node);
    agent.max_replicas = 1000;
    Ok((store, engine, runtime, agent))
}

async fn import(ctd: &LocalContainerd, ns: &str, dir: &Path) -> anyhow::Result<()> {
    let c = Containerd::connect(ctd.socket(), ns).await?;
    let parts = busybox_image(dir, IMAGE)?;
    c.import(&parts, "overlayfs").await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if let Some(status) = rerun_in_own_netns()? {
        std::process::exit(status.code().unwrap_or(1));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let ctd = LocalContainerd::start().await.map_err(anyhow::Error::msg)?;
    let base = ctd.namespace();
    let (ns_ctr, ns_orch) = (format!("{base}-ctr"), format!("{base}-orch"));
    for (i, ns) in [&ns_ctr, &ns_orch].into_iter().enumerate() {
        import(&ctd, ns, &ctd.scratch().join(format!("img{i}"))).await?;
    }

    let (store, mut engine, runtime, agent) =
        engine_on(&ctd, &ns_orch, "orch-state", "bench", None).await?;
    engine.add_agent(runtime.clone(), agent);
    let quick = std::env::var_os("ORCH_BENCH_QUICK").is_some();

    let swarm = if quick {
        None
    } else if Path::new("/usr/sbin/dockerd").exists() || Path::new("/usr/bin/dockerd").exists() {
        match Swarm::start() {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("swarm: not measured: {e:#}");
                None
            }
        }
    } else {
        eprintln!("swarm: not measured: dockerd missing (Debian docker.io)");
        None
    };

    println!("| replicas | orch (apply → all Ready) | ctr run -d in parallel | Docker Swarm (create → N/N) | orch / ctr | Swarm / orch |\n|---|---|---|---|---|---|");
    let sizes: &[usize] = if quick && std::env::var_os("ORCH_BENCH_ALL_SIZES").is_none() {
        &[20]
    } else {
        &SIZES
    };
    for &n in sizes {
        let c = ctr(&ctd, &ns_ctr, n)?;
        let o = orch(&engine, &store, n).await?;
        let s = swarm.as_ref().map(|s| s.replicas(n)).transpose()?;
        println!(
            "| {n} | {:.2} s | {:.2} s | {} | {:.2}× | {} |",
            o.as_secs_f64(),
            c.as_secs_f64(),
            s.map_or("not measured".into(), |s| format!(
                "{:.2} s",
                s.as_secs_f64()
            )),
            o.as_secs_f64() / c.as_secs_f64(),
            s.map_or("—".into(), |s| format!(
                "{:.1}×",
                s.as_secs_f64() / o.as_secs_f64()
            )),
        );
    }
    // Replica networking: every container a network namespace and an IP of its own, against
    // `ctr run -d` on the host network and Swarm tasks on an overlay network, same run.
    let n = 100;
    if let Some(o) = orch_own_ips(&ctd, &format!("{base}-net"), n).await? {
        let ns_ctr_host = format!("{base}-ctrhost");
        import(&ctd, &ns_ctr_host, &ctd.scratch().join("img-ctrhost")).await?;
        let c = ctr(&ctd, &ns_ctr_host, n)?;
        let s = match &swarm {
            Some(s) => match s.run(&["network", "create", "--driver", "overlay", "orchbench"]) {
                Ok(_) => Some(s.replicas_on(n, Some("orchbench"))),
                Err(e) => Some(Err(e)),
            },
            None => None,
        };
        let s = match s {
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                eprintln!("swarm overlay: not measured: {e:#}");
                None
            }
            None => None,
        };
        println!(
            "\n| {n} containers | orch, own IPs (apply → all Ready) | ctr run -d --net-host in parallel | Docker Swarm, overlay network (create → N/N) | orch / ctr | Swarm / orch |\n|---|---|---|---|---|---|\n| apply → running | {:.2} s | {:.2} s | {} | {:.2}× | {} |",
            o.as_secs_f64(),
            c.as_secs_f64(),
            s.map_or("not measured".into(), |s| format!("{:.2} s", s.as_secs_f64())),
            o.as_secs_f64() / c.as_secs_f64(),
            s.map_or("—".into(), |s| format!("{:.1}×", s.as_secs_f64() / o.as_secs_f64())),
        );
    }
    // What one exec into a running container costs (an exec readiness probe pays it).
    let mut execs = Vec::new();
    let some = engine.cache().replicas_of_service("default", "web-20")[0].runtime_name();
    for _ in 0..5 {
        let t = Instant::now();
        use orch_core::runtime::Runtime as _;
        runtime
            .exec(&some, &["/bin/true".to_string()], Duration::from_secs(10))
            .await?;
        execs.push(t.elapsed());
    }
    execs.sort();
    println!(
        "\none exec of /bin/true into a running container (median of 5): {:.0} ms",
        execs[2].as_secs_f64() * 1000.0
    );
    let crash = orch_crash(&engine, 5).await?;
    println!(
        "\nSIGKILL of a container's process → replacement running (median of 5, no readiness probe): orch {:.0} ms",
        crash.as_secs_f64() * 1000.0
    );
    let roll: usize = std::env::var("ORCH_BENCH_ROLL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 10 } else { 40 });
    let o = orch_rolling(&engine, &store, roll).await?;
    let s = swarm.as_ref().map(|s| s.rolling(roll)).transpose()?;
    println!(
        "\n| rolling update, {roll} replicas one at a time, stop grace 1 s | orch | Docker Swarm | Swarm / orch |\n|---|---|---|---|\n| update → all replaced | {:.2} s | {} | {} |",
        o.as_secs_f64(),
        s.map_or("not measured".into(), |s| format!("{:.2} s", s.as_secs_f64())),
        s.map_or("—".into(), |s| format!("{:.1}×", s.as_secs_f64() / o.as_secs_f64())),
    );
    drop(swarm);
    engine.shutdown().await;
    Ok(())
}
