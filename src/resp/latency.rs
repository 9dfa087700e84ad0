//! The latency monitor: events that took at least
//! `latency-monitor-threshold` milliseconds (0, the default, records
//! nothing), kept as Redis keeps them: per kind of event, the worst of
//! each second, for the last 160 seconds that had one, and the worst ever.
//! `LATENCY` reads it; monitoring agents poll `LATENCY LATEST`.
//!
//! The events are commands: `fast-command` for those Redis flags `fast`
//! (`GET`, `INCR`...), `command` for the others. They are timed where the
//! slow log times them, with the same reading (`resp::slowlog`): a fast
//! command or a write behind another in one read, or inside `EXEC`, is
//! not timed, and `EXEC` is one `command` with the time of all it ran.
//! Redis's other events are of forks, disk writes, and the expiry and
//! eviction cycles of its one thread. A peer saves nothing, and expires
//! and evicts one shard at a time under that shard's lock, which stops
//! no other command, so none of them is an event here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::sparkline;
use crate::locks::Mutex;

/// Seconds with an event kept per kind (Redis's `LATENCY_TS_LEN`).
pub(crate) const SERIES_LEN: usize = 160;

/// What the monitor times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    Command,
    FastCommand,
}

impl Event {
    const ALL: [Event; 2] = [Event::Command, Event::FastCommand];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Event::Command => "command",
            Event::FastCommand => "fast-command",
        }
    }

    /// The event `name` names: exactly, as LATENCY HISTORY and GRAPH look
    /// it up, or in any case, as LATENCY RESET does.
    fn named(name: &[u8], any_case: bool) -> Option<Event> {
        Event::ALL.into_iter().find(|e| {
            let n = e.name().as_bytes();
            if any_case {
                n.eq_ignore_ascii_case(name)
            } else {
                n == name
            }
        })
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The worst latency of one second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) unix_secs: u64,
    pub(crate) ms: u64,
}

/// One kind of event: a ring of seconds, and the worst ever. Created with
/// its first sample, so never empty.
#[derive(Debug)]
struct Series {
    samples: [Sample; SERIES_LEN],
    /// Places written, up to `SERIES_LEN`.
    len: usize,
    /// Where the next second goes.
    next: usize,
    max_ms: u64,
}

impl Series {
    fn new() -> Box<Series> {
        Box::new(Series { samples: [Sample::default(); SERIES_LEN], len: 0, next: 0, max_ms: 0 })
    }

    /// Redis's `latencyAddSample`: an event in the second of the last one
    /// raises that second's latency; one in a new second takes the next
    /// place, overwriting the oldest.
    fn add(&mut self, unix_secs: u64, ms: u64) {
        self.max_ms = self.max_ms.max(ms);
        if self.len > 0 {
            let last = &mut self.samples[(self.next + SERIES_LEN - 1) % SERIES_LEN];
            if last.unix_secs == unix_secs {
                last.ms = last.ms.max(ms);
                return;
            }
        }
        self.samples[self.next] = Sample { unix_secs, ms };
        self.next = (self.next + 1) % SERIES_LEN;
        self.len = (self.len + 1).min(SERIES_LEN);
    }

    fn last(&self) -> Sample {
        self.samples[(self.next + SERIES_LEN - 1) % SERIES_LEN]
    }

    fn oldest_first(&self) -> impl Iterator<Item = Sample> + '_ {
        let first = (self.next + SERIES_LEN - self.len) % SERIES_LEN;
        (0..self.len).map(move |j| self.samples[(first + j) % SERIES_LEN])
    }
}

/// What LATENCY LATEST reports of one kind of event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Latest {
    pub(crate) event: Event,
    pub(crate) last: Sample,
    pub(crate) max_ms: u64,
}

/// The monitor and its threshold.
#[derive(Debug, Default)]
pub(crate) struct Monitor {
    threshold_ms: AtomicU64,
    series: Mutex<[Option<Box<Series>>; 2]>,
}

