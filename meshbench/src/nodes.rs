//! `meshcache node` processes, as a user runs them: each its own process
//! on the command's allocator, with its own runtime, certificates from
//! `meshcache certs`, and ports the system picks (read back from
//! `--addr-file`). Rows 1, 2 and 9 run these; a child is killed when
//! its `Node` is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::{Client, Reply};

/// One `meshcache node` child, killed on drop.
pub(super) struct Node {
    pub(super) child: tokio::process::Child,
    pub(super) resp: SocketAddr,
    pub(super) quic: SocketAddr,
}

/// Starts `names.len()` nodes in `dir` (certificates made there first),
/// each after the first seeded with the first, with `extra` flags each;
/// returns once every node has a link to every other and the first takes
/// writes.
pub(super) async fn start_mesh(bin: &Path, dir: &Path, names: &[&str], extra: &[&str]) -> Result<Vec<Node>> {
    if !bin.exists() {
        bail!("{} not found: build it with `cargo build --release --bin meshcache`", bin.display());
    }
    let certs = dir.join("certs");
    command(bin, &["certs", "init", "--dir", path(&certs)?]).await?;
    for n in names {
        command(bin, &["certs", "issue", n, "--dir", path(&certs)?, "--ip", "127.0.0.1"]).await?;
    }
    let mut nodes: Vec<Node> = Vec::new();
    for n in names {
        let seeds: Vec<SocketAddr> = nodes.first().map(|a| vec![a.quic]).unwrap_or_default();
        nodes.push(start(bin, dir, n, &seeds, extra).await?);
    }
    let resps: Vec<SocketAddr> = nodes.iter().map(|n| n.resp).collect();
    let others = names.len() - 1;
    tokio::task::spawn_blocking(move || -> Result<()> {
        for a in resps {
            let mut linked = false;
            for _ in 0..400 {
                if let Ok(mut c) = Client::connect(a) {
                    if c.info_field("meshcache", "connected").ok().and_then(|v| v.trim().parse::<usize>().ok())
                        == Some(others)
                    {
                        linked = true;
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !linked {
                bail!("the node serving {a} did not link to its {others} peers within 20 s");
            }
        }
        Ok(())
    })
    .await??;
    wait_writable(nodes[0].resp).await?;
    Ok(nodes)
}

async fn start(bin: &Path, dir: &Path, name: &str, seeds: &[SocketAddr], extra: &[&str]) -> Result<Node> {
    let addr_file = dir.join(format!("{name}.addrs"));
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(["node", "--name", name, "--listen", "127.0.0.1:0", "--resp", "127.0.0.1:0", "--admin", "off"])
        .args(["--certs", path(&dir.join("certs"))?, "--addr-file"])
        .arg(&addr_file)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    for s in seeds {
        cmd.args(["--seed", &s.to_string()]);
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(&addr_file) {
            let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)?.trim().parse::<SocketAddr>().ok());
            if let (Some(quic), Some(resp)) = (get("quic "), get("resp ")) {
                return Ok(Node { child, resp, quic });
            }
        }
        if let Some(st) = child.try_wait()? {
            bail!("{name} exited ({st}): {}", std::fs::read_to_string(dir.join(format!("{name}.log")))?);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{name} did not write {} within 10 s", addr_file.display())
}

/// Waits until a SET succeeds (a seeded peer refuses writes until synced).
async fn wait_writable(a: SocketAddr) -> Result<()> {
    tokio::task::spawn_blocking(move || -> Result<()> {
        for _ in 0..200 {
            if let Ok(mut c) = Client::connect(a) {
                if matches!(c.cmd(&[b"SET", b"bench:ready", b"1"]), Ok(Reply::Simple(_))) {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{a} accepted no write within 10 s")
    })
    .await?
}

async fn command(bin: &Path, args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new(bin).args(args).stdin(Stdio::null()).output().await?;
    if !out.status.success() {
        bail!("meshcache {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| anyhow!("{} is not UTF-8", p.display()))
}

/// A fresh directory under the system temp dir, removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> Result<TempDir> {
        let d = std::env::temp_dir().join(format!("meshbench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)?;
        Ok(TempDir(d))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
