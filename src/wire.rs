//! The wire format: one [`Message`] enum, postcard-encoded, behind a 4-byte
//! big-endian length prefix.
//!
//! A frame longer than the configured maximum is refused before any of it is
//! buffered or decoded. A frame's buffer grows with the bytes received, not
//! with the length its prefix announces. Decoding preallocates nothing beyond what the frame
//! can hold (postcard checks declared lengths against the bytes left), so a
//! hostile frame costs memory in proportion to its length: at most about 25
//! times the frame for the decoded structures (the densest are a packed
//! register, 4 bytes on the wire at least and 96 decoded, unpacked in place,
//! and a summary's bucket, 4 and 80), beside the bytes of its keys and
//! values.
//!
//! Adding a variant at the end of an enum is compatible as long as it is
//! sent only on links whose negotiated version knows it; anything else
//! raises [`OLDEST_VERSION`]. See [`PROTOCOL_VERSION`] for the rule.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::hlc::Stamp;
use crate::membership::{Incarnation, MemberId, MemberInfo};
use crate::store::Register;

mod packed;
pub use packed::{
    listed_hash, BadPacking, HashKey, HashedBucket, HashedSummary, ListedHash, PackedBucket, PackedEntries, PackedSlot,
    PackedStamp, PackedSummary, StampTable,
};

/// The newest protocol version this build speaks. A peer speaks a range of
/// versions ([`PROTOCOL_VERSIONS`], from [`OLDEST_VERSION`] to this one),
/// says so in its hello, and each link uses the highest version both ends
/// speak; a hello is refused only when the two ranges do not meet
/// ([`Refusal::Version`] or [`Refusal::Versions`]). ALGORITHM.md,
/// "Protocol versions", has the rule and its reasons.
///
/// What a new version may do, and still be spoken beside the older ones:
/// add a message kind (a variant at the end of an enum), sent on a link
/// only when its negotiated version is at least the kind's
/// ([`Message::since`]; a receiver takes an older link's newer kind for a
/// protocol violation), or add a frame after the hello (which a peer that
/// does not expect it never reads). Anything else (the layout of an
/// existing message, what an existing message means, or an answer an older
/// peer would not expect) cannot be spoken to an older peer: it needs
/// [`OLDEST_VERSION`] raised to the new version, and the peers below it
/// are then refused.
///
/// The versions so far:
///
/// 3: refusals are cut into [`SyncMsg::Refusals`] chunks before `Finish`
/// (a version 2 peer would take the new message for a protocol violation).
/// 4: a summary's buckets carry the sender's floor, the opening says
/// whether the sender holds part of the keyspace, and the summary side
/// sends its final digests of the summarised buckets to a peer that does
/// ([`SyncMsg::Digests`]), so that a peer holding part of a bucket can agree
/// with a peer holding it whole (ALGORITHM.md, "Eviction"). The first two
/// change the layout of existing messages.
/// 5: a responder running another session answers `Begin` with
/// [`SyncMsg::Busy`] (a version 4 initiator would take it for a protocol
/// violation).
/// 6: pub/sub messages ride on the push stream ([`Message::Published`]; a
/// version 5 peer would take the new message for a protocol violation).
/// 7: fill leases ride on the push stream ([`Message::Leases`], for
/// `Mesh::get_or_load`). From this build on, the hello is followed by the
/// range of versions its sender speaks ([`Message::Versions`]); a peer of
/// an earlier build, which speaks one version, reads only the hello.
/// 8: anti-entropy registers and summaries may travel with their stamps
/// packed ([`SyncMsg::PackedEntries`], [`SyncMsg::PackedSummary`]; the
/// `packed` module), and the side that would send the bucket-level hashes
/// may send its summary of the differing ranges instead (ALGORITHM.md,
/// "Packed anti-entropy"): a version 7 peer would take the new messages for
/// a protocol violation, and is sent neither.
/// 9: the side that receives a summary says, after each chunk, how much of
/// it it has compared and which positions among those it wants
/// ([`SyncMsg::Compared`]), and the summary side keeps only the keys not
/// yet answered for, summarising no further while they pass a window
/// (ALGORITHM.md, "The summary window"): a version 8 peer would take the
/// new message for a protocol violation, and is sent none (its summary
/// side keeps every key it summarised until the session's end).
pub const PROTOCOL_VERSION: u16 = 9;

