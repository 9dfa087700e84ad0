//! Taps on a peer's changes: functions told of every change at once, on
//! the thread that made or merged it, beside the broadcast stream that
//! [`Mesh::subscribe`](crate::Mesh::subscribe) reads.
//!
//! A subscriber of the stream reads on its own task and can fall behind
//! (it is then told to drop everything). A tap cannot: the writer tells it,
//! as a Redis command publishes its own keyspace notifications. The RESP
//! server's notifier is one, so that a pipelined burst from many clients
//! is notified whole rather than as `flushall`.
//!
//! A tap runs inside writes and merges, and under the shard lock of an
//! evicted key: it must be quick, must not call back into the store, and
//! must not take a lock that is ever held while a shard lock is taken.

// Only the RESP server taps; without it, the changes are still told to
// no one at the cost of one relaxed load.
#![cfg_attr(not(feature = "server"), allow(dead_code))]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::RwLock;

use crate::store::Change;

type Tap = dyn Fn(&Change) + Send + Sync;

/// The taps of one peer.
#[derive(Default)]
pub(crate) struct Taps {
    list: RwLock<Vec<(u64, Arc<Tap>)>>,
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

    /// Tells every tap of `c`, if any wants changes.
    pub(crate) fn tell(&self, c: &Change) {
        if !self.active() {
            return;
        }
        for (_, f) in self.list.read().iter() {
            f(c);
        }
    }

    pub(crate) fn add(self: &Arc<Self>, f: Arc<Tap>) -> ChangeTap {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.list.write().push((id, f));
        ChangeTap { taps: Arc::downgrade(self), id, on: AtomicBool::new(false) }
    }
}

/// A registered tap ([`crate::Mesh::tap_changes`]); told nothing until it
/// is started, and unregistered when dropped.
pub(crate) struct ChangeTap {
    taps: Weak<Taps>,
    id: u64,
    on: AtomicBool,
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
    fn drop(&mut self) {
        self.set_active(false);
        if let Some(t) = self.taps.upgrade() {
            t.list.write().retain(|(id, _)| *id != self.id);
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
    use crate::hlc::Stamp;
    use crate::store::{ChangeKind, Origin};

    #[test]
    fn a_tap_hears_only_while_started_and_not_once_dropped() {
        let taps = Arc::new(Taps::default());
        let heard = Arc::new(AtomicUsize::new(0));
        let h = heard.clone();
        let tap = taps.add(Arc::new(move |_: &Change| {
            h.fetch_add(1, Ordering::Relaxed);
        }));
        let c = Change { key: "k".into(), kind: ChangeKind::Put, origin: Origin::Local, stamp: Stamp::ZERO };
        taps.tell(&c);
        tap.set_active(true);
        tap.set_active(true);
        taps.tell(&c);
        assert!(taps.active());
        tap.set_active(false);
        taps.tell(&c);
        assert!(!taps.active(), "started twice, stopped once: stopped");
        tap.set_active(true);
        drop(tap);
        assert!(!taps.active());
        taps.tell(&c);
        assert_eq!(heard.load(Ordering::Relaxed), 1);
        assert!(taps.list.read().is_empty());
    }
}
