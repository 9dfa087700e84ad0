//! What commands read and write the keyspace through: the mesh itself, or
//! the transaction an EXEC (or a multi-key command such as MSETNX) runs
//! in. Inside a transaction its shards are locked, and the mesh's own
//! reads and writes would wait for them forever: a command reaches the
//! keyspace only through here.

use bytes::Bytes;

use crate::hlc::Stamp;
use crate::store::{KeyAccess, Register, Slot, Written};
use crate::{Mesh, MeshError, Transaction};

pub(crate) enum Db<'a, 't> {
    Mesh(&'a Mesh),
    Txn(&'a mut Transaction<'t>),
}

/// A key a transaction did not lock reads as absent. Keys are taken from
/// the command table's key positions, so this is a bug in the table.
fn unlocked<T>(r: Result<Option<T>, MeshError>) -> Option<T> {
    debug_assert!(r.is_ok(), "a transaction read a key it did not lock");
    r.ok().flatten()
}

impl Db<'_, '_> {
    pub(crate) fn in_transaction(&self) -> bool {
        matches!(self, Db::Txn(_))
    }

    /// The time commands run at: a transaction's commands all run at its
    /// start.
    pub(crate) fn now_ms(&self) -> u64 {
        match self {
            Db::Mesh(m) => m.now_ms(),
            Db::Txn(t) => t.now_ms(),
        }
    }

    pub(crate) fn get_with<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        match self {
            Db::Mesh(m) => m.get_with(key, f),
            Db::Txn(t) => unlocked(t.get_with(key, f)),
        }
    }

    /// Reads several keys as one (MGET): see [`Mesh::get_many_with`].
    pub(crate) fn get_many_with(&self, keys: &[Bytes], mut f: impl FnMut(Option<&[u8]>)) {
        match self {
            Db::Mesh(m) => m.get_many_with(keys, f),
            Db::Txn(t) => {
                for k in keys {
                    if unlocked(t.get_with(k, |v| f(Some(v)))).is_none() {
                        f(None);
                    }
                }
            }
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.get_with(key, Bytes::copy_from_slice)
    }

    /// The register held for `key`, whatever it holds.
    /// See [`crate::store::Store::writes_of`].
    pub(crate) fn writes_of(&self, key: &[u8]) -> u32 {
        match self {
            Db::Mesh(m) => m.replica().store().writes_of(key),
            Db::Txn(t) => {
                let r = t.writes_of(key);
                debug_assert!(r.is_ok(), "a transaction read a key it did not lock");
                r.unwrap_or(0)
            }
        }
    }

    pub(crate) fn register(&self, key: &[u8]) -> Option<Register> {
        match self {
            Db::Mesh(m) => m.replica().store().register(key),
            Db::Txn(t) => unlocked(t.register(key)),
        }
    }

    pub(crate) fn access_of(&self, key: &[u8]) -> Option<KeyAccess> {
        match self {
            Db::Mesh(m) => m.replica().store().access_of(key, m.now_ms()),
            Db::Txn(t) => unlocked(t.access_of(key)),
        }
    }

    /// A read-modify-write of `key`. The key and the value `f` returns may
    /// be slices of a client's read buffer: what is kept is a copy (the
    /// store copies under a mesh, [`Transaction::write_with`] under a
    /// transaction), so that a stored key or value does not pin the whole
    /// buffer it arrived in, and a command need not copy them first.
    pub(crate) fn write_with(
        &mut self,
        key: Bytes,
        f: impl FnOnce(Option<&Slot>, Stamp) -> Option<Slot>,
    ) -> Result<Option<Written>, MeshError> {
        match self {
            Db::Mesh(m) => m.write_with(key, f),
            Db::Txn(t) => t.write_with(key, f),
        }
    }

    /// A write that does not depend on the value it replaces (a SET
    /// without NX, XX, GET or KEEPTTL): under a mesh the old value is not
    /// copied out for it ([`Mesh::write_blind`]). The key and value are as
    /// [`Db::write_with`]'s. Returns whether `f` wrote.
    pub(crate) fn write_blind(&mut self, key: Bytes, f: impl FnOnce(Stamp) -> Option<Slot>) -> Result<bool, MeshError> {
        match self {
            Db::Mesh(m) => m.write_blind(key, f),
            Db::Txn(t) => t.write_with(key, |_, stamp| f(stamp)).map(|w| w.is_some()),
        }
    }

    /// Writes a value without a TTL (Redis's commands set their own: an
    /// embedding's default TTL does not apply to them). `key` and `value`
    /// own their bytes already (copied before a transaction locks
    /// anything) and are stored as they are under a transaction.
    pub(crate) fn put(&mut self, key: Bytes, value: Bytes) -> Result<(), MeshError> {
        let f = |_| Some(Slot::Value { data: value, expires_at_ms: None });
        match self {
            Db::Mesh(m) => m.write_blind(key, f).map(drop),
            Db::Txn(t) => t.write_owned(key, |_, stamp| f(stamp)).map(drop),
        }
    }

    /// Deletes `key`; whether it was visible.
    pub(crate) fn delete(&mut self, key: Bytes) -> Result<bool, MeshError> {
        match self {
            Db::Mesh(m) => m.invalidate(key),
            Db::Txn(t) => Ok(t.write_owned(key, |_, _| Some(Slot::Tombstone))?.is_some_and(|w| w.previous.is_some())),
        }
    }

    /// Registers holding values (DBSIZE).
    pub(crate) fn dbsize(&self) -> usize {
        match self {
            Db::Mesh(m) => m.len(),
            Db::Txn(t) => t.values(),
        }
    }

    pub(crate) fn scan(&self, cursor: u64, count: usize) -> (Vec<Bytes>, u64) {
        match self {
            Db::Mesh(m) => m.replica().store().scan(cursor, count, m.now_ms()),
            Db::Txn(t) => t.scan(cursor, count).unwrap_or_else(|_| {
                debug_assert!(false, "a transaction scanned without locking the keyspace");
                (Vec::new(), 0)
            }),
        }
    }

    pub(crate) fn keys(&self, keep: impl Fn(&[u8]) -> bool) -> Vec<Bytes> {
        match self {
            Db::Mesh(m) => m.replica().store().keys(m.now_ms(), keep),
            Db::Txn(t) => t.keys(keep).unwrap_or_default(),
        }
    }

    pub(crate) fn random_key(&self, pick: impl FnMut(usize) -> usize) -> Option<Bytes> {
        match self {
            Db::Mesh(m) => m.replica().store().random_key(m.now_ms(), pick),
            Db::Txn(t) => unlocked(t.random_key(pick)),
        }
    }

    /// Runs `f` on the keys named as one transaction: in the transaction
    /// this already is, or in a new one over `keys` (MSET, MSETNX,
    /// RENAME, COPY: no reader here sees half of them, and they are
    /// replicated together).
    pub(crate) fn atomically<'k, R>(
        &mut self,
        keys: impl IntoIterator<Item = &'k Bytes>,
        f: impl FnOnce(&mut Db<'_, '_>) -> R,
    ) -> R {
        match self {
            Db::Mesh(m) => m.transaction(keys, |t| f(&mut Db::Txn(t))),
            Db::Txn(_) => f(self),
        }
    }
}
