//! Certificate files and identities: the cluster CA, node certificates,
//! and loading a node's identity from them.
//!
//! Every node certificate is signed by the cluster CA and carries the DNS
//! name [`SERVER_NAME`] (which every dialer verifies, since peers are dialed
//! by address), the node's own name as the common name and as a DNS name,
//! and both the ServerAuth and ClientAuth extended key usages, because each
//! node both dials and accepts. Loading an identity checks all of it, the
//! way peers will, so that a bad file fails at start with a message that
//! names it rather than at the first handshake.
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
use rustls::pki_types::pem::{Error as PemError, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, RootCertStore};
use time::{Duration, OffsetDateTime, UtcOffset};

use crate::membership::{name_problem, NAME_RULE};

/// DNS name every node certificate carries and every dialer verifies: peers are dialed by address, and
/// identity comes from the node name in the certificate, checked against the hello.
pub const SERVER_NAME: &str = "meshcache";

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
#[non_exhaustive]
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
    #[error("invalid node name {name:?}: {reason}; use {NAME_RULE}")]
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
    /// directory (by none of them, when `ca.crt` holds several).
    #[error(
        "{} was not issued by the cluster CA in {} (by none of the CAs it holds); re-issue it with \
         `meshcache certs issue NAME --force` against this CA, or point --certs at the directory of the CA \
         that issued it, or add that CA to {}",
        cert.display(),
        ca.display(),
        ca.display()
    )]
    WrongCa {
        /// The node certificate.
        cert: PathBuf,
        /// The CA certificate file it was checked against.
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

/// A node's TLS identity: its certificate chain and key, and the cluster
/// CAs it trusts.
pub struct Identity {
    /// The node name (the common name of the certificate).
    pub name: String,
    /// The certificate chain, end-entity certificate first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key of the end-entity certificate.
    pub key: PrivateKeyDer<'static>,
    /// The trust anchors: the cluster CA, or several while a new CA is
    /// rolled out (`ca.crt` may hold more than one). A peer is accepted if
    /// its certificate chains to any of them, and so is this peer's own.
    pub cas: Vec<CertificateDer<'static>>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            name: self.name.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            cas: self.cas.clone(),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("chain", &format_args!("[{} certificate(s)]", self.chain.len()))
            .field("key", &format_args!("<redacted>"))
            .field("cas", &self.cas.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// What an operator needs to know of this identity: its certificate's
    /// serial and expiry, and how many CAs it trusts. `None` if the
    /// certificate cannot be parsed (an identity that
    /// [`check_identity`] refuses).
    pub fn info(&self) -> Option<CertInfo> {
        let (_, cert) = x509_parser::parse_x509_certificate(self.chain.first()?).ok()?;
        Some(CertInfo {
            serial: cert.raw_serial_as_string(),
            not_after: cert.validity().not_after.to_datetime(),
            cas: self.cas.len(),
        })
    }
}

/// A summary of an [`Identity`], for logs and the admin port: which
/// certificate is in use, until when, and how many CAs are trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertInfo {
    /// The certificate's serial number, as colon-separated hex.
    pub serial: String,
    /// The end of the certificate's validity.
    pub not_after: OffsetDateTime,
    /// How many CA certificates are trusted.
    pub cas: usize,
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.cas == 1 { "" } else { "s" };
        write!(f, "serial {}, valid until {}, {} trusted CA{plural}", self.serial, fmt_time(self.not_after), self.cas)
    }
}

