//! The anti-entropy session: a state machine in the quinn-proto style.
//!
//! Feed it the peer's messages with [`Session::handle_message`], and send
//! whatever [`Session::poll_transmit`] returns, in order, until it returns
//! `None`. It never touches a socket or a clock. One session runs on one
//! bidirectional stream; both sides may transmit at once.
//!
//! ```text
//! initiator                                   responder
//!   Begin{root,count,view,floors}  ------->
//!                                  <-------   Accept{root,count,view,floors}
//!                                  <-------   or Busy: the responder's own
//!                                             round waits for an accept
//!                                             and the roots differ; the
//!                                             initiator asks again later
//!   equal roots: done (one root each way)
//!   one side nearly empty: both stream every register, then EndOfEntries
//!   otherwise descend the digest tree, the two sides taking turns:
//!   Level{1, [root], 16 hashes}    ------->
//!                                  <-------   Level{2, differing, hashes}
//!   ...                                       ...
//!   whoever receives bucket-level hashes sends Summary{key@stamp per
//!   differing bucket}... then SummaryDone; the pairs are numbered 0, 1, 2,
//!   ... in the order sent, across all Summary messages. At protocol
//!   version 8, whoever receives the hashes a level above may summarise
//!   every bucket of the differing ranges instead, when most buckets differ
//!   (`summary_above_buckets`); and registers and summaries travel packed
//!   (`PackedEntries`; `PackedSummary`, keys hashed, to a peer whose
//!   opening said it holds every bucket whole)
//!   Summary{(b, [k0@s0, k1@s1])}   ------->   (positions 0, 1)
//!   Summary{(c, [k2@s2, ...])}     ------->   (positions 2, ...)
//!   SummaryDone                    ------->
//!                                  <-------   Entries{registers the summary
//!                                             side lacks or holds older}...
//!                                  <-------   Want{gaps}... EndOfEntries{gaps}
//!   the other side wants registers by position: strictly increasing
//!   positions sent as gaps (the first from 0, each later one from the
//!   previous, so at least 1), cut into Want messages and the last ones in
//!   EndOfEntries; the summary side sends the wanted registers and its own
//!   EndOfEntries{[]}. At version 9 the other side answers every summary
//!   chunk, once compared, with Compared{through, gaps} instead of Want:
//!   the first `through` pairs are compared and these are wanted among
//!   them. The summary side forgets the keys it will not be asked for, and
//!   summarises no further while those it holds pass its window
//!   (`SUMMARY_WINDOW_SHARE`), sending the wanted registers meanwhile.
//!   Each side, once it has the other's EndOfEntries, sends the registers
//!   it refused by its gc_floor, which the other side then drops (the
//!   refusal reply): Refusals{chunk}... Finish{last chunk}, cut at about the
//!   batch size like Summary and Want. Before them, the summary side sends
//!   a peer that holds part of the keyspace its final digests of the
//!   summarised buckets, Digests{(bucket, digest)}..., which that peer may
//!   adopt for the buckets it holds in part on Finish.
//! ```
//!
//! A side whose session completes records `synced[peer]` = the local time at
//! which the session started: by then it holds everything the peer held at
//! the start, or something newer.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::hlc::Stamp;
use crate::membership::MemberId;
use crate::replica::{Replica, SyncRefused};
use crate::store::digest::{self, BUCKETS, FANOUT, LEVELS};
use crate::store::{Change, Register};
use crate::wire::{
    encoded_len, listed_hash, BucketSummary, HashKey, HashedSummary, PackedSummary, Refusal, SyncHello, SyncMsg,
    COMPARED_SINCE, LENGTH_PREFIX, PACKED_SINCE, PROTOCOL_VERSION,
};

/// A register to send in an `Entries` message.
#[derive(Debug)]
enum Outgoing {
    /// A key whose register is read when its turn comes.
    Key(Bytes),
    /// A register read already (a whole shard streamed, or the small
    /// side's registers copied before the peer's arrive). Boxed, so that
    /// the many keys of a summary session queue at the size of a key.
    Read(Box<(Bytes, Register)>),
}

/// A chunk of the peer's summary: its keys listed, or hashed
/// ([`SyncMsg::PackedSummary`]).
#[derive(Debug)]
enum Listing {
    Keys(Vec<BucketSummary>),
    Hashed(HashedSummary),
}

impl Listing {
    fn buckets(&self) -> Vec<u32> {
        match self {
            Listing::Keys(b) => b.iter().map(|b| b.bucket).collect(),
            Listing::Hashed(h) => h.bucket_ids(),
        }
    }
}

/// Keys packed in one buffer, numbered in the order pushed; the oldest may
/// be forgotten, and their bytes are given back once they are half the
/// buffer.
#[derive(Debug, Default)]
struct KeyList {
    /// Key bytes from offset `byte_base` of everything ever pushed.
    bytes: Vec<u8>,
    byte_base: usize,
    /// The end offsets of keys `first..`.
    ends: VecDeque<usize>,
    /// The number of the first key still held, and its start offset.
    first: usize,
    start: usize,
}

impl KeyList {
    fn push(&mut self, key: &[u8]) {
        self.bytes.extend_from_slice(key);
        self.ends.push_back(self.byte_base + self.bytes.len());
    }

    /// Keys ever pushed: the number the next one gets.
    fn len(&self) -> usize {
        self.first + self.ends.len()
    }

    /// Key `i`, unless it was never pushed or has been forgotten.
    fn get(&self, i: usize) -> Option<&[u8]> {
        let at = i.checked_sub(self.first)?;
        let end = *self.ends.get(at)?;
        let start = if at == 0 { self.start } else { self.ends[at - 1] };
        Some(&self.bytes[start - self.byte_base..end - self.byte_base])
    }

    /// Forgets the keys numbered below `i`.
    fn forget_before(&mut self, i: usize) {
        while self.first < i {
            let Some(end) = self.ends.pop_front() else { break };
            self.start = end;
            self.first += 1;
        }
        let dead = self.start - self.byte_base;
        if dead >= 4096 && dead * 2 >= self.bytes.len() {
            self.bytes.drain(..dead);
            self.byte_base = self.start;
        }
    }

    /// What the keys still held take: their bytes and an offset each.
    fn held_bytes(&self) -> usize {
        self.bytes.len() - (self.start - self.byte_base) + self.ends.len() * std::mem::size_of::<usize>()
    }
}

/// Default bytes of registers per `Entries` message: large enough to
/// amortize framing, small enough to interleave with other traffic.
pub const DEFAULT_BATCH_BYTES: usize = 64 * 1024;

/// A side that holds part of the keyspace keeps, for each bucket it may
/// adopt, the peer's stamps for the keys both hold until the peer's final
/// digests arrive. That state is bounded by 1/`ADOPT_BUDGET_SHARE` of its
/// memory bound (at least [`MIN_ADOPT_BUDGET`]): a peer catching up on a
/// large mesh differs in every bucket, and the buckets past the budget are
/// adopted in later rounds instead.
pub const ADOPT_BUDGET_SHARE: usize = 32;

/// The least adoption state a session may keep, in bytes.
pub const MIN_ADOPT_BUDGET: usize = 64 * 1024;

/// On a side with a memory bound, the registers queued for the summary
/// side (their keys, read when their turn comes) take at most about
/// 1/`PENDING_BUDGET_SHARE` of the bound (at least [`MIN_PENDING_BUDGET`]):
/// past it, the next `Summary` waits until the queue drains, and the peer's
/// summary waits in its stream's flow control. Without it a bounded peer
/// that differs from its peer in every bucket (a mesh under a steady write
/// load) queued every key it holds at once, megabytes its bound did not
/// leave room for.
pub const PENDING_BUDGET_SHARE: usize = 64;

/// The least queue a bounded side may keep, in bytes.
pub const MIN_PENDING_BUDGET: usize = 64 * 1024;

