//! The state a peer's tasks and handles share, and how a change reaches
//! peers and subscribers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::driver::Driver;
use super::queue::PushQueue;
use crate::config::MeshConfig;
use crate::env::Env;
use crate::locks::Mutex;
use crate::membership::MemberId;
use crate::replica::Replica;
use crate::store::{Change, ChangeKind, Origin, Register, Written};
use crate::wire::{FrameCodec, VersionRange};

/// Counters of the peer's replication traffic. Monotonic.
#[derive(Default, Debug)]
pub(super) struct Counters {
    pub(super) deltas_sent: AtomicU64,
    pub(super) deltas_received: AtomicU64,
    pub(super) push_batches_sent: AtomicU64,
    pub(super) push_bytes_sent: AtomicU64,
    pub(super) queue_overflows: AtomicU64,
    pub(super) ae_rounds: AtomicU64,
    pub(super) ae_failed: AtomicU64,
    pub(super) ae_declined: AtomicU64,
    pub(super) ae_summaries_deferred: AtomicU64,
    pub(super) ae_summary_window_waits: AtomicU64,
    pub(super) ae_bytes_sent: AtomicU64,
    pub(super) ae_bytes_received: AtomicU64,
    pub(super) ae_entries_sent: AtomicU64,
    pub(super) ae_entries_sent_failed: AtomicU64,
    pub(super) ae_entries_received: AtomicU64,
    pub(super) refused_peers: AtomicU64,
    /// Connections whose TLS handshake failed, either way.
    pub(super) tls_refused: AtomicU64,
    /// Links made (a reconnection counts again).
    pub(super) links_made: AtomicU64,
    pub(super) messages_published: AtomicU64,
    pub(super) messages_received: AtomicU64,
    /// Loaders `get_or_load` ran here.
    pub(super) fill_loads: AtomicU64,
    pub(super) protocol_errors: AtomicU64,
    pub(super) seed_lookups_failed: AtomicU64,
    /// Hellos refused because the version ranges did not meet, by either
    /// side.
    pub(super) version_refusals: AtomicU64,
}

/// The link to a peer incarnation: the connection its pushes go over.
pub(super) struct PeerConn {
    pub(super) id: MemberId,
    pub(super) conn: quinn::Connection,
    pub(super) queue: Arc<PushQueue>,
    /// The protocol version of the link (which the queue sends by).
    pub(super) version: u16,
}

/// What a peer's tasks and handles share.
pub(super) struct Inner {
    pub(super) replica: Arc<Replica>,
    /// The peer's only clock and random source.
    pub(super) env: Env,
    /// Woken when an anti-entropy session ends or bootstrap times out:
    /// what `Mesh::wait_ready` waits on.
    pub(super) sessions_ended: tokio::sync::Notify,
    pub(super) config: MeshConfig,
    pub(super) endpoint: quinn::Endpoint,
    /// The TLS material new connections use (swapped by a reload).
    pub(super) tls: super::reload::Tls,
    pub(super) local_addr: SocketAddr,
    pub(super) advertise: SocketAddr,
    pub(super) codec: FrameCodec,
    /// The protocol versions this peer speaks.
    pub(super) versions: VersionRange,
    /// Single-version peers' versions and the last refusal for versions.
    pub(super) version_state: super::versions::Versions,
    pub(super) peers: Mutex<BTreeMap<String, PeerConn>>,
    pub(super) events: broadcast::Sender<Change>,
    /// Told of every change as it is applied (by the store's hooks; a
    /// flush by `publish`), beside `events`.
    pub(super) taps: Arc<super::taps::Taps>,
    /// The connection-level protocol (which connection is a peer's link,
    /// when rounds run, when to dial), driven by `driver::drive`.
    pub(super) links: Mutex<Driver>,
    /// Wakes the driver: an event may have moved the machine's deadline.
    pub(super) links_changed: tokio::sync::Notify,
    pub(super) counters: Counters,
    pub(super) cancel: CancellationToken,
    pub(super) tasks: TaskTracker,
    /// When this peer started, on tokio's clock (simulated runtimes move it).
    pub(super) started: tokio::time::Instant,
    /// The process's allocator count, when the application gives one.
    pub(super) memory: Option<super::MemoryProbe>,
    /// Who hears pub/sub messages on this peer.
    pub(super) listeners: Arc<super::pubsub::Listeners>,
    /// The TTL of `Mesh::insert` (`MeshBuilder::default_ttl`).
    pub(super) default_ttl: Option<std::time::Duration>,
    /// `get_or_load`'s fills running here, the leases known, and settings.
    pub(super) flights: super::fill::Flights,
    /// The RTT last measured to each address, for the next dial there.
    pub(super) rtts: super::rtt::Rtts,
    pub(super) leases: super::leases::Leases,
    pub(super) fill: super::fill::FillConfig,
    /// `Mesh::drain` or `shutdown` began: the peer still replicates, but
    /// should be sent no new traffic.
    pub(super) draining: std::sync::atomic::AtomicBool,
    /// Stopped because a newer incarnation of its name runs, or an
    /// operator forgot it (as opposed to a shutdown).
    pub(super) superseded: std::sync::atomic::AtomicBool,
}

impl Inner {
    pub(super) fn publish(&self, c: Change) {
        // Every change, a flush too, was told to the taps by the store,
        // under its shard locks. No subscriber is fine.
        let _ = self.events.send(c);
    }

    /// Whether anyone reads the change stream: without a reader, no change
    /// is built for it.
    pub(super) fn changes_heard(&self) -> bool {
        self.events.receiver_count() > 0
    }

    pub(super) fn publish_all(&self, changes: Vec<Change>) {
        if self.leases.waited_on() {
            for c in &changes {
                self.leases.touched(&c.key);
            }
        }
        if self.changes_heard() {
            for c in changes {
                self.publish(c);
            }
        }
    }

    /// Pushes a transaction's writes to every peer as one run (see
    /// `PushQueue::push_many`), then tells subscribers.
    pub(super) fn after_transaction(&self, written: Vec<Written>) {
        let entries: Vec<_> =
            written.iter().filter(|w| w.applied).map(|w| (w.key.clone(), w.register.clone())).collect();
        if entries.is_empty() {
            return;
        }
        for p in self.peers.lock().values() {
            p.queue.push_many(&entries);
        }
        if self.leases.waited_on() {
            for (key, _) in &entries {
                self.leases.touched(key);
            }
        }
        if self.changes_heard() {
            for (key, reg) in entries {
                let kind = written_kind(&reg);
                self.publish(Change { key: own_key(&key), kind, origin: Origin::Local, stamp: reg.marker });
            }
        }
    }

    pub(super) fn after_write(&self, w: Written) {
        if !w.applied {
            return;
        }
        let kind = written_kind(&w.register);
        for p in self.peers.lock().values() {
            p.queue.push(w.key.clone(), w.register.clone());
        }
        self.leases.touched(&w.key);
        if self.changes_heard() {
            self.publish(Change { key: own_key(&w.key), kind, origin: Origin::Local, stamp: w.register.marker });
        }
    }
}

/// What a local write of `reg` was, for change events: a tombstone is a
/// delete, anything else a put.
fn written_kind(reg: &Register) -> ChangeKind {
    if reg.val.is_tombstone() {
        ChangeKind::Delete
    } else {
        ChangeKind::Put
    }
}

/// A change event's own copy of a written key. A written key shares its
/// buffer with the value (`Written::key`), and the events channel keeps its
/// last few thousand events after every subscriber has read them: an
/// event holding the shared key would keep that many values alive.
fn own_key(key: &bytes::Bytes) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(key)
}
