//! The per-peer push queue: bounded in bytes held, never blocking writers.
//! It carries writes, and beside them pub/sub messages and fill leases
//! ([`Aside`]), each of which goes out with or after the writes queued
//! before it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::locks::Mutex;
use crate::store::Register;
use crate::wire::{Lease, Publication, LEASES_SINCE, PUBLISHED_SINCE};

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

/// What rides the push stream beside the writes, in order with them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Aside {
    Message(Publication),
    Lease(Lease),
}

impl Aside {
    /// The protocol version that introduced its message kind.
    fn since(&self) -> u16 {
        match self {
            Aside::Message(_) => PUBLISHED_SINCE,
            Aside::Lease(_) => LEASES_SINCE,
        }
    }

    fn payload(&self) -> usize {
        match self {
            Aside::Message(m) => m.channel.len() + m.message.len(),
            Aside::Lease(l) => l.key.len() + 16,
        }
    }
}

/// Estimated wire bytes of one queued message.
fn message_cost(m: &Aside) -> usize {
    m.payload() + 8
}

/// Bytes one queued message holds.
fn message_held(m: &Aside) -> usize {
    std::mem::size_of::<(usize, Aside)>() + m.payload()
}

#[derive(Default)]
struct State {
    /// A ring rather than a vector: a batch is taken from the front while
    /// writers append at the back, and the ring keeps its capacity, so
    /// neither a take nor the appends after it copy or regrow the queue.
    items: VecDeque<(Bytes, Register)>,
    /// Messages, each with how many of `items` were queued before it: it
    /// may go out once those have.
    messages: Vec<(usize, Aside)>,
    /// Sum of `entry_cost` over `items` and `message_cost` over
    /// `messages`.
    bytes: usize,
    /// Sum of `held_cost` over `items` and `message_held` over `messages`.
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
    /// task is busy, so no wake-up is lost. Shared, so that a wake can be
    /// put off ([`PushWakes`]).
    pub(crate) notify: Arc<Notify>,
    limit: usize,
    /// The link's protocol version: a message of a newer kind is never
    /// queued (the peer would take it for a protocol violation).
    version: u16,
    closed: AtomicBool,
    /// The peer is leaving: once the queue is empty, the sender finishes
    /// its stream and waits for the other side to have read all of it.
    draining: AtomicBool,
    /// How the sender ended: `None` while it runs, `Some(true)` once the
    /// other side confirmed reading everything it sent, `Some(false)` if
    /// it ended otherwise (the connection went, the peer stopped).
    ended: tokio::sync::watch::Sender<Option<bool>>,
}

/// What the sender takes from the queue.
pub(crate) struct Batch {
    pub(crate) entries: Vec<(Bytes, Register)>,
    /// Messages and leases to send after `entries`, in order.
    pub(crate) messages: Vec<Aside>,
    pub(crate) force: bool,
    pub(crate) overflowed: bool,
}

impl PushQueue {
    /// A queue of at most `limit` bytes for a link at protocol `version`.
    pub(crate) fn new(limit: usize, version: u16) -> Self {
        PushQueue {
            state: Mutex::new(State::default()),
            notify: Arc::new(Notify::new()),
            limit,
            version,
            closed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            ended: tokio::sync::watch::Sender::new(None),
        }
    }

    /// Asks the sender to send what is queued, then finish its stream.
    pub(crate) fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The sender ended: `flushed` if the other side read all it sent.
    pub(crate) fn set_ended(&self, flushed: bool) {
        self.ended.send_if_modified(|e| {
            let first = e.is_none();
            if first {
                *e = Some(flushed);
            }
            first
        });
    }

    /// Waits for the sender to end; true if the other side read all it
    /// sent.
    pub(crate) async fn ended(&self) -> bool {
        let mut rx = self.ended.subscribe();
        let ended = rx.wait_for(Option::is_some).await.map(|e| e.unwrap_or(false));
        ended.unwrap_or(false)
    }

    /// Queues one write. On overflow the whole queue is dropped and the
    /// peer is marked for anti-entropy: memory stays bounded and the writer
    /// does not wait.
    pub(crate) fn push(&self, key: Bytes, reg: Register) {
        let (cost, held) = (entry_cost(&key, &reg), held_cost(&key, &reg));
        self.admit(cost, held, |s| s.items.push_back((key, reg)));
    }