/// At protocol version 9 the summary side keeps only the keys of its
/// summary that the peer has not answered for yet (see
/// [`SyncMsg::Compared`]), and summarises no further while they take more
/// than 1/`SUMMARY_WINDOW_SHARE` of its memory bound (at least
/// [`MIN_SUMMARY_WINDOW`]), or [`DEFAULT_SUMMARY_WINDOW`] without a bound.
/// Without the window, a summary side under a steady write load (every
/// bucket differs) held every key it holds until the session's end.
pub const SUMMARY_WINDOW_SHARE: usize = 64;

/// The least summary window, in bytes.
pub const MIN_SUMMARY_WINDOW: usize = 64 * 1024;

/// The summary window without a memory bound: about 150,000 keys of 20
/// bytes, far more than a round trip's worth on any link, and a fixed cost
/// however large the store.
pub const DEFAULT_SUMMARY_WINDOW: usize = 4 << 20;

/// A nearly empty side: when the smaller store holds at most
/// `1/STREAM_RATIO` of the larger, descending the tree costs more than it
/// saves, and both sides stream everything instead.
pub const STREAM_RATIO: u64 = 16;

/// Which side opened the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sent `Begin`.
    Initiator,
    /// Answered with `Accept`.
    Responder,
}

/// Where the session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Responder, waiting for `Begin`.
    AwaitBegin,
    /// Initiator, waiting for `Accept`.
    AwaitAccept,
    /// Taking turns down the digest tree.
    Descend,
    /// Exchanging registers.
    Exchange,
    /// Complete: `synced` was recorded.
    Done,
    /// Ended without completing.
    Failed,
    /// Responder that will answer `Begin` with `Busy`, unless the
    /// openings show the two sides in sync.
    Declining,
    /// Declined: `Busy` was sent or received, and nothing else. Neither an
    /// error nor a completed session: the initiator tries again later.
    Declined,
}

/// How the differences were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Not decided yet.
    #[default]
    Undecided,
    /// The roots matched.
    InSync,
    /// One side was nearly empty: everything was streamed.
    Stream,
    /// The digest tree was descended.
    Descend,
}

/// What a session cost and moved. Byte counts include framing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStats {
    /// Bytes this side sent.
    pub bytes_sent: u64,
    /// Bytes this side received.
    pub bytes_received: u64,
    /// Messages this side sent.
    pub messages_sent: u64,
    /// Messages this side received.
    pub messages_received: u64,
    /// Registers this side sent.
    pub entries_sent: u64,
    /// Registers this side received.
    pub entries_received: u64,
    /// Registers this side refused by its floor.
    pub refused: u64,
    /// Registers this side dropped on the peer's refusal reply.
    pub dropped_on_reply: u64,
    /// Buckets this side holds in part whose digest it made equal to the
    /// peer's (ghosts adopted: ALGORITHM.md, "Eviction").
    pub ghosts_adopted: u64,
    /// Buckets this side holds in part that it did not prepare to adopt,
    /// because the session's adoption state reached its budget
    /// ([`ADOPT_BUDGET_SHARE`]); a later round adopts them.
    pub adoptions_deferred: u64,
    /// `Summary` messages this side held back until the registers it had
    /// queued for the peer were sent ([`PENDING_BUDGET_SHARE`]).
    pub summaries_deferred: u64,
    /// The most bytes of keys this side had queued for the peer at once.
    pub peak_queued_bytes: u64,
    /// Summary side: the most bytes its summary's keys held at once
    /// (bounded by the summary window at protocol version 9).
    pub peak_summarised_bytes: u64,
    /// Summary side: times the summary waited for the peer to answer for
    /// the keys in the window ([`SUMMARY_WINDOW_SHARE`]).
    pub summary_window_waits: u64,
    /// How the differences were found.
    pub mode: Mode,
}

/// Why a session failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The peer broke the protocol; the session (and connection) is closed.
    #[error("anti-entropy protocol violation: {0}")]
    Protocol(String),
    /// The peer refused the session.
    #[error("peer refused anti-entropy: {0:?}")]
    Rejected(Refusal),
    /// This side refused the peer (a `Reject` is queued for it).
    #[error("refused anti-entropy with a superseded or departed peer")]
    RefusedPeer,
    /// This process has been superseded and must stop.
    #[error("this peer was superseded by a newer incarnation")]
    SelfSuperseded,
}

/// A bucket the other side (not the summary side) holds in part: what it
/// needs to adopt the peer's digest there once the exchange is over.
#[derive(Debug)]
struct Adoption {
    bucket: u32,
    /// The peer's highest stamp in the bucket: its floor, or the newest
    /// register it listed.
    their_max: Stamp,
    /// The peer's `key@stamp` for the keys we hold there, and whether it
    /// holds each as a stub. Adopting is safe only if we then hold each at
    /// that stamp or newer, or the ghost would hide an older register of
    /// ours; and not as a value where the peer holds the stub, or a peer
    /// without a bound that holds the stub would see our digests agree and
    /// never ask us for the value.
    held: Box<[(Bytes, Stamp, bool)]>,
    /// The bucket's change count when the summary arrived, and the changes
    /// this session made since (registers merged, registers dropped on the
    /// refusal reply). Any other change (a push from a third peer, an
    /// eviction) is not in the peer's final digest, and adopting would hide
    /// it: the bucket then waits for a later round.
    changes_at_summary: u32,
    own_changes: u32,
    /// The peer's final digest of the bucket, from its `Digests`.
    their_digest: Option<u64>,
}

