//! Transactions on the embedded API: [`Mesh::transaction`].

use std::time::Duration;

use bytes::Bytes;

use super::{Mesh, MeshError};
use crate::hlc::Stamp;
use crate::store::{KeyAccess, Locked, Register, Slot, TxnError, Written};

/// Reads and writes applied as one on this peer; see
/// [`Mesh::transaction`].
pub struct Transaction<'a> {
    mesh: &'a Mesh,
    locked: Locked<'a>,
}

impl From<TxnError> for MeshError {
    fn from(e: TxnError) -> Self {
        match e {
            TxnError::NotLocked => MeshError::NotInTransaction,
            TxnError::OutOfMemory => MeshError::Write(crate::replica::WriteError::OutOfMemory),
        }
    }
}

impl Mesh {
    /// Runs `f` as one transaction over `keys`: every read and write `f`
    /// makes through the [`Transaction`] is applied as one on this peer
    /// (no reader here sees part of it), and the writes are pushed to the
    /// peers together, where they are merged as one too (unless they do
    /// not fit in one frame, or reach a peer by anti-entropy after a
    /// partition: then key by key).
    ///
    /// The shards of `keys` stay locked while `f` runs, so `f` should be
    /// short, and must not use this mesh except through the transaction.
    /// Keys not named here are refused with
    /// [`MeshError::NotInTransaction`]. Every write carries one stamp: a
    /// key written twice keeps its last value.
    pub fn transaction<K: AsRef<[u8]>, R>(
        &self,
        keys: impl IntoIterator<Item = K>,
        f: impl FnOnce(&mut Transaction<'_>) -> R,
    ) -> R {
        let locked = self.inner.replica.store().lock(keys, self.now_ms());
        self.run_transaction(locked, f)
    }

    /// Runs `f` as one transaction over the whole keyspace, like
    /// [`Mesh::transaction`]; it may also walk the keys. Every shard stays
    /// locked while `f` runs: every other reader and writer here waits.
    pub fn transaction_whole<R>(&self, f: impl FnOnce(&mut Transaction<'_>) -> R) -> R {
        let locked = self.inner.replica.store().lock_all(self.now_ms());
        self.run_transaction(locked, f)
    }

    fn run_transaction<'a, R>(&'a self, locked: Locked<'a>, f: impl FnOnce(&mut Transaction<'a>) -> R) -> R {
        let mut t = Transaction { mesh: self, locked };
        let r = f(&mut t);
        let written = t.locked.finish();
        self.inner.after_transaction(written);
        r
    }
}

impl Transaction<'_> {
    /// The stamp every write of this transaction carries.
    pub fn stamp(&self) -> Stamp {
        self.locked.stamp()
    }

    /// The local time (Unix ms) the transaction runs at.
    pub fn now_ms(&self) -> u64 {
        self.locked.now_ms()
    }

    /// How many registers hold values (what DBSIZE counts), with this
    /// transaction's writes.
    pub fn values(&self) -> usize {
        (self.mesh.len() as isize + self.locked.values_added()).max(0) as usize
    }

    /// Reads `key` as [`Mesh::get`] does, including this transaction's own
    /// writes.
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>, MeshError> {
        self.get_with(key, Bytes::copy_from_slice)
    }

    /// Reads `key` as [`Mesh::get_with`] does.
    pub fn get_with<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>, MeshError> {
        Ok(self.locked.get_with(key, f)?)
    }

    /// The register held for `key`, whatever it holds (a value, a
    /// tombstone, an expired value).
    pub fn register(&self, key: &[u8]) -> Result<Option<Register>, MeshError> {
        Ok(self.locked.register(key)?)
    }

    /// How many registers were stored in `key`'s digest bucket (wrapping);
    /// see [`crate::store::Store::writes_of`].
    pub fn writes_of(&self, key: &[u8]) -> Result<u32, MeshError> {
        Ok(self.locked.writes_of(key)?)
    }

    /// How recently and how often `key` was used.
    pub fn access_of(&self, key: &[u8]) -> Result<Option<KeyAccess>, MeshError> {
        Ok(self.locked.access_of(key)?)
    }

    /// Writes `key`, as [`Mesh::insert`] does (with the default TTL).
    pub fn insert(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<(), MeshError> {
        let ttl = self.mesh.inner.default_ttl.map(super::mesh::ttl_ms);
        self.insert_ttl_ms(key.into(), value.into(), ttl)
    }

    /// Writes `key` with a time to live.
    pub fn insert_with_ttl(
        &mut self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<(), MeshError> {
        self.insert_ttl_ms(key.into(), value.into(), Some(super::mesh::ttl_ms(ttl)))
    }

    fn insert_ttl_ms(&mut self, key: Bytes, value: Bytes, ttl: Option<u64>) -> Result<(), MeshError> {
        self.write_with(key, |_, stamp| {
            let expires_at_ms = ttl.map(|t| stamp.physical_ms().saturating_add(t));
            Some(Slot::Value { data: value, expires_at_ms })
        })
        .map(drop)
    }

    /// Deletes `key`. Returns whether it was visible.
    pub fn invalidate(&mut self, key: impl Into<Bytes>) -> Result<bool, MeshError> {
        let w = self.write_with(key, |_, _| Some(Slot::Tombstone))?;
        Ok(w.is_some_and(|w| w.previous.is_some()))
    }

    /// Read-modify-write of `key`, as [`Mesh::write_with`] does. The key
    /// and value are copied, so that a slice of a larger buffer does not
    /// keep all of it alive.
    pub fn write_with(
        &mut self,
        key: impl Into<Bytes>,
        f: impl FnOnce(Option<&Slot>, Stamp) -> Option<Slot>,
    ) -> Result<Option<Written>, MeshError> {
        let key = Bytes::copy_from_slice(&key.into());
        self.write_owned(key, |cur, stamp| {
            f(cur, stamp).map(|slot| match slot {
                Slot::Value { data, expires_at_ms } => {
                    Slot::Value { data: Bytes::copy_from_slice(&data), expires_at_ms }
                }
                other => other,
            })
        })
    }

    /// [`Transaction::write_with`] of a key and value that own their bytes
    /// already (copied before the transaction began): stored as they are.
    pub(crate) fn write_owned(
        &mut self,
        key: Bytes,
        f: impl FnOnce(Option<&Slot>, Stamp) -> Option<Slot>,
    ) -> Result<Option<Written>, MeshError> {
        self.mesh.inner.replica.check_writable()?;
        let mut size = super::mesh::SizeCheck::new(self.mesh.max_write_bytes());
        let w = self.locked.write_with(key.clone(), |cur, stamp| size.check(&key, f(cur, stamp)?))?;
        size.result()?;
        Ok(w)
    }

    /// One step of a scan (see [`crate::replica::Replica::store`]'s
    /// `scan`); [`Mesh::transaction_whole`] only.
    pub fn scan(&self, cursor: u64, count: usize) -> Result<(Vec<Bytes>, u64), MeshError> {
        Ok(self.locked.scan(cursor, count)?)
    }

    /// The keys with a visible value that `keep` accepts;
    /// [`Mesh::transaction_whole`] only.
    pub fn keys(&self, keep: impl Fn(&[u8]) -> bool) -> Result<Vec<Bytes>, MeshError> {
        Ok(self.locked.keys(keep)?)
    }

    /// A key with a visible value, `pick(n)` choosing an index below `n`;
    /// [`Mesh::transaction_whole`] only.
    pub fn random_key(&self, pick: impl FnMut(usize) -> usize) -> Result<Option<Bytes>, MeshError> {
        Ok(self.locked.random_key(pick)?)
    }
}
