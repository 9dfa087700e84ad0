//! The tokio + quinn shell around the core, and the embedded API: [`Mesh`].
//!
//! One QUIC connection per peer pair, with traffic split by kind:
//!
//! - the first bi stream carries the hello exchange (versions, clocks,
//!   name);
//!   a peer counts as authenticated only once it is done;
//! - one long-lived uni stream per direction carries pushed delta batches;
//! - every anti-entropy session runs on a bi stream of its own.
//!
//! Locks are never held across an `.await`: the store's are taken inside
//! synchronous core calls, and the peer table's only to look up or swap an
//! entry.
//!
//! Each file has one job:
//!
//! - `mesh`: the [`Mesh`] handle, what an application calls;
//! - `builder`: [`MeshBuilder`], which assembles and starts a peer;
//! - `error`: [`MeshError`];
//! - `inner`: the state a peer's tasks share;
//! - `links` (sans-IO) decides what to do with connections and when rounds
//!   run; `driver` feeds it events and executes its actions;
//! - `hello`, `accept`, `dial`: turning a QUIC connection into a peer's
//!   link, from either side;
//! - `versions`: the version range after a hello, the version a dial
//!   names, and refusals for versions;
//! - `conn`: close codes, protocol errors and the end of a connection;
//! - `push`: the uni streams, pushes and goodbyes, both ways;
//! - `sessions`: anti-entropy sessions on bi streams, both ways;
//! - `stream`: framing on a QUIC stream, and running one session over it;
//! - `queue`: a peer's bounded push queue;
//! - `memory`: a memory bound on the whole process, from an allocator probe;
//! - `rtt`: what a dial assumes of the network before it hears back;
//! - `reload`: the TLS material new connections use, and swapping it while
//!   the peer runs ([`Mesh::reload_tls`]);
//! - `timer`: expiry, collection, the bootstrap timeout and gauges.

mod accept;
mod builder;
mod changes;
mod conn;
mod dial;
mod driver;
mod error;
mod fill;
mod hello;
mod inner;
mod leases;
mod links;
mod memory;
mod mesh;
mod pubsub;
mod push;
mod queue;
mod readiness;
mod reload;
mod rtt;
mod sessions;
mod stream;
pub(crate) mod taps;
mod timer;
mod txn;
mod versions;

pub use builder::MeshBuilder;
pub use changes::{Changes, Event, Why};
pub use error::MeshError;
pub use fill::LoadError;
pub use memory::{MemoryProbe, MIN_PROCESS_BYTES};
pub use mesh::{MemberStatus, Mesh, MeshStats};
pub use pubsub::MessageListener;
pub use readiness::Readiness;
pub use txn::Transaction;
pub use versions::VersionRefusal;

#[cfg(feature = "server")]
pub(crate) use queue::PushWakes;
