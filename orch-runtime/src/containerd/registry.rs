//! Pulling images from an OCI distribution registry, client-side (containerd 1.6 has no
//! transfer service): the manifest (an index or manifest list resolved to this platform), the
//! config and the layers are fetched, every digest and size is checked as the bytes arrive,
//! and the blobs land in a directory, ready for [`Containerd::import`](super::Containerd::import).
//!
//! HTTPS with the system's trust store; plain HTTP only for registries on loopback or named
//! insecure. Anonymous, HTTP basic and bearer-token (`WWW-Authenticate: Bearer realm=...`)
//! authentication.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::StreamExt;
use serde_json::Value;
use sha2::Digest;
use tokio::io::AsyncWriteExt;

use super::{Blob, ImageLayer, ImageParts};

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A parsed image reference: `[REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` (`docker.io` when the reference names none).
    pub registry: String,
    /// `library/busybox`, `team/app`.
    pub repository: String,
    /// The tag (`latest` when neither tag nor digest is given).
    pub tag: Option<String>,
    /// `sha256:...`, when pinned.
    pub digest: Option<String>,
}

fn component_ok(c: &str) -> bool {
    !c.is_empty()
        && c.split(['.', '_', '-']).all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit())
        })
}

impl Reference {
    /// Parses a reference; errors name the reference and what is allowed.
    pub fn parse(s: &str) -> Result<Reference, String> {
        let bad = |why: &str| format!("image reference {s:?}: {why}");
        if s.is_empty() || s.len() > 4096 || s.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad("must be a non-empty name without spaces"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("the digest must be sha256:<64 hex digits>"))?;
                if hex.len() != 64
                    || !hex
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
                {
                    return Err(bad("the digest must be sha256:<64 lowercase hex digits>"));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        let (first, remainder) = match rest.split_once('/') {
            Some((f, r)) if f.contains(['.', ':']) || f == "localhost" => (Some(f), r),
            _ => (None, rest),
        };
        let (path, tag) = match remainder.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p, Some(t.to_string())),
            _ => (remainder, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(bad(
                    "a tag is 1-128 of A-Z a-z 0-9 _ . - and does not start with . or -",
                ));
            }
        }
        if !path.split('/').all(component_ok) {
            return Err(bad(
                "repository path components are lowercase letters and digits, separated by . _ -",
            ));
        }
        let registry = first.unwrap_or("docker.io").to_string();
        let repository = if first.is_none() && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".into()),
            (t, _) => t,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The full name: `registry/repository[:tag][@digest]`.
    pub fn name(&self) -> String {
        let mut n = format!("{}/{}", self.registry, self.repository);
        if let Some(t) = &self.tag {
            n.push(':');
            n.push_str(t);
        }
        if let Some(d) = &self.digest {
            n.push('@');
            n.push_str(d);
        }
        n
    }

    fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

/// Why a pull failed: the reference, and what went wrong where.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference is malformed.
    #[error("{0}")]
    Reference(String),
    /// The registry answered with an error status.
    #[error("pull {reference}: GET {url}: HTTP {status}{hint}")]
    Status {
        /// The image.
        reference: String,
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What to do about it.
        hint: String,
    },
    /// The registry could not be reached.
    #[error("pull {reference}: {url}: {message}")]
    Transport {
        /// The image.
        reference: String,
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// Bytes did not match their digest (or size).
    #[error("pull {reference}: {what} {digest}: {message}")]
    Digest {
        /// The image.
        reference: String,
        /// Manifest, config or layer.
        what: &'static str,
        /// The expected digest.
        digest: String,
        /// What was received instead.
        message: String,
    },
    /// The manifest is not something orch can run.
    #[error("pull {reference}: {message}")]
    Manifest {
        /// The image.
        reference: String,
        /// Why.
        message: String,
    },
    /// Writing the blobs failed.
    #[error("pull {reference}: {path}: {source}")]
    Io {
        /// The image.
        reference: String,
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Progress of one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullProgress {
    /// The blob's digest.
    pub digest: String,
    /// Bytes received so far.
    pub done: u64,
    /// Its size.
    pub total: u64,
}

/// Who may pull from where.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// `host[:port]` → (user, password).
    pub credentials: HashMap<String, (String, String)>,
    /// Registries that may be reached over plain HTTP (HTTPS is tried first), besides
    /// loopback ones.
    pub insecure: Vec<String>,
    /// PEM files of certificate authorities trusted besides the system's (a private
    /// registry's CA).
    pub ca_files: Vec<PathBuf>,
}

/// Pulls images.
pub struct Puller {
    http: reqwest::Client,
    config: RegistryConfig,
    tokens: Mutex<HashMap<String, String>>,
    /// The scheme each insecure (or loopback) registry answered on.
    schemes: Mutex<HashMap<String, &'static str>>,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("insecure", &self.config.insecure)
            .finish()
    }
}

/// An error with its causes: `a: b: c` (reqwest's own message hides why a request failed).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// How a request authenticates.
enum Auth {
    None,
    Bearer(String),
    Basic(String, String),
}

fn sha256_hex(b: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(b))
}

