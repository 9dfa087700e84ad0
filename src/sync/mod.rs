//! Anti-entropy: the session state machine that walks two replicas' digest
//! trees ([`crate::store::digest`]) to find and exchange exactly the
//! registers they disagree on.

pub mod session;

pub use session::{Mode, Phase, Role, Session, SessionStats, SyncError};
