//! INFO's per-second figures (`instantaneous_ops_per_sec`,
//! `instantaneous_input_kbps`, `instantaneous_output_kbps`) and the memory
//! peak, from readings taken ten times a second, as Redis's cron takes
//! them: each figure is the mean of the last 16 samples.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::locks::Mutex;

use super::Shared;

/// How often the counters are read.
pub(crate) const EVERY: Duration = Duration::from_millis(100);
/// How many samples a figure averages (Redis's `STATS_METRIC_SAMPLES`).
const SAMPLES: usize = 16;

/// One reading of the counters the figures are rates of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Reading {
    pub(crate) commands: u64,
    pub(crate) net_in: u64,
    pub(crate) net_out: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Rates {
    ring: Mutex<Ring>,
    /// The most memory used at any reading (`used_memory_peak`).
    peak: AtomicUsize,
}

#[derive(Debug, Default)]
struct Ring {
    last: Option<(Instant, Reading)>,
    /// Per second, between consecutive readings.
    samples: [Reading; SAMPLES],
    next: usize,
}

impl Rates {
    /// Takes a reading made at `at`.
    pub(crate) fn sample(&self, at: Instant, now: Reading) {
        let mut r = self.ring.lock();
        if let Some((then, prev)) = r.last {
            let ms = at.saturating_duration_since(then).as_millis() as u64;
            // A counter reset by CONFIG RESETSTAT reads as no change.
            let per_sec = |a: u64, b: u64| b.saturating_sub(a).saturating_mul(1000).checked_div(ms).unwrap_or(0);
            let i = r.next;
            r.samples[i] = Reading {
                commands: per_sec(prev.commands, now.commands),
                net_in: per_sec(prev.net_in, now.net_in),
                net_out: per_sec(prev.net_out, now.net_out),
            };
            r.next = (i + 1) % SAMPLES;
        }
        r.last = Some((at, now));
    }

    /// The mean of the samples, per second: over all 16 slots, as Redis
    /// divides, so the first 1.6 s after a start read low.
    pub(crate) fn per_sec(&self) -> Reading {
        let r = self.ring.lock();
        let mean = |f: fn(&Reading) -> u64| r.samples.iter().map(f).sum::<u64>() / SAMPLES as u64;
        Reading { commands: mean(|s| s.commands), net_in: mean(|s| s.net_in), net_out: mean(|s| s.net_out) }
    }

    /// Notes memory in use; returns the peak so far, this reading included.
    pub(crate) fn peak(&self, used: usize) -> usize {
        self.peak.fetch_max(used, Ordering::Relaxed).max(used)
    }
}

/// Reads the server's counters every [`EVERY`] until `stop`.
pub(crate) async fn sample_every(sh: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            at = tick.tick() => {
                sh.rates.sample(at, sh.stats.reading());
                sh.rates.peak(super::info::used_memory(&sh));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_the_mean_of_sixteen_samples_and_a_reset_reads_as_no_change() {
        let r = Rates::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        r.sample(at(0), Reading::default());
        // 100 commands and 1 KiB in each way every 100 ms: 1,000/s, 10 KiB/s.
        for i in 1..=8 {
            r.sample(at(i * 100), Reading { commands: i * 100, net_in: i * 1024, net_out: i * 2048 });
        }
        assert_eq!(r.per_sec(), Reading { commands: 500, net_in: 5120, net_out: 10240 }, "half the slots filled");
        for i in 9..=16 {
            r.sample(at(i * 100), Reading { commands: i * 100, net_in: i * 1024, net_out: i * 2048 });
        }
        assert_eq!(r.per_sec(), Reading { commands: 1000, net_in: 10240, net_out: 20480 });
        r.sample(at(1700), Reading::default());
        assert_eq!(r.per_sec().commands, 1000 * 15 / 16, "a reset adds a zero sample, not a huge one");
        assert_eq!(r.peak(10), 10);
        assert_eq!(r.peak(5), 10);
    }
}