    /// Queues a transaction's writes (one stamp) together: a batch is not
    /// cut between them unless they do not fit in one frame (see `take`).
    pub(crate) fn push_many(&self, entries: &[(Bytes, Register)]) {
        let cost = entries.iter().map(|(k, r)| entry_cost(k, r)).sum();
        let held = entries.iter().map(|(k, r)| held_cost(k, r)).sum();
        self.admit(cost, held, |s| s.items.extend(entries.iter().cloned()));
    }

    /// Queues one pub/sub message, behind the writes queued so far. On
    /// overflow it is dropped with the rest, as writes are: messages are
    /// delivered at most once. Not queued for a link older than pub/sub.
    pub(crate) fn push_message(&self, m: Publication) {
        self.push_aside(Aside::Message(m));
    }

    /// Queues a fill lease (taken or released), behind the writes queued so
    /// far: a release goes out after the value its holder wrote. Not queued
    /// for a link older than leases: that peer neither waits for this
    /// peer's fills nor makes this peer wait for its own (ALGORITHM.md,
    /// "Protocol versions").
    pub(crate) fn push_lease(&self, l: Lease) {
        self.push_aside(Aside::Lease(l));
    }

    fn push_aside(&self, m: Aside) {
        if m.since() > self.version {
            return;
        }
        let (cost, held) = (message_cost(&m), message_held(&m));
        self.admit(cost, held, |s| {
            let after = s.items.len();
            s.messages.push((after, m));
        });
    }

    /// Adds an item of `cost` wire bytes holding `held` bytes with `add`,
    /// or drops the whole queue if it would pass the bound.
    fn admit(&self, cost: usize, held: usize, add: impl FnOnce(&mut State)) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        {
            let mut s = self.state.lock();
            if s.held + held > self.limit {
                s.drop_all();
            } else {
                s.bytes += cost;
                s.held += held;
                add(&mut s);
            }
        }
        wake(&self.notify);
    }

    /// Asks for a batch even if no write is queued.
    pub(crate) fn force(&self) {
        self.state.lock().force = true;
        self.notify.notify_one();
    }

    /// Takes up to about `max_bytes` of writes, oldest first, and the
    /// messages queued behind no other write (up to about `max_bytes` of
    /// them too). A transaction's writes (a run with one stamp) are not cut
    /// apart unless the batch would pass `room` bytes (what a frame holds),
    /// so that the receiver can merge them as one.
    pub(crate) fn take(&self, max_bytes: usize, room: usize) -> Batch {
        let mut s = self.state.lock();
        let force = std::mem::take(&mut s.force);
        let overflowed = std::mem::take(&mut s.overflowed);
        let n = if s.bytes <= max_bytes && s.messages.is_empty() {
            s.bytes = 0;
            s.held = 0;
            s.items.len()
        } else {
            let (mut size, mut held, mut n) = (0, 0, 0);
            let mut last = None;
            for (k, r) in s.items.iter() {
                let c = entry_cost(k, r);
                let in_run = last == Some(r.marker);
                if n > 0 && size + c > if in_run { room } else { max_bytes } {
                    break;
                }
                size += c;
                held += held_cost(k, r);
                n += 1;
                last = Some(r.marker);
            }
            s.bytes -= size;
            s.held -= held;
            n
        };
        let entries: Vec<_> = s.items.drain(..n).collect();
        s.shrink_idle();
        let messages = s.take_messages(entries.len(), max_bytes);
        Batch { entries, messages, force, overflowed }
    }

    /// True while writes are waiting.
    pub(crate) fn has_more(&self) -> bool {
        let s = self.state.lock();
        !s.items.is_empty() || !s.messages.is_empty() || s.force
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

thread_local! {
    /// The senders to wake once the code running [`PushWakes::defer`] on
    /// this thread has returned; `None` outside it.
    static DEFERRED: RefCell<Option<Vec<Arc<Notify>>>> = const { RefCell::new(None) };
}

/// Wakes a sender now, or once the [`PushWakes::defer`] running on this
/// thread has returned and its owner has done what it had to first.
fn wake(notify: &Arc<Notify>) {
    let deferred = DEFERRED.with(|d| match d.borrow_mut().as_mut() {
        Some(wakes) => {
            if !wakes.iter().any(|n| Arc::ptr_eq(n, notify)) {
                wakes.push(notify.clone());
            }
            true
        }
        None => false,
    });
    if !deferred {
        notify.notify_one();
    }
}

/// Push senders' wakes, put off until a RESP connection has written its
/// replies.
///
/// A write wakes the sender of every peer it is queued for. On tokio's
/// multi-threaded runtime the second of two such wakes pushes the first
/// out of the worker's next-task slot, and the runtime wakes a parked
/// worker to take it; on a machine with few cores that worker, and the
/// senders and QUIC tasks it runs, take the core the client needs to read
/// its reply. With two peers, a peer written once every 2 ms answered its
/// `SET` in about 140 us, against 60 with one peer and 50 once the wakes
/// came after the reply (BENCHMARKS.md, "Push wakes after the reply").
/// The writes are queued at once all the same, so a sender already awake
/// takes them; a sender waits at most until the reply is in the socket's
/// buffer, or until the socket is found full.
#[cfg(feature = "server")]
#[derive(Default)]
pub(crate) struct PushWakes(Vec<Arc<Notify>>);

#[cfg(feature = "server")]
impl PushWakes {
    /// Runs `f`, keeping the wakes of the queues it writes to rather than
    /// waking their senders. `f` is synchronous, so no task switch moves
    /// it off the thread whose list it fills.
    pub(crate) fn defer<R>(&mut self, f: impl FnOnce() -> R) -> R {
        /// Takes the list back even if `f` panics: a list left behind
        /// would hold back every later write's wake on this thread.
        struct Restore<'a>(&'a mut Vec<Arc<Notify>>);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                *self.0 = DEFERRED.with(|d| d.borrow_mut().take()).unwrap_or_default();
            }
        }
        let nested = DEFERRED.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_some() {
                return true;
            }
            *d = Some(std::mem::take(&mut self.0));
            false
        });
        if nested {
            // The outer call's list keeps them.
            return f();
        }
        let _restore = Restore(&mut self.0);
        f()
    }

    /// Wakes the senders put off.
    pub(crate) fn wake(&mut self) {
        for n in self.0.drain(..) {
            n.notify_one();
        }
    }
}

