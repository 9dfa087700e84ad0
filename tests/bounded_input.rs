//! What an authenticated peer can make another peer hold, over real QUIC on
//! loopback: a frame's buffer grows with the bytes that arrive, not with the
//! length its prefix announces.
//!
//! This binary counts every allocation (a global allocator), so it holds
//! this one test only: another running beside it would blur the count.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use common::mesh::pair;
use common::wait::{eventually, DEADLINE};
use meshcache::hlc::{NodeId, Stamp};
use meshcache::membership::{Incarnation, MemberId};
use meshcache::store::{Register, Slot};
use meshcache::transport::certs::{self, EphemeralCa};
use meshcache::transport::tls;
use meshcache::wire::{DeltaBatch, FrameCodec, Hello, Message, DEFAULT_MAX_FRAME, PROTOCOL_VERSION};

/// Bytes allocated and not yet freed, and the most there ever were since
/// the last [`reset_peak`].
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

struct Counting;

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn reset_peak() -> usize {
    let now = LIVE.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

fn now_ms() -> u64 {
    meshcache::env::system_ms()
}

fn frame(m: &Message) -> Bytes {
    FrameCodec::default().encode_to_bytes(m).unwrap()
}

/// Uni streams a peer accepts at once per connection (the transport
/// configuration's limit): every one of them is used.
const STREAMS: usize = 16;

/// An authenticated peer announces a maximal frame on every push stream it
/// may open and sends a few bytes of each. Before each announcement it
/// sends one valid push, whose key shows that the stream is being read: the
/// reader takes the announcement right after applying it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_frames_cost_what_arrives_and_the_peer_keeps_serving() {
    let ca = EphemeralCa::new().unwrap();
    let (a, b) = pair(&ca).await;

    let evil = MemberId { name: "evil".into(), incarnation: Incarnation { started_ms: now_ms(), node: NodeId(99) } };
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(tls::quinn_client_config(&ca.issue("evil").unwrap()).unwrap());
    let conn = ep.connect(a.local_addr(), certs::SERVER_NAME).unwrap().await.unwrap();
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        from: evil.clone(),
        physical_ms: now_ms(),
        hlc: Stamp::pack(now_ms(), 0),
        listen: None,
    };
    s.write_all(&frame(&Message::Hello(hello))).await.unwrap();
    s.finish().unwrap();
    let reply = tokio::time::timeout(DEADLINE, r.read_to_end(1 << 20)).await.unwrap().unwrap();
    let msgs = FrameCodec::default().decode_all(&reply).unwrap();
    assert!(matches!(msgs.first(), Some(Message::Hello(_))), "{msgs:?}");

    let before = reset_peak();
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let reg = Register {
            val: Slot::Value { data: Bytes::from_static(b"v"), expires_at_ms: None },
            marker: Stamp { hlc: Stamp::pack(now_ms(), i as u16), node: NodeId(99) },
        };
        let push = Message::Deltas(DeltaBatch {
            from: evil.clone(),
            hlc: reg.marker.hlc,
            clear_below: Stamp::ZERO,
            members: None,
            entries: vec![(Bytes::from(format!("probe-{i}")), reg)],
        });
        let mut bytes = BytesMut::from(&frame(&push)[..]);
        bytes.extend_from_slice(&(DEFAULT_MAX_FRAME as u32).to_be_bytes());
        bytes.extend_from_slice(b"and then nothing more");
        let mut u = conn.open_uni().await.unwrap();
        u.write_all(&bytes).await.unwrap();
        // Kept open: the announced frame stays pending.
        streams.push(u);
    }
    eventually("every probe applied", || (0..STREAMS).all(|i| a.get(format!("probe-{i}").as_bytes()).is_some())).await;

    // The peer keeps serving meanwhile (and its readers have long since
    // taken the announcements that followed the probes).
    a.insert("after", "ok").unwrap();
    eventually("replication continues", || b.get(b"after").is_some()).await;
    b.insert("back", "ok").unwrap();
    eventually("both ways", || a.get(b"back").is_some()).await;

    let grown = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    // Announced: STREAMS × 16 MiB = 256 MiB. Received: a few hundred bytes
    // per stream, plus one read's reserve each.
    assert!(
        grown < 32 << 20,
        "{grown} bytes allocated at peak for {STREAMS} announced frames of {DEFAULT_MAX_FRAME} bytes"
    );
    assert_eq!(a.stats().connected, 2, "a still serves b and the announcing peer");
    drop(streams);
    conn.close(0u32.into(), b"done");
    a.shutdown().await;
    b.shutdown().await;
}
