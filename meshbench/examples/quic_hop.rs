//! Round trips between two processes on loopback: TCP, and a QUIC stream
//! (quinn, as the mesh uses it) on tokio's multi-threaded runtime and on a
//! current-thread runtime.
//!
//!     cargo run --release -p meshbench --example quic_hop [-- ROUNDS]
//!
//! A client sends 150 bytes, one message every 2 ms (the processes idle in
//! between, as in row 2 of BENCHMARKS.md), and waits for the echo from a
//! child process of this program; 2,000 round trips a run, the modes
//! alternating for ROUNDS rounds (default 2). Prints the p50, p90 and p99
//! of each run. Both sides use the same runtime; the multi-threaded one
//! has tokio's default workers (one per core, or TOKIO_WORKER_THREADS).
//! The difference between the two QUIC modes is the runtime's, not the
//! protocol's: it is what wake-ups across worker threads cost.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use meshcache::env::stopwatch;
use meshcache::stats::percentile;

const MSG: usize = 150;
const TRIPS: usize = 2000;
const WARM_UP: usize = 50;
const GAP: Duration = Duration::from_millis(2);
const MODES: [&str; 3] = ["tcp", "quic-multi-thread", "quic-current-thread"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [echo, mode, dir] = &args[..] {
        if echo == "--echo" {
            return self::echo(mode, Path::new(dir));
        }
    }
    let rounds: usize = match args.first() {
        Some(r) => r.parse().context("ROUNDS: a number")?,
        None => 2,
    };
    println!("round trip of {MSG} B, one every {GAP:?}, {TRIPS} a run (us)");
    for _ in 0..rounds {
        for mode in MODES {
            let mut trips = run(mode)?;
            trips.sort_by(f64::total_cmp);
            let p = |q| percentile(&trips, q);
            println!("{mode:20} p50 {:7.1}  p90 {:7.1}  p99 {:7.1}", p(50.0), p(90.0), p(99.0));
        }
    }
    Ok(())
}

/// Runs `work` as a task of `mode`'s runtime: on the multi-threaded
/// runtime that is a worker thread, as the mesh's tasks run (a future
/// given to `block_on` would run on this thread, outside the workers).
fn on_runtime<T: Send + 'static>(
    mode: &str,
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let mut b = match mode {
        "quic-current-thread" => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = b.enable_all().build()?;
    rt.block_on(async move { tokio::spawn(work).await? })
}

/// Starts the echo process for `mode`, then times `TRIPS` round trips.
fn run(mode: &str) -> Result<Vec<f64>> {
    let dir = std::env::temp_dir().join(format!("quic-hop-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut child =
        Command::new(std::env::current_exe()?).args(["--echo", mode]).arg(&dir).stdout(Stdio::piped()).spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().context("the echo's stdout")?).read_line(&mut line)?;
    let trips = match line.trim().parse::<SocketAddr>() {
        Ok(addr) if mode == "tcp" => tcp_trips(addr),
        Ok(addr) => quic_trips(mode, addr, &dir.join("cert.der")),
        Err(_) => Err(anyhow::anyhow!("the echo process gave no address: {line:?}")),
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    trips
}

fn tcp_trips(addr: SocketAddr) -> Result<Vec<f64>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let (out, mut back) = ([7u8; MSG], [0u8; MSG]);
    let mut trips = Vec::with_capacity(TRIPS);
    for i in 0..TRIPS + WARM_UP {
        std::thread::sleep(GAP);
        let t0 = stopwatch();
        s.write_all(&out)?;
        s.read_exact(&mut back)?;
        if i >= WARM_UP {
            trips.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(trips)
}

fn quic_trips(mode: &str, addr: SocketAddr, cert: &Path) -> Result<Vec<f64>> {
    let cert = std::fs::read(cert)?;
    on_runtime(mode, async move {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(cert))?;
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        ep.set_default_client_config(quinn::ClientConfig::with_root_certificates(Arc::new(roots))?);
        let conn = ep.connect(addr, "localhost")?.await?;
        let mut send = conn.open_uni().await?;
        let (out, mut back) = ([7u8; MSG], [0u8; MSG]);
        // The first message opens the stream on the echo's side.
        send.write_all(&out).await?;
        let mut recv = conn.accept_uni().await?;
        recv.read_exact(&mut back).await?;
        let mut trips = Vec::with_capacity(TRIPS);
        for i in 0..TRIPS + WARM_UP {
            tokio::time::sleep(GAP).await;
            let t0 = stopwatch();
            send.write_all(&out).await?;
            recv.read_exact(&mut back).await?;
            if i >= WARM_UP {
                trips.push(t0.elapsed().as_secs_f64() * 1e6);
            }
        }
        conn.close(0u32.into(), b"done");
        Ok(trips)
    })
}

/// The child: prints its address, then echoes every message until the
/// client goes away.
fn echo(mode: &str, dir: &Path) -> Result<()> {
    if mode == "tcp" {
        let l = TcpListener::bind("127.0.0.1:0")?;
        say(l.local_addr()?)?;
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        let mut m = [0u8; MSG];
        while s.read_exact(&mut m).is_ok() {
            s.write_all(&m)?;
        }
        return Ok(());
    }
    if !MODES.contains(&mode) {
        bail!("unknown mode {mode}");
    }
    let dir = PathBuf::from(dir);
    on_runtime(mode, async move {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
        std::fs::write(dir.join("cert.der"), ck.cert.der())?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let server = quinn::ServerConfig::with_single_cert(vec![ck.cert.der().clone()], key)?;
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        let ep = quinn::Endpoint::new(Default::default(), Some(server), sock, Arc::new(quinn::TokioRuntime))?;
        say(ep.local_addr()?)?;
        let conn = ep.accept().await.context("no client")?.await?;
        let mut recv = conn.accept_uni().await?;
        let mut send = conn.open_uni().await?;
        let mut m = [0u8; MSG];
        while recv.read_exact(&mut m).await.is_ok() {
            send.write_all(&m).await?;
        }
        Ok(())
    })
}

fn say(addr: SocketAddr) -> Result<()> {
    let mut out = std::io::stdout();
    writeln!(out, "{addr}")?;
    Ok(out.flush()?)
}
