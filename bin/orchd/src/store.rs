//! `--store`: which [`Store`] the daemon keeps its state in.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use orch_core::store::Store;

/// What `--store` accepts, for error messages.
pub const ALLOWED: &str =
    "embedded, memory, etcd://HOST:PORT[,HOST:PORT...][/PREFIX] (default prefix /orch)";

/// A parsed `--store` value.
#[derive(Debug, PartialEq, Eq)]
pub enum StoreSpec {
    /// The durable embedded store in the data directory.
    Embedded,
    /// In memory, lost on exit.
    Memory,
    /// etcd at these endpoints (`http://HOST:PORT`), keys under `prefix`.
    Etcd {
        /// Client URLs.
        endpoints: Vec<String>,
        /// Key prefix (starts with `/`, no trailing `/`).
        prefix: String,
    },
}

/// Parses `--store`; the error names the value and what is allowed.
pub fn parse(value: &str) -> anyhow::Result<StoreSpec> {
    let bad =
        |why: &str| anyhow::anyhow!("--store: invalid value {value:?}: {why}; allowed: {ALLOWED}");
    match value {
        "embedded" => return Ok(StoreSpec::Embedded),
        "memory" => return Ok(StoreSpec::Memory),
        _ => {}
    }
    let Some(rest) = value.strip_prefix("etcd://") else {
        return Err(bad("unknown store"));
    };
    let (hosts, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/orch"),
    };
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return Err(bad("the key prefix must not be empty (e.g. /orch)"));
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            "the key prefix must not contain spaces or control characters",
        ));
    }
    let mut endpoints = Vec::new();
    for host in hosts.split(',') {
        let (h, port) = host
            .rsplit_once(':')
            .ok_or_else(|| bad(&format!("endpoint {host:?} has no :PORT")))?;
        if h.is_empty() || h.contains(['/', '@', '?', '#']) {
            return Err(bad(&format!("endpoint {host:?} has no valid host")));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(bad(&format!("endpoint {host:?}: port must be 1-65535"))),
        }
        endpoints.push(format!("http://{host}"));
    }
    Ok(StoreSpec::Etcd {
        endpoints,
        prefix: prefix.to_string(),
    })
}

/// Opens the store `spec` names; returns it and a description for `orchctl info`.
/// The keyring secrets are sealed with, in the data directory (apart from the store).
pub const SECRET_KEYS: &str = "secret-keys";

/// [`open_plain`], with secrets sealed at rest by the keyring DATA_DIR/secret-keys (created on
/// first start); secrets not sealed with its first key are re-sealed now.
pub async fn open(spec: &StoreSpec, data_dir: &Path) -> anyhow::Result<(Arc<dyn Store>, String)> {
    let (inner, name) = open_plain(spec, data_dir).await?;
    seal(inner, &name, data_dir).await
}

/// `inner` with secrets sealed at rest by the keyring DATA_DIR/secret-keys (created on first
/// start); secrets not sealed with its first key are re-sealed now. `name` describes `inner`.
pub async fn seal(
    inner: Arc<dyn Store>,
    name: &str,
    data_dir: &Path,
) -> anyhow::Result<(Arc<dyn Store>, String)> {
    let keys = orch_store::encrypted::Keyring::load_or_create(&data_dir.join(SECRET_KEYS))
        .map_err(anyhow::Error::msg)?;
    let store = orch_store::encrypted::EncryptedStore::new(inner, keys);
    let resealed = store
        .reseal()
        .await
        .context("cannot re-seal the secrets with the current key")?;
    if resealed > 0 {
        tracing::info!(secrets = resealed, "re-sealed secrets with the current key");
    }
    Ok((Arc::new(store), format!("{name}, secrets sealed")))
}

async fn open_plain(spec: &StoreSpec, data_dir: &Path) -> anyhow::Result<(Arc<dyn Store>, String)> {
    match spec {
        StoreSpec::Embedded => {
            let path = data_dir.join("state.redb");
            let s = orch_store::EmbeddedStore::open(&path)
                .with_context(|| format!("cannot open the store {}", path.display()))?;
            Ok((Arc::new(s), format!("embedded:{}", path.display())))
        }
        StoreSpec::Memory => Ok((
            Arc::new(orch_core::memstore::MemStore::new()),
            "memory".into(),
        )),
        StoreSpec::Etcd { endpoints, prefix } => open_etcd(endpoints, prefix).await,
    }
}

#[cfg(feature = "etcd")]
async fn open_etcd(endpoints: &[String], prefix: &str) -> anyhow::Result<(Arc<dyn Store>, String)> {
    let s = orch_store::etcd::EtcdStore::connect(endpoints, prefix)
        .await
        .with_context(|| format!("cannot use etcd at {}", endpoints.join(",")))?;
    Ok((
        Arc::new(s),
        format!("etcd:{} (prefix {prefix})", endpoints.join(",")),
    ))
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(_: &[String], _: &str) -> anyhow::Result<(Arc<dyn Store>, String)> {
    anyhow::bail!(
        "--store etcd://...: this orchd was built without etcd support; \
         rebuild with `cargo build --release --features orchd/etcd` (needs protoc: apt-get install protobuf-compiler)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_values() {
        assert_eq!(parse("embedded").unwrap(), StoreSpec::Embedded);
        assert_eq!(parse("memory").unwrap(), StoreSpec::Memory);
        assert_eq!(
            parse("etcd://127.0.0.1:2379").unwrap(),
            StoreSpec::Etcd {
                endpoints: vec!["http://127.0.0.1:2379".into()],
                prefix: "/orch".into()
            }
        );
        assert_eq!(
            parse("etcd://a:1,b:2/team/x/").unwrap(),
            StoreSpec::Etcd {
                endpoints: vec!["http://a:1".into(), "http://b:2".into()],
                prefix: "/team/x".into()
            }
        );
    }

    #[test]
    fn bad_store_values_name_the_problem() {
        for (value, says) in [
            ("redis", "unknown store"),
            ("etcd://", "has no :PORT"),
            ("etcd://host", "\"host\" has no :PORT"),
            ("etcd://host:0", "port must be 1-65535"),
            ("etcd://host:99999", "port must be 1-65535"),
            ("etcd://:2379", "no valid host"),
            ("etcd://a:1,,b:2", "\"\" has no :PORT"),
            ("etcd://a:1/", "prefix must not be empty"),
            ("etcd://u@a:1", "no valid host"),
        ] {
            let e = parse(value).unwrap_err().to_string();
            assert!(e.contains(says), "{value}: {e}");
            assert!(e.contains(&format!("{value:?}")), "{value}: {e}");
            assert!(
                e.contains("allowed: embedded, memory, etcd://"),
                "{value}: {e}"
            );
        }
    }
}
