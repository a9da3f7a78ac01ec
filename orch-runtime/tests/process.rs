//! The process runtime against real processes: start, ports, exit codes and signals, stop
//! with grace and SIGKILL, no orphans, adoption with the PID-reuse guard, logs, rotation,
//! command errors and memory limits.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use orch_core::object::{EnvVar, PortSpec, Resources, Template};
use orch_core::quantity::Memory;
use orch_core::runtime::{
    LogOptions, Runtime, RuntimeError, RuntimeEvent, WorkloadSpec, WorkloadState,
};
use orch_runtime::{ProcessConfig, ProcessRuntime};

fn spec(id: &str, script: &str) -> WorkloadSpec {
    WorkloadSpec {
        id: id.into(),
        replica_uid: format!("uid-{id}"),
        service: "svc".into(),
        namespace: "default".into(),
        template: Template {
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..Template::default()
        },
        template_hash: "h1".into(),
        extra_env: vec![EnvVar {
            name: "ORCH_REPLICA".into(),
            value: id.into(),
        }],
    }
}

async fn runtime(dir: &Path) -> ProcessRuntime {
    ProcessRuntime::new(ProcessConfig::new(dir.to_path_buf()))
        .await
        .unwrap()
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pid(w: &orch_core::runtime::Workload) -> u32 {
    w.runtime_id.trim_start_matches("pid ").parse().unwrap()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[tokio::test]
async fn runs_with_ports_env_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let mut s = spec(
        "default.web-1",
        "echo hi $PORT $ORCH_PORT_HTTP $ORCH_PORT_ADMIN_UI $ORCH_REPLICA $COLOR; exec sleep 1000",
    );
    s.template.ports = vec![
        PortSpec {
            name: "http".into(),
            port: None,
            protocol: Default::default(),
        },
        PortSpec {
            name: "admin-ui".into(),
            port: None,
            protocol: Default::default(),
        },
    ];
    s.template.env = vec![EnvVar {
        name: "COLOR".into(),
        value: "blue".into(),
    }];
    let w = rt.start(&s).await.unwrap();
    assert_eq!(w.ports.len(), 2);
    let (p1, p2) = (w.ports[0].port, w.ports[1].port);
    let expected = format!("hi {p1} {p1} {p2} default.web-1 blue\n");
    let log = dir.path().join("default.web-1/output.log");
    eventually("output", || {
        (std::fs::read_to_string(&log).ok()? == expected).then_some(())
    })
    .await;
    let listed = rt.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, WorkloadState::Running);
    assert!(alive(pid(&w)));
    let tail: Vec<u8> = rt
        .logs(
            "default.web-1",
            LogOptions {
                follow: false,
                tail_bytes: Some(5),
            },
        )
        .await
        .unwrap()
        .map(|c| c.unwrap())
        .concat()
        .await;
    assert_eq!(tail, b"blue\n");
    rt.remove("default.web-1").await.unwrap();
    assert!(!alive(pid(&w)));
    assert!(!dir.path().join("default.web-1").exists());
}

#[tokio::test]
async fn exit_codes_and_signals_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let mut events = rt.events();
    rt.start(&spec("default.a", "exit 3")).await.unwrap();
    let RuntimeEvent::Exited { id, status } = events.recv().await.unwrap();
    assert_eq!(
        (id.as_str(), status.code, status.signal),
        ("default.a", Some(3), None)
    );
    let w = rt
        .start(&spec("default.b", "exec sleep 1000"))
        .await
        .unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid(&w).to_string()])
        .status()
        .unwrap();
    let RuntimeEvent::Exited { id, status } = events.recv().await.unwrap();
    assert_eq!(
        (id.as_str(), status.code, status.signal),
        ("default.b", None, Some(9))
    );
    // An exited workload can be started again under the same id; its log is kept.
    rt.start(&spec("default.a", "echo again; exit 0"))
        .await
        .unwrap();
    let RuntimeEvent::Exited { status, .. } = events.recv().await.unwrap();
    assert!(status.success());
    rt.remove("default.a").await.unwrap();
    rt.remove("default.b").await.unwrap();
}