/// ring's crypto provider, named explicitly (with more than one provider
/// linked, rustls cannot pick a process default). Certificates are checked
/// with it here, and peers use it unless told otherwise
/// ([`super::tls::default_provider`]).
pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Refuses a name no member can have ([`name_problem`]): the rule that
/// configuration, hellos and gossip apply too, so that a configuration
/// that validates never fails here at start.
fn check_name(name: &str) -> Result<(), CertError> {
    match name_problem(name) {
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
    check_name(name)?;
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
    let certs = CertificateDer::pem_slice_iter(pem)
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
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(PemError::NoItemsFound) => Err(bad("it holds no \"BEGIN PRIVATE KEY\" block".into())),
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
/// The node name in a certificate: its common name, or else its first DNS
/// name other than [`SERVER_NAME`].
pub(super) fn cert_node_name(der: &[u8]) -> Option<String> {
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

/// Loads the CA of `dir` as an rcgen issuer: the certificate of `ca.crt`
/// whose key is `ca.key` (during a roll-over `ca.crt` may hold the old CA
/// beside the new one).
fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    let (crt, key_path) = (ca_cert_path(dir), ca_key_path(dir));
    let ca_pem = read_file(&crt, || CertError::MissingCa { path: crt.clone() })?;
    let key_pem = read_file(&key_path, || CertError::MissingCa { path: key_path.clone() })?;
    let cas = parse_ca_bundle(&crt, &ca_pem)?;
    let bad_key = |detail: String| CertError::BadCaKey { path: key_path.clone(), detail };
    let key_der = parse_key(&key_path, &key_pem).map_err(|e| bad_key(e.to_string()))?;
    let mut ca = None;
    for c in &cas {
        match key_matches(c, &key_der) {
            Ok(true) => {
                ca = Some(c);
                break;
            }
            Ok(false) => {}
            Err(e) => return Err(bad_key(format!("unusable key ({e})"))),
        }
    }
    let Some(ca) = ca else {
        let which =
            if cas.len() == 1 { String::new() } else { format!(" (of none of its {} certificates)", cas.len()) };
        return Err(bad_key(format!("it is not the key of ca.crt{which}")));
    };
    let key = KeyPair::try_from(&key_der).map_err(|e| bad_key(format!("unusable key ({e})")))?;
    Issuer::from_ca_cert_der(ca, key).map_err(|e| CertError::BadPem {
        path: crt.clone(),
        what: "CA certificate",
        detail: format!("rcgen cannot sign with it ({e})"),
    })
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
/// `NAME.key`. `ca.crt` may hold several CA certificates (PEM blocks one
/// after the other), all of them trusted: that is how a new CA is rolled
/// out before the old one is retired.
///
/// Checks that the key belongs to the certificate, that the certificate is
/// within its validity period, was signed by one of these CAs, carries
/// [`SERVER_NAME`] and both key usages, and names `name`.
pub fn load_identity(dir: &Path, name: &str) -> Result<Identity, CertError> {
    check_name(name)?;
    let ca_path = ca_cert_path(dir);
    let crt = node_cert_path(dir, name);
    let key_path = node_key_path(dir, name);
    let missing_node = |path: &Path| CertError::MissingNodeFile { path: path.to_owned(), name: name.to_owned() };

    let ca_pem = read_file(&ca_path, || CertError::MissingCa { path: ca_path.clone() })?;
    let crt_pem = read_file(&crt, || missing_node(&crt))?;
    let key_pem = read_file(&key_path, || missing_node(&key_path))?;
    let cas = parse_ca_bundle(&ca_path, &ca_pem)?;
    let chain = parse_certs(&crt, &crt_pem)?;
    let key = parse_key(&key_path, &key_pem)?;
    let id = Identity { name: name.to_owned(), chain, key, cas };
    check_at(&id, &ca_path, &crt, &key_path)?;
    Ok(id)
}

/// Checks an identity made in memory (not read from files) the way
/// [`load_identity`] checks files, before a peer uses it: the key belongs
/// to the certificate, the certificate is within its validity period,
/// chains to one of `cas`, carries [`SERVER_NAME`] and both key usages, and
/// names `id.name`; every CA certificate is usable as a trust anchor.
/// Errors name the files the parts would have in a certificate directory
/// (`ca.crt`, `NAME.crt`, `NAME.key`).
pub fn check_identity(id: &Identity) -> Result<(), CertError> {
    check_name(&id.name)?;
    let ca_path = PathBuf::from(CA_CERT_FILE);
    let (crt, key_path) = (PathBuf::from(format!("{}.crt", id.name)), PathBuf::from(format!("{}.key", id.name)));
    if id.chain.is_empty() {
        return Err(CertError::BadPem {
            path: crt,
            what: "PEM certificate file",
            detail: "it holds no certificate".into(),
        });
    }
    for cert in &id.chain {
        x509_parser::parse_x509_certificate(cert).map_err(|e| CertError::BadPem {
            path: crt.clone(),
            what: "PEM certificate file",
            detail: format!("unparseable certificate ({e})"),
        })?;
    }
    check_cas(&ca_path, &id.cas)?;
    check_at(id, &ca_path, &crt, &key_path)
}

/// What [`load_identity`] and [`check_identity`] check once the parts
/// parse, naming the files they came from.
fn check_at(id: &Identity, ca_path: &Path, crt: &Path, key_path: &Path) -> Result<(), CertError> {
    let (name, chain, key) = (id.name.as_str(), &id.chain, &id.key);
    let (crt, key_path) = (crt.to_owned(), key_path.to_owned());
    match key_matches(&chain[0], key) {
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
    verify_chain(ca_path, &crt, &id.cas, chain)?;

    match cert_node_name(&chain[0]) {
        Some(n) if n == name => Ok(()),
        other => Err(CertError::Unusable {
            path: crt,
            detail: format!("it names node {:?}, not {name:?}", other.unwrap_or_default()),
        }),
    }
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

/// Verifies `chain` against the CAs `cas` exactly as peers will: as a
/// client certificate and as a server certificate for [`SERVER_NAME`].
fn verify_chain(
    ca_path: &Path,
    crt: &Path,
    cas: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
) -> Result<(), CertError> {
    let roots = Arc::new(ca_roots(ca_path, cas)?);
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

/// A root store holding the cluster CAs `cas` and nothing else (no
/// system roots).
pub(super) fn ca_roots(ca_path: &Path, cas: &[CertificateDer<'static>]) -> Result<RootCertStore, CertError> {
    if cas.is_empty() {
        return Err(no_ca(ca_path));
    }
    let mut roots = RootCertStore::empty();
    for (i, ca) in cas.iter().enumerate() {
        roots.add(ca.clone()).map_err(|e| CertError::BadPem {
            path: ca_path.to_owned(),
            what: "CA certificate file",
            detail: format!("certificate {} of {} is unusable as a trust anchor ({e})", i + 1, cas.len()),
        })?;
    }
    Ok(roots)
}

fn no_ca(ca_path: &Path) -> CertError {
    CertError::BadPem {
        path: ca_path.to_owned(),
        what: "CA certificate file",
        detail: "it holds no CA certificate".into(),
    }
}

/// Parses `ca.crt`: one CA certificate, or several while a new CA is
/// rolled out; every one must be a CA certificate.
fn parse_ca_bundle(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let cas = parse_certs(path, pem)?;
    check_cas(path, &cas)?;
    Ok(cas)
}

/// Fails unless `cas` is non-empty and each is a CA certificate usable as
/// a trust anchor: a node certificate pasted into `ca.crt` by mistake is
/// named here rather than at the first handshake.
fn check_cas(path: &Path, cas: &[CertificateDer<'static>]) -> Result<(), CertError> {
    let bad = |detail: String| CertError::BadPem { path: path.to_owned(), what: "CA certificate file", detail };
    if cas.is_empty() {
        return Err(no_ca(path));
    }
    for (i, ca) in cas.iter().enumerate() {
        let which = format!("certificate {} of {}", i + 1, cas.len());
        let (_, parsed) =
            x509_parser::parse_x509_certificate(ca).map_err(|e| bad(format!("{which} is unparseable ({e})")))?;
        if !parsed.is_ca() {
            let subject = parsed.subject().to_string();
            return Err(bad(format!("{which} ({subject}) is not a CA certificate")));
        }
    }
    ca_roots(path, cas).map(|_| ())
}

/// The identity for `node` run without `--certs`: creates `dir/ca.*` and
/// `dir/NAME.*` if they are missing, then loads. Returns whether anything
/// was created. A half pair (a certificate without its key or the reverse)
/// is an error, never silently replaced.
pub fn dev_identity(dir: &Path, name: &str) -> Result<(Identity, bool), CertError> {
    check_name(name)?;
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
    /// a stray datagram). For simulations only: its keys are predictable,
    /// which is why it exists only with the `testing` feature.
    #[cfg(any(test, feature = "testing"))]
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
            cas: vec![self.ca_der()],
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

#[cfg(test)]
mod tests;
