//! The connection-level protocol, driven by hand: no sockets, no runtime.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::hlc::NodeId;
use crate::wire::{LAST_SINGLE_VERSION, PROTOCOL_VERSION};

fn id(name: &str, started_ms: u64) -> MemberId {
    MemberId { name: name.to_owned(), incarnation: Incarnation { started_ms, node: NodeId(started_ms | 1) } }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn hello(from: &MemberId, listen: SocketAddr) -> Hello {
    Hello {
        version: PROTOCOL_VERSIONS.hello_version(),
        from: from.clone(),
        physical_ms: 1_000,
        hlc: 0,
        listen: Some(listen),
    }
}

fn timings() -> Timings {
    // A period long enough that no periodic round interferes unless a
    // test asks for one.
    Timings::new(Duration::from_secs(3600))
}

/// The core as a test configures it, recording what the machine asked.
struct FakeCore {
    me: Incarnation,
    booted: bool,
    learn: Result<Learned, Refusal>,
    learned: Vec<MemberId>,
}

impl FakeCore {
    fn new(me: &MemberId) -> Self {
        FakeCore { me: me.incarnation, booted: true, learn: Ok(Learned::Known), learned: Vec::new() }
    }
}

impl Core for FakeCore {
    fn check_skew(&mut self, _physical_ms: u64) -> Result<(), SkewError> {
        Ok(())
    }
    fn learn_peer(&mut self, id: &MemberId) -> Result<Learned, Refusal> {
        self.learned.push(id.clone());
        self.learn.clone()
    }
    fn learn_own_successor(&mut self, current: Incarnation) -> bool {
        current > self.me
    }
    fn booted(&self) -> bool {
        self.booted
    }
}

struct Node {
    id: MemberId,
    addr: SocketAddr,
    links: Links,
    core: FakeCore,
}

impl Node {
    fn new(name: &str, port: u16, seeds: Vec<SocketAddr>, now: Instant) -> Self {
        Node::with_seeds(name, port, seeds.into_iter().map(Seed::from).collect(), now)
    }

    fn with_seeds(name: &str, port: u16, seeds: Vec<Seed>, now: Instant) -> Self {
        let id = id(name, 100);
        let links = Links::new(id.clone(), timings(), vec![addr(port)], seeds, u64::from(port), now);
        Node { core: FakeCore::new(&id), id, addr: addr(port), links }
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.links.poll_action()).collect()
    }
}

/// Peers whose actions are delivered to each other: rounds are offered to
/// the other side, a responder's go-ahead is the initiator's accept, and a
/// running round ends when the test says so.
struct Sim {
    now: Instant,
    nodes: BTreeMap<String, Node>,
    next_conn: usize,
    /// Rounds started and not yet answered: (initiator, its id) → the
    /// responder and its id.
    offered: BTreeMap<(String, SessionId), (String, SessionId)>,
    /// Rounds both sides run, in the order they started running.
    running: Vec<((String, SessionId), (String, SessionId))>,
    /// Sides of running rounds that ended before the other side did (a
    /// side that sent everything ends while its peer still merges it).
    ended: Vec<(String, SessionId)>,
    /// (initiator, responder) of every round that ran to its end.
    completed: Vec<(String, String)>,
    /// (initiator, responder) of every round the responder declined.
    declined: Vec<(String, String)>,
    /// Every action, by node, in order.
    log: Vec<(String, Action)>,
}

