//! A peer's TLS material, and swapping it while the peer runs
//! ([`Mesh::reload_tls`]): certificate rotation and CA roll-over without a
//! restart.
//!
//! The endpoint's server configuration decides new incoming handshakes
//! only, and a dial takes the client configuration current when it starts:
//! connections already up keep the material they were made with until they
//! close. Nothing else holds the identity: a peer's name is read from the
//! certificate it presents on each connection (`tls::peer_name`), never
//! from this peer's own.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

use super::{Mesh, MeshError};
use crate::locks::{Mutex, RwLock};
use crate::transport::certs::{check_identity, CertInfo, Identity};
use crate::transport::seeded::DstCids;
use crate::transport::tls;

/// The peer's TLS material: what new connections use, and how to make it
/// again from another identity with the same settings.
pub(super) struct Tls {
    provider: Arc<CryptoProvider>,
    transport: Arc<quinn::TransportConfig>,
    /// A seeded run's first destination ids (see `transport::seeded`), so
    /// that the dials of a reload draw from the same source.
    dst_cids: Option<DstCids>,
    /// The server side's settings (transport, validation tokens) with the
    /// current crypto; a reload replaces only the crypto.
    server: Mutex<quinn::ServerConfig>,
    /// Cloned by every dial; the lock is held for that clone or the swap
    /// only, never across an `.await`.
    client: RwLock<quinn::ClientConfig>,
    info: RwLock<Option<CertInfo>>,
}

impl Tls {
    /// The material a peer starts with: the configurations made from its
    /// first identity (`info` is its summary), the provider and transport
    /// settings they were made with, and in a seeded run the first
    /// destination ids its dials draw.
    pub(super) fn new(
        provider: Arc<CryptoProvider>,
        transport: Arc<quinn::TransportConfig>,
        dst_cids: Option<DstCids>,
        server: quinn::ServerConfig,
        client: quinn::ClientConfig,
        info: Option<CertInfo>,
    ) -> Tls {
        Tls {
            provider,
            transport,
            dst_cids,
            server: Mutex::new(server),
            client: RwLock::new(client),
            info: RwLock::new(info),
        }
    }

    /// The client configuration for a dial starting now.
    pub(super) fn client(&self) -> quinn::ClientConfig {
        self.client.read().clone()
    }

    /// The certificate in use.
    pub(super) fn info(&self) -> Option<CertInfo> {
        self.info.read().clone()
    }

    /// Makes both configurations from `identity` and installs them: the
    /// server's on `endpoint` for the handshakes that start from now on,
    /// the client's for the dials that do. Nothing is installed unless both
    /// could be made.
    fn install(&self, identity: &Identity, endpoint: &quinn::Endpoint) -> Result<(), MeshError> {
        let server_crypto = tls::server_config_with(identity, self.provider.clone())?;
        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_crypto)
            .map_err(crate::transport::certs::CertError::from)?;
        let mut client = tls::quinn_client_config_with(identity, self.provider.clone())?;
        client.transport_config(self.transport.clone());
        if let Some(dst_cids) = &self.dst_cids {
            client.initial_dst_cid_provider(dst_cids.clone());
        }
        // One reload at a time: two racing would otherwise leave the server
        // side of one and the client side of the other.
        let mut server = self.server.lock();
        server.crypto = Arc::new(server_crypto);
        endpoint.set_server_config(Some(server.clone()));
        *self.client.write() = client;
        *self.info.write() = identity.info();
        Ok(())
    }
}

impl Mesh {
    /// Replaces this peer's TLS identity while it runs: its certificate and
    /// key, and the CAs it trusts (several while a new CA is rolled out).
    /// Connections made from now on, both ways, use the new material;
    /// connections already up stay up with theirs until they close.
    ///
    /// The identity is checked first, as [`crate::load_identity`] checks
    /// files: it must be for this peer's name, its key must be the
    /// certificate's, its CAs must be CA certificates, and the certificate
    /// must be valid now and chain to one of them
    /// ([`check_identity`](crate::transport::certs::check_identity)). On
    /// any failure the error says what is wrong, and the peer keeps using
    /// what it had.
    ///
    /// The `meshcache` command calls this on SIGHUP and on the admin
    /// port's `reload`, with the files of its certificate directory read
    /// again.
    pub fn reload_tls(&self, identity: Identity) -> Result<(), MeshError> {
        let name = &self.inner.replica.me().name;
        if identity.name != *name {
            return Err(MeshError::NameMismatch { cert: identity.name, name: name.clone() });
        }
        check_identity(&identity)?;
        self.inner.tls.install(&identity, &self.inner.endpoint)?;
        // The caller reports it (the command logs it with the files' place).
        tracing::debug!(info = ?identity.info(), "TLS identity replaced: new connections use it");
        Ok(())
    }

    /// The certificate this peer presents to new connections: its serial,
    /// its expiry and how many CAs it trusts. `None` if it cannot be
    /// parsed (a peer started with an identity never checked).
    pub fn certificate(&self) -> Option<CertInfo> {
        self.inner.tls.info()
    }
}
