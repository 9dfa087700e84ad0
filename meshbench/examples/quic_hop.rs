//! Round trips between two processes on loopback: over TCP, bare UDP and
//! a QUIC stream (quinn, as the mesh uses it), so that what QUIC adds to a
//! hop can be read apart from what the runtime adds.
//!
//!     cargo run --release -p meshbench --example quic_hop [-- ROUNDS [MODE...]]
//!
//! A client sends 150 bytes, one message every 2 ms (the processes idle in
//! between, as in row 2 of BENCHMARKS.md), and waits for the echo from a
//! child process of this program; 2,000 round trips a run, the modes
//! alternating for ROUNDS rounds (default 2). Prints the p50, p90 and p99
//! of each run. The modes (all by default):
//!
//! - `tcp`: blocking sockets, no runtime: the floor of a loopback hop;
//! - `tcp-current-thread`, `udp-current-thread`: tokio sockets on a
//!   current-thread runtime, what the runtime's wake-ups add to the floor;
//! - `quic-there-udp-back`: the message goes out on a quinn stream and
//!   its echo comes back as a bare UDP datagram, on the same runtime: a
//!   push's hop, one way, where the receiver sends nothing back but
//!   QUIC's acknowledgements;
//! - `quic-current-thread`: a quinn stream both ways on the same runtime,
//!   what QUIC adds to a UDP hop (quinn's endpoint and connection tasks,
//!   TLS);
//! - `quic-multi-thread`: a quinn stream on tokio's multi-threaded
//!   runtime (one worker per core, or TOKIO_WORKER_THREADS), as a peer
//!   runs: what wake-ups across worker threads add.
//!
//! Both sides use the same mode. For the QUIC modes, `QUIC_HOP_NO_GSO`,
//! `QUIC_HOP_NO_MTU_DISCOVERY` and `QUIC_HOP_NEW_RENO` (set to anything)
//! turn off segmentation offload, turn off MTU discovery, and replace
//! quinn's default congestion controller (Cubic) with NewReno, on both
//! sides; `QUIC_HOP_ACK_EVERY=N` asks the peer (by QUIC's ACK frequency
//! extension) for an acknowledgement every N ack-eliciting packets
//! rather than every second one: transport settings that might cost a
//! small message time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use meshcache::env::stopwatch;
use meshcache::stats::percentile;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MSG: usize = 150;
const TRIPS: usize = 2000;
const WARM_UP: usize = 50;
const GAP: Duration = Duration::from_millis(2);
const MODES: [&str; 6] = [
    "tcp",
    "tcp-current-thread",
    "udp-current-thread",
    "quic-there-udp-back",
    "quic-current-thread",
    "quic-multi-thread",
];

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
    let modes: Vec<&str> = match args.get(1..) {
        Some(named) if !named.is_empty() => named.iter().map(String::as_str).collect(),
        _ => MODES.to_vec(),
    };
    if let Some(m) = modes.iter().find(|m| !MODES.contains(m)) {
        bail!("unknown mode {m}; the modes are {}", MODES.join(", "));
    }
    println!("round trip of {MSG} B, one every {GAP:?}, {TRIPS} a run (us)");
    for _ in 0..rounds {
        for &mode in &modes {
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
/// Every mode but `quic-multi-thread` runs on a current-thread runtime.
fn on_runtime<T: Send + 'static>(
    mode: &str,
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let mut b = match mode {
        "quic-multi-thread" => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
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
        Ok(addr) if mode == "tcp-current-thread" => on_runtime(mode, tokio_tcp_trips(addr)),
        Ok(addr) if mode == "udp-current-thread" => on_runtime(mode, udp_trips(addr)),
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

/// Times `TRIPS` round trips (after `WARM_UP` untimed ones), one every
/// `GAP`, inside an async block: `$exchange` sends one message and waits
/// for its echo. A macro rather than a function taking an async closure,
/// whose future could not be shown to be `Send` for the multi-threaded
/// runtime.
macro_rules! time_trips {
    ($exchange:block) => {{
        let mut trips = Vec::with_capacity(TRIPS);
        for i in 0..TRIPS + WARM_UP {
            tokio::time::sleep(GAP).await;
            let t0 = stopwatch();
            $exchange
            if i >= WARM_UP {
                trips.push(t0.elapsed().as_secs_f64() * 1e6);
            }
        }
        trips
    }};
}

async fn tokio_tcp_trips(addr: SocketAddr) -> Result<Vec<f64>> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let (out, mut back) = ([7u8; MSG], [0u8; MSG]);
    Ok(time_trips!({
        s.write_all(&out).await?;
        s.read_exact(&mut back).await?;
    }))
}

async fn udp_trips(addr: SocketAddr) -> Result<Vec<f64>> {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    s.connect(addr).await?;
    let (out, mut back) = ([7u8; MSG], [0u8; MSG]);
    Ok(time_trips!({
        s.send(&out).await?;
        echo_datagram(&s, &mut back).await?;
    }))
}

/// Waits for the echo's datagram: a run stops with an error, rather than
/// waiting for ever, if a datagram is lost (none is on loopback while
/// the machine has memory to spare).
async fn echo_datagram(s: &tokio::net::UdpSocket, back: &mut [u8]) -> Result<()> {
    match tokio::time::timeout(Duration::from_secs(1), s.recv(back)).await {
        Ok(got) => Ok(got.map(drop)?),
        Err(_) => bail!("no echo within a second: a datagram was lost"),
    }
}

/// A QUIC connection to the echo at `addr`, trusting the certificate
/// the echo wrote to `cert`; with the endpoint, which must outlive it.
async fn quic_connect(addr: SocketAddr, cert: &Path) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(std::fs::read(cert)?))?;
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let mut client = quinn::ClientConfig::with_root_certificates(Arc::new(roots))?;
    client.transport_config(transport()?);
    ep.set_default_client_config(client);
    let conn = ep.connect(addr, "localhost")?.await?;
    Ok((ep, conn))
}

