//! Observers told of a change to what a key reads as, *under the lock of
//! the key's shard*: before any reader can see the change.
//!
//! This is what lets a near cache fed by the store (Redis's client
//! tracking, `resp::tracking`) order an invalidation against the replies
//! of a connection exactly: a reader that holds a key's shard lock while
//! it collects its pending invalidations and reads the key has every
//! invalidation for a change it sees, and none for a change it does not.
//! [`crate::Mesh::subscribe`] is told after the lock is released, which is
//! good enough for an application's own cache but not for that ordering.
//!
//! An observer runs under shard locks: it must be quick, must not call
//! back into the store, and must not take a lock that is ever held while
//! a shard lock is taken.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::locks::RwLock;

/// Told of changes by the store; see the module docs.
pub trait Observer: Send + Sync {
    /// `key` was written, deleted, expired, evicted, or dropped by a
    /// refusal reply: what it reads as may have changed.
    fn changed(&self, key: &[u8]);
    /// A FLUSHALL or a compaction removed everything below a stamp. Told
    /// under every shard's lock, as the stamp is raised: no read after it
    /// shows a key it removed, though its sweep may not have reached it.
    fn flushed(&self);
    /// The changes this thread tells from now until [`Observer::release`]
    /// are one group (the registers of one merge), which an observer may
    /// hold and tell on as one. Returns whether this call began the group:
    /// `release` follows only then. An observer that already gathers on
    /// this thread (a RESP command's changes) keeps its own group.
    fn gather(&self) -> bool {
        false
    }
    /// The group begun by [`Observer::gather`] ends; told on this thread,
    /// under no shard lock.
    fn release(&self) {}
}

/// The groups begun by [`Observers::gather`], ended when it is dropped.
pub(super) struct Gathering {
    began: Vec<Arc<dyn Observer>>,
}

impl Drop for Gathering {
    fn drop(&mut self) {
        for o in &self.began {
            o.release();
        }
    }
}

/// The observers of one store, and how many of them want to be told now.
#[derive(Default)]
pub(super) struct Observers {
    list: RwLock<Vec<Arc<dyn Observer>>>,
    /// Observers that currently want changes: while zero, a write pays one
    /// relaxed load for them.
    wanted: AtomicUsize,
}

impl Observers {
    pub(super) fn add(&self, o: Arc<dyn Observer>) {
        self.list.write().push(o);
    }

    pub(super) fn remove(&self, o: &Arc<dyn Observer>) {
        self.list.write().retain(|x| !Arc::ptr_eq(x, o));
    }

    /// An observer starts (`true`) or stops wanting changes. A write that
    /// takes a shard lock after this returns sees it: the count is read
    /// under that lock, and a reader of the shard takes it too.
    pub(super) fn want(&self, on: bool) {
        if on {
            self.wanted.fetch_add(1, Ordering::SeqCst);
        } else {
            self.wanted.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Whether any observer wants changes now.
    #[inline]
    pub(super) fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Relaxed) > 0
    }

    #[inline]
    pub(super) fn changed(&self, key: &[u8]) {
        if !self.wanted() {
            return;
        }
        for o in self.list.read().iter() {
            o.changed(key);
        }
    }

    /// Has every observer that wants changes gather those this thread
    /// tells until the guard is dropped ([`Observer::gather`]).
    pub(super) fn gather(&self) -> Gathering {
        let began =
            if self.wanted() { self.list.read().iter().filter(|o| o.gather()).cloned().collect() } else { Vec::new() };
        Gathering { began }
    }

    pub(super) fn flushed(&self) {
        if self.wanted.load(Ordering::Relaxed) == 0 {
            return;
        }
        for o in self.list.read().iter() {
            o.flushed();
        }
    }
}

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observers").field("wanted", &self.wanted.load(Ordering::Relaxed)).finish()
    }
}
