//! The locks every module takes: parking_lot's, checked for their order in
//! debug builds.
//!
//! With `debug_assertions` on (debug builds and the test profile), taking a
//! lock adds an edge to one graph for the process, from the lock its thread
//! took last and still holds to the new one, and an edge that would close a
//! cycle panics at once (with the backtraces of the edges in the cycle when
//! `RUST_BACKTRACE` is set). Two paths that take the same two locks in
//! opposite orders are a deadlock waiting for the right interleaving; this
//! finds them the first time both paths run, in any test, however the
//! threads were scheduled. A release build uses parking_lot's locks
//! unchanged.
//!
//! The order the code keeps is in ALGORITHM.md, "Locks and their order": a
//! store's shard locks first, in increasing index, and nothing takes a
//! shard lock while it holds another kind.

pub use tracing_mutex::parkinglot::{Mutex, RwLock, RwLockWriteGuard};
