//! A memory bound on the whole process, not just the store's values.
//!
//! The store counts what its values take and evicts to keep them under a
//! limit. Everything else a peer allocates (stubs, tombstones, the store's
//! tables, push queues, frames being received, QUIC's buffers, client
//! connections) the store cannot see. A process that can read its own
//! allocator's count gives it as a [`MemoryProbe`]; every 10 ms the peer
//! then sets the values' budget to the bound less whatever else is
//! allocated, so that the total stays within `max_bytes`: values are the
//! part that can give way, as in Redis, where `maxmemory` is compared with
//! the allocator's count. The `meshcache` command installs jemalloc and
//! probes `stats.allocated`; an application embedding a peer may pass its
//! own allocator's count, or none (then `max_bytes` bounds values only).

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use super::inner::Inner;
use super::stream::Check;
use crate::store::Store;

/// Reads how many bytes the process has allocated now, if it can tell.
pub type MemoryProbe = Arc<dyn Fn() -> Option<usize> + Send + Sync>;

/// The smallest `max_bytes` a `meshcache` process accepts when it bounds
/// the whole process: a peer at rest allocates about 5 MiB (quinn's
/// receive buffers alone are 3 MiB; then the runtime, TLS and the store's
/// digest arrays), its ghost arrays take 1.5 MiB more once it evicts, and
/// this leaves room for buffers and a few megabytes of data.
pub const MIN_PROCESS_BYTES: usize = 16 << 20;

/// Values keep at least this share of the bound (1/8), however much the
/// rest of the process takes: a burst of buffers then costs a passing
/// overshoot rather than the whole cache.
const MIN_VALUE_SHARE: usize = 8;

/// Room kept free below the bound (at least 1/16 of it) for what the rest
/// of the process allocates between two readings.
const HEADROOM: usize = 16;

/// How often the probe is read. Writes arrive at hundreds of thousands a
/// second; a reading per timer tick (100 ms) would let the rest of the
/// process grow by megabytes between two corrections.
const EVERY: Duration = Duration::from_millis(10);

/// Keeps the store's value budget in step with the allocator's count, for
/// a peer started with a probe and a bound.
pub(super) async fn memory_loop(inner: Arc<Inner>) {
    if inner.memory.is_none() {
        return;
    }
    let mut iv = tokio::time::interval(EVERY);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = iv.tick() => {}
        }
        check_memory(&inner);
    }
}

/// Reads the allocator's count and sets the values' budget from it. The
/// memory loop does so every 10 ms; anti-entropy sessions and push
/// streams also do as their traffic grows ([`traffic_check_every`]),
/// since what they bring in (a session's state, merged pushes, QUIC's
/// receive buffers) can grow by megabytes within milliseconds, while on a
/// saturated machine the loop's readings come 50-150 ms apart.
fn check_memory(inner: &Inner) {
    let Some(probe) = &inner.memory else { return };
    let Some(allocated) = probe() else { return };
    let reserve = transport_reserve(inner.config.receive_window, inner.endpoint.open_connections());
    if let Some(budget) = rebalance(inner.replica.store(), allocated, reserve, inner.env.now_ms()) {
        metrics::gauge!("meshcache_value_budget_bytes").set(budget as f64);
    }
    metrics::gauge!("meshcache_allocated_bytes").set(allocated as f64);
}

/// Each share of the bound's worth (1/`TRAFFIC_CHECK_SHARE`) of messages
/// an anti-entropy session sends and receives, or a push stream receives,
/// it reads the allocator's count ([`check_memory`]): what the process
/// holds grows with those messages.
const TRAFFIC_CHECK_SHARE: u64 = 256;

/// The least traffic between two of a reader's readings.
const MIN_TRAFFIC_CHECK: u64 = 64 * 1024;

/// How an anti-entropy session or a push stream reads the allocator's
/// count ([`check_memory`]): every [`traffic_check_every`] bytes of its
/// traffic.
pub(super) fn traffic_check(inner: &Inner) -> Check<impl Fn() + '_> {
    Check { every: traffic_check_every(inner), run: move || check_memory(inner) }
}

