//! Secrets encrypted at rest, in any store: [`EncryptedStore`] wraps a [`Store`] and seals
//! the value of every key under `/secrets/` with ChaCha20-Poly1305 before it reaches the
//! store, and opens it on the way back (get, list, watch). The key is the store key's
//! associated data, so a sealed value cannot be moved to another secret's key.
//!
//! Keys live apart from the data, in a [`Keyring`] file (mode 0600, `DATA_DIR/secret-keys`
//! for orchd): one `ID HEX` line per key, the first one seals, all of them open. Rotation
//! ([`Keyring::rotate`], `orchd secrets rotate-key`) puts a new key first; the daemon
//! re-seals every secret under it at its next start ([`EncryptedStore::reseal`]), after
//! which old keys can be dropped from the file.
//!
//! A sealed value is `orch-sealed:v1:ID:` followed by the 12-byte nonce and the ciphertext.
//! Values stored before encryption was turned on (plain JSON) are read as they are and
//! sealed by `reseal`.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use futures::StreamExt;
use orch_core::store::{
    KeyValue, Op, Revision, Store, StoreError, WatchBatch, WatchEvent, WatchStream,
};

const MAGIC: &[u8] = b"orch-sealed:v1:";
const PREFIX: &str = "/secrets/";

/// The keys secrets are sealed with; the first one seals.
pub struct Keyring {
    keys: Vec<(String, ChaCha20Poly1305)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Keyring").field("ids", &ids).finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn new_line() -> String {
    let id: [u8; 4] = rand::random();
    let key: [u8; 32] = rand::random();
    format!("{} {}\n", hex(&id), hex(&key))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl Keyring {
    /// Reads the keyring at `path`, creating it with one fresh key if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Keyring, String> {
        if !path.exists() {
            write_private(path, &new_line())
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        }
        Keyring::load(path)
    }

    /// Reads the keyring at `path`.
    pub fn load(path: &Path) -> Result<Keyring, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Keyring::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses `ID HEX` lines (`#` comments and blank lines ignored).
    pub fn parse(text: &str) -> Result<Keyring, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(id), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("line {}: expected `ID HEXKEY`", n + 1));
            };
            let bytes = unhex(key).filter(|b| b.len() == 32).ok_or(format!(
                "line {}: the key must be 64 hex digits (32 bytes)",
                n + 1
            ))?;
            if id.contains(':') {
                return Err(format!("line {}: the key id must not contain ':'", n + 1));
            }
            keys.push((
                id.to_string(),
                ChaCha20Poly1305::new(Key::from_slice(&bytes)),
            ));
        }
        if keys.is_empty() {
            return Err("no keys".into());
        }
        Ok(Keyring { keys })
    }

    /// Puts a new key first in the file at `path` (the old ones stay, to open what they
    /// sealed); returns the new key's id.
    pub fn rotate(path: &Path) -> Result<String, String> {
        let old = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Keyring::parse(&old).map_err(|e| format!("{}: {e}", path.display()))?;
        let line = new_line();
        write_private(path, &format!("{line}{old}"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string())
    }

    /// The id of the key that seals.
    pub fn primary(&self) -> &str {
        &self.keys[0].0
    }

    /// Seals `plain` for store key `key`.
    pub fn seal(&self, key: &str, plain: &[u8]) -> Vec<u8> {
        let (id, cipher) = &self.keys[0];
        let nonce: [u8; 12] = rand::random();
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: key.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(MAGIC.len() + id.len() + 1 + 12 + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(id.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Which key sealed `value` (`None`: it is not sealed).
    pub fn sealed_with(value: &[u8]) -> Option<&str> {
        let rest = value.strip_prefix(MAGIC)?;
        let end = rest.iter().position(|b| *b == b':')?;
        std::str::from_utf8(&rest[..end]).ok()
    }

    /// Opens a value sealed for `key`; an unsealed value is returned as it is.
    pub fn open(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, String> {
        let Some(rest) = value.strip_prefix(MAGIC) else {
            return Ok(value.to_vec());
        };
        let end = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or("a sealed value without a key id")?;
        let id = std::str::from_utf8(&rest[..end]).map_err(|_| "a key id that is not text")?;
        let body = &rest[end + 1..];
        if body.len() < 12 {
            return Err(format!("{key}: sealed value too short"));
        }
        let (_, cipher) = self.keys.iter().find(|(k, _)| k == id).ok_or(format!(
            "{key}: sealed with key {id}, which is not in the keyring"
        ))?;
        cipher
            .decrypt(
                Nonce::from_slice(&body[..12]),
                Payload {
                    msg: &body[12..],
                    aad: key.as_bytes(),
                },
            )
            .map_err(|_| format!("{key}: the sealed value does not open with key {id} (altered, or moved from another key)"))
    }
}

/// A store whose secrets are sealed at rest.
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    keys: Arc<Keyring>,
}

impl EncryptedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, keys: Keyring) -> EncryptedStore {
        EncryptedStore {
            inner,
            keys: Arc::new(keys),
        }
    }

    /// Seals every secret not yet sealed with the primary key (after a rotation, or when
    /// encryption is first turned on); returns how many were rewritten.
    pub async fn reseal(&self) -> Result<usize, StoreError> {
        let (kvs, _) = self.inner.list(PREFIX).await?;
        let mut ops = Vec::new();
        for kv in kvs {
            if Keyring::sealed_with(&kv.value) == Some(self.keys.primary()) {
                continue;
            }
            let plain = self
                .keys
                .open(&kv.key, &kv.value)
                .map_err(|m| corrupt(&kv.key, m))?;
            ops.push(Op::Update {
                value: self.keys.seal(&kv.key, &plain),
                key: kv.key,
                expected: kv.mod_revision,
            });
        }
        let n = ops.len();
        if n > 0 {
            self.inner.txn(ops).await?;
        }
        Ok(n)
    }
}

fn corrupt(key: &str, message: String) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        reason: message,
    }
}

