//! Certificates and TLS configuration: the cluster CA, node certificates,
//! and the rustls / quinn configurations for mutual TLS 1.3.
//!
//! Every node certificate is signed by the cluster CA and carries the DNS
//! name [`SERVER_NAME`] (which every dialer verifies, since peers are dialed
//! by address), the node's own name as the common name and as a DNS name,
//! and both the ServerAuth and ClientAuth extended key usages, because each
//! node both dials and accepts. Servers require and verify a client
//! certificate; clients verify the server against the cluster CA only.
//!
//! Under TLS 1.3 a client that the server rejects still sees the handshake
//! complete: the rejection arrives only with the first stream operation. A
//! peer counts as authenticated only after the first exchange (the hello),
//! and its name is [`peer_name`], checked against the hello.
//!
//! On disk a certificate directory holds `ca.crt` and `ca.key` (the cluster
//! CA) and `NAME.crt` plus `NAME.key` per node, all PEM. Keys are written
//! with mode 0600.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, RootCertStore};
use time::{Duration, OffsetDateTime, UtcOffset};

/// The ALPN protocol every meshcache connection negotiates.
pub const ALPN: &[u8] = b"meshcache/1";

/// DNS name every node certificate carries and every dialer verifies: peers are dialed by address, and
/// identity comes from the node name in the certificate, checked against the hello.
pub const SERVER_NAME: &str = "meshcache";

/// Longest node name, in bytes (a DNS label's limit).
pub const MAX_NAME_LEN: usize = crate::membership::MAX_NAME_LEN;

/// Validity of a node certificate, in days from issue (the CA/Browser
/// Forum's historical maximum).
pub const NODE_VALIDITY_DAYS: i64 = 825;

/// Validity of the cluster CA certificate, in days from creation.
pub const CA_VALIDITY_DAYS: i64 = 3650;

/// File name of the cluster CA certificate inside a certificate directory.
pub const CA_CERT_FILE: &str = "ca.crt";

/// File name of the cluster CA private key inside a certificate directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// Certificates are back-dated by this much, to tolerate clock skew between
/// the machine that issues them and the peers that check them.
const BACKDATE: Duration = Duration::hours(1);

/// Common name of every cluster CA.
const CA_COMMON_NAME: &str = "meshcache cluster CA";

/// Why making, loading or using certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The directory holds no cluster CA (`ca.crt` or `ca.key` is missing).
    #[error(
        "no cluster CA: {} does not exist; run `meshcache certs init` first \
         (or point --certs at the directory that holds ca.crt and ca.key)",
        path.display()
    )]
    MissingCa {
        /// The missing CA file.
        path: PathBuf,
    },
    /// A node's certificate or key file is missing.
    #[error(
        "{} does not exist; run `meshcache certs issue {name}` to make it \
         (or point --certs at the directory that holds it)",
        path.display()
    )]
    MissingNodeFile {
        /// The missing file.
        path: PathBuf,
        /// The node whose file it is.
        name: String,
    },
    /// Only one of a certificate / key pair exists, so it cannot be used or
    /// completed without guessing.
    #[error(
        "{} exists but {} does not; restore the missing file, or remove {} and try again",
        present.display(),
        missing.display(),
        present.display()
    )]
    HalfPair {
        /// The file that exists.
        present: PathBuf,
        /// The file that does not.
        missing: PathBuf,
    },
    /// A file that would be written already exists.
    #[error("{} already exists; use --force to overwrite it", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A file exists but could not be read.
    #[error("cannot read {}: {source}; check that it is readable by this user", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {}: {source}; check that the directory is writable by this user", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file does not hold what it should (not PEM, wrong PEM type, or a
    /// certificate or key that cannot be parsed).
    #[error("{} is not a valid {what}: {detail}; replace it with a file made by `meshcache certs`", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the file should hold ("PEM certificate", "PEM private key", ...).
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// The CA private key cannot be used to sign: unparseable, unsupported,
    /// or not the key of `ca.crt`.
    #[error(
        "cannot use the CA key {}: {detail}; restore the ca.key that belongs with ca.crt, \
         or make a new CA with `meshcache certs init --force` (and re-issue every node certificate)",
        path.display()
    )]
    BadCaKey {
        /// The CA key file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A node name is unusable.
    #[error(
        "invalid node name {name:?}: {reason}; use 1 to {MAX_NAME_LEN} characters from A-Z, a-z, 0-9, '.', '_' and '-'"
    )]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An extra subject alternative name cannot be put in a certificate.
    #[error("invalid DNS name {value:?} for the certificate: {detail}; give plain ASCII host names")]
    InvalidSan {
        /// The name as given.
        value: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A private key does not belong to the certificate beside it.
    #[error(
        "{} is not the private key of {}; re-issue both with `meshcache certs issue NAME --force`",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// A node certificate was not signed by the cluster CA in the same
    /// directory.
    #[error(
        "{} was not issued by the cluster CA in {}; re-issue it with `meshcache certs issue NAME --force` \
         against this CA, or point --certs at the directory of the CA that issued it",
        cert.display(),
        ca.display()
    )]
    WrongCa {
        /// The node certificate.
        cert: PathBuf,
        /// The CA certificate it was checked against.
        ca: PathBuf,
    },
    /// A certificate is past its expiry date.
    #[error(
        "{} has expired: it was valid from {} until {}, and it is now {}; \
         issue a new one with `meshcache certs issue NAME --force`",
        path.display(),
        fmt_time(*not_before),
        fmt_time(*not_after),
        fmt_time(*now)
    )]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// Start of validity.
        not_before: OffsetDateTime,
        /// End of validity.
        not_after: OffsetDateTime,
        /// The time of the check.
        now: OffsetDateTime,
    },
    /// A certificate is not valid yet.
    #[error(
        "{} is not valid yet: it is valid from {} until {}, and it is now {}; \
         check this machine's clock (and that of the machine that issued it)",
        path.display(),
        fmt_time(*not_before),
        fmt_time(*not_after),
        fmt_time(*now)
    )]
    NotYetValid {
        /// The certificate file.
        path: PathBuf,
        /// Start of validity.
        not_before: OffsetDateTime,
        /// End of validity.
        not_after: OffsetDateTime,
        /// The time of the check.
        now: OffsetDateTime,
    },
    /// A certificate is signed by the CA but unusable for meshcache (wrong
    /// name, missing key usage, ...).
    #[error("{} cannot be used: {detail}; re-issue it with `meshcache certs issue NAME --force`", path.display())]
    Unusable {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Certificate generation failed.
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The TLS configuration could not be built from the identity.
    #[error("cannot build the TLS configuration: {0}; check the certificate files with `meshcache certs`")]
    Tls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from the CA.
    #[error("cannot build the certificate verifier from the cluster CA: {0}; check ca.crt")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The TLS configuration is unusable for QUIC.
    #[error("the TLS configuration is unusable for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// Formats a time as `YYYY-MM-DD HH:MM:SS UTC`, without needing the `time`
/// crate's formatting feature.
fn fmt_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A node's TLS identity: its certificate chain and key, and the cluster CA
/// it trusts.
pub struct Identity {
    /// The node name (the common name of the certificate).
    pub name: String,
    /// The certificate chain, end-entity certificate first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key of the end-entity certificate.
    pub key: PrivateKeyDer<'static>,
    /// The cluster CA certificate: the only trust anchor.
    pub ca: CertificateDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity { name: self.name.clone(), chain: self.chain.clone(), key: self.key.clone_key(), ca: self.ca.clone() }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("chain", &format_args!("[{} certificate(s)]", self.chain.len()))
            .field("key", &format_args!("<redacted>"))
            .finish_non_exhaustive()
    }
}

