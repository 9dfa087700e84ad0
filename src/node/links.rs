//! The shell's connection-level protocol: a deterministic state machine in
//! the quinn-proto style, like [`crate::sync::Session`].
//!
//! [`Links`] decides which connection to a peer is its link, when a
//! duplicate is retired and closed, when anti-entropy rounds start and when
//! a responder may run, and when to dial. The shell feeds it events
//! (`handle_*`), executes what [`Links::poll_action`] returns, and calls
//! [`Links::handle_timeout`] at [`Links::poll_timeout`]. It never touches a
//! socket, a clock or a global RNG: time is passed in, and its randomness
//! (round jitter, choice of peer, backoff jitter) comes from a generator
//! seeded at construction, so that a seed and a sequence of events replay
//! exactly.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::config::Seed;
use crate::hlc::SkewError;
use crate::membership::{Incarnation, Learned, MemberId};
use crate::wire::{Hello, Refusal, VersionRange, PROTOCOL_VERSIONS};

/// A connection, as the shell names it (quinn's `stable_id`): the machine
/// holds no transport types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ConnId(pub(crate) usize);

/// An anti-entropy session, numbered by the machine in the order it
/// learned of them (which is also the order waiting responders are served).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SessionId(pub(crate) u64);

/// Timings of the connection-level protocol.
#[derive(Clone, Debug)]
pub(crate) struct Timings {
    /// Mean anti-entropy period, jittered by ±20%.
    pub(crate) anti_entropy_interval: Duration,
    /// The shortest time a retired connection stays open: long enough for
    /// a round the other side asks for right after connecting to be seen.
    pub(crate) retire_linger: Duration,
    /// The longest a responder waits for the slot, and a retired
    /// connection for its sessions: a safety net only (waits cannot form
    /// a cycle, see [`Links::handle_session_offered`]).
    pub(crate) wait_max: Duration,
    /// Redial backoff bounds, doubling from `backoff_min`, each delay
    /// jittered by ±25% so that a mesh restarting at once does not dial in
    /// lockstep. The most is two seconds: across a partition nothing but
    /// these dials can find that it lifted (`rtt`: each sends its Initial
    /// four times in its first 525 ms), and a dial costs a few datagrams.
    pub(crate) backoff_min: Duration,
    /// See `backoff_min`.
    pub(crate) backoff_max: Duration,
    /// How long after a link is lost its address is probed: dialed again
    /// `probe_gap` (±25%) after each failed dial rather than after the
    /// doubling backoff, each dial a [`Action::Probe`]. Most partitions
    /// and restarts are over within seconds, and until a datagram crosses
    /// nothing else can tell that one is over: with dials that back off, a
    /// lifted partition waited up to a few hundred milliseconds for the
    /// next Initial. Ten seconds of probes cost about 120 KB per lost
    /// address; a peer gone for longer is dialed with backoff.
    pub(crate) probe_for: Duration,
    /// See `probe_for`.
    pub(crate) probe_gap: Duration,
    /// How long after a peer declined a round (its own round waited for
    /// an accept) the round is asked for again: doubling with each decline
    /// in a row by that peer up to eight times this, and each delay
    /// jittered to between half and one and a half times, so that peers
    /// declined at once do not retry at once.
    pub(crate) busy_retry: Duration,
}

impl Timings {
    /// The shell's timings for a given anti-entropy period.
    pub(crate) fn new(anti_entropy_interval: Duration) -> Self {
        Timings {
            anti_entropy_interval,
            retire_linger: Duration::from_millis(500),
            wait_max: Duration::from_secs(30),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
            probe_for: Duration::from_secs(10),
            probe_gap: Duration::from_millis(50),
            busy_retry: Duration::from_millis(50),
        }
    }
}

/// What the machine asks of the core while it checks a hello: the clock
/// and the membership live in the replica, which sessions and pushes also
/// update.
pub(crate) trait Core {
    /// Checks a peer's physical clock reading against ours.
    fn check_skew(&mut self, physical_ms: u64) -> Result<(), SkewError>;
    /// Learns a peer that passed every other check.
    fn learn_peer(&mut self, id: &MemberId) -> Result<Learned, Refusal>;
    /// A peer says `current` runs our name: whether we are superseded.
    fn learn_own_successor(&mut self, current: Incarnation) -> bool;
    /// Whether bootstrap is complete.
    fn booted(&self) -> bool;
}