impl Sim {
    fn new(names: &[&str]) -> Self {
        let now = crate::env::stopwatch().into_std();
        let nodes = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), Node::new(n, 7000 + i as u16, Vec::new(), now)))
            .collect();
        Sim {
            now,
            nodes,
            next_conn: 1,
            offered: BTreeMap::new(),
            running: Vec::new(),
            ended: Vec::new(),
            completed: Vec::new(),
            declined: Vec::new(),
            log: Vec::new(),
        }
    }

    /// `dialer` dialed `acceptor`; both hellos go through. Returns the
    /// connection.
    fn connect(&mut self, dialer: &str, acceptor: &str) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let (d_id, d_addr) = (self.nodes[dialer].id.clone(), self.nodes[dialer].addr);
        let (a_id, a_addr) = (self.nodes[acceptor].id.clone(), self.nodes[acceptor].addr);
        let now = self.now;
        let a = self.nodes.get_mut(acceptor).unwrap();
        let v = a.links.handle_hello(
            now,
            conn,
            Side::Acceptor,
            &hello(&d_id, d_addr),
            Some(PROTOCOL_VERSIONS),
            Some(dialer),
            &mut a.core,
        );
        assert_eq!(v, Verdict::Accept { version: PROTOCOL_VERSION });
        let d = self.nodes.get_mut(dialer).unwrap();
        let v = d.links.handle_hello(
            now,
            conn,
            Side::Dialer(a_addr),
            &hello(&a_id, a_addr),
            Some(PROTOCOL_VERSIONS),
            Some(acceptor),
            &mut d.core,
        );
        assert_eq!(v, Verdict::Accept { version: PROTOCOL_VERSION });
        conn
    }

    fn links(&mut self, name: &str) -> &mut Links {
        &mut self.nodes.get_mut(name).unwrap().links
    }

    /// Delivers actions until none is left.
    fn deliver(&mut self) {
        loop {
            let mut any = false;
            let names: Vec<String> = self.nodes.keys().cloned().collect();
            for name in names {
                for action in self.nodes.get_mut(&name).unwrap().actions() {
                    any = true;
                    self.log.push((name.clone(), action.clone()));
                    match action {
                        Action::StartSession { session, peer, conn } => {
                            let now = self.now;
                            let r = self.links(&peer).handle_session_offered(now, conn, &name);
                            self.offered.insert((name.clone(), session), (peer, r));
                        }
                        Action::Respond { session } => {
                            let (init, resp) = self.answer(&name, session);
                            self.links(&init.0).handle_session_accepted(init.1);
                            self.running.push((init, resp));
                            for n in [&self.running.last().unwrap().0 .0, &self.running.last().unwrap().1 .0] {
                                let runs = |side: &(String, SessionId)| side.0 == *n && !self.ended.contains(side);
                                let at_once: Vec<_> = self.running.iter().filter(|(i, r)| runs(i) || runs(r)).collect();
                                assert!(at_once.len() <= 1, "{n} runs two sessions at once: {at_once:?}");
                            }
                        }
                        Action::Decline { session } => {
                            let (init, _) = self.answer(&name, session);
                            let now = self.now;
                            self.links(&init.0).handle_session_declined(now, init.1);
                            self.links(&name).handle_session_finished(now, session);
                            self.declined.push((init.0, name.clone()));
                        }
                        _ => {}
                    }
                }
            }
            if !any {
                return;
            }
        }
    }

    /// The round offered to `responder` as its `session`, answered now:
    /// (initiator, its id) and (responder, its id).
    fn answer(&mut self, responder: &str, session: SessionId) -> ((String, SessionId), (String, SessionId)) {
        let init = self
            .offered
            .iter()
            .find(|(_, (p, s))| p == responder && *s == session)
            .map(|(i, _)| i.clone())
            .expect("an answer to an offered round");
        let resp = self.offered.remove(&init).expect("found above");
        (init, resp)
    }

    /// Ends the oldest running round on both sides.
    fn finish_one(&mut self) -> bool {
        if self.running.is_empty() {
            return false;
        }
        let (init, resp) = self.running.remove(0);
        let now = self.now;
        for side in [&init, &resp] {
            match self.ended.iter().position(|s| s == side) {
                Some(i) => drop(self.ended.remove(i)),
                None => self.links(&side.0).handle_session_finished(now, side.1),
            }
        }
        self.completed.push((init.0, resp.0));
        true
    }

    /// Ends `node`'s side of the oldest round it runs, the other side
    /// running on.
    fn end_side(&mut self, node: &str) {
        let side = self
            .running
            .iter()
            .flat_map(|(i, r)| [i, r])
            .find(|s| s.0 == node && !self.ended.contains(s))
            .cloned()
            .expect("a round running at this node");
        let now = self.now;
        self.links(node).handle_session_finished(now, side.1);
        self.ended.push(side);
    }

    /// Delivers and ends rounds until nothing moves, without letting time
    /// pass: a wait that only the safety net would end is a deadlock.
    fn run(&mut self) {
        loop {
            self.deliver();
            if !self.finish_one() {
                return;
            }
        }
    }

    /// As [`Sim::run`], and lets time pass to each deadline closer than
    /// a minute (the periodic rounds are an hour apart) until none is left.
    fn run_with_deadlines(&mut self) {
        loop {
            self.run();
            let horizon = self.now + Duration::from_secs(60);
            let names: Vec<String> = self.nodes.keys().cloned().collect();
            let Some(next) = names.iter().filter_map(|n| self.links(n).poll_timeout()).filter(|t| *t < horizon).min()
            else {
                return;
            };
            self.now = self.now.max(next);
            let now = self.now;
            for n in &names {
                if self.links(n).poll_timeout().is_some_and(|t| t <= now) {
                    self.links(n).handle_timeout(now);
                }
            }
        }
    }

    fn count(&self, node: &str, f: impl Fn(&Action) -> bool) -> usize {
        self.log.iter().filter(|(n, a)| n == node && f(a)).count()
    }

    fn closed(&self, node: &str, conn: ConnId) -> bool {
        self.count(node, |a| matches!(a, Action::Close { conn: c, .. } if *c == conn)) > 0
    }
}

#[test]
fn both_dialing_at_once_keeps_one_connection_and_retires_the_other_after_its_rounds() {
    let mut sim = Sim::new(&["a", "b"]);
    // b's dial completes first on both sides, and b's round after
    // connecting starts on it; then a's dial completes.
    let by_b = sim.connect("b", "a");
    sim.now += Duration::from_millis(60);
    let now = sim.now;
    sim.links("b").handle_timeout(now);
    sim.deliver();
    assert_eq!(sim.running.len(), 1, "b's round runs on the connection b dialed");
    let by_a = sim.connect("a", "b");
    sim.deliver();
    // Both keep the connection dialed by the smaller name.
    assert_eq!(sim.links("a").link("b"), Some(by_a));
    assert_eq!(sim.links("b").link("a"), Some(by_a));
    // The loser is not cut under its round, however long the round runs.
    for _ in 0..10 {
        sim.now += Duration::from_secs(1);
        let now = sim.now;
        for n in ["a", "b"] {
            sim.links(n).handle_timeout(now);
        }
        sim.deliver();
        sim.running.retain(|r| r.0 .0 == "b"); // only b's round on `by_b` runs on
    }
    assert!(!sim.closed("a", by_b) && !sim.closed("b", by_b));
    assert!(!sim.closed("a", by_a) && !sim.closed("b", by_a));
    // Its round over, it closes on both sides.
    let (init, resp) = sim.running.remove(0);
    let now = sim.now;
    sim.links(&init.0).handle_session_finished(now, init.1);
    sim.links(&resp.0).handle_session_finished(now, resp.1);
    sim.deliver();
    assert!(sim.closed("a", by_b) && sim.closed("b", by_b));
    assert!(!sim.closed("a", by_a) && !sim.closed("b", by_a));
    assert_eq!(sim.links("a").link("b"), Some(by_a));
    assert_eq!(sim.links("b").link("a"), Some(by_a));
}