/// The crypto provider used everywhere (explicitly: with more than one
/// provider linked, rustls cannot pick a process default).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks a node name: 1..=63 bytes of `[A-Za-z0-9._-]`, not starting with
/// a dot (hidden files) and not `ca` (it would collide with the CA files).
/// The rule is [`crate::membership::name_problem`], shared with
/// configuration and gossip.
pub fn validate_name(name: &str) -> Result<(), CertError> {
    match crate::membership::name_problem(name) {
        Some(reason) => Err(CertError::InvalidName { name: name.to_owned(), reason }),
        None => Ok(()),
    }
}

/// The parameters of a cluster CA certificate valid from `not_before` to
/// `not_after`.
fn ca_params(not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "meshcache");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

/// The parameters of a node certificate: CN = name; SANs: DNS
/// [`SERVER_NAME`], DNS `name`, then `ips` and `dns`; ServerAuth and
/// ClientAuth.
fn node_params(
    name: &str,
    ips: &[IpAddr],
    dns: &[String],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, CertError> {
    validate_name(name)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let mut sans: Vec<SanType> = Vec::new();
    let mut dns_names: Vec<&str> = vec![SERVER_NAME, name];
    dns_names.extend(dns.iter().map(String::as_str));
    for value in dns_names {
        if value.is_empty() {
            return Err(CertError::InvalidSan { value: value.to_owned(), detail: "it is empty".into() });
        }
        let ia5 = value
            .to_owned()
            .try_into()
            .map_err(|e: rcgen::Error| CertError::InvalidSan { value: value.to_owned(), detail: e.to_string() })?;
        let san = SanType::DnsName(ia5);
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    for ip in ips {
        let san = SanType::IpAddress(*ip);
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join(CA_CERT_FILE)
}

fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join(CA_KEY_FILE)
}

fn node_cert_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.crt"))
}

fn node_key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.key"))
}

/// Creates `dir` (and its parents) if missing.
fn ensure_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Write { path: dir.to_owned(), source })
}

/// Fails with [`CertError::AlreadyExists`] if any of `paths` exists and
/// `force` is off. Checked for every file before any is written, so that a
/// refusal leaves nothing half-done.
fn refuse_overwrite(paths: &[&Path], force: bool) -> Result<(), CertError> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(CertError::AlreadyExists { path: p.to_path_buf() }),
        None => Ok(()),
    }
}

/// Writes `contents` to `path`; mode 0600 on Unix if `private`. Without
/// `force` the file must not exist (checked atomically by the open).
fn write_file(path: &Path, contents: &str, private: bool, force: bool) -> Result<(), CertError> {
    let werr = |source| CertError::Write { path: path.to_owned(), source };
    let mut opts = fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = opts.open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            CertError::AlreadyExists { path: path.to_owned() }
        } else {
            werr(source)
        }
    })?;
    // The mode given to open applies only to a new file: tighten an
    // overwritten one before the secret goes in.
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600)).map_err(werr)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    file.write_all(contents.as_bytes()).map_err(werr)?;
    file.sync_all().map_err(werr)
}

/// Reads a file, turning "not found" into `missing()`.
fn read_file(path: &Path, missing: impl FnOnce() -> CertError) -> Result<Vec<u8>, CertError> {
    fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => missing(),
        _ => CertError::Read { path: path.to_owned(), source },
    })
}

/// Parses every certificate in a PEM file; at least one is required.
fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bad = |detail: String| CertError::BadPem { path: path.to_owned(), what: "PEM certificate file", detail };
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("malformed PEM ({e})")))?;
    if certs.is_empty() {
        return Err(bad("it holds no \"BEGIN CERTIFICATE\" block".into()));
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert).map_err(|e| bad(format!("unparseable certificate ({e})")))?;
    }
    Ok(certs)
}

/// Parses the single private key of a PEM file.
fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, CertError> {
    let bad = |detail: String| CertError::BadPem { path: path.to_owned(), what: "PEM private key file", detail };
    match rustls_pemfile::private_key(&mut &pem[..]) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(bad("it holds no \"BEGIN PRIVATE KEY\" block".into())),
        Err(e) => Err(bad(format!("malformed PEM ({e})"))),
    }
}

/// Whether `key` is the private key of the end-entity certificate `cert`.
/// An error means the key itself is unusable.
fn key_matches(cert: &CertificateDer<'static>, key: &PrivateKeyDer<'static>) -> Result<bool, rustls::Error> {
    let signer = provider().key_provider.load_private_key(key.clone_key())?;
    match CertifiedKey::new(vec![cert.clone()], signer).keys_match() {
        Ok(()) => Ok(true),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The node name in a certificate: its common name, or else its first DNS
/// name other than [`SERVER_NAME`].
fn cert_node_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Some(cn) = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()) {
        return Some(cn.to_owned());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|gn| match gn {
        x509_parser::extensions::GeneralName::DNSName(d) if *d != SERVER_NAME => Some((*d).to_owned()),
        _ => None,
    })
}

