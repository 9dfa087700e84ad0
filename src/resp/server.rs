//! Accepting clients and running one connection: read, parse every
//! complete command, execute, write the replies in one batch.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::Client;
use super::cmd;
use super::notify::Outbox;
use super::parse::{Limits, Parser};
use super::reply::Out;
use super::tracking;
use super::Shared;
use crate::node::PushWakes;

/// Room kept free in the read buffer before each read.
const READ_MIN: usize = 16 * 1024;
/// Pending output past which replies are written before the batch ends.
const FLUSH_AT: usize = 64 * 1024;
/// Read-ahead reserved for a big bulk string beyond what was received: at
/// most this much, or as much as is already buffered (so the buffer grows
/// geometrically, and a client that only declares a big length makes the
/// server reserve little).
const RESERVE_STEP: usize = 1 << 20;

pub(super) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (sock, addr) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                // EMFILE and the like: back off rather than spin.
                tracing::warn!(error = %e, "RESP accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        shared.stats.connections.fetch_add(1, Ordering::Relaxed);
        if shared.clients.fetch_add(1, Ordering::AcqRel) >= shared.config.max_clients {
            shared.clients.fetch_sub(1, Ordering::AcqRel);
            shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%addr, max = shared.config.max_clients, "RESP client refused: max number of clients reached");
            let _ = sock.try_write(b"-ERR max number of clients reached\r\n");
            continue;
        }
        metrics::gauge!("meshcache_resp_clients").increment(1.0);
        let conn = Connection::new(shared.clone(), sock, addr, stop.clone());
        tracker.spawn(conn.run());
    }
}

struct Connection {
    shared: Arc<Shared>,
    sock: TcpStream,
    buf: BytesMut,
    parser: Parser,
    out: Out,
    client: Client,
    stop: CancellationToken,
    /// The push senders this connection's writes are queued for, woken
    /// once their replies are written.
    wakes: PushWakes,
    /// The BCAST invalidations of the commands run since the last write of
    /// replies, sent together before it, as Redis sends what one turn of
    /// its event loop changed (`Connection::send_gathered`).
    gathered: tracking::Gathered,
    /// Metric handles, looked up once per connection.
    commands_total: metrics::Counter,
    errors_total: metrics::Counter,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.registry.remove(self.client.id);
        self.shared.tracking.gone(self.client.id);
        self.shared.hub.drop_client(self.client.id, &self.client.channels, &self.client.patterns);
        self.shared.clients.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("meshcache_resp_clients").decrement(1.0);
    }
}

/// Why a connection ended early.
enum End {
    /// The peer closed, QUIT, a protocol error, or shutdown: nothing to log.
    Done,
    /// The output limit was exceeded.
    OutputLimit,
}

