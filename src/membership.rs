//! Who is in the mesh, as far as tombstone collection is concerned.
//!
//! This is the deterministic part of membership: names, incarnations, and the
//! `synced` watermark per member. Failure detection (SWIM) belongs to the
//! shell and never removes anyone from this view: a member that is down or
//! cut off stays known and pauses collection. A member leaves this view only
//!
//! - when it says goodbye (a graceful shutdown),
//! - when a newer incarnation of its name appears (a restarted process
//!   starts empty, so the old one's data is gone), or
//! - when an operator forgets it.
//!
//! docs/design.md ("Tombstone collection: the rules that failed") explains
//! why a timeout must never remove one.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::hlc::NodeId;

/// The longest member name: what a certificate's name may hold (a DNS
/// label).
pub const MAX_NAME_LEN: usize = 63;

/// The rule of [`name_problem`], as error messages state it.
pub const NAME_RULE: &str =
    "1 to 63 characters of A-Z, a-z, 0-9, '.', '_' and '-', not starting with '.', and not \"ca\"";

/// Default bound on the members one peer keeps in its view.
pub const DEFAULT_MAX_MEMBERS: usize = 1024;

/// Why `name` cannot be a member's name, if it cannot: 1 to 63 bytes of
/// `[A-Za-z0-9._-]`, not starting with a dot (hidden files) and not `ca`
/// (it would collide with the CA files). The one rule for names, from a
/// certificate, a configuration, a hello or gossip: a member's name is one a
/// certificate can carry.
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("it is longer than 63 characters")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        Some("it contains a character outside A-Z, a-z, 0-9, '.', '_' and '-'")
    } else if name.starts_with('.') {
        Some("it starts with '.'")
    } else if name.eq_ignore_ascii_case("ca") {
        Some("\"ca\" is reserved for the cluster CA files")
    } else {
        None
    }
}

/// Why `addr` cannot be where a member accepts peers, if it cannot: a
/// wildcard, port 0, a multicast or broadcast address cannot be dialed.
pub fn addr_problem(addr: SocketAddr) -> Option<&'static str> {
    let ip = addr.ip();
    if ip.is_unspecified() {
        Some("a wildcard address")
    } else if addr.port() == 0 {
        Some("port 0")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip == std::net::Ipv4Addr::BROADCAST {
        Some("the broadcast address")
    } else {
        None
    }
}

/// One process start of a named member. Later starts compare greater.
///
/// `started_ms` is the wall clock at start; `node` breaks ties and is the
/// process's fresh random [`NodeId`], which also stamps its writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Incarnation {
    /// Unix ms at process start.
    pub started_ms: u64,
    /// The process's node id.
    pub node: NodeId,
}

/// A member: a stable name and the incarnation currently running it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberId {
    /// The operator-chosen name (also the certificate's name).
    pub name: String,
    /// Which process start.
    pub incarnation: Incarnation,
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.name, self.incarnation.node)
    }
}

/// How a member stands in this view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Known; collection waits for it.
    Active,
    /// Said goodbye; collection no longer waits for it.
    Left,
    /// Removed by an operator; collection no longer waits for it.
    Forgotten,
}

/// A member as gossiped between peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member.
    pub id: MemberId,
    /// Its status in the sender's view.
    pub status: Status,
    /// The address it accepts peers on, if known: how members find each
    /// other beyond the seeds.
    pub addr: Option<SocketAddr>,
}

/// What learning about a member changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// Nothing new.
    Known,
    /// A name seen for the first time.
    New,
    /// A newer incarnation replaced an older one: the old one's queued
    /// pushes must be dropped and its `synced` watermark is gone.
    Superseded {
        /// The incarnation that was replaced.
        old: Incarnation,
    },
    /// The incarnation learned about is older than one already known, or
    /// has left or been forgotten: refuse its data.
    Refused,
    /// The news is about this process: a newer incarnation of its own name
    /// exists, or it was forgotten. It must stop (or wipe and rejoin).
    SelfSuperseded,
    /// The name is new and the view already holds `max_members`: nothing
    /// was recorded. Its data must be refused, since collection would not
    /// wait for it.
    Ignored,
}