#[test]
fn an_idle_retired_connection_closes_after_the_linger() {
    let mut sim = Sim::new(&["a", "b"]);
    let by_b = sim.connect("b", "a");
    let by_a = sim.connect("a", "b");
    sim.deliver();
    assert_eq!(sim.links("b").link("a"), Some(by_a));
    let linger = timings().retire_linger;
    let now = sim.now;
    assert!(sim.links("a").poll_timeout().is_some_and(|t| t <= now + linger));
    sim.now += linger / 2;
    let now = sim.now;
    sim.links("a").handle_timeout(now);
    sim.deliver();
    assert!(!sim.closed("a", by_b), "not before the linger");
    sim.now += linger;
    let now = sim.now;
    sim.links("a").handle_timeout(now);
    sim.deliver();
    assert!(sim.closed("a", by_b));
}

#[test]
fn a_ring_starting_rounds_with_each_other_at_once_does_not_deadlock() {
    let mut sim = Sim::new(&["a", "b", "c"]);
    sim.connect("a", "b");
    sim.connect("b", "c");
    sim.connect("c", "a");
    // The rounds after connecting are not what this is about.
    sim.deliver();
    for n in ["a", "b", "c"] {
        sim.links(n).later.clear();
    }
    let now = sim.now;
    sim.links("a").request_round(now, "b");
    sim.links("b").request_round(now, "c");
    sim.links("c").request_round(now, "a");
    sim.run_with_deadlines();
    assert!(!sim.declined.is_empty(), "in a ring of rounds waiting for accepts, some are declined");
    let mut done = sim.completed.clone();
    done.sort();
    let want: Vec<(String, String)> =
        [("a", "b"), ("b", "c"), ("c", "a")].iter().map(|(i, r)| (i.to_string(), r.to_string())).collect();
    assert_eq!(done, want, "each pair synced once");
    for n in ["a", "b", "c"] {
        assert!(sim.links(n).sessions.is_empty(), "{n} still has sessions waiting");
    }
}

/// The heal that shipped a difference twice: `c`'s own round waits for
/// `a`, busy with `d`; `b` offers `c` a round meanwhile. Answered at once,
/// it would run beside `c`'s round once `a` accepts that, and both `a` and
/// `b` would send `c` what they hold. It is declined, asked for again, and
/// runs after.
#[test]
fn a_round_offered_while_the_own_round_awaits_its_accept_is_declined_then_runs() {
    let mut sim = Sim::new(&["a", "b", "c", "d"]);
    for (x, y) in [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c")] {
        sim.connect(x, y);
    }
    sim.deliver();
    for n in ["a", "b", "c", "d"] {
        sim.links(n).later.clear();
    }
    let now = sim.now;
    sim.links("a").request_round(now, "d");
    sim.deliver();
    assert_eq!(sim.running.len(), 1, "a runs with d");
    sim.links("c").request_round(now, "a");
    sim.deliver();
    assert_eq!(sim.running.len(), 1, "c's round waits for a");
    sim.links("b").request_round(now, "c");
    sim.deliver();
    assert_eq!(sim.declined, vec![("b".to_string(), "c".to_string())]);
    // Sim::deliver checks that no peer runs two sessions at once.
    sim.run_with_deadlines();
    let mut done = sim.completed.clone();
    done.sort();
    let want: Vec<(String, String)> =
        [("a", "d"), ("b", "c"), ("c", "a")].iter().map(|(i, r)| (i.to_string(), r.to_string())).collect();
    assert_eq!(done, want);
    for n in ["a", "b", "c", "d"] {
        assert!(sim.links(n).sessions.is_empty() && sim.links(n).slot.is_none(), "{n} still holds a session");
    }
}

#[test]
fn a_declined_round_is_asked_for_again_later_each_time_until_one_is_accepted() {
    let mut sim = Sim::new(&["a", "b"]);
    sim.connect("a", "b");
    sim.deliver();
    sim.links("a").later.clear();
    let start = |sim: &mut Sim| {
        let now = sim.now;
        sim.links("a").request_round(now, "b");
        match sim.nodes.get_mut("a").unwrap().actions().as_slice() {
            [Action::StartSession { session, .. }] => *session,
            other => panic!("expected one round to start: {other:?}"),
        }
    };
    let decline = |sim: &mut Sim| {
        let session = start(sim);
        let now = sim.now;
        sim.links("a").handle_session_declined(now, session);
        let (at, peer) = sim.links("a").later.pop().expect("asked for again");
        assert_eq!(peer, "b");
        at - now
    };
    let delays: Vec<Duration> = (0..6).map(|_| decline(&mut sim)).collect();
    let busy_retry = timings().busy_retry;
    for (d, times) in delays.iter().zip([1, 2, 4, 8, 8, 8]) {
        let base = busy_retry * times;
        assert!(*d >= base / 2 && *d <= base * 3 / 2, "{delays:?}");
    }
    // An accepted round starts the doubling over.
    let session = start(&mut sim);
    let now = sim.now;
    sim.links("a").handle_session_accepted(session);
    sim.links("a").handle_session_finished(now, session);
    let d = decline(&mut sim);
    assert!(d <= busy_retry * 3 / 2, "{d:?}");
}

