//! [`Mesh::get_or_load`]: a cold key loaded once across the mesh.
//!
//! - **On one peer**, concurrent callers share one fill: the first starts
//!   it as a task of the peer, the others wait for its result (value or
//!   error). A caller that gives up does not cancel the fill.
//! - **Across the mesh**, a fill takes a lease on the key before it loads
//!   (`leases`), which rides every peer's push stream. A fill on another
//!   peer that sees a live lease held elsewhere waits for the value instead
//!   of loading: the holder writes the value, then releases the lease,
//!   and the release travels behind the value, so the waiter wakes to find
//!   it. If the holder fails, is cut off or gives up, its lease runs out
//!   (or is released) and a waiter takes a lease of its own.
//! - **Two fills that start within one round trip** each take a lease; the
//!   higher stamp wins. A fill waits `settle` (twice the slowest round trip
//!   to its peers, at least 3 ms) after taking its lease before it loads; one outbid in
//!   that time waits instead. Fills further apart than that but closer
//!   than a round trip both load: a key is loaded at most once per peer
//!   that raced, and its value converges by LWW as every write does.
//! - **Under a partition** each side sees only its own leases and loads at
//!   most once per lease period; after the heal the values converge.
//! - **Across protocol versions** (a rolling upgrade), a link older than
//!   leases carries none either way: a peer there loads a cold key on its
//!   own, at most once more than the others, and neither side waits for a
//!   lease that cannot arrive (ALGORITHM.md, "Protocol versions").
//!
//! The loader runs at most once per fill. While it runs, its lease is
//! renewed every half period, so a slow loader is not taken over while it
//! is alive.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::{Mesh, MeshError};
use crate::hlc::Stamp;
use crate::locks::Mutex;
use crate::wire::Lease;

/// Why [`Mesh::get_or_load`] returned no value.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LoadError {
    /// The loader failed (on this peer: every caller here that shared the
    /// fill gets the same error).
    #[error("the loader failed: {0}")]
    Loader(Arc<dyn std::error::Error + Send + Sync>),
    /// The loaded value could not be written (too large, out of memory,
    /// the peer still loading its data).
    #[error("the loaded value was not stored: {0}")]
    Store(Arc<MeshError>),
    /// The peer stopped before the fill ended.
    #[error("the peer stopped before the load finished")]
    Stopped,
}

type Filled = Result<Bytes, LoadError>;

/// The fills running on one peer, by key.
#[derive(Default)]
pub(super) struct Flights {
    running: Mutex<HashMap<Bytes, watch::Receiver<Option<Filled>>>>,
}

/// Fill settings.
#[derive(Clone, Copy, Debug)]
pub(super) struct FillConfig {
    /// How long a lease holds without renewal.
    pub(super) lease: Duration,
    /// The wait between taking a lease and loading; `None`: twice the
    /// slowest round trip to the connected peers, within 3–50 ms (the
    /// floor covers a loaded host, where a lease waits behind other work
    /// longer than the measured round trip: with 1 ms, the benchmark's
    /// three processes loaded up to 6 keys in 1,000 twice).
    pub(super) settle: Option<Duration>,
}

impl Default for FillConfig {
    fn default() -> Self {
        FillConfig { lease: Duration::from_secs(5), settle: None }
    }
}