#[derive(Clone, Debug)]
struct Peer {
    incarnation: Incarnation,
    status: Status,
    /// Local time at which the last complete anti-entropy round with this
    /// incarnation started. `None` until one completes.
    synced_ms: Option<u64>,
    /// Where it accepts peers, if known.
    addr: Option<SocketAddr>,
}

/// This process's view of the membership. See the module docs.
#[derive(Clone, Debug)]
pub struct Members {
    me: MemberId,
    peers: BTreeMap<String, Peer>,
    /// Set once news of a newer incarnation of `me` (or of `me` being
    /// forgotten) arrives.
    self_superseded: bool,
    /// This process's own address, gossiped with `me`.
    my_addr: Option<SocketAddr>,
    /// Bumped on every change, so that the shell gossips only news.
    version: u64,
    /// Most members other than `me` kept. Departed ones count: their
    /// entries are what keeps a departure final.
    max_members: usize,
    /// Entries ignored as invalid, and new names ignored over the cap.
    ignored: Ignored,
}

/// What the view ignored: counters, monotonic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ignored {
    /// Gossiped or announced members with a name no certificate can carry,
    /// or an address no one can dial.
    pub invalid: u64,
    /// New names heard of while the view held `max_members`.
    pub over_cap: u64,
}

impl Members {
    /// A view that knows only `me`.
    pub fn new(me: MemberId) -> Self {
        Members {
            me,
            peers: BTreeMap::new(),
            self_superseded: false,
            my_addr: None,
            version: 0,
            max_members: DEFAULT_MAX_MEMBERS,
            ignored: Ignored::default(),
        }
    }

    /// Bounds the members kept, other than `me` (at least 1). Members
    /// already known stay; only new names are ignored past it.
    pub fn set_max_members(&mut self, n: usize) {
        self.max_members = n.max(1);
    }

    /// What was ignored so far.
    pub fn ignored(&self) -> Ignored {
        self.ignored
    }

    /// Counts one invalid member entry (a hello's, checked by the caller).
    pub fn note_invalid(&mut self) {
        self.ignored.invalid += 1;
    }

    /// Sets the address gossiped for `me`.
    pub fn set_my_addr(&mut self, addr: SocketAddr) {
        self.my_addr = Some(addr);
        self.version += 1;
    }

    /// A counter bumped on every change of the view.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Records where `id` accepts peers (from its hello or gossip). An
    /// address that cannot be dialed is ignored and counted.
    pub fn set_addr(&mut self, id: &MemberId, addr: SocketAddr) {
        if addr_problem(addr).is_some() {
            self.ignored.invalid += 1;
            return;
        }
        if let Some(p) = self.peers.get_mut(&id.name) {
            if p.incarnation == id.incarnation && p.addr != Some(addr) {
                p.addr = Some(addr);
                self.version += 1;
            }
        }
    }

    /// The known address of the member named `name`.
    pub fn addr_of(&self, name: &str) -> Option<SocketAddr> {
        self.peers.get(name).and_then(|p| p.addr)
    }

    /// This process.
    pub fn me(&self) -> &MemberId {
        &self.me
    }

    /// True once this process learned that it was superseded or forgotten.
    pub fn self_superseded(&self) -> bool {
        self.self_superseded
    }

    /// Learns of `id` with `status` (direct contact is `Active`).
    pub fn learn(&mut self, id: &MemberId, status: Status) -> Learned {
        let before = self.peers.get(&id.name).map(|p| (p.incarnation, p.status));
        let l = self.learn_inner(id, status);
        if self.peers.get(&id.name).map(|p| (p.incarnation, p.status)) != before {
            self.version += 1;
        }
        l
    }

