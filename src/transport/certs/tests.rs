//! The certificate files: making, loading and refusing them.

use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::config::{MeshConfig, MeshConfigError};
use crate::transport::tls::{client_config, quinn_client_config, quinn_server_config, server_config, ALPN};

/// A unique temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = crate::env::system_ms();
        let path = std::env::temp_dir().join(format!("meshcache-certs-{tag}-{}-{n}-{nanos}", std::process::id()));
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
    let sans: Vec<String> =
        cert.subject_alternative_name().unwrap().unwrap().value.general_names.iter().map(|gn| gn.to_string()).collect();
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
    assert_eq!(id.cas.len(), 1);
    assert!(parse(&id.cas[0]).is_ca());
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

/// Configuration, certificates and gossip share one name rule: a
/// configuration that validates must never fail at start because its name
/// cannot be a certificate's, and a name refused here is refused there.
#[test]
fn config_and_certificates_accept_the_same_names() {
    let tmp = TempDir::new("samenames");
    init_ca(&tmp.0, false).unwrap();
    let long = "z".repeat(63);
    let too_long = "z".repeat(64);
    let names = [
        "",
        "a/b",
        "../x",
        ".hidden",
        ".x",
        "ca",
        "CA",
        "Ca",
        "sp ace",
        "ü",
        "tab\t",
        "new\nline",
        &too_long,
        "n",
        "node_1",
        "-x",
        "x-",
        "-",
        "_",
        "x.",
        "a..b",
        "a.b.c",
        "10.0.0.1",
        "meshcache",
        "ca.x",
        "xca",
        &long,
    ];
    for name in names {
        let config = MeshConfig::for_test(name).validate();
        let certificate = issue(&tmp.0, name, &[], &[], false).and_then(|_| load_identity(&tmp.0, name));
        match (&config, &certificate) {
            (Ok(()), Ok(id)) => assert_eq!(id.name, name),
            (Err(MeshConfigError::Invalid { field: "name", .. }), Err(CertError::InvalidName { .. })) => {
                let err = load_identity(&tmp.0, name).unwrap_err();
                assert!(matches!(err, CertError::InvalidName { .. }), "{name:?}: loading says {err}");
            }
            _ => panic!("{name:?}: configuration says {config:?}, certificates say {certificate:?}"),
        }
    }
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
    assert_eq!(a.cas, b.cas, "one CA per directory");
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
    assert_eq!(id.cas, vec![ca.ca_der()]);
    let pem_ca = CertificateDer::from_pem_slice(ca.ca_pem().as_bytes()).unwrap();
    assert_eq!(vec![pem_ca], id.cas);
    assert_eq!(cert_node_name(&id.chain[0]).as_deref(), Some("eph"));
    assert!(key_matches(&id.chain[0], &id.key).unwrap());
    verify_chain(Path::new("ca.crt"), Path::new("eph.crt"), &id.cas, &id.chain).unwrap();
    let other = EphemeralCa::new().unwrap().issue("eph").unwrap();
    let err = verify_chain(Path::new("ca.crt"), Path::new("eph.crt"), &id.cas, &other.chain).unwrap_err();
    assert!(matches!(err, CertError::WrongCa { .. }), "{err}");
}

