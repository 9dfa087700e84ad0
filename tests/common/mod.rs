//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod http;
pub mod mesh;
pub mod process;
pub mod redis_ref;
pub mod wait;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use meshcache::hlc::NodeId;
use meshcache::membership::{Incarnation, MemberId};
use meshcache::replica::Replica;
use meshcache::store::StoreConfig;
use meshcache::sync::{Session, SessionStats, SyncError};
use meshcache::wire::{FrameCodec, Message, SyncMsg};

/// A fixed start of time for tests (Unix ms).
pub const T0: u64 = 1_700_000_000_000;

pub fn id(name: &str, node: u64) -> MemberId {
    MemberId { name: name.into(), incarnation: Incarnation { started_ms: node, node: NodeId(node) } }
}

pub fn replica(name: &str, node: u64) -> Replica {
    Replica::new(id(name, node), StoreConfig::default(), true).unwrap()
}

pub fn replica_with(name: &str, node: u64, cfg: StoreConfig, booted: bool) -> Replica {
    Replica::new(id(name, node), cfg, booted).unwrap()
}

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Sends a sync message through the real frame codec, as the network would.
fn over_the_wire(m: SyncMsg) -> SyncMsg {
    let codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    codec.encode(&Message::Sync(m), &mut buf).unwrap();
    match codec.decode(&mut buf).unwrap() {
        Some(Message::Sync(m)) => m,
        other => panic!("decoded {other:?}"),
    }
}

/// Runs one anti-entropy session between `a` (initiator) and `b` at `now`,
/// with both sides' messages interleaved, until both are finished.
/// Returns both sides' stats, or the first error.
pub fn sync(a: &Replica, b: &Replica, now: u64) -> Result<(SessionStats, SessionStats), SyncError> {
    sync_at(a, now, b, now)
}

/// As `sync`, with each side's own local time.
pub fn sync_at(a: &Replica, now_a: u64, b: &Replica, now_b: u64) -> Result<(SessionStats, SessionStats), SyncError> {
    drive(a, Session::initiate(a, now_a), now_a, b, Session::respond(now_b), now_b, |_| {})
}

/// Runs two sessions already opened (`sa` on `a`, initiating; `sb` on `b`)
/// to their end, calling `seen` with each of `a`'s messages once `b` has
/// taken it in. Each side takes the other's messages only while it
/// `wants_input`, as the stream driver does; the rest wait in flight.
/// Returns both sides' stats, or the first error.
pub fn drive(
    a: &Replica,
    mut sa: Session,
    now_a: u64,
    b: &Replica,
    mut sb: Session,
    now_b: u64,
    mut seen: impl FnMut(&SyncMsg),
) -> Result<(SessionStats, SessionStats), SyncError> {
    let (mut to_a, mut to_b) = (VecDeque::new(), VecDeque::new());
    // Bounded: a session that does not finish in this many turns is a bug.
    for _ in 0..100_000 {
        let mut moved = false;
        while let Some(m) = sa.poll_transmit(a) {
            moved = true;
            to_b.push_back(over_the_wire(m));
        }
        while sb.wants_input() {
            let Some(m) = to_b.pop_front() else { break };
            moved = true;
            if let Err(e) = sb.handle_message(b, m.clone(), now_b) {
                // A refusing side still sends what it queued (its Reject):
                // the initiator's view of the failure is the one to report.
                while let Some(m) = sb.poll_transmit(b) {
                    sa.handle_message(a, over_the_wire(m), now_a)?;
                }
                return Err(e);
            }
            seen(&m);
        }
        while let Some(m) = sb.poll_transmit(b) {
            moved = true;
            to_a.push_back(over_the_wire(m));
        }
        while sa.wants_input() {
            let Some(m) = to_a.pop_front() else { break };
            moved = true;
            sa.handle_message(a, m, now_a)?;
        }
        if sa.is_finished() && sb.is_finished() && to_a.is_empty() && to_b.is_empty() {
            assert!(sa.is_complete() && sb.is_complete(), "both sides complete");
            return Ok((sa.stats().clone(), sb.stats().clone()));
        }
        assert!(moved, "session stalled: {:?} / {:?}", sa.phase(), sb.phase());
    }
    panic!("session did not finish");
}

/// Settings for a `redis` crate client. The crate waits 500 ms for a reply
/// by default: a timing that a loaded CI machine can miss. Tests check
/// behaviour, not speed.
pub fn patient() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(60)))
        .set_connection_timeout(Some(std::time::Duration::from_secs(30)))
}
