//! The locks every module takes: parking_lot's, checked for their order in
//! debug builds.
//!
//! With `debug_assertions` on (debug builds and the test profile), taking a
//! lock adds an edge to one graph for the process, from the lock its thread
//! took last and still holds to the new one, and an edge that would close a
//! cycle panics at once; the panic's backtrace shows the path that closed
//! it. The edges keep no backtraces of their own: with `RUST_BACKTRACE` set
//! they took 4 MB of a debug peer bounded to 16 MiB (a peer of
//! `tests/memory_bound.rs` held 16.0 MB against 11.9 MB without the check,
//! and 12.2-12.3 MB with the check and no backtraces), and in one run
//! pushed it past its bound. Two paths that take the same two locks in
//! opposite orders are a deadlock waiting for the right interleaving; this
//! finds them the first time both paths run, in any test, however the
//! threads were scheduled. A release build uses parking_lot's locks
//! unchanged.
//!
//! The order the code keeps is in ALGORITHM.md, "Locks and their order": a
//! store's shard locks first, in increasing index, and nothing takes a
//! shard lock while it holds another kind.

pub use tracing_mutex::parkinglot::{Mutex, RwLock, RwLockWriteGuard};
