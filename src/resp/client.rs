//! The state of one client connection that commands read and change.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use crate::locks::Mutex;

use super::notify::Outbox;

/// One client connection's state.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) id: u64,
    pub(crate) addr: SocketAddr,
    pub(crate) laddr: SocketAddr,
    pub(crate) created: Instant,
    /// Authenticated (always true without `requirepass`).
    pub(crate) authed: bool,
    pub(crate) name: Option<Bytes>,
    pub(crate) lib_name: Option<Bytes>,
    pub(crate) lib_ver: Option<Bytes>,
    /// Channels subscribed to.
    pub(crate) channels: HashSet<Bytes>,
    /// Patterns subscribed to.
    pub(crate) patterns: HashSet<Bytes>,
    /// Shard channels subscribed to (SSUBSCRIBE).
    pub(crate) shard_channels: HashSet<Bytes>,
    /// Where the hub queues this client's pub/sub messages.
    pub(crate) outbox: Arc<Outbox>,
    /// Close once the pending replies are written (QUIT, protocol error).
    pub(crate) close: bool,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    /// What other connections see of this one (CLIENT LIST, CLIENT KILL).
    pub(crate) handle: Arc<Handle>,
    /// CLIENT REPLY OFF: no reply is written until CLIENT REPLY ON.
    pub(crate) reply_off: bool,
    /// CLIENT REPLY SKIP was run: the next command's reply is dropped.
    pub(crate) skip_next: bool,
    /// This command's reply is dropped (the one after CLIENT REPLY SKIP).
    skip: bool,
    /// Error replies that `execute` took from the output to tell failed
    /// calls apart; the connection adds them to the server's count.
    pub(crate) errors: u64,
    /// Per-command counts since the connection's last read, added to the
    /// server's once per read: counting into shared counters on every
    /// command made pipelined commands measurably slower.
    pub(crate) tallies: Vec<Tally>,
    /// Between MULTI and EXEC: the commands queued.
    pub(crate) multi: Option<Multi>,
    /// WATCHed keys, with what each held when watched.
    pub(crate) watched: Vec<Watched>,
    /// CLIENT TRACKING's options, while on.
    pub(crate) tracking: Option<super::tracking::Mode>,
    /// CLIENT CACHING was given for the next command (or transaction).
    pub(crate) caching: bool,
}

/// A transaction being queued (between MULTI and EXEC).
#[derive(Debug, Default)]
pub(crate) struct Multi {
    pub(crate) queued: Vec<Queued>,
    /// Bytes the queued commands hold (bounded: see `multi::queue`).
    pub(crate) bytes: usize,
    /// A command was refused while queuing: EXEC answers EXECABORT.
    pub(crate) dirty: bool,
}

/// One queued command, its arguments copied out of the read buffer.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) spec: &'static super::cmd::Spec,
    pub(crate) args: Vec<Bytes>,
}

/// A WATCHed key and its state when watched: the stamp of the register
/// held (`None`: none), and whether a value was visible. EXEC aborts if
/// either differs: any write here, local or from a peer, changes the
/// stamp; an expiry or an eviction changes what is visible.
#[derive(Debug)]
pub(crate) struct Watched {
    pub(crate) key: Bytes,
    /// The key's register stamp if it had a value (`None`: absent).
    pub(crate) seen: Option<crate::hlc::Stamp>,
    /// The write count of the key's bucket, read before `seen`.
    pub(crate) writes: u32,
}

/// One command's counts on one connection, for INFO commandstats.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// The command's place in the table.
    pub(crate) idx: usize,
    pub(crate) calls: u64,
    /// Its share of the read's time (see `Connection::account`).
    pub(crate) nanos: u64,
    pub(crate) failed: u64,
    pub(crate) rejected: u64,
}

impl Client {
    pub(crate) fn new(id: u64, addr: SocketAddr, laddr: SocketAddr, outbox: Arc<Outbox>, authed: bool) -> Self {
        let created = crate::env::stopwatch();
        let handle = Arc::new(Handle {
            id,
            addr,
            laddr,
            created,
            names: Mutex::new(Names::default()),
            channels: AtomicUsize::new(0),
            patterns: AtomicUsize::new(0),
            shard_channels: AtomicUsize::new(0),
            multi: AtomicI64::new(-1),
            watch: AtomicUsize::new(0),
            resp3: AtomicBool::new(false),
            last: AtomicUsize::new(usize::MAX),
            killed: AtomicBool::new(false),
            kill: outbox.kill.clone(),
            outbox: outbox.clone(),
            tracking: AtomicU8::new(0),
            redirect: AtomicU64::new(0),
        });
        Client {
            id,
            addr,
            laddr,
            created,
            authed,
            name: None,
            lib_name: None,
            lib_ver: None,
            channels: HashSet::new(),
            patterns: HashSet::new(),
            shard_channels: HashSet::new(),
            outbox,
            close: false,
            hits: 0,
            misses: 0,
            handle,
            reply_off: false,
            skip_next: false,
            skip: false,
            errors: 0,
            tallies: Vec::new(),
            multi: None,
            watched: Vec::new(),
            tracking: None,
            caching: false,
        }
    }

