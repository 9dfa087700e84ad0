//! A seed: where a joining peer first dials, by address or by DNS name.
//!
//! A name is what a Kubernetes headless Service gives (one A or AAAA record
//! per ready pod, changing as pods come and go), so a name is not resolved
//! once: the peer resolves it again each time it would dial it, and every
//! address it returns is a seed (ALGORITHM.md, "Joining").

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest DNS name (RFC 1035: 253 characters in text form).
const MAX_NAME: usize = 253;
/// Longest DNS label (RFC 1035).
const MAX_LABEL: usize = 63;

/// A peer to join through: a socket address, or `host:port` with a DNS
/// name, resolved again on every dial round (every A and AAAA record it
/// returns is a seed). Written and parsed as text: `10.0.0.7:7946`,
/// `[::1]:7946`, `meshcache.cache.svc.cluster.local:7946`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seed {
    /// A fixed address.
    Addr(SocketAddr),
    /// A DNS name and the port to dial at each address it resolves to.
    Name {
        /// The name, as given (without a trailing dot).
        host: String,
        /// The QUIC port.
        port: u16,
    },
}

/// Why a seed was not understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    /// No `:port` at the end.
    #[error("{0:?}: a seed is ADDR:PORT or NAME:PORT (for example 10.0.0.7:7946 or meshcache.cache.svc:7946)")]
    NoPort(String),
    /// The port is not a number from 1 to 65535.
    #[error("{0:?}: the port must be a number from 1 to 65535")]
    BadPort(String),
    /// The host is neither an IP address nor a valid DNS name.
    #[error(
        "{0:?}: not an IP address or a DNS name (labels of letters, digits, '-' and '_', 1 to 63 characters \
         each, 253 in all; an IPv6 address goes in brackets: [::1]:7946)"
    )]
    BadHost(String),
}

impl Seed {
    /// The address, if this seed needs no resolving.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Seed::Addr(a) => Some(*a),
            Seed::Name { .. } => None,
        }
    }
}

impl From<SocketAddr> for Seed {
    fn from(a: SocketAddr) -> Self {
        Seed::Addr(a)
    }
}

impl FromStr for Seed {
    type Err = SeedError;

    fn from_str(s: &str) -> Result<Self, SeedError> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            if a.port() == 0 {
                return Err(SeedError::BadPort(s.to_owned()));
            }
            return Ok(Seed::Addr(a));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(SeedError::NoPort(s.to_owned()));
        };
        let port: u16 = match port.parse() {
            Ok(p) if p > 0 => p,
            _ => return Err(SeedError::BadPort(s.to_owned())),
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if !valid_name(host) {
            return Err(SeedError::BadHost(s.to_owned()));
        }
        Ok(Seed::Name { host: host.to_owned(), port })
    }
}

/// A DNS name in text form. An IP address that failed to parse as one
/// with its port (an IPv6 address without brackets, `1.2.3.4.5`) is not a
/// name either: a name that is all digits and dots, or holds a colon, would
/// only ever resolve by accident.
fn valid_name(host: &str) -> bool {
    if host.is_empty() || host.len() > MAX_NAME || host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return false;
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seed::Addr(a) => write!(f, "{a}"),
            Seed::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl Serialize for Seed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Seed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names_parse_and_print_back() {
        for (text, want) in [
            ("127.0.0.1:7946", Seed::Addr("127.0.0.1:7946".parse().unwrap())),
            ("[::1]:7946", Seed::Addr("[::1]:7946".parse().unwrap())),
            ("localhost:7946", Seed::Name { host: "localhost".into(), port: 7946 }),
            (
                "meshcache.cache.svc.cluster.local.:7946",
                Seed::Name { host: "meshcache.cache.svc.cluster.local".into(), port: 7946 },
            ),
            ("mesh_cache-0.x:1", Seed::Name { host: "mesh_cache-0.x".into(), port: 1 }),
        ] {
            let got: Seed = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string().parse::<Seed>().unwrap(), want, "{text} printed back");
        }
    }

    #[test]
    fn malformed_seeds_are_refused_with_the_reason() {
        for (text, want) in [
            ("localhost", SeedError::NoPort("localhost".into())),
            ("localhost:0", SeedError::BadPort("localhost:0".into())),
            ("127.0.0.1:0", SeedError::BadPort("127.0.0.1:0".into())),
            ("localhost:65536", SeedError::BadPort("localhost:65536".into())),
            ("localhost:x", SeedError::BadPort("localhost:x".into())),
            (":7946", SeedError::BadHost(":7946".into())),
            ("::1:7946", SeedError::BadHost("::1:7946".into())),
            ("1.2.3.4.5:7946", SeedError::BadHost("1.2.3.4.5:7946".into())),
            ("a..b:7946", SeedError::BadHost("a..b:7946".into())),
            ("-a.b:7946", SeedError::BadHost("-a.b:7946".into())),
            ("a b:7946", SeedError::BadHost("a b:7946".into())),
            ("http://a:7946", SeedError::BadHost("http://a:7946".into())),
        ] {
            assert_eq!(text.parse::<Seed>(), Err(want), "{text}");
        }
        let long = format!("{}:7946", "a".repeat(64));
        assert!(matches!(long.parse::<Seed>(), Err(SeedError::BadHost(_))));
        let long = format!("{}a:7946", "a.".repeat(127));
        assert!(matches!(long.parse::<Seed>(), Err(SeedError::BadHost(_))));
    }
}
