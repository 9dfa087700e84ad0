//! Pub/sub across the mesh: a message published on one peer is handed to
//! that peer's listeners at once and pushed to every connected peer, whose
//! listeners get it when it arrives.
//!
//! Delivery is at most once per listener while links are up: a message
//! rides the push stream behind the writes queued before it, is dropped
//! with them if the queue overflows, and is not sent again after a lost
//! connection or a partition (nothing like anti-entropy repairs it).
//! Listeners are called on the task that delivers (the publisher's, or the
//! push receiver's): they must be quick, as the RESP server's are (it
//! queues the message for its subscribed clients).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crate::locks::RwLock;
use crate::wire::Publication;

/// A listener: given a message, returns how many receivers it handed it to
/// (what Redis's `PUBLISH` answers, counted on this peer).
type Listen = dyn Fn(&Publication) -> usize + Send + Sync;

/// The listeners of one peer.
#[derive(Default)]
pub(super) struct Listeners {
    list: RwLock<Vec<(u64, Arc<Listen>)>>,
    next: AtomicU64,
}

impl Listeners {
    /// Hands `m` to every listener; the receivers they report.
    pub(super) fn deliver(&self, m: &Publication) -> usize {
        // Cloned out so that a listener may add or remove listeners.
        let list: Vec<Arc<Listen>> = self.list.read().iter().map(|(_, f)| f.clone()).collect();
        list.iter().map(|f| f(m)).sum()
    }

    pub(super) fn add(self: &Arc<Self>, f: Arc<Listen>) -> MessageListener {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.list.write().push((id, f));
        MessageListener { listeners: Arc::downgrade(self), id }
    }
}

/// A registered listener ([`Mesh::on_message`](crate::Mesh::on_message));
/// dropping it unregisters it.
pub struct MessageListener {
    listeners: Weak<Listeners>,
    id: u64,
}

impl Drop for MessageListener {
    fn drop(&mut self) {
        if let Some(l) = self.listeners.upgrade() {
            l.list.write().retain(|(id, _)| *id != self.id);
        }
    }
}

impl std::fmt::Debug for MessageListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageListener").field("id", &self.id).finish()
    }
}
