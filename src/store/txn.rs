//! Transactions: reads and writes of several keys applied as one on this
//! replica.
//!
//! A transaction holds the write locks of every shard its keys live in
//! (of all shards, for one that walks the keyspace), taken in increasing
//! shard order, the one order every holder of several shard locks uses, so
//! two transactions, or a transaction and a merge of one, never deadlock.
//! No reader on this replica sees part of it: a reader of one key waits
//! for the lock, and a reader of several keys that takes their locks
//! together (another transaction) sees all of it or none.
//!
//! Every write of a transaction carries the same stamp, taken once its
//! locks are held. A stamp still names one write of one key: a key written
//! twice keeps the last value, and only that one is handed back to be
//! pushed. The shared stamp is what lets a receiver tell a transaction's
//! writes in a push batch (a run of registers with one stamp) and merge
//! them as one too.

use std::collections::HashMap;

use bytes::Bytes;

use super::digest::key_hash;
use super::keys::{self, KeyAccess, Shards};
use super::shard::{Delta, Shard};
use super::{OutOfMemory, Register, Slot, Store, Written};
use crate::hlc::Stamp;
use crate::locks::RwLockWriteGuard;

/// Why a transaction refused an operation.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum TxnError {
    /// The key's shard was not locked when the transaction began: it
    /// names its keys up front (or locks the whole keyspace).
    #[error("the key was not named when the transaction began")]
    NotLocked,
    /// The write would add memory past the bound, and the policy found
    /// nothing to evict when the transaction began.
    #[error("out of memory")]
    OutOfMemory,
}

impl From<OutOfMemory> for TxnError {
    fn from(_: OutOfMemory) -> Self {
        TxnError::OutOfMemory
    }
}

/// Shards held for one transaction. Dropping it releases them; what the
/// writes changed in the store's gauges is applied then.
pub struct Locked<'a> {
    store: &'a Store,
    /// By shard index; `None` for a shard not locked.
    guards: Vec<Option<RwLockWriteGuard<'a, Shard>>>,
    whole: bool,
    stamp: Stamp,
    now_ms: u64,
    /// The store was over its bound with nothing left to evict when the
    /// transaction began: writes that add memory are refused.
    full: bool,
    evicted: usize,
    delta: Delta,
    tombstones: bool,
    /// The last write of each key, in the order keys were first written.
    written: Vec<Written>,
    index: HashMap<Bytes, usize, foldhash::fast::FixedState>,
}

impl Store {
    /// Begins a transaction over the shards of `keys`, at local time
    /// `now_ms`. Over the bound, the policy evicts first (a transaction
    /// evicts nothing while it holds its locks).
    pub fn lock<K: AsRef<[u8]>>(&self, keys: impl IntoIterator<Item = K>, now_ms: u64) -> Locked<'_> {
        let mut want = vec![false; self.shards.len()];
        for k in keys {
            want[self.locate(key_hash(k.as_ref())).0] = true;
        }
        self.lock_shards(want, false, now_ms)
    }

    /// Begins a transaction over the whole keyspace: every shard is locked,
    /// so it may also walk the keys (SCAN, KEYS, RANDOMKEY).
    pub fn lock_all(&self, now_ms: u64) -> Locked<'_> {
        self.lock_shards(vec![true; self.shards.len()], true, now_ms)
    }

    fn lock_shards(&self, want: Vec<bool>, whole: bool, now_ms: u64) -> Locked<'_> {
        self.saw_time(now_ms);
        let (mut evicted, mut full) = (0, false);
        if self.over_bound() {
            (evicted, full) = self.enforce_bound(now_ms);
        }
        let guards = want.iter().enumerate().map(|(s, &w)| w.then(|| self.spin_write(s))).collect();
        let stamp = self.clock.now(now_ms);
        Locked {
            store: self,
            guards,
            whole,
            stamp,
            now_ms,
            full,
            evicted,
            delta: Delta::default(),
            tombstones: false,
            written: Vec::new(),
            index: HashMap::default(),
        }
    }

    /// Shard `s`'s write lock, spinning a while before sleeping for it: a
    /// transaction holds its shards for a few microseconds, less than a
    /// thread takes to sleep and wake.
    pub(super) fn spin_write(&self, s: usize) -> crate::locks::RwLockWriteGuard<'_, Shard> {
        for _ in 0..SPINS {
            if let Some(g) = self.shards[s].try_write() {
                return g;
            }
            std::hint::spin_loop();
        }
        self.shards[s].write()
    }
}

/// Tries before `spin_write` sleeps.
const SPINS: usize = 4000;

impl Shards for Locked<'_> {
    fn read_shard<R>(&self, s: usize, f: impl FnOnce(&Shard) -> R) -> R {
        f(self.guards[s].as_deref().expect("a whole-keyspace transaction holds every shard"))
    }
}

impl<'a> Locked<'a> {
    /// The stamp every write of this transaction carries.
    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// The local time the transaction runs at.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// How the number of registers holding values (what DBSIZE counts)
    /// changed by this transaction's writes so far: the store's gauges
    /// take them when it ends.
    pub fn values_added(&self) -> isize {
        self.delta.entries - self.delta.tombstones - self.delta.stubs
    }

    /// Whether every shard is held.
    pub fn is_whole(&self) -> bool {
        self.whole
    }

