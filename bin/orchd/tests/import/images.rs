//! The images the imported applications name, made here so that their manifests run
//! unchanged: busybox stand-ins ([`STANDIN`], `standin.sh`) that listen on the declared ports
//! and report their peers, and a real redis (Debian's `redis-server`, a root filesystem built
//! with `mmdebstrap` and cached per machine under [`CACHE`]). Each is recorded under the exact
//! name the manifest uses and under its normalized Docker form (`redis:alpine` also as
//! `docker.io/library/redis:alpine`), so whichever a converter writes, the node has it and
//! `IfNotPresent` pulls nothing.

use std::path::Path;

use orch_runtime::containerd::testing::{
    busybox_rootfs, debian_root, image_with, layer_of, tarball_layer,
};
use orch_runtime::containerd::ImageParts;

/// Where the Debian root filesystems are kept between runs (one build per machine).
pub const CACHE: &str = "/var/cache/orch-test/images";

/// The stand-in's script (`/bin/standin` in the image).
pub const STANDIN: &str = include_str!("standin.sh");

/// What an image name stands for.
#[derive(Clone, Copy)]
pub enum Image {
    /// The stand-in playing this role (`STANDIN=ROLE`), with more `NAME=value` in its env.
    Standin(&'static str, &'static [&'static str]),
    /// A real redis server.
    Redis,
    /// A real redis server replicating `redis-master` (the guestbook's `gb-redisslave`).
    RedisReplica,
}

/// Every image the test applications name, as their manifests (or, for a Compose service
/// with only `build:`, the test's variant of the file) spell it.
pub const IMAGES: &[(&str, Image)] = &[
    // The guestbook.
    (
        "gcr.io/google-samples/gb-frontend:v5",
        Image::Standin("gb-frontend", &[]),
    ),
    ("registry.k8s.io/redis:e2e", Image::Redis),
    (
        "gcr.io/google_samples/gb-redisslave:v1",
        Image::RedisReplica,
    ),
    // The voting app's Kubernetes specifications.
    ("postgres:15-alpine", Image::Standin("postgres", &[])),
    ("redis:alpine", Image::Redis),
    (
        "dockersamples/examplevotingapp_vote",
        Image::Standin("vote", &[]),
    ),
    (
        "dockersamples/examplevotingapp_worker",
        Image::Standin("worker", &[]),
    ),
    (
        "dockersamples/examplevotingapp_result",
        Image::Standin("result", &[]),
    ),
    // awesome-compose: flask-redis (web has only `build:`).
    ("redislabs/redismod", Image::Redis),
    (
        "localhost/awesome-compose/flask-redis-web:latest",
        Image::Standin("flask-web", &[]),
    ),
    // awesome-compose: nginx-golang-postgres (backend has only `build:`); the database is
    // ready (pg_isready) 4 s after it starts, so that its dependents visibly wait.
    (
        "localhost/awesome-compose/nginx-golang-postgres-backend:latest",
        Image::Standin("go-backend", &[]),
    ),
    (
        "postgres",
        Image::Standin("postgres", &["STANDIN_READY_AFTER=4"]),
    ),
    ("nginx", Image::Standin("nginx", &[])),
    // awesome-compose: wordpress-mysql.
    ("mariadb:10.6.4-focal", Image::Standin("mariadb", &[])),
    ("wordpress:latest", Image::Standin("wordpress", &[])),
];

/// How long the `postgres` stand-in of nginx-golang-postgres stays unready after its start.
pub const DB_READY_AFTER_SECS: u64 = 4;

/// `name` as Docker normalizes it: `redis:alpine` → `docker.io/library/redis:alpine`,
/// `dockersamples/x` → `docker.io/dockersamples/x:latest`; a name with a registry keeps it.
pub fn normalized(name: &str) -> String {
    let (first, _) = name.split_once('/').unwrap_or(("", name));
    let has_registry = first.contains('.') || first.contains(':') || first == "localhost";
    let mut full = match (has_registry, name.contains('/')) {
        (true, _) => name.to_string(),
        (false, true) => format!("docker.io/{name}"),
        (false, false) => format!("docker.io/library/{name}"),
    };
    let last = full.rsplit('/').next().unwrap_or("");
    if !last.contains(':') && !last.contains('@') {
        full.push_str(":latest");
    }
    full
}

/// The stand-in's root filesystem in `DIR/rootfs`: busybox with every applet linked, the
/// script at `/bin/standin` (and as `pg_isready`), users root, postgres and www-data.
fn standin_rootfs(dir: &Path) -> std::io::Result<std::path::PathBuf> {
    let root = busybox_rootfs(dir)?;
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    let script = root.join("bin/standin");
    std::fs::write(&script, STANDIN)?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::create_dir_all(root.join("usr/bin"))?;
    std::os::unix::fs::symlink("/bin/standin", root.join("usr/bin/pg_isready"))?;
    std::fs::create_dir_all(root.join("etc/nginx/conf.d"))?;
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\npostgres:x:999:999:postgres:/var/lib/postgresql:/bin/sh\n",
    )?;
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nwww-data:x:33:\npostgres:x:999:\n",
    )?;
    std::fs::set_permissions(
        root.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )?;
    Ok(root)
}