    /// The counts of the command at `idx` since the last read (a
    /// connection uses few commands: a short list is enough).
    pub(crate) fn tally(&mut self, idx: usize) -> &mut Tally {
        let at = match self.tallies.iter().position(|t| t.idx == idx) {
            Some(at) => at,
            None => {
                self.tallies.push(Tally { idx, ..Tally::default() });
                self.tallies.len() - 1
            }
        };
        &mut self.tallies[at]
    }

    /// Whether the reply of the command being run is dropped (CLIENT
    /// REPLY OFF or SKIP). Checked after the command ran, as Redis checks
    /// when a reply is added: CLIENT REPLY ON's own OK is sent, OFF's is not.
    pub(crate) fn quiet(&self) -> bool {
        self.reply_off || self.skip
    }

    /// Ends a command: a SKIP it asked for applies to the next one.
    pub(crate) fn reply_done(&mut self) {
        self.skip = std::mem::take(&mut self.skip_next);
    }

    /// Back to sending every reply (RESET).
    pub(crate) fn reply_on(&mut self) {
        self.reply_off = false;
        self.skip_next = false;
        self.skip = false;
    }

    /// Copies what other connections list of this one into its handle,
    /// once per read. Relaxed stores: CLIENT LIST is a snapshot.
    pub(crate) fn publish(&self, resp3: bool) {
        let h = &self.handle;
        h.channels.store(self.channels.len(), Ordering::Relaxed);
        h.patterns.store(self.patterns.len(), Ordering::Relaxed);
        h.shard_channels.store(self.shard_channels.len(), Ordering::Relaxed);
        h.multi.store(self.multi_len(), Ordering::Relaxed);
        h.watch.store(self.watched.len(), Ordering::Relaxed);
        h.resp3.store(resp3, Ordering::Relaxed);
    }

    /// Copies the name and library into the handle, when one of them
    /// changes (CLIENT SETNAME, CLIENT SETINFO, HELLO, RESET).
    pub(crate) fn publish_names(&self) {
        *self.handle.names.lock() =
            Names { name: self.name.clone(), lib_name: self.lib_name.clone(), lib_ver: self.lib_ver.clone() };
    }

    /// This connection as CLIENT INFO and CLIENT LIST show it.
    pub(crate) fn view(&self, resp3: bool) -> View {
        View {
            id: self.id,
            addr: self.addr,
            laddr: self.laddr,
            age: self.created.elapsed().as_secs(),
            names: Names { name: self.name.clone(), lib_name: self.lib_name.clone(), lib_ver: self.lib_ver.clone() },
            channels: self.channels.len(),
            patterns: self.patterns.len(),
            shard_channels: self.shard_channels.len(),
            multi: self.multi_len(),
            watch: self.watched.len(),
            resp3,
            tracking: self.handle.tracking_view(),
        }
    }

    /// Commands queued since MULTI, or -1 outside one (CLIENT LIST's
    /// `multi`).
    fn multi_len(&self) -> i64 {
        self.multi.as_ref().map_or(-1, |m| m.queued.len() as i64)
    }

    /// Whether the client has any subscription.
    pub(crate) fn subscribed(&self) -> bool {
        !self.channels.is_empty() || !self.patterns.is_empty() || !self.shard_channels.is_empty()
    }

