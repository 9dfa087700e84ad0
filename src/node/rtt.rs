//! What a dial assumes of the network before it hears back: the round-trip
//! time last measured to the address, and how long its handshake may take.
//!
//! A QUIC client that gets no answer resends its Initial only at its probe
//! timeouts, three times the initial RTT and doubling after each: with the
//! standard 333 ms (RFC 9002, for a path never measured) at 1 s, then 3 s.
//! A peer dialing across a partition therefore stays silent for seconds
//! after the partition lifts, and the first datagram to cross it is what
//! starts the heal (`links`: a link to a lost peer ends every backoff). So a
//! dial to an address a link has run over starts from that link's final
//! smoothed RTT (as RFC 9002 allows for a path measured before), and gives
//! up after a time that scales with it; the next dial, after a backoff of at
//! most two seconds, probes again from a fresh probe timeout.
//!
//! A path whose round trip has grown past about a second since it was
//! measured (a peer moved behind a congested satellite link, say) would
//! never complete a handshake within one: so every fourth dial in a row
//! that got no answer sets no limit of its own, and only the connection's
//! idle timeout ends it. A small initial RTT does
//! such a path no harm: the extra Initials are a few datagrams, and the
//! handshake completes when the answer comes.
//!
//! A probe (`links`: a dial in the seconds after a link over the address
//! was lost) gets only ten initial RTTs, with no floor and never the long
//! wait: 250 ms on one host or network, its Initials at 0, 75 and 225 ms,
//! and the next probe follows about 50 ms after it gives up. So a lifted
//! partition hears from each side within about 150 ms. A path that has
//! grown slower than that meanwhile connects once the probes are over.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::locks::Mutex;

/// The smallest initial RTT a dial starts from. On one host or one network the
/// measured RTT is well under a millisecond, and a probe timeout of three
/// times that would resend Initials faster than a busy peer can answer; at
/// 25 ms a dial to an unreachable member costs four datagrams.
pub(super) const MIN_INITIAL_RTT: Duration = Duration::from_millis(25);
/// The largest: quinn's default, RFC 9002's for a path never measured.
pub(super) const MAX_INITIAL_RTT: Duration = Duration::from_millis(333);
/// The shortest time a dial waits for its handshake. With a 25 ms initial
/// RTT a silent dial sends its Initial at 0, 75, 225 and 525 ms.
const MIN_HANDSHAKE: Duration = Duration::from_secs(1);
/// How many initial RTTs a handshake may take before the dial gives up:
/// enough for the probes above, and for a peer far away to answer through
/// a lost datagram or two.
const HANDSHAKE_RTTS: u32 = 10;
/// Addresses remembered: far more than a mesh's members. Past it, one entry
/// is forgotten for each new one (its next dial starts from the default).
const CAPACITY: usize = 4096;

/// Every this many dials in a row that timed out, one waits as long as the
/// idle timeout lets it.
const LONG_EVERY: u32 = 4;

/// What is known of an address.
#[derive(Clone, Copy)]
struct Known {
    /// The smoothed RTT of the last connection there.
    rtt: Duration,
    /// Dials since then that got no handshake in time.
    timeouts: u32,
}

/// How a dial goes about its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Plan {
    /// The initial RTT; `None` for quinn's default.
    pub(super) initial_rtt: Option<Duration>,
    /// How long the handshake may take; `None`: until the idle timeout.
    pub(super) timeout: Option<Duration>,
}

/// The RTT last measured to each address a connection ran over.
#[derive(Default)]
pub(super) struct Rtts {
    known: Mutex<HashMap<SocketAddr, Known>>,
}

impl Rtts {
    /// Records the smoothed RTT of a connection to `addr` that came up or
    /// ended.
    pub(super) fn remember(&self, addr: SocketAddr, rtt: Duration) {
        let mut known = self.known.lock();
        if known.len() >= CAPACITY && !known.contains_key(&addr) {
            if let Some(old) = known.keys().next().copied() {
                known.remove(&old);
            }
        }
        known.insert(addr, Known { rtt, timeouts: 0 });
    }

    /// A dial to `addr` got no handshake within its plan's timeout.
    pub(super) fn timed_out(&self, addr: SocketAddr) {
        if let Some(k) = self.known.lock().get_mut(&addr) {
            k.timeouts = k.timeouts.saturating_add(1);
        }
    }