/// The oldest protocol version this build speaks: 6, the first whose
/// messages this build still sends and reads in the same layout (version
/// 6 differs from 7 only by [`Message::Leases`], which a link at 6 never
/// carries, 7 from 8 by what [`PACKED_SINCE`] introduced, which a link
/// below 8 never carries, and 8 from 9 by [`SyncMsg::Compared`], which a
/// link below 9 never carries). Version 5 lacks [`Message::Published`]
/// only, but no peer of that build is meant to be mixed with this one, so
/// it is not claimed.
pub const OLDEST_VERSION: u16 = 6;

/// Every protocol version this build speaks.
pub const PROTOCOL_VERSIONS: VersionRange = VersionRange { lo: OLDEST_VERSION, hi: PROTOCOL_VERSION };

/// The version that introduced [`Message::Published`].
pub const PUBLISHED_SINCE: u16 = 6;

/// The version that introduced [`Message::Leases`] (and the range after a
/// hello, [`Message::Versions`]).
pub const LEASES_SINCE: u16 = 7;

/// The version that introduced packed anti-entropy messages
/// ([`SyncMsg::PackedEntries`], [`SyncMsg::PackedSummary`]) and the summary
/// sent one level above the buckets.
pub const PACKED_SINCE: u16 = 8;

/// The version that introduced [`SyncMsg::Compared`] and the summary
/// window.
pub const COMPARED_SINCE: u16 = 9;

/// The last version whose peers speak only one version: a hello without a
/// [`Message::Versions`] frame after it comes from such a peer, which
/// accepts a hello only if its `version` is its own, and refuses any other
/// with [`Refusal::Version`].
pub const LAST_SINGLE_VERSION: u16 = 7;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// Default maximum frame size: 16 MiB, room for large values while bounding
/// what one hostile frame can make a peer buffer.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// The most a decoder reserves ahead of the bytes it holds while a frame
/// arrives: one read's worth (see `node::stream::FrameReader`), so that a
/// large frame is not copied on every read, while an announced but unsent
/// body costs at most this much per stream.
pub const RESERVE_CHUNK: usize = 64 * 1024;

/// Everything peers say to each other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// The first message each way on a connection. Data flows only after
    /// both hellos were accepted (TLS 1.3 lets a rejected client believe it
    /// connected, so authentication counts only after this exchange).
    Hello(Hello),
    /// The hello was refused; the connection closes.
    Refused(Refusal),
    /// A batch of pushed writes.
    Deltas(DeltaBatch),
    /// One anti-entropy session message.
    Sync(SyncMsg),
    /// An opaque membership (failure detection) payload.
    Membership(Bytes),
    /// The sender is shutting down gracefully and leaves the mesh.
    Goodbye(MemberId),
    /// Pub/sub messages published on the sender, on its push stream after
    /// the writes queued before them: a subscriber told of a change by a
    /// message reads the change. Delivered at most once; none is sent again
    /// after a lost connection.
    Published(Vec<Publication>),
    /// Fill leases taken or released on the sender (`Mesh::get_or_load`),
    /// on its push stream after the writes queued before them: a peer told
    /// that a lease was released holds the value its holder loaded.
    Leases(Vec<Lease>),
    /// The protocol versions the sender speaks: the frame after its hello
    /// on the hello stream. A peer of an earlier build reads only the
    /// hello and never sees it; a hello without it comes from such a peer,
    /// which speaks only the hello's `version`.
    Versions(VersionRange),
}