/// Two rounds crossing: the smaller name's runs and the larger name's is
/// declined. The smaller name's side ends first (it sent everything, the
/// larger name still merges it): the larger name's round, asked for again
/// meanwhile, runs only once the larger name's side has ended too. Run
/// before that (as when it waited at the smaller name for the smaller
/// name's round alone), it would be sent what the larger name had not yet
/// merged.
#[test]
fn crossed_rounds_run_one_after_the_other_at_both_ends() {
    let mut sim = Sim::new(&["a", "b"]);
    sim.connect("a", "b");
    sim.deliver();
    for n in ["a", "b"] {
        sim.links(n).later.clear();
    }
    let now = sim.now;
    sim.links("a").request_round(now, "b");
    sim.links("b").request_round(now, "a");
    sim.deliver();
    assert_eq!(sim.running.len(), 1);
    assert_eq!(sim.running[0].0 .0, "a", "a's round runs");
    sim.end_side("a");
    // b asks again after its retry delay, and keeps asking, while its
    // side of a's round runs: nothing starts beside it.
    for _ in 0..20 {
        sim.now += timings().busy_retry;
        let now = sim.now;
        for n in ["a", "b"] {
            sim.links(n).handle_timeout(now);
        }
        sim.deliver();
        assert_eq!(sim.running.len(), 1, "b runs one session at a time: {:?}", sim.running);
    }
    assert_eq!(sim.declined.first(), Some(&("b".to_string(), "a".to_string())), "b's round is declined");
    sim.run();
    assert_eq!(sim.completed, vec![("a".to_string(), "b".to_string()), ("b".to_string(), "a".to_string())]);
    for n in ["a", "b"] {
        assert!(sim.links(n).sessions.is_empty() && sim.links(n).slot.is_none(), "{n} still holds a session");
    }
}

#[test]
fn a_superseded_incarnation_is_refused_told_and_stops() {
    let now = crate::env::stopwatch().into_std();
    let old = id("a", 100);
    let new = id("a", 200);
    let mut a = Node::new("a", 7000, vec![addr(7001)], now);
    a.id = old.clone();
    let mut b = Node::new("b", 7001, Vec::new(), now);
    assert_eq!(a.actions(), vec![Action::Dial(addr(7001))]);
    // b knows the newer incarnation.
    b.core.learn = Err(Refusal::Superseded { current: Some(new.incarnation) });
    let v = b.links.handle_hello(
        now,
        ConnId(1),
        Side::Acceptor,
        &hello(&old, addr(7000)),
        Some(PROTOCOL_VERSIONS),
        Some("a"),
        &mut b.core,
    );
    let refusal = match v {
        Verdict::Refuse(r) => r,
        other => panic!("accepted a superseded incarnation: {other:?}"),
    };
    assert_eq!(refusal, Refusal::Superseded { current: Some(new.incarnation) }, "told which incarnation replaced it");
    assert!(b.actions().is_empty(), "no link to a refused peer");
    a.links.handle_refused(&refusal, &mut a.core);
    assert_eq!(a.actions(), vec![Action::Stop]);
    assert!(a.links.is_stopped());
    // Stopped: it dials no one and starts nothing.
    a.links.handle_dial_result(now, addr(7001), false);
    a.links.handle_members(now, vec![("c".into(), addr(7002))]);
    a.links.handle_timeout(now + Duration::from_secs(10));
    assert!(a.actions().is_empty());
    assert_eq!(a.links.poll_timeout(), None);
    // A refusal naming an older incarnation does not stop a current one.
    let mut c = Node::new("c", 7002, Vec::new(), now);
    c.links.handle_refused(&Refusal::Superseded { current: Some(id("c", 50).incarnation) }, &mut c.core);
    assert!(!c.links.is_stopped());
}

#[test]
fn a_hello_naming_someone_other_than_its_certificate_is_refused() {
    let now = crate::env::stopwatch().into_std();
    let mut b = Node::new("b", 7001, Vec::new(), now);
    let a = id("a", 100);
    let v = b.links.handle_hello(
        now,
        ConnId(1),
        Side::Acceptor,
        &hello(&a, addr(7000)),
        Some(PROTOCOL_VERSIONS),
        Some("mallory"),
        &mut b.core,
    );
    assert_eq!(v, Verdict::Refuse(Refusal::Name { certificate: Some("mallory".into()) }));
    let v = b.links.handle_hello(
        now,
        ConnId(2),
        Side::Acceptor,
        &hello(&a, addr(7000)),
        Some(PROTOCOL_VERSIONS),
        None,
        &mut b.core,
    );
    assert_eq!(v, Verdict::Refuse(Refusal::Name { certificate: None }));
    assert!(b.core.learned.is_empty(), "a hello under a false name must not reach the membership");
    assert!(b.actions().is_empty());
    // The same hello under its own certificate goes through.
    let v = b.links.handle_hello(
        now,
        ConnId(3),
        Side::Acceptor,
        &hello(&a, addr(7000)),
        Some(PROTOCOL_VERSIONS),
        Some("a"),
        &mut b.core,
    );
    assert_eq!(v, Verdict::Accept { version: PROTOCOL_VERSION });
    assert_eq!(b.actions(), vec![Action::Link { peer: a, conn: ConnId(3) }]);
}

