//! Waiting in tests: for a condition, with a generous deadline that only
//! bounds a failure (never a timing assertion), on `meshcache::wait`.

use std::future::Future;
use std::time::Duration;

use meshcache::wait::Wait;

/// Generous: convergence is checked against a deadline, never timed.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Fails the test unless `f` holds within [`DEADLINE`].
pub async fn eventually(what: &str, f: impl FnMut() -> bool) {
    if let Err(e) = Wait::new(DEADLINE).until(what, f).await {
        panic!("{e}");
    }
}

/// [`eventually`] for a condition that awaits (a request to a server).
pub async fn eventually_async<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if let Err(e) = Wait::new(DEADLINE).until_async(what, f).await {
        panic!("{e}");
    }
}

/// Checks that `prop` (described by `holds`) is true at every check until
/// `until` (described by `until_what`) is, which must happen within
/// [`DEADLINE`]. For a property that must hold while something is absent
/// (a peer down, a link cut): the window ends at an event after which the
/// property would have failed were it not true, such as rounds that would
/// have carried a write across; how long it lasts is no criterion.
pub async fn holds_until(
    holds: &str,
    mut prop: impl FnMut() -> bool,
    until_what: &str,
    mut until: impl FnMut() -> bool,
) {
    let mut broken = false;
    let what = format!("{until_what} (while checking that {holds})");
    let ended = Wait::new(DEADLINE)
        .until(&what, || {
            broken = !prop();
            broken || until()
        })
        .await;
    assert!(!broken, "no longer true: {holds} (before {until_what})");
    if let Err(e) = ended {
        panic!("{e}");
    }
}

/// Runs `f` to completion on a runtime of its own: the waits above, for a
/// test that has no runtime.
pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime").block_on(f)
}
