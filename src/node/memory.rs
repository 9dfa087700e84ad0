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

/// Room kept free below the bound (1/16 of it) for what the rest of the
/// process allocates between two readings.
const HEADROOM: usize = 16;

/// How often the probe is read. Writes arrive at hundreds of thousands a
/// second; a reading per timer tick (100 ms) would let the rest of the
/// process grow by megabytes between two corrections.
const EVERY: Duration = Duration::from_millis(10);

/// Keeps the store's value budget in step with the allocator's count, for
/// a peer started with a probe and a bound.
pub(super) async fn memory_loop(inner: Arc<Inner>) {
    let Some(probe) = inner.memory.clone() else { return };
    let mut iv = tokio::time::interval(EVERY);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = iv.tick() => {}
        }
        let Some(allocated) = probe() else { continue };
        if let Some(budget) = rebalance(inner.replica.store(), allocated, inner.env.now_ms()) {
            metrics::gauge!("meshcache_value_budget_bytes").set(budget as f64);
        }
        metrics::gauge!("meshcache_allocated_bytes").set(allocated as f64);
    }
}

/// Sets the store's value budget from an allocator reading: the bound,
/// less headroom, less what the process holds outside values. The budget
/// falls to that at once, and rises only halfway to it per reading: the
/// store's estimate of a value's cost is short of the allocator's, so
/// "what is held outside values" grows with the values themselves, and a
/// budget that jumped up would overshoot and swing. Returns the budget
/// set, or `None` when the store has no bound.
pub(crate) fn rebalance(store: &Store, allocated: usize, now_ms: u64) -> Option<usize> {
    let max = store.max_bytes()?.get();
    let other = allocated.saturating_sub(store.value_bytes());
    let target = (max - max / HEADROOM).saturating_sub(other).max(max / MIN_VALUE_SHARE).max(1);
    let current = store.value_limit();
    let budget = if target <= current { target } else { current + (target - current) / 2 };
    store.set_value_budget(NonZeroUsize::new(budget), now_ms);
    Some(budget)
}