impl Message {
    /// The protocol version that introduced this kind of message: it is
    /// sent on a link only when the link's negotiated version is at least
    /// this, and received on a link at an older version it is a protocol
    /// violation (as it would be to a peer of that version). Kinds older
    /// than [`OLDEST_VERSION`] say [`OLDEST_VERSION`].
    pub fn since(&self) -> u16 {
        match self {
            Message::Published(_) => PUBLISHED_SINCE,
            Message::Leases(_) | Message::Versions(_) => LEASES_SINCE,
            Message::Sync(m) => m.since(),
            Message::Hello(_)
            | Message::Refused(_)
            | Message::Deltas(_)
            | Message::Membership(_)
            | Message::Goodbye(_) => OLDEST_VERSION,
        }
    }
}

/// A range of protocol versions, both ends included; empty if `lo > hi`
/// (which a peer may send, and which meets no range).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionRange {
    /// The oldest version.
    pub lo: u16,
    /// The newest version.
    pub hi: u16,
}

impl VersionRange {
    /// The range holding `version` only: what a peer of an earlier build,
    /// which sends no range, speaks.
    pub const fn single(version: u16) -> Self {
        VersionRange { lo: version, hi: version }
    }

    /// Whether `version` is in the range.
    pub fn contains(&self, version: u16) -> bool {
        self.lo <= version && version <= self.hi
    }

    /// The version a link between a peer speaking `self` and one speaking
    /// `theirs` uses: the highest both speak, or `None` if the ranges do
    /// not meet. Symmetric, so both ends pick the same.
    pub fn negotiate(&self, theirs: &VersionRange) -> Option<u16> {
        let (lo, hi) = (self.lo.max(theirs.lo), self.hi.min(theirs.hi));
        (lo <= hi).then_some(hi)
    }

    /// The `version` a dialer's hello carries: the highest version in the
    /// range that a single-version peer (up to [`LAST_SINGLE_VERSION`]) can
    /// have, since such a peer accepts only its own; `lo` if the range
    /// holds none.
    pub fn hello_version(&self) -> u16 {
        if self.lo <= LAST_SINGLE_VERSION {
            self.hi.min(LAST_SINGLE_VERSION)
        } else {
            self.lo
        }
    }
}

impl std::fmt::Display for VersionRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// A fill lease: its holder (the stamp's node) is loading `key` and will
/// write it; the other peers wait for the value rather than load it too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The key being loaded.
    pub key: Bytes,
    /// Taken at this stamp: between two leases on one key, the higher wins.
    pub stamp: Stamp,
    /// How long it holds from when it arrives, in ms (each peer times it on
    /// its own clock, so clock offsets do not shorten it).
    pub ttl_ms: u32,
    /// The holder let it go (the value, if it loaded one, was queued
    /// before this).
    pub released: bool,
}

/// One pub/sub message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// The channel.
    pub channel: Bytes,
    /// The message.
    pub message: Bytes,
    /// Published to shard channels (Redis's `SPUBLISH`), a namespace apart
    /// from ordinary channels.
    pub sharded: bool,
}

/// The hello: who is speaking, and what its clocks say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// From a dialer, [`VersionRange::hello_version`] of the versions it
    /// speaks; from an acceptor, the version the link uses. What a peer of
    /// an earlier build checks (it accepts only its own version); a peer
    /// that sends a [`Message::Versions`] frame after its hello is judged
    /// by that range instead.
    pub version: u16,
    /// The sender.
    pub from: MemberId,
    /// The sender's physical clock (Unix ms), for the skew check.
    pub physical_ms: u64,
    /// The sender's HLC, which the receiver observes.
    pub hlc: u64,
    /// Where the sender accepts peers, so that it can be dialed back and
    /// gossiped to others.
    pub listen: Option<std::net::SocketAddr>,
}

