//! Test tooling: one-layer OCI images made with `tar` and `gzip` — of Debian's static busybox
//! (`busybox-static`), or of any program with the shared libraries `ldd` lists for it (the
//! workspace's example server) — for tests of the containerd runtime here and in the daemon.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest;

use super::{Blob, ImageLayer, ImageParts};

/// The busybox applets linked in the root filesystem.
pub const APPLETS: [&str; 15] = [
    "sh", "sleep", "echo", "cat", "ls", "mkdir", "httpd", "head", "tr", "kill", "true", "wget",
    "id", "nslookup", "hostname",
];

/// Builds `DIR/rootfs` with the static busybox as `/bin/busybox` and [`APPLETS`] linked to it.
pub fn busybox_rootfs(dir: &Path) -> io::Result<PathBuf> {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin"))?;
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("/bin/busybox (Debian package busybox-static): {e}"),
        )
    })?;
    for name in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(name))?;
    }
    Ok(root)
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(format!("sha256:{:x}", sha2::Sha256::digest(&bytes)))
}

fn blob(path: PathBuf, media_type: &str) -> io::Result<Blob> {
    Ok(Blob {
        media_type: media_type.into(),
        digest: sha256_file(&path)?,
        size: std::fs::metadata(&path)?.len() as i64,
        path,
    })
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let status = cmd.status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("{cmd:?}: {status}")))
    }
}

/// A one-layer OCI image (entrypoint `/bin/sh`) of [`busybox_rootfs`], its blobs in `dir`:
/// what a pull or an image import hands to [`Containerd::import`](super::Containerd::import).
pub fn busybox_image(dir: &Path, name: &str) -> io::Result<ImageParts> {
    let layer_dir = busybox_rootfs(&dir.join("layer"))?;
    image_of(dir, &layer_dir, name, &["/bin/sh"])
}