    fn shard(&self, key: &[u8]) -> Result<(&Shard, u64), TxnError> {
        let kh = key_hash(key);
        let (s, _) = self.store.locate(kh);
        Ok((self.guards[s].as_deref().ok_or(TxnError::NotLocked)?, kh))
    }

    /// Reads `key` as [`Store::get_with`] does, lending the value to `f`.
    pub fn get_with<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>, TxnError> {
        let (g, kh) = self.shard(key)?;
        let Some((_, r)) = g.find_live(kh, key) else { return Ok(None) };
        let Some(v) = r.visible(self.now_ms) else { return Ok(None) };
        r.access().touch(self.store.policy().is_lfu(), self.now_ms);
        Ok(Some(f(v)))
    }

    /// The register held for `key`, whatever it holds.
    pub fn register(&self, key: &[u8]) -> Result<Option<Register>, TxnError> {
        let (g, kh) = self.shard(key)?;
        Ok(g.find_live(kh, key).map(|(_, r)| r.register()))
    }

    /// The write count of `key`'s bucket; see [`Store::writes_of`].
    pub fn writes_of(&self, key: &[u8]) -> Result<u32, TxnError> {
        let (g, kh) = self.shard(key)?;
        Ok(g.writes_of(self.store.locate(kh).1))
    }

    /// How recently and how often `key` was used; see [`Store::access_of`].
    pub fn access_of(&self, key: &[u8]) -> Result<Option<KeyAccess>, TxnError> {
        self.shard(key)?;
        Ok(keys::access_of(self.store, self, key, self.now_ms))
    }

    /// One step of a scan; see [`Store::scan`]. Whole-keyspace transactions
    /// only.
    pub fn scan(&self, cursor: u64, count: usize) -> Result<(Vec<Bytes>, u64), TxnError> {
        self.check_whole()?;
        Ok(keys::scan(self.store, self, cursor, count, self.now_ms))
    }

    /// The keys `keep` accepts; see [`Store::keys`]. Whole-keyspace
    /// transactions only.
    pub fn keys(&self, keep: impl Fn(&[u8]) -> bool) -> Result<Vec<Bytes>, TxnError> {
        self.check_whole()?;
        Ok(keys::keys(self.store, self, self.now_ms, keep))
    }

    /// A random key; see [`Store::random_key`]. Whole-keyspace transactions
    /// only.
    pub fn random_key(&self, pick: impl FnMut(usize) -> usize) -> Result<Option<Bytes>, TxnError> {
        self.check_whole()?;
        Ok(keys::random_key(self.store, self, self.now_ms, pick))
    }

    fn check_whole(&self) -> Result<(), TxnError> {
        if self.whole {
            Ok(())
        } else {
            Err(TxnError::NotLocked)
        }
    }

    /// Read-modify-write of `key` as [`Store::write_with`] does, at the
    /// transaction's stamp. What a key's last write leaves is handed back
    /// by [`Locked::finish`].
    ///
    /// `key` and the value `f` returns are stored as they are: they must
    /// own their bytes (not be slices of a larger buffer, which they would
    /// keep alive), and are best copied before the transaction begins, so
    /// that its locks are held for less.
    pub fn write_with(
        &mut self,
        key: Bytes,
        f: impl FnOnce(Option<&Slot>, Stamp) -> Option<Slot>,
    ) -> Result<Option<Written>, TxnError> {
        let kh = key_hash(&key);
        let (s, lb) = self.store.locate(kh);
        let (store, now, stamp, full) = (self.store, self.now_ms, self.stamp, self.full);
        let g = self.guards[s].as_deref_mut().ok_or(TxnError::NotLocked)?;
        let Some(super::Decided { slot, previous, held }) = super::decide(g, kh, &key, now, stamp, full, true, f)?
        else {
            return Ok(None);
        };
        let register = Register { val: slot, marker: stamp };
        let applied = stamp >= store.floors.read().clear_below;
        if applied {
            self.tombstones |= register.val.is_tombstone();
            self.delta.add(store.store_in(g, &key, kh, lb, held, &register, now, false));
        }
        let w = Written { key: key.clone(), register, previous, applied };
        match self.index.get(&key) {
            Some(&i) => self.written[i] = w.clone(),
            None => {
                self.index.insert(key, self.written.len());
                self.written.push(w.clone());
            }
        }
        Ok(Some(w))
    }

    /// Ends the transaction: releases its shards and hands back the last
    /// write of each key it wrote, in the order the keys were first
    /// written.
    pub fn finish(mut self) -> Vec<Written> {
        self.tell_written();
        std::mem::take(&mut self.written)
    }

    /// Tells [`Store::on_change`] of the last write of each key, while the
    /// transaction's locks are held.
    fn tell_written(&self) {
        for w in self.written.iter().filter(|w| w.applied) {
            let kind = super::ChangeKind::of_stored(&w.register.val, self.now_ms);
            self.store.tell(&w.key, kind, w.register.marker);
        }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // Not finished: its writes are stored all the same.
        self.tell_written();
        self.guards.clear();
        let store = self.store;
        store.apply(std::mem::take(&mut self.delta));
        let mut evicted = self.evicted;
        if store.over_bound() {
            evicted += store.enforce_bound(self.now_ms).0;
        }
        if self.tombstones || evicted > 0 {
            store.compact_if_needed(self.now_ms);
        }
    }
}
