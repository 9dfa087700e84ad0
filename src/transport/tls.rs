//! The rustls and quinn configurations for mutual TLS 1.3 between peers.
//!
//! Servers require and verify a client certificate; clients verify the
//! server against the cluster CA only. Both trust the identity's CAs alone
//! (the cluster CA, or the old and the new one during a roll-over), and
//! nothing else: no system roots.
//!
//! Under TLS 1.3 a client that the server rejects still sees the handshake
//! complete: the rejection arrives only with the first stream operation. A
//! peer counts as authenticated only after the first exchange (the hello),
//! and its name is [`peer_name`], checked against the hello.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;

use super::certs::{ca_roots, cert_node_name, provider, CertError, Identity, CA_CERT_FILE};

/// The ALPN protocol every meshcache connection negotiates.
pub const ALPN: &[u8] = b"meshcache/1";

/// The rustls server configuration for `id`: TLS 1.3 only, ALPN
/// [`ALPN`], a client certificate required and verified against `id.cas`
/// alone.
pub fn server_config(id: &Identity) -> Result<rustls::ServerConfig, CertError> {
    server_config_with(id, provider())
}

/// [`server_config`] with another crypto provider.
pub fn server_config_with(id: &Identity, provider: Arc<CryptoProvider>) -> Result<rustls::ServerConfig, CertError> {
    let roots = Arc::new(ca_roots(Path::new(CA_CERT_FILE), &id.cas)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The rustls client configuration for `id`: TLS 1.3 only, ALPN [`ALPN`],
/// the server verified against `id.cas` alone (for the name
/// [`SERVER_NAME`](super::certs::SERVER_NAME), which the dialer passes), `id.chain` presented.
pub fn client_config(id: &Identity) -> Result<rustls::ClientConfig, CertError> {
    client_config_with(id, provider())
}

/// [`client_config`] with another crypto provider.
pub fn client_config_with(id: &Identity, provider: Arc<CryptoProvider>) -> Result<rustls::ClientConfig, CertError> {
    let roots = ca_roots(Path::new(CA_CERT_FILE), &id.cas)?;
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
/// quinn's default transport settings. Dial with [`SERVER_NAME`](super::certs::SERVER_NAME) as the
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
/// DNS name other than [`SERVER_NAME`](super::certs::SERVER_NAME)) of its end-entity certificate.
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
mod tests;
