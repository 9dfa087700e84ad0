//! Waiting for a condition on a running mesh: checked again and again until
//! it holds, bounded by a deadline. The tests, the examples and `meshcache
//! demo` wait on replication this way, never with a fixed sleep. The
//! deadline is generous and only bounds a failure; the time the condition
//! took is returned for reports, never to judge a run by.
//!
//! ```no_run
//! # async fn demo(peers: &[meshcache::Mesh]) -> Result<(), meshcache::wait::NotWithin> {
//! use std::time::Duration;
//! use meshcache::wait::Wait;
//!
//! let took = Wait::new(Duration::from_secs(30))
//!     .until("every peer holds k", || peers.iter().all(|p| p.get(b"k").is_some()))
//!     .await?;
//! println!("replicated in {took:?}");
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::time::Duration;

/// What one check of a condition found: done, or not yet, with what is
/// still missing for the failure message.
pub trait Progress {
    /// `None` when the condition holds; otherwise what is missing (may be
    /// empty).
    fn missing(self) -> Option<String>;
}

/// `true` when the condition holds.
impl Progress for bool {
    fn missing(self) -> Option<String> {
        (!self).then(String::new)
    }
}

/// `None` when the condition holds, else a description of what is missing.
impl Progress for Option<String> {
    fn missing(self) -> Option<String> {
        self
    }
}

/// A condition that did not hold within its deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotWithin {
    /// The condition, as the caller described it.
    pub what: String,
    /// How long it was waited for.
    pub deadline: Duration,
    /// What the last check found missing (may be empty).
    pub missing: String,
}

impl fmt::Display for NotWithin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: not within {:?}", self.what, self.deadline)?;
        if !self.missing.is_empty() {
            write!(f, " ({})", self.missing)?;
        }
        Ok(())
    }
}

impl std::error::Error for NotWithin {}

/// How long to wait for a condition, and how often to check it.
#[derive(Clone, Copy, Debug)]
pub struct Wait {
    deadline: Duration,
    every: Duration,
}

impl Wait {
    /// How often a condition is checked unless [`Wait::every`] says
    /// otherwise.
    pub const DEFAULT_EVERY: Duration = Duration::from_millis(20);

    /// Waits at most `deadline`, checking every [`Wait::DEFAULT_EVERY`].
    pub const fn new(deadline: Duration) -> Wait {
        Wait { deadline, every: Self::DEFAULT_EVERY }
    }

    /// Checks every `every` instead: finer for a condition whose time is
    /// reported, coarser for an expensive check.
    pub const fn every(self, every: Duration) -> Wait {
        Wait { every, ..self }
    }

    /// Checks `cond` until it holds and returns how long that took, or
    /// fails with [`NotWithin`] once the deadline has passed. `what`
    /// describes the condition for the failure message.
    pub async fn until<P: Progress>(self, what: &str, mut cond: impl FnMut() -> P) -> Result<Duration, NotWithin> {
        self.until_async(what, || std::future::ready(cond())).await
    }

    /// As [`Wait::until`], for a condition that must await (a request to a
    /// server, say). A check still running at the deadline is abandoned.
    pub async fn until_async<P, F, Fut>(self, what: &str, mut cond: F) -> Result<Duration, NotWithin>
    where
        P: Progress,
        F: FnMut() -> Fut,
        Fut: Future<Output = P>,
    {
        let start = crate::env::stopwatch();
        let end = start + self.deadline;
        loop {
            let missing = match tokio::time::timeout_at(end, cond()).await {
                Ok(p) => match p.missing() {
                    None => return Ok(start.elapsed()),
                    Some(m) => m,
                },
                Err(_) => "the last check did not finish".to_owned(),
            };
            if crate::env::stopwatch() >= end {
                return Err(NotWithin { what: what.to_owned(), deadline: self.deadline, missing });
            }
            tokio::time::sleep(self.every).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let mut n = 0;
        Wait::new(Duration::from_secs(60))
            .every(Duration::from_millis(1))
            .until("third check", || {
                n += 1;
                n == 3
            })
            .await
            .unwrap();
        assert_eq!(n, 3);
    }

    #[tokio::test]
    async fn fails_at_the_deadline_saying_what_is_missing() {
        let short = Duration::from_millis(50);
        let e = Wait::new(short).every(Duration::from_millis(5)).until("k everywhere", || Some("c lacks k".to_owned()));
        assert_eq!(e.await.unwrap_err().to_string(), "k everywhere: not within 50ms (c lacks k)");
        let e = Wait::new(short).until("never", || false).await.unwrap_err();
        assert_eq!(e.to_string(), "never: not within 50ms");
    }

    #[tokio::test]
    async fn a_check_that_hangs_ends_at_the_deadline() {
        let e = Wait::new(Duration::from_millis(50)).until_async("hangs", std::future::pending::<bool>);
        assert_eq!(e.await.unwrap_err().missing, "the last check did not finish");
    }
}