/// Which side of a connection this peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// This peer dialed `addr`.
    Dialer(SocketAddr),
    /// The peer dialed us.
    Acceptor,
}

/// The answer to a hello. It is returned rather than queued as an action:
/// the hello's stream belongs to the task that read it, which answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Authenticated, at the protocol `version` both ends speak: the
    /// acceptor answers with its own hello, and the connection's fate
    /// (link, retire, close) follows as actions.
    Accept {
        /// The link's protocol version.
        version: u16,
    },
    /// A connection to ourselves: close it.
    ToSelf,
    /// Refused: the acceptor answers with the refusal, then closes.
    Refuse(Refusal),
}

/// Why the machine closes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Close {
    /// It lost to another connection with the same peer.
    Duplicate,
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Dial `addr` and run the hello; report with
    /// [`Links::handle_dial_result`].
    Dial(SocketAddr),
    /// Dial `addr`, a link lost moments ago, as a probe: the handshake is
    /// given only a few round trips of the path last measured there
    /// (`rtt`), since the next probe follows soon; report with
    /// [`Links::handle_dial_result`].
    Probe(SocketAddr),
    /// The dial of `addr` under way is restarted, its handshake afresh:
    /// the network carries again, and its Initials went into the cut. Its
    /// result is still reported once.
    Restart(SocketAddr),
    /// Look up the addresses of seed name `name` (its index among the
    /// named seeds) at `port`; report with [`Links::handle_resolved`].
    Resolve { name: usize, host: String, port: u16 },
    /// `conn` is now the link to `peer`: pushes go over it and its streams
    /// are served; a previous link's queued pushes are dropped.
    Link { peer: MemberId, conn: ConnId },
    /// `conn` lost to a duplicate before it was linked: serve its streams
    /// (a round may already run over it) until it is closed.
    Serve { peer: MemberId, conn: ConnId },
    /// Close `conn`.
    Close { conn: ConnId, why: Close },
    /// Start an anti-entropy round as initiator over `conn`; report with
    /// [`Links::handle_session_accepted`], then
    /// [`Links::handle_session_finished`] or, if the peer answered `Busy`,
    /// [`Links::handle_session_declined`].
    StartSession { session: SessionId, peer: String, conn: ConnId },
    /// The responder `session` may run now.
    Respond { session: SessionId },
    /// The responder `session` answers `Busy` and ends: this peer's own
    /// round waits for its peer's accept. (Between sides in sync it
    /// completes the round instead: `Session::decline`.) Report its end with
    /// [`Links::handle_session_finished`].
    Decline { session: SessionId },
    /// A newer incarnation of this peer's name runs in the mesh: stop.
    Stop,
}

#[derive(Clone, Debug)]
struct Conn {
    peer: MemberId,
    dialed_by_me: bool,
    /// The address it was reached at (dialer) or advertises (acceptor).
    addr: Option<SocketAddr>,
    /// When it lost to a duplicate.
    retired: Option<Instant>,
    /// The protocol version both ends speak: what may be sent over it.
    version: u16,
}