fn open_kv(keys: &Keyring, mut kv: KeyValue) -> Result<KeyValue, StoreError> {
    if kv.key.starts_with(PREFIX) {
        let plain = keys
            .open(&kv.key, &kv.value)
            .map_err(|m| corrupt(&kv.key, m))?;
        kv.value = plain.into();
    }
    Ok(kv)
}

#[async_trait]
impl Store for EncryptedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        match self.inner.get(key).await? {
            Some(kv) => open_kv(&self.keys, kv).map(Some),
            None => Ok(None),
        }
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let (kvs, rev) = self.inner.list(prefix).await?;
        let kvs = kvs
            .into_iter()
            .map(|kv| open_kv(&self.keys, kv))
            .collect::<Result<_, _>>()?;
        Ok((kvs, rev))
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        let ops = ops
            .into_iter()
            .map(|op| match op {
                Op::Create { key, value } if key.starts_with(PREFIX) => Op::Create {
                    value: self.keys.seal(&key, &value),
                    key,
                },
                Op::Update {
                    key,
                    value,
                    expected,
                } if key.starts_with(PREFIX) => Op::Update {
                    value: self.keys.seal(&key, &value),
                    key,
                    expected,
                },
                other => other,
            })
            .collect();
        self.inner.txn(ops).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let keys = self.keys.clone();
        let stream = self.inner.watch(prefix, after).await?;
        Ok(stream
            .map(move |batch| {
                let batch = batch?;
                let events = batch
                    .events
                    .into_iter()
                    .map(|e| match e {
                        WatchEvent::Put(kv) => open_kv(&keys, kv).map(WatchEvent::Put),
                        WatchEvent::Delete { prev, revision } => {
                            open_kv(&keys, prev).map(|prev| WatchEvent::Delete { prev, revision })
                        }
                    })
                    .collect::<Result<_, _>>()?;
                Ok(WatchBatch {
                    revision: batch.revision,
                    events,
                })
            })
            .boxed())
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }

    fn max_txn_ops(&self) -> usize {
        self.inner.max_txn_ops()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_open_only_with_their_key_and_their_store_key() {
        let k = Keyring::parse(&new_line()).unwrap();
        let sealed = k.seal("/secrets/default/db", b"hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(Keyring::sealed_with(&sealed), Some(k.primary()));
        assert_eq!(k.open("/secrets/default/db", &sealed).unwrap(), b"hunter2");
        let moved = k.open("/secrets/default/other", &sealed).unwrap_err();
        assert!(moved.contains("does not open"), "{moved}");
        let other = Keyring::parse(&new_line()).unwrap();
        let e = other.open("/secrets/default/db", &sealed).unwrap_err();
        assert!(e.contains("not in the keyring"), "{e}");
        assert_eq!(k.open("/x", b"{\"plain\":1}").unwrap(), b"{\"plain\":1}");
    }

    #[test]
    fn rotation_keeps_old_keys_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret-keys");
        let k1 = Keyring::load_or_create(&path).unwrap();
        let sealed = k1.seal("/secrets/a/b", b"v");
        let new_id = Keyring::rotate(&path).unwrap();
        let k2 = Keyring::load(&path).unwrap();
        assert_eq!(k2.primary(), new_id);
        assert_eq!(k2.open("/secrets/a/b", &sealed).unwrap(), b"v");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        for (bad, says) in [
            ("", "no keys"),
            ("k1 abcd", "64 hex digits"),
            ("k1", "expected `ID HEXKEY`"),
        ] {
            let e = Keyring::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }
}