#[test]
fn redial_backoff_doubles_to_two_seconds_with_jitter_and_resets_after_a_success() {
    let seed = addr(7001);
    let mut now = crate::env::stopwatch().into_std();
    let mut a = Node::new("a", 7000, vec![seed], now);
    assert_eq!(a.actions(), vec![Action::Dial(seed)]);
    assert_eq!(a.links.dials_under_way(), 1);
    let mut delays = Vec::new();
    for k in 0..8u32 {
        a.links.handle_dial_result(now, seed, false);
        assert!(a.actions().is_empty(), "no redial before the backoff ends");
        assert_eq!(a.links.dials_under_way(), 0, "attempt {k}: backing off is no dial");
        let at = a.links.poll_timeout().expect("a redial is due");
        let delay = at - now;
        let base = (Duration::from_millis(200) * 2u32.pow(k)).min(Duration::from_secs(2));
        assert!(delay >= base.mul_f64(0.75) && delay < base.mul_f64(1.25), "attempt {k}: {delay:?} for {base:?}");
        a.links.handle_timeout(at - Duration::from_millis(1));
        assert!(a.actions().is_empty(), "attempt {k}: redialed early");
        a.links.handle_timeout(at);
        assert_eq!(a.actions(), vec![Action::Dial(seed)], "attempt {k}");
        assert_eq!(a.links.dials_under_way(), 1, "attempt {k}");
        // While the dial runs, the backoff that ended is no deadline: a
        // deadline in the past would have the driver spin.
        assert!(a.links.poll_timeout().is_none_or(|t| t > at), "attempt {k}: a deadline in the past");
        delays.push((delay, base));
        now = at;
    }
    assert!(delays.iter().any(|(d, b)| d != b), "the delays are jittered");
    // A success resets the backoff: the next failure waits 200 ms again.
    a.links.handle_dial_result(now, seed, true);
    assert_eq!(a.actions(), vec![Action::Dial(seed)], "still no link to the seed: dialed again");
    a.links.handle_dial_result(now, seed, false);
    let delay = a.links.poll_timeout().unwrap() - now;
    assert!(delay >= Duration::from_millis(150) && delay < Duration::from_millis(250), "{delay:?}");
}

#[test]
fn a_seed_name_is_looked_up_whenever_it_would_be_dialed_with_backoff_and_keeps_its_last_addresses() {
    let mut now = crate::env::stopwatch().into_std();
    let name = Seed::Name { host: "seeds.test".into(), port: 7001 };
    let resolve = Action::Resolve { name: 0, host: "seeds.test".into(), port: 7001 };
    let mut a = Node::with_seeds("a", 7000, vec![name], now);
    assert_eq!(a.actions(), vec![resolve.clone()], "a name is looked up before anything is dialed");
    assert!(a.links.poll_timeout().is_none_or(|t| t > now + Duration::from_secs(60)), "no deadline while it resolves");

    // Lookups that fail are retried after a doubling backoff; only the
    // first failure of a run is for the log.
    let mut firsts = Vec::new();
    for k in 0..4u32 {
        firsts.push(a.links.handle_resolved(now, 0, None));
        assert!(a.actions().is_empty(), "lookup {k}: nothing to dial, no lookup before the backoff");
        let at = a.links.poll_timeout().expect("a lookup is due");
        let base = (Duration::from_millis(200) * 2u32.pow(k)).min(Duration::from_secs(2));
        let delay = at - now;
        assert!(delay >= base.mul_f64(0.75) && delay < base.mul_f64(1.25), "lookup {k}: {delay:?} for {base:?}");
        a.links.handle_timeout(at);
        assert_eq!(a.actions(), vec![resolve.clone()], "lookup {k}: looked up again");
        now = at;
    }
    assert_eq!(firsts, vec![true, false, false, false]);

    // Every address it resolves to is dialed, except this peer's own.
    let b = id("b", 100);
    assert!(!a.links.handle_resolved(now, 0, Some(vec![addr(7002), addr(7001), addr(7000), addr(7001)])));
    assert_eq!(a.actions(), vec![Action::Dial(addr(7001)), Action::Dial(addr(7002))]);
    a.links.handle_dial_result(now, addr(7002), false);
    let hi = hello(&b, addr(7001));
    let v = a.links.handle_hello(now, ConnId(1), Side::Dialer(addr(7001)), &hi, None, Some("b"), &mut a.core);
    assert!(matches!(v, Verdict::Accept { .. }), "{v:?}");
    a.links.handle_dial_result(now, addr(7001), true);
    let actions = a.actions();
    assert!(!actions.iter().any(|x| matches!(x, Action::Resolve { .. })), "linked to one of its addresses: no lookup");
    // The new link ended the other address's backoff.
    assert!(actions.contains(&Action::Dial(addr(7002))), "{actions:?}");
    a.links.handle_dial_result(now, addr(7002), false);
    // Long after, still linked: the name is not looked up.
    // Every address is a seed: the other one is still dialed.
    a.links.handle_timeout(now + Duration::from_secs(30));
    let dials: Vec<Action> = a.actions().into_iter().filter(|x| !matches!(x, Action::StartSession { .. })).collect();
    assert_eq!(dials, vec![Action::Dial(addr(7002))], "no lookup while one of its addresses is linked");
    a.links.handle_dial_result(now + Duration::from_secs(30), addr(7002), false);

    // The link goes: the name is looked up again at once (its records may
    // have changed: pods replaced), and while the lookup fails the last
    // addresses found are still dialed.
    now += Duration::from_secs(30);
    a.links.handle_conn_closed(now, ConnId(1));
    let actions = a.actions();
    assert_eq!(actions, vec![resolve.clone(), Action::Probe(addr(7001))], "the lost link's address is probed");
    assert!(a.links.handle_resolved(now, 0, None), "the first failure after a success is for the log");
    a.links.handle_dial_result(now, addr(7001), false);
    a.links.handle_dial_result(now, addr(7002), false);
    a.links.handle_timeout(now + Duration::from_secs(5));
    let actions = a.actions();
    assert!(actions.contains(&Action::Probe(addr(7001))) && actions.contains(&Action::Dial(addr(7002))), "{actions:?}");
    assert!(actions.contains(&resolve), "{actions:?}");
}