/// A one-layer OCI image of `program` (at `/bin/NAME`, the entrypoint) with the shared
/// libraries `ldd` lists for it at their paths; its blobs in `dir`.
pub fn program_image(dir: &Path, name: &str, program: &Path) -> io::Result<ImageParts> {
    let root = dir.join("layer").join("rootfs");
    let file_name = program
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{}: not a file", program.display())))?;
    let target = Path::new("/bin").join(file_name);
    let mut files = vec![(program.to_path_buf(), target.clone())];
    let ldd = Command::new("ldd").arg(program).output()?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`
        let path = line
            .split("=>")
            .last()
            .and_then(|p| p.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            files.push((PathBuf::from(p), PathBuf::from(p)));
        }
    }
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    for (from, to) in files {
        let dest = root.join(to.strip_prefix("/").unwrap_or(&to));
        std::fs::create_dir_all(dest.parent().unwrap_or(&root))?;
        // Copy the file a symlink points to, under the link's own name.
        std::fs::copy(std::fs::canonicalize(&from)?, &dest)?;
    }
    let entry = target.display().to_string();
    image_of(dir, &root, name, &[&entry])
}

/// Builds binary `bin` of the workspace package `package` statically linked (glibc with
/// `-C target-feature=+crt-static`, so no musl toolchain is needed) into `TARGET_DIR/static`
/// with the `cargo` that runs the tests, and returns its path. The result needs no shared
/// library (`ldd` says "statically linked"); [`program_image`] then packs it alone.
pub fn static_build(target_dir: &Path, package: &str, bin: &str) -> io::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let host = "x86_64-unknown-linux-gnu";
    let out = target_dir.join("static");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--quiet", "-p", package, "--bin", bin])
        .args(["--target", host])
        .arg("--target-dir")
        .arg(&out)
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    run(&mut cmd).map_err(|e| io::Error::other(format!("static build of {bin}: {e}")))?;
    Ok(out.join(host).join("release").join(bin))
}

/// Packs `layer_dir` (a root filesystem) as the one layer of an image whose entrypoint is
/// `entrypoint`, its blobs in `dir`.
pub fn image_of(
    dir: &Path,
    layer_dir: &Path,
    name: &str,
    entrypoint: &[&str],
) -> io::Result<ImageParts> {
    image_as(dir, layer_dir, name, entrypoint, None)
}

/// [`image_of`] with the config's `User` set.
pub fn image_as(
    dir: &Path,
    layer_dir: &Path,
    name: &str,
    entrypoint: &[&str],
    user: Option<&str>,
) -> io::Result<ImageParts> {
    std::fs::create_dir_all(dir)?;
    let tar = dir.join("layer.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(layer_dir)
        .arg("-cf")
        .arg(&tar)
        .arg("."))?;
    let diff_id = sha256_file(&tar)?;
    run(Command::new("gzip").args(["-n", "-k", "-f"]).arg(&tar))?;
    let layer = blob(
        dir.join("layer.tar.gz"),
        "application/vnd.oci.image.layer.v1.tar+gzip",
    )?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    if let Some(u) = user {
        config["config"]["User"] = u.into();
    }
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config.to_string())?;
    let config = blob(config_path, "application/vnd.oci.image.config.v1+json")?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}],
    });
    let manifest_path = dir.join("manifest.json");
    std::fs::write(&manifest_path, manifest.to_string())?;
    Ok(ImageParts {
        name: name.into(),
        manifest: blob(manifest_path, "application/vnd.oci.image.manifest.v1+json")?,
        config,
        layers: vec![ImageLayer {
            blob: layer,
            diff_id,
        }],
    })
}

/// Writes `image` as an OCI image layout directory (`oci-layout`, `index.json`, `blobs/`),
/// tagged `tag`: what `skopeo copy oci:DIR:TAG ...` reads.
pub fn write_oci_layout(image: &ImageParts, dir: &Path, tag: &str) -> io::Result<()> {
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs)?;
    let all = [&image.manifest, &image.config]
        .into_iter()
        .chain(image.layers.iter().map(|l| &l.blob));
    for b in all {
        let hex = b.digest.trim_start_matches("sha256:");
        std::fs::copy(&b.path, blobs.join(hex))?;
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": image.manifest.media_type,
            "digest": image.manifest.digest,
            "size": image.manifest.size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string())
}

/// An OCI distribution registry of its own (Debian `docker-registry`) on a free loopback
/// port with its storage in a temporary directory, optionally behind HTTP basic
/// authentication; stopped on drop.
pub struct LocalRegistry {
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl std::fmt::Debug for LocalRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRegistry")
            .field("address", &self.address())
            .finish()
    }
}

fn registry_dir() -> io::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix("orch-registry-").tempdir()
}

impl LocalRegistry {
    /// Starts the registry over plain HTTP (with `htpasswd` users from `user:password` pairs,
    /// if any) and waits until it answers.
    pub fn start(users: &[(&str, &str)]) -> io::Result<LocalRegistry> {
        Self::start_with(users, None)
    }

    /// Starts the registry over HTTPS with this certificate and key (PEM files).
    pub fn start_tls(users: &[(&str, &str)], cert: &Path, key: &Path) -> io::Result<LocalRegistry> {
        Self::start_with(users, Some((cert, key)))
    }

    /// Starts the registry over plain HTTP with this `auth:` section of its configuration
    /// (YAML, for example a `token:` one: realm, service, issuer, rootcertbundle).
    pub fn start_with_auth(auth: &str) -> io::Result<LocalRegistry> {
        Self::start_config(registry_dir()?, auth.to_string(), None)
    }

    fn start_with(
        users: &[(&str, &str)],
        tls: Option<(&Path, &Path)>,
    ) -> io::Result<LocalRegistry> {
        let dir = registry_dir()?;
        let mut auth = String::new();
        if !users.is_empty() {
            let path = dir.path().join("htpasswd");
            for (i, (u, p)) in users.iter().enumerate() {
                let mut cmd = Command::new("htpasswd");
                cmd.arg(if i == 0 { "-Bbc" } else { "-Bb" })
                    .arg(&path)
                    .args([u, p]);
                run(cmd
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null()))
                .map_err(|e| io::Error::other(format!("htpasswd (Debian apache2-utils): {e}")))?;
            }
            auth = format!(
                "auth:\n  htpasswd:\n    realm: orch-test\n    path: {}\n",
                path.display()
            );
        }
        Self::start_config(dir, auth, tls)
    }

    fn start_config(
        dir: tempfile::TempDir,
        auth: String,
        tls: Option<(&Path, &Path)>,
    ) -> io::Result<LocalRegistry> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{tls}{auth}",
            dir.path().join("storage").display(),
            tls = match tls {
                Some((cert, key)) => format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    cert.display(),
                    key.display()
                ),
                None => String::new(),
            },
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let mut reg = LocalRegistry {
            child: None,
            dir,
            port,
        };
        reg.restart()?;
        Ok(reg)
    }

    /// (Re)starts the registry on the same port and storage, and waits until it listens.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let config_path = self.dir.path().join("config.yml");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::other(format!("docker-registry (Debian docker-registry): {e}"))
            })?;
        self.child = Some(child);
        let t = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if t.elapsed() > std::time::Duration::from_secs(20) {
                return Err(io::Error::other(
                    "docker-registry did not listen within 20 s",
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    }

    /// The registry's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Kills the registry (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the registry keeps a blob's bytes (to damage it in tests).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Pushes an OCI layout directory's `tag` as `REPOSITORY:TAG` with skopeo (Debian
    /// `skopeo`), with credentials if given (TLS is not verified: the registry is ours).
    pub fn push(
        &self,
        layout: &Path,
        tag: &str,
        repository: &str,
        creds: Option<(&str, &str)>,
    ) -> io::Result<()> {
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ]);
        if let Some((u, p)) = creds {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repository}:{tag}", self.address()));
        run(&mut cmd).map_err(|e| io::Error::other(format!("skopeo (Debian skopeo): {e}")))
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A certificate authority and a server certificate for `127.0.0.1` signed by it, made with
/// `openssl` in `dir`: `(ca.pem, server.pem, server.key)`.
pub fn loopback_tls(dir: &Path) -> io::Result<(PathBuf, PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let p = |n: &str| dir.join(n);
    let quiet = |c: &mut Command| {
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        run(c).map_err(|e| io::Error::other(format!("openssl: {e}")))
    };
    quiet(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=orch test CA", "-keyout"])
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.pem")),
    )?;
    quiet(
        Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
            ])
            .arg(p("server.key"))
            .arg("-out")
            .arg(p("server.csr")),
    )?;
    std::fs::write(p("san.cnf"), "subjectAltName=IP:127.0.0.1\n")?;
    quiet(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "1", "-in"])
            .arg(p("server.csr"))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(p("san.cnf"))
            .arg("-out")
            .arg(p("server.pem")),
    )?;
    Ok((p("ca.pem"), p("server.pem"), p("server.key")))
}
