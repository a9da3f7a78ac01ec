//! The cluster's public key infrastructure, as Docker Swarm does it: a manager creates a CA
//! on first start (ECDSA P-256, kept in its data directory, key mode 0600); join tokens
//! carry the CA's digest, so a joining agent can check it talks to the right cluster
//! before it trusts anything; nodes get certificates for `CN=node:NAME` from CSRs, so their
//! private keys never leave them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::Digest;

/// What can go wrong with keys, certificates and tokens.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate, key or request that cannot be used.
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |e| PkiError::Invalid(format!("{what}: {e}"))
}

/// Writes `text` to `path` readable by its owner only.
pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Random bytes from the kernel.
fn random(n: usize) -> Result<Vec<u8>, PkiError> {
    use std::io::Read;
    let path = Path::new("/dev/urandom");
    let mut buf = vec![0; n];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(io(path))?;
    Ok(buf)
}

/// The hex SHA-256 of a DER certificate: what a join token pins.
pub(crate) fn digest(der: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(der))
}

/// The DER bytes of the first certificate in a PEM text.
pub(crate) fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("not a PEM certificate: {e}")))?;
    Ok(p.contents)
}

fn validity(params: &mut CertificateParams, valid: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that differ between machines: 5 minutes, or a quarter of a
    // short validity (so renewal at two thirds of the life still falls in the future).
    let slack = (valid.as_secs() / 4).min(300) as i64;
    params.not_before = now - time::Duration::seconds(slack);
    params.not_after = now + time::Duration::seconds(valid.as_secs() as i64);
}

fn serial() -> Result<rcgen::SerialNumber, PkiError> {
    let mut s = random(16)?;
    s[0] &= 0x7f;
    Ok(rcgen::SerialNumber::from_slice(&s))
}

/// A signed certificate: PEM, and when it expires (seconds since the Unix epoch).
#[derive(Clone, Debug)]
pub(crate) struct Issued {
    /// The certificate, PEM.
    pub certificate_pem: String,
    /// Its `notAfter`.
    pub not_after: i64,
}

/// The cluster CA: its certificate and the key that signs node certificates.
pub(crate) struct ClusterCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("digest", &self.digest())
            .finish()
    }
}

