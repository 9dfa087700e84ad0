//! The admin port: a tiny text protocol on loopback TCP, for operators
//! (`meshcache status`, `meshcache forget NAME`).
//!
//! One request per connection: the client sends one line (at most
//! [`MAX_REQUEST`] bytes, ended by `\n` or by closing its side), the server
//! replies with text and closes. Requests:
//!
//! - `status`: this peer's identity, listen address, the protocol versions
//!   it speaks and the last refusal for versions, bootstrap state and
//!   readiness (a `readiness:` line, [`Mesh::readiness`]), store gauges,
//!   every counter of [`Mesh::stats`], and one line per member (with its
//!   link's protocol version while connected).
//! - `forget NAME`: [`Mesh::forget`]; the reply starts with `OK` if the
//!   member was forgotten, `ERR` otherwise.
//! - `reload`: reads the peer's TLS files again and hands them to
//!   [`Mesh::reload_tls`] (what SIGHUP does to `meshcache node`), through the
//!   [`Reload`] the server was given; the reply starts with `OK` and names
//!   the certificate now in use, or with `ERR` and says why the files were
//!   refused (the peer then keeps its current ones).
//! - `help`: the list of requests.
//!
//! Anything else gets a reply starting with `ERR`. The port has no
//! authentication: bind it to a loopback address only (the `meshcache
//! node` command refuses anything else).

use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::membership::Status;
use crate::Mesh;

/// Longest request line accepted, in bytes (without the line end).
pub const MAX_REQUEST: usize = 1024;

/// Each side gives the other this long to send its request or reply.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once; more are closed at once. Operators send a
/// request now and then, so this only bounds what a runaway script costs.
const MAX_CONNECTIONS: usize = 32;

/// Largest reply [`request`] reads: a status with thousands of members
/// stays far below it.
const MAX_REPLY: u64 = 16 << 20;

/// What the `reload` request runs: reads the peer's TLS files again and
/// hands them to it. `Ok` carries what to report (the certificate now in
/// use), `Err` why the files were refused.
pub type Reload = Arc<dyn Fn(&Mesh) -> Result<String, String> + Send + Sync>;

/// Serves the admin protocol for `mesh` on `addr` until `shutdown`
/// resolves, then waits for the requests in flight (each bounded by
/// [`TIMEOUT`]). Fails only if `addr` cannot be bound.
pub async fn serve(mesh: Mesh, addr: SocketAddr, shutdown: impl Future) -> io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    serve_listener(mesh, listener, shutdown).await
}

/// [`serve`] on a listener bound beforehand (so that a caller can report a
/// bind failure before starting anything, or bind port 0 and read the port).
pub async fn serve_listener(mesh: Mesh, listener: TcpListener, shutdown: impl Future) -> io::Result<()> {
    serve_with_reload(mesh, listener, None, shutdown).await
}

/// [`serve_listener`], with what the `reload` request runs (without one,
/// `reload` is answered with an error: this peer has no files to read).
pub async fn serve_with_reload(
    mesh: Mesh,
    listener: TcpListener,
    reload: Option<Reload>,
    shutdown: impl Future,
) -> io::Result<()> {
    crate::listen::serve_bounded(listener, MAX_CONNECTIONS, "admin", shutdown, |stream| {
        let (mesh, reload) = (mesh.clone(), reload.clone());
        async move { handle(&mesh, reload.as_ref(), stream).await }
    })
    .await;
    Ok(())
}

/// Sends one request `line` to the admin port at `addr` and returns the
/// whole reply. The exchange is bounded by twice [`TIMEOUT`] (the server
/// gives each side one); a peer that is not running shows as
/// [`io::ErrorKind::ConnectionRefused`].
pub async fn request(addr: SocketAddr, line: &str) -> io::Result<String> {
    if line.len() > MAX_REQUEST || line.contains(['\n', '\r']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a request is one line of at most {MAX_REQUEST} bytes"),
        ));
    }
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(format!("{line}\n").as_bytes()).await?;
        stream.shutdown().await?;
        let mut reply = Vec::new();
        (&mut stream).take(MAX_REPLY).read_to_end(&mut reply).await?;
        Ok(String::from_utf8_lossy(&reply).into_owned())
    };
    tokio::time::timeout(TIMEOUT * 2, exchange).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no reply from the admin port at {addr} within {:?}", TIMEOUT * 2),
        )
    })?
}

