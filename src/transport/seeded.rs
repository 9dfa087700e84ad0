//! quinn's own draws from the peer's [`Env`], for a seeded run.
//!
//! quinn draws connection ids, the client's first destination id, the
//! stateless-reset key and address-validation tokens from the thread RNG
//! and the system clock. Those bytes are not only names: the first
//! destination id derives the keys of the handshake's Initial packets, and
//! every byte inside a packet changes its ciphertext, which decides how a
//! peer reads a stray Initial datagram (one left over from an earlier
//! incarnation, say). A simulation that is to replay from its seed draws
//! them from the env instead.

use std::sync::Arc;
use std::time::Duration;

use quinn::{ConnectionId, ConnectionIdGenerator};
use rand::rngs::SmallRng;
use rand::RngCore;

use crate::env::Env;

/// quinn's default connection id length.
const CID_LEN: usize = 8;
/// RFC 9000's minimum for a client's first destination id.
const INITIAL_DCID_LEN: usize = 20;

/// Draws connection ids from a generator seeded by the env.
struct SeededCids {
    rng: SmallRng,
}

impl ConnectionIdGenerator for SeededCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut b = [0u8; CID_LEN];
        self.rng.fill_bytes(&mut b);
        ConnectionId::new(&b)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Where a client configuration's first destination ids come from.
pub(crate) type DstCids = Arc<dyn Fn() -> ConnectionId + Send + Sync>;

/// An endpoint configuration whose generator, reset key and connection ids
/// come from `env`, and a client configuration whose first destination ids
/// do (returned too, for the client configurations made later).
pub(crate) fn seed_quinn(
    env: &Env,
    server: &mut quinn::ServerConfig,
    client: &mut quinn::ClientConfig,
) -> (quinn::EndpointConfig, DstCids) {
    let mut key = [0u8; 64];
    env.rng().fill_bytes(&mut key);
    let mut endpoint = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key)));
    let mut seed = [0u8; 32];
    env.rng().fill_bytes(&mut seed);
    endpoint.rng_seed(Some(seed));
    // Address-validation tokens carry the system time and a key drawn from
    // the thread RNG; a simulated peer sends none (they only spare a
    // returning client one round trip).
    let mut tokens = quinn::ValidationTokenConfig::default();
    tokens.sent(0);
    server.validation_token_config(tokens);
    let factory_env = env.clone();
    endpoint.cid_generator(move || Box::new(SeededCids { rng: factory_env.rng() }));
    let rng = crate::locks::Mutex::new(env.rng());
    let dst_cids: DstCids = Arc::new(move || {
        let mut b = [0u8; INITIAL_DCID_LEN];
        rng.lock().fill_bytes(&mut b);
        ConnectionId::new(&b)
    });
    client.initial_dst_cid_provider(dst_cids.clone());
    (endpoint, dst_cids)
}