/// One anti-entropy session. See the module docs.
#[derive(Debug)]
pub struct Session {
    role: Role,
    phase: Phase,
    peer: Option<MemberId>,
    peer_booted: bool,
    /// Local time at which this side started the session: what `synced`
    /// records on completion.
    started_ms: u64,
    /// Control messages, sent before anything else.
    out: VecDeque<SyncMsg>,
    /// Registers still to send, cut into `Entries` messages.
    pending: VecDeque<Outgoing>,
    /// What the keys in `pending` take (`Outgoing::Key` only), and the most
    /// they may take before a `Summary` is deferred.
    pending_bytes: usize,
    pending_budget: usize,
    /// The other side: a `Summary` received while `pending` was over its
    /// budget, handled once it drains. Until then [`Session::wants_input`]
    /// is false.
    deferred: Option<(Listing, Vec<usize>)>,
    /// Summary side: positions in `summarised` of the registers the peer
    /// wants, sent after `pending`. A position is 8 bytes where a queued
    /// key is about 60 (its handle, its copy and its slot), and under a
    /// steady write load the peer wants most of what was summarised.
    wanted: VecDeque<u64>,
    /// Summary side: the peer's `EndOfEntries` arrived, so no position is
    /// wanted after those in `wanted`, and `summarised` goes once they are
    /// sent.
    wants_done: bool,
    /// Stream mode, larger side: the next shard to copy into `pending`.
    /// Copying a shard at a time keeps a big store from being copied whole
    /// into memory.
    stream_shard: Option<usize>,
    /// Stream mode, larger side: registers received from the peer in this
    /// session, so that they are not streamed straight back to it.
    received: HashMap<Bytes, Stamp>,
    /// Summary side: differing buckets whose summaries are still to be
    /// sent. Summaries are read a shard at a time and cut into frames, so
    /// no message outgrows the frame limit however much differs.
    summary_queue: VecDeque<usize>,
    /// Summary side: bucket summaries read but not yet sent, each with the
    /// bucket's change count read before it (see `summarised_buckets`).
    summary_ready: VecDeque<(BucketSummary, u32)>,
    /// This side sends the summary (it received bucket-level digests).
    summary_sender: bool,
    /// The summary is still being sent.
    summarizing: bool,
    /// Summary side: the keys summarised so far, in the order sent, so that
    /// a wanted position names its key; kept until the wanted registers
    /// are sent (see `wants_done`). When every bucket differs (a mesh
    /// under a steady write load) that is every key held, so they are kept
    /// packed, not as a handle each; and at version 9 only from the first
    /// one the peer may still want (see `compared_through`).
    summarised: KeyList,
    /// Summary side, version 9: the pairs of our summary the peer has
    /// compared (its last `Compared`), and the most bytes `summarised` may
    /// hold before summarising waits for more of them to be answered for.
    compared_through: u64,
    summary_window: usize,
    /// Set by [`Session::with_summary_window`]: the window whatever the
    /// bound.
    window_override: Option<usize>,
    /// Summary side: the last transmit found the window full.
    window_waiting: bool,
    /// Summary side, when the peer holds part of the keyspace: the buckets
    /// summarised, in order, whose final digests go in our `Digests`, each
    /// with its change count read before its summary and the changes this
    /// session's registers made to it since. A bucket that anything else
    /// changed (an eviction into a stub that the peer's registers caused,
    /// say) holds what the peer's checks never saw: its digest is not
    /// offered this round.
    summarised_buckets: Vec<(u32, u32, u32)>,
    /// The peer's opening said it holds part of the keyspace.
    peer_holds_part: bool,
    /// The other side: buckets we hold in part, in increasing order, to be
    /// made equal to the peer's once its `Digests` and `Finish` arrived.
    to_adopt: Vec<Adoption>,
    /// The other side: the last bucket of the peer's `Digests` so far.
    digests_last: Option<u32>,
    /// The other side: bytes `to_adopt` holds, and the most it may hold.
    adopt_bytes: usize,
    adopt_budget: usize,
    /// The other side: `key@stamp` pairs of the peer's summary seen so far
    /// (the position of the next one).
    summary_seen: u64,
    /// The last wanted position: sent (the other side) or resolved (the
    /// summary side). Each wanted position travels as its gap from this one.
    want_last: Option<u64>,
    /// The other side: gaps of wanted positions, not yet sent in a `Want`.
    want_buf: Vec<u64>,
    want_bytes: usize,
    /// Messages to send once `pending` is drained (EndOfEntries, Finish).
    after: VecDeque<SyncMsg>,
    end_queued: bool,
    finish_sent: bool,
    finish_received: bool,
    /// Registers refused by our floor, reported in our `Refusals` and
    /// `Finish`.
    refused: Vec<(Bytes, Stamp)>,
    /// Changes made to our store, for subscribers.
    changes: Vec<Change>,
    stats: SessionStats,
    batch_bytes: usize,
    /// The (root, count, holds part) this side sent in its opening: the mode
    /// is decided from the two openings, which both sides see alike.
    opened_with: (u64, u64, bool),
    /// Registers the peer said it holds, in its opening.
    peer_count: u64,
    /// The link's protocol version: what this side may send, and receive.
    version: u16,
    /// What our packed summaries hash their keys under.
    hash_key: HashKey,
}

impl Session {
    /// Opens a session as initiator at local time `now_ms`: `Begin` is
    /// queued.
    pub fn initiate(replica: &Replica, now_ms: u64) -> Session {
        let mut s = Session::new(Role::Initiator, now_ms);
        let hello = replica.sync_hello();
        s.opened_with = (hello.root, hello.count, hello.holds_part);
        s.out.push_back(SyncMsg::Begin(hello));
        s.phase = Phase::AwaitAccept;
        s
    }

    /// Waits for a peer's `Begin` as responder.
    pub fn respond(now_ms: u64) -> Session {
        Session::new(Role::Responder, now_ms)
    }

    /// Waits for a peer's `Begin` as responder, to answer it with `Busy`:
    /// this peer's own round waits for its peer's accept, and once it runs,
    /// a second session at once would be sent what it is sent. A `Begin`
    /// whose opening shows the two sides in sync is answered instead: the
    /// round is complete at once and ships nothing.
    pub fn decline(now_ms: u64) -> Session {
        let mut s = Session::new(Role::Responder, now_ms);
        s.phase = Phase::Declining;
        s
    }

    fn new(role: Role, now_ms: u64) -> Session {
        Session {
            role,
            phase: Phase::AwaitBegin,
            peer: None,
            peer_booted: false,
            started_ms: now_ms,
            out: VecDeque::new(),
            pending: VecDeque::new(),
            pending_bytes: 0,
            pending_budget: usize::MAX,
            deferred: None,
            wanted: VecDeque::new(),
            wants_done: false,
            stream_shard: None,
            received: HashMap::new(),
            summary_queue: VecDeque::new(),
            summary_ready: VecDeque::new(),
            summary_sender: false,
            summarizing: false,
            summarised: KeyList::default(),
            compared_through: 0,
            summary_window: DEFAULT_SUMMARY_WINDOW,
            window_override: None,
            window_waiting: false,
            summarised_buckets: Vec::new(),
            peer_holds_part: false,
            to_adopt: Vec::new(),
            digests_last: None,
            adopt_bytes: 0,
            adopt_budget: usize::MAX,
            summary_seen: 0,
            want_last: None,
            want_buf: Vec::new(),
            want_bytes: 0,
            after: VecDeque::new(),
            end_queued: false,
            finish_sent: false,
            finish_received: false,
            refused: Vec::new(),
            changes: Vec::new(),
            stats: SessionStats::default(),
            batch_bytes: DEFAULT_BATCH_BYTES,
            opened_with: (0, 0, false),
            peer_count: 0,
            version: PROTOCOL_VERSION,
            hash_key: HashKey::default(),
        }
    }

    /// Sets the size of `Entries` messages (bytes of registers, estimated).
    pub fn with_batch_bytes(mut self, bytes: usize) -> Session {
        self.batch_bytes = bytes.max(1);
        self
    }

    /// Sets the protocol version of the link the session runs on (the
    /// newest, [`PROTOCOL_VERSION`], unless set): the session sends only
    /// what that version knows, and takes anything newer from the peer for
    /// a protocol violation.
    pub fn with_version(mut self, version: u16) -> Session {
        self.version = version;
        self
    }

    /// Sets the summary window (see [`SUMMARY_WINDOW_SHARE`]), whatever
    /// the memory bound.
    pub fn with_summary_window(mut self, bytes: usize) -> Session {
        self.window_override = Some(bytes);
        self
    }

    /// Sets the key this side's packed summaries hash their keys under
    /// (zero unless set). A peer draws one per session from its generator,
    /// so that keys which share a hash under one key, should there be any,
    /// are told apart the next round.
    pub fn with_hash_key(mut self, key: HashKey) -> Session {
        self.hash_key = key;
        self
    }

    /// Which side this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Where the session stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// True once the session completed and `synced` was recorded.
    pub fn is_complete(&self) -> bool {
        self.phase == Phase::Done
    }