/// What a connection sent.
enum Received {
    Line(String),
    TooLong,
    NotUtf8,
}

/// Serves one connection: one request, one reply, close. Errors end the
/// connection quietly: the client sees it closed.
async fn handle(mesh: &Mesh, reload: Option<&Reload>, mut stream: TcpStream) {
    let reply = match tokio::time::timeout(TIMEOUT, read_request(&mut stream)).await {
        Err(_) => format!("ERR no request line within {TIMEOUT:?}\n"),
        Ok(Err(_)) => return,
        Ok(Ok(Received::TooLong)) => format!("ERR request longer than {MAX_REQUEST} bytes\n"),
        Ok(Ok(Received::NotUtf8)) => "ERR the request is not UTF-8 text\n".to_owned(),
        Ok(Ok(Received::Line(line))) => respond(mesh, reload, &line).await,
    };
    let _ = tokio::time::timeout(TIMEOUT, async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Reads up to the first `\n`, or to the end of the stream.
async fn read_request(stream: &mut TcpStream) -> io::Result<Received> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    loop {
        let n = stream.read(&mut chunk).await?;
        let end = n == 0;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            buf.truncate(pos);
        } else if buf.len() > MAX_REQUEST {
            return Ok(Received::TooLong);
        } else if !end {
            continue;
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        if buf.len() > MAX_REQUEST {
            return Ok(Received::TooLong);
        }
        return Ok(String::from_utf8(buf).map_or(Received::NotUtf8, Received::Line));
    }
}

/// The requests, for `help` and errors.
const REQUESTS: &str = "status | forget NAME | reload | help";

/// The reply to one request line.
async fn respond(mesh: &Mesh, reload: Option<&Reload>, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["status"] => status(mesh),
        ["forget", name] => forget(mesh, name),
        ["forget", ..] => "ERR usage: forget NAME\n".to_owned(),
        ["reload"] => reload_tls(mesh, reload).await,
        ["reload", ..] => "ERR usage: reload (it takes no argument)\n".to_owned(),
        ["help"] => format!("requests: {REQUESTS}\n"),
        [] => format!("ERR empty request; try: {REQUESTS}\n"),
        _ => {
            let shown: String = line.chars().take(64).collect();
            format!("ERR unknown request {shown:?}; try: {REQUESTS}\n")
        }
    }
}

async fn reload_tls(mesh: &Mesh, reload: Option<&Reload>) -> String {
    let Some(reload) = reload.cloned() else {
        return "ERR this peer was given no certificate files to reload from\n".to_owned();
    };
    // Reading files and checking signatures: off the runtime's threads.
    let m = mesh.clone();
    match tokio::task::spawn_blocking(move || reload(&m)).await {
        Ok(Ok(done)) => format!("OK reloaded: {}\n", done.replace('\n', "; ")),
        Ok(Err(why)) => {
            format!("ERR reload refused, the current certificates stay in use: {}\n", why.replace('\n', "; "))
        }
        Err(e) => format!("ERR reload failed, the current certificates stay in use: {e}\n"),
    }
}

fn forget(mesh: &Mesh, name: &str) -> String {
    if name == mesh.id().name {
        return format!("ERR {name} is this peer; to remove it, stop it (SIGTERM makes it leave gracefully)\n");
    }
    let was_connected = mesh.members().iter().any(|m| m.id.name == name && m.connected);
    if !mesh.forget(name) {
        return format!("ERR no active member named {name:?}; see `meshcache status` for the members\n");
    }
    tracing::warn!(member = name, "forgotten by an operator: tombstone collection no longer waits for it");
    let mut out = format!("OK forgot {name}: tombstone collection no longer waits for it\n");
    if was_connected {
        out.push_str(&format!(
            "warning: {name} is still connected; once it learns it was forgotten it stops \
             (a forgotten incarnation is refused by the mesh)\n"
        ));
    }
    out
}

