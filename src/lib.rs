//! meshcache: a CRDT-based, eventually consistent cache mesh.
//!
//! Every peer holds a copy of the whole keyspace. Entries are last-writer-wins
//! registers stamped by a hybrid logical clock; deletes are tombstones;
//! peers push deltas and repair whatever was lost with anti-entropy over a
//! digest tree. Concurrent writes converge to the same winner everywhere,
//! with no coordinator.
//!
//! The crate has two layers. The deterministic core ([`hlc`], [`store`],
//! [`membership`], [`replica`], [`sync`], [`wire`]) holds no sockets, no
//! async runtime, no system clock and no global random number generator:
//! time is always an argument (`now_ms`, Unix milliseconds) and randomness
//! a seed, so the same code runs under the mesh shell, in a simulation with
//! virtual time, and inside a unit test. The mesh shell ([`node`],
//! [`transport`]) runs the core over QUIC with mutual TLS on tokio: a
//! [`Mesh`] is one peer embedded in an application; with the `server`
//! feature, `resp` serves it to Redis clients and `admin` to operators, and
//! the `meshcache` binary runs one as a process. The shell reads the time
//! and draws randomness only through an [`env::Env`], which a simulation
//! replaces with its virtual clock and a seed.
//!
//! ```
//! use bytes::Bytes;
//! use meshcache::hlc::NodeId;
//! use meshcache::membership::{Incarnation, MemberId};
//! use meshcache::replica::Replica;
//! use meshcache::store::StoreConfig;
//! use meshcache::sync::Session;
//!
//! let id = |name: &str, n| MemberId {
//!     name: name.into(),
//!     incarnation: Incarnation { started_ms: 0, node: NodeId(n) },
//! };
//! let a = Replica::new(id("a", 1), StoreConfig::default(), true).unwrap();
//! let b = Replica::new(id("b", 2), StoreConfig::default(), true).unwrap();
//! let now = 1_700_000_000_000;
//! a.put(Bytes::from("k"), Bytes::from("v"), None, now).unwrap();
//!
//! // One anti-entropy session, with messages handed across by hand.
//! let mut s = Session::initiate(&a, now);
//! let mut r = Session::respond(now);
//! while !(s.is_finished() && r.is_finished()) {
//!     while let Some(m) = s.poll_transmit(&a) { r.handle_message(&b, m, now).unwrap(); }
//!     while let Some(m) = r.poll_transmit(&b) { s.handle_message(&a, m, now).unwrap(); }
//! }
//! assert_eq!(b.get(b"k", now), Some(Bytes::from("v")));
//! ```
//!
//! # Layout
//!
//! The core:
//!
//! - [`hlc`]: `Stamp` and `Clock`, the hybrid logical clock; physical time
//!   passed in.
//! - [`store`]: the sharded map of LWW registers: TTL, eviction into stubs,
//!   memory accounting, the digest tree and its upkeep
//!   ([`store::digest`]), tombstone collection, `gc_floor`, `clear_below`
//!   and compaction.
//! - [`membership`]: names, incarnations and the per-member `synced`
//!   watermarks that decide when collection is safe.
//! - [`replica`]: one peer's core, tying store and membership together
//!   (bootstrap, pushes, timer work).
//! - [`sync`]: the anti-entropy session state machine.
//! - [`wire`]: the `Message` enum, its postcard codec and frame limits.
//!
//! The shell:
//!
//! - [`env`](mod@env): the shell's one source of time and randomness.
//! - [`config`]: [`MeshConfig`], a peer's settings, defaults and validation.
//! - [`transport`]: the certificate files ([`transport::certs`]) and the
//!   rustls / quinn configurations ([`transport::tls`]). A running peer
//!   takes a new certificate, key and CA bundle with [`Mesh::reload_tls`]
//!   (certificate rotation, CA roll-over) without dropping its connections.
//! - [`node`]: the tokio + quinn peer and its embedded API, [`Mesh`].
//! - `resp`: the Redis-protocol front door (the `server` feature).
//! - `admin`: the loopback admin port (the `server` feature).
//!
//! For measuring and checking a running mesh: [`stats`] (percentiles and
//! medians for reports) and [`wait`] (waiting for a condition with a
//! deadline instead of a fixed sleep).
//!
//! Errors are `thiserror` enums, one per boundary, each in the module of
//! its boundary and named for it: [`hlc::ClockError`],
//! [`store::StoreConfigError`], [`replica::WriteError`],
//! [`replica::PeerError`], [`sync::SyncError`], [`wire::WireError`], and in
//! the shell [`config::MeshConfigError`], [`transport::certs::CertError`]
//! and [`MeshError`].
//!
//! ALGORITHM.md, beside Cargo.toml, explains the protocol.
//!
//! # Features
//!
//! - Without default features (`default-features = false`): the core
//!   above, and the mesh around it: [`env`](mod@env), [`config`]
//!   (`MeshConfig`, its defaults, validation and serde derives),
//!   [`transport`] (certificates and TLS) and [`node`] (the embedded
//!   [`Mesh`]).
//! - `server` (default): adds `resp`, the Redis-protocol server, and
//!   `admin`, the admin port, and builds the `meshcache` command with its
//!   CLI, TOML config file, log output and Prometheus exporter.
//! - `faults`: partition testing on real QUIC: the invariant checker
//!   (`check`) and fault injection (`transport::faults`,
//!   `MeshBuilder::socket`).
//! - `testing`: `faults` and the test-only hooks, never for production: the
//!   switches that plant known bugs (`store::Bug`), `Mesh::halt` and
//!   `EphemeralCa::seeded`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "server")]
pub mod admin;
#[cfg(any(test, feature = "faults"))]
pub mod check;
pub mod config;
pub mod env;
pub mod hlc;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
mod listen;
mod locks;
pub mod membership;
pub mod node;
pub mod replica;
#[cfg(feature = "server")]
pub mod resp;
pub mod stats;
pub mod store;
pub mod sync;
pub mod transport;
pub mod wait;
pub mod wire;

pub use config::{MeshConfig, Seed};
pub use node::{
    Changes, Event, LoadError, MemberStatus, Mesh, MeshBuilder, MeshError, MeshStats, MessageListener, Readiness,
    Transaction, VersionRefusal, Why,
};
pub use store::{Change, ChangeKind, Origin};
pub use transport::certs::{load_identity, CertInfo, EphemeralCa, Identity};

/// The README's Rust examples, compiled by `cargo test --doc` so that they
/// keep up with the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
