//! The state of one client connection that commands read and change.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

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
    /// Where the hub queues this client's pub/sub messages.
    pub(crate) outbox: Arc<Outbox>,
    /// Close once the pending replies are written (QUIT, protocol error).
    pub(crate) close: bool,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    /// The last command run, for CLIENT INFO.
    pub(crate) last: &'static str,
}

impl Client {
    pub(crate) fn new(id: u64, addr: SocketAddr, laddr: SocketAddr, outbox: Arc<Outbox>, authed: bool) -> Self {
        Client {
            id,
            addr,
            laddr,
            created: crate::env::stopwatch(),
            authed,
            name: None,
            lib_name: None,
            lib_ver: None,
            channels: HashSet::new(),
            patterns: HashSet::new(),
            outbox,
            close: false,
            hits: 0,
            misses: 0,
            last: "NULL",
        }
    }

    /// Whether the client has any subscription.
    pub(crate) fn subscribed(&self) -> bool {
        !self.channels.is_empty() || !self.patterns.is_empty()
    }

    pub(crate) fn subscriptions(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    /// Keyspace hits and misses since the last call.
    pub(crate) fn take_hits(&mut self) -> (u64, u64) {
        (std::mem::take(&mut self.hits), std::mem::take(&mut self.misses))
    }
}