    /// How the next dial to `addr` goes: from the RTT last measured there,
    /// within [`MIN_INITIAL_RTT`]..=[`MAX_INITIAL_RTT`], with a timeout of
    /// ten of those (at least a second), except every [`LONG_EVERY`]th dial
    /// in a row without an answer; from quinn's default, with the timeout
    /// that gives, for an address never measured. A `probe` to a measured
    /// address waits ten of those RTTs, however short.
    pub(super) fn plan(&self, addr: SocketAddr, probe: bool) -> Plan {
        match self.known.lock().get(&addr) {
            None => Plan { initial_rtt: None, timeout: Some(handshake_timeout(None)) },
            Some(k) => {
                let rtt = k.rtt.clamp(MIN_INITIAL_RTT, MAX_INITIAL_RTT);
                if probe {
                    return Plan { initial_rtt: Some(rtt), timeout: Some(rtt * HANDSHAKE_RTTS) };
                }
                let long = k.timeouts % LONG_EVERY == LONG_EVERY - 1;
                Plan { initial_rtt: Some(rtt), timeout: (!long).then(|| handshake_timeout(Some(rtt))) }
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.known.lock().len()
    }
}

/// How long a dial whose initial RTT is `initial_rtt` (`None`: the default)
/// waits for its handshake to complete, as a rule.
fn handshake_timeout(initial_rtt: Option<Duration>) -> Duration {
    (initial_rtt.unwrap_or(MAX_INITIAL_RTT) * HANDSHAKE_RTTS).max(MIN_HANDSHAKE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn plan(initial_rtt: Option<Duration>, timeout: Option<Duration>) -> Plan {
        Plan { initial_rtt, timeout }
    }

    #[test]
    fn a_measured_rtt_is_used_within_bounds_and_an_unknown_address_gets_the_default() {
        let r = Rtts::default();
        assert_eq!(r.plan(addr(1), false), plan(None, Some(Duration::from_millis(3330))));
        r.remember(addr(1), Duration::from_micros(80));
        r.remember(addr(2), Duration::from_millis(40));
        r.remember(addr(3), Duration::from_secs(2));
        assert_eq!(r.plan(addr(1), false), plan(Some(MIN_INITIAL_RTT), Some(Duration::from_secs(1))));
        assert_eq!(r.plan(addr(2), false), plan(Some(Duration::from_millis(40)), Some(Duration::from_secs(1))));
        assert_eq!(r.plan(addr(3), false), plan(Some(MAX_INITIAL_RTT), Some(Duration::from_millis(3330))));
        // The last measurement wins.
        r.remember(addr(2), Duration::from_millis(150));
        assert_eq!(r.plan(addr(2), false), plan(Some(Duration::from_millis(150)), Some(Duration::from_millis(1500))));
    }

    #[test]
    fn every_fourth_dial_in_a_row_without_an_answer_waits_until_the_idle_timeout() {
        let r = Rtts::default();
        r.timed_out(addr(1));
        assert_eq!(
            r.plan(addr(1), false),
            plan(None, Some(Duration::from_millis(3330))),
            "nothing known: nothing kept"
        );
        r.remember(addr(1), Duration::from_micros(80));
        let fast = plan(Some(MIN_INITIAL_RTT), Some(Duration::from_secs(1)));
        let long = plan(Some(MIN_INITIAL_RTT), None);
        let mut plans = Vec::new();
        for _ in 0..8 {
            plans.push(r.plan(addr(1), false));
            r.timed_out(addr(1));
        }
        assert_eq!(plans, vec![fast, fast, fast, long, fast, fast, fast, long]);
        // A connection resets the count.
        r.remember(addr(1), Duration::from_micros(80));
        assert_eq!(r.plan(addr(1), false), fast);
    }

    #[test]
    fn a_probe_waits_ten_initial_rtts_without_a_floor_and_never_long() {
        let r = Rtts::default();
        assert_eq!(r.plan(addr(1), true), plan(None, Some(Duration::from_millis(3330))), "nothing known: the default");
        r.remember(addr(1), Duration::from_micros(80));
        r.remember(addr(2), Duration::from_millis(150));
        let short = plan(Some(MIN_INITIAL_RTT), Some(Duration::from_millis(250)));
        let mut plans = Vec::new();
        for _ in 0..8 {
            plans.push(r.plan(addr(1), true));
            r.timed_out(addr(1));
        }
        assert_eq!(plans, vec![short; 8]);
        assert_eq!(r.plan(addr(2), true), plan(Some(Duration::from_millis(150)), Some(Duration::from_millis(1500))));
    }

    #[test]
    fn the_handshake_timeout_scales_with_the_initial_rtt_and_is_at_least_a_second() {
        assert_eq!(handshake_timeout(Some(MIN_INITIAL_RTT)), Duration::from_secs(1));
        assert_eq!(handshake_timeout(Some(Duration::from_millis(150))), Duration::from_millis(1500));
        assert_eq!(handshake_timeout(None), Duration::from_millis(3330));
    }

    #[test]
    fn addresses_beyond_the_capacity_replace_others() {
        let r = Rtts::default();
        for p in 0..(CAPACITY as u16 + 100) {
            r.remember(addr(p), Duration::from_millis(1));
        }
        assert_eq!(r.len(), CAPACITY);
        // Remembering a known address again forgets nothing.
        r.remember(addr(CAPACITY as u16 + 99), Duration::from_millis(2));
        assert_eq!(r.len(), CAPACITY);
        assert_eq!(r.plan(addr(CAPACITY as u16 + 99), false).initial_rtt, Some(MIN_INITIAL_RTT));
    }
}
