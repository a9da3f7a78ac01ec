//! The bearer-token flow against a real registry: Debian `docker-registry` in its `auth:
//! token:` mode verifies RS256 JWTs signed by a certificate it trusts; the token service is a
//! small HTTP server in this test that signs with `openssl`. Needs `docker-registry`, `skopeo`
//! and `openssl` (`.ci/run` installs them); without them the test says it skipped, or fails
//! under `ORCH_TEST_REQUIRE_ALL=1`.
#![cfg(feature = "containerd")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use orch_runtime::containerd::registry::{PullError, Puller, RegistryConfig};
use orch_runtime::containerd::testing::{busybox_image, write_oci_layout, LocalRegistry};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One request to the token service: its query parameters and the basic-auth user, if any.
type TokenRequest = (HashMap<String, String>, Option<String>);

/// Signs JWTs with a fresh self-signed RSA key (its certificate is the registry's root).
struct Signer {
    key: PathBuf,
    cert: PathBuf,
    cert_der: String,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}");
    out.stdout
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Signer {
    fn new(dir: &Path) -> Signer {
        let key = dir.join("token.key");
        let cert = dir.join("token.pem");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=orch test token issuer",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        let der = openssl(&["x509", "-in", cert.to_str().unwrap(), "-outform", "DER"]);
        Signer {
            key,
            cert,
            cert_der: base64::engine::general_purpose::STANDARD.encode(der),
        }
    }

    /// A token for `user` on `service` granting `access` (the registry's claim format).
    fn sign(&self, user: &str, service: &str, access: serde_json::Value) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [self.cert_der]});
        let claims = serde_json::json!({
            "iss": "orch-test-issuer", "sub": user, "aud": service,
            "exp": now + 300, "nbf": now - 30, "iat": now - 30,
            "jti": format!("{user}-{now}-{}", rand_suffix()), "access": access,
        });
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign", self.key.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
        let sig = child.wait_with_output().unwrap();
        assert!(sig.status.success());
        format!("{input}.{}", b64url(&sig.stdout))
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// The token service on a free loopback port: `orch:s3cret` gets every action it asks for,
/// `nobody:pw` a valid token that grants nothing, anyone else 401. Returns the port and the
/// log of requests.
async fn token_service(signer: Signer) -> (u16, Arc<Mutex<Vec<TokenRequest>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    let signer = Arc::new(signer);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, signer) = (seen.clone(), signer.clone());
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut r = BufReader::new(r);
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut user = None;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).await.unwrap() == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if let Some(b) = v.trim().strip_prefix("Basic ") {
                            if k.eq_ignore_ascii_case("authorization") {
                                let plain = base64::engine::general_purpose::STANDARD
                                    .decode(b.trim())
                                    .unwrap();
                                user = Some(String::from_utf8(plain).unwrap());
                            }
                        }
                    }
                }
                let mut params = HashMap::new();
                let mut scopes = Vec::new();
                let query = target.split_once('?').map_or("", |(_, q)| q);
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    let v = percent_decode(v);
                    if k == "scope" {
                        scopes.push(v.clone());
                    }
                    params.insert(k.to_string(), v);
                }
                seen.lock().unwrap().push((params.clone(), user.clone()));
                let service = params.get("service").cloned().unwrap_or_default();
                let grant = |name: &str, all: bool| {
                    let access: Vec<serde_json::Value> = scopes
                        .iter()
                        .filter(|_| all)
                        .filter_map(|s| {
                            let mut p = s.splitn(3, ':');
                            let (typ, repo, actions) = (p.next()?, p.next()?, p.next()?);
                            Some(serde_json::json!({"type": typ, "name": repo,
                                "actions": actions.split(',').collect::<Vec<_>>()}))
                        })
                        .collect();
                    signer.sign(name, &service, access.into())
                };
                let token = match user.as_deref() {
                    Some("orch:s3cret") => Some(grant("orch", true)),
                    Some("nobody:pw") => Some(grant("nobody", false)),
                    _ => None,
                };
                let response = match token {
                    Some(t) => {
                        let body = serde_json::json!({"token": t, "expires_in": 300}).to_string();
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                    None => "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\
                             Connection: close\r\n\r\n"
                        .to_string(),
                };
                let _ = w.write_all(response.as_bytes()).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (port, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_protected_registry_is_pulled_with_a_bearer_token() {
    if !orch_testkit::require(&["/bin/busybox", "docker-registry", "skopeo", "openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let signer = Signer::new(d);
    let root = signer.cert.clone();
    let (port, log) = token_service(signer).await;
    let registry = LocalRegistry::start_with_auth(&format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{port}/token\n    service: orch-test-registry\n    \
         issuer: orch-test-issuer\n    rootcertbundle: {}\n",
        root.display()
    ))
    .expect("docker-registry starts");
    let image = busybox_image(&d.join("build"), "busybox").unwrap();
    write_oci_layout(&image, &d.join("layout"), "1").unwrap();
    let push = {
        let layout = d.join("layout");
        tokio::task::spawn_blocking(move || {
            registry
                .push(&layout, "1", "team/busybox", Some(("orch", "s3cret")))
                .map(|()| registry)
        })
    };
    let registry = push.await.unwrap().expect("skopeo pushes with a token");
    let reference = format!("{}/team/busybox:1", registry.address());
    log.lock().unwrap().clear();

    // With credentials: one token for the challenge's service and scope, then the pull.
    let mut config = RegistryConfig::default();
    config.credentials.insert(
        registry.address(),
        ("orch".to_string(), "s3cret".to_string()),
    );
    let pulled = Puller::new(config)
        .unwrap()
        .pull(&reference, &d.join("cache"), &|_| {})
        .await
        .expect("pull with a bearer token");
    assert_eq!(pulled.config.digest, image.config.digest);
    assert_eq!(pulled.layers[0].blob.digest, image.layers[0].blob.digest);
    {
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1, "one token serves the whole pull: {log:?}");
        assert_eq!(log[0].0["service"], "orch-test-registry");
        assert_eq!(log[0].0["scope"], "repository:team/busybox:pull");
        assert_eq!(log[0].1.as_deref(), Some("orch:s3cret"));
    }

    // Without credentials the token service refuses: the error names it and says why.
    let e = Puller::new(RegistryConfig::default())
        .unwrap()
        .pull(&reference, &d.join("anon"), &|_| {})
        .await
        .unwrap_err();
    eprintln!("{e}");
    assert!(matches!(e, PullError::Status { status: 401, .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains(&format!("http://127.0.0.1:{port}/token?")) && e.contains("none are configured"),
        "{e}"
    );

    // A token that grants nothing: the registry refuses it.
    let mut config = RegistryConfig::default();
    config
        .credentials
        .insert(registry.address(), ("nobody".to_string(), "pw".to_string()));
    let e = Puller::new(config)
        .unwrap()
        .pull(&reference, &d.join("nobody"), &|_| {})
        .await
        .unwrap_err();
    eprintln!("{e}");
    assert!(matches!(e, PullError::Status { status: 401, .. }), "{e}");
    assert!(
        e.to_string().contains("/v2/team/busybox/") && e.to_string().contains("refused"),
        "{e}"
    );
    assert!(
        !d.join("nobody").exists() || std::fs::read_dir(d.join("nobody")).unwrap().count() == 0,
        "nothing cached from a refused pull"
    );
}
