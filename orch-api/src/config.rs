//! `orchctl`'s configuration file (like a kubeconfig): named contexts, each a manager's
//! cluster address with an administrator's credentials, and which one is current. Written by
//! `orchd admin`, mode 0600.
//!
//! ```yaml
//! current-context: prod
//! contexts:
//!   - name: prod
//!     server: 10.0.0.1:7443
//!     managers: [10.0.0.2:7443, 10.0.0.3:7443]
//!     ca: "-----BEGIN CERTIFICATE-----\n..."
//!     certificate: "-----BEGIN CERTIFICATE-----\n..."
//!     key: "-----BEGIN PRIVATE KEY-----\n..."
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::grpc::cluster::Credentials;

/// One cluster to talk to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Context {
    /// The context's name.
    pub name: String,
    /// The manager's cluster address, `HOST:PORT`.
    pub server: String,
    /// The other managers' addresses, tried in order when `server` cannot be reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managers: Vec<String>,
    /// The cluster CA (PEM).
    pub ca: String,
    /// The administrator's certificate (PEM).
    pub certificate: String,
    /// Its private key (PEM).
    pub key: String,
}

impl Context {
    /// Every manager's address, `server` first.
    pub fn addresses(&self) -> Vec<String> {
        let mut out = vec![self.server.clone()];
        for m in &self.managers {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }

    /// The credentials this context carries.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            ca_pem: self.ca.clone(),
            cert_pem: self.certificate.clone(),
            key_pem: self.key.clone(),
        }
    }
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClientConfig {
    /// The context used when none is named.
    #[serde(default)]
    pub current_context: String,
    /// Every context.
    #[serde(default)]
    pub contexts: Vec<Context>,
}

impl ClientConfig {
    /// Where the config file is: `orch_config` (the binaries pass `$ORCH_CONFIG`), else
    /// `.config/orch/config.yaml` under `home` (`$HOME`), else `/etc/orch/config.yaml`. The
    /// library reads no environment itself.
    pub fn default_path(
        orch_config: Option<std::ffi::OsString>,
        home: Option<std::ffi::OsString>,
    ) -> PathBuf {
        orch_config
            .map(PathBuf::from)
            .or_else(|| home.map(|h| PathBuf::from(h).join(".config/orch/config.yaml")))
            .unwrap_or_else(|| PathBuf::from("/etc/orch/config.yaml"))
    }

    /// Reads `path`; `None` if there is no such file. Errors name the file.
    pub fn load(path: &Path) -> Result<Option<ClientConfig>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        serde_saphyr::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes `path` (mode 0600; its folder is created).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let text = serde_saphyr::to_string(self).map_err(|e| e.to_string())?;
        crate::grpc::pki::write_private(path, &text).map_err(|e| e.to_string())
    }

    /// Adds `ctx` (replacing one of the same name) and makes it current.
    pub fn upsert(&mut self, ctx: Context) {
        self.current_context = ctx.name.clone();
        self.contexts.retain(|c| c.name != ctx.name);
        self.contexts.push(ctx);
    }

    /// The context named `name`, or the current one.
    pub fn context(&self, name: Option<&str>) -> Result<&Context, String> {
        let want = name.unwrap_or(&self.current_context);
        self.contexts
            .iter()
            .find(|c| c.name == want)
            .ok_or_else(|| {
                let names: Vec<&str> = self.contexts.iter().map(|c| c.name.as_str()).collect();
                format!("no context {want:?} (contexts: {})", names.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_round_trips_and_unknown_contexts_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.yaml");
        let mut c = ClientConfig::default();
        c.upsert(Context {
            name: "prod".into(),
            server: "10.0.0.1:7443".into(),
            managers: vec!["10.0.0.2:7443".into(), "10.0.0.1:7443".into()],
            ca: "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n".into(),
            certificate: "x".into(),
            key: "y".into(),
        });
        c.save(&path).unwrap();
        let back = ClientConfig::load(&path).unwrap().unwrap();
        assert_eq!(back, c);
        assert_eq!(back.context(None).unwrap().server, "10.0.0.1:7443");
        assert_eq!(
            back.context(None).unwrap().addresses(),
            ["10.0.0.1:7443", "10.0.0.2:7443"]
        );
        let e = back.context(Some("dev")).unwrap_err();
        assert!(e.contains("\"dev\"") && e.contains("prod"), "{e}");
        assert!(ClientConfig::load(&dir.path().join("none"))
            .unwrap()
            .is_none());
        std::fs::write(dir.path().join("bad"), "contexts: [{name: 1, colour: red}]").unwrap();
        let e = ClientConfig::load(&dir.path().join("bad")).unwrap_err();
        assert!(e.contains("bad"), "{e}");
    }
}
