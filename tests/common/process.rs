//! Child processes in tests: the `meshcache` binary (its addresses read
//! from `--addr-file`, so that every port comes from the system), exits
//! waited for with a deadline, temporary directories, and outside tools.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshcache::wait::Wait;

use super::wait::DEADLINE;

/// The `meshcache` binary of this build.
pub const BIN: &str = env!("CARGO_BIN_EXE_meshcache");

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "meshcache-{tag}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop, so that a failing test leaves none behind.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where a `meshcache node` listens, as its `--addr-file` says.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub quic: SocketAddr,
    pub resp: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

impl Addrs {
    fn parse(text: &str) -> Addrs {
        let get = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).map(|a| a.parse::<SocketAddr>().unwrap())
        };
        Addrs {
            quic: get("quic").unwrap_or_else(|| panic!("no quic line in the address file:\n{text}")),
            resp: get("resp"),
            admin: get("admin"),
            metrics: get("metrics"),
        }
    }
}

/// Waits until the node `child`, started with `--addr-file addr_file`, has
/// written it, and returns its addresses. Fails, with the node's `log`, if
/// the node exits first or does not write it within [`DEADLINE`].
pub async fn node_addrs(child: &mut Child, addr_file: &Path, log: &Path) -> Addrs {
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    let mut text = None;
    let written = Wait::new(DEADLINE)
        .until("the node writes its address file", || {
            if let Some(s) = child.try_wait().unwrap() {
                panic!("the node exited with {s} before it was ready; its log:\n{}", log_text());
            }
            text = std::fs::read_to_string(addr_file).ok();
            text.is_some()
        })
        .await;
    if let Err(e) = written {
        panic!("{e}; the node's log:\n{}", log_text());
    }
    Addrs::parse(&text.unwrap_or_default())
}

/// Waits up to `limit` for `child` to exit; `None` if it is still running.
pub async fn exited(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let mut status = None;
    let _ = Wait::new(limit)
        .until("the process exits", || {
            status = child.try_wait().unwrap();
            status.is_some()
        })
        .await;
    status
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &Child) {
    let id = child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &id]).status().expect("`kill` (procps) sends SIGTERM");
    assert!(sent.success(), "kill -TERM {id}: {sent}");
}

/// Whether the command-line tool `name` (Debian package `package`) runs,
/// for a test that needs it. When it does not: under CI (`CI=true`) the
/// test fails saying so, as CI must run every check; elsewhere it prints a
/// note and the caller skips.
pub fn tool(name: &str, package: &str) -> bool {
    let run = Command::new(name).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    match run {
        Ok(s) if s.success() => true,
        Ok(s) => panic!("`{name} --version` failed ({s}): is {package} broken?"),
        Err(e) => {
            let missing = format!("{name} cannot be run ({e}); install {package} (scripts/test does, as root)");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{missing}: under CI (CI=true) its checks must run, not be skipped");
            }
            println!("skipped: {missing}");
            false
        }
    }
}