impl ClusterCa {
    /// Loads the CA from `dir/ca.pem` and `dir/ca.key`, creating both (valid 20 years) if
    /// neither exists.
    pub(crate) fn load_or_create(dir: &Path) -> Result<ClusterCa, PkiError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        if !cert_path.exists() && !key_path.exists() {
            let key = KeyPair::generate().map_err(invalid("CA key"))?;
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, "orch cluster CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.serial_number = Some(serial()?);
            validity(&mut params, Duration::from_secs(20 * 365 * 86_400));
            let cert = params
                .self_signed(&key)
                .map_err(invalid("CA certificate"))?;
            write_private(&key_path, &key.serialize_pem())?;
            write_private(&cert_path, &cert.pem())?;
        }
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| PkiError::Invalid(format!("{}: {e}", key_path.display())))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| PkiError::Invalid(format!("{}: {e}", cert_path.display())))?;
        Ok(ClusterCa {
            cert_der: pem_to_der(&cert_pem)?,
            cert_pem,
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub(crate) fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The hex SHA-256 of the CA certificate.
    pub(crate) fn digest(&self) -> String {
        digest(&self.cert_der)
    }

    /// Signs the public key of `csr_pem` (whose signature proves the caller holds the key)
    /// for `CN=common_name` with these DNS names, client and server use, valid for `valid`.
    /// What else the request asks for (names, extensions) is ignored.
    pub(crate) fn sign_csr(
        &self,
        csr_pem: &str,
        common_name: &str,
        dns_names: &[&str],
        valid: Duration,
    ) -> Result<Issued, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(invalid("certificate signing request"))?;
        csr.params = leaf_params(common_name, dns_names, &[], valid)?;
        let cert = csr.signed_by(&self.issuer).map_err(invalid("signing"))?;
        Ok(Issued {
            certificate_pem: cert.pem(),
            not_after: csr.params.not_after.unix_timestamp(),
        })
    }

    /// A new key and certificate for `CN=common_name` with these DNS names, valid for
    /// `valid`: `(certificate PEM, key PEM)`. For the manager's own serving certificate and
    /// administrators' client certificates.
    pub(crate) fn issue(
        &self,
        common_name: &str,
        dns_names: &[&str],
        valid: Duration,
    ) -> Result<(String, String), PkiError> {
        self.issue_for(common_name, dns_names, &[], valid)
    }

    /// [`ClusterCa::issue`] with IP addresses among the names too (for servers reached by
    /// address, as etcd members are).
    pub(crate) fn issue_for(
        &self,
        common_name: &str,
        dns_names: &[&str],
        ips: &[std::net::IpAddr],
        valid: Duration,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate().map_err(invalid("key"))?;
        let params = leaf_params(common_name, dns_names, ips, valid)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(invalid("signing"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn leaf_params(
    common_name: &str,
    dns_names: &[&str],
    ips: &[std::net::IpAddr],
    valid: Duration,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = dns_names
        .iter()
        .map(|n| {
            Ok(SanType::DnsName((*n).try_into().map_err(|e| {
                PkiError::Invalid(format!("DNS name {n:?}: {e}"))
            })?))
        })
        .collect::<Result<_, PkiError>>()?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial()?);
    validity(&mut params, valid);
    Ok(params)
}

/// A new private key and a CSR for it: `(key PEM, CSR PEM)`.
pub(crate) fn new_key_and_csr(common_name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(invalid("key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let csr = params
        .serialize_request(&key)
        .map_err(invalid("certificate signing request"))?;
    Ok((
        key.serialize_pem(),
        csr.pem().map_err(invalid("certificate signing request"))?,
    ))
}

/// A join token: `ORCH-1-<CA digest>-<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The hex SHA-256 of the cluster CA certificate.
    pub ca_digest: String,
    /// The secret that admits the holder.
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_digest", &self.ca_digest)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ORCH-1-{}-{}", self.ca_digest, self.secret)
    }
}

impl JoinToken {
    /// A new token for the CA with this digest.
    pub(crate) fn generate(ca_digest: &str) -> Result<JoinToken, PkiError> {
        let secret: String = random(20)?.iter().map(|b| format!("{b:02x}")).collect();
        Ok(JoinToken {
            ca_digest: ca_digest.to_string(),
            secret,
        })
    }

    /// Parses `ORCH-1-<64 hex>-<secret>`, saying what is wrong with a malformed one.
    pub(crate) fn parse(s: &str) -> Result<JoinToken, String> {
        let rest = s.trim().strip_prefix("ORCH-1-").ok_or_else(|| {
            "a join token starts with ORCH-1- (print one with `orchd token show` on a manager)"
                .to_string()
        })?;
        let (digest, secret) = rest
            .split_once('-')
            .ok_or("a join token is ORCH-1-<CA digest>-<secret>")?;
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "the join token's CA digest {digest:?} is not 64 hex digits"
            ));
        }
        if secret.len() < 16 || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err("the join token's secret is too short or has characters other than letters and digits".into());
        }
        Ok(JoinToken {
            ca_digest: digest.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }

    /// Whether `other` carries the same secret (compared in constant time).
    pub(crate) fn admits(&self, other: &JoinToken) -> bool {
        let (a, b) = (self.secret.as_bytes(), other.secret.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Loads the token in `path`, or creates one for `ca_digest` there (mode 0600).
    pub(crate) fn load_or_create(path: &Path, ca_digest: &str) -> Result<JoinToken, PkiError> {
        match std::fs::read_to_string(path) {
            Ok(text) => JoinToken::parse(&text)
                .map_err(|e| PkiError::Invalid(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = JoinToken::generate(ca_digest)?;
                write_private(path, &token.to_string())?;
                Ok(token)
            }
            Err(e) => Err(PkiError::Io {
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }

    /// Replaces the token in `path` with a new one (the old one stops admitting at once).
    pub(crate) fn rotate(path: &Path, ca_digest: &str) -> Result<JoinToken, PkiError> {
        let token = JoinToken::generate(ca_digest)?;
        write_private(path, &token.to_string())?;
        Ok(token)
    }
}

/// A node's (or an administrator's) credentials: the cluster CA, its certificate and key.
#[derive(Clone)]
pub struct Credentials {
    /// The cluster CA, PEM.
    pub ca_pem: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

impl Credentials {
    /// Writes `ca.pem`, `node.pem` and `node.key` (mode 0600) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        write_private(&dir.join("ca.pem"), &self.ca_pem)?;
        write_private(&dir.join("node.key"), &self.key_pem)?;
        write_private(&dir.join("node.pem"), &self.cert_pem)
    }

    /// Reads what [`Credentials::save`] wrote; `None` if `dir` holds none.
    pub fn load(dir: &Path) -> Result<Option<Credentials>, PkiError> {
        let read = |n: &str| {
            let p = dir.join(n);
            std::fs::read_to_string(&p).map_err(|source| PkiError::Io { path: p, source })
        };
        if !dir.join("node.pem").exists() {
            return Ok(None);
        }
        Ok(Some(Credentials {
            ca_pem: read("ca.pem")?,
            cert_pem: read("node.pem")?,
            key_pem: read("node.key")?,
        }))
    }

    /// When the certificate expires (seconds since the Unix epoch).
    pub fn not_after(&self) -> Result<i64, PkiError> {
        Ok(self.validity()?.1)
    }

    /// The certificate's `(notBefore, notAfter)` (seconds since the Unix epoch).
    pub fn validity(&self) -> Result<(i64, i64), PkiError> {
        let der = pem_to_der(&self.cert_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| PkiError::Invalid(format!("certificate: {e}")))?;
        let v = cert.validity();
        Ok((v.not_before.timestamp(), v.not_after.timestamp()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_ca_signs_a_csr_for_the_name_it_chooses() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::load_or_create(dir.path()).unwrap();
        let again = ClusterCa::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.digest(), again.digest(), "loaded, not recreated");
        let (_key, csr) = new_key_and_csr("node:evil-twin").unwrap();
        let issued = ca
            .sign_csr(
                &csr,
                "node:n1",
                &["n1.orch-node"],
                Duration::from_secs(3600),
            )
            .unwrap();
        let der = pem_to_der(&issued.certificate_pem).unwrap();
        assert_eq!(
            crate::grpc::auth::common_name(&der).as_deref(),
            Some("node:n1"),
            "the CA's name, not the request's"
        );
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((issued.not_after - now - 3600).abs() < 5);
        assert!(ca
            .sign_csr("not a csr", "node:n1", &[], Duration::from_secs(1))
            .is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_say_why() {
        let t = JoinToken::generate(&"ab".repeat(32)).unwrap();
        let parsed = JoinToken::parse(&t.to_string()).unwrap();
        assert_eq!(parsed, t);
        assert!(t.admits(&parsed));
        assert!(!t.admits(&JoinToken::generate(&t.ca_digest).unwrap()));
        assert!(!format!("{t:?}").contains(&t.secret), "Debug redacts");
        for (bad, says) in [
            ("SWMTKN-1-abc-def", "starts with ORCH-1-"),
            ("ORCH-1-abc", "ORCH-1-<CA digest>-<secret>"),
            ("ORCH-1-abc-0123456789abcdef0123", "64 hex digits"),
        ] {
            let e = JoinToken::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    proptest! {
        #[test]
        fn token_parsing_never_panics(s in ".{0,120}") {
            let _ = JoinToken::parse(&s);
        }
    }
}