/// Why a hello was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// Protocol versions differ: the refuser speaks only `ours`. Sent to a
    /// peer that sent no range (a peer of an earlier build); a peer that
    /// did is sent [`Refusal::Versions`].
    Version {
        /// The refusing side's version ([`VersionRange::hello_version`] of
        /// its range, if it speaks several).
        ours: u16,
    },
    /// The physical clocks are further apart than `max_offset`.
    Skew {
        /// The sender's clock minus the refuser's, in ms.
        offset_ms: i64,
        /// The refuser's bound.
        max_offset_ms: u64,
    },
    /// A newer incarnation of the sender's name is known, or the sender was
    /// forgotten or has left: it must stop, or wipe and rejoin.
    Superseded {
        /// The incarnation the refuser knows, if newer.
        current: Option<Incarnation>,
    },
    /// The hello's name is not the name in the sender's certificate.
    Name {
        /// The certificate's node name, if it carries one.
        certificate: Option<String>,
    },
    /// The refuser itself learned that a newer incarnation of its own name
    /// runs, and is stopping: nothing is wrong with the sender.
    Stopping,
    /// The sender's name is not one a certificate can carry
    /// (`membership::name_problem`).
    InvalidName,
    /// The refuser's view already holds `max_members` and the sender's name
    /// is new to it.
    Full,
    /// The protocol version ranges do not meet. Sent only to a peer that
    /// sent its range (older peers cannot decode it: they get
    /// [`Refusal::Version`]).
    Versions {
        /// The versions the refuser speaks.
        ours: VersionRange,
        /// The versions the refused peer said it speaks.
        theirs: VersionRange,
    },
}

/// Pushed writes, with what the receiver needs to apply them safely.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeltaBatch {
    /// The sender (pushes from a superseded incarnation are dropped).
    pub from: MemberId,
    /// The sender's HLC.
    pub hlc: u64,
    /// The sender's `clear_below`, merged first.
    pub clear_below: Stamp,
    /// The sender's membership view, when it changed since the last batch.
    pub members: Option<Vec<MemberInfo>>,
    /// The writes.
    pub entries: Vec<(Bytes, Register)>,
}

/// Anti-entropy session messages; see `sync::session` for the exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SyncMsg {
    /// Initiator to responder: who, clocks, floors, view, and the root.
    Begin(SyncHello),
    /// Responder to initiator: the same.
    Accept(SyncHello),
    /// The responder will not sync with this initiator.
    Reject(Refusal),
    /// Digests of the children of `parents` at `level` (`FANOUT` hashes per
    /// parent, in order).
    Level {
        /// Tree level of the hashes (1 = children of the root).
        level: u8,
        /// Indices, at `level - 1`, of the nodes that differ.
        parents: Vec<u32>,
        /// The sender's digests of their children.
        hashes: Vec<u64>,
    },
    /// Keys and stamps the sender holds in buckets that differ. Cut into
    /// as many messages as it takes, then `SummaryDone`. The `key@stamp`
    /// pairs are numbered 0, 1, 2, ... in the order sent, across all of
    /// them: `Want` and `EndOfEntries` name keys by these positions.
    Summary(Vec<BucketSummary>),
    /// Registers for the receiver.
    Entries(Vec<(Bytes, Register)>),
    /// The sender has sent every register it will; `want` names the last
    /// of the registers it asks the receiver to send, as in `Want`.
    EndOfEntries {
        /// Wanted positions in the receiver's summary, as gaps continuing
        /// those of the `Want` messages before it (empty from the summary
        /// side, and in stream mode).
        want: Vec<u64>,
    },
    /// The last message each way: registers the sender refused by its
    /// `gc_floor` (the receiver drops its copies: the refusal reply). The
    /// last chunk of them: the others ride in `Refusals` before it.
    Finish {
        /// Refused `key@stamp`s.
        refused: Vec<(Bytes, Stamp)>,
    },
    /// The last `Summary` has been sent.
    SummaryDone,
    /// Registers the sender wants, named by their positions in the
    /// receiver's summary (a chunk; the rest ride in `EndOfEntries`).
    /// Positions strictly increase across all `Want` messages and the
    /// `EndOfEntries`, and each travels as its gap from the previous one
    /// (the first from 0), so a gap after the first is at least 1 and most
    /// are one varint byte. A position past the summary, or a zero gap after
    /// the first, is a protocol violation.
    Want(Vec<u64>),
    /// A chunk of the registers the sender refused by its `gc_floor`, sent
    /// before `Finish` when they do not fit in one message: refusals are
    /// cut like `Summary` and `Want`, so that no frame outgrows the limit
    /// however much a peer sent below the floor.
    Refusals(Vec<(Bytes, Stamp)>),
    /// From the summary side, to a peer whose opening said it holds part of
    /// the keyspace, between the summary side's `EndOfEntries` and its
    /// refusals: `(bucket, digest)` for the buckets summarised, in
    /// increasing order across all `Digests` messages, after applying the
    /// peer's registers. The peer may make a bucket it holds in part agree
    /// with it (ALGORITHM.md, "Eviction").
    Digests(Vec<(u32, u64)>),
    /// Responder to initiator, instead of `Accept`: the responder's own
    /// round waits for its peer's accept, and the responder will not run
    /// two sessions at once; the initiator asks again later. Nothing else
    /// follows either way.
    Busy,
    /// `Entries` with packed stamps (version 8).
    PackedEntries(PackedEntries),
    /// `Summary` with hashed keys and packed stamps (version 8), to a peer
    /// whose opening said it holds the keyspace whole; numbered and
    /// answered as `Summary`.
    PackedSummary(PackedSummary),
    /// From the side that receives the summary, after each chunk of it
    /// (version 9): the summary's first `through` pairs are compared, and
    /// `want` names the positions among them that the sender wants, as
    /// gaps continuing those sent before (as in `Want`, which a link at 9
    /// does not carry). `through` never decreases and never passes what was
    /// summarised; a wanted position at or past it is a protocol violation.
    /// The summary side then forgets the keys it will not be asked for.
    Compared {
        /// Pairs of the summary compared so far.
        through: u64,
        /// Wanted positions below `through`, as gaps.
        want: Vec<u64>,
    },
}