/// Makes the cluster CA: writes `dir/ca.crt` and `dir/ca.key` (mode 0600),
/// creating `dir` if needed. Refuses to overwrite either file unless
/// `force`. Returns the path of `ca.crt`.
pub fn init_ca(dir: &Path, force: bool) -> Result<PathBuf, CertError> {
    let (crt, key_path) = (ca_cert_path(dir), ca_key_path(dir));
    refuse_overwrite(&[&crt, &key_path], force)?;
    ensure_dir(dir)?;
    let now = OffsetDateTime::now_utc();
    let key = KeyPair::generate()?;
    let cert = ca_params(now - BACKDATE, now + Duration::days(CA_VALIDITY_DAYS)).self_signed(&key)?;
    // The key first: a crash in between leaves a key without a certificate,
    // which is refused as a half pair rather than silently replaced.
    write_file(&key_path, &key.serialize_pem(), true, force)?;
    write_file(&crt, &cert.pem(), false, force)?;
    Ok(crt)
}

/// Loads the CA of `dir` as an rcgen issuer, checking that `ca.key` is the
/// key of `ca.crt`.
fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    let (crt, key_path) = (ca_cert_path(dir), ca_key_path(dir));
    let ca_pem = read_file(&crt, || CertError::MissingCa { path: crt.clone() })?;
    let key_pem = read_file(&key_path, || CertError::MissingCa { path: key_path.clone() })?;
    let ca = single_ca_cert(&crt, &ca_pem)?;
    let bad_key = |detail: String| CertError::BadCaKey { path: key_path.clone(), detail };
    let key_der = parse_key(&key_path, &key_pem).map_err(|e| bad_key(e.to_string()))?;
    match key_matches(&ca, &key_der) {
        Ok(true) => {}
        Ok(false) => return Err(bad_key("it is not the key of ca.crt".into())),
        Err(e) => return Err(bad_key(format!("unusable key ({e})"))),
    }
    let key = KeyPair::try_from(&key_der).map_err(|e| bad_key(format!("unusable key ({e})")))?;
    Issuer::from_ca_cert_der(&ca, key).map_err(|e| CertError::BadPem {
        path: crt.clone(),
        what: "CA certificate",
        detail: format!("rcgen cannot sign with it ({e})"),
    })
}

/// Parses `ca.crt`, which must hold exactly one certificate.
fn single_ca_cert(path: &Path, pem: &[u8]) -> Result<CertificateDer<'static>, CertError> {
    let mut certs = parse_certs(path, pem)?;
    if certs.len() != 1 {
        return Err(CertError::BadPem {
            path: path.to_owned(),
            what: "CA certificate file",
            detail: format!("it holds {} certificates, and exactly one is expected", certs.len()),
        });
    }
    Ok(certs.remove(0))
}

/// Issues a node certificate: writes `dir/NAME.crt` and `dir/NAME.key`
/// (mode 0600), signed by `dir/ca.crt` and `dir/ca.key`.
///
/// SANs: DNS [`SERVER_NAME`], DNS `name`, then `ips` and `dns`; extended
/// key usages ServerAuth and ClientAuth; CN = `name`; valid from an hour ago
/// for 825 days. Refuses to overwrite either file unless `force`.
pub fn issue(
    dir: &Path,
    name: &str,
    ips: &[IpAddr],
    dns: &[String],
    force: bool,
) -> Result<(PathBuf, PathBuf), CertError> {
    let now = OffsetDateTime::now_utc();
    issue_with_validity(dir, name, ips, dns, force, now - BACKDATE, now + Duration::days(NODE_VALIDITY_DAYS))
}

/// [`issue`] with an explicit validity window (tests use it for expired and
/// not-yet-valid certificates).
fn issue_with_validity(
    dir: &Path,
    name: &str,
    ips: &[IpAddr],
    dns: &[String],
    force: bool,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(PathBuf, PathBuf), CertError> {
    let params = node_params(name, ips, dns, not_before, not_after)?;
    let issuer = load_issuer(dir)?;
    let (crt, key_path) = (node_cert_path(dir, name), node_key_path(dir, name));
    refuse_overwrite(&[&crt, &key_path], force)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_file(&key_path, &key.serialize_pem(), true, force)?;
    write_file(&crt, &cert.pem(), false, force)?;
    Ok((crt, key_path))
}

/// Loads node `name`'s identity from `dir`: `ca.crt`, `NAME.crt` and
/// `NAME.key`.
///
/// Checks that the key belongs to the certificate, that the certificate is
/// within its validity period, was signed by this CA, carries
/// [`SERVER_NAME`] and both key usages, and names `name`.
pub fn load_identity(dir: &Path, name: &str) -> Result<Identity, CertError> {
    validate_name(name)?;
    let ca_path = ca_cert_path(dir);
    let crt = node_cert_path(dir, name);
    let key_path = node_key_path(dir, name);
    let missing_node = |path: &Path| CertError::MissingNodeFile { path: path.to_owned(), name: name.to_owned() };

    let ca_pem = read_file(&ca_path, || CertError::MissingCa { path: ca_path.clone() })?;
    let crt_pem = read_file(&crt, || missing_node(&crt))?;
    let key_pem = read_file(&key_path, || missing_node(&key_path))?;
    let ca = single_ca_cert(&ca_path, &ca_pem)?;
    let chain = parse_certs(&crt, &crt_pem)?;
    let key = parse_key(&key_path, &key_pem)?;

    match key_matches(&chain[0], &key) {
        Ok(true) => {}
        Ok(false) => return Err(CertError::KeyMismatch { key: key_path, cert: crt }),
        Err(e) => {
            return Err(CertError::BadPem {
                path: key_path,
                what: "private key",
                detail: format!("rustls cannot use it ({e})"),
            })
        }
    }

    check_validity(&crt, &chain[0], OffsetDateTime::now_utc())?;
    verify_chain(&ca_path, &crt, &ca, &chain)?;

    match cert_node_name(&chain[0]) {
        Some(n) if n == name => {}
        other => {
            return Err(CertError::Unusable {
                path: crt,
                detail: format!("it names node {:?}, not {name:?}", other.unwrap_or_default()),
            })
        }
    }
    Ok(Identity { name: name.to_owned(), chain, key, ca })
}

/// Fails if `now` is outside the validity period of `cert`.
fn check_validity(path: &Path, cert: &CertificateDer<'_>, now: OffsetDateTime) -> Result<(), CertError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| CertError::BadPem {
        path: path.to_owned(),
        what: "PEM certificate file",
        detail: format!("unparseable certificate ({e})"),
    })?;
    let validity = parsed.validity();
    let (not_before, not_after) = (validity.not_before.to_datetime(), validity.not_after.to_datetime());
    let path = path.to_owned();
    if now < not_before {
        return Err(CertError::NotYetValid { path, not_before, not_after, now });
    }
    if now > not_after {
        return Err(CertError::Expired { path, not_before, not_after, now });
    }
    Ok(())
}

