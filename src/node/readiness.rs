//! Whether a peer should be sent traffic: what a readiness probe asks.

use std::fmt;

/// A peer's readiness ([`crate::Mesh::readiness`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Bootstrapped and running: send it traffic.
    Ready,
    /// Started with seeds and not yet synced with one: it answers writes
    /// with `LOADING` (a Redis client sees `-LOADING`).
    Loading,
    /// Leaving ([`crate::Mesh::start_draining`] or
    /// [`crate::Mesh::shutdown`]): it finishes what it has, and should be
    /// sent nothing new.
    Draining,
    /// Stopped because a newer incarnation of its name joined the mesh, or
    /// an operator forgot it.
    Superseded,
    /// Stopped by [`crate::Mesh::shutdown`].
    Stopped,
}

impl Readiness {
    /// True only for [`Readiness::Ready`].
    pub fn is_ready(self) -> bool {
        self == Readiness::Ready
    }

    /// One word: `ready`, `loading`, `draining`, `superseded`, `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Readiness::Ready => "ready",
            Readiness::Loading => "loading",
            Readiness::Draining => "draining",
            Readiness::Superseded => "superseded",
            Readiness::Stopped => "stopped",
        }
    }

    /// One line for an operator: the word, and why.
    pub fn reason(self) -> &'static str {
        match self {
            Readiness::Ready => "ready",
            Readiness::Loading => "loading: not yet synced with a seed (writes get LOADING)",
            Readiness::Draining => "draining: leaving the mesh",
            Readiness::Superseded => "superseded: a newer incarnation of this name joined, or it was forgotten",
            Readiness::Stopped => "stopped: the peer left the mesh",
        }
    }
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