impl SyncMsg {
    /// The protocol version that introduced this kind, as
    /// [`Message::since`].
    pub fn since(&self) -> u16 {
        match self {
            SyncMsg::PackedEntries(_) | SyncMsg::PackedSummary(_) => PACKED_SINCE,
            SyncMsg::Compared { .. } => COMPARED_SINCE,
            _ => OLDEST_VERSION,
        }
    }

    /// The same message with its stamps packed, for a link at
    /// [`PACKED_SINCE`] or later: `Entries` becomes `PackedEntries`,
    /// anything else is unchanged (a `Summary` is packed, or not, by the
    /// session, which knows whether the peer may take its keys hashed).
    pub fn packed(self) -> SyncMsg {
        match self {
            SyncMsg::Entries(e) => SyncMsg::PackedEntries(PackedEntries::pack(e)),
            m => m,
        }
    }
}

/// One bucket of a [`SyncMsg::Summary`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSummary {
    /// The bucket.
    pub bucket: u32,
    /// The sender's floor there: `None` when it has no memory bound and
    /// holds the bucket whole; otherwise it wants no register at or below
    /// the floor for a key it lacks, and no value for its stubs
    /// (ALGORITHM.md, "Eviction").
    pub floor: Option<Stamp>,
    /// The `key@stamp` of every register the sender holds in the bucket.
    pub items: Vec<(Bytes, Stamp)>,
    /// The positions in `items`, increasing, of the registers that are
    /// stubs (values evicted before they were stable): a peer holding the
    /// value sends it to a sender that holds the bucket whole.
    pub stubs: Vec<u32>,
}

/// The opening of an anti-entropy session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncHello {
    /// The sender.
    pub from: MemberId,
    /// The sender's HLC.
    pub hlc: u64,
    /// Whether the sender has completed bootstrap.
    pub booted: bool,
    /// The sender's `clear_below`.
    pub clear_below: Stamp,
    /// The sender's membership view.
    pub members: Vec<MemberInfo>,
    /// The sender's digest root.
    pub root: u64,
    /// Registers the sender holds.
    pub count: u64,
    /// Whether the sender holds only part of some bucket (it evicted into
    /// ghosts): its count then says nothing about how much it lacks, and
    /// the session descends the tree rather than streaming everything.
    pub holds_part: bool,
}

/// Why a frame could not be decoded. The connection that sent it is closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The length prefix announces more than the maximum frame size.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The payload is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    /// The payload decoded but bytes were left over.
    #[error("malformed frame: {0} trailing bytes")]
    TrailingBytes(usize),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({have} of {need} bytes)")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
    /// A message is too large to send as one frame.
    #[error("message of {len} bytes exceeds the maximum frame of {max}")]
    MessageTooLarge {
        /// Encoded length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
}