/// Verifies `chain` against `ca` exactly as peers will: as a client
/// certificate and as a server certificate for [`SERVER_NAME`].
fn verify_chain(
    ca_path: &Path,
    crt: &Path,
    ca: &CertificateDer<'static>,
    chain: &[CertificateDer<'static>],
) -> Result<(), CertError> {
    let roots = Arc::new(ca_roots(ca_path, ca)?);
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).build()?;
    let server_verifier =
        WebPkiServerVerifier::builder_with_provider(roots, provider()).build().map_err(CertError::Verifier)?;
    let server_name = ServerName::try_from(SERVER_NAME).expect("SERVER_NAME is a valid DNS name");
    let now = UnixTime::now();
    let (end_entity, intermediates) = (&chain[0], &chain[1..]);
    client_verifier
        .verify_client_cert(end_entity, intermediates, now)
        .map(|_| ())
        .and_then(|()| {
            server_verifier.verify_server_cert(end_entity, intermediates, &server_name, &[], now).map(|_| ())
        })
        .map_err(|e| match e {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
                CertError::WrongCa { cert: crt.to_owned(), ca: ca_path.to_owned() }
            }
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => CertError::Unusable {
                path: crt.to_owned(),
                detail: format!("it does not carry the DNS name {SERVER_NAME:?} that every peer checks"),
            },
            rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
            ) => CertError::Unusable {
                path: crt.to_owned(),
                detail: "it lacks the ServerAuth and ClientAuth extended key usages".into(),
            },
            other => CertError::Unusable { path: crt.to_owned(), detail: other.to_string() },
        })
}

/// A root store holding only the cluster CA.
fn ca_roots(ca_path: &Path, ca: &CertificateDer<'static>) -> Result<RootCertStore, CertError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| CertError::BadPem {
        path: ca_path.to_owned(),
        what: "CA certificate",
        detail: format!("unusable as a trust anchor ({e})"),
    })?;
    Ok(roots)
}

/// The identity for `node` run without `--certs`: creates `dir/ca.*` and
/// `dir/NAME.*` if they are missing, then loads. Returns whether anything
/// was created. A half pair (a certificate without its key or the reverse)
/// is an error, never silently replaced.
pub fn dev_identity(dir: &Path, name: &str) -> Result<(Identity, bool), CertError> {
    validate_name(name)?;
    let mut created = false;
    if ensure_pair(&ca_cert_path(dir), &ca_key_path(dir))? {
        init_ca(dir, false)?;
        created = true;
    }
    if ensure_pair(&node_cert_path(dir, name), &node_key_path(dir, name))? {
        issue(dir, name, &[], &[], false)?;
        created = true;
    }
    Ok((load_identity(dir, name)?, created))
}

/// `Ok(true)` if neither file exists, `Ok(false)` if both do, and
/// [`CertError::HalfPair`] otherwise.
fn ensure_pair(crt: &Path, key: &Path) -> Result<bool, CertError> {
    match (crt.exists(), key.exists()) {
        (false, false) => Ok(true),
        (true, true) => Ok(false),
        (true, false) => Err(CertError::HalfPair { present: crt.to_owned(), missing: key.to_owned() }),
        (false, true) => Err(CertError::HalfPair { present: key.to_owned(), missing: crt.to_owned() }),
    }
}

/// Fixed validity for a seeded CA's certificates.
fn simulation_validity() -> (OffsetDateTime, OffsetDateTime) {
    let at = |unix: i64| OffsetDateTime::from_unix_timestamp(unix).expect("a valid date");
    (at(1_577_836_800), at(4_102_444_800))
}

/// Ephemeral identities use Ed25519: its signatures have one length, so
/// a handshake's packets have the same sizes in every run of a seeded
/// simulation (ECDSA's DER signatures vary by a byte or two).
fn ephemeral_key() -> Result<KeyPair, CertError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ED25519)?)
}

/// A serial of one fixed length (17 bytes), unique per key: rcgen's
/// default drops leading zero bytes, so its length varies from one key to
/// the next, and with it the size of every handshake.
fn ephemeral_serial(key: &KeyPair) -> rcgen::SerialNumber {
    let mut serial = vec![0x40];
    serial.extend_from_slice(&xxhash_rust::xxh3::xxh3_128(key.public_key_pem().as_bytes()).to_be_bytes());
    rcgen::SerialNumber::from_slice(&serial)
}

/// An Ed25519 key whose 32-byte seed is `seed`: PKCS#8 v1 is a fixed
/// prefix and the seed (RFC 8410).
fn seeded_key(seed: [u8; 32]) -> Result<KeyPair, CertError> {
    const PREFIX: [u8; 16] =
        [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(&seed);
    Ok(KeyPair::try_from(der.as_slice())?)
}

fn seed_bytes(seed: u64, what: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, c) in out.chunks_mut(16).enumerate() {
        c.copy_from_slice(&xxhash_rust::xxh3::xxh3_128(format!("{seed}/{what}/{i}").as_bytes()).to_le_bytes());
    }
    out
}