    /// True once nothing more will happen: complete, failed or declined,
    /// and everything queued was transmitted.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Failed | Phase::Declined)
            && self.out.is_empty()
            && self.after.is_empty()
    }

    /// True once `Busy` was sent or received.
    pub fn is_declined(&self) -> bool {
        self.phase == Phase::Declined
    }

    /// The peer, once its opening arrived.
    pub fn peer(&self) -> Option<&MemberId> {
        self.peer.as_ref()
    }

    /// Cost and traffic so far.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Whether the session takes the peer's next message now. False while a
    /// `Summary` waits for the registers queued before it to be sent (see
    /// [`PENDING_BUDGET_SHARE`]): the driver then only transmits. A message
    /// handed in anyway is handled after the waiting summary, in order.
    pub fn wants_input(&self) -> bool {
        self.deferred.is_none()
    }

    /// Whether the keys queued for the peer are past their budget (an empty
    /// queue never is, whatever its count says).
    fn queue_over_budget(&self) -> bool {
        self.pending_bytes > self.pending_budget && !self.pending.is_empty()
    }

    /// Takes the store changes made so far, for subscribers.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    fn complete(&mut self, replica: &Replica) {
        if let Some(p) = &self.peer {
            replica.complete_sync(p, self.started_ms, self.peer_booted);
        }
        self.phase = Phase::Done;
    }

    fn fail(&mut self) {
        self.phase = Phase::Failed;
        self.pending.clear();
        self.pending_bytes = 0;
        self.deferred = None;
        self.wanted.clear();
        self.after.clear();
        self.stream_shard = None;
    }

    /// Handles one message from the peer at local time `now_ms`.
    ///
    /// On error the session has failed; anything still queued (such as a
    /// `Reject`) should be sent before the stream is closed.
    pub fn handle_message(&mut self, replica: &Replica, msg: SyncMsg, now_ms: u64) -> Result<(), SyncError> {
        self.stats.messages_received += 1;
        self.stats.bytes_received += frame_len(&msg);
        if let Some((listing, ids)) = self.deferred.take() {
            self.on_summary(replica, listing, ids);
        }
        let r = self.check_version(&msg).and_then(|()| self.handle_inner(replica, msg, now_ms));
        if r.is_err() {
            self.fail();
        }
        r
    }

    fn check_version(&self, msg: &SyncMsg) -> Result<(), SyncError> {
        if msg.since() > self.version {
            return Err(SyncError::Protocol(format!(
                "{} (protocol version {}) on a link at version {}",
                msg_name(msg),
                msg.since(),
                self.version
            )));
        }
        Ok(())
    }

    fn handle_inner(&mut self, replica: &Replica, msg: SyncMsg, now_ms: u64) -> Result<(), SyncError> {
        match (self.phase, msg) {
            (Phase::AwaitBegin, SyncMsg::Begin(h)) => self.answer(replica, &h, replica.sync_hello(), now_ms),
            (Phase::AwaitAccept, SyncMsg::Accept(h)) => {
                self.open(replica, &h, now_ms)?;
                // Decide from the root we sent, not today's: the store may
                // have changed since, and both sides must decide alike.
                self.decide(replica, self.opened_with, (h.root, h.count, h.holds_part));
                if self.stats.mode == Mode::Descend {
                    let hashes = children(replica, 1, &[0]);
                    self.out.push_back(SyncMsg::Level { level: 1, parents: vec![0], hashes });
                }
                Ok(())
            }
            (Phase::AwaitAccept, SyncMsg::Reject(why)) => Err(SyncError::Rejected(why)),
            (Phase::Declining, SyncMsg::Begin(h)) => {
                // Declining keeps two sessions from shipping the same
                // difference at once. Between sides already in sync there
                // is none: answered, the round costs what `Busy` does, and
                // the initiator need not ask again.
                let mine = replica.sync_hello();
                if in_sync((mine.root, mine.count, mine.holds_part), (h.root, h.count, h.holds_part)) {
                    return self.answer(replica, &h, mine, now_ms);
                }
                self.out.push_back(SyncMsg::Busy);
                self.phase = Phase::Declined;
                Ok(())
            }
            (Phase::AwaitAccept, SyncMsg::Busy) => {
                self.phase = Phase::Declined;
                Ok(())
            }
            (Phase::Descend, SyncMsg::Level { level, parents, hashes }) => {
                self.on_level(replica, level, parents, hashes)
            }
            (Phase::Descend | Phase::Exchange, SyncMsg::Summary(buckets))
                if !self.summary_sender && !self.end_queued =>
            {
                self.on_listing(replica, Listing::Keys(buckets))
            }
            (Phase::Descend | Phase::Exchange, SyncMsg::PackedSummary(p))
                if !self.summary_sender && !self.end_queued =>
            {
                let hashed = p.unpack().map_err(|e| SyncError::Protocol(e.to_string()))?;
                self.on_listing(replica, Listing::Hashed(hashed))
            }
            (Phase::Descend | Phase::Exchange, SyncMsg::SummaryDone) if !self.summary_sender && !self.end_queued => {
                self.phase = Phase::Exchange;
                self.end_queued = true;
                let want = std::mem::take(&mut self.want_buf);
                self.want_bytes = 0;
                self.after.push_back(SyncMsg::EndOfEntries { want });
                Ok(())
            }
            (Phase::Exchange, SyncMsg::Want(gaps)) if self.summary_sender => self.queue_wanted(gaps),
            (Phase::Exchange, SyncMsg::Compared { through, want }) if self.summary_sender && !self.wants_done => {
                self.on_compared(through, want)
            }
            (Phase::Exchange, SyncMsg::Entries(regs)) => {
                self.on_entries(replica, regs, now_ms);
                Ok(())
            }
            (Phase::Exchange, SyncMsg::PackedEntries(p)) => {
                let regs = p.unpack().map_err(|e| SyncError::Protocol(e.to_string()))?;
                self.on_entries(replica, regs, now_ms);
                Ok(())
            }
            (Phase::Exchange, SyncMsg::EndOfEntries { want }) => {
                self.queue_wanted(want)?;
                self.wants_done = true;
                self.release_summarised();
                if !self.end_queued {
                    self.end_queued = true;
                    self.after.push_back(SyncMsg::EndOfEntries { want: Vec::new() });
                }
                self.queue_refusals(replica);
                Ok(())
            }
            (Phase::Exchange, SyncMsg::Refusals(refused)) if !self.finish_received => {
                self.drop_refused(replica, refused, now_ms);
                Ok(())
            }
            (Phase::Exchange, SyncMsg::Digests(digests)) if !self.summary_sender && !self.finish_received => {
                self.on_digests(digests)
            }
            (Phase::Exchange, SyncMsg::Finish { refused }) => {
                if self.finish_received {
                    return Err(SyncError::Protocol("second Finish".into()));
                }
                self.drop_refused(replica, refused, now_ms);
                self.adopt(replica);
                self.finish_received = true;
                if self.finish_sent {
                    self.complete(replica);
                }
                Ok(())
            }
            (_, SyncMsg::Reject(why)) => Err(SyncError::Rejected(why)),
            (phase, m) => Err(SyncError::Protocol(format!("unexpected {} in phase {phase:?}", msg_name(&m)))),
        }
    }

    /// One chunk of the peer's summary: checked, then compared with ours,
    /// or held until the registers queued before it are sent.
    fn on_listing(&mut self, replica: &Replica, listing: Listing) -> Result<(), SyncError> {
        let ids = listing.buckets();
        check_summary(&ids)?;
        let ids = ids.into_iter().map(|b| b as usize).collect();
        self.phase = Phase::Exchange;
        if self.queue_over_budget() {
            self.stats.summaries_deferred += 1;
            self.deferred = Some((listing, ids));
        } else {
            self.on_summary(replica, listing, ids);
        }
        Ok(())
    }

    fn on_entries(&mut self, replica: &Replica, regs: Vec<(Bytes, Register)>, now_ms: u64) {
        self.stats.entries_received += regs.len() as u64;
        if self.stream_shard.is_some() {
            self.received.extend(regs.iter().map(|(k, r)| (k.clone(), r.marker)));
        }
        let out = replica.store().merge(regs, now_ms);
        for c in &out.changes {
            self.own_change(&c.key);
        }
        self.stats.refused += out.refused.len() as u64;
        self.refused.extend(out.refused);
        self.changes.extend(out.changes);
    }

    /// Queues our refusals, then `Finish`. They are cut like `Want` and
    /// `EndOfEntries`: `Refusals` chunks of about the batch size and the last
    /// chunk in `Finish`, so that a peer that sent many registers below our
    /// floor gets replies that each fit in a frame, and `Finish` still
    /// marks the end (the session completes on it, as before). The summary
    /// side first sends a peer that holds part of the keyspace its digests
    /// of the summarised buckets, also cut at the batch size.
    fn queue_refusals(&mut self, replica: &Replica) {
        if self.summary_sender && self.peer_holds_part {
            // Computed now, once the peer's registers (all of which came
            // before its EndOfEntries) are applied.
            let mut chunk = Vec::new();
            let store = replica.store();
            let untouched = std::mem::take(&mut self.summarised_buckets)
                .into_iter()
                .filter(|(b, at, own)| store.bucket_changes(*b as usize) == at.wrapping_add(*own))
                .map(|(b, _, _)| b);
            for b in untouched {
                // A bucket index and a digest, as varints: at most 15 bytes.
                if (chunk.len() + 1) * 15 > self.batch_bytes && !chunk.is_empty() {
                    self.after.push_back(SyncMsg::Digests(std::mem::take(&mut chunk)));
                }
                chunk.push((b, replica.store().range_digest(b as usize, b as usize + 1)));
            }
            if !chunk.is_empty() {
                self.after.push_back(SyncMsg::Digests(chunk));
            }
        }
        let mut chunk = Vec::new();
        let mut size = 0;
        for (k, st) in std::mem::take(&mut self.refused) {
            // Key, its length, and a 16-byte stamp.
            let s = k.len() + varint_len(k.len() as u64) + 16;
            if !chunk.is_empty() && size + s > self.batch_bytes {
                self.after.push_back(SyncMsg::Refusals(std::mem::take(&mut chunk)));
                size = 0;
            }
            size += s;
            chunk.push((k, st));
        }
        self.after.push_back(SyncMsg::Finish { refused: chunk });
    }

    /// One chunk of the summary side's final digests: kept for the buckets
    /// we hold in part. Buckets must increase across all chunks.
    fn on_digests(&mut self, digests: Vec<(u32, u64)>) -> Result<(), SyncError> {
        for (b, d) in digests {
            if self.digests_last.is_some_and(|last| b <= last) || b as usize >= BUCKETS {
                return Err(SyncError::Protocol("final digests not increasing or out of range".into()));
            }
            self.digests_last = Some(b);
            if let Ok(i) = self.to_adopt.binary_search_by_key(&b, |a| a.bucket) {
                self.to_adopt[i].their_digest = Some(d);
            }
        }
        Ok(())
    }

    /// Counts a change this session made to a bucket we may adopt, or whose
    /// digest we may offer.
    fn own_change(&mut self, key: &[u8]) {
        if self.to_adopt.is_empty() && self.summarised_buckets.is_empty() {
            return;
        }
        let b = digest::bucket_of(digest::key_hash(key)) as u32;
        if let Ok(i) = self.to_adopt.binary_search_by_key(&b, |a| a.bucket) {
            self.to_adopt[i].own_changes = self.to_adopt[i].own_changes.wrapping_add(1);
        }
        if let Ok(i) = self.summarised_buckets.binary_search_by_key(&b, |x| x.0) {
            self.summarised_buckets[i].2 = self.summarised_buckets[i].2.wrapping_add(1);
        }
    }

    /// On the summary side's `Finish`: makes each bucket we hold in part
    /// agree with the peer's final digest, where every key both hold is now
    /// held here at the peer's stamp or newer and nothing but this session
    /// changed the bucket. Only this side adopts, so two peers that both
    /// hold a bucket in part never trade ghosts back and forth.
    fn adopt(&mut self, replica: &Replica) {
        let store = replica.store();
        for a in std::mem::take(&mut self.to_adopt) {
            let Some(theirs) = a.their_digest else { continue };
            let untouched = store.bucket_changes(a.bucket as usize) == a.changes_at_summary.wrapping_add(a.own_changes);
            let current = a.held.iter().all(|(k, st, stub)| {
                store.register(k).is_some_and(|r| r.marker > *st || r.marker == *st && (r.val.is_stub() || !stub))
            });
            if untouched && current || store.has_planted(crate::store::Bug::AdoptBlind) {
                store.adopt_ghost(a.bucket as usize, theirs, a.their_max);
                self.stats.ghosts_adopted += 1;
            }
        }
    }

    /// The refusal reply: drops our copies of what the peer refused.
    fn drop_refused(&mut self, replica: &Replica, refused: Vec<(Bytes, Stamp)>, now_ms: u64) {
        for (k, st) in refused {
            if let Some(c) = replica.store().drop_refused(&k, st, now_ms) {
                self.own_change(&c.key);
                self.changes.push(c);
            }
            self.stats.dropped_on_reply += 1;
        }
    }

    fn open(&mut self, replica: &Replica, h: &SyncHello, now_ms: u64) -> Result<(), SyncError> {
        let bound = replica.store().max_bytes();
        self.adopt_budget = bound.map_or(usize::MAX, |m| (m.get() / ADOPT_BUDGET_SHARE).max(MIN_ADOPT_BUDGET));
        self.pending_budget = bound.map_or(usize::MAX, |m| (m.get() / PENDING_BUDGET_SHARE).max(MIN_PENDING_BUDGET));
        self.summary_window = self.window_override.unwrap_or_else(|| {
            bound.map_or(DEFAULT_SUMMARY_WINDOW, |m| (m.get() / SUMMARY_WINDOW_SHARE).max(MIN_SUMMARY_WINDOW))
        });
        match replica.observe_sync_hello(h, now_ms) {
            Ok(changes) => self.changes.extend(changes),
            Err(SyncRefused::Peer(why)) => {
                self.out.clear();
                self.out.push_back(SyncMsg::Reject(why));
                return Err(SyncError::RefusedPeer);
            }
            Err(SyncRefused::SelfSuperseded) => return Err(SyncError::SelfSuperseded),
        }
        self.peer = Some(h.from.clone());
        self.peer_booted = h.booted;
        self.peer_holds_part = h.holds_part;
        self.peer_count = h.count;
        Ok(())
    }

    /// Answers the peer's opening `h` with ours, `mine`, as responder.
    fn answer(&mut self, replica: &Replica, h: &SyncHello, mine: SyncHello, now_ms: u64) -> Result<(), SyncError> {
        self.started_ms = now_ms;
        self.open(replica, h, now_ms)?;
        let opened = (mine.root, mine.count, mine.holds_part);
        self.opened_with = opened;
        self.out.push_back(SyncMsg::Accept(mine));
        self.decide(replica, opened, (h.root, h.count, h.holds_part));
        Ok(())
    }

    /// Chooses the mode from both (root, count) pairs; both sides decide
    /// alike because they see the same two pairs.
    fn decide(&mut self, replica: &Replica, mine: (u64, u64, bool), theirs: (u64, u64, bool)) {
        if in_sync(mine, theirs) {
            self.stats.mode = Mode::InSync;
            self.complete(replica);
            return;
        }
        let (small, big) = (mine.1.min(theirs.1), mine.1.max(theirs.1));
        // A side that holds part of the keyspace is small because it chose
        // to be: streaming would ship it everything it left out.
        if small.saturating_mul(STREAM_RATIO) <= big && !mine.2 && !theirs.2 {
            self.stats.mode = Mode::Stream;
            self.phase = Phase::Exchange;
            if mine.1 <= theirs.1 {
                // The small side copies its few registers now, before the
                // peer's arrive, so it never echoes them back.
                for s in 0..replica.store().shard_count() {
                    let regs = replica.store().shard_registers(s);
                    self.pending.extend(regs.into_iter().map(|e| Outgoing::Read(Box::new(e))));
                }
            } else {
                self.stream_shard = Some(0);
            }
            self.end_queued = true;
            self.after.push_back(SyncMsg::EndOfEntries { want: Vec::new() });
        } else {
            self.stats.mode = Mode::Descend;
            self.phase = Phase::Descend;
        }
    }

    fn on_level(&mut self, replica: &Replica, level: u8, parents: Vec<u32>, hashes: Vec<u64>) -> Result<(), SyncError> {
        if level == 0 || level > LEVELS {
            return Err(SyncError::Protocol(format!("level {level} out of range")));
        }
        if hashes.len() != parents.len() * FANOUT {
            return Err(SyncError::Protocol(format!("{} hashes for {} parents", hashes.len(), parents.len())));
        }
        let parent_width = digest::width(level - 1) as u32;
        if parents.windows(2).any(|w| w[0] >= w[1]) || parents.last().is_some_and(|p| *p >= parent_width) {
            return Err(SyncError::Protocol("parent indices not increasing or out of range".into()));
        }
        let parents: Vec<usize> = parents.into_iter().map(|p| p as usize).collect();
        let mine = children(replica, level, &parents);
        let differing: Vec<usize> = parents
            .iter()
            .flat_map(|p| (0..FANOUT).map(move |c| p * FANOUT + c))
            .zip(mine.iter().zip(hashes.iter()))
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i)
            .collect();
        if differing.is_empty() || level == LEVELS || level == LEVELS - 1 && self.summary_above_buckets(differing.len())
        {
            // `differing` are bucket indices here, or ranges of FANOUT
            // buckets a level above (or nothing differs any more: the
            // stores converged while we descended). Summaries go out from
            // `next_message`, a shard's worth at a time.
            self.summary_sender = true;
            self.summarizing = true;
            if level == LEVELS {
                self.summary_queue = differing.into();
            } else {
                self.summary_queue = differing.iter().flat_map(|r| r * FANOUT..(r + 1) * FANOUT).collect();
            }
            self.phase = Phase::Exchange;
        } else {
            let hashes = children(replica, level + 1, &differing);
            let parents = differing.into_iter().map(|p| p as u32).collect();
            self.out.push_back(SyncMsg::Level { level: level + 1, parents, hashes });
        }
        Ok(())
    }

    /// Whether to summarise the `differing` ranges one level above the
    /// buckets instead of sending their buckets' hashes, which would cost
    /// `FANOUT` hashes each and the peer's summary of the buckets that
    /// differ. Summarising a range lists every key we hold in its
    /// `FANOUT` buckets, equal ones too, so it pays when most buckets
    /// differ (a heal after a long cut, a mesh under a steady write load),
    /// and not when a few keys differ among many. Both sides' key counts
    /// come from the openings, spread evenly over the ranges; the share of
    /// buckets that differ is estimated from the share of ranges that do,
    /// as if each bucket differed alone. Only the cost depends on it: the
    /// peer answers a summary the same whatever it covers.
    ///
    /// Never on a side whose opening said it holds part of the keyspace:
    /// only the side that receives the summary adopts the peer's digests
    /// (ALGORITHM.md, "Eviction"), and summarising would make it the
    /// summary side.
    fn summary_above_buckets(&self, differing: usize) -> bool {
        // Key, its length and a packed stamp, about.
        const ITEM: f64 = 24.0;
        if self.version < PACKED_SINCE || self.opened_with.2 {
            return false;
        }
        let ranges = digest::width(LEVELS - 1) as f64;
        let share = (differing as f64 / ranges).min(1.0);
        let bucket_share = 1.0 - (1.0 - share).powf(1.0 / FANOUT as f64);
        let ours = self.opened_with.1 as f64 * share * ITEM;
        let hashes = differing as f64 * (FANOUT * 8) as f64;
        let theirs = self.peer_count as f64 * bucket_share * ITEM;
        ours <= hashes + theirs
    }

    /// One chunk of the peer's summary, checked by [`check_summary`]: queue
    /// the registers it lacks or holds older, and note the positions of the
    /// keys we lack or hold older. `ids` are the listing's buckets, in
    /// order, listed or empty (computed once, for the check).
    fn on_summary(&mut self, replica: &Replica, listing: Listing, ids: Vec<usize>) {
        // Keys and stamps only: the registers to send are read when their
        // turn comes, so a long queue holds keys, not copies of values.
        let mine = replica.store().bucket_summaries(&ids);
        match listing {
            Listing::Keys(buckets) => {
                for (theirs, (_, ours)) in buckets.into_iter().zip(mine) {
                    self.prepare_adoption(replica, &theirs, &ours);
                    let (bucket, floor, stubs) = (theirs.bucket, theirs.floor, &theirs.stubs);
                    self.compare_bucket(replica, bucket, floor, theirs.items, stubs, ours, Bytes::clone);
                }
            }
            Listing::Hashed(h) => {
                let key = h.key;
                let hashed = |k: &Bytes| listed_hash(key, k);
                let mut listed = h.buckets.into_iter().peekable();
                for (bucket, ours) in mine {
                    // The peer lists hashes only to a side whose opening said
                    // it holds every bucket whole; one held in part since
                    // then is adopted in a later round, from its keys.
                    if replica.store().bucket_floor(bucket) != Stamp::ZERO {
                        self.stats.adoptions_deferred += 1;
                    }
                    // `mine` follows the summary's buckets, listed and empty
                    // in increasing order (checked): a bucket not next in
                    // `listed` is one in which the peer holds nothing.
                    match listed.next_if(|b| b.bucket as usize == bucket) {
                        Some(t) => self.compare_bucket(replica, t.bucket, t.floor, t.items, &t.stubs, ours, hashed),
                        None => self.compare_bucket(replica, bucket as u32, None, Vec::new(), &[], ours, hashed),
                    }
                }
            }
        }
        self.stats.peak_queued_bytes = self.stats.peak_queued_bytes.max(self.pending_bytes as u64);
        if self.version >= COMPARED_SINCE {
            // Every chunk is answered, so that the summary side can forget
            // what it will not be asked for.
            self.want_bytes = 0;
            let want = std::mem::take(&mut self.want_buf);
            self.out.push_back(SyncMsg::Compared { through: self.summary_seen, want });
        } else if self.want_bytes >= self.batch_bytes || self.want_buf.len() * 8 >= self.batch_bytes {
            // Cut by the bytes they take here as well as on the wire (most
            // gaps are one byte there, eight here).
            self.want_bytes = 0;
            self.out.push_back(SyncMsg::Want(std::mem::take(&mut self.want_buf)));
        }
    }

    /// Compares one bucket of the peer's summary with ours: notes the
    /// positions of the registers it listed that we lack or hold older, and
    /// queues ours that it lacks or holds older. `listed` names keys as
    /// `key_of` names ours: themselves, or their hashes.
    #[allow(clippy::too_many_arguments)]
    fn compare_bucket<K: Eq + std::hash::Hash>(
        &mut self,
        replica: &Replica,
        bucket: u32,
        floor: Option<Stamp>,
        listed: Vec<(K, Stamp)>,
        stubs: &[u32],
        ours: Vec<(Bytes, Stamp, bool)>,
        key_of: impl Fn(&Bytes) -> K,
    ) {
        // A side that holds a bucket in part wants no register for a key
        // it lacks there at or below its floor (it would refuse it: it may
        // be older than what it evicted); it takes the bucket's digest
        // instead.
        let floor_here = replica.store().bucket_floor(bucket as usize);
        // A bounded peer's stubs are its own evictions, or stand for values
        // it would evict again: it wants no value for them.
        let bounded_here = replica.store().max_bytes().is_some();
        let floor_there = floor.unwrap_or(Stamp::ZERO);
        let partial_there = floor.is_some();
        let ours_idx: HashMap<K, (Stamp, bool)> = ours.iter().map(|(k, st, stub)| (key_of(k), (*st, *stub))).collect();
        for (i, (k, st)) in listed.iter().enumerate() {
            let pos = self.summary_seen;
            self.summary_seen += 1;
            let wanted = match ours_idx.get(k) {
                None => *st > floor_here,
                Some((o, o_stub)) => {
                    o < st || (o == st && *o_stub && !bounded_here && stubs.binary_search(&(i as u32)).is_err())
                }
            };
            if wanted {
                let gap = pos - self.want_last.unwrap_or(0);
                self.want_last = Some(pos);
                self.want_bytes += varint_len(gap);
                self.want_buf.push(gap);
            }
        }
        drop(ours_idx);
        let theirs: HashMap<K, (Stamp, bool)> = listed
            .into_iter()
            .enumerate()
            .map(|(i, (k, st))| (k, (st, stubs.binary_search(&(i as u32)).is_ok())))
            .collect();
        for (k, st, stub) in ours {
            let send = match theirs.get(&key_of(&k)) {
                None => st > floor_there,
                Some((t, t_stub)) => *t < st || (*t == st && *t_stub && !stub && !partial_there),
            };
            if send {
                self.pending_bytes += std::mem::size_of::<Outgoing>() + k.len();
                self.pending.push_back(Outgoing::Key(k));
            }
        }
    }

    /// Before a bucket of the peer's summary is compared: if we hold the
    /// bucket in part, notes what adopting the peer's digest there needs
    /// once the exchange is over, when that is safe.
    fn prepare_adoption(&mut self, replica: &Replica, theirs: &BucketSummary, ours: &[(Bytes, Stamp, bool)]) {
        let partial_here = replica.store().bucket_floor(theirs.bucket as usize) != Stamp::ZERO;
        if !partial_here {
            return;
        }
        if self.adopt_bytes >= self.adopt_budget {
            self.stats.adoptions_deferred += 1;
            return;
        }
        let floor_there = theirs.floor.unwrap_or(Stamp::ZERO);
        let partial_there = theirs.floor.is_some();
        // The peer's ghosts stand for registers at or below its floor, any
        // of which may be an older version of a key we hold and it does not
        // list: adopting its digest would then hide ours from whoever still
        // holds that older version. A key we hold above its floor is sent
        // to it, and is in its final digest; a stable one has been offered
        // to every member since it arrived here.
        let hides_nothing = || {
            let listed: std::collections::HashSet<&Bytes> = theirs.items.iter().map(|(k, _)| k).collect();
            ours.iter().all(|(k, st, _)| listed.contains(k) || *st > floor_there || replica.store().is_stable(k))
        };
        let blind = replica.store().has_planted(crate::store::Bug::AdoptBlind);
        // Between peers that both hold the bucket in part, only from the
        // higher node id: adopting in a circle (a from b, b from c, c from
        // a) would chase digests round it for ever; this way they settle on
        // the highest one's.
        let ranked = !partial_there
            || floor_there == Stamp::ZERO
            || self.peer.as_ref().is_some_and(|p| p.incarnation.node > replica.me().incarnation.node);
        if !(blind || ranked && hides_nothing()) {
            return;
        }
        let held_here: std::collections::HashSet<&Bytes> = ours.iter().map(|(k, ..)| k).collect();
        let their_max = theirs.items.iter().map(|(_, st)| *st).max().unwrap_or(Stamp::ZERO);
        self.to_adopt.push(Adoption {
            changes_at_summary: replica.store().bucket_changes(theirs.bucket as usize),
            own_changes: 0,
            bucket: theirs.bucket,
            their_max: their_max.max(floor_there),
            held: theirs
                .items
                .iter()
                .enumerate()
                .filter(|(_, (k, _))| held_here.contains(k))
                .map(|(i, (k, st))| (k.clone(), *st, theirs.stubs.binary_search(&(i as u32)).is_ok()))
                .collect(),
            their_digest: None,
        });
        let a = self.to_adopt.last().expect("just pushed");
        self.adopt_bytes += std::mem::size_of::<Adoption>()
            + a.held.iter().map(|(k, ..)| std::mem::size_of::<(Bytes, Stamp, bool)>() + k.len()).sum::<usize>();
    }

    /// Queues the registers the peer wants, named by their positions in our
    /// summary (sent as gaps). A position past what we summarised, or one
    /// not above the previous, breaks the protocol.
    fn queue_wanted(&mut self, gaps: Vec<u64>) -> Result<(), SyncError> {
        for gap in gaps {
            let pos = match self.want_last {
                None => gap,
                Some(_) if gap == 0 => return Err(SyncError::Protocol("wanted positions not increasing".into())),
                Some(last) => last.saturating_add(gap),
            };
            if usize::try_from(pos).ok().and_then(|p| self.summarised.get(p)).is_none() {
                return Err(SyncError::Protocol(format!(
                    "wanted position {pos} past the {} keys summarised, or below {} answered for",
                    self.summarised.len(),
                    self.compared_through
                )));
            }
            self.want_last = Some(pos);
            self.wanted.push_back(pos);
        }
        Ok(())
    }

    /// The peer compared our summary's first `through` pairs and wants
    /// `want` among them: the keys below `through` that it did not want,
    /// and those sent, are forgotten.
    fn on_compared(&mut self, through: u64, want: Vec<u64>) -> Result<(), SyncError> {
        if through < self.compared_through || through > self.summarised.len() as u64 {
            return Err(SyncError::Protocol(format!(
                "compared through {through}: not between {} and the {} pairs summarised",
                self.compared_through,
                self.summarised.len()
            )));
        }
        self.queue_wanted(want)?;
        if self.want_last.is_some_and(|last| last >= through) {
            return Err(SyncError::Protocol(format!("a wanted position at or past {through} compared")));
        }
        self.compared_through = through;
        self.forget_answered();
        Ok(())
    }

    /// Summary side, version 9: forgets the keys before the first one that
    /// may still be wanted or is wanted and not yet sent.
    fn forget_answered(&mut self) {
        if self.version >= COMPARED_SINCE {
            let keep = self.wanted.front().map_or(self.compared_through, |w| (*w).min(self.compared_through));
            self.summarised.forget_before(keep as usize);
        }
    }

    /// Summary side: whether summarising waits for the peer to answer for
    /// the keys summarised so far (version 9; an empty window never does).
    fn window_full(&self) -> bool {
        self.version >= COMPARED_SINCE
            && self.summarised.len() as u64 > self.compared_through
            && self.summarised.held_bytes() >= self.summary_window
    }

    /// The next register to send: those queued, then those the peer
    /// wanted, whose keys are read from the summary (each position was
    /// checked against it when it was wanted).
    fn next_outgoing(&mut self) -> Option<Outgoing> {
        if let Some(next) = self.pending.pop_front() {
            if let Outgoing::Key(k) = &next {
                self.pending_bytes = self.pending_bytes.saturating_sub(std::mem::size_of::<Outgoing>() + k.len());
            }
            return Some(next);
        }
        while let Some(pos) = self.wanted.pop_front() {
            let key = self.summarised.get(pos as usize).map(Bytes::copy_from_slice);
            self.forget_answered();
            if let Some(k) = key {
                return Some(Outgoing::Key(k));
            }
        }
        None
    }

    /// Drops the summarised keys once no position can be wanted after
    /// those queued (the peer's last message came) and those are sent.
    fn release_summarised(&mut self) {
        if self.wants_done && self.wanted.is_empty() {
            self.summarised = KeyList::default();
        }
    }

    /// The next chunk of our summary, reading one shard's differing buckets
    /// when the previous ones are sent; `SummaryDone` after the last.
    fn next_summary(&mut self, replica: &Replica) -> SyncMsg {
        if self.summary_ready.is_empty() {
            if let Some(&first) = self.summary_queue.front() {
                let per_shard = BUCKETS / replica.store().shard_count();
                let shard = first / per_shard;
                let mut ids = Vec::new();
                while let Some(&b) = self.summary_queue.front() {
                    if b / per_shard != shard {
                        break;
                    }
                    ids.push(b);
                    self.summary_queue.pop_front();
                }
                let store = replica.store();
                // Change counts first: a change after them shows, even one
                // made before the summary is read.
                let changes: Vec<u32> = ids.iter().map(|b| store.bucket_changes(*b)).collect();
                let read = store.bucket_summaries(&ids);
                let bounded = store.max_bytes().is_some();
                self.summary_ready.extend(read.into_iter().zip(changes).map(|((b, read), at)| {
                    // A bounded peer always sends a floor (perhaps zero): it
                    // wants no value for its stubs.
                    let floor = Some(store.bucket_floor(b)).filter(|f| *f != Stamp::ZERO || bounded);
                    let stubs = read.iter().enumerate().filter(|(_, x)| x.2).map(|(i, _)| i as u32).collect();
                    let items = read.into_iter().map(|(k, st, _)| (k, st)).collect();
                    (BucketSummary { bucket: b as u32, floor, items, stubs }, at)
                }));
            }
        }
        if self.summary_ready.is_empty() {
            self.summarizing = false;
            return SyncMsg::SummaryDone;
        }
        let hashed = self.version >= PACKED_SINCE && !self.peer_holds_part;
        let mut size = 0;
        let mut chunk = Vec::new();
        while let Some((b, _)) = self.summary_ready.front() {
            // Key, its length, and a 16-byte stamp per pair; or a hash and
            // a packed stamp of at most 15.
            let s = 23
                + if hashed {
                    b.items.len() * 23
                } else {
                    b.items.iter().map(|(k, _)| k.len() + varint_len(k.len() as u64) + 16).sum::<usize>()
                };
            if !chunk.is_empty() && size + s > self.batch_bytes {
                break;
            }
            size += s;
            let (b, at) = self.summary_ready.pop_front().expect("front() was Some");
            if self.peer_holds_part {
                self.summarised_buckets.push((b.bucket, at, 0));
            }
            chunk.push(b);
        }
        for (k, _) in chunk.iter().flat_map(|b| b.items.iter()) {
            self.summarised.push(k);
        }
        self.stats.peak_summarised_bytes = self.stats.peak_summarised_bytes.max(self.summarised.held_bytes() as u64);
        if hashed {
            SyncMsg::PackedSummary(PackedSummary::pack(chunk, self.hash_key))
        } else {
            SyncMsg::Summary(chunk)
        }
    }

    /// The next message to send, if any. Call until it returns `None`.
    pub fn poll_transmit(&mut self, replica: &Replica) -> Option<SyncMsg> {
        let msg = loop {
            if self.deferred.is_some() && !self.queue_over_budget() {
                let (listing, ids) = self.deferred.take().expect("checked above");
                self.on_summary(replica, listing, ids);
            }
            match self.next_message(replica) {
                Some(m) => break m,
                // The queue drained (its keys may all have gone from the
                // store): the waiting summary is handled now.
                None if self.deferred.is_some() => continue,
                None => return None,
            }
        };
        if let SyncMsg::Entries(e) = &msg {
            self.stats.entries_sent += e.len() as u64;
        }
        let msg = if self.version >= PACKED_SINCE { msg.packed() } else { msg };
        if matches!(msg, SyncMsg::Finish { .. }) {
            self.finish_sent = true;
            if self.finish_received && self.phase != Phase::Done {
                self.complete(replica);
            }
        }
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += frame_len(&msg);
        Some(msg)
    }

    fn next_message(&mut self, replica: &Replica) -> Option<SyncMsg> {
        if let Some(m) = self.out.pop_front() {
            return Some(m);
        }
        if self.phase == Phase::Failed {
            return None;
        }
        if self.summarizing {
            if !self.window_full() {
                self.window_waiting = false;
                return Some(self.next_summary(replica));
            }
            if !self.window_waiting {
                self.window_waiting = true;
                self.stats.summary_window_waits += 1;
            }
            // Meanwhile the registers the peer wanted go out, which lets
            // the window move on.
        }
        loop {
            let mut size = 0;
            let mut batch = Vec::new();
            while let Some(next) = self.next_outgoing() {
                // A key is read now: the register it holds now is what the
                // peer should have (a newer one than when it was queued is
                // as good), and one no longer held has nothing to send.
                let (k, r) = match next {
                    Outgoing::Read(e) => *e,
                    Outgoing::Key(k) => match replica.store().register(&k) {
                        Some(r) => (k, r),
                        None => continue,
                    },
                };
                let s = k.len() + r.val.payload_len() + 24;
                if !batch.is_empty() && size + s > self.batch_bytes {
                    self.pending.push_front(Outgoing::Read(Box::new((k, r))));
                    break;
                }
                size += s;
                batch.push((k, r));
            }
            self.release_summarised();
            if !batch.is_empty() {
                return Some(SyncMsg::Entries(batch));
            }
            match self.stream_shard {
                Some(s) if s < replica.store().shard_count() => {
                    let received = &self.received;
                    self.pending.extend(
                        replica
                            .store()
                            .shard_registers(s)
                            .into_iter()
                            .filter(|(k, r)| received.get(k) != Some(&r.marker))
                            .map(|e| Outgoing::Read(Box::new(e))),
                    );
                    self.stream_shard = Some(s + 1);
                }
                _ => break,
            }
        }
        self.after.pop_front()
    }
}