/// Bytes of a session's or a push stream's traffic between two readings
/// of the allocator's count ([`check_memory`]); 0 (never) on a peer that
/// does not bound its whole process.
fn traffic_check_every(inner: &Inner) -> u64 {
    match (&inner.memory, inner.replica.store().max_bytes()) {
        (Some(_), Some(bound)) => (bound.get() as u64 / TRAFFIC_CHECK_SHARE).max(MIN_TRAFFIC_CHECK),
        _ => 0,
    }
}

/// What the connections may come to hold between two readings without
/// this peer asking: each may be sent a window of data it has not read
/// yet, and keep a window it has sent and not yet seen acknowledged. On a
/// loopback or LAN link a peer fills both in well under one reading's
/// 10 ms, and quinn keeps that data in large buffers (a received batch of
/// datagrams is one allocation until all of it is read), so the room must
/// be free before it arrives, not made by eviction after. Zero when
/// `receive_window` is unset (quinn's defaults, with no connection-wide
/// limit): `MeshConfig::fit_to_bound` sets it, as the `meshcache` command
/// does under a bound.
pub(crate) fn transport_reserve(window: Option<usize>, connections: usize) -> usize {
    window.map_or(0, |w| w.saturating_mul(2).saturating_mul(connections))
}

/// Sets the store's value budget from an allocator reading: the bound,
/// less headroom (a sixteenth of the bound, or `reserve` if the
/// connections may fill more: [`transport_reserve`]), less what the
/// process holds outside values. The budget
/// falls to that at once, and rises only halfway to it per reading: the
/// store's estimate of a value's cost is short of the allocator's, so
/// "what is held outside values" grows with the values themselves, and a
/// budget that jumped up would overshoot and swing. Returns the budget
/// set, or `None` when the store has no bound.
pub(crate) fn rebalance(store: &Store, allocated: usize, reserve: usize, now_ms: u64) -> Option<usize> {
    let max = store.max_bytes()?.get();
    let other = allocated.saturating_sub(store.value_bytes());
    let headroom = (max / HEADROOM).max(reserve);
    let target = max.saturating_sub(headroom).saturating_sub(other).max(max / MIN_VALUE_SHARE).max(1);
    let current = store.value_limit();
    let budget = if target <= current { target } else { current + (target - current) / 2 };
    store.set_value_budget(NonZeroUsize::new(budget), now_ms);
    Some(budget)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::NodeId;
    use crate::store::StoreConfig;

    const MAX: usize = 64 << 20;

    fn bounded() -> Store {
        let cfg = StoreConfig { max_bytes: NonZeroUsize::new(MAX), ..StoreConfig::default() };
        Store::new(NodeId(1), cfg).unwrap()
    }

    #[test]
    fn each_connection_keeps_two_windows_free() {
        assert_eq!(transport_reserve(None, 5), 0, "unset windows are not counted");
        assert_eq!(transport_reserve(Some(1 << 20), 0), 0);
        assert_eq!(transport_reserve(Some(1 << 20), 3), 6 << 20);
        assert_eq!(transport_reserve(Some(usize::MAX), 2), usize::MAX, "saturates rather than wraps");
    }

    #[test]
    fn the_headroom_is_a_sixteenth_or_the_connections_reserve_if_larger() {
        let other = 10 << 20;
        // A reserve below a sixteenth leaves the sixteenth. The budget
        // falls to its target at once from the unset budget (the bound).
        let s = bounded();
        assert_eq!(rebalance(&s, other, MAX / 32, 0), Some(MAX - MAX / 16 - other));
        // Above it, the reserve is kept free instead.
        let s = bounded();
        assert_eq!(rebalance(&s, other, MAX / 4, 0), Some(MAX - MAX / 4 - other));
        // Values keep an eighth whatever the reserve.
        let s = bounded();
        assert_eq!(rebalance(&s, other, MAX, 0), Some(MAX / 8));
    }
}
