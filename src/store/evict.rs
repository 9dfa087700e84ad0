//! Which values go when the store is over its memory bound: Redis's
//! `maxmemory-policy`, approximated by sampling as Redis does.
//!
//! Every entry carries one 32-bit access word, updated on each read and
//! write without taking a write lock. What the word means depends on the
//! policy family: the time of the last access (LRU), or a logarithmic
//! access counter with the minute it last decayed (LFU, Redis's "Morris
//! counter" with `lfu-log-factor` 10 and `lfu-decay-time` 1). Eviction
//! samples a few entries of a shard, keeps the best candidates in a small
//! pool per shard (Redis's eviction pool), and evicts the best one.
//!
//! A policy switched at run time reads the words written under the old one
//! until entries are accessed again, as in Redis.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use crate::hlc::Stamp;

/// What to evict first when the store is over its bound (Redis's
/// `maxmemory-policy`, with the same names and meanings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvictionPolicy {
    /// The least recently used of the values that have a TTL.
    VolatileLru,
    /// The least frequently used of the values that have a TTL.
    VolatileLfu,
    /// Any value that has a TTL.
    VolatileRandom,
    /// The value whose TTL runs out soonest.
    VolatileTtl,
    /// The least recently used value (the default).
    #[default]
    AllkeysLru,
    /// The least frequently used value.
    AllkeysLfu,
    /// Any value.
    AllkeysRandom,
    /// Nothing: local writes that would add memory past the bound are
    /// refused (Redis's `OOM` error).
    Noeviction,
}

/// Every policy, in Redis's order (its error message lists them so).
pub const POLICIES: [EvictionPolicy; 8] = [
    EvictionPolicy::VolatileLru,
    EvictionPolicy::VolatileLfu,
    EvictionPolicy::VolatileRandom,
    EvictionPolicy::VolatileTtl,
    EvictionPolicy::AllkeysLru,
    EvictionPolicy::AllkeysLfu,
    EvictionPolicy::AllkeysRandom,
    EvictionPolicy::Noeviction,
];

impl EvictionPolicy {
    /// Redis's name for the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            EvictionPolicy::VolatileLru => "volatile-lru",
            EvictionPolicy::VolatileLfu => "volatile-lfu",
            EvictionPolicy::VolatileRandom => "volatile-random",
            EvictionPolicy::VolatileTtl => "volatile-ttl",
            EvictionPolicy::AllkeysLru => "allkeys-lru",
            EvictionPolicy::AllkeysLfu => "allkeys-lfu",
            EvictionPolicy::AllkeysRandom => "allkeys-random",
            EvictionPolicy::Noeviction => "noeviction",
        }
    }

    /// Whether access words hold LFU counters (otherwise LRU times).
    pub(crate) fn is_lfu(self) -> bool {
        matches!(self, EvictionPolicy::VolatileLfu | EvictionPolicy::AllkeysLfu)
    }

    /// Whether only values with a TTL may be evicted.
    pub(crate) fn volatile_only(self) -> bool {
        matches!(
            self,
            EvictionPolicy::VolatileLru
                | EvictionPolicy::VolatileLfu
                | EvictionPolicy::VolatileRandom
                | EvictionPolicy::VolatileTtl
        )
    }

    /// Whether the policy evicts a random candidate (no pool, no score).
    pub(crate) fn is_random(self) -> bool {
        matches!(self, EvictionPolicy::VolatileRandom | EvictionPolicy::AllkeysRandom)
    }

    pub(crate) fn to_u8(self) -> u8 {
        POLICIES.iter().position(|p| *p == self).expect("every policy is listed") as u8
    }

    pub(crate) fn from_u8(n: u8) -> EvictionPolicy {
        POLICIES.get(n as usize).copied().unwrap_or_default()
    }
}

impl fmt::Display for EvictionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("argument(s) must be one of the following: volatile-lru, volatile-lfu, volatile-random, volatile-ttl, allkeys-lru, allkeys-lfu, allkeys-random, noeviction")]
pub struct UnknownPolicy;

impl FromStr for EvictionPolicy {
    type Err = UnknownPolicy;

    /// Parses Redis's name, ignoring case as Redis does.
    fn from_str(s: &str) -> Result<Self, UnknownPolicy> {
        POLICIES.iter().copied().find(|p| p.as_str().eq_ignore_ascii_case(s)).ok_or(UnknownPolicy)
    }
}