/// An in-memory cluster CA, for the demo and tests: nothing touches disk.
pub struct EphemeralCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// Set for a simulation's CA: node keys derive from it, and every
    /// certificate has fixed dates, so that its bytes are the same in
    /// every run.
    seed: Option<u64>,
}

impl fmt::Debug for EphemeralCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EphemeralCa").finish_non_exhaustive()
    }
}

impl EphemeralCa {
    /// Makes a fresh CA, valid from an hour ago for ten years.
    pub fn new() -> Result<Self, CertError> {
        let now = OffsetDateTime::now_utc();
        let mut params = ca_params(now - BACKDATE, now + Duration::days(CA_VALIDITY_DAYS));
        let key = ephemeral_key()?;
        params.serial_number = Some(ephemeral_serial(&key));
        Ok(EphemeralCa { issuer: CertifiedIssuer::self_signed(params, key)?, seed: None })
    }

    /// A CA whose keys all derive from `seed`, with certificates valid from
    /// 2020 to 2100: the same bytes in every run, as a simulation that
    /// replays exactly needs (the handshake's bytes decide how a peer reads
    /// a stray datagram). For simulations only: its keys are predictable.
    pub fn seeded(seed: u64) -> Result<Self, CertError> {
        let (from, until) = simulation_validity();
        let mut params = ca_params(from, until);
        let key = seeded_key(seed_bytes(seed, "ca"))?;
        params.serial_number = Some(ephemeral_serial(&key));
        Ok(EphemeralCa { issuer: CertifiedIssuer::self_signed(params, key)?, seed: Some(seed) })
    }

    /// Issues an identity for node `name`, like [`issue`] without extra
    /// names.
    pub fn issue(&self, name: &str) -> Result<Identity, CertError> {
        let (from, until) = match self.seed {
            Some(_) => simulation_validity(),
            None => {
                let now = OffsetDateTime::now_utc();
                (now - BACKDATE, now + Duration::days(NODE_VALIDITY_DAYS))
            }
        };
        let mut params = node_params(name, &[], &[], from, until)?;
        let key = match self.seed {
            Some(seed) => seeded_key(seed_bytes(seed, name))?,
            None => ephemeral_key()?,
        };
        params.serial_number = Some(ephemeral_serial(&key));
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            name: name.to_owned(),
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            ca: self.ca_der(),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }
}

/// The rustls server configuration for `id`: TLS 1.3 only, ALPN
/// [`ALPN`], a client certificate required and verified against `id.ca`
/// alone.
pub fn server_config(id: &Identity) -> Result<rustls::ServerConfig, CertError> {
    server_config_with(id, provider())
}