/// Seconds, with a tenth, for ages and uptimes.
fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// The last refusal for versions, as one line.
fn version_refused(mesh: &Mesh, now: u64) -> String {
    let Some(r) = mesh.version_refusal() else { return "none".to_owned() };
    let who = if r.by_us { "this peer refused it" } else { "it refused this peer" };
    format!("{} speaks {}, this peer {}: {who}, {} ago", r.peer, r.theirs, r.ours, secs(now.saturating_sub(r.at_ms)))
}

fn status(mesh: &Mesh) -> String {
    let now = mesh.now_ms();
    let me = mesh.id();
    let s = mesh.stats();
    let st = &s.store;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let mut kv = |k: &str, v: &dyn std::fmt::Display| {
        let _ = writeln!(out, "{k:<21} {v}");
    };
    kv("name:", &me.name);
    kv("incarnation:", &me.incarnation.node);
    kv(
        "started:",
        &format!("{} (unix ms; up {})", me.incarnation.started_ms, secs(now.saturating_sub(me.incarnation.started_ms))),
    );
    kv("listen:", &mesh.local_addr());
    match mesh.certificate() {
        Some(c) => kv("certificate:", &c),
        None => kv("certificate:", &"unreadable"),
    }
    kv("protocol:", &mesh.protocol_versions());
    kv("version_refused:", &version_refused(mesh, now));
    kv("booted:", &s.booted);
    kv("readiness:", &mesh.readiness().reason());
    kv("entries:", &st.entries);
    kv("bytes:", &st.bytes);
    kv("tombstones:", &st.tombstones);
    kv("stubs:", &st.stubs);
    kv("clear_below:", &st.floors.clear_below);
    kv("gc_floor:", &st.floors.gc_floor);
    let counters: [(&str, u64); 35] = [
        ("version_refusals", s.version_refusals),
        ("deltas_sent", s.deltas_sent),
        ("deltas_received", s.deltas_received),
        ("push_batches_sent", s.push_batches_sent),
        ("push_bytes_sent", s.push_bytes_sent),
        ("queue_overflows", s.queue_overflows),
        ("ae_rounds", s.ae_rounds),
        ("ae_failed", s.ae_failed),
        ("ae_declined", s.ae_declined),
        ("ae_summaries_deferred", s.ae_summaries_deferred),
        ("ae_summary_window_waits", s.ae_summary_window_waits),
        ("ae_bytes_sent", s.ae_bytes_sent),
        ("ae_bytes_received", s.ae_bytes_received),
        ("ae_entries_sent", s.ae_entries_sent),
        ("ae_entries_sent_failed", s.ae_entries_sent_failed),
        ("ae_entries_received", s.ae_entries_received),
        ("refused_peers", s.refused_peers),
        ("tls_refused", s.tls_refused),
        ("links_made", s.links_made),
        ("protocol_errors", s.protocol_errors),
        ("clock_refused", s.clock_refused),
        ("members_invalid", s.members_invalid),
        ("seed_lookups_failed", s.seed_lookups_failed),
        ("messages_published", s.messages_published),
        ("messages_received", s.messages_received),
        ("members_over_cap", s.members_over_cap),
        ("refused_floor", st.refused_floor),
        ("refused_future", st.refused_future),
        ("below_clear", st.below_clear),
        ("collected_tombstones", st.collected_tombstones),
        ("collected_expired", st.collected_expired),
        ("refusal_drops", st.refusal_drops),
        ("evictions", st.evictions),
        ("compactions", st.compactions),
        ("compacted_values", st.compacted_values),
    ];
    for (k, v) in counters {
        kv(&format!("{k}:"), &v);
    }
    let mut members = mesh.members();
    members.sort_by(|a, b| a.id.name.cmp(&b.id.name));
    let _ = writeln!(out, "members:              {} active, {} connected", s.members, s.connected);
    let width = members.iter().map(|m| m.id.name.len()).max().unwrap_or(0).max(4);
    for m in &members {
        let status = match m.status {
            Status::Active => "active",
            Status::Left => "left",
            Status::Forgotten => "forgotten",
        };
        let addr = m.addr.map_or_else(|| "-".to_owned(), |a| a.to_string());
        let synced = m.synced_ms.map_or_else(|| "never".to_owned(), |t| format!("{} ago", secs(now.saturating_sub(t))));
        let connected = if m.connected { "connected" } else { "disconnected" };
        let protocol = m.version.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let _ = writeln!(
            out,
            "  {:<width$}  {status:<9}  {connected:<12}  {addr:<21}  protocol {protocol:<3}  synced {synced}",
            m.id.name
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::certs::EphemeralCa;
    use crate::MeshConfig;

    async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let _ = s.shutdown().await;
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await.unwrap().unwrap();
        out
    }

    #[tokio::test]
    async fn requests_and_errors() {
        let ca = EphemeralCa::new().unwrap();
        let mesh =
            Mesh::builder().config(MeshConfig::for_test("adm")).tls(ca.issue("adm").unwrap()).start().await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_listener(mesh.clone(), listener, stop_rx));

        let status = request(addr, "status").await.unwrap();
        assert!(status.starts_with("name:"), "{status}");
        assert!(status.contains(" adm\n") && status.contains("booted:") && status.contains("ae_rounds:"), "{status}");
        assert!(status.contains(&mesh.local_addr().to_string()), "{status}");

        let r = request(addr, "forget nobody").await.unwrap();
        assert!(r.starts_with("ERR no active member"), "{r}");
        let r = request(addr, "forget adm").await.unwrap();
        assert!(r.starts_with("ERR adm is this peer"), "{r}");
        let r = request(addr, "flushall").await.unwrap();
        assert!(r.starts_with("ERR unknown request"), "{r}");
        assert!(request(addr, "help").await.unwrap().contains("forget NAME"));
        let r = request(addr, "reload").await.unwrap();
        assert!(r.starts_with("ERR this peer was given no certificate files"), "{r}");
        assert!(status.contains("certificate:") && status.contains("1 trusted CA"), "{status}");

        // Without a line end (closed write side), with CRLF, too long, binary.
        assert!(raw(addr, b"status").await.starts_with("name:"));
        assert!(raw(addr, b"status\r\n").await.starts_with("name:"));
        let long = vec![b'x'; MAX_REQUEST + 10];
        assert!(raw(addr, &long).await.starts_with("ERR request longer"));
        assert!(raw(addr, b"\xff\xfe\n").await.starts_with("ERR the request is not UTF-8"));
        assert!(request(addr, "two\nlines").await.is_err());

        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
        mesh.shutdown().await;
    }

    /// `status` names the versions this peer speaks, each linked member's
    /// version, and the last peer refused for versions with both ranges.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_shows_versions_and_the_last_version_refusal() {
        let ca = EphemeralCa::new().unwrap();
        let start = |name: &'static str, versions: std::ops::RangeInclusive<u16>, seeds: Vec<SocketAddr>| {
            Mesh::builder()
                .config(MeshConfig::for_test(name))
                .protocol_versions(versions)
                .seeds(seeds)
                .tls(ca.issue(name).unwrap())
                .start()
        };
        let new = start("new", 6..=7, Vec::new()).await.unwrap();
        let old = start("old", 6..=6, vec![new.local_addr()]).await.unwrap();
        let other = start("other", 7..=7, vec![new.local_addr()]).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !(new.stats().connected == 2 && other.stats().connected == 1 && old.stats().version_refusals > 0) {
            assert!(std::time::Instant::now() < deadline, "the mesh never formed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let text = status(&new);
        assert!(text.contains("protocol:             6-7\n"), "{text}");
        assert!(text.contains("version_refused:      none\n"), "{text}");
        let line = |name: &str| text.lines().find(|l| l.trim_start().starts_with(name)).unwrap().to_owned();
        assert!(line("old ").contains("protocol 6 "), "{text}");
        assert!(line("other ").contains("protocol 7 "), "{text}");
        // old and other do not meet: whichever dialed was refused.
        let text = status(&old);
        assert!(text.contains("protocol:             6\n"), "{text}");
        let refused = text.lines().find(|l| l.starts_with("version_refused:")).unwrap();
        assert!(refused.contains("speaks 7, this peer 6"), "{text}");
        assert!(text.contains("version_refusals:     "), "{text}");
        for m in [new, old, other] {
            m.shutdown().await;
        }
    }
}