    fn learn_inner(&mut self, id: &MemberId, status: Status) -> Learned {
        if id.name == self.me.name {
            if id.incarnation > self.me.incarnation
                || (id.incarnation == self.me.incarnation && status == Status::Forgotten)
            {
                self.self_superseded = true;
                return Learned::SelfSuperseded;
            }
            return if id.incarnation < self.me.incarnation { Learned::Refused } else { Learned::Known };
        }
        let full = self.peers.len() >= self.max_members;
        match self.peers.get_mut(&id.name) {
            None if full => {
                self.ignored.over_cap += 1;
                Learned::Ignored
            }
            None => {
                self.peers
                    .insert(id.name.clone(), Peer { incarnation: id.incarnation, status, synced_ms: None, addr: None });
                if status == Status::Active {
                    Learned::New
                } else {
                    Learned::Refused
                }
            }
            Some(p) if id.incarnation > p.incarnation => {
                let old = p.incarnation;
                *p = Peer { incarnation: id.incarnation, status, synced_ms: None, addr: None };
                if status == Status::Active {
                    Learned::Superseded { old }
                } else {
                    Learned::Refused
                }
            }
            Some(p) if id.incarnation < p.incarnation => Learned::Refused,
            Some(p) => {
                // Same incarnation: a departure is final.
                if status != Status::Active && p.status == Status::Active {
                    p.status = status;
                    p.synced_ms = None;
                }
                if p.status == Status::Active {
                    Learned::Known
                } else {
                    Learned::Refused
                }
            }
        }
    }

    /// Max-merges a peer's gossiped view into ours. An entry whose name no
    /// certificate can carry, or whose address cannot be dialed, is ignored
    /// and counted; so are new names once the view is full.
    ///
    /// Whoever sends the view is taken at its word, for any member: see
    /// ALGORITHM.md ("Membership") for what that allows and what bounds it.
    pub fn learn_gossip(&mut self, infos: &[MemberInfo]) -> Vec<(MemberId, Learned)> {
        let mut out = Vec::new();
        for i in infos {
            if name_problem(&i.id.name).is_some() || i.addr.is_some_and(|a| addr_problem(a).is_some()) {
                self.ignored.invalid += 1;
                continue;
            }
            let l = self.learn(&i.id, i.status);
            if let Some(a) = i.addr {
                self.set_addr(&i.id, a);
            }
            if !matches!(l, Learned::Known | Learned::Refused | Learned::Ignored) {
                out.push((i.id.clone(), l));
            }
        }
        out
    }

    /// Whether data from `id` must be refused: it is superseded, it left,
    /// or it was forgotten.
    pub fn is_refused(&self, id: &MemberId) -> bool {
        if id.name == self.me.name {
            return id.incarnation != self.me.incarnation;
        }
        match self.peers.get(&id.name) {
            None => false,
            Some(p) => {
                id.incarnation < p.incarnation || (id.incarnation == p.incarnation && p.status != Status::Active)
            }
        }
    }

    /// A graceful goodbye from `id`.
    pub fn leave(&mut self, id: &MemberId) -> Learned {
        self.learn(id, Status::Left)
    }

    /// An operator removes `name`, whatever incarnation runs it. Returns the
    /// incarnation forgotten, if the name was known and active.
    pub fn forget(&mut self, name: &str) -> Option<Incarnation> {
        let p = self.peers.get_mut(name)?;
        if p.status != Status::Active {
            return None;
        }
        p.status = Status::Forgotten;
        p.synced_ms = None;
        let inc = p.incarnation;
        self.version += 1;
        Some(inc)
    }

    /// Records a complete anti-entropy round with `id` that started at local
    /// time `started_ms`. Ignored unless `id` is the active incarnation.
    pub fn record_sync(&mut self, id: &MemberId, started_ms: u64) {
        if let Some(p) = self.peers.get_mut(&id.name) {
            if p.incarnation == id.incarnation && p.status == Status::Active {
                p.synced_ms = Some(p.synced_ms.map_or(started_ms, |s| s.max(started_ms)));
            }
        }
    }

