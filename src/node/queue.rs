//! The per-peer push queue: bounded in bytes held, never blocking writers.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::store::Register;

/// Estimated wire bytes of one queued write (key, value, stamp, framing):
/// what batches are cut by.
pub(crate) fn entry_cost(key: &Bytes, reg: &Register) -> usize {
    key.len() + reg.val.payload_len() + 24
}

/// Bytes one queued write holds: its slot in the queue, and the key and
/// value it owns (each write's own copies). What the queue is bounded by:
/// the wire estimate leaves out the slot, about 100 bytes a write.
fn held_cost(key: &Bytes, reg: &Register) -> usize {
    std::mem::size_of::<(Bytes, Register)>() + key.len() + reg.val.payload_len()
}

#[derive(Default)]
struct State {
    items: Vec<(Bytes, Register)>,
    /// Sum of `entry_cost` over `items`.
    bytes: usize,
    /// Sum of `held_cost` over `items`.
    held: usize,
    /// A batch must go out even with no entries (a FLUSHALL's
    /// `clear_below` rides in the batch header).
    force: bool,
    /// Writes were dropped since the last batch: the peer needs
    /// anti-entropy to catch up.
    overflowed: bool,
}

/// Writes waiting to be pushed to one peer incarnation.
///
/// The lock is held only to append or to swap the buffer out, never across
/// an `.await`, so a writer waits at most for another writer's append.
pub(crate) struct PushQueue {
    state: Mutex<State>,
    /// Wakes the peer's sender task. `notify_one` stores a permit when the
    /// task is busy, so no wake-up is lost.
    pub(crate) notify: Notify,
    limit: usize,
    closed: AtomicBool,
}

/// What the sender takes from the queue.
pub(crate) struct Batch {
    pub(crate) entries: Vec<(Bytes, Register)>,
    pub(crate) force: bool,
    pub(crate) overflowed: bool,
}

impl PushQueue {
    pub(crate) fn new(limit: usize) -> Self {
        PushQueue { state: Mutex::new(State::default()), notify: Notify::new(), limit, closed: AtomicBool::new(false) }
    }

    /// Queues one write. On overflow the whole queue is dropped and the
    /// peer is marked for anti-entropy: memory stays bounded and the writer
    /// does not wait.
    pub(crate) fn push(&self, key: Bytes, reg: Register) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let (cost, held) = (entry_cost(&key, &reg), held_cost(&key, &reg));
        {
            let mut s = self.state.lock();
            if s.held + held > self.limit {
                s.items = Vec::new();
                s.bytes = 0;
                s.held = 0;
                s.overflowed = true;
            } else {
                s.bytes += cost;
                s.held += held;
                s.items.push((key, reg));
            }
        }
        self.notify.notify_one();
    }

    /// Asks for a batch even if no write is queued.
    pub(crate) fn force(&self) {
        self.state.lock().force = true;
        self.notify.notify_one();
    }

    /// Takes up to about `max_bytes` of writes, oldest first.
    pub(crate) fn take(&self, max_bytes: usize) -> Batch {
        let mut s = self.state.lock();
        let force = std::mem::take(&mut s.force);
        let overflowed = std::mem::take(&mut s.overflowed);
        if s.bytes <= max_bytes {
            s.bytes = 0;
            s.held = 0;
            return Batch { entries: std::mem::take(&mut s.items), force, overflowed };
        }
        let (mut size, mut held, mut n) = (0, 0, 0);
        for (k, r) in &s.items {
            let c = entry_cost(k, r);
            if n > 0 && size + c > max_bytes {
                break;
            }
            size += c;
            held += held_cost(k, r);
            n += 1;
        }
        let rest = s.items.split_off(n);
        let entries = std::mem::replace(&mut s.items, rest);
        s.bytes -= size;
        s.held -= held;
        Batch { entries, force, overflowed }
    }

    /// True while writes are waiting.
    pub(crate) fn has_more(&self) -> bool {
        let s = self.state.lock();
        !s.items.is_empty() || s.force
    }

    /// Drops everything and refuses further writes (the peer is gone).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        *self.state.lock() = State::default();
        self.notify.notify_one();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Stamp;
    use crate::store::Slot;

    fn reg(n: usize) -> Register {
        Register { val: Slot::Value { data: Bytes::from(vec![0u8; n]), expires_at_ms: None }, marker: Stamp::ZERO }
    }

    #[test]
    fn overflow_drops_the_queue_and_flags_it() {
        let each = held_cost(&Bytes::from_static(b"k"), &reg(100));
        let q = PushQueue::new(5 * each);
        for _ in 0..5 {
            q.push(Bytes::from_static(b"k"), reg(100));
        }
        assert!(!q.state.lock().overflowed, "five fit");
        q.push(Bytes::from_static(b"k"), reg(100));
        let b = q.take(1 << 20);
        assert!(b.entries.is_empty() && b.overflowed);
        q.push(Bytes::from_static(b"k"), reg(10));
        let b = q.take(1 << 20);
        assert_eq!(b.entries.len(), 1);
        assert!(!b.overflowed, "the flag is reported once");
    }

    /// Small writes cost the queue more than their wire bytes: a bound
    /// read as wire bytes would let nearly four times as many of these in.
    #[test]
    fn the_bound_counts_what_a_write_holds_not_its_wire_bytes() {
        let (k, r) = (Bytes::from_static(b"k"), reg(0));
        assert!(held_cost(&k, &r) > 3 * entry_cost(&k, &r), "{} {}", held_cost(&k, &r), entry_cost(&k, &r));
        let q = PushQueue::new(10 * held_cost(&k, &r));
        for _ in 0..11 {
            q.push(k.clone(), reg(0));
        }
        let b = q.take(1 << 20);
        assert!(b.overflowed && b.entries.is_empty());
    }

    #[test]
    fn take_cuts_batches_by_size_in_order() {
        let q = PushQueue::new(1 << 20);
        for i in 0..10u8 {
            q.push(Bytes::from(vec![i]), reg(100));
        }
        let b = q.take(300);
        assert_eq!(b.entries.len(), 2);
        assert_eq!(b.entries[0].0[0], 0);
        assert!(q.has_more());
        let rest = q.take(1 << 20);
        assert_eq!(rest.entries.len(), 8);
        assert_eq!(rest.entries[0].0[0], 2);
        assert!(!q.has_more());
    }
}
