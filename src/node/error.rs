//! Why a mesh operation failed.

use std::net::SocketAddr;

use crate::config::MeshConfigError;
use crate::replica::WriteError;
use crate::transport::certs::CertError;
use crate::wire::VersionRange;

/// Why a mesh operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The settings are invalid; nothing was started.
    #[error(transparent)]
    Config(#[from] MeshConfigError),
    /// No TLS identity was given (`MeshBuilder::tls`).
    #[error("no TLS identity: call MeshBuilder::tls with a certificate from the cluster CA")]
    NoIdentity,
    /// The TLS identity is unusable.
    #[error(transparent)]
    Tls(#[from] CertError),
    /// The identity's certificate is for another name.
    #[error("the certificate is for {cert:?}, but this peer is named {name:?}")]
    NameMismatch {
        /// Name in the certificate.
        cert: String,
        /// Configured name.
        name: String,
    },
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A local write was refused; see [`WriteError::is_retryable`].
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The key and value are too large to replicate in one frame.
    #[error("key and value of {len} bytes exceed the largest replicable write ({max} bytes, from max_frame)")]
    TooLarge {
        /// Key plus value bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A transaction read or wrote a key it did not name when it began
    /// (or walked the keyspace without locking all of it); see
    /// [`crate::Mesh::transaction`].
    #[error("the transaction did not name this key when it began")]
    NotInTransaction,
    /// The protocol versions asked of the peer are empty or not all spoken
    /// by this build (`MeshBuilder::protocol_versions`, a test hook).
    #[error("protocol versions {asked} asked for, but this build speaks {speaks}")]
    ProtocolVersions {
        /// The versions asked for.
        asked: VersionRange,
        /// The versions this build speaks.
        speaks: VersionRange,
    },
}

impl MeshError {
    /// Whether retrying later can succeed (a peer still loading).
    pub fn is_retryable(&self) -> bool {
        matches!(self, MeshError::Write(w) if w.is_retryable())
    }
}
