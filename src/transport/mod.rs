//! The network transport: QUIC with mutual TLS 1.3 against the cluster CA.

pub mod faults;
pub(crate) mod seeded;
pub mod tls;