#[test]
fn a_lost_links_address_is_probed_for_ten_seconds_then_dialed_with_backoff() {
    let mut now = crate::env::stopwatch().into_std();
    let mut c = Node::new("c", 7002, vec![], now);
    c.links.handle_members(now, vec![("a".into(), addr(7000))]);
    assert_eq!(c.actions(), vec![Action::Dial(addr(7000))], "an address never linked is dialed, not probed");
    // Its round on the new link is asked for at once, not at a deadline.
    c.core.booted = false;
    let a = id("a", 100);
    let v = c.links.handle_hello(
        now,
        ConnId(1),
        Side::Dialer(addr(7000)),
        &hello(&a, addr(7000)),
        None,
        Some("a"),
        &mut c.core,
    );
    assert!(matches!(v, Verdict::Accept { .. }), "{v:?}");
    c.links.handle_dial_result(now, addr(7000), true);
    c.actions();

    // The link is lost: probed at once, then about 50 ms after each probe
    // that got no answer (a probe gives up after 250 ms on a fast path).
    now += Duration::from_secs(30);
    let lost = now;
    c.links.handle_conn_closed(now, ConnId(1));
    assert_eq!(c.actions(), vec![Action::Probe(addr(7000))]);
    let mut probes = 1;
    loop {
        now += Duration::from_millis(250);
        c.links.handle_dial_result(now, addr(7000), false);
        let due = c.links.poll_timeout().expect("a redial is due");
        if now >= lost + Duration::from_secs(10) {
            // Past the probes: the doubling backoff, from its start.
            let delay = due - now;
            assert!(delay >= Duration::from_millis(150) && delay < Duration::from_millis(250), "{delay:?}");
            c.links.handle_timeout(due);
            assert_eq!(c.actions(), vec![Action::Dial(addr(7000))]);
            c.links.handle_dial_result(due + Duration::from_secs(1), addr(7000), false);
            let delay = c.links.poll_timeout().unwrap() - (due + Duration::from_secs(1));
            assert!(delay >= Duration::from_millis(300) && delay < Duration::from_millis(500), "{delay:?}");
            break;
        }
        let gap = due - now;
        assert!(gap >= Duration::from_millis(37) && gap < Duration::from_millis(63), "probe {probes}: {gap:?}");
        c.links.handle_timeout(due - Duration::from_millis(1));
        assert!(c.actions().is_empty(), "probe {probes}: early");
        c.links.handle_timeout(due);
        assert_eq!(c.actions(), vec![Action::Probe(addr(7000))], "probe {probes}");
        probes += 1;
        now = due;
    }
    assert!((30..=36).contains(&probes), "{probes} probes in ten seconds");

    // Linked again, then lost again: probed again.
    now += Duration::from_secs(5);
    let v = c.links.handle_hello(now, ConnId(2), Side::Acceptor, &hello(&a, addr(7000)), None, Some("a"), &mut c.core);
    assert!(matches!(v, Verdict::Accept { .. }), "{v:?}");
    c.actions();
    c.links.handle_dial_result(now, addr(7000), false);
    now += Duration::from_secs(60);
    c.links.handle_conn_closed(now, ConnId(2));
    assert_eq!(c.actions(), vec![Action::Probe(addr(7000))]);
}

