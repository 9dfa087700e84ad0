//! Taps on a peer's changes: functions told of every change as it is
//! applied, on the thread that applies it and under the changed key's
//! shard lock (the store's `on_change` and `on_eviction` hooks), beside
//! the broadcast stream that [`Mesh::subscribe`](crate::Mesh::subscribe)
//! reads after the lock is released.
//!
//! A subscriber of the stream reads on its own task and can fall behind
//! (it is then told to drop everything), and two changes of one key made
//! at once by two threads can reach it in the other order. A tap can do
//! neither: the writer tells it, in the order the key's changes are
//! applied, as a Redis command publishes its own keyspace notifications.
//! The RESP server's notifier is one.
//!
//! A tap runs under shard locks: it must be quick, must not call back into
//! the store, and must not take a lock that is ever held while a shard
//! lock is taken. A FLUSHALL or a compaction is told with an empty key,
//! under every shard's lock, before its sweep (see `Store::flush_all`).

// Only the RESP server taps; without it, the changes are still told to
// no one at the cost of one relaxed load.
#![cfg_attr(not(feature = "server"), allow(dead_code))]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use crate::hlc::Stamp;
use crate::locks::{Mutex, RwLock};
use crate::store::ChangeKind;

type Tap = dyn Fn(&[u8], ChangeKind, Stamp) + Send + Sync;

/// A tap on the list: its function, and whether it is started.
struct Listed {
    id: u64,
    on: Arc<AtomicBool>,
    f: Arc<Tap>,
}

/// The taps of one peer.
#[derive(Default)]
pub(crate) struct Taps {
    list: RwLock<Vec<Listed>>,
    /// Taps dropped but not yet taken off `list` (see `ChangeTap::drop`).
    gone: Mutex<Vec<u64>>,
    /// Taps that want changes now: while none does, a change is not built
    /// for them at all.
    active: AtomicUsize,
    next: AtomicU64,
}

impl Taps {
    /// Whether any tap wants changes now.
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// Tells every started tap of a change of `key` stamped `stamp`.
    #[inline]
    pub(crate) fn tell(&self, key: &[u8], kind: ChangeKind, stamp: Stamp) {
        if !self.active() {
            return;
        }
        for t in self.list.read().iter() {
            if t.on.load(Ordering::Relaxed) {
                (t.f)(key, kind, stamp);
            }
        }
    }

    pub(crate) fn add(self: &Arc<Self>, f: Arc<Tap>) -> ChangeTap {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let on = Arc::new(AtomicBool::new(false));
        let mut list = self.list.write();
        let mut gone = self.gone.lock();
        list.retain(|t| !gone.contains(&t.id));
        gone.clear();
        list.push(Listed { id, on: on.clone(), f });
        ChangeTap { taps: Arc::downgrade(self), id, on }
    }
}

/// A registered tap ([`crate::Mesh::tap_changes`]); told nothing until it
/// is started, and unregistered when dropped.
pub(crate) struct ChangeTap {
    taps: Weak<Taps>,
    id: u64,
    on: Arc<AtomicBool>,
}

impl ChangeTap {
    /// Starts (`true`) or stops telling it of changes. A change whose
    /// writer looks after this returns is told, if started.
    pub(crate) fn set_active(&self, on: bool) {
        if self.on.swap(on, Ordering::SeqCst) == on {
            return;
        }
        if let Some(t) = self.taps.upgrade() {
            if on {
                t.active.fetch_add(1, Ordering::SeqCst);
            } else {
                t.active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

impl Drop for ChangeTap {
    /// Stops the tap, so that it is told nothing more, and leaves it to
    /// the next `add` to take off the list. A tap's owner can be dropped
    /// inside the tap itself (the last reference to it was the one the tap
    /// had taken), under the list's read lock, so the list is not locked
    /// here: `add` takes the list's lock and then `gone`'s, and this may
    /// run holding the first.
    fn drop(&mut self) {
        self.set_active(false);
        if let Some(t) = self.taps.upgrade() {
            t.gone.lock().push(self.id);
        }
    }
}

impl std::fmt::Debug for ChangeTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeTap").field("id", &self.id).field("on", &self.on).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tap_hears_only_while_started_and_not_once_dropped() {
        let taps = Arc::new(Taps::default());
        let heard = Arc::new(AtomicUsize::new(0));
        let h = heard.clone();
        let tap = taps.add(Arc::new(move |_: &[u8], _, _| {
            h.fetch_add(1, Ordering::Relaxed);
        }));
        let tell = || taps.tell(b"k", ChangeKind::Put, Stamp::ZERO);
        tell();
        tap.set_active(true);
        tap.set_active(true);
        tell();
        assert!(taps.active());
        tap.set_active(false);
        tell();
        assert!(!taps.active(), "started twice, stopped once: stopped");
        let other = taps.add(Arc::new(|_: &[u8], _, _| {}));
        other.set_active(true);
        tell();
        assert_eq!(heard.load(Ordering::Relaxed), 1, "a stopped tap told while another is started");
        tap.set_active(true);
        drop(tap);
        tell();
        assert_eq!(heard.load(Ordering::Relaxed), 1, "a dropped tap told");
        assert_eq!(taps.list.read().len(), 2, "listed until the next add");
        drop(other);
        assert!(!taps.active());
        let _third = taps.add(Arc::new(|_: &[u8], _, _| {}));
        assert_eq!(taps.list.read().len(), 1, "the dropped taken off");
    }

    /// A tap dropped by its own function, while a change is told, is
    /// stopped at once and taken off the list at the next `add`.
    #[test]
    fn a_tap_dropped_inside_itself_does_not_deadlock() {
        let taps = Arc::new(Taps::default());
        let slot: Arc<Mutex<Option<ChangeTap>>> = Arc::default();
        let inner = slot.clone();
        let tap = taps.add(Arc::new(move |_: &[u8], _, _| drop(inner.lock().take())));
        tap.set_active(true);
        *slot.lock() = Some(tap);
        taps.tell(b"k", ChangeKind::Put, Stamp::ZERO);
        assert!(slot.lock().is_none() && !taps.active());
        assert_eq!(taps.list.read().len(), 1, "still listed");
        let _other = taps.add(Arc::new(|_: &[u8], _, _| {}));
        assert_eq!(taps.list.read().len(), 1, "taken off at the next add");
    }
}