/// [`server_config`] with another crypto provider.
pub fn server_config_with(id: &Identity, provider: Arc<CryptoProvider>) -> Result<rustls::ServerConfig, CertError> {
    let roots = Arc::new(ca_roots(Path::new(CA_CERT_FILE), &id.ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The rustls client configuration for `id`: TLS 1.3 only, ALPN [`ALPN`],
/// the server verified against `id.ca` alone (for the name
/// [`SERVER_NAME`], which the dialer passes), `id.chain` presented.
pub fn client_config(id: &Identity) -> Result<rustls::ClientConfig, CertError> {
    client_config_with(id, provider())
}

/// [`client_config`] with another crypto provider.
pub fn client_config_with(id: &Identity, provider: Arc<CryptoProvider>) -> Result<rustls::ClientConfig, CertError> {
    let roots = ca_roots(Path::new(CA_CERT_FILE), &id.ca)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The quinn server configuration for `id` (see [`server_config`]), with
/// quinn's default transport settings.
pub fn quinn_server_config(id: &Identity) -> Result<quinn::ServerConfig, CertError> {
    quinn_server_config_with(id, provider())
}

/// [`quinn_server_config`] with another crypto provider.
pub fn quinn_server_config_with(
    id: &Identity,
    provider: Arc<CryptoProvider>,
) -> Result<quinn::ServerConfig, CertError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_config_with(id, provider)?)?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// The quinn client configuration for `id` (see [`client_config`]), with
/// quinn's default transport settings. Dial with [`SERVER_NAME`] as the
/// server name.
pub fn quinn_client_config(id: &Identity) -> Result<quinn::ClientConfig, CertError> {
    quinn_client_config_with(id, provider())
}

/// [`quinn_client_config`] with another crypto provider.
pub fn quinn_client_config_with(
    id: &Identity,
    provider: Arc<CryptoProvider>,
) -> Result<quinn::ClientConfig, CertError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_config_with(id, provider)?)?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// The crypto provider peers use unless told otherwise: ring's.
pub fn default_provider() -> Arc<CryptoProvider> {
    provider()
}

/// The node name of the peer of `conn`: the common name (or else the first
/// DNS name other than [`SERVER_NAME`]) of its end-entity certificate.
/// `None` before the handshake or if the peer presented no certificate.
///
/// Under TLS 1.3 a server may still reject the client after the client's
/// handshake completed: the name is trustworthy once the first exchange on
/// the connection (the hello) has succeeded.
pub fn peer_name(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    cert_node_name(chain.first()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration as StdDuration;

    /// A unique temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let nanos = crate::env::system_ms();
            let path = std::env::temp_dir().join(format!("meshcache-tls-{tag}-{}-{n}-{nanos}", std::process::id()));
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        /// A path inside the directory that does not exist yet.
        fn sub(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn parse(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
        x509_parser::parse_x509_certificate(der).unwrap().1
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_issue_load_round_trip() {
        let tmp = TempDir::new("roundtrip");
        let dir = tmp.sub("certs"); // init creates it
        let ca = init_ca(&dir, false).unwrap();
        assert_eq!(ca, dir.join("ca.crt"));
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        let dns = vec!["a.example".to_owned()];
        let (crt, key) = issue(&dir, "node-a", &ips, &dns, false).unwrap();
        assert_eq!((crt.clone(), key.clone()), (dir.join("node-a.crt"), dir.join("node-a.key")));
        #[cfg(unix)]
        {
            assert_eq!(mode(&dir.join("ca.key")), 0o600);
            assert_eq!(mode(&key), 0o600);
        }

        let id = load_identity(&dir, "node-a").unwrap();
        assert_eq!(id.name, "node-a");
        assert_eq!(id.chain.len(), 1);
        assert_eq!(cert_node_name(&id.chain[0]).as_deref(), Some("node-a"));
        let cert = parse(&id.chain[0]);
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|gn| gn.to_string())
            .collect();
        let want = [
            "DNSName(meshcache)",
            "DNSName(node-a)",
            "DNSName(a.example)",
            "IPAddress(7f:00:00:01)",
            "IPAddress(00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:01)",
        ];
        assert_eq!(sans, want);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let v = cert.validity();
        let days = (v.not_after.to_datetime() - v.not_before.to_datetime()).whole_hours();
        assert_eq!(days, 825 * 24 + 1);
        assert!(!cert.is_ca());
        assert!(parse(&id.ca).is_ca());
        assert_eq!(format!("{id:?}").matches("redacted").count(), 1);

        // Configurations build from a loaded identity.
        let server = server_config(&id).unwrap();
        let client = client_config(&id).unwrap();
        assert_eq!(server.alpn_protocols, vec![ALPN.to_vec()]);
        assert_eq!(client.alpn_protocols, vec![ALPN.to_vec()]);
        quinn_server_config(&id).unwrap();
        quinn_client_config(&id.clone()).unwrap();
    }

    #[test]
    fn unusual_but_valid_names_round_trip() {
        let tmp = TempDir::new("names");
        init_ca(&tmp.0, false).unwrap();
        for name in ["n", "node_1", "-x", "a.b.c", "10.0.0.1", "meshcache", &"z".repeat(63)] {
            issue(&tmp.0, name, &[], &[], false).unwrap();
            let id = load_identity(&tmp.0, name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(cert_node_name(&id.chain[0]).as_deref(), Some(name));
        }
    }

    #[test]
    fn invalid_names_are_refused() {
        let tmp = TempDir::new("badnames");
        init_ca(&tmp.0, false).unwrap();
        for name in ["", "a/b", "../x", ".hidden", "ca", "CA", "sp ace", "ü", &"z".repeat(64)] {
            let err = issue(&tmp.0, name, &[], &[], false).unwrap_err();
            assert!(matches!(err, CertError::InvalidName { .. }), "{name:?}: {err}");
            assert!(err.to_string().contains("1 to 63 characters"), "{err}");
            assert!(EphemeralCa::new().unwrap().issue(name).is_err());
        }
        let err = issue(&tmp.0, "ok", &[], &["bad name ü".into()], false).unwrap_err();
        assert!(matches!(err, CertError::InvalidSan { .. }), "{err}");
        assert!(!tmp.0.join("ok.crt").exists() && !tmp.0.join("ok.key").exists());
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let tmp = TempDir::new("force");
        init_ca(&tmp.0, false).unwrap();
        let first = fs::read(tmp.0.join("ca.crt")).unwrap();
        let err = init_ca(&tmp.0, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(fs::read(tmp.0.join("ca.crt")).unwrap(), first, "refusal must not touch the CA");

        issue(&tmp.0, "n1", &[], &[], false).unwrap();
        let err = issue(&tmp.0, "n1", &[], &[], false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        issue(&tmp.0, "n1", &[], &[], true).unwrap();
        load_identity(&tmp.0, "n1").unwrap();

        // A forced re-init replaces the CA, so old node certificates no longer load.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(tmp.0.join("ca.key"), fs::Permissions::from_mode(0o644)).unwrap();
        }
        init_ca(&tmp.0, true).unwrap();
        assert_ne!(fs::read(tmp.0.join("ca.crt")).unwrap(), first);
        #[cfg(unix)]
        assert_eq!(mode(&tmp.0.join("ca.key")), 0o600, "force must re-tighten an existing key file");
        let err = load_identity(&tmp.0, "n1").unwrap_err();
        assert!(matches!(err, CertError::WrongCa { .. }), "{err}");
    }

    #[test]
    fn issue_without_ca_says_certs_init() {
        let tmp = TempDir::new("noca");
        let err = issue(&tmp.0, "n1", &[], &[], false).unwrap_err();
        assert!(matches!(err, CertError::MissingCa { .. }), "{err}");
        assert!(err.to_string().contains("meshcache certs init"), "{err}");
        assert!(!tmp.0.join("n1.key").exists());

        let err = load_identity(&tmp.0, "n1").unwrap_err();
        assert!(err.to_string().contains("meshcache certs init"), "{err}");
        init_ca(&tmp.0, false).unwrap();
        let err = load_identity(&tmp.0, "n1").unwrap_err();
        assert!(matches!(err, CertError::MissingNodeFile { .. }), "{err}");
        assert!(err.to_string().contains("meshcache certs issue n1"), "{err}");
    }

    #[test]
    fn garbage_files_are_named() {
        let tmp = TempDir::new("garbage");
        init_ca(&tmp.0, false).unwrap();
        issue(&tmp.0, "n1", &[], &[], false).unwrap();
        let good_crt = fs::read(tmp.0.join("n1.crt")).unwrap();

        // Not PEM at all, and PEM with a broken body.
        let broken = "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n";
        for garbage in ["hello, world\n", broken] {
            fs::write(tmp.0.join("n1.crt"), garbage).unwrap();
            let err = load_identity(&tmp.0, "n1").unwrap_err();
            assert!(matches!(err, CertError::BadPem { .. }), "{err}");
            assert!(err.to_string().contains(&tmp.0.join("n1.crt").display().to_string()), "{err}");
        }
        // Valid PEM, but the DER inside is not a certificate.
        let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        fs::write(tmp.0.join("n1.crt"), not_der).unwrap();
        let err = load_identity(&tmp.0, "n1").unwrap_err();
        assert!(err.to_string().contains("n1.crt"), "{err}");
        fs::write(tmp.0.join("n1.crt"), &good_crt).unwrap();

        fs::write(tmp.0.join("n1.key"), "garbage").unwrap();
        let err = load_identity(&tmp.0, "n1").unwrap_err();
        assert!(err.to_string().contains(&tmp.0.join("n1.key").display().to_string()), "{err}");

        fs::write(tmp.0.join("ca.crt"), "garbage").unwrap();
        let err = load_identity(&tmp.0, "n1").unwrap_err();
        assert!(err.to_string().contains(&tmp.0.join("ca.crt").display().to_string()), "{err}");

        let tmp2 = TempDir::new("garbage-ca-key");
        init_ca(&tmp2.0, false).unwrap();
        fs::write(tmp2.0.join("ca.key"), "garbage").unwrap();
        let err = issue(&tmp2.0, "n1", &[], &[], false).unwrap_err();
        assert!(matches!(err, CertError::BadCaKey { .. }), "{err}");
        assert!(err.to_string().contains("ca.key"), "{err}");
    }

    #[test]
    fn ca_key_must_match_ca_cert() {
        let (a, b) = (TempDir::new("cakey-a"), TempDir::new("cakey-b"));
        init_ca(&a.0, false).unwrap();
        init_ca(&b.0, false).unwrap();
        fs::copy(b.0.join("ca.key"), a.0.join("ca.key")).unwrap();
        let err = issue(&a.0, "n1", &[], &[], false).unwrap_err();
        assert!(matches!(err, CertError::BadCaKey { .. }), "{err}");
        assert!(err.to_string().contains("not the key of ca.crt"), "{err}");
    }

    #[test]
    fn key_must_match_cert() {
        let tmp = TempDir::new("keymatch");
        init_ca(&tmp.0, false).unwrap();
        issue(&tmp.0, "n1", &[], &[], false).unwrap();
        issue(&tmp.0, "n2", &[], &[], false).unwrap();
        fs::copy(tmp.0.join("n2.key"), tmp.0.join("n1.key")).unwrap();
        let err = load_identity(&tmp.0, "n1").unwrap_err();
        assert!(matches!(err, CertError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("n1.key") && err.to_string().contains("n1.crt"), "{err}");
    }

    #[test]
    fn cert_from_another_ca_is_refused() {
        let (ours, theirs) = (TempDir::new("ca-ours"), TempDir::new("ca-theirs"));
        init_ca(&ours.0, false).unwrap();
        init_ca(&theirs.0, false).unwrap();
        issue(&theirs.0, "n1", &[], &[], false).unwrap();
        for ext in ["crt", "key"] {
            fs::copy(theirs.0.join(format!("n1.{ext}")), ours.0.join(format!("n1.{ext}"))).unwrap();
        }
        let err = load_identity(&ours.0, "n1").unwrap_err();
        assert!(matches!(err, CertError::WrongCa { .. }), "{err}");
        assert!(err.to_string().contains("not issued by the cluster CA"), "{err}");
    }

    #[test]
    fn renamed_cert_is_refused() {
        let tmp = TempDir::new("renamed");
        init_ca(&tmp.0, false).unwrap();
        issue(&tmp.0, "n1", &[], &[], false).unwrap();
        fs::copy(tmp.0.join("n1.crt"), tmp.0.join("n2.crt")).unwrap();
        fs::copy(tmp.0.join("n1.key"), tmp.0.join("n2.key")).unwrap();
        let err = load_identity(&tmp.0, "n2").unwrap_err();
        assert!(matches!(err, CertError::Unusable { .. }), "{err}");
        assert!(err.to_string().contains("\"n1\""), "{err}");
    }

    #[test]
    fn expired_and_future_certs_name_their_dates() {
        let tmp = TempDir::new("expired");
        init_ca(&tmp.0, false).unwrap();
        let at = |y, m, d, hh, mm, ss| {
            time::Date::from_calendar_date(y, m, d).unwrap().with_hms(hh, mm, ss).unwrap().assume_utc()
        };
        let nb = at(2020, time::Month::January, 2, 3, 4, 5);
        let na = at(2021, time::Month::June, 7, 8, 9, 10);
        issue_with_validity(&tmp.0, "old", &[], &[], false, nb, na).unwrap();
        let err = load_identity(&tmp.0, "old").unwrap_err();
        assert!(matches!(err, CertError::Expired { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("2020-01-02 03:04:05 UTC") && msg.contains("2021-06-07 08:09:10 UTC"), "{msg}");
        assert!(msg.contains("old.crt") && msg.contains("expired"), "{msg}");

        let now = OffsetDateTime::now_utc();
        issue_with_validity(&tmp.0, "new", &[], &[], false, now + Duration::days(2), now + Duration::days(9)).unwrap();
        let err = load_identity(&tmp.0, "new").unwrap_err();
        assert!(matches!(err, CertError::NotYetValid { .. }), "{err}");
        assert!(err.to_string().contains(&fmt_time(now + Duration::days(2))), "{err}");
    }

    #[test]
    fn dev_identity_creates_once() {
        let tmp = TempDir::new("dev");
        let dir = tmp.sub("dev-certs");
        let (a, created) = dev_identity(&dir, "a").unwrap();
        assert!(created);
        let (a2, created) = dev_identity(&dir, "a").unwrap();
        assert!(!created);
        assert_eq!(a.chain, a2.chain);
        let (b, created) = dev_identity(&dir, "b").unwrap();
        assert!(created, "a new node in an existing directory");
        assert_eq!(a.ca, b.ca, "one CA per directory");
        #[cfg(unix)]
        assert_eq!(mode(&dir.join("b.key")), 0o600);

        fs::remove_file(dir.join("b.key")).unwrap();
        let err = dev_identity(&dir, "b").unwrap_err();
        assert!(matches!(err, CertError::HalfPair { .. }), "{err}");
        assert!(dir.join("b.crt").exists(), "a half pair is never silently replaced");
    }

    #[test]
    fn ephemeral_ca_issues_loadable_identities() {
        let ca = EphemeralCa::new().unwrap();
        let id = ca.issue("eph").unwrap();
        assert_eq!(id.ca, ca.ca_der());
        let pem_ca = rustls_pemfile::certs(&mut ca.ca_pem().as_bytes()).next().unwrap().unwrap();
        assert_eq!(pem_ca, id.ca);
        assert_eq!(cert_node_name(&id.chain[0]).as_deref(), Some("eph"));
        assert!(key_matches(&id.chain[0], &id.key).unwrap());
        verify_chain(Path::new("ca.crt"), Path::new("eph.crt"), &id.ca, &id.chain).unwrap();
        let other = EphemeralCa::new().unwrap().issue("eph").unwrap();
        let err = verify_chain(Path::new("ca.crt"), Path::new("eph.crt"), &id.ca, &other.chain).unwrap_err();
        assert!(matches!(err, CertError::WrongCa { .. }), "{err}");
    }

    // ---- real QUIC over loopback ----

    const WAIT: StdDuration = StdDuration::from_secs(10);

    /// What the server saw of the one connection attempt. (The strings are
    /// read only through `Debug`, in assertion messages.)
    #[derive(Debug)]
    #[allow(dead_code)]
    enum Served {
        /// The handshake failed on the server.
        Refused(String),
        /// The connection was accepted but no stream with data arrived.
        NoStream(String),
        /// A stream with data arrived (and was answered).
        Data { peer: Option<String>, data: Vec<u8> },
    }

    /// Runs one server (accepting one connection) and one client against
    /// it. Returns the client's outcome (reply and server name, or the
    /// error) and what the server saw.
    async fn exchange(
        server_cfg: quinn::ServerConfig,
        client_cfg: quinn::ClientConfig,
    ) -> (Result<(Vec<u8>, Option<String>), String>, Served) {
        let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        let accepting = server.clone();
        let server_task = tokio::spawn(async move {
            let incoming = accepting.accept().await.expect("endpoint open");
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => return Served::Refused(e.to_string()),
            };
            let peer = peer_name(&conn);
            let (mut send, mut recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(e) => return Served::NoStream(e.to_string()),
            };
            let data = match recv.read_to_end(1024).await {
                Ok(d) => d,
                Err(e) => return Served::NoStream(e.to_string()),
            };
            let mut reply = b"pong:".to_vec();
            reply.extend_from_slice(&data);
            let _ = send.write_all(&reply).await;
            let _ = send.finish();
            // Keep the connection until the client has read the reply and closed.
            let _ = conn.closed().await;
            Served::Data { peer, data }
        });

        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(client_cfg);
        let client_run = async {
            let conn = client.connect(addr, SERVER_NAME).map_err(|e| format!("connect: {e}"))?.await;
            let conn = conn.map_err(|e| format!("handshake: {e}"))?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("open_bi: {e}"))?;
            send.write_all(b"ping").await.map_err(|e| format!("write: {e}"))?;
            send.finish().map_err(|e| format!("finish: {e}"))?;
            let reply = recv.read_to_end(1024).await.map_err(|e| format!("read: {e} ({e:?})"))?;
            let name = peer_name(&conn);
            conn.close(0u32.into(), b"done");
            Ok::<_, String>((reply, name))
        };
        let client_result = tokio::time::timeout(WAIT, client_run).await.expect("client timed out");
        let served = tokio::time::timeout(WAIT, server_task).await.expect("server timed out").unwrap();
        client.close(0u32.into(), b"bye");
        server.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(WAIT, client.wait_idle()).await;
        let _ = tokio::time::timeout(WAIT, server.wait_idle()).await;
        (client_result, served)
    }

    #[tokio::test]
    async fn quic_mutual_tls_round_trip() {
        let ca = EphemeralCa::new().unwrap();
        let (alpha, beta) = (ca.issue("alpha").unwrap(), ca.issue("beta").unwrap());
        let (client, served) =
            exchange(quinn_server_config(&alpha).unwrap(), quinn_client_config(&beta).unwrap()).await;
        let (reply, server_name) = client.expect("client exchange");
        assert_eq!(reply, b"pong:ping");
        assert_eq!(server_name.as_deref(), Some("alpha"), "client sees the server's node name");
        match served {
            Served::Data { peer, data } => {
                assert_eq!(data, b"ping");
                assert_eq!(peer.as_deref(), Some("beta"), "server sees the client's node name");
            }
            other => panic!("server did not serve: {other:?}"),
        }
    }

    #[tokio::test]
    async fn quic_refuses_client_from_foreign_ca() {
        let ca = EphemeralCa::new().unwrap();
        let server = ca.issue("alpha").unwrap();
        let foreign = EphemeralCa::new().unwrap().issue("mallory").unwrap();
        // The client trusts the real CA (so it accepts the server) but
        // presents a certificate from a foreign CA.
        let client = Identity { ca: ca.ca_der(), ..foreign };
        let (result, served) =
            exchange(quinn_server_config(&server).unwrap(), quinn_client_config(&client).unwrap()).await;
        // The client's handshake may complete (TLS 1.3): the refusal shows
        // on the first stream operation at the latest.
        assert!(result.is_err(), "client with a foreign certificate exchanged data: {result:?}");
        assert!(matches!(&served, Served::Refused(r) if r.contains("BadSignature")), "server: {served:?}");
    }

    #[tokio::test]
    async fn quic_refuses_client_without_certificate() {
        let ca = EphemeralCa::new().unwrap();
        let server = ca.issue("alpha").unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca.ca_der()).unwrap();
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let client_cfg =
            quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
        let (result, served) = exchange(quinn_server_config(&server).unwrap(), client_cfg).await;
        assert!(result.is_err(), "client without a certificate exchanged data: {result:?}");
        assert!(matches!(&served, Served::Refused(r) if r.contains("no certificates")), "server: {served:?}");
    }

    #[tokio::test]
    async fn quic_client_refuses_server_from_foreign_ca() {
        let ca = EphemeralCa::new().unwrap();
        let client = ca.issue("beta").unwrap();
        let foreign = EphemeralCa::new().unwrap().issue("alpha").unwrap();
        let (result, served) =
            exchange(quinn_server_config(&foreign).unwrap(), quinn_client_config(&client).unwrap()).await;
        let err = result.expect_err("client accepted a server from a foreign CA");
        assert!(err.starts_with("handshake:"), "the client refuses during its handshake: {err}");
        assert!(!matches!(served, Served::Data { .. }), "server: {served:?}");
    }
}
