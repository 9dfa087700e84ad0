//! Settings of one peer, with documented defaults and validation.
//!
//! [`MeshConfig`] is what the embedded API and the binary both build; the
//! binary fills it from a TOML file, `MESHCACHE_*` environment variables and
//! flags (see `src/main.rs`), the embedded API through [`crate::MeshBuilder`].

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::membership::NAME_RULE;

mod seed;
pub use seed::{Seed, SeedError};

/// Why a configuration is invalid. Nothing was started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeshConfigError {
    /// A field has a value it cannot take.
    #[error("invalid setting `{field}`: {why}")]
    Invalid {
        /// The field (as named in the TOML file).
        field: &'static str,
        /// What is wrong, and what would be right.
        why: String,
    },
}

fn invalid(field: &'static str, why: impl Into<String>) -> MeshConfigError {
    MeshConfigError::Invalid { field, why: why.into() }
}

/// The smallest `receive_window`: one push batch must fit.
const MIN_RECEIVE_WINDOW: usize = 64 * 1024;
/// The largest `receive_window` QUIC can carry (a variable-length integer).
const MAX_RECEIVE_WINDOW: usize = (1 << 62) - 1;

/// Settings of one peer. Durations are in milliseconds in TOML, except
/// `push_delay` (microseconds).
///
/// Start from a default (`MeshConfig { name, ..MeshConfig::default() }`,
/// [`MeshConfig::for_test`], or [`crate::MeshBuilder`]) rather than
/// listing every field, so that a setting added later needs no change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// This peer's name: unique in the mesh, and the name in its
    /// certificate. 1 to 63 characters of `[A-Za-z0-9._-]`, not starting
    /// with `.`, and not `ca`.
    pub name: String,
    /// Where the peer accepts QUIC connections from other peers.
    pub listen: SocketAddr,
    /// The address other peers should dial (defaults to `listen`; required
    /// when `listen` is a wildcard address).
    pub advertise: Option<SocketAddr>,
    /// Peers to join through. Only a way in: the mesh learns every member
    /// from them and survives their death. A seed given by DNS name is
    /// resolved again on every dial round, and each address it resolves to
    /// is a seed.
    pub seeds: Vec<Seed>,
    /// Largest clock offset tolerated between peers (ms). Peers further
    /// apart are refused at the hello; remote stamps further ahead are not
    /// adopted.
    #[serde(with = "ms")]
    pub max_offset: Duration,
    /// Period of anti-entropy rounds with a random peer (ms).
    #[serde(with = "ms")]
    pub anti_entropy_interval: Duration,
    /// How long a push waits to gather more writes into its batch
    /// (microseconds in TOML, at most 1000; 0, the default, sends once the
    /// tasks ready to run have run, with no timer). Writes still batch
    /// naturally: whatever queues meanwhile, or while a batch is being sent,
    /// goes in the batch. tokio's timer rounds a non-zero delay up to its
    /// 1 ms resolution.
    #[serde(with = "us")]
    pub push_delay: Duration,
    /// Target bytes of writes per pushed batch.
    pub push_batch_bytes: usize,
    /// Bound on each peer's push queue: the bytes its queued writes hold
    /// (key, value and about 100 bytes of queue slot each). On overflow
    /// the queue is dropped and that peer is repaired by anti-entropy
    /// instead: writers never block.
    pub push_queue_bytes: usize,
    /// Largest frame accepted from a peer (bytes).
    pub max_frame: usize,
    /// Most bytes a peer may have sent on one connection that this peer
    /// has not read yet (QUIC flow control; also the cap per stream and on
    /// what this peer sends unacknowledged). `None`: quinn's defaults (no
    /// cap per connection, 1.25 MB per stream). A peer that reads slowly
    /// then slows its senders instead of buffering for them.
    pub receive_window: Option<usize>,
    /// A peer started with seeds accepts writes once it has synced with one;
    /// if no seed answers for this long (ms), it starts on its own.
    #[serde(with = "ms")]
    pub bootstrap_timeout: Duration,
    /// How long a peer that leaves ([`crate::Mesh::shutdown`]) waits for
    /// each peer to confirm it has read every write queued for it, before
    /// it says goodbye anyway (ms). A peer not confirmed in time may miss
    /// the writes still in flight until anti-entropy with another peer
    /// repairs it. The `meshcache` command also bounds, by the same time,
    /// the wait for its Redis clients' commands in flight.
    #[serde(with = "ms")]
    pub drain_timeout: Duration,
    /// QUIC keep-alive period (ms).
    #[serde(with = "ms")]
    pub keep_alive: Duration,
    /// A connection silent this long is closed (ms); a dead link is thus
    /// noticed within this time.
    #[serde(with = "ms")]
    pub idle_timeout: Duration,
    /// Period of timer work: expiry, tombstone collection (ms).
    #[serde(with = "ms")]
    pub tick_interval: Duration,
    /// Memory bound (bytes); `None` for unbounded. It bounds the values'
    /// estimated bytes, and the whole process when the peer has an
    /// allocator probe, as the `meshcache` command does (ALGORITHM.md, "The
    /// memory bound").
    pub max_bytes: Option<usize>,
    /// What to evict first past `max_bytes`: a Redis `maxmemory-policy`
    /// name (`allkeys-lru` by default, `allkeys-lfu`, `volatile-ttl`,
    /// `noeviction`, ...).
    pub eviction_policy: crate::store::EvictionPolicy,
    /// Entries sampled per eviction (Redis's `maxmemory-samples`), 1 to 64.
    pub eviction_samples: usize,
    /// Budget of tombstones before compaction, and of eviction stubs before
    /// the oldest become ghosts early; under a memory bound, each is also
    /// at most an eighth of it.
    pub max_tombstones: usize,
    /// Store shards (a power of two).
    pub shards: usize,
    /// Most members this peer keeps in its view, other than itself (above
    /// 0). Past it, new names heard of in gossip or hellos are ignored and
    /// counted (`members_over_cap`), and their hellos refused; members
    /// already known are kept and updated. Departed members count, since
    /// their entries keep a departure final: a mesh that goes through more
    /// distinct names than this over its life must raise it.
    pub max_members: usize,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            name: String::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7946)),
            advertise: None,
            seeds: Vec::new(),
            max_offset: Duration::from_millis(500),
            anti_entropy_interval: Duration::from_secs(1),
            push_delay: Duration::ZERO,
            push_batch_bytes: 64 * 1024,
            push_queue_bytes: 32 << 20,
            max_frame: crate::wire::DEFAULT_MAX_FRAME,
            receive_window: None,
            bootstrap_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(3),
            tick_interval: Duration::from_millis(100),
            max_bytes: None,
            eviction_policy: crate::store::EvictionPolicy::default(),
            eviction_samples: crate::store::evict::DEFAULT_SAMPLES,
            max_tombstones: 1_000_000,
            shards: 64,
            max_members: crate::membership::DEFAULT_MAX_MEMBERS,
        }
    }
}

