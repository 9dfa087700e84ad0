//! Timer work: expiry, tombstone collection, the bootstrap timeout, and
//! gauges.

use std::sync::Arc;
use std::time::Duration;

use super::inner::Inner;

/// The shortest time between two warnings about ignored member entries.
const IGNORED_WARN_EVERY: Duration = Duration::from_secs(60);

/// Timer work: expiry, collection, bootstrap timeout, gauges.
pub(super) async fn timer_loop(inner: Arc<Inner>) {
    let mut iv = tokio::time::interval(inner.config.tick_interval);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ignored_warned = (crate::membership::Ignored::default(), None::<tokio::time::Instant>);
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = iv.tick() => {}
        }
        let r = &inner.replica;
        if !r.is_booted() && inner.env.instant() - inner.started >= inner.config.bootstrap_timeout {
            r.force_boot();
            inner.sessions_ended.notify_waiters();
            tracing::warn!(
                timeout_ms = inner.config.bootstrap_timeout.as_millis() as u64,
                "no seed answered within the bootstrap timeout: accepting writes without an initial sync"
            );
        }
        if r.is_superseded() {
            inner.with_links(|d, _| d.links.handle_superseded());
            return;
        }
        // Membership news normally reaches the dialer as it arrives; this
        // catches any path that changed it without saying so.
        inner.note_members();
        // A compaction here is logged and published by the store's hook
        // (set in the builder), as one inside a write is.
        let tick = r.tick(inner.env.now_ms());
        inner.publish_all(tick.expired);
        // Peers gossip their whole view again and again: the same ignored
        // entries come back every round, so one line a minute at most.
        let ignored = r.members_ignored();
        if ignored != ignored_warned.0 && ignored_warned.1.is_none_or(|t| inner.env.instant() - t >= IGNORED_WARN_EVERY)
        {
            tracing::warn!(
                invalid = ignored.invalid,
                over_cap = ignored.over_cap,
                max_members = inner.config.max_members,
                "member entries ignored: names no certificate can carry or addresses no one can dial (invalid), \
                 or new names while the view is full (over_cap; raise max_members if the mesh is that large)"
            );
            ignored_warned = (ignored, Some(inner.env.instant()));
        }
        let st = r.store().stats();
        metrics::gauge!("meshcache_entries").set(st.entries as f64);
        metrics::gauge!("meshcache_bytes").set(st.bytes as f64);
        metrics::gauge!("meshcache_tombstones").set(st.tombstones as f64);
        metrics::gauge!("meshcache_stubs").set(st.stubs as f64);
        metrics::gauge!("meshcache_members").set(r.members().len() as f64);
        metrics::gauge!("meshcache_connected_peers").set(inner.peers.lock().len() as f64);
        metrics::gauge!("meshcache_clock_refused").set(r.store().clock().refused() as f64);
        metrics::gauge!("meshcache_collected_tombstones").set(st.collected_tombstones as f64);
        metrics::gauge!("meshcache_compactions").set(st.compactions as f64);
    }
}