#[derive(Clone, Debug)]
struct SessionState {
    peer: String,
    conn: ConnId,
    /// This peer's own round (not a responder).
    own: bool,
    /// This peer's own round, not yet accepted by its peer.
    awaiting_accept: bool,
    /// A responder told to answer `Busy`.
    declined: bool,
    /// A responder waiting for the slot, and until when it waits.
    waiting: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
struct Backoff {
    until: Instant,
    delay: Duration,
}

/// A seed given by DNS name. It is looked up again whenever the machine
/// would dial it (none of its addresses is linked), at most once per
/// backoff, so that a name whose records change (pods replaced behind a
/// headless Service) is followed, and one that does not resolve costs a
/// lookup per backoff, not a loop.
#[derive(Clone, Debug)]
struct NamedSeed {
    host: String,
    port: u16,
    /// What the last successful lookup returned (kept through failed
    /// ones: a DNS outage does not make known seeds unknown).
    addrs: Vec<SocketAddr>,
    resolving: bool,
    backoff: Option<Backoff>,
    /// The last lookup failed.
    failing: bool,
}

/// The connection-level protocol of one peer. See the module docs.
pub(crate) struct Links {
    me: MemberId,
    /// The protocol versions this peer speaks.
    versions: VersionRange,
    timings: Timings,
    rng: SmallRng,
    /// Authenticated connections, linked or retired, until closed.
    conns: BTreeMap<ConnId, Conn>,
    /// Each peer's link.
    links: BTreeMap<String, ConnId>,
    sessions: BTreeMap<SessionId, SessionState>,
    next_session: u64,
    /// One anti-entropy session at a time on this peer, either role: after
    /// a heal, two peers that hold the same data would otherwise both ship
    /// it here at once. The one exception is the crossed pair (see
    /// [`Links::handle_session_offered`]): the larger name answers the
    /// smaller name's round while its own round, which the smaller name
    /// declines, holds the slot, and the responder takes the slot over
    /// once that round is declined.
    slot: Option<SessionId>,
    /// Peers whose requested round waits for the sessions in flight; a set,
    /// so that a round asked for twice meanwhile runs once.
    deferred: BTreeSet<String>,
    /// Rounds asked for at a later time: a new connection's, at the next
    /// deadline, and a declined one's, once its peer may be free.
    later: Vec<(Instant, String)>,
    /// Rounds each peer declined in a row (reset when it accepts one).
    declines: BTreeMap<String, u32>,
    next_round: Instant,
    /// Where this peer itself is reached: never dialed.
    own_addrs: Vec<SocketAddr>,
    /// Seeds given by address.
    seeds: Vec<SocketAddr>,
    /// Seeds given by name.
    names: Vec<NamedSeed>,
    /// Active members other than this peer, with their addresses.
    members: Vec<(String, SocketAddr)>,
    dialing: BTreeSet<SocketAddr>,
    backoff: BTreeMap<SocketAddr, Backoff>,
    /// When the link over each address was lost, while it is probed
    /// ([`Timings::probe_for`]).
    lost: BTreeMap<SocketAddr, Instant>,
    stopped: bool,
    actions: VecDeque<Action>,
}

impl Links {
    /// A machine for peer `me`, reached at `own_addrs`, joining through
    /// `seeds`. Every random choice it makes derives from `seed`.
    pub(crate) fn new(
        me: MemberId,
        timings: Timings,
        own_addrs: Vec<SocketAddr>,
        seeds: Vec<Seed>,
        seed: u64,
        now: Instant,
    ) -> Self {
        let mut names = Vec::new();
        let mut addrs = Vec::new();
        for s in seeds {
            match s {
                Seed::Addr(a) => addrs.push(a),
                Seed::Name { host, port } => names.push(NamedSeed {
                    host,
                    port,
                    addrs: Vec::new(),
                    resolving: false,
                    backoff: None,
                    failing: false,
                }),
            }
        }
        let mut rng = SmallRng::seed_from_u64(seed);
        let next_round = now + jittered_period(&mut rng, timings.anti_entropy_interval);
        let mut links = Links {
            me,
            versions: PROTOCOL_VERSIONS,
            timings,
            rng,
            conns: BTreeMap::new(),
            links: BTreeMap::new(),
            sessions: BTreeMap::new(),
            next_session: 0,
            slot: None,
            deferred: BTreeSet::new(),
            later: Vec::new(),
            declines: BTreeMap::new(),
            next_round,
            own_addrs,
            seeds: addrs,
            names,
            members: Vec::new(),
            dialing: BTreeSet::new(),
            backoff: BTreeMap::new(),
            lost: BTreeMap::new(),
            stopped: false,
            actions: VecDeque::new(),
        };
        links.dial_targets(now);
        links
    }

    /// Speaks only `versions` (a subrange of what this build speaks), as a
    /// peer of an older build would.
    pub(crate) fn set_versions(&mut self, versions: VersionRange) {
        self.versions = versions;
    }

    /// The protocol version of an authenticated connection, linked or
    /// retired.
    pub(crate) fn version(&self, conn: ConnId) -> Option<u16> {
        self.conns.get(&conn).map(|c| c.version)
    }