#[cfg(feature = "server")]
impl Drop for PushWakes {
    /// A connection that ends before its next write still wakes them.
    fn drop(&mut self) {
        self.wake();
    }
}

impl State {
    /// Gives back the ring's capacity once it is mostly unused: `held`
    /// counts a queued write's slot only while it is queued, so a ring
    /// left at the size of a past surge would hold memory nothing counts.
    fn shrink_idle(&mut self) {
        const KEEP: usize = 256;
        if self.items.capacity() > KEEP && self.items.capacity() > 4 * self.items.len() {
            self.items.shrink_to((2 * self.items.len()).max(KEEP));
        }
    }

    /// Drops everything queued and flags the overflow.
    fn drop_all(&mut self) {
        self.items = VecDeque::new();
        self.messages = Vec::new();
        self.bytes = 0;
        self.held = 0;
        self.overflowed = true;
    }

    /// The messages behind at most `sent` writes (the writes just taken),
    /// oldest first, up to about `max_bytes`; the others now wait behind
    /// `sent` fewer writes.
    fn take_messages(&mut self, sent: usize, max_bytes: usize) -> Vec<Aside> {
        let (mut n, mut size) = (0, 0);
        for (after, m) in &self.messages {
            let c = message_cost(m);
            if *after > sent || (n > 0 && size + c > max_bytes) {
                break;
            }
            size += c;
            n += 1;
        }
        let rest = self.messages.split_off(n);
        let taken = std::mem::replace(&mut self.messages, rest);
        for (after, _) in &mut self.messages {
            *after = after.saturating_sub(sent);
        }
        let mut out = Vec::with_capacity(taken.len());
        for (_, m) in taken {
            self.bytes -= message_cost(&m);
            self.held -= message_held(&m);
            out.push(m);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Stamp;
    use crate::store::Slot;
    use crate::wire::PROTOCOL_VERSION;

    fn reg(n: usize) -> Register {
        Register { val: Slot::Value { data: Bytes::from(vec![0u8; n]), expires_at_ms: None }, marker: Stamp::ZERO }
    }

    #[test]
    fn overflow_drops_the_queue_and_flags_it() {
        let each = held_cost(&Bytes::from_static(b"k"), &reg(100));
        let q = PushQueue::new(5 * each, PROTOCOL_VERSION);
        for _ in 0..5 {
            q.push(Bytes::from_static(b"k"), reg(100));
        }
        assert!(!q.state.lock().overflowed, "five fit");
        q.push(Bytes::from_static(b"k"), reg(100));
        let b = q.take(1 << 20, 1 << 20);
        assert!(b.entries.is_empty() && b.overflowed);
        q.push(Bytes::from_static(b"k"), reg(10));
        let b = q.take(1 << 20, 1 << 20);
        assert_eq!(b.entries.len(), 1);
        assert!(!b.overflowed, "the flag is reported once");
    }

    /// Small writes cost the queue more than their wire bytes: a bound
    /// read as wire bytes would let nearly four times as many of these in.
    #[test]
    fn the_bound_counts_what_a_write_holds_not_its_wire_bytes() {
        let (k, r) = (Bytes::from_static(b"k"), reg(0));
        assert!(held_cost(&k, &r) > 3 * entry_cost(&k, &r), "{} {}", held_cost(&k, &r), entry_cost(&k, &r));
        let q = PushQueue::new(10 * held_cost(&k, &r), PROTOCOL_VERSION);
        for _ in 0..11 {
            q.push(k.clone(), reg(0));
        }
        let b = q.take(1 << 20, 1 << 20);
        assert!(b.overflowed && b.entries.is_empty());
    }

    #[test]
    fn take_cuts_batches_by_size_in_order() {
        let q = PushQueue::new(1 << 20, PROTOCOL_VERSION);
        for i in 0..10u8 {
            q.push(Bytes::from(vec![i]), reg(100));
        }
        let b = q.take(300, 300);
        assert_eq!(b.entries.len(), 2);
        assert_eq!(b.entries[0].0[0], 0);
        assert!(q.has_more());
        let rest = q.take(1 << 20, 1 << 20);
        assert_eq!(rest.entries.len(), 8);
        assert_eq!(rest.entries[0].0[0], 2);
        assert!(!q.has_more());
    }

    #[test]
    fn a_backlog_goes_out_in_order_and_gives_its_room_back() {
        let q = PushQueue::new(1 << 30, PROTOCOL_VERSION);
        let n = 5000u16;
        for i in 0..n {
            q.push(Bytes::copy_from_slice(&i.to_be_bytes()), reg(10));
        }
        let (mut next, mut appended) = (0u16, 0u16);
        while q.has_more() {
            let b = q.take(1000, 1000);
            assert!(!b.entries.is_empty());
            for (k, _) in &b.entries {
                assert_eq!(u16::from_be_bytes([k[0], k[1]]), next);
                next += 1;
            }
            // Writers append while batches are taken.
            if appended < 50 {
                q.push(Bytes::copy_from_slice(&(n + appended).to_be_bytes()), reg(10));
                appended += 1;
            }
        }
        assert_eq!((next, appended), (n + 50, 50), "every write went out once, in order");
        let s = q.state.lock();
        assert_eq!((s.bytes, s.held), (0, 0));
        assert!(s.items.capacity() <= 256, "an empty queue keeps {} slots", s.items.capacity());
    }

    fn msg(c: &str) -> Aside {
        Aside::Message(Publication {
            channel: Bytes::from(c.to_string()),
            message: Bytes::from_static(b"m"),
            sharded: false,
        })
    }

    fn publication(m: Aside) -> Publication {
        match m {
            Aside::Message(p) => p,
            Aside::Lease(_) => unreachable!(),
        }
    }

    /// A message never overtakes a write queued before it, however batches
    /// are cut; one queued first may go out with any batch.
    #[test]
    fn a_message_goes_out_with_or_after_the_writes_before_it() {
        let q = PushQueue::new(1 << 20, PROTOCOL_VERSION);
        q.push_message(publication(msg("first")));
        for i in 0..4u8 {
            q.push(Bytes::from(vec![i]), reg(100));
        }
        q.push_message(publication(msg("after4")));
        q.push(Bytes::from(vec![9]), reg(100));
        let lease = Lease { key: Bytes::from_static(b"k"), stamp: Stamp::ZERO, ttl_ms: 1, released: true };
        q.push_lease(lease.clone());
        q.push_message(publication(msg("after5")));
        let b = q.take(300, 300);
        assert_eq!(b.entries.len(), 2);
        assert_eq!(b.messages, vec![msg("first")]);
        let b = q.take(300, 300);
        assert_eq!(b.entries.len(), 2);
        assert_eq!(b.messages, vec![msg("after4")], "four writes out now");
        assert!(q.has_more());
        let b = q.take(300, 300);
        assert_eq!((b.entries.len(), b.messages), (1, vec![Aside::Lease(lease), msg("after5")]));
        assert!(!q.has_more());
        let s = q.state.lock();
        assert_eq!((s.bytes, s.held), (0, 0), "the accounting returns to zero");
    }

    #[test]
    fn messages_overflow_with_the_writes() {
        let m = msg("c");
        let q = PushQueue::new(3 * message_held(&m), PROTOCOL_VERSION);
        for _ in 0..4 {
            q.push_message(publication(m.clone()));
        }
        let b = q.take(1 << 20, 1 << 20);
        assert!(b.overflowed && b.messages.is_empty());
    }

    /// A link at an older version never carries a kind it does not speak:
    /// at 6, pub/sub messages but no leases; writes always.
    #[test]
    fn a_link_carries_only_the_kinds_its_version_speaks() {
        let lease = Lease { key: Bytes::from_static(b"k"), stamp: Stamp::ZERO, ttl_ms: 1, released: false };
        let q = PushQueue::new(1 << 20, PUBLISHED_SINCE);
        q.push_lease(lease.clone());
        q.push_message(publication(msg("c")));
        q.push(Bytes::from_static(b"k"), reg(1));
        let b = q.take(1 << 20, 1 << 20);
        assert_eq!((b.entries.len(), b.messages), (1, vec![msg("c")]));
        let q = PushQueue::new(1 << 20, LEASES_SINCE);
        q.push_lease(lease.clone());
        assert_eq!(q.take(1 << 20, 1 << 20).messages, vec![Aside::Lease(lease)]);
    }

    /// Whether the queue's sender has a wake waiting, taking it.
    #[cfg(feature = "server")]
    fn woken(q: &PushQueue) -> bool {
        use std::future::Future;
        let notified = std::pin::pin!(q.notify.notified());
        notified.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())).is_ready()
    }