    /// The collection watermark: a dead register whose local arrival time
    /// is before this has been seen by every active member (the oldest
    /// `synced` over all of them). `u64::MAX` when no other member is known.
    pub fn stable_before(&self) -> u64 {
        self.peers
            .values()
            .filter(|p| p.status == Status::Active)
            .map(|p| p.synced_ms.unwrap_or(0))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The view to gossip: every member known, with `me` first.
    pub fn gossip(&self) -> Vec<MemberInfo> {
        let mut v = vec![MemberInfo { id: self.me.clone(), status: Status::Active, addr: self.my_addr }];
        v.extend(self.peers.iter().map(|(name, p)| MemberInfo {
            id: MemberId { name: name.clone(), incarnation: p.incarnation },
            status: p.status,
            addr: p.addr,
        }));
        v
    }

    /// Active members other than `me`, with their `synced` watermark.
    pub fn active(&self) -> impl Iterator<Item = (MemberId, Option<u64>)> + '_ {
        self.peers
            .iter()
            .filter(|(_, p)| p.status == Status::Active)
            .map(|(name, p)| (MemberId { name: name.clone(), incarnation: p.incarnation }, p.synced_ms))
    }

    /// Every member known other than `me`: status, `synced` and address.
    pub fn all(&self) -> Vec<(MemberId, Status, Option<u64>, Option<SocketAddr>)> {
        self.peers
            .iter()
            .map(|(name, p)| {
                (MemberId { name: name.clone(), incarnation: p.incarnation }, p.status, p.synced_ms, p.addr)
            })
            .collect()
    }