impl Monitor {
    pub(crate) fn threshold_ms(&self) -> u64 {
        self.threshold_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn set_threshold_ms(&self, ms: u64) {
        self.threshold_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether events are to be timed at all.
    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.threshold_ms() > 0
    }

    /// Records `event` that took `took`, if that reaches the threshold;
    /// `unix_secs` reads the time (only for an event recorded). Whole
    /// milliseconds, as Redis counts them.
    pub(crate) fn note(&self, event: Event, took: Duration, unix_secs: impl FnOnce() -> u64) {
        let threshold = self.threshold_ms();
        let ms = took.as_millis().min(u64::MAX as u128) as u64;
        if threshold == 0 || ms < threshold {
            return;
        }
        let now = unix_secs();
        self.series.lock()[event.index()].get_or_insert_with(Series::new).add(now, ms);
    }

    /// Each kind of event recorded since its last reset.
    pub(crate) fn latest(&self) -> Vec<Latest> {
        let series = self.series.lock();
        Event::ALL
            .into_iter()
            .filter_map(|event| {
                let s = series[event.index()].as_ref()?;
                Some(Latest { event, last: s.last(), max_ms: s.max_ms })
            })
            .collect()
    }

    /// The seconds kept for the event `name`, oldest first; none for a name
    /// that is no event, or one not recorded.
    pub(crate) fn history(&self, name: &[u8]) -> Vec<Sample> {
        let Some(event) = Event::named(name, false) else { return Vec::new() };
        self.series.lock()[event.index()].as_ref().map(|s| s.oldest_first().collect()).unwrap_or_default()
    }

    /// Forgets the event `name` (any case), or every event: how many
    /// kinds of event were recorded and are now forgotten.
    pub(crate) fn reset(&self, name: Option<&[u8]>) -> usize {
        let mut series = self.series.lock();
        let mut n = 0;
        for event in Event::ALL {
            if name.is_none_or(|name| Event::named(name, true) == Some(event)) {
                n += usize::from(series[event.index()].take().is_some());
            }
        }
        n
    }

    /// LATENCY GRAPH's text for the event `name`, at `now_secs`: a title
    /// line, a rule, and Redis's sparkline of the seconds kept, each
    /// labelled with how long ago it was. `None` when it has no samples.
    pub(crate) fn graph(&self, name: &[u8], now_secs: u64) -> Option<String> {
        let event = Event::named(name, false)?;
        let series = self.series.lock();
        let s = series[event.index()].as_ref()?;
        let samples: Vec<(u64, String)> = s.oldest_first().map(|x| (x.ms, ago(now_secs, x.unix_secs))).collect();
        let high = samples.iter().map(|x| x.0).max().unwrap_or(0);
        let low = samples.iter().map(|x| x.0).min().unwrap_or(0);
        let mut text = format!("{} - high {high} ms, low {low} ms (all time high {} ms)\n", event.name(), s.max_ms);
        text.push_str(&"-".repeat(sparkline::COLUMNS));
        text.push('\n');
        sparkline::render(&samples, &mut text);
        Some(text)
    }

    /// LATENCY DOCTOR's report: each kind of event's spikes as Redis
    /// summarises them, and what to look at for it on a peer.
    /// `slower_than_us` is the slow log's threshold.
    pub(crate) fn doctor(&self, now_secs: u64, slower_than_us: i64) -> String {
        let threshold = self.threshold_ms();
        let stats: Vec<(Event, Stats)> = {
            let series = self.series.lock();
            Event::ALL
                .into_iter()
                .filter_map(|e| series[e.index()].as_ref().map(|s| (e, Stats::of(s, now_secs))))
                .collect()
        };
        if stats.is_empty() {
            return if threshold == 0 {
                "Latency monitoring is off on this peer. `CONFIG SET latency-monitor-threshold <milliseconds>` \
                 turns it on: each command that runs at least that long is then recorded.\n"
                    .to_string()
            } else {
                format!(
                    "No command has run for {threshold} ms or more (latency-monitor-threshold) since the monitor \
                     was turned on or reset.\n"
                )
            };
        }
        let mut text = String::from("Latency spikes were recorded on this peer:\n\n");
        for (n, (event, st)) in stats.iter().enumerate() {
            text.push_str(&format!(
                "{}. {}: {} latency spikes (average {}ms, mean deviation {}ms, period {:.2} sec). Worst all time \
                 event {}ms.\n",
                n + 1,
                event.name(),
                st.samples,
                st.avg_ms,
                st.mad_ms,
                st.period_secs as f64 / st.samples as f64,
                st.max_ms
            ));
        }
        text.push_str("\nWhat to look at:\n\n");
        for (event, _) in &stats {
            match event {
                Event::Command => {
                    if slower_than_us < 0 {
                        text.push_str(&format!(
                            "- The slow log is off, so the commands these spikes count are not named: \
                             `CONFIG SET slowlog-log-slower-than {}` keeps every command that runs as long.\n",
                            threshold.saturating_mul(1000)
                        ));
                    } else if slower_than_us as u64 / 1000 > threshold {
                        text.push_str(&format!(
                            "- The slow log keeps commands of {slower_than_us} us or more, longer than this \
                             monitor's {threshold} ms: `CONFIG SET slowlog-log-slower-than {}` names every \
                             command these spikes count.\n",
                            threshold.saturating_mul(1000)
                        ));
                    }
                    text.push_str(
                        "- `SLOWLOG GET` names the slow commands. KEYS, SCAN with a large COUNT, LCS, and \
                         reads or writes of large values take time in proportion to what they touch; such a \
                         command delays the replies behind it on its connection, and writers to the shards it \
                         reads. SCAN with a small COUNT, and values cut into several keys, keep each command \
                         short.\n",
                    );
                }
                Event::FastCommand => text.push_str(
                    "- A command that takes constant time ran long. Usually the peer waited for a CPU: other \
                     processes on the host, or more busy threads than cores (`--threads` sets the peer's). A \
                     large value copied in or out also takes time in proportion to its size.\n",
                ),
            }
        }
        text
    }
}

/// "12s", "5m", "3h" or "2d": how long ago `then` was, as Redis labels
/// the graph's samples.
fn ago(now_secs: u64, then: u64) -> String {
    let elapsed = now_secs.saturating_sub(then);
    match elapsed {
        0..60 => format!("{elapsed}s"),
        60..3600 => format!("{}m", elapsed / 60),
        3600..86_400 => format!("{}h", elapsed / 3600),
        _ => format!("{}d", elapsed / 86_400),
    }
}

/// Redis's `analyzeLatencyForEvent`, for the report.
struct Stats {
    samples: u64,
    avg_ms: u64,
    /// The mean absolute deviation from the average.
    mad_ms: u64,
    /// From the oldest second kept until now (at least 1).
    period_secs: u64,
    max_ms: u64,
}

impl Stats {
    fn of(s: &Series, now_secs: u64) -> Stats {
        let kept: Vec<Sample> = s.oldest_first().collect();
        let samples = kept.len() as u64;
        let avg_ms = kept.iter().map(|x| x.ms).sum::<u64>() / samples.max(1);
        let mad_ms = kept.iter().map(|x| x.ms.abs_diff(avg_ms)).sum::<u64>() / samples.max(1);
        let oldest = kept.iter().map(|x| x.unix_secs).min().unwrap_or(now_secs);
        let period_secs = now_secs.saturating_sub(oldest).max(1);
        Stats { samples, avg_ms, mad_ms, period_secs, max_ms: s.max_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_micros(n * 1000 + 999)
    }

    #[test]
    fn nothing_is_recorded_at_threshold_zero_or_below_it() {
        let m = Monitor::default();
        m.note(Event::Command, ms(500), || panic!("no time is read for an event not recorded"));
        m.set_threshold_ms(10);
        m.note(Event::Command, ms(9), || panic!("no time is read for an event not recorded"));
        assert!(m.latest().is_empty());
        m.note(Event::Command, ms(10), || T0);
        assert_eq!(
            m.latest(),
            vec![Latest { event: Event::Command, last: Sample { unix_secs: T0, ms: 10 }, max_ms: 10 }]
        );
    }

    #[test]
    fn one_sample_a_second_keeps_the_worst_and_the_oldest_seconds_go_first() {
        let m = Monitor::default();
        m.set_threshold_ms(1);
        m.note(Event::FastCommand, ms(5), || T0);
        m.note(Event::FastCommand, ms(3), || T0);
        m.note(Event::FastCommand, ms(8), || T0);
        m.note(Event::FastCommand, ms(2), || T0 + 1);
        assert_eq!(
            m.history(b"fast-command"),
            vec![Sample { unix_secs: T0, ms: 8 }, Sample { unix_secs: T0 + 1, ms: 2 }]
        );
        assert_eq!(m.latest()[0].last, Sample { unix_secs: T0 + 1, ms: 2 });
        // Past 160 seconds the oldest is overwritten; the worst ever stays.
        for i in 2..(SERIES_LEN as u64 + 2) {
            m.note(Event::FastCommand, ms(1), || T0 + i);
        }
        let h = m.history(b"fast-command");
        assert_eq!(h.len(), SERIES_LEN);
        assert_eq!(h[0], Sample { unix_secs: T0 + 2, ms: 1 });
        assert_eq!(h[SERIES_LEN - 1], Sample { unix_secs: T0 + SERIES_LEN as u64 + 1, ms: 1 });
        assert_eq!(m.latest()[0].max_ms, 8);
        // The other kind is apart, and names are exact.
        assert!(m.history(b"command").is_empty());
        assert!(m.history(b"FAST-COMMAND").is_empty());
    }

    #[test]
    fn a_clock_at_zero_is_a_second_like_any_other() {
        let m = Monitor::default();
        m.set_threshold_ms(1);
        m.note(Event::Command, ms(3), || 0);
        m.note(Event::Command, ms(4), || 1);
        assert_eq!(m.history(b"command"), vec![Sample { unix_secs: 0, ms: 3 }, Sample { unix_secs: 1, ms: 4 }]);
    }

    #[test]
    fn reset_forgets_what_it_names_in_any_case() {
        let m = Monitor::default();
        m.set_threshold_ms(1);
        m.note(Event::Command, ms(4), || T0);
        m.note(Event::FastCommand, ms(4), || T0);
        assert_eq!(m.reset(Some(b"nosuch")), 0);
        assert_eq!(m.reset(Some(b"COMMAND")), 1);
        assert_eq!(m.reset(Some(b"command")), 0);
        assert_eq!(m.latest().len(), 1);
        assert_eq!(m.reset(None), 1);
        assert!(m.latest().is_empty());
    }

    #[test]
    fn the_graph_is_redis_sparkline_of_the_seconds_kept() {
        let m = Monitor::default();
        m.set_threshold_ms(1);
        assert_eq!(m.graph(b"command", T0), None);
        for (i, v) in [10, 20, 30, 40].into_iter().enumerate() {
            m.note(Event::Command, ms(v), || T0 + i as u64);
        }
        let g = m.graph(b"command", T0 + 3).unwrap();
        let want = [
            "command - high 40 ms, low 10 ms (all time high 40 ms)",
            &"-".repeat(80),
            "   #",
            "  #|",
            " o||",
            "_|||",
            "    ",
            "3210",
            "ssss",
            "",
        ]
        .join("\n");
        assert_eq!(g, want);
    }

    #[test]
    fn the_doctor_summarises_each_event_as_redis_does() {
        let m = Monitor::default();
        assert!(m.doctor(T0, 10_000).starts_with("Latency monitoring is off"));
        m.set_threshold_ms(5);
        assert!(m.doctor(T0, 10_000).starts_with("No command has run for 5 ms"));
        m.note(Event::Command, ms(6), || T0);
        m.note(Event::Command, ms(12), || T0 + 2);
        let report = m.doctor(T0 + 4, 10_000);
        assert!(
            report.contains(
                "1. command: 2 latency spikes (average 9ms, mean deviation 3ms, period 2.00 sec). Worst all time \
                 event 12ms."
            ),
            "{report}"
        );
        assert!(report.contains("`CONFIG SET slowlog-log-slower-than 5000`"), "{report}");
        assert!(!m.doctor(T0 + 4, 5_000).contains("CONFIG SET slowlog"));
    }
}