/// The value of `key` in a `WWW-Authenticate` challenge (`realm="..."`).
fn challenge_param(header: &str, key: &str) -> Option<String> {
    let at = header.find(&format!("{key}=\""))? + key.len() + 2;
    let end = header[at..].find('"')? + at;
    Some(header[at..end].to_string())
}

impl Puller {
    /// A puller with this configuration.
    pub fn new(config: RegistryConfig) -> Result<Puller, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut cas = Vec::new();
        for f in &config.ca_files {
            let pem = std::fs::read(f).map_err(|e| format!("CA file {}: {e}", f.display()))?;
            cas.extend(
                reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| format!("CA file {}: {e}", f.display()))?,
            );
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("orch/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            .tls_certs_merge(cas)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Puller {
            http,
            config,
            tokens: Mutex::new(HashMap::new()),
            schemes: Mutex::new(HashMap::new()),
        })
    }

    /// `SCHEME://HOST/v2/REPOSITORY`. HTTPS, except that a loopback or insecure registry that
    /// does not complete a TLS handshake is reached over plain HTTP (as Docker does).
    async fn base(&self, r: &Reference) -> String {
        let registry = if r.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            r.registry.as_str()
        };
        let host = r
            .registry
            .rsplit_once(':')
            .map_or(r.registry.as_str(), |(h, _)| h);
        let may_be_plain = matches!(host, "localhost" | "127.0.0.1" | "[::1]")
            || self.config.insecure.contains(&r.registry);
        let known = self
            .schemes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&r.registry)
            .copied();
        let scheme = match known {
            Some(s) => s,
            None if !may_be_plain => "https",
            None => {
                let probe = self
                    .http
                    .get(format!("https://{registry}/v2/"))
                    .send()
                    .await;
                // A TLS server whose certificate is not trusted stays on HTTPS (and the pull
                // fails saying so); only a server that does not speak TLS is spoken to in HTTP.
                let s = match probe {
                    Ok(_) => "https",
                    Err(e) if error_chain(&e).to_ascii_lowercase().contains("certificate") => {
                        "https"
                    }
                    Err(_) => "http",
                };
                self.schemes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(r.registry.clone(), s);
                s
            }
        };
        format!("{scheme}://{registry}/v2/{}", r.repository)
    }

    /// A bearer token from the realm of a `WWW-Authenticate: Bearer` challenge, for the
    /// challenge's service and scope, with the registry's credentials if any (anonymous
    /// otherwise, as public registries allow).
    async fn token(
        &self,
        r: &Reference,
        challenge: &str,
        creds: Option<&(String, String)>,
    ) -> Result<String, PullError> {
        let realm = challenge_param(challenge, "realm").unwrap_or_default();
        let failed = |message: String| PullError::Transport {
            reference: r.name(),
            url: realm.clone(),
            message: format!("token service: {message}"),
        };
        if !realm.starts_with("https://") && !realm.starts_with("http://") {
            return Err(failed(format!(
                "the registry's challenge {challenge:?} names no http(s) realm"
            )));
        }
        let mut req = self.http.get(&realm).query(&[
            (
                "service",
                challenge_param(challenge, "service").unwrap_or_default(),
            ),
            (
                "scope",
                challenge_param(challenge, "scope")
                    .unwrap_or_else(|| format!("repository:{}:pull", r.repository)),
            ),
        ]);
        if let Some((u, p)) = creds {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await.map_err(|e| failed(error_chain(&e)))?;
        let status = resp.status();
        let url = resp.url().to_string();
        if !status.is_success() {
            let hint = match (status.as_u16(), creds) {
                (401 | 403, None) => format!(
                    " (the token service wants credentials; none are configured for {})",
                    r.registry
                ),
                (401 | 403, Some(_)) => " (the credentials were refused)".into(),
                _ => String::new(),
            };
            return Err(PullError::Status {
                reference: r.name(),
                url,
                status: status.as_u16(),
                hint,
            });
        }
        let body: Value = resp.json().await.map_err(|e| failed(error_chain(&e)))?;
        match body["token"].as_str().or(body["access_token"].as_str()) {
            Some(t) if !t.is_empty() => Ok(t.to_string()),
            _ => Err(failed(format!("GET {url}: the answer has no token"))),
        }
    }

    /// GET with authentication as the registry asks for it.
    async fn get(
        &self,
        r: &Reference,
        url: &str,
        accept: &[&str],
    ) -> Result<reqwest::Response, PullError> {
        let transport = |e: reqwest::Error| PullError::Transport {
            reference: r.name(),
            url: url.into(),
            message: error_chain(&e),
        };
        let creds = self.config.credentials.get(&r.registry);
        let send = |auth: Auth| {
            let mut req = self.http.get(url);
            if !accept.is_empty() {
                req = req.header("Accept", accept.join(", "));
            }
            match auth {
                Auth::None => {}
                Auth::Bearer(t) => req = req.bearer_auth(t),
                Auth::Basic(u, p) => req = req.basic_auth(u, Some(p)),
            }
            req.send()
        };
        let token_key = format!("{}/{}", r.registry, r.repository);
        let token = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&token_key)
            .cloned();
        let mut resp = send(token.map_or(Auth::None, Auth::Bearer))
            .await
            .map_err(transport)?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get("WWW-Authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let auth = if challenge.to_ascii_lowercase().starts_with("bearer") {
                let token = self.token(r, &challenge, creds).await?;
                self.tokens
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(token_key.clone(), token.clone());
                Auth::Bearer(token)
            } else {
                creds.map_or(Auth::None, |(u, p)| Auth::Basic(u.clone(), p.clone()))
            };
            if !matches!(auth, Auth::None) {
                resp = send(auth).await.map_err(transport)?;
            }
        }
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let hint = match status {
                401 if creds.is_none() => format!(
                    " (the registry wants credentials; none are configured for {})",
                    r.registry
                ),
                401 | 403 => " (the credentials were refused)".into(),
                404 => " (no such image or tag)".into(),
                _ => String::new(),
            };
            return Err(PullError::Status {
                reference: r.name(),
                url: url.into(),
                status,
                hint,
            });
        }
        Ok(resp)
    }

    /// Fetches a small document (a manifest) and checks it against `digest` if given.
    async fn document(
        &self,
        r: &Reference,
        reference: &str,
        digest: Option<&str>,
    ) -> Result<(String, Vec<u8>, String), PullError> {
        let url = format!("{}/manifests/{reference}", self.base(r).await);
        let accept: Vec<&str> = INDEX_TYPES.iter().chain(&MANIFEST_TYPES).copied().collect();
        let resp = self.get(r, &url, &accept).await?;
        let header_type = resp
            .headers()
            .get("Content-Type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.bytes().await.map_err(|e| PullError::Transport {
            reference: r.name(),
            url: url.clone(),
            message: error_chain(&e),
        })?;
        if body.len() > 4 << 20 {
            return Err(PullError::Manifest {
                reference: r.name(),
                message: format!("manifest of {} bytes: the limit is 4 MiB", body.len()),
            });
        }
        let actual = sha256_hex(&body);
        if let Some(want) = digest {
            if actual != want {
                return Err(PullError::Digest {
                    reference: r.name(),
                    what: "manifest",
                    digest: want.into(),
                    message: format!("received bytes hash to {actual}"),
                });
            }
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| PullError::Manifest {
            reference: r.name(),
            message: format!("manifest is not JSON: {e}"),
        })?;
        let media_type = v["mediaType"]
            .as_str()
            .map(String::from)
            .unwrap_or(header_type);
        Ok((media_type, body.to_vec(), actual))
    }

    /// Streams a blob into `dir/blobs/sha256/HEX`, checking size and digest as it goes
    /// (a blob already there with the right digest is kept).
    async fn blob(
        &self,
        r: &Reference,
        what: &'static str,
        digest: &str,
        size: u64,
        dir: &Path,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<PathBuf, PullError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64)
            .ok_or_else(|| PullError::Manifest {
                reference: r.name(),
                message: format!("{what} digest {digest:?}: only sha256 is supported"),
            })?;
        let path = dir.join("blobs").join("sha256").join(hex);
        let io = |e: std::io::Error| PullError::Io {
            reference: r.name(),
            path: path.display().to_string(),
            source: e,
        };
        if let Ok(bytes) = tokio::fs::read(&path).await {
            if sha256_hex(&bytes) == digest {
                progress(PullProgress {
                    digest: digest.into(),
                    done: size,
                    total: size,
                });
                return Ok(path);
            }
        }
        tokio::fs::create_dir_all(path.parent().unwrap_or(dir))
            .await
            .map_err(io)?;
        let url = format!("{}/blobs/{digest}", self.base(r).await);
        let resp = self.get(r, &url, &[]).await?;
        let partial = path.with_extension("partial");
        let mut file = tokio::fs::File::create(&partial).await.map_err(io)?;
        let mut hasher = sha2::Sha256::new();
        let mut done = 0u64;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| PullError::Transport {
                reference: r.name(),
                url: url.clone(),
                message: e.to_string(),
            })?;
            done += chunk.len() as u64;
            if done > size {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(PullError::Digest {
                    reference: r.name(),
                    what,
                    digest: digest.into(),
                    message: format!("more than the {size} bytes the manifest says"),
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
            progress(PullProgress {
                digest: digest.into(),
                done,
                total: size,
            });
        }
        file.flush().await.map_err(io)?;
        drop(file);
        let actual = format!("sha256:{:x}", hasher.finalize());
        if actual != digest || done != size {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(PullError::Digest {
                reference: r.name(),
                what,
                digest: digest.into(),
                message: format!(
                    "received {done} bytes hashing to {actual} (expected {size} bytes)"
                ),
            });
        }
        tokio::fs::rename(&partial, &path).await.map_err(io)?;
        Ok(path)
    }

    /// Pulls `reference` into `dir` (a cache: blobs already there are not fetched again);
    /// `progress` hears about every blob as its bytes arrive.
    pub async fn pull(
        &self,
        reference: &str,
        dir: &Path,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<ImageParts, PullError> {
        let r = Reference::parse(reference).map_err(PullError::Reference)?;
        let (mut media_type, mut body, mut digest) = self
            .document(&r, r.reference(), r.digest.as_deref())
            .await?;
        if INDEX_TYPES.contains(&media_type.as_str()) {
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            let arch = super::image::oci_arch();
            let pick = v["manifests"]
                .as_array()
                .and_then(|ms| {
                    ms.iter().find(|m| {
                        m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch
                    })
                })
                .and_then(|m| m["digest"].as_str().map(String::from))
                .ok_or_else(|| PullError::Manifest {
                    reference: r.name(),
                    message: format!("the image index has no manifest for linux/{arch}"),
                })?;
            (media_type, body, digest) = self.document(&r, &pick, Some(&pick)).await?;
        }
        if !MANIFEST_TYPES.contains(&media_type.as_str()) {
            return Err(PullError::Manifest {
                reference: r.name(),
                message: format!(
                    "manifest media type {media_type:?} is not supported; allowed: {}",
                    MANIFEST_TYPES.join(", ")
                ),
            });
        }
        let manifest: Value = serde_json::from_slice(&body).unwrap_or_default();
        let manifest_path = dir.join("blobs").join("sha256").join(&digest[7..]);
        let io = |p: &Path, e: std::io::Error| PullError::Io {
            reference: r.name(),
            path: p.display().to_string(),
            source: e,
        };
        tokio::fs::create_dir_all(manifest_path.parent().unwrap_or(dir))
            .await
            .map_err(|e| io(dir, e))?;
        tokio::fs::write(&manifest_path, &body)
            .await
            .map_err(|e| io(&manifest_path, e))?;
        let descriptor = |d: &Value| -> Result<(String, String, u64), PullError> {
            match (
                d["mediaType"].as_str(),
                d["digest"].as_str(),
                d["size"].as_u64(),
            ) {
                (Some(m), Some(g), Some(s)) => Ok((m.into(), g.into(), s)),
                _ => Err(PullError::Manifest {
                    reference: r.name(),
                    message: "a descriptor lacks mediaType, digest or size".into(),
                }),
            }
        };
        let (config_type, config_digest, config_size) = descriptor(&manifest["config"])?;
        let config_path = self
            .blob(&r, "config", &config_digest, config_size, dir, progress)
            .await?;
        let config_bytes = tokio::fs::read(&config_path)
            .await
            .map_err(|e| io(&config_path, e))?;
        let config: Value = serde_json::from_slice(&config_bytes).unwrap_or_default();
        let layers = super::image::layers_with_diff_ids(&manifest, &config).map_err(|message| {
            PullError::Manifest {
                reference: r.name(),
                message,
            }
        })?;
        let mut out = Vec::with_capacity(layers.len());
        for (l, diff_id) in layers {
            let (media_type, digest, size) = descriptor(&l)?;
            let path = self.blob(&r, "layer", &digest, size, dir, progress).await?;
            out.push(ImageLayer {
                blob: Blob {
                    media_type,
                    digest,
                    size: size as i64,
                    path,
                },
                diff_id,
            });
        }
        Ok(ImageParts {
            name: reference.to_string(),
            manifest: Blob {
                media_type,
                digest,
                size: body.len() as i64,
                path: manifest_path,
            },
            config: Blob {
                media_type: config_type,
                digest: config_digest,
                size: config_size as i64,
                path: config_path,
            },
            layers: out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn references_parse_as_docker_does() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/busybox", Some("latest"))
        );
        let r = Reference::parse("127.0.0.1:5000/team/app:v1.2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/app", Some("v1.2"))
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost/app@{d}")).unwrap();
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(d.as_str())));
        for bad in [
            "",
            "Upper/case",
            "app:",
            "app@sha256:xyz",
            "a b",
            "app:-x",
            "//x",
        ] {
            let e = Reference::parse(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn challenges_are_read() {
        let h = r#"Bearer realm="https://auth.example/token",service="registry",scope="repository:a/b:pull""#;
        assert_eq!(
            challenge_param(h, "realm").as_deref(),
            Some("https://auth.example/token")
        );
        assert_eq!(
            challenge_param(h, "scope").as_deref(),
            Some("repository:a/b:pull")
        );
        assert_eq!(challenge_param(h, "nope"), None);
    }

    proptest! {
        /// Any input parses or is refused with its name in the error, never a panic; valid
        /// references keep their parts through `name()`.
        #[test]
        fn parsing_never_panics(s in "\\PC{0,64}") {
            match Reference::parse(&s) {
                Ok(r) => {
                    let again = Reference::parse(&r.name()).unwrap();
                    prop_assert_eq!(again, r);
                }
                Err(e) => prop_assert!(e.contains("image reference")),
            }
        }

        #[test]
        fn valid_references_round_trip(
            host in proptest::option::of("[a-z]{1,8}\\.[a-z]{2,3}(:[0-9]{2,5})?"),
            repo in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
            tag in "[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,20}",
        ) {
            let s = match &host { Some(h) => format!("{h}/{repo}:{tag}"), None => format!("{repo}:{tag}") };
            let r = Reference::parse(&s).unwrap();
            prop_assert_eq!(r.tag.as_deref(), Some(tag.as_str()));
            prop_assert_eq!(Reference::parse(&r.name()).unwrap(), r);
        }
    }
}