/// `ca.crt` with two CAs (a roll-over): identities of either load, both
/// CAs are trusted, and `certs issue` signs with the CA whose key is
/// `ca.key`.
#[test]
fn a_ca_bundle_trusts_every_ca_in_it() {
    let (old, new) = (TempDir::new("bundle-old"), TempDir::new("bundle-new"));
    init_ca(&old.0, false).unwrap();
    init_ca(&new.0, false).unwrap();
    issue(&old.0, "n1", &[], &[], false).unwrap();
    issue(&new.0, "n2", &[], &[], false).unwrap();
    let bundle =
        [fs::read_to_string(old.0.join("ca.crt")).unwrap(), fs::read_to_string(new.0.join("ca.crt")).unwrap()].concat();
    // The old CA's directory gets the bundle, and the new CA's node files.
    fs::write(old.0.join("ca.crt"), &bundle).unwrap();
    for ext in ["crt", "key"] {
        fs::copy(new.0.join(format!("n2.{ext}")), old.0.join(format!("n2.{ext}"))).unwrap();
    }
    let n1 = load_identity(&old.0, "n1").unwrap();
    let n2 = load_identity(&old.0, "n2").unwrap();
    assert_eq!((n1.cas.len(), n2.cas.len()), (2, 2));
    let info = n2.info().unwrap();
    assert_eq!(info.cas, 2);
    assert!(info.to_string().contains("2 trusted CAs"), "{info}");
    // ca.key is the old CA's: issuing signs with it, whatever its place.
    issue(&old.0, "n3", &[], &[], false).unwrap();
    let n3 = load_identity(&old.0, "n3").unwrap();
    let only_old = vec![n1.cas[0].clone()];
    verify_chain(Path::new("ca.crt"), Path::new("n3.crt"), &only_old, &n3.chain).unwrap();
    // And with the CAs the other way round.
    let swapped =
        [fs::read_to_string(new.0.join("ca.crt")).unwrap(), fs::read_to_string(old.0.join("ca.crt")).unwrap()].concat();
    fs::write(new.0.join("ca.crt"), swapped).unwrap();
    issue(&new.0, "n4", &[], &[], false).unwrap();
    load_identity(&new.0, "n4").unwrap();

    // Without the new CA, its node is refused.
    fs::write(old.0.join("ca.crt"), &bundle[..bundle.find("-----END CERTIFICATE-----").unwrap() + 26]).unwrap();
    load_identity(&old.0, "n1").unwrap();
    let err = load_identity(&old.0, "n2").unwrap_err();
    assert!(matches!(err, CertError::WrongCa { .. }), "{err}");
}

/// A bundle with something other than a CA in it is refused, naming the
/// file and which certificate.
#[test]
fn a_ca_bundle_with_a_node_certificate_or_garbage_is_refused() {
    let tmp = TempDir::new("bundle-bad");
    init_ca(&tmp.0, false).unwrap();
    issue(&tmp.0, "n1", &[], &[], false).unwrap();
    let ca = fs::read_to_string(tmp.0.join("ca.crt")).unwrap();
    let node = fs::read_to_string(tmp.0.join("n1.crt")).unwrap();
    fs::write(tmp.0.join("ca.crt"), format!("{ca}{node}")).unwrap();
    let err = load_identity(&tmp.0, "n1").unwrap_err();
    assert!(matches!(err, CertError::BadPem { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("ca.crt") && msg.contains("certificate 2 of 2") && msg.contains("not a CA"), "{msg}");
    fs::write(
        tmp.0.join("ca.crt"),
        format!("{ca}-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"),
    )
    .unwrap();
    let err = load_identity(&tmp.0, "n1").unwrap_err();
    assert!(matches!(err, CertError::BadPem { .. }) && err.to_string().contains("ca.crt"), "{err}");
}

/// `check_identity` refuses what `load_identity` would, for an identity
/// made in memory.
#[test]
fn check_identity_refuses_what_loading_would() {
    let (ca, other) = (EphemeralCa::new().unwrap(), EphemeralCa::new().unwrap());
    let good = ca.issue("n1").unwrap();
    check_identity(&good).unwrap();
    check_identity(&Identity { cas: vec![other.ca_der(), ca.ca_der()], ..good.clone() }).unwrap();

    let cases: Vec<(&str, Identity, &str)> = vec![
        ("key of another cert", Identity { key: ca.issue("n1").unwrap().key, ..good.clone() }, "not the private key"),
        ("cert for another name", Identity { name: "n1".into(), ..ca.issue("n2").unwrap() }, "names node \"n2\""),
        ("foreign CA", Identity { cas: vec![other.ca_der()], ..good.clone() }, "not issued by"),
        ("no CA", Identity { cas: vec![], ..good.clone() }, "no CA certificate"),
        ("garbage CA", Identity { cas: vec![CertificateDer::from(vec![1, 2, 3])], ..good.clone() }, "unparseable"),
        ("node cert as CA", Identity { cas: good.chain.clone(), ..good.clone() }, "not a CA"),
        ("no chain", Identity { chain: vec![], ..good.clone() }, "no certificate"),
        ("garbage chain", Identity { chain: vec![CertificateDer::from(vec![0x30, 0])], ..good.clone() }, "unparseable"),
    ];
    for (what, id, needle) in cases {
        let err = check_identity(&id).expect_err(what);
        assert!(err.to_string().contains(needle), "{what}: {err}");
    }
}