/// A postcard output that appends to a buffer.
struct Append<'a>(&'a mut BytesMut);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        self.0.put_u8(b);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Encodes and decodes length-prefixed frames.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    max_frame: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec { max_frame: DEFAULT_MAX_FRAME }
    }
}

impl FrameCodec {
    /// A codec refusing frames longer than `max_frame` bytes (payload).
    ///
    /// The limit is clamped to `u32::MAX`: the prefix cannot carry a longer
    /// length, and a wrapped one would make the peer read the rest of the
    /// body as frames of its own.
    pub fn new(max_frame: usize) -> Self {
        FrameCodec { max_frame: max_frame.min(u32::MAX as usize) }
    }

    /// The configured maximum payload size.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Appends one frame holding `msg` to `dst`.
    ///
    /// The body is measured first (postcard's `serialized_size`, as
    /// [`encoded_len`] does, adds up lengths and copies nothing) and then
    /// serialized straight into `dst`: one
    /// allocation of the right size, rather than a vector grown by doubling
    /// and then copied behind the prefix. A push batch is up to 64 KiB.
    pub fn encode(&self, msg: &Message, dst: &mut BytesMut) -> Result<(), WireError> {
        let len = postcard::experimental::serialized_size(msg)?;
        if len > self.max_frame {
            return Err(WireError::MessageTooLarge { len, max: self.max_frame });
        }
        dst.reserve(LENGTH_PREFIX + len);
        dst.put_u32(len as u32);
        let start = dst.len();
        if let Err(e) = postcard::serialize_with_flavor(msg, Append(dst)) {
            dst.truncate(start - LENGTH_PREFIX);
            return Err(e.into());
        }
        debug_assert_eq!(dst.len() - start, len, "postcard's size pass and its output agree");
        Ok(())
    }

    /// Encodes `msg` as one frame.
    pub fn encode_to_bytes(&self, msg: &Message) -> Result<Bytes, WireError> {
        let mut b = BytesMut::new();
        self.encode(msg, &mut b)?;
        Ok(b.freeze())
    }

    /// Takes one frame from the front of `src`, if a whole one is there.
    ///
    /// Returns `Ok(None)` when more bytes are needed. An oversized length is
    /// an error as soon as the prefix is read, before the body arrives.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        if src.len() < LENGTH_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_frame {
            return Err(WireError::FrameTooLarge { len, max: self.max_frame });
        }
        if src.len() < LENGTH_PREFIX + len {
            // Grow with the bytes that arrive, never with the length
            // announced: a peer may announce a maximal frame on every stream
            // it can open and then send nothing more.
            src.reserve((LENGTH_PREFIX + len - src.len()).min(RESERVE_CHUNK));
            return Ok(None);
        }
        src.advance(LENGTH_PREFIX);
        let body = src.split_to(len);
        decode_payload(&body).map(Some)
    }

    /// Decodes a buffer that must hold exactly whole frames (a finished
    /// stream); a partial frame at the end is [`WireError::Truncated`].
    pub fn decode_all(&self, bytes: &[u8]) -> Result<Vec<Message>, WireError> {
        let mut src = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = self.decode(&mut src)? {
            out.push(m);
        }
        if !src.is_empty() {
            let need = if src.len() >= LENGTH_PREFIX {
                LENGTH_PREFIX + u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize
            } else {
                LENGTH_PREFIX
            };
            return Err(WireError::Truncated { have: src.len(), need });
        }
        Ok(out)
    }
}

/// Decodes one frame's payload (without the length prefix).
pub fn decode_payload(body: &[u8]) -> Result<Message, WireError> {
    let (msg, rest) = postcard::take_from_bytes::<Message>(body)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// The encoded size of a message, without the length prefix.
pub fn encoded_len<T: Serialize>(msg: &T) -> usize {
    postcard::experimental::serialized_size(msg).unwrap_or(0)
}

#[cfg(test)]
mod tests;