/// Redis's default `maxmemory-samples`.
pub const DEFAULT_SAMPLES: usize = 5;
/// The most samples per eviction: each costs a random probe under the
/// shard's write lock, so the setting is capped where accuracy stops
/// improving.
pub const MAX_SAMPLES: usize = 64;
/// Candidates kept between evictions (Redis's `EVPOOL_SIZE`).
pub(crate) const POOL_SIZE: usize = 16;

/// A new LFU counter starts here, so that a new key is not evicted before
/// it has had a chance to be read (Redis's `LFU_INIT_VAL`).
const LFU_INIT: u32 = 5;
/// Redis's default `lfu-log-factor`: about a million accesses saturate the
/// 8-bit counter.
const LFU_LOG_FACTOR: f64 = 10.0;
/// Redis's default `lfu-decay-time`: the counter loses one per idle minute.
const LFU_DECAY_MINUTES: u32 = 1;

/// The LRU clock: milliseconds, wrapping every 49 days. Idle times are
/// wrapping differences, so only an entry idle for longer than that is
/// misjudged (it looks recent).
fn lru_clock(now_ms: u64) -> u32 {
    now_ms as u32
}

/// Minutes for LFU decay, in the 24 high bits of the word.
fn lfu_minutes(now_ms: u64) -> u32 {
    ((now_ms / 60_000) as u32) & 0x00ff_ffff
}

thread_local! {
    /// The coin for LFU's probabilistic increment. A fixed seed keeps a
    /// single-threaded simulation replayable; across threads the streams
    /// differ, which is all the counter needs.
    static COIN: Cell<u64> = const { Cell::new(0x9e37_79b9_7f4a_7c15) };
}