impl MeshConfig {
    /// Settings for tests: short intervals so that convergence and failure
    /// detection take a fraction of a second.
    pub fn for_test(name: &str) -> Self {
        MeshConfig {
            name: name.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            anti_entropy_interval: Duration::from_millis(200),
            bootstrap_timeout: Duration::from_secs(3),
            ..MeshConfig::default()
        }
    }

    /// Shrinks the buffers that would not fit inside `max_bytes` when it
    /// bounds the whole process (the `meshcache` command): each peer's push
    /// queue to a thirty-second of it, and the windows of each connection
    /// (what a peer may send unread, and what this peer keeps sent and
    /// unacknowledged: `receive_window` sets both) to a sixty-fourth. A
    /// full queue is dropped and anti-entropy repairs that peer, so a small
    /// queue costs repair traffic, not data; a small window costs a fast
    /// sender some speed (1 MiB a round trip at the 64 MiB bound). The
    /// windows can fill between two readings of the allocator, so the
    /// memory loop keeps two of them free per connection; for a peer
    /// linked to two others that is the sixteenth of the bound it keeps
    /// free anyway.
    /// `max_frame` stays: peers must agree on it (a frame one peer may send
    /// and another refuses would stall their sessions), and a frame's
    /// buffer grows only with the bytes a peer actually sends, which the
    /// process bound counts.
    pub fn fit_to_bound(&mut self) {
        if let Some(max) = self.max_bytes {
            self.push_queue_bytes = self.push_queue_bytes.min(max / 32).max(self.push_batch_bytes);
            let window = self.receive_window.unwrap_or(usize::MAX).min(max / 64).max(MIN_RECEIVE_WINDOW);
            self.receive_window = Some(window);
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), MeshConfigError> {
        if self.receive_window.is_some_and(|w| !(MIN_RECEIVE_WINDOW..=MAX_RECEIVE_WINDOW).contains(&w)) {
            return Err(invalid("receive_window", "must be between 64 KiB and 2^62 - 1 bytes"));
        }
        validate_name(&self.name)?;
        if self.advertise.is_none() && self.listen.ip().is_unspecified() {
            return Err(invalid("advertise", "required when `listen` is a wildcard address"));
        }
        if let Some(a) = self.advertise {
            if a.ip().is_unspecified() || a.port() == 0 {
                return Err(invalid("advertise", format!("{a} cannot be dialed")));
            }
        }
        if self.max_offset.is_zero() {
            return Err(invalid("max_offset", "must be above 0"));
        }
        if self.anti_entropy_interval.is_zero() {
            return Err(invalid("anti_entropy_interval", "must be above 0"));
        }
        if self.push_delay > Duration::from_millis(1) {
            return Err(invalid("push_delay", "at most 1 ms: pushes are the fast path"));
        }
        if self.push_batch_bytes == 0 || self.push_batch_bytes > self.max_frame / 2 {
            return Err(invalid("push_batch_bytes", "must be above 0 and at most half of max_frame"));
        }
        if self.push_queue_bytes < self.push_batch_bytes {
            return Err(invalid("push_queue_bytes", "must be at least push_batch_bytes"));
        }
        if self.max_frame < 64 * 1024 || self.max_frame > u32::MAX as usize {
            return Err(invalid("max_frame", "must be between 64 KiB and 4 GiB"));
        }
        if self.keep_alive.is_zero() || self.idle_timeout <= self.keep_alive {
            return Err(invalid("idle_timeout", "must be above keep_alive, which must be above 0"));
        }
        if self.tick_interval.is_zero() {
            return Err(invalid("tick_interval", "must be above 0"));
        }
        if self.max_bytes == Some(0) {
            return Err(invalid("max_bytes", "must be above 0 (omit it for no bound)"));
        }
        if self.eviction_samples == 0 || self.eviction_samples > crate::store::evict::MAX_SAMPLES {
            return Err(invalid(
                "eviction_samples",
                format!("must be between 1 and {}", crate::store::evict::MAX_SAMPLES),
            ));
        }
        if self.max_tombstones < 2 {
            return Err(invalid("max_tombstones", "must be at least 2"));
        }
        if !self.shards.is_power_of_two() || self.shards > crate::store::digest::BUCKETS {
            return Err(invalid("shards", "must be a power of two up to 65536"));
        }
        if self.max_members == 0 {
            return Err(invalid("max_members", "must be above 0"));
        }
        Ok(())
    }
}

/// Checks a peer name against the one rule for member names
/// ([`crate::membership::name_problem`]), which certificate loading applies
/// too: a name that passes here is one a certificate can carry.
pub fn validate_name(name: &str) -> Result<(), MeshConfigError> {
    match crate::membership::name_problem(name) {
        Some(reason) => Err(invalid("name", format!("{name:?}: {reason}; use {NAME_RULE}"))),
        None => Ok(()),
    }
}

/// Durations as integer milliseconds in TOML.
mod ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// Durations as integer microseconds in TOML.
mod us {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_micros() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_micros(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_once_named() {
        assert!(MeshConfig::default().validate().is_err(), "a name is required");
        MeshConfig::for_test("a").validate().unwrap();
        MeshConfig { name: "a".into(), ..MeshConfig::default() }.validate().unwrap();
    }

    #[test]
    fn bad_values_name_the_field() {
        let base = MeshConfig::for_test("a");
        let cases: Vec<(MeshConfig, &str)> = vec![
            (MeshConfig { name: "no spaces".into(), ..base.clone() }, "name"),
            (MeshConfig { push_delay: Duration::from_millis(5), ..base.clone() }, "push_delay"),
            (MeshConfig { shards: 3, ..base.clone() }, "shards"),
            (MeshConfig { listen: "0.0.0.0:7000".parse().unwrap(), ..base.clone() }, "advertise"),
            (MeshConfig { idle_timeout: Duration::from_millis(100), ..base.clone() }, "idle_timeout"),
            (MeshConfig { max_tombstones: 1, ..base.clone() }, "max_tombstones"),
            (MeshConfig { eviction_samples: 0, ..base.clone() }, "eviction_samples"),
            (MeshConfig { eviction_samples: 65, ..base.clone() }, "eviction_samples"),
            (MeshConfig { max_members: 0, ..base.clone() }, "max_members"),
            (MeshConfig { name: ".hidden".into(), ..base.clone() }, "name"),
            (MeshConfig { name: "ca".into(), ..base.clone() }, "name"),
        ];
        for (c, field) in cases {
            let MeshConfigError::Invalid { field: f, .. } = c.validate().unwrap_err();
            assert_eq!(f, field);
        }
    }

    #[test]
    fn toml_round_trip_and_unknown_fields() {
        let c = MeshConfig {
            name: "a".into(),
            seeds: vec!["127.0.0.1:7000".parse().unwrap(), "seeds.example:7946".parse().unwrap()],
            ..Default::default()
        };
        let text = toml::to_string(&c).unwrap();
        let back: MeshConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
        let err = toml::from_str::<MeshConfig>("seeds = [\"seeds.example\"]").unwrap_err().to_string();
        assert!(err.contains("a seed is ADDR:PORT or NAME:PORT"), "{err}");
        let err = toml::from_str::<MeshConfig>("nmae = \"a\"").unwrap_err().to_string();
        assert!(err.contains("nmae"), "{err}");
        let partial: MeshConfig = toml::from_str("name = \"b\"\nmax_offset = 250").unwrap();
        assert_eq!(partial.max_offset, Duration::from_millis(250));
        assert_eq!(partial.anti_entropy_interval, MeshConfig::default().anti_entropy_interval);
    }
}
