//! The shell's one source of time and randomness.
//!
//! The core takes time as an argument and randomness as a seed; the shell
//! gets both from an [`Env`], and from nowhere else. The default reads the
//! system clock and seeds from OS entropy. A simulation passes its own
//! clock and a seed, and then every reading the mesh makes (HLC physical
//! time, TTL expiry, arrival times, `synced` watermarks, incarnation start
//! times, node ids, the jitter of anti-entropy and redial, the choice of
//! anti-entropy peer) comes from the simulation, so that one seed replays
//! one run exactly.
//!
//! Timers are not here: they use tokio's clock ([`Env::instant`]), which a
//! paused or simulated runtime moves.

use std::fmt;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::locks::Mutex;

type Clock = dyn Fn() -> u64 + Send + Sync;

/// Where the shell reads the time and draws random numbers. Cheap to clone;
/// clones share the clock and the generator.
#[derive(Clone)]
pub struct Env {
    clock: Arc<Clock>,
    /// One generator for the whole peer, so that a seed fixes every draw in
    /// the order the peer makes them.
    rng: Arc<Mutex<SmallRng>>,
    seeded: bool,
}

impl Default for Env {
    fn default() -> Self {
        Env::real()
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Env").field("seeded", &self.seeded).field("now_ms", &self.now_ms()).finish()
    }
}

impl Env {
    /// The system clock and OS entropy.
    pub fn real() -> Env {
        Env { clock: Arc::new(system_ms), rng: Arc::new(Mutex::new(SmallRng::from_os_rng())), seeded: false }
    }

    /// `clock` (Unix milliseconds) and a generator seeded with `seed`: a
    /// simulation's virtual time and its schedule's seed.
    pub fn new(clock: impl Fn() -> u64 + Send + Sync + 'static, seed: u64) -> Env {
        Env { clock: Arc::new(clock), rng: Arc::new(Mutex::new(SmallRng::seed_from_u64(seed))), seeded: true }
    }

    /// Unix time in milliseconds.
    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// tokio's clock, for deadlines and timers (a simulated runtime moves
    /// it).
    pub fn instant(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }

    /// A random `u64`.
    pub fn random_u64(&self) -> u64 {
        self.rng.lock().random()
    }

    /// A uniform draw from `[lo, hi)`.
    pub fn random_f64(&self, lo: f64, hi: f64) -> f64 {
        self.rng.lock().random_range(lo..hi)
    }

    /// A uniform index below `n` (`n > 0`).
    pub fn random_index(&self, n: usize) -> usize {
        self.rng.lock().random_range(0..n)
    }

    /// A generator of its own for a component, seeded from this one.
    pub fn rng(&self) -> SmallRng {
        SmallRng::seed_from_u64(self.random_u64())
    }

    /// Whether the generator was seeded by the caller (a simulation).
    pub fn is_seeded(&self) -> bool {
        self.seeded
    }
}

/// Unix time in milliseconds from the system clock: the real
/// implementation's clock, and the only place `src/` reads it.
pub fn system_ms() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Elapsed-time measurement for reports and benchmarks (the demo, test
/// helpers): tokio's clock, which outside a paused runtime is the
/// monotonic system clock.
pub fn stopwatch() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_fixes_every_draw() {
        let a = Env::new(|| 7, 42);
        let b = Env::new(|| 7, 42);
        let da: Vec<u64> = (0..8).map(|_| a.random_u64()).collect();
        let db: Vec<u64> = (0..8).map(|_| b.random_u64()).collect();
        assert_eq!(da, db);
        assert_eq!(a.now_ms(), 7);
        let c = Env::new(|| 7, 43);
        assert_ne!(da[0], c.random_u64());
    }

    #[test]
    fn clones_share_one_generator() {
        let a = Env::new(|| 0, 1);
        let b = a.clone();
        let x = a.random_u64();
        let y = b.random_u64();
        let fresh = Env::new(|| 0, 1);
        assert_eq!(x, fresh.random_u64());
        assert_eq!(y, fresh.random_u64());
    }
}