/// A uniform draw in [0, 1) (xorshift64*).
fn coin() -> f64 {
    COIN.with(|c| {
        let mut x = c.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// The LFU counter after the idle minutes since it last decayed.
fn lfu_decayed(word: u32, now_ms: u64) -> u32 {
    let counter = word & 0xff;
    let then = word >> 8;
    let elapsed = lfu_minutes(now_ms).wrapping_sub(then) & 0x00ff_ffff;
    counter.saturating_sub(elapsed / LFU_DECAY_MINUTES)
}

/// One entry's access word. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Access(AtomicU32);

impl Access {
    /// The word for a new entry, or for one replaced by a write: a write is
    /// an access, and a replaced entry keeps its history (as Redis keeps an
    /// overwritten key's LFU counter).
    pub(crate) fn written(previous: Option<&Access>, lfu: bool, now_ms: u64) -> Access {
        let a = Access(AtomicU32::new(previous.map_or_else(|| initial(lfu, now_ms), |p| p.0.load(Ordering::Relaxed))));
        if previous.is_some() {
            a.touch(lfu, now_ms);
        }
        a
    }

    /// A copy of the word, for an entry that is moved (an eviction stub).
    pub(crate) fn copy(&self) -> Access {
        Access(AtomicU32::new(self.0.load(Ordering::Relaxed)))
    }

    /// Records an access. Relaxed atomics under the shard's read lock: a
    /// lost update between two readers costs one access, never a wrong key.
    #[inline]
    pub(crate) fn touch(&self, lfu: bool, now_ms: u64) {
        let old = self.0.load(Ordering::Relaxed);
        let new = if lfu {
            let mut c = lfu_decayed(old, now_ms);
            if c < 255 {
                let base = c.saturating_sub(LFU_INIT) as f64;
                if coin() < 1.0 / (base * LFU_LOG_FACTOR + 1.0) {
                    c += 1;
                }
            }
            (lfu_minutes(now_ms) << 8) | c
        } else {
            lru_clock(now_ms)
        };
        // Skipping the store when nothing changed keeps a hot key's cache
        // line shared between reading threads.
        if new != old {
            self.0.store(new, Ordering::Relaxed);
        }
    }

    /// How good a victim this entry is under an LRU or LFU policy: higher
    /// goes first (Redis's "idle" score).
    pub(crate) fn idle(&self, lfu: bool, now_ms: u64) -> u64 {
        let w = self.0.load(Ordering::Relaxed);
        if lfu {
            255 - u64::from(lfu_decayed(w, now_ms))
        } else {
            u64::from(lru_clock(now_ms).wrapping_sub(w))
        }
    }
}

fn initial(lfu: bool, now_ms: u64) -> u32 {
    if lfu {
        (lfu_minutes(now_ms) << 8) | LFU_INIT
    } else {
        lru_clock(now_ms)
    }
}

/// A sampled entry: its shard, record id and stamp. The stamp makes it
/// exact: stamps are unique, so a record that was rewritten, removed or
/// moved since it was sampled no longer matches, and is passed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) shard: u32,
    pub(crate) id: u32,
    pub(crate) stamp: Stamp,
}

/// The store's best eviction candidates, kept between evictions so that
/// each eviction profits from earlier samples (Redis's eviction pool).
/// Sorted by score, best last.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    candidates: Vec<(u64, Candidate)>,
}

impl Pool {
    /// Offers a sampled candidate.
    pub(crate) fn offer(&mut self, score: u64, c: Candidate) {
        // A record sampled again comes back with its current score: the
        // one it had may be stale (it was read, or rewritten, since).
        if let Some(i) = self.candidates.iter().position(|(_, k)| k.shard == c.shard && k.id == c.id) {
            self.candidates.remove(i);
        }
        if self.candidates.len() == POOL_SIZE {
            if score <= self.candidates[0].0 {
                return;
            }
            self.candidates.remove(0);
        }
        let at = self.candidates.partition_point(|(s, _)| *s <= score);
        self.candidates.insert(at, (score, c));
    }

    /// Takes the best candidate. The caller checks it still qualifies: the
    /// key may have been deleted or rewritten since it was sampled.
    pub(crate) fn take(&mut self) -> Option<Candidate> {
        self.candidates.pop().map(|(_, k)| k)
    }

    /// Forgets every candidate (the policy changed, so their scores mean
    /// something else now).
    pub(crate) fn clear(&mut self) {
        self.candidates.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_ignore_case() {
        for p in POLICIES {
            assert_eq!(p.as_str().parse::<EvictionPolicy>(), Ok(p));
            assert_eq!(p.as_str().to_ascii_uppercase().parse::<EvictionPolicy>(), Ok(p));
            assert_eq!(EvictionPolicy::from_u8(p.to_u8()), p);
        }
        assert_eq!("lru".parse::<EvictionPolicy>(), Err(UnknownPolicy));
        assert_eq!(EvictionPolicy::default(), EvictionPolicy::AllkeysLru);
    }

    #[test]
    fn lru_idle_grows_with_time_and_resets_on_access() {
        let a = Access::written(None, false, 1_000);
        assert_eq!(a.idle(false, 1_000), 0);
        assert_eq!(a.idle(false, 1_250), 250);
        a.touch(false, 1_300);
        assert_eq!(a.idle(false, 1_300), 0);
    }

    #[test]
    fn lfu_counts_accesses_logarithmically_and_decays() {
        let a = Access::written(None, true, 0);
        let new = a.idle(true, 0);
        assert_eq!(new, 255 - u64::from(LFU_INIT));
        for _ in 0..1_000 {
            a.touch(true, 0);
        }
        let hot = a.idle(true, 0);
        assert!(hot < new, "1,000 accesses must lower the score: {hot} vs {new}");
        // A thousand accesses make a counter of a few tens, not a thousand.
        assert!(255 - hot < 40, "counter {} is not logarithmic", 255 - hot);
        // Ten idle minutes take ten off the counter.
        assert_eq!(a.idle(true, 10 * 60_000), hot + 10);
    }

    #[test]
    fn pool_keeps_the_best_candidates() {
        let mut p = Pool::default();
        let c = |i: u64| Candidate { shard: 0, id: i as u32, stamp: Stamp { hlc: i, node: crate::hlc::NodeId(1) } };
        for i in 0..40u64 {
            p.offer(i, c(i));
        }
        p.offer(39, c(39));
        let taken: Vec<u32> = std::iter::from_fn(|| p.take()).map(|c| c.id).collect();
        assert_eq!(taken.len(), POOL_SIZE);
        assert_eq!(taken[0], 39);
        assert_eq!(taken[POOL_SIZE - 1], 24);
    }
}