impl Mesh {
    /// The value of `key`, or, if this peer holds none, the value `loader`
    /// makes, which is written with `ttl` (the builder's default TTL if
    /// `None`) and returned.
    ///
    /// A key missing everywhere is loaded once across the mesh, not once
    /// per caller or per peer: callers on this peer share one fill, and a
    /// fill takes a mesh-wide lease before it loads, so that fills on the
    /// other peers wait for its value (see the module docs of `fill` for
    /// races, failures and partitions). The loader runs on a task of this
    /// peer: a caller that is cancelled does not cancel it for the others.
    /// A loader error is returned to every caller that shared the fill,
    /// and is not remembered: the next call loads again.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: impl Into<Bytes>,
        ttl: Option<Duration>,
        loader: F,
    ) -> Result<Bytes, LoadError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let key = key.into();
        if let Some(v) = self.get(&key) {
            return Ok(v);
        }
        let mut rx = {
            let mut running = self.inner.flights.running.lock();
            match running.get(&key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    running.insert(key.clone(), rx.clone());
                    // Not a handle: a fill does not keep the peer running.
                    let mesh = Mesh::internal(self.inner.clone());
                    self.inner.tasks.spawn(async move {
                        let r = mesh.fill(&key, ttl, loader).await;
                        // Sent before the fill is forgotten: a caller that
                        // finds the fill finds its result.
                        let _ = tx.send(Some(r));
                        mesh.inner.flights.running.lock().remove(&key);
                    });
                    rx
                }
            }
        };
        let r = rx.wait_for(Option::is_some).await.map_err(|_| LoadError::Stopped)?;
        r.clone().unwrap_or(Err(LoadError::Stopped))
    }

    /// One fill of `key`: wait for another peer's lease, or take one and
    /// load.
    async fn fill<F, Fut, E>(&self, key: &Bytes, ttl: Option<Duration>, loader: F) -> Filled
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let me = self.inner.replica.me().incarnation.node;
        let leases = &self.inner.leases;
        let cancel = self.inner.cancel.clone();
        let lease_ms = u32::try_from(self.inner.fill.lease.as_millis()).unwrap_or(u32::MAX).max(1);
        let watch = leases.watch(key);
        loop {
            let woken = watch.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Some(v) = self.get(key) {
                return Ok(v);
            }
            let now = self.now_ms();
            if let Some((_, until)) = leases.live(key, now).filter(|(s, _)| s.node != me) {
                // Another peer is loading it: its value (or its release, or
                // a higher lease) wakes this fill, or the lease runs out.
                tokio::select! {
                    _ = &mut woken => {}
                    _ = tokio::time::sleep(Duration::from_millis(until.saturating_sub(now))) => {}
                    _ = cancel.cancelled() => return Err(LoadError::Stopped),
                }
                continue;
            }
            let stamp = self.inner.replica.store().clock().now(now);
            self.send_lease(Lease { key: key.clone(), stamp, ttl_ms: lease_ms, released: false });
            // A lease taken elsewhere at the same moment has this long to
            // arrive and outbid this one.
            let settled = tokio::time::sleep(self.settle());
            tokio::pin!(settled);
            let outbid = loop {
                let woken = watch.notify.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if leases.live(key, self.now_ms()).is_none_or(|(s, _)| s != stamp) {
                    break true;
                }
                tokio::select! {
                    _ = &mut woken => {}
                    _ = &mut settled => break false,
                    _ = cancel.cancelled() => return Err(LoadError::Stopped),
                }
            };
            if outbid {
                continue;
            }
            if let Some(v) = self.get(key) {
                self.release(key, stamp);
                return Ok(v);
            }
            return self.load(key, stamp, lease_ms, ttl, loader).await;
        }
    }

    /// Runs the loader under lease `stamp`, renewing it, then writes the
    /// value and releases the lease (behind the value, on every push
    /// stream).
    async fn load<F, Fut, E>(
        &self,
        key: &Bytes,
        stamp: Stamp,
        lease_ms: u32,
        ttl: Option<Duration>,
        loader: F,
    ) -> Filled
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.inner.counters.fill_loads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let loading = loader();
        tokio::pin!(loading);
        let renew = Duration::from_millis(u64::from(lease_ms / 2).max(1));
        let result = loop {
            tokio::select! {
                r = &mut loading => break r,
                _ = tokio::time::sleep(renew) => {
                    self.send_lease(Lease { key: key.clone(), stamp, ttl_ms: lease_ms, released: false });
                }
                _ = self.inner.cancel.cancelled() => return Err(LoadError::Stopped),
            }
        };
        let filled = match result {
            Ok(v) => {
                let written = match ttl {
                    Some(t) => self.insert_with_ttl(key.clone(), v.clone(), t),
                    None => self.insert(key.clone(), v.clone()),
                };
                written.map(|()| v).map_err(|e| LoadError::Store(Arc::new(e)))
            }
            Err(e) => Err(LoadError::Loader(Arc::new(e))),
        };
        self.release(key, stamp);
        filled
    }

    fn release(&self, key: &Bytes, stamp: Stamp) {
        self.send_lease(Lease { key: key.clone(), stamp, ttl_ms: 0, released: true });
    }

    /// Takes `l` here and queues it for every connected peer.
    fn send_lease(&self, l: Lease) {
        for p in self.inner.peers.lock().values() {
            p.queue.push_lease(l.clone());
        }
        self.inner.leases.handle(l, self.now_ms());
    }

    /// How long a fill waits after taking its lease before it loads.
    fn settle(&self) -> Duration {
        if let Some(s) = self.inner.fill.settle {
            return s;
        }
        let peers = self.inner.peers.lock();
        if peers.is_empty() {
            return Duration::ZERO;
        }
        let rtt = peers.values().map(|p| p.conn.rtt()).max().unwrap_or_default();
        (2 * rtt).clamp(Duration::from_millis(3), Duration::from_millis(50))
    }
}