impl Connection {
    fn new(shared: Arc<Shared>, sock: TcpStream, addr: std::net::SocketAddr, stop: CancellationToken) -> Self {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::new(shared.config.output_buffer_limit));
        let laddr = sock.local_addr().unwrap_or(shared.local_addr);
        let client = Client::new(id, addr, laddr, outbox, shared.config.requirepass.is_none());
        shared.registry.insert(client.handle.clone());
        Connection {
            client,
            shared,
            sock,
            buf: BytesMut::with_capacity(READ_MIN),
            parser: Parser::default(),
            out: Out::new(),
            stop,
            wakes: PushWakes::default(),
            gathered: Vec::new(),
            commands_total: metrics::counter!("meshcache_resp_commands_total"),
            errors_total: metrics::counter!("meshcache_resp_errors_total"),
        }
    }

    async fn run(mut self) {
        let r = self.serve().await;
        let killed = self.client.outbox.kill.is_cancelled();
        if self.client.handle.killed.load(Ordering::Relaxed) {
            tracing::debug!(id = self.client.id, addr = %self.client.addr, "RESP client closed by CLIENT KILL");
            return;
        }
        match r {
            Ok(End::Done) if !killed => {}
            Err(e) if !killed => {
                tracing::debug!(id = self.client.id, addr = %self.client.addr, error = %e, "RESP connection error")
            }
            _ => {
                self.shared.stats.output_limit_closes.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    id = self.client.id, addr = %self.client.addr, limit = self.shared.config.output_buffer_limit,
                    "RESP client closed: output buffer limit exceeded"
                );
            }
        }
    }

    async fn serve(&mut self) -> io::Result<End> {
        let mut args: Vec<Bytes> = Vec::with_capacity(8);
        // Long-lived futures, registered once rather than on every read.
        let (stop, outbox) = (self.stop.clone(), self.client.outbox.clone());
        let stopped = stop.cancelled();
        let killed = outbox.kill.cancelled();
        let ready = outbox.ready.notified();
        tokio::pin!(stopped, killed, ready);
        loop {
            let spare = self.buf.capacity() - self.buf.len();
            let want = self.parser.wanted(self.buf.len()).min(self.buf.len().max(RESERVE_STEP)).max(READ_MIN);
            if spare < want {
                self.buf.reserve(want);
            }
            tokio::select! {
                biased;
                _ = &mut stopped => return Ok(End::Done),
                _ = &mut killed => return Ok(End::OutputLimit),
                _ = &mut ready => {
                    ready.set(outbox.ready.notified());
                    outbox.drain_into(&mut self.out);
                }
                r = self.sock.read_buf(&mut self.buf) => {
                    let n = r?;
                    if n == 0 {
                        return Ok(End::Done);
                    }
                    self.shared.stats.net_in.fetch_add(n as u64, Ordering::Relaxed);
                    tracing::trace!(target: "meshcache::path", client = self.client.id, "request read");
                    if let Some(end) = self.process(&mut args).await? {
                        return Ok(end);
                    }
                }
            }
            self.flush().await?;
            tracing::trace!(target: "meshcache::path", client = self.client.id, "reply written");
            if self.client.close {
                return Ok(End::Done);
            }
        }
    }

    /// Executes every complete command in the read buffer. `Some` when the
    /// connection must end.
    async fn process(&mut self, args: &mut Vec<Bytes>) -> io::Result<Option<End>> {
        let started = self.shared.mesh.env().instant();
        let shared = self.shared.clone();
        let cfg = &shared.config;
        let mut n = 0u64;
        let mut end = None;
        // When the read's first command began and ended, for the slow log
        // and the latency monitor (see `resp::slowlog`); the end also
        // closes the read's time for INFO commandstats when the read held
        // one command, so a client that sends one command at a time costs
        // no clock reading more.
        let mut first_began = started;
        let mut first_ended = None;
        loop {
            let limits = Limits {
                max_bulk: cfg.max_request_bytes,
                max_command: cfg.max_command_bytes,
                unauthenticated: !self.client.authed,
            };
            match self.parser.next(&mut self.buf, &limits, args) {
                Ok(true) => {
                    n += 1;
                    if self.client.subscribed() || self.client.tracking.is_some() {
                        // Messages queued so far go before this reply.
                        self.client.outbox.drain_into(&mut self.out);
                    }
                    if self.client.quiet() && !self.out.is_empty() {
                        // Written first, so that dropping this command's
                        // reply (CLIENT REPLY OFF, SKIP) drops nothing else,
                        // even when the reply is queued in chunks.
                        self.flush().await?;
                        if n == 1 {
                            first_began = shared.mesh.env().instant();
                        }
                    }
                    let before = self.out.len();
                    let batch = shared.tracking.batch();
                    let ran = self.wakes.defer(|| cmd::execute(&self.shared, &mut self.client, args, &mut self.out));
                    // The read's first command is timed here, unless it was
                    // timed as it ran.
                    if n == 1 && shared.timing() {
                        let t = shared.mesh.env().instant();
                        first_ended = Some(t);
                        if let Some(spec) = ran.filter(|spec| !spec.timed_anywhere) {
                            cmd::note_timed(&shared, &self.client, spec, args, t.duration_since(first_began));
                        }
                    }
                    if let Some(b) = batch {
                        self.gathered.append(&mut b.take());
                    }
                    args.clear();
                    if self.out.len() > cfg.output_buffer_limit {
                        self.out.truncate(before);
                        end = Some(End::OutputLimit);
                        break;
                    }
                    if self.client.quiet() {
                        self.out.truncate(before);
                    }
                    self.client.reply_done();
                    if self.client.close {
                        break;
                    }
                    if self.out.len() >= FLUSH_AT {
                        self.flush().await?;
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    let before = self.out.len();
                    self.out.error(&format!("ERR Protocol error: {}", e.0));
                    if self.client.quiet() {
                        // Redis drops it too under CLIENT REPLY OFF.
                        self.out.truncate(before);
                    }
                    self.shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("meshcache_resp_protocol_errors_total").increment(1);
                    tracing::debug!(id = self.client.id, addr = %self.client.addr, error = %e.0, "RESP protocol error");
                    self.client.close = true;
                    break;
                }
            }
        }
        self.send_gathered();
        let elapsed = match first_ended {
            Some(t) if n == 1 => t.duration_since(started),
            _ => started.elapsed(),
        };
        self.account(n, elapsed);
        Ok(end)
    }

    /// Sends the BCAST invalidations gathered since the last write: before
    /// any wait, so that a client slow to read holds back no other
    /// client's invalidations.
    fn send_gathered(&mut self) {
        if !self.gathered.is_empty() {
            self.shared.tracking.send_gathered(std::mem::take(&mut self.gathered), self.client.id);
        }
    }

    /// Adds a batch's counts to the server's counters and metrics: once per
    /// read, not per command.
    fn account(&mut self, commands: u64, elapsed: std::time::Duration) {
        let st = &self.shared.stats;
        let errors = self.out.take_errors() + std::mem::take(&mut self.client.errors);
        let (hits, misses) = self.client.take_hits();
        // What other connections list of this one, as of this read's end.
        self.client.publish(self.out.resp3);
        // The read's time is shared among its commands by count: two clock
        // reads per read, where two per command cost pipelined GETs about
        // 5% of their throughput. A read holds one command, or a pipeline
        // that is mostly of one kind, so the shares are close.
        let calls: u64 = self.client.tallies.iter().map(|t| t.calls).sum();
        for mut t in self.client.tallies.drain(..) {
            t.nanos = (elapsed.as_nanos() as u64).saturating_mul(t.calls).checked_div(calls).unwrap_or(0);
            self.shared.commands[t.idx].add(&t);
        }
        if commands > 0 {
            st.commands.fetch_add(commands, Ordering::Relaxed);
            self.commands_total.increment(commands);
        }
        if errors > 0 {
            st.errors.fetch_add(errors, Ordering::Relaxed);
            self.errors_total.increment(errors);
            self.shared.errorstats.add(self.out.take_codes());
        }
        if hits > 0 {
            st.hits.fetch_add(hits, Ordering::Relaxed);
        }
        if misses > 0 {
            st.misses.fetch_add(misses, Ordering::Relaxed);
        }
    }

    /// Writes all pending output, then wakes the push senders of the
    /// writes it answers (earlier if the socket is full: see
    /// [`write_all`]). Gives up if the client is killed or the server
    /// stops while the socket is full.
    async fn flush(&mut self) -> io::Result<()> {
        self.send_gathered();
        if !self.out.is_empty() {
            let (chunks, tail) = self.out.parts();
            for c in chunks.iter().map(|c| &c[..]).chain(std::iter::once(tail)) {
                write_all(&self.sock, c, &mut self.wakes, &self.client.outbox.kill, &self.stop).await?;
            }
            self.shared.stats.net_out.fetch_add(self.out.len() as u64, Ordering::Relaxed);
            self.out.written();
        }
        self.wakes.wake();
        Ok(())
    }
}

/// `write_all` that stops when `kill` or `stop` fire while the socket is
/// full (a client that does not read). It wakes the push senders before it
/// waits: a client slow to read delays its replies, never its writes'
/// replication.
async fn write_all(
    sock: &TcpStream,
    mut data: &[u8],
    wakes: &mut PushWakes,
    kill: &CancellationToken,
    stop: &CancellationToken,
) -> io::Result<()> {
    while !data.is_empty() {
        match sock.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                data = &data[n..];
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        wakes.wake();
        tokio::select! {
            biased;
            _ = kill.cancelled() => return Err(io::Error::other("output buffer limit exceeded")),
            _ = stop.cancelled() => return Err(io::Error::other("server shutting down")),
            r = sock.writable() => r?,
        }
    }
    Ok(())
}
