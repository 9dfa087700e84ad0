//! What a subscriber to a peer's changes receives: [`Mesh::subscribe`].
//!
//! A near cache kept beside the mesh stays honest only if it handles two
//! things besides a key changing: a FLUSHALL, and having missed changes
//! because it fell behind. Both arrive as [`Event::InvalidateAll`], a
//! variant of the one enum a subscriber matches on, so neither can be
//! dropped by a `match` that compiles.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

use super::Mesh;
use crate::hlc::Stamp;
use crate::store::{Change, ChangeKind, Origin};

/// One thing a subscriber must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// One key changed on this peer (written, deleted, expired, evicted),
    /// by this peer or another: drop what is cached for it. Its kind is
    /// never [`ChangeKind::Flush`].
    Changed(Change),
    /// Anything may have changed: drop everything cached.
    InvalidateAll(Why),
}

/// Why everything must be invalidated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// A FLUSHALL ([`Mesh::invalidate_all`]), here or on another peer, or a
    /// compaction: every write stamped below `clear_below` is gone.
    Flushed {
        /// Where it came from.
        origin: Origin,
        /// The new `clear_below`.
        clear_below: Stamp,
    },
    /// This subscriber fell more than 4,096 changes behind and missed
    /// `missed` of them.
    Lagged {
        /// Changes missed.
        missed: u64,
    },
}

/// The changes of one peer, from the moment [`Mesh::subscribe`] was
/// called: a [`Stream`] of [`Event`]s, or [`Changes::recv`]. It ends when
/// the peer stops.
pub struct Changes {
    inner: BroadcastStream<Change>,
}

impl Mesh {
    /// Every change this peer makes or learns of from now on, for an
    /// application's own near cache. A subscriber that falls more than
    /// 4,096 changes behind gets [`Why::Lagged`].
    pub fn subscribe(&self) -> Changes {
        Changes { inner: BroadcastStream::new(self.inner.events.subscribe()) }
    }

    /// Registers `f` to be told of every change as it is applied, once the
    /// returned tap is started (see [`super::taps`]).
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn tap_changes(
        &self,
        f: impl Fn(&[u8], ChangeKind, Stamp) + Send + Sync + 'static,
    ) -> super::taps::ChangeTap {
        self.inner.taps.add(std::sync::Arc::new(f))
    }
}

impl Changes {
    /// The next event; `None` once the peer has stopped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.next().await
    }
}

impl Stream for Changes {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|item| {
            item.map(|r| match r {
                Ok(c) if c.kind == ChangeKind::Flush => {
                    Event::InvalidateAll(Why::Flushed { origin: c.origin, clear_below: c.stamp })
                }
                Ok(c) => Event::Changed(c),
                Err(BroadcastStreamRecvError::Lagged(missed)) => Event::InvalidateAll(Why::Lagged { missed }),
            })
        })
    }
}