/// Refuses a summary whose buckets are not increasing or out of range.
fn check_summary(buckets: &[u32]) -> Result<(), SyncError> {
    if buckets.windows(2).any(|w| w[0] >= w[1]) || buckets.last().is_some_and(|b| *b as usize >= BUCKETS) {
        return Err(SyncError::Protocol("summary buckets not increasing or out of range".into()));
    }
    Ok(())
}

/// Whether two openings, (root, count, holds part), leave nothing to
/// exchange. Equal roots are enough when a side holds part of the
/// keyspace: its count leaves out what its ghosts stand for.
fn in_sync(mine: (u64, u64, bool), theirs: (u64, u64, bool)) -> bool {
    mine.0 == theirs.0 && (mine.1 == theirs.1 || mine.2 || theirs.2)
}

/// The digests of the children of `parents` (nodes at `level - 1`), in
/// order: `FANOUT` per parent.
fn children(replica: &Replica, level: u8, parents: &[usize]) -> Vec<u64> {
    let span = digest::span(level);
    let mut out = Vec::with_capacity(parents.len() * FANOUT);
    for p in parents {
        for c in 0..FANOUT {
            let lo = (p * FANOUT + c) * span;
            out.push(replica.store().range_digest(lo, lo + span));
        }
    }
    out
}