    pub(crate) fn subscriptions(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    /// Keyspace hits and misses since the last call.
    pub(crate) fn take_hits(&mut self) -> (u64, u64) {
        (std::mem::take(&mut self.hits), std::mem::take(&mut self.misses))
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Names {
    pub(crate) name: Option<Bytes>,
    pub(crate) lib_name: Option<Bytes>,
    pub(crate) lib_ver: Option<Bytes>,
}

/// The part of a connection's state that other connections read (CLIENT
/// LIST) or act on (CLIENT KILL), held in the server's [`Registry`]. The
/// connection owns the rest in its [`Client`], without locks.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) id: u64,
    pub(crate) addr: SocketAddr,
    pub(crate) laddr: SocketAddr,
    created: Instant,
    names: Mutex<Names>,
    channels: AtomicUsize,
    patterns: AtomicUsize,
    shard_channels: AtomicUsize,
    multi: AtomicI64,
    watch: AtomicUsize,
    resp3: AtomicBool,
    /// The last command run, by its place in the command table
    /// (`usize::MAX` before the first).
    pub(crate) last: AtomicUsize,
    /// Set by CLIENT KILL, so that the connection's end is not taken for
    /// an output-limit close (both fire the outbox's `kill`).
    pub(crate) killed: AtomicBool,
    kill: tokio_util::sync::CancellationToken,
    /// Where pushes for this connection are queued (pub/sub messages,
    /// invalidations).
    pub(crate) outbox: Arc<Outbox>,
    /// CLIENT TRACKING as CLIENT LIST shows it: `TRACK_*` bits.
    tracking: AtomicU8,
    /// The redirect target, while tracking (CLIENT LIST's `redir`).
    redirect: AtomicU64,
}

const TRACK_ON: u8 = 1;
const TRACK_BROKEN: u8 = 2;
const TRACK_BCAST: u8 = 4;

impl Handle {
    /// Records tracking (`None`: off) and whether its redirect is broken.
    pub(crate) fn set_tracking(&self, mode: Option<&super::tracking::Mode>, broken: bool) {
        let bits = mode.map_or(0, |m| TRACK_ON | if m.bcast { TRACK_BCAST } else { 0 })
            | if broken { TRACK_BROKEN } else { 0 };
        self.tracking.store(bits, Ordering::Relaxed);
        self.redirect.store(mode.map_or(0, |m| m.redirect), Ordering::Relaxed);
    }

    /// Seconds since the connection was accepted.
    pub(crate) fn age_secs(&self) -> u64 {
        self.created.elapsed().as_secs()
    }

    fn tracking_view(&self) -> (u8, i64) {
        let bits = self.tracking.load(Ordering::Relaxed);
        let redir = if bits & TRACK_ON != 0 { self.redirect.load(Ordering::Relaxed) as i64 } else { -1 };
        (bits, redir)
    }

    /// Whether the client has any subscription (Redis's `pubsub` type).
    pub(crate) fn subscribed(&self) -> bool {
        self.channels.load(Ordering::Relaxed)
            + self.patterns.load(Ordering::Relaxed)
            + self.shard_channels.load(Ordering::Relaxed)
            > 0
    }

    /// Closes the connection: it stops at once, even if it is blocked
    /// writing to a client that does not read.
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        self.kill.cancel();
    }

    pub(crate) fn view(&self) -> View {
        View {
            id: self.id,
            addr: self.addr,
            laddr: self.laddr,
            age: self.created.elapsed().as_secs(),
            names: self.names.lock().clone(),
            channels: self.channels.load(Ordering::Relaxed),
            patterns: self.patterns.load(Ordering::Relaxed),
            shard_channels: self.shard_channels.load(Ordering::Relaxed),
            multi: self.multi.load(Ordering::Relaxed),
            watch: self.watch.load(Ordering::Relaxed),
            resp3: self.resp3.load(Ordering::Relaxed),
            tracking: self.tracking_view(),
        }
    }
}

/// A snapshot of one connection, for CLIENT INFO and CLIENT LIST.
#[derive(Debug)]
pub(crate) struct View {
    pub(crate) id: u64,
    pub(crate) addr: SocketAddr,
    pub(crate) laddr: SocketAddr,
    /// Seconds since the connection was accepted.
    pub(crate) age: u64,
    pub(crate) names: Names,
    pub(crate) channels: usize,
    pub(crate) patterns: usize,
    pub(crate) shard_channels: usize,
    /// Commands queued since MULTI, or -1.
    pub(crate) multi: i64,
    /// Keys watched.
    pub(crate) watch: usize,
    pub(crate) resp3: bool,
    /// Tracking bits and redirect target (-1: not tracking).
    pub(crate) tracking: (u8, i64),
}

impl View {
    /// Whether tracking is on, its redirect is broken, it is in BCAST mode
    /// (CLIENT LIST's `t`, `R`, `B`).
    pub(crate) fn tracking_flags(&self) -> (bool, bool, bool) {
        let b = self.tracking.0;
        (b & TRACK_ON != 0, b & TRACK_BROKEN != 0, b & TRACK_BCAST != 0)
    }
}

/// Every live connection of one server, by id (the order CLIENT LIST
/// shows them in, as Redis lists clients in the order they connected).
/// Bounded by `max_clients`: a connection is added once it is admitted
/// and removed when it ends.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    clients: Mutex<BTreeMap<u64, Arc<Handle>>>,
}

impl Registry {
    pub(crate) fn insert(&self, h: Arc<Handle>) {
        self.clients.lock().insert(h.id, h);
    }

    pub(crate) fn remove(&self, id: u64) {
        self.clients.lock().remove(&id);
    }

    pub(crate) fn get(&self, id: u64) -> Option<Arc<Handle>> {
        self.clients.lock().get(&id).cloned()
    }

    /// Every client, in id order, copied out so that no lock is held while
    /// their lines are written.
    pub(crate) fn all(&self) -> Vec<Arc<Handle>> {
        self.clients.lock().values().cloned().collect()
    }
}
