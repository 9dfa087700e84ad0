//! Anti-entropy: the digest tree and the session state machine that uses it
//! to find and exchange exactly the registers two replicas disagree on.

pub mod digest;
pub mod session;

pub use session::{Mode, Phase, Role, Session, SessionStats, SyncError};