/// Bytes of `n` as a postcard varint.
fn varint_len(n: u64) -> usize {
    (64 - n.leading_zeros() as usize).max(1).div_ceil(7)
}

fn frame_len(msg: &SyncMsg) -> u64 {
    // One byte of `Message` tag around the sync message, plus the prefix.
    (encoded_len(msg) + 1 + LENGTH_PREFIX) as u64
}

fn msg_name(m: &SyncMsg) -> &'static str {
    match m {
        SyncMsg::Begin(_) => "Begin",
        SyncMsg::Accept(_) => "Accept",
        SyncMsg::Reject(_) => "Reject",
        SyncMsg::Level { .. } => "Level",
        SyncMsg::Summary(_) => "Summary",
        SyncMsg::Entries(_) => "Entries",
        SyncMsg::EndOfEntries { .. } => "EndOfEntries",
        SyncMsg::Finish { .. } => "Finish",
        SyncMsg::SummaryDone => "SummaryDone",
        SyncMsg::Want(_) => "Want",
        SyncMsg::Refusals(_) => "Refusals",
        SyncMsg::Digests(_) => "Digests",
        SyncMsg::Busy => "Busy",
        SyncMsg::PackedEntries(_) => "PackedEntries",
        SyncMsg::PackedSummary(_) => "PackedSummary",
        SyncMsg::Compared { .. } => "Compared",
    }
}
