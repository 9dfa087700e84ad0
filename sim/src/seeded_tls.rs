//! A TLS crypto provider whose randomness is seeded, for simulations that
//! must replay exactly: ring's provider draws the handshake's randoms and
//! its X25519 keys from the OS, and those bytes decide, among other
//! things, how a peer reads a stray Initial datagram. Everything else
//! (ciphers, signatures, verification) stays ring's.
//!
//! Test-only by design: seeded keys are predictable keys.

use std::sync::Arc;

use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, GetRandomFailed, SecureRandom, SharedSecret, SupportedKxGroup,
};
use rustls::NamedGroup;

#[derive(Debug)]
struct SeededRandom(Mutex<SmallRng>);

impl SecureRandom for SeededRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        self.0.lock().fill_bytes(buf);
        Ok(())
    }
}

#[derive(Debug)]
struct SeededX25519(Mutex<SmallRng>);

struct Exchange {
    secret: x25519_dalek::StaticSecret,
    public: [u8; 32],
}

impl SupportedKxGroup for SeededX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let mut bytes = [0u8; 32];
        self.0.lock().fill_bytes(&mut bytes);
        let secret = x25519_dalek::StaticSecret::from(bytes);
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Ok(Box::new(Exchange { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

impl ActiveKeyExchange for Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let peer: [u8; 32] =
            peer.try_into().map_err(|_| rustls::Error::General("X25519 share of the wrong length".into()))?;
        let shared = self.secret.diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        Ok(SharedSecret::from(&shared.as_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// ring's provider with its randomness and key exchange drawn from `seed`.
/// The provider wants `'static` parts: each call leaks two small objects,
/// once per simulated peer start.
pub fn seeded_provider(seed: u64) -> Arc<CryptoProvider> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let random: &'static SeededRandom =
        Box::leak(Box::new(SeededRandom(Mutex::new(SmallRng::seed_from_u64(rng.next_u64())))));
    let kx: &'static SeededX25519 =
        Box::leak(Box::new(SeededX25519(Mutex::new(SmallRng::seed_from_u64(rng.next_u64())))));
    Arc::new(CryptoProvider { kx_groups: vec![kx], secure_random: random, ..rustls::crypto::ring::default_provider() })
}
