//! Protocol versions on the shell's side: the range this peer speaks, the
//! frame that follows a hello, the version a dialer's hello names, and the
//! refusals whose ranges did not meet (counted, logged, and kept for
//! `status`). The decision itself is the machine's (`Links::handle_hello`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::BytesMut;

use super::inner::Inner;
use super::stream::{kind, FrameReader, StreamError};
use crate::locks::Mutex;
use crate::wire::{Hello, Message, Refusal, VersionRange, WireError};

/// A hello refused because the two peers' protocol version ranges do not
/// meet, either way round: what `status` shows of the last one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRefusal {
    /// The other peer: its name when it said one, else its address.
    pub peer: String,
    /// The versions this peer speaks.
    pub ours: VersionRange,
    /// The versions the other peer speaks (one, for a peer of a build
    /// before version ranges).
    pub theirs: VersionRange,
    /// Whether this peer refused (else the other peer refused this one).
    pub by_us: bool,
    /// When (Unix ms, this peer's clock).
    pub at_ms: u64,
}

/// What this peer knows of versions beyond its own range.
#[derive(Default)]
pub(super) struct Versions {
    /// The last refusal for versions.
    last_refusal: Mutex<Option<VersionRefusal>>,
    /// Peers of earlier builds (one version each) that refused a hello
    /// naming another version, by address: the version a dial there names.
    /// At most one entry per address dialed (seeds and members).
    single: Mutex<HashMap<SocketAddr, u16>>,
}

impl Versions {
    /// The last refusal for versions, if any.
    pub(super) fn last_refusal(&self) -> Option<VersionRefusal> {
        self.last_refusal.lock().clone()
    }
}

/// Encodes this peer's hello, naming `version`, and the range it speaks
/// after it, as the frames of the hello stream.
pub(super) fn hello_frames(inner: &Inner, version: u16) -> Result<BytesMut, WireError> {
    let hello = Message::Hello(Hello {
        version,
        from: inner.replica.me().clone(),
        physical_ms: inner.env.now_ms(),
        hlc: inner.replica.store().clock().last(),
        listen: Some(inner.advertise),
    });
    let mut frames = BytesMut::new();
    inner.codec.encode(&hello, &mut frames)?;
    inner.codec.encode(&Message::Versions(inner.versions), &mut frames)?;
    Ok(frames)
}

/// The version a hello to `addr` names: the one its peer speaks if it is
/// known to speak only one that this peer also speaks, else this peer's
/// [`VersionRange::hello_version`].
pub(super) fn hello_version(inner: &Inner, addr: SocketAddr) -> u16 {
    inner.version_state.single.lock().get(&addr).copied().unwrap_or_else(|| inner.versions.hello_version())
}

/// Reads what follows a peer's hello: its version range, or `None` if it
/// ended the stream (a peer of an earlier build sends its hello alone).
pub(super) async fn read_versions(reader: &mut FrameReader) -> Result<Option<VersionRange>, StreamError> {
    match reader.next().await? {
        None => Ok(None),
        Some(Message::Versions(r)) => Ok(Some(r)),
        Some(other) => Err(StreamError::Protocol(format!("{} after a hello", kind(&other)))),
    }
}

/// The peer at `addr` sent its range (it judges hellos by it): a version
/// remembered for it is no longer needed.
pub(super) fn spoke_range(inner: &Inner, addr: SocketAddr) {
    inner.version_state.single.lock().remove(&addr);
}

/// The peer at `addr` refused this peer's hello, which named `sent`; true
/// if the refusal was about versions (and was handled here). A peer of an
/// earlier build that speaks one version this peer also speaks refuses a
/// hello naming another: the next dial names its version. A refusal whose
/// ranges do not meet is counted, logged and kept.
pub(super) fn refused_by(inner: &Inner, addr: SocketAddr, r: &Refusal, sent: u16) -> bool {
    let theirs = match r {
        Refusal::Version { ours } if *ours != sent && inner.versions.contains(*ours) => {
            tracing::info!(%addr, version = ours, "peer speaks only protocol version {ours}: dialing it again with it");
            inner.version_state.single.lock().insert(addr, *ours);
            return true;
        }
        Refusal::Version { ours } => VersionRange::single(*ours),
        // Its own range is what it calls ours.
        Refusal::Versions { ours, .. } => *ours,
        _ => return false,
    };
    note(inner, addr.to_string(), theirs, false);
    true
}

/// This peer refused `peer`'s hello with `r`; a refusal for versions is
/// counted, logged and kept.
pub(super) fn refused_peer(inner: &Inner, peer: &str, r: &Refusal, theirs: VersionRange) {
    if matches!(r, Refusal::Version { .. } | Refusal::Versions { .. }) {
        note(inner, peer.to_owned(), theirs, true);
    }
}

fn note(inner: &Inner, peer: String, theirs: VersionRange, by_us: bool) {
    let ours = inner.versions;
    inner.counters.version_refusals.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("meshcache_version_refusals_total").increment(1);
    let by = if by_us { "this peer refused" } else { "refused by" };
    tracing::error!(
        peer = %peer, ours = %ours, theirs = %theirs,
        "protocol versions do not meet ({by} the peer): this peer speaks {ours}, the peer {theirs}; upgrade one side"
    );
    *inner.version_state.last_refusal.lock() =
        Some(VersionRefusal { peer, ours, theirs, by_us, at_ms: inner.env.now_ms() });
}