    /// The next thing the shell must do.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Links::handle_timeout`] must be called next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        let mut t = vec![self.next_round];
        t.extend(self.later.iter().map(|(at, _)| *at));
        t.extend(self.sessions.values().filter_map(|s| s.waiting));
        for (id, c) in &self.conns {
            if let Some(since) = c.retired {
                t.push(since + self.timings.wait_max);
                if self.sessions_on(*id) == 0 {
                    t.push(since + self.timings.retire_linger);
                }
            }
        }
        // A backoff matters only for an address that would be dialed, and
        // not while it is being dialed (its end has passed then).
        let targets = self.targets();
        t.extend(
            self.backoff.iter().filter(|(a, _)| targets.contains(a) && !self.dialing.contains(a)).map(|(_, b)| b.until),
        );
        let linked = self.linked_addrs();
        t.extend(
            self.names
                .iter()
                .filter(|n| !n.resolving && !n.addrs.iter().any(|a| linked.contains(a)))
                .filter_map(|n| n.backoff.map(|b| b.until)),
        );
        t.into_iter().min()
    }

    /// Whether this incarnation learned it was superseded.
    #[cfg(test)]
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Whether `peer` has a link now.
    #[cfg(test)]
    pub(crate) fn link(&self, peer: &str) -> Option<ConnId> {
        self.links.get(peer).copied()
    }