    /// A RESP connection's writes: queued at once, their senders woken
    /// only when the connection says its replies are written, each once.
    #[cfg(feature = "server")]
    #[test]
    fn put_off_wakes_wait_for_wake_and_the_writes_are_queued_at_once() {
        let (q1, q2) = (PushQueue::new(1 << 20, PROTOCOL_VERSION), PushQueue::new(1 << 20, PROTOCOL_VERSION));
        let mut wakes = PushWakes::default();
        wakes.defer(|| {
            q1.push(Bytes::from_static(b"a"), reg(1));
            q1.push(Bytes::from_static(b"b"), reg(1));
            q2.push_message(publication(msg("m")));
        });
        assert!(!woken(&q1) && !woken(&q2), "no sender woken yet");
        assert_eq!(wakes.0.len(), 2, "one wake a sender");
        assert!(q1.has_more() && q2.has_more(), "the writes are queued");
        // Outside `defer`, a write wakes its sender at once.
        q2.push(Bytes::from_static(b"c"), reg(1));
        assert!(woken(&q2) && !woken(&q1));
        wakes.wake();
        assert!(woken(&q1) && woken(&q2));
        assert!(wakes.0.is_empty());
    }

    /// A connection that ends before writing its replies (an error, a
    /// client killed) still wakes the senders of its writes.
    #[cfg(feature = "server")]
    #[test]
    fn put_off_wakes_are_woken_when_dropped() {
        let q = PushQueue::new(1 << 20, PROTOCOL_VERSION);
        let mut wakes = PushWakes::default();
        wakes.defer(|| q.push(Bytes::from_static(b"a"), reg(1)));
        assert!(!woken(&q));
        drop(wakes);
        assert!(woken(&q));
    }

