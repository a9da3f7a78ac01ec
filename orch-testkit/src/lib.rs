//! What a test needs from the machine: [`require`] (and [`require_that`] for a need the test
//! checks itself) tells a test that needs a real component — root, containerd, etcd, nft, a
//! tmpfs mount, cgroups — whether it can run.
//!
//! Without the switch a missing need is a skip: the test prints one line on stderr,
//! `skipped: TEST: needs NEED (WHY)`, and returns early (it counts as passed for libtest; `.ci/run`
//! counts these lines as skips). With `ORCH_TEST_REQUIRE_ALL=1` (what `.ci/run` sets) a
//! missing need fails the test instead, naming the need and how to install it.

pub mod hosts;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The environment variable that turns every skip into a failure when set to `1`.
pub const REQUIRE_ALL: &str = "ORCH_TEST_REQUIRE_ALL";

/// Whether every need of `needs` is available: each is `"root"` (effective uid 0), an
/// absolute path (a file that must exist, e.g. `"/bin/busybox"`) or a program looked up on
/// `PATH` (e.g. `"containerd"`). When one is missing, prints the skip line and returns `false`
/// — or panics under [`REQUIRE_ALL`].
///
/// ```
/// # fn test() {
/// if !orch_testkit::require(&["root", "nft"]) {
///     return;
/// }
/// # }
/// ```
pub fn require(needs: &[&str]) -> bool {
    let missing: Vec<(&str, String)> = needs
        .iter()
        .filter_map(|need| check(need).err().map(|why| (*need, why)))
        .collect();
    missing.is_empty() || skip(&missing)
}

/// [`require`] for a need the test checks itself: `missing` is `Some(why)` when `need` (e.g.
/// `"cgroups"`, `"a tmpfs mount"`) is not available here.
pub fn require_that(need: &str, missing: Option<String>) -> bool {
    match missing {
        None => true,
        Some(why) => skip(&[(need, why)]),
    }
}

/// Whether [`REQUIRE_ALL`] is set to `1`.
pub fn require_all() -> bool {
    std::env::var(REQUIRE_ALL).is_ok_and(|v| v == "1")
}

fn check(need: &str) -> Result<(), String> {
    if need == "root" {
        return match effective_uid() {
            Some(0) => Ok(()),
            Some(uid) => Err(format!("running as uid {uid}")),
            None => Err("cannot read the effective uid from /proc/self/status".into()),
        };
    }
    if need.starts_with('/') {
        return match Path::new(need).exists() {
            true => Ok(()),
            false => Err("no such file".into()),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(need))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    });
    match found {
        true => Ok(()),
        false => Err("not on PATH".into()),
    }
}

/// The effective uid, from the `Uid:` line of `/proc/self/status` (real, effective, ...).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// How to get `need`.
fn install(need: &str) -> String {
    let package = match need {
        "root" => return "run the tests as root (.ci/run does)".into(),
        "etcd" | "etcdctl" => "etcd-server",
        "/bin/busybox" => "busybox-static",
        "htpasswd" => "apache2-utils",
        "dig" => "dnsutils",
        "nft" => "nftables",
        "ip" => "iproute2",
        "ctr" => "containerd",
        "containerd" | "runc" | "docker-registry" | "skopeo" | "openssl" | "conntrack"
        | "python3" | "mmdebstrap" => need,
        _ => return "run the tests as root on a Linux host (.ci/run does)".into(),
    };
    format!("apt-get install {package} (.ci/run installs it)")
}

/// The running test's name: libtest runs each test on a thread named after it.
fn test_name() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => "this test".to_string(),
    }
}

/// Prints the skip line and returns `false`, or panics under [`REQUIRE_ALL`].
fn skip(missing: &[(&str, String)]) -> bool {
    let needs = missing
        .iter()
        .map(|(need, why)| format!("{need} ({why})"))
        .collect::<Vec<_>>()
        .join(", ");
    let name = test_name();
    if require_all() {
        let how = missing
            .iter()
            .map(|(need, _)| format!("{need}: {}", install(need)))
            .collect::<Vec<_>>()
            .join("; ");
        panic!("{REQUIRE_ALL}=1 and {name} needs {needs}: {how}");
    }
    // Straight to the process's stderr, past libtest's capture, in one write so that lines
    // of tests running in parallel do not interleave.
    let line = format!("skipped: {name}: needs {needs}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_needs_are_met() {
        assert!(check("sh").is_ok());
        assert!(check("/proc/self/status").is_ok());
        assert!(effective_uid().is_some());
    }

    #[test]
    fn absent_needs_say_why() {
        assert_eq!(check("orch-no-such-program").unwrap_err(), "not on PATH");
        assert_eq!(check("/orch/no/such/file").unwrap_err(), "no such file");
        assert!(install("nft").contains("nftables"));
        assert!(install("etcd").contains("etcd-server"));
    }

    #[test]
    fn the_test_is_named_after_its_thread() {
        assert_eq!(test_name(), "tests::the_test_is_named_after_its_thread");
    }
}