#[test]
fn a_link_to_a_lost_peer_ends_every_redial_backoff_and_the_next_failure_backs_off_from_where_it_was() {
    let mut now = crate::env::stopwatch().into_std();
    let name = Seed::Name { host: "seeds.test".into(), port: 7003 };
    let resolve = Action::Resolve { name: 0, host: "seeds.test".into(), port: 7003 };
    let mut c = Node::with_seeds("c", 7002, vec![name], now);
    assert_eq!(c.actions(), vec![resolve.clone()]);
    c.links.handle_members(now, vec![("a".into(), addr(7000)), ("b".into(), addr(7001))]);
    assert_eq!(c.actions(), vec![Action::Dial(addr(7000)), Action::Dial(addr(7001))]);
    // Cut off: every dial and lookup fails six times, and the backoffs
    // reach their cap, 2 s (+-25%).
    for k in 0..5 {
        c.links.handle_dial_result(now, addr(7000), false);
        c.links.handle_dial_result(now, addr(7001), false);
        c.links.handle_resolved(now, 0, None);
        assert!(c.actions().is_empty(), "failure {k}: nothing before the backoffs end");
        let at = now + Duration::from_secs(6);
        c.links.handle_timeout(at);
        assert_eq!(c.actions().len(), 3, "failure {k}: each dialed and looked up again");
        now = at;
    }
    c.links.handle_dial_result(now, addr(7000), false);
    c.links.handle_dial_result(now, addr(7001), false);
    c.links.handle_resolved(now, 0, None);
    let due = c.links.poll_timeout().expect("redials are due");
    assert!(due >= now + Duration::from_millis(1500), "backed off {:?}", due - now);

    // The partition lifts: a's dial arrives first. The link is news that
    // the network carries again: b and the name are tried at once.
    now += Duration::from_millis(10);
    let a = id("a", 100);
    let v = c.links.handle_hello(now, ConnId(1), Side::Acceptor, &hello(&a, addr(7000)), None, Some("a"), &mut c.core);
    assert!(matches!(v, Verdict::Accept { .. }), "{v:?}");
    let actions = c.actions();
    assert!(actions.contains(&Action::Dial(addr(7001))), "b redialed at once: {actions:?}");
    assert!(actions.contains(&resolve), "the name looked up at once: {actions:?}");
    assert!(!actions.contains(&Action::Dial(addr(7000))), "a is linked: {actions:?}");

    // b is still unreachable: its next backoff is where it was (2 s,
    // +-25%), not 200 ms again.
    c.links.handle_dial_result(now, addr(7001), false);
    c.links.handle_resolved(now, 0, None);
    let due = c.links.poll_timeout().expect("a redial is due");
    assert!(due >= now + Duration::from_millis(1500), "backed off {:?}", due - now);

    // A new connection of a peer already linked is no such news.
    let v = c.links.handle_hello(now, ConnId(2), Side::Acceptor, &hello(&a, addr(7000)), None, Some("a"), &mut c.core);
    assert!(matches!(v, Verdict::Accept { .. }), "{v:?}");
    let actions = c.actions();
    assert!(!actions.iter().any(|x| matches!(x, Action::Dial(_) | Action::Resolve { .. })), "{actions:?}");
}

#[test]
fn a_dial_under_way_when_a_lost_peer_links_again_is_restarted() {
    let mut now = crate::env::stopwatch().into_std();
    let mut c = Node::with_seeds("c", 7002, vec![], now);
    c.links.handle_members(now, vec![("a".into(), addr(7000)), ("b".into(), addr(7001))]);
    assert_eq!(c.actions(), vec![Action::Dial(addr(7000)), Action::Dial(addr(7001))]);
    // Cut off long enough for the backoffs to reach their cap.
    for _ in 0..6 {
        c.links.handle_dial_result(now, addr(7000), false);
        c.links.handle_dial_result(now, addr(7001), false);
        now += Duration::from_secs(6);
        c.links.handle_timeout(now);
        assert_eq!(c.actions().len(), 2, "both dialed again");
    }
    // Both dials are under way when the cut lifts and a's dial arrives:
    // b's, whose Initials went into the cut, starts afresh; a's, to a
    // linked address, does not.
    now += Duration::from_millis(600);
    let a = id("a", 100);
    let v = c.links.handle_hello(now, ConnId(1), Side::Acceptor, &hello(&a, addr(7000)), None, Some("a"), &mut c.core);
    assert!(matches!(v, Verdict::Accept { .. }), "{v:?}");
    let actions = c.actions();
    assert!(actions.contains(&Action::Restart(addr(7001))), "{actions:?}");
    assert!(!actions.contains(&Action::Restart(addr(7000))), "{actions:?}");
    assert!(!actions.iter().any(|x| matches!(x, Action::Dial(_))), "b's dial is still one: {actions:?}");
    // It is one dial: its failure backs off from where it was.
    now += Duration::from_millis(400);
    c.links.handle_dial_result(now, addr(7001), false);
    assert!(!c.actions().contains(&Action::Dial(addr(7001))));
    let due = c.links.poll_timeout().expect("a redial is due");
    assert!(due >= now + Duration::from_millis(1500), "backed off {:?}", due - now);
    // A new connection of a peer already linked is no such news.
    c.links.handle_timeout(due);
    assert_eq!(c.actions(), vec![Action::Dial(addr(7001))]);
    let v = c.links.handle_hello(due, ConnId(2), Side::Acceptor, &hello(&a, addr(7000)), None, Some("a"), &mut c.core);
    assert!(matches!(v, Verdict::Accept { .. }), "{v:?}");
    assert!(!c.actions().iter().any(|x| matches!(x, Action::Restart(_))));
}

#[test]
fn a_round_requested_while_one_runs_waits_then_runs_once() {
    let mut sim = Sim::new(&["a", "b"]);
    sim.nodes.get_mut("a").unwrap().core.booted = false;
    // A bootstrapping dialer asks for its round at once.
    sim.connect("a", "b");
    sim.deliver();
    assert_eq!(sim.count("a", |x| matches!(x, Action::StartSession { .. })), 1);
    assert_eq!(sim.running.len(), 1);
    let now = sim.now;
    sim.links("a").request_round(now, "b");
    sim.links("a").handle_queue_overflow(now, "b");
    sim.deliver();
    assert_eq!(sim.count("a", |x| matches!(x, Action::StartSession { .. })), 1, "waits while one runs");
    sim.finish_one();
    sim.deliver();
    assert_eq!(sim.count("a", |x| matches!(x, Action::StartSession { .. })), 2, "then runs");
    sim.run();
    assert_eq!(sim.count("a", |x| matches!(x, Action::StartSession { .. })), 2, "once");
    assert_eq!(sim.completed.len(), 2);
}

