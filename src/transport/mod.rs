//! The network transport: QUIC with mutual TLS 1.3 against the cluster CA.
//!
//! [`certs`] makes, loads and checks the certificate files and identities;
//! [`tls`] turns an identity into rustls and quinn configurations;
//! [`socket`] binds the UDP socket a peer's endpoint runs on.

pub mod certs;
#[cfg(any(test, feature = "faults"))]
pub mod faults;
pub(crate) mod seeded;
pub mod socket;
pub mod tls;
