//! Test tooling: one-layer OCI images made with `tar` and `gzip` — of Debian's static busybox
//! (`busybox-static`), of any program with the shared libraries `ldd` lists for it (the
//! workspace's example server), or of a Debian root filesystem with real servers installed
//! (`mmdebstrap`, cached per machine) — for tests of the containerd runtime here and in the
//! daemon.

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
    let mut hasher = sha2::Sha256::new();
    io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(format!("sha256:{:x}", hasher.finalize()))
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
    let layer = layer_of(dir, layer_dir)?;
    let mut run = serde_json::json!({"Entrypoint": entrypoint, "Env": ["PATH=/bin"]});
    if let Some(u) = user {
        run["User"] = u.into();
    }
    image_with(dir, name, &layer, run)
}

/// Packs `layer_dir` (a root filesystem) as a gzipped layer tar in `dir`
/// (`layer.tar.gz`): one layer that [`image_with`] can put into any number of images.
pub fn layer_of(dir: &Path, layer_dir: &Path) -> io::Result<ImageLayer> {
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
    let blob = blob(
        dir.join("layer.tar.gz"),
        "application/vnd.oci.image.layer.v1.tar+gzip",
    )?;
    Ok(ImageLayer { blob, diff_id })
}

/// A one-layer image named `name` whose config's `config` object (how to run it:
/// `Entrypoint`, `Cmd`, `Env`, `User`, `WorkingDir`) is `run`; its config and manifest
/// blobs are written in `dir`, the layer's blob stays where it is.
pub fn image_with(
    dir: &Path,
    name: &str,
    layer: &ImageLayer,
    run: serde_json::Value,
) -> io::Result<ImageParts> {
    std::fs::create_dir_all(dir)?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": run,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
    });
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config.to_string())?;
    let config = blob(config_path, "application/vnd.oci.image.config.v1+json")?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": layer.blob.media_type, "digest": layer.blob.digest, "size": layer.blob.size}],
    });
    let manifest_path = dir.join("manifest.json");
    std::fs::write(&manifest_path, manifest.to_string())?;
    Ok(ImageParts {
        name: name.into(),
        manifest: blob(manifest_path, "application/vnd.oci.image.manifest.v1+json")?,
        config,
        layers: vec![layer.clone()],
    })
}

/// The packages' root filesystem: a tarball of Debian `suite` (`bookworm`) with `packages`
/// installed (without their recommendations, documentation and translations), built with
/// `mmdebstrap` (Debian package `mmdebstrap`; it fetches the packages from Debian's mirror)
/// into `cache`, named by a hash of the recipe — so a machine builds each recipe once (about
/// 20 s for `redis-server`) and later calls return the cached file. Needs root.
pub fn debian_root(cache: &Path, suite: &str, packages: &[&str]) -> io::Result<PathBuf> {
    let args: Vec<String> = [
        "--quiet".to_string(),
        "--variant=essential".to_string(),
        format!("--include={}", packages.join(",")),
        "--aptopt=APT::Install-Recommends \"false\"".to_string(),
        "--dpkgopt=path-exclude=/usr/share/man/*".to_string(),
        "--dpkgopt=path-exclude=/usr/share/doc/*".to_string(),
        "--dpkgopt=path-exclude=/usr/share/locale/*".to_string(),
        suite.to_string(),
    ]
    .into();
    let recipe = format!("{:x}", sha2::Sha256::digest(args.join("\n").as_bytes()));
    let first = packages.first().copied().unwrap_or("base");
    let path = cache.join(format!("debian-{suite}-{first}-{}.tar", &recipe[..16]));
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(cache)?;
    // Built beside its final name and renamed into place: a build that dies leaves no
    // half-written tarball under the name later runs trust. (mmdebstrap picks its output
    // format by the extension: `.tar`.)
    let partial = cache.join(format!(
        ".partial-{}-{}",
        std::process::id(),
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let built = run(Command::new("mmdebstrap")
        .args(&args)
        .arg(&partial)
        .stdout(std::process::Stdio::null()))
    .map_err(|e| io::Error::other(format!("mmdebstrap (Debian mmdebstrap): {e}")));
    if let Err(e) = built {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

/// A layer that is the uncompressed root filesystem tarball `tar` itself (as
/// [`debian_root`] makes). Its digest is kept beside it (`TAR.sha256`), so a large tarball
/// is hashed once.
pub fn tarball_layer(tar: &Path) -> io::Result<ImageLayer> {
    let sum = tar.with_extension("tar.sha256");
    let digest = match std::fs::read_to_string(&sum) {
        Ok(d) if d.starts_with("sha256:") => d.trim().to_string(),
        _ => {
            let d = sha256_file(tar)?;
            std::fs::write(&sum, &d)?;
            d
        }
    };
    Ok(ImageLayer {
        blob: Blob {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: digest.clone(),
            size: std::fs::metadata(tar)?.len() as i64,
            path: tar.to_path_buf(),
        },
        diff_id: digest,
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
