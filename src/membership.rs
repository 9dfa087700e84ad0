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
//! DESIGN.md ("Tombstones") explains why a timeout must never remove one.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::hlc::NodeId;

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
}

impl Members {
    /// A view that knows only `me`.
    pub fn new(me: MemberId) -> Self {
        Members { me, peers: BTreeMap::new(), self_superseded: false, my_addr: None, version: 0 }
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

    /// Records where `id` accepts peers (from its hello or gossip).
    pub fn set_addr(&mut self, id: &MemberId, addr: SocketAddr) {
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
        match self.peers.get_mut(&id.name) {
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

    /// Max-merges a peer's gossiped view into ours.
    pub fn learn_gossip(&mut self, infos: &[MemberInfo]) -> Vec<(MemberId, Learned)> {
        let mut out = Vec::new();
        for i in infos {
            let l = self.learn(&i.id, i.status);
            if let Some(a) = i.addr {
                self.set_addr(&i.id, a);
            }
            if !matches!(l, Learned::Known | Learned::Refused) {
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
