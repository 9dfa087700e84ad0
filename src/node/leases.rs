//! The fill leases this peer knows of (`Mesh::get_or_load`): for each key
//! being loaded somewhere in the mesh, the highest lease taken on it, until
//! it is released or runs out.
//!
//! A lease is not a register: it never becomes visible as a value, never
//! hides or replaces one, and is not repaired by anti-entropy. One that is
//! lost (a dropped push, a peer that connects later) costs at most a second
//! load of the key. Each peer times a lease from when it learns of it, on
//! its own clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::hlc::Stamp;
use crate::locks::Mutex;
use crate::wire::Lease;

/// Most leases held at once. Past it, leases that ran out are dropped, and
/// if none did, a new lease from a peer is ignored (which costs at most a
/// second load): a peer cannot make this one hold more than this.
const MAX_LEASES: usize = 64 * 1024;

#[derive(Clone, Copy, Debug)]
struct Held {
    stamp: Stamp,
    until_ms: u64,
}

/// The lease table of one peer.
#[derive(Default)]
pub(super) struct Leases {
    held: Mutex<HashMap<Bytes, Held>>,
    /// Fills waiting on a key, woken when its lease or its value changes.
    waiters: Mutex<HashMap<Bytes, (Arc<Notify>, usize)>>,
    /// How many keys have waiters: while zero, a write pays one load.
    watched: AtomicUsize,
}

/// A fill's registration as a waiter on one key; see [`Leases::watch`].
pub(super) struct Watch<'a> {
    leases: &'a Leases,
    key: Bytes,
    pub(super) notify: Arc<Notify>,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut w = self.leases.waiters.lock();
        if let Some(e) = w.get_mut(&self.key) {
            e.1 -= 1;
            if e.1 == 0 {
                w.remove(&self.key);
                self.leases.watched.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Leases {
    /// Takes in a lease, taken here or received: the higher stamp wins; a
    /// release ends the lease it names only.
    /// A lease with the stamp of the one held renews it.
    pub(super) fn handle(&self, l: Lease, now_ms: u64) {
        let key = l.key.clone();
        {
            let mut held = self.held.lock();
            let current = held.get(&l.key).filter(|h| h.until_ms > now_ms).copied();
            if l.released {
                if current.is_some_and(|h| h.stamp == l.stamp) {
                    held.remove(&l.key);
                } else {
                    return;
                }
            } else if current.is_none_or(|h| l.stamp >= h.stamp) {
                if held.len() >= MAX_LEASES && !held.contains_key(&l.key) {
                    held.retain(|_, h| h.until_ms > now_ms);
                    if held.len() >= MAX_LEASES {
                        return;
                    }
                }
                held.insert(l.key, Held { stamp: l.stamp, until_ms: now_ms.saturating_add(u64::from(l.ttl_ms)) });
            } else {
                return;
            }
        }
        self.touched(&key);
    }

    /// Registers a fill waiting on `key`: its `notify` is woken when the
    /// key's lease or value changes. Register before looking, so that no
    /// change between the look and the wait is missed.
    pub(super) fn watch(&self, key: &Bytes) -> Watch<'_> {
        let mut w = self.waiters.lock();
        let e = w.entry(key.clone()).or_insert_with(|| {
            self.watched.fetch_add(1, Ordering::Relaxed);
            (Arc::new(Notify::new()), 0)
        });
        e.1 += 1;
        Watch { leases: self, key: key.clone(), notify: e.0.clone() }
    }

    /// Whether any fill waits on a key: while none does, a write need not
    /// call [`Leases::touched`].
    pub(super) fn waited_on(&self) -> bool {
        self.watched.load(Ordering::Relaxed) > 0
    }

    /// `key`'s lease or value changed: wakes the fills waiting on it.
    pub(super) fn touched(&self, key: &[u8]) {
        if !self.waited_on() {
            return;
        }
        if let Some((n, _)) = self.waiters.lock().get(key) {
            n.notify_waiters();
        }
    }

    /// The live lease on `key`: its stamp, and until when it holds here.
    pub(super) fn live(&self, key: &[u8], now_ms: u64) -> Option<(Stamp, u64)> {
        let mut held = self.held.lock();
        match held.get(key) {
            Some(h) if h.until_ms > now_ms => Some((h.stamp, h.until_ms)),
            Some(_) => {
                held.remove(key);
                None
            }
            None => None,
        }
    }

    /// Leases held (for stats and tests).
    pub(super) fn len(&self) -> usize {
        self.held.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::NodeId;

    fn lease(key: &str, hlc: u64, node: u64, released: bool) -> Lease {
        Lease { key: Bytes::from(key.to_string()), stamp: Stamp { hlc, node: NodeId(node) }, ttl_ms: 100, released }
    }

    #[test]
    fn the_higher_lease_wins_and_a_release_ends_only_its_own() {
        let t = Leases::default();
        t.handle(lease("k", 10, 1, false), 0);
        t.handle(lease("k", 9, 2, false), 0);
        assert_eq!(t.live(b"k", 0).map(|(s, _)| s.node), Some(NodeId(1)), "the lower lease loses");
        t.handle(lease("k", 10, 2, false), 0);
        assert_eq!(t.live(b"k", 0).map(|(s, _)| s.node), Some(NodeId(2)), "same time: the node breaks the tie");
        t.handle(lease("k", 10, 1, true), 0);
        assert!(t.live(b"k", 0).is_some(), "a release of an outbid lease changes nothing");
        t.handle(lease("k", 10, 2, true), 0);
        assert!(t.live(b"k", 0).is_none());
    }

    #[test]
    fn a_lease_runs_out_on_the_local_clock() {
        let t = Leases::default();
        t.handle(lease("k", 10, 1, false), 1_000);
        assert_eq!(t.live(b"k", 1_099).map(|(_, until)| until), Some(1_100));
        assert!(t.live(b"k", 1_100).is_none());
        assert_eq!(t.len(), 0, "collected once seen expired");
        // An expired lease is outbid by any new one.
        t.handle(lease("k", 50, 1, false), 2_000);
        t.handle(lease("k", 20, 2, false), 2_200);
        assert_eq!(t.live(b"k", 2_200).map(|(s, _)| s.node), Some(NodeId(2)));
    }

    #[test]
    fn the_table_is_bounded() {
        let t = Leases::default();
        for i in 0..MAX_LEASES + 10 {
            t.handle(lease(&format!("k{i}"), 10, 1, false), 0);
        }
        assert_eq!(t.len(), MAX_LEASES, "new leases are ignored while every one is live");
        t.handle(lease("late", 10, 1, false), 200);
        assert_eq!(t.len(), 1, "expired leases make room");
    }
}