    /// Deadlines passed: rounds due, waits run out, retired connections
    /// idle, backoffs over.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.later).into_iter().partition(|(at, _)| *at <= now);
        self.later = later;
        for (_, peer) in due {
            self.request_round(now, &peer);
        }
        if now >= self.next_round {
            self.next_round = now + jittered_period(&mut self.rng, self.timings.anti_entropy_interval);
            let names: Vec<String> = self.links.keys().cloned().collect();
            if let Some(peer) = names.choose(&mut self.rng).cloned() {
                self.try_start(&peer, false);
            }
        }
        self.settle(now);
        self.dial_targets(now);
    }

    /// Checks a peer's hello on `conn`, in order: versions, a connection to
    /// ourselves, clock offset, certificate name, membership. `versions` is
    /// the range the peer sent after its hello, if it sent one (a peer of
    /// an earlier build speaks only the hello's `version`). An accepted
    /// connection becomes the peer's link, at the highest version both
    /// speak, or is retired as a duplicate.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn handle_hello(
        &mut self,
        now: Instant,
        conn: ConnId,
        side: Side,
        hello: &Hello,
        versions: Option<VersionRange>,
        certificate: Option<&str>,
        core: &mut impl Core,
    ) -> Verdict {
        let theirs = versions.unwrap_or(VersionRange::single(hello.version));
        let Some(version) = self.versions.negotiate(&theirs) else {
            // Each side is told in terms it can decode.
            return Verdict::Refuse(match versions {
                Some(theirs) => Refusal::Versions { ours: self.versions, theirs },
                None => Refusal::Version { ours: self.versions.hello_version() },
            });
        };
        if hello.from == self.me {
            return Verdict::ToSelf;
        }
        if let Err(e) = core.check_skew(hello.physical_ms) {
            tracing::error!(peer = %hello.from, offset_ms = e.offset_ms, max_offset_ms = e.max_offset_ms,
                "refusing peer: clock offset exceeds max_offset; no data exchanged");
            return Verdict::Refuse(Refusal::Skew { offset_ms: e.offset_ms, max_offset_ms: e.max_offset_ms });
        }
        if certificate != Some(hello.from.name.as_str()) {
            tracing::error!(peer = %hello.from, cert = ?certificate, "refusing peer: hello name differs from its certificate");
            return Verdict::Refuse(Refusal::Name { certificate: certificate.map(str::to_owned) });
        }
        match core.learn_peer(&hello.from) {
            Ok(Learned::SelfSuperseded) => {
                tracing::error!(peer = %hello.from, "a newer incarnation of this peer's name is running");
                self.stop();
                return Verdict::Refuse(Refusal::Stopping);
            }
            Ok(_) => {}
            Err(r) => return Verdict::Refuse(r),
        }
        if self.stopped {
            return Verdict::Refuse(Refusal::Stopping);
        }
        let (dialed_by_me, addr) = match side {
            Side::Dialer(a) => (true, Some(a)),
            Side::Acceptor => (false, hello.listen),
        };
        self.register(now, conn, hello.from.clone(), dialed_by_me, addr, version, core.booted());
        Verdict::Accept { version }
    }

    /// The peer we dialed refused our hello. A peer that knows a newer
    /// incarnation of our name says which: we then stop.
    pub(crate) fn handle_refused(&mut self, refusal: &Refusal, core: &mut impl Core) {
        if let Refusal::Superseded { current: Some(c) } = refusal {
            if core.learn_own_successor(*c) {
                tracing::error!(current = ?c, "a newer incarnation of this peer's name runs in the mesh");
                self.stop();
            }
        }
    }

    /// The core learned (elsewhere) that this incarnation is superseded.
    pub(crate) fn handle_superseded(&mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if !self.stopped {
            self.stopped = true;
            self.actions.push_back(Action::Stop);
        }
    }

    /// Both sides dialing at once yields two connections; both keep the
    /// one dialed by the smaller name, so they agree without talking.
    #[allow(clippy::too_many_arguments)]
    fn register(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: MemberId,
        dialed_by_me: bool,
        addr: Option<SocketAddr>,
        version: u16,
        booted: bool,
    ) {
        let name = id.name.clone();
        self.conns.insert(conn, Conn { peer: id.clone(), dialed_by_me, addr, retired: None, version });
        let was_lost = !self.links.contains_key(&name);
        if let Some(cur_id) = self.links.get(&name).copied() {
            let cur = self.conns[&cur_id].clone();
            let keep_new = if cur.peer.incarnation != id.incarnation {
                cur.peer.incarnation < id.incarnation
            } else if cur.dialed_by_me == dialed_by_me {
                // A redial from the same side: the old link is dead or dying.
                true
            } else {
                dialed_by_me == (self.me.name < name)
            };
            // The losing connection of a crossed pair may already carry a
            // round that the other side started on it before it saw the
            // winner: it is retired, not cut, and closes once its rounds
            // are over.
            let crossed = cur.peer == id && cur.dialed_by_me != dialed_by_me;
            if !keep_new {
                if crossed {
                    self.retire(now, conn);
                    self.actions.push_back(Action::Serve { peer: id, conn });
                } else {
                    self.close(conn);
                }
                return;
            }
            if cur.peer != id {
                tracing::info!(peer = %id, old = %cur.peer, "peer restarted as a new incarnation");
            }
            if crossed {
                self.retire(now, cur_id);
            } else {
                self.close(cur_id);
            }
        }
        self.links.insert(name.clone(), conn);
        if let Some(a) = addr {
            self.lost.remove(&a);
        }
        self.actions.push_back(Action::Link { peer: id, conn });
        // Repair whatever was missed while apart: after a heal this round
        // is the repair, so it is asked for at the next deadline, which is
        // now. One side is enough: the dialer. When both sides dialed, each
        // starts a round on its own connection and the smaller name's runs
        // (see `handle_session_offered`); a round on the connection that
        // loses runs to its end before that connection closes. A joining
        // peer asks at once: its writes wait for that round.
        if dialed_by_me {
            if booted {
                self.later.push((now, name));
            } else {
                self.request_round(now, &name);
            }
        }
        if was_lost {
            self.end_backoffs(now);
        }
        self.dial_targets(now);
    }

    /// A link to a peer this one had none with is news that the network
    /// carries again (a partition lifting, a peer back from a restart), so
    /// every address and name waiting out a redial backoff is tried at
    /// once rather than up to `backoff_max` later. Each keeps its delay: one
    /// that fails again backs off from where it was. A dial under way to an
    /// address still unlinked sent its Initials into the cut, and once past
    /// them waits in silence for its handshake timeout: it is restarted.
    fn end_backoffs(&mut self, now: Instant) {
        let linked = self.linked_addrs();
        for &addr in self.dialing.iter().filter(|a| !linked.contains(a)) {
            self.actions.push_back(Action::Restart(addr));
        }
        for b in self.backoff.values_mut().chain(self.names.iter_mut().filter_map(|n| n.backoff.as_mut())) {
            b.until = b.until.min(now);
        }
    }

    fn retire(&mut self, now: Instant, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            tracing::debug!(peer = %c.peer, ?conn, "retiring a duplicate connection");
            c.retired.get_or_insert(now);
        }
    }

    fn close(&mut self, conn: ConnId) {
        if self.conns.remove(&conn).is_some() {
            self.unlink(conn);
            self.actions.push_back(Action::Close { conn, why: Close::Duplicate });
        }
    }

    fn unlink(&mut self, conn: ConnId) -> bool {
        let name = self.links.iter().find(|(_, c)| **c == conn).map(|(n, _)| n.clone());
        match name {
            Some(n) => {
                self.links.remove(&n);
                self.declines.remove(&n);
                true
            }
            None => false,
        }
    }

    /// `conn` closed (either side, for any reason).
    pub(crate) fn handle_conn_closed(&mut self, now: Instant, conn: ConnId) {
        let addr = self.conns.remove(&conn).and_then(|c| c.addr);
        if self.unlink(conn) {
            if let Some(a) = addr {
                self.lost.insert(a, now);
            }
            // Redial at once (within backoff): the link may be gone only
            // on this side.
            self.dial_targets(now);
        }
    }

    /// Whether `addr` is probed: a link over it was lost less than
    /// [`Timings::probe_for`] ago.
    fn probing(&self, now: Instant, addr: SocketAddr) -> bool {
        self.lost.get(&addr).is_some_and(|at| now < *at + self.timings.probe_for)
    }

    /// Dials under way: their handshake or hello not yet done. A dial
    /// that crosses one the peer made to this one ends in a link too, the
    /// other side's or its own, so links settle only when none is left.
    pub(crate) fn dials_under_way(&self) -> usize {
        self.dialing.len()
    }

    /// A dial finished: with a link (`ok`) or not.
    pub(crate) fn handle_dial_result(&mut self, now: Instant, addr: SocketAddr, ok: bool) {
        self.dialing.remove(&addr);
        if ok {
            self.backoff.remove(&addr);
            self.lost.remove(&addr);
            for n in self.names.iter_mut().filter(|n| n.addrs.contains(&addr)) {
                n.backoff = None;
            }
        } else {
            // A probe's backoff keeps no delay: the first failure after
            // the probes backs off from `backoff_min`.
            let (wait, delay) = if self.probing(now, addr) {
                (self.timings.probe_gap, Duration::ZERO)
            } else {
                let delay = self
                    .backoff
                    .get(&addr)
                    .filter(|b| !b.delay.is_zero())
                    .map_or(self.timings.backoff_min, |b| (b.delay * 2).min(self.timings.backoff_max));
                (delay, delay)
            };
            let jittered = wait.mul_f64(self.rng.random_range(0.75..1.25));
            self.backoff.insert(addr, Backoff { until: now + jittered, delay });
        }
        self.dial_targets(now);
    }

    /// The active members other than this peer that have an address, as
    /// the membership now stands: each one without a link is dialed.
    pub(crate) fn handle_members(&mut self, now: Instant, members: Vec<(String, SocketAddr)>) {
        self.members = members;
        self.dial_targets(now);
    }

    /// A lookup of named seed `name` (the index of [`Action::Resolve`])
    /// ended: with its addresses, or failed (`None`, or no address). The
    /// addresses it returns are seeds from now on; after a failure the
    /// last ones found stay, and the lookup is tried again after a backoff.
    /// Returns whether this failure is the first since a lookup that
    /// worked (or the first lookup), for the shell to log once rather than
    /// at every retry.
    pub(crate) fn handle_resolved(&mut self, now: Instant, name: usize, addrs: Option<Vec<SocketAddr>>) -> bool {
        let Some(n) = self.names.get_mut(name) else { return false };
        n.resolving = false;
        let delay = n.backoff.map_or(self.timings.backoff_min, |b| (b.delay * 2).min(self.timings.backoff_max));
        let jittered = delay.mul_f64(self.rng.random_range(0.75..1.25));
        n.backoff = Some(Backoff { until: now + jittered, delay });
        let was_failing = n.failing;
        let failed = match addrs {
            Some(mut a) if !a.is_empty() => {
                a.sort();
                a.dedup();
                n.addrs = a;
                false
            }
            _ => true,
        };
        n.failing = failed;
        self.dial_targets(now);
        failed && !was_failing
    }

    /// The addresses of this peer's links (as dialed, or as advertised by
    /// a peer that dialed in).
    fn linked_addrs(&self) -> BTreeSet<SocketAddr> {
        self.links.values().filter_map(|c| self.conns.get(c).and_then(|c| c.addr)).collect()
    }

    /// Seeds and members without a link, not counting ourselves.
    fn targets(&self) -> BTreeSet<SocketAddr> {
        let linked_addrs = self.linked_addrs();
        let members = self.members.iter().filter(|(n, _)| !self.links.contains_key(n)).map(|(_, a)| *a);
        self.seeds
            .iter()
            .chain(self.names.iter().flat_map(|n| &n.addrs))
            .copied()
            .chain(members)
            .filter(|a| !self.own_addrs.contains(a) && !linked_addrs.contains(a))
            .collect()
    }

    fn dial_targets(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        // A named seed none of whose addresses is linked is looked up
        // again (its records may have changed), once its backoff is over.
        let linked = self.linked_addrs();
        for (i, n) in self.names.iter_mut().enumerate() {
            if n.resolving || n.backoff.is_some_and(|b| now < b.until) || n.addrs.iter().any(|a| linked.contains(a)) {
                continue;
            }
            n.resolving = true;
            self.actions.push_back(Action::Resolve { name: i, host: n.host.clone(), port: n.port });
        }
        let probe_for = self.timings.probe_for;
        self.lost.retain(|_, at| now < *at + probe_for);
        for addr in self.targets() {
            if self.dialing.contains(&addr) || self.backoff.get(&addr).is_some_and(|b| now < b.until) {
                continue;
            }
            self.dialing.insert(addr);
            self.actions.push_back(if self.probing(now, addr) { Action::Probe(addr) } else { Action::Dial(addr) });
        }
    }

    /// Asks for a round with `peer` (after a connect, after its push queue
    /// overflowed): it starts now, or once no session runs here.
    pub(crate) fn request_round(&mut self, _now: Instant, peer: &str) {
        self.try_start(peer, true);
    }

    /// `peer`'s push queue overflowed: anti-entropy repairs what it lost.
    pub(crate) fn handle_queue_overflow(&mut self, now: Instant, peer: &str) {
        self.request_round(now, peer);
    }

    fn sessions_with(&self, peer: &str) -> usize {
        self.sessions.values().filter(|s| s.peer == peer).count()
    }

    fn sessions_on(&self, conn: ConnId) -> usize {
        self.sessions.values().filter(|s| s.conn == conn).count()
    }

    /// Whether this peer runs its own round with `peer`, accepted or not.
    fn own_round_with(&self, peer: &str) -> bool {
        self.sessions.values().any(|s| s.own && s.peer == peer)
    }

    /// Whether the slot is held by this peer's own round that its peer has
    /// not accepted yet.
    fn slot_awaits_accept(&self) -> bool {
        self.slot.is_some_and(|id| self.sessions.get(&id).is_some_and(|s| s.awaiting_accept))
    }

    fn new_session(&mut self, peer: &str, conn: ConnId, waiting: Option<Instant>, own: bool) -> SessionId {
        let id = SessionId(self.next_session);
        self.next_session += 1;
        self.sessions.insert(
            id,
            SessionState { peer: peer.to_owned(), conn, own, awaiting_accept: own, declined: false, waiting },
        );
        id
    }

    /// A round starts only when no session runs here, nor with the target
    /// (which may be answering someone else without this peer's slot). One
    /// that was asked for runs once none does.
    fn try_start(&mut self, peer: &str, requested: bool) {
        if self.stopped {
            return;
        }
        let Some(conn) = self.links.get(peer).copied() else { return };
        if self.slot.is_some() || self.sessions_with(peer) > 0 {
            if requested {
                self.deferred.insert(peer.to_owned());
            }
            return;
        }
        let session = self.new_session(peer, conn, None, true);
        self.slot = Some(session);
        self.actions.push_back(Action::StartSession { session, peer: peer.to_owned(), conn });
    }

    /// The peer accepted our round `session`: it runs now, and rounds
    /// offered meanwhile wait for it to end.
    pub(crate) fn handle_session_accepted(&mut self, session: SessionId) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.awaiting_accept = false;
            self.declines.remove(&s.peer);
        }
    }

    /// `peer` opened a round with us on `conn`. The responder runs, or is
    /// declined, when [`Action::Respond`] or [`Action::Decline`] says so.
    ///
    /// A responder waits for the slot while another session holds it and
    /// runs; waiting cannot form a cycle, because a running session waits
    /// for nothing here. One offered while this peer's own round waits
    /// for its peer's accept is declined instead: waiting then could form a
    /// cycle (peers that start rounds with each other in a ring), and
    /// running at once with the own round, once accepted, would have both
    /// peers ship the same difference here.
    ///
    /// Of two rounds crossing between the same pair, the smaller name's
    /// runs: the larger name answers it at once, without the slot, which
    /// its own round holds, and the smaller name declines the larger
    /// name's, which is asked for again later. Waiting for the smaller
    /// name's round instead would not do: that round ends at the smaller
    /// name once it has sent everything, while the larger name may still
    /// be merging it, and the larger name's round, run then, would
    /// summarise a store without those registers and be sent them again.
    ///
    /// A declined round whose opening shows the two sides in sync is
    /// answered by the session after all (`Session::decline`): this
    /// machine decides from the link's state alone, before the opening
    /// is read.
    pub(crate) fn handle_session_offered(&mut self, now: Instant, conn: ConnId, peer: &str) -> SessionId {
        let crossed = self.own_round_with(peer);
        let smaller = self.me.name.as_str() < peer;
        let waiting = (!crossed).then_some(now + self.timings.wait_max);
        let session = self.new_session(peer, conn, waiting, false);
        match (crossed, smaller) {
            (true, false) => self.actions.push_back(Action::Respond { session }),
            (true, true) => {
                self.sessions.get_mut(&session).expect("inserted above").declined = true;
                self.actions.push_back(Action::Decline { session });
            }
            (false, _) => {}
        }
        self.settle(now);
        session
    }

    /// Our round `session` was declined: the peer ran another session. It
    /// is asked for again a little later.
    pub(crate) fn handle_session_declined(&mut self, now: Instant, session: SessionId) {
        let Some(peer) = self.sessions.get(&session).map(|s| s.peer.clone()) else { return };
        let n = self.declines.entry(peer.clone()).or_default();
        let base = self.timings.busy_retry * (1 << (*n).min(3));
        *n += 1;
        self.later.push((now + base.mul_f64(self.rng.random_range(0.5..1.5)), peer));
        self.handle_session_finished(now, session);
    }

    /// `session` ended, either role, complete or not.
    pub(crate) fn handle_session_finished(&mut self, now: Instant, session: SessionId) {
        if self.sessions.remove(&session).is_none() {
            return;
        }
        if self.slot == Some(session) {
            // A crossed round answered without the slot runs on: it takes
            // the slot over, so that nothing else starts here meanwhile.
            self.slot =
                self.sessions.iter().find(|(_, s)| !s.own && !s.declined && s.waiting.is_none()).map(|(id, _)| *id);
        }
        self.settle(now);
    }

    /// Lets waiting responders run (or declines them, see
    /// [`Links::handle_session_offered`]), starts deferred rounds once
    /// nothing runs, and closes idle retired connections.
    fn settle(&mut self, now: Instant) {
        let waiting: Vec<(SessionId, Instant)> =
            self.sessions.iter().filter_map(|(id, s)| s.waiting.map(|until| (*id, until))).collect();
        for (id, until) in waiting {
            if now >= until {
                tracing::warn!(
                    "anti-entropy responder waited {:?} for the slot: responding anyway",
                    self.timings.wait_max
                );
                self.sessions.get_mut(&id).expect("listed above").waiting = None;
                self.actions.push_back(Action::Respond { session: id });
                continue;
            }
            let go = match self.slot {
                None => {
                    self.slot = Some(id);
                    Action::Respond { session: id }
                }
                Some(_) if self.slot_awaits_accept() => Action::Decline { session: id },
                Some(_) => continue,
            };
            let s = self.sessions.get_mut(&id).expect("listed above");
            s.waiting = None;
            s.declined = matches!(go, Action::Decline { .. });
            self.actions.push_back(go);
        }
        if self.sessions.is_empty() {
            for peer in std::mem::take(&mut self.deferred) {
                self.try_start(&peer, true);
            }
        }
        let retired: Vec<(ConnId, Instant)> =
            self.conns.iter().filter_map(|(id, c)| c.retired.map(|since| (*id, since))).collect();
        for (conn, since) in retired {
            let waited = now.saturating_duration_since(since);
            let idle = self.sessions_on(conn) == 0;
            if (idle && waited >= self.timings.retire_linger) || waited >= self.timings.wait_max {
                self.close(conn);
            }
        }
    }
}

/// The anti-entropy period, jittered by ±20% so that peers do not sync in
/// lockstep.
fn jittered_period(rng: &mut SmallRng, base: Duration) -> Duration {
    base.mul_f64(rng.random_range(0.8..1.2))
}

#[cfg(test)]
mod tests;