/// Every image of [`IMAGES`], its blobs under `dir` (the redis layer stays in [`CACHE`]),
/// each under its name and its [`normalized`] name.
pub fn all(dir: &Path) -> std::io::Result<Vec<ImageParts>> {
    let standin = layer_of(&dir.join("standin"), &standin_rootfs(&dir.join("standin"))?)?;
    let redis = tarball_layer(&debian_root(
        Path::new(CACHE),
        "bookworm",
        &["redis-server"],
    )?)?;
    let debian_path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    let mut out = Vec::new();
    for (i, (name, what)) in IMAGES.iter().enumerate() {
        let (layer, run) = match what {
            Image::Standin(role, env) => {
                let mut all = vec!["PATH=/bin:/usr/bin".to_string(), format!("STANDIN={role}")];
                all.extend(env.iter().map(|e| e.to_string()));
                (
                    &standin,
                    serde_json::json!({"Entrypoint": ["/bin/standin"], "Env": all}),
                )
            }
            // As Docker's redis image: listening on every address, no persistence asked for.
            Image::Redis => (
                &redis,
                serde_json::json!({
                    "Entrypoint": ["/usr/bin/redis-server"],
                    "Cmd": ["--protected-mode", "no", "--save", "", "--appendonly", "no"],
                    "Env": [debian_path],
                }),
            ),
            // As gb-redisslave's run.sh: the master by DNS name, or from the environment.
            Image::RedisReplica => (
                &redis,
                serde_json::json!({
                    "Entrypoint": ["/bin/sh", "-c", "if [ \"${GET_HOSTS_FROM:-dns}\" = env ]; then m=$REDIS_MASTER_SERVICE_HOST; else m=redis-master; fi; exec /usr/bin/redis-server --protected-mode no --save '' --appendonly no --replicaof \"$m\" 6379"],
                    "Env": [debian_path],
                }),
            ),
        };
        let parts = image_with(&dir.join(format!("image-{i}")), name, layer, run)?;
        let full = normalized(name);
        if full != *name {
            out.push(ImageParts {
                name: full,
                ..parts.clone()
            });
        }
        out.push(parts);
    }
    Ok(out)
}

#[test]
fn names_normalize_as_docker_does() {
    assert_eq!(normalized("redis:alpine"), "docker.io/library/redis:alpine");
    assert_eq!(normalized("postgres"), "docker.io/library/postgres:latest");
    assert_eq!(
        normalized("dockersamples/examplevotingapp_vote"),
        "docker.io/dockersamples/examplevotingapp_vote:latest"
    );
    assert_eq!(
        normalized("gcr.io/google-samples/gb-frontend:v5"),
        "gcr.io/google-samples/gb-frontend:v5"
    );
    assert_eq!(
        normalized("localhost/awesome-compose/x:latest"),
        "localhost/awesome-compose/x:latest"
    );
}