    /// A command that panics inside `defer` leaves the thread waking at
    /// once, and its own writes' wakes with their owner.
    #[cfg(feature = "server")]
    #[test]
    fn a_panic_inside_defer_puts_off_no_later_wake() {
        let q = PushQueue::new(1 << 20, PROTOCOL_VERSION);
        let mut wakes = PushWakes::default();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wakes.defer(|| {
                q.push(Bytes::from_static(b"a"), reg(1));
                panic!("a command failed");
            })
        }));
        assert!(r.is_err());
        assert!(!woken(&q));
        let other = PushQueue::new(1 << 20, PROTOCOL_VERSION);
        other.push(Bytes::from_static(b"b"), reg(1));
        assert!(woken(&other), "this thread wakes at once again");
        wakes.wake();
        assert!(woken(&q));
    }

    /// `defer` inside `defer` leaves the wakes to the outer one.
    #[cfg(feature = "server")]
    #[test]
    fn nested_defers_leave_the_wakes_to_the_outer_one() {
        let q = PushQueue::new(1 << 20, PROTOCOL_VERSION);
        let (mut outer, mut inner) = (PushWakes::default(), PushWakes::default());
        outer.defer(|| inner.defer(|| q.push(Bytes::from_static(b"a"), reg(1))));
        assert!(inner.0.is_empty() && outer.0.len() == 1);
        drop(inner);
        assert!(!woken(&q));
        outer.wake();
        assert!(woken(&q));
    }
}