#[tokio::test]
async fn stop_honours_the_signal_then_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    // Exits on SIGTERM.
    let w = rt
        .start(&spec("default.polite", "exec sleep 1000"))
        .await
        .unwrap();
    let t = Instant::now();
    let st = rt
        .stop("default.polite", "SIGTERM", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(st.signal, Some(15));
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(!alive(pid(&w)));
    // Ignores SIGTERM, has a child in its group: both are gone after the grace period.
    let w = rt
        .start(&spec(
            "default.stubborn",
            "trap '' TERM; sleep 1000 & echo $! > child.pid; while true; do sleep 0.05; done",
        ))
        .await
        .unwrap();
    let child_file = dir.path().join("default.stubborn/work/child.pid");
    let child: u32 = eventually("child pid", || {
        std::fs::read_to_string(&child_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    })
    .await;
    assert!(alive(child));
    let t = Instant::now();
    let st = rt
        .stop("default.stubborn", "SIGTERM", Duration::from_millis(500))
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(st.signal, Some(9), "killed after the grace period");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(!alive(pid(&w)) && !alive(child), "no orphans");
    rt.remove("default.polite").await.unwrap();
    rt.remove("default.stubborn").await.unwrap();
}

#[tokio::test]
async fn a_new_runtime_re_adopts_and_guards_against_pid_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let a = runtime(dir.path()).await;
    let w = a
        .start(&spec("default.keep", "exec sleep 1000"))
        .await
        .unwrap();
    let w2 = a
        .start(&spec("default.reused", "exec sleep 1000"))
        .await
        .unwrap();
    drop(a);
    // Pretend default.reused's pid now belongs to another process: change its start time.
    let state = dir.path().join("default.reused/state.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    v["start_ticks"] = serde_json::json!(1);
    std::fs::write(&state, serde_json::to_vec(&v).unwrap()).unwrap();

    let b = runtime(dir.path()).await;
    let list = b.list().await.unwrap();
    let keep = list.iter().find(|x| x.id == "default.keep").unwrap();
    assert_eq!(keep.state, WorkloadState::Running);
    assert_eq!(keep.runtime_id, w.runtime_id);
    assert_eq!(keep.replica_uid, "uid-default.keep");
    let reused = list.iter().find(|x| x.id == "default.reused").unwrap();
    assert!(
        matches!(reused.state, WorkloadState::Exited(_)),
        "a mismatched start time is not ours"
    );
    // An adopted process's exit is noticed.
    let mut events = b.events();
    std::process::Command::new("kill")
        .args(["-9", &pid(&w).to_string()])
        .status()
        .unwrap();
    let RuntimeEvent::Exited { id, .. } =
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap();
    assert_eq!(id, "default.keep");
    // Removing the "reused" record must not kill the process that owns the pid now.
    b.remove("default.reused").await.unwrap();
    assert!(
        alive(pid(&w2)),
        "never kill a process whose start time does not match"
    );
    std::process::Command::new("kill")
        .args(["-9", &pid(&w2).to_string()])
        .status()
        .unwrap();
    b.remove("default.keep").await.unwrap();
}

#[tokio::test]
async fn follows_logs_and_rotation_caps_their_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ProcessConfig::new(dir.path().to_path_buf());
    cfg.log_max_bytes = 4096;
    let rt = ProcessRuntime::new(cfg).await.unwrap();
    rt.start(&spec(
        "default.chatty",
        "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.002; done",
    ))
    .await
    .unwrap();
    let mut follow = rt
        .logs(
            "default.chatty",
            LogOptions {
                follow: true,
                tail_bytes: None,
            },
        )
        .await
        .unwrap();
    let first = String::from_utf8(follow.next().await.unwrap().unwrap()).unwrap();
    assert!(first.starts_with("line 1\n"), "{first}");
    let log = dir.path().join("default.chatty/output.log");
    eventually("rotated", || {
        dir.path()
            .join("default.chatty/output.log.1")
            .exists()
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size < 4096 * 4, "log stays capped, is {size}");
    // Following keeps yielding new lines across rotation.
    let more = String::from_utf8(follow.next().await.unwrap().unwrap()).unwrap();
    assert!(more.contains("line"), "{more}");
    rt.remove("default.chatty").await.unwrap();
}

#[tokio::test]
async fn start_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let mut s = spec("default.x", "");
    s.template.command = vec!["no-such-program-xyz".into()];
    let err = rt.start(&s).await.unwrap_err();
    assert!(matches!(err, RuntimeError::StartFailed(_)), "{err}");
    assert!(
        err.to_string()
            .contains("\"no-such-program-xyz\" not found"),
        "{err}"
    );
    s.template.command = vec!["/etc/hostname".into()];
    let err = rt.start(&s).await.unwrap_err();
    assert!(matches!(err, RuntimeError::StartFailed(_)), "{err}");
    s.template.command = vec!["sh".into()];
    s.template.working_dir = Some("/nonexistent/dir".into());
    let err = rt.start(&s).await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent/dir"), "{err}");
}

#[tokio::test]
async fn memory_limit_kills_a_hog_as_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let info = rt.info();
    if !info.limits_enforced {
        println!("limits not enforced here: {}", info.limits_note);
        assert!(
            info.limits_note.contains("not enforced") && info.limits_note.len() > 30,
            "the note must say why: {}",
            info.limits_note
        );
        return;
    }
    let mut events = rt.events();
    let mut s = spec("default.hog", "");
    s.template.command = vec![
        "python3".into(),
        "-c".into(),
        "b = bytearray(300 * 1024 * 1024); import time; time.sleep(100)".into(),
    ];
    s.template.resources = Resources {
        cpu: None,
        memory: Some(Memory(50 << 20)),
    };
    rt.start(&s).await.unwrap();
    let RuntimeEvent::Exited { status, .. } =
        tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .unwrap()
            .unwrap();
    assert!(status.oom_killed, "killed for memory: {status:?}");
    rt.remove("default.hog").await.unwrap();
}