    /// The incarnation currently known for `name`.
    pub fn incarnation_of(&self, name: &str) -> Option<Incarnation> {
        self.peers.get(name).map(|p| p.incarnation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, started: u64) -> MemberId {
        MemberId { name: name.into(), incarnation: Incarnation { started_ms: started, node: NodeId(started) } }
    }

    #[test]
    fn unknown_member_pauses_collection_until_synced() {
        let mut m = Members::new(id("a", 1));
        assert_eq!(m.stable_before(), u64::MAX);
        assert_eq!(m.learn(&id("b", 1), Status::Active), Learned::New);
        assert_eq!(m.stable_before(), 0);
        m.record_sync(&id("b", 1), 500);
        assert_eq!(m.stable_before(), 500);
    }

    #[test]
    fn newer_incarnation_supersedes_and_resets_watermark() {
        let mut m = Members::new(id("a", 1));
        m.learn(&id("b", 1), Status::Active);
        m.record_sync(&id("b", 1), 500);
        assert_eq!(m.learn(&id("b", 2), Status::Active), Learned::Superseded { old: id("b", 1).incarnation });
        assert_eq!(m.stable_before(), 0);
        assert!(m.is_refused(&id("b", 1)));
        assert!(!m.is_refused(&id("b", 2)));
        // A sync recorded for the old incarnation does not count.
        m.record_sync(&id("b", 1), 900);
        assert_eq!(m.stable_before(), 0);
    }

    #[test]
    fn departures_release_collection_and_are_final() {
        let mut m = Members::new(id("a", 1));
        m.learn(&id("b", 1), Status::Active);
        m.learn(&id("c", 1), Status::Active);
        m.leave(&id("b", 1));
        assert_eq!(m.forget("c"), Some(id("c", 1).incarnation));
        assert_eq!(m.stable_before(), u64::MAX);
        // Stale gossip cannot bring them back.
        assert_eq!(m.learn(&id("b", 1), Status::Active), Learned::Refused);
        assert!(m.is_refused(&id("c", 1)));
        // A new incarnation can.
        assert!(matches!(m.learn(&id("c", 2), Status::Active), Learned::Superseded { .. }));
    }

    fn info(name: &str, started: u64, addr: Option<&str>) -> MemberInfo {
        MemberInfo { id: id(name, started), status: Status::Active, addr: addr.map(|a| a.parse().unwrap()) }
    }

    #[test]
    fn the_stated_rule_is_the_checked_one() {
        assert!(NAME_RULE.starts_with(&format!("1 to {MAX_NAME_LEN} characters")));
        assert!(name_problem(&"x".repeat(MAX_NAME_LEN)).is_none());
        for bad in [".x", "ca", "a b"] {
            assert!(name_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn invalid_gossip_is_ignored_and_counted() {
        let mut m = Members::new(id("a", 1));
        let long = "x".repeat(MAX_NAME_LEN + 1);
        let bad = [
            info("", 1, None),
            info(&long, 1, None),
            info("no spaces", 1, None),
            info(".hidden", 1, None),
            info("CA", 1, None),
            info("n\u{e9}e", 1, None),
            info("zero", 1, Some("0.0.0.0:7000")),
            info("zero6", 1, Some("[::]:7000")),
            info("port0", 1, Some("127.0.0.1:0")),
            info("mcast", 1, Some("224.0.0.1:7000")),
            info("mcast6", 1, Some("[ff02::1]:7000")),
            info("bcast", 1, Some("255.255.255.255:7000")),
        ];
        let learned = m.learn_gossip(&bad);
        assert!(learned.is_empty(), "{learned:?}");
        assert!(m.all().is_empty(), "{:?}", m.all());
        assert_eq!(m.ignored(), Ignored { invalid: bad.len() as u64, over_cap: 0 });
        // Valid entries beside them still count.
        let ok = info("b-1.x_y", 1, Some("10.0.0.2:7946"));
        assert_eq!(m.learn_gossip(&[bad[0].clone(), ok]).len(), 1);
        assert_eq!(m.addr_of("b-1.x_y"), Some("10.0.0.2:7946".parse().unwrap()));
        // A known member's address is not replaced by one that cannot be
        // dialed.
        m.set_addr(&id("b-1.x_y", 1), "0.0.0.0:1".parse().unwrap());
        assert_eq!(m.addr_of("b-1.x_y"), Some("10.0.0.2:7946".parse().unwrap()));
        assert_eq!(m.ignored().invalid, bad.len() as u64 + 2);
    }

    #[test]
    fn the_view_is_capped_for_new_names_only() {
        let mut m = Members::new(id("a", 1));
        m.set_max_members(3);
        let many: Vec<MemberInfo> = (0..10).map(|i| info(&format!("n{i}"), 1, None)).collect();
        assert_eq!(m.learn_gossip(&many).len(), 3);
        assert_eq!(m.all().len(), 3);
        assert_eq!(m.ignored(), Ignored { invalid: 0, over_cap: 7 });
        assert_eq!(m.learn(&id("late", 1), Status::Active), Learned::Ignored);
        assert!(m.incarnation_of("late").is_none());
        // Known names still change: departures and newer incarnations.
        m.leave(&id("n0", 1));
        assert!(matches!(m.learn(&id("n1", 2), Status::Active), Learned::Superseded { .. }));
        assert_eq!(m.stable_before(), 0);
        // So does this process's own name, which is not in the table.
        assert_eq!(m.learn(&id("a", 2), Status::Active), Learned::SelfSuperseded);
        assert_eq!(m.all().len(), 3);
    }

    #[test]
    fn self_superseded_by_gossip() {
        let mut m = Members::new(id("a", 1));
        assert_eq!(m.learn(&id("a", 2), Status::Active), Learned::SelfSuperseded);
        assert!(m.self_superseded());
        let mut m = Members::new(id("a", 1));
        m.learn_gossip(&[MemberInfo { id: id("a", 1), status: Status::Forgotten, addr: None }]);
        assert!(m.self_superseded());
    }
}