#[test]
fn a_periodic_round_picks_a_linked_peer_and_rearms_with_jitter() {
    let mut sim = Sim::new(&["a", "b", "c"]);
    for n in ["a", "b", "c"] {
        sim.links(n).timings.anti_entropy_interval = Duration::from_secs(1);
    }
    sim.connect("a", "b");
    sim.connect("a", "c");
    sim.deliver();
    sim.links("a").later.clear();
    let mut gaps = Vec::new();
    let mut last = sim.now;
    for _ in 0..20 {
        let at = sim.links("a").poll_timeout().unwrap();
        sim.now = at;
        sim.links("a").handle_timeout(at);
        sim.run();
        assert!(sim.links("a").poll_timeout().is_none_or(|t| t > at), "a deadline in the past");
        gaps.push(at - last);
        last = at;
    }
    // The first period ran from construction; the rest are each jittered.
    for g in &gaps[1..] {
        assert!(*g >= Duration::from_millis(800) && *g <= Duration::from_millis(1200), "{g:?}");
    }
    let with = |p: &str| sim.completed.iter().filter(|(i, r)| i == "a" && r == p).count();
    assert!(with("b") > 0 && with("c") > 0, "both peers chosen: {:?}", sim.completed);
}

#[test]
fn the_same_seed_and_events_replay_the_same_actions() {
    let run = || {
        let mut sim = Sim::new(&["a", "b", "c"]);
        for n in ["a", "b", "c"] {
            sim.links(n).timings.anti_entropy_interval = Duration::from_millis(300);
        }
        sim.connect("a", "b");
        sim.connect("b", "c");
        sim.connect("c", "a");
        let start = sim.now;
        for step in 1..50u64 {
            sim.now = start + Duration::from_millis(37 * step);
            let now = sim.now;
            for n in ["a", "b", "c"] {
                sim.links(n).handle_timeout(now);
            }
            sim.deliver();
            sim.finish_one();
        }
        sim.log.iter().map(|(n, a)| format!("{n}: {a:?}")).collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn a_link_uses_the_highest_version_both_speak_and_disjoint_ranges_are_refused() {
    let now = crate::env::stopwatch().into_std();
    let mut b = Node::new("b", 7001, Vec::new(), now);
    let a = id("a", 100);
    let range = |lo, hi| VersionRange { lo, hi };
    let mut hello_from = |conn, version, versions| {
        let h = Hello { version, ..hello(&a, addr(7000)) };
        b.links.handle_hello(now, ConnId(conn), Side::Acceptor, &h, versions, Some("a"), &mut b.core)
    };
    // A peer limited to 6 (and saying 6 in its hello, as its dialer would).
    assert_eq!(hello_from(1, 6, Some(range(6, 6))), Verdict::Accept { version: 6 });
    // Ranges reaching past ours: the highest common version.
    assert_eq!(hello_from(2, 9, Some(range(6, 10))), Verdict::Accept { version: 9 });
    // Peers of earlier builds send no range: their hello's version alone.
    assert_eq!(hello_from(3, 7, None), Verdict::Accept { version: 7 });
    assert_eq!(hello_from(4, 6, None), Verdict::Accept { version: 6 });
    // Ranges that do not meet: a peer that sent a range is told both; one
    // of an earlier build gets the refusal it can decode.
    assert_eq!(
        hello_from(5, 10, Some(range(10, 11))),
        Verdict::Refuse(Refusal::Versions { ours: PROTOCOL_VERSIONS, theirs: range(10, 11) })
    );
    // The refusal names the newest version a single-version peer can have.
    assert_eq!(hello_from(6, 5, None), Verdict::Refuse(Refusal::Version { ours: LAST_SINGLE_VERSION }));
    assert_eq!(
        hello_from(7, 7, Some(range(7, 6))),
        Verdict::Refuse(Refusal::Versions { ours: PROTOCOL_VERSIONS, theirs: range(7, 6) }),
        "an empty range meets nothing"
    );
    assert_eq!(b.core.learned.len(), 4, "a refused version never reaches the membership");
    // The last accepted connection is the link, at its own version.
    let actions = b.actions();
    assert_eq!(actions.last(), Some(&Action::Link { peer: a.clone(), conn: ConnId(4) }));
    assert_eq!(b.links.version(ConnId(4)), Some(6));

    // A peer limited to 7 refuses one limited to 6, and the other way.
    let mut new = Node::new("n", 7002, Vec::new(), now);
    new.links.set_versions(range(7, 7));
    let h = Hello { version: 6, ..hello(&a, addr(7000)) };
    let v = new.links.handle_hello(now, ConnId(9), Side::Acceptor, &h, Some(range(6, 6)), Some("a"), &mut new.core);
    assert_eq!(v, Verdict::Refuse(Refusal::Versions { ours: range(7, 7), theirs: range(6, 6) }));
    assert!(new.actions().is_empty() && new.links.version(ConnId(9)).is_none());
}