fn quic_trips(mode: &str, addr: SocketAddr, cert: &Path) -> Result<Vec<f64>> {
    let (cert, one_way) = (cert.to_path_buf(), mode == "quic-there-udp-back");
    on_runtime(mode, async move {
        let (_ep, conn) = quic_connect(addr, &cert).await?;
        let mut send = conn.open_uni().await?;
        let (mut out, mut back) = ([7u8; MSG], [0u8; MSG]);
        // The first message opens the stream on the echo's side (and, one
        // way, tells it where to send the echoes).
        let trips = if one_way {
            let back_to = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            out[..2].copy_from_slice(&back_to.local_addr()?.port().to_be_bytes());
            send.write_all(&out).await?;
            echo_datagram(&back_to, &mut back).await?;
            time_trips!({
                send.write_all(&out).await?;
                echo_datagram(&back_to, &mut back).await?;
            })
        } else {
            send.write_all(&out).await?;
            let mut recv = conn.accept_uni().await?;
            recv.read_exact(&mut back).await?;
            time_trips!({
                send.write_all(&out).await?;
                recv.read_exact(&mut back).await?;
            })
        };
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
    if mode == "tcp-current-thread" {
        return on_runtime(mode, async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            say(l.local_addr()?)?;
            let (mut s, _) = l.accept().await?;
            s.set_nodelay(true)?;
            let mut m = [0u8; MSG];
            while s.read_exact(&mut m).await.is_ok() {
                s.write_all(&m).await?;
            }
            Ok(())
        });
    }
    if mode == "udp-current-thread" {
        // Echoes until the parent kills it.
        return on_runtime(mode, async {
            let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            say(s.local_addr()?)?;
            let mut m = [0u8; MSG];
            loop {
                let (n, from) = s.recv_from(&mut m).await?;
                s.send_to(&m[..n], from).await?;
            }
        });
    }
    if !MODES.contains(&mode) {
        bail!("unknown mode {mode}");
    }
    let (dir, one_way) = (PathBuf::from(dir), mode == "quic-there-udp-back");
    on_runtime(mode, async move {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
        std::fs::write(dir.join("cert.der"), ck.cert.der())?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let mut server = quinn::ServerConfig::with_single_cert(vec![ck.cert.der().clone()], key)?;
        server.transport_config(transport()?);
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        let ep = quinn::Endpoint::new(Default::default(), Some(server), sock, Arc::new(quinn::TokioRuntime))?;
        say(ep.local_addr()?)?;
        let conn = ep.accept().await.context("no client")?.await?;
        let mut recv = conn.accept_uni().await?;
        let mut m = [0u8; MSG];
        if one_way {
            recv.read_exact(&mut m).await?;
            let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            back.connect(("127.0.0.1", u16::from_be_bytes([m[0], m[1]]))).await?;
            back.send(&m).await?;
            while recv.read_exact(&mut m).await.is_ok() {
                back.send(&m).await?;
            }
            return Ok(());
        }
        let mut send = conn.open_uni().await?;
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

/// quinn's default transport settings, changed as the `QUIC_HOP_*`
/// variables ask.
fn transport() -> Result<Arc<quinn::TransportConfig>> {
    let set = |name| std::env::var_os(name).is_some();
    let mut t = quinn::TransportConfig::default();
    if set("QUIC_HOP_NO_GSO") {
        t.enable_segmentation_offload(false);
    }
    if set("QUIC_HOP_NO_MTU_DISCOVERY") {
        t.mtu_discovery_config(None);
    }
    if let Some(n) = std::env::var_os("QUIC_HOP_ACK_EVERY") {
        let n: u32 = match n.to_str().map(str::parse) {
            Some(Ok(n)) if n >= 1 => n,
            _ => bail!("QUIC_HOP_ACK_EVERY={n:?}: a number of packets, 1 or more"),
        };
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(quinn::VarInt::from_u32(n - 1));
        t.ack_frequency_config(Some(ack));
    }
    if set("QUIC_HOP_NEW_RENO") {
        t.congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default()));
    }
    Ok(Arc::new(t))
}
