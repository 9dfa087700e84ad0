//! Frames over QUIC streams, and anti-entropy sessions run over a bi stream.

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;

use crate::replica::Replica;
use crate::store::Change;
use crate::sync::{Phase, Session, SessionStats, SyncError};
use crate::wire::{FrameCodec, Message, WireError};

/// Why reading or writing frames on a stream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    /// The peer sent bytes that are not a valid frame.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The stream or connection failed.
    #[error("stream: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing failed.
    #[error("stream: {0}")]
    Write(#[from] quinn::WriteError),
    /// The peer sent a valid frame that does not belong here.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The anti-entropy session failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// The session's writer stopped (the stream or connection closed).
    #[error("stream closed while sending")]
    WriterGone,
}

impl StreamError {
    /// Errors that mean the peer misbehaved: the connection is closed.
    pub(crate) fn is_protocol(&self) -> bool {
        matches!(self, StreamError::Wire(_) | StreamError::Protocol(_) | StreamError::Sync(SyncError::Protocol(_)))
    }
}

/// Reads length-prefixed frames from a receive stream.
pub(crate) struct FrameReader {
    recv: RecvStream,
    buf: BytesMut,
    codec: FrameCodec,
    received: u64,
}

impl FrameReader {
    pub(crate) fn new(recv: RecvStream, codec: FrameCodec) -> Self {
        FrameReader { recv, buf: BytesMut::new(), codec, received: 0 }
    }

    /// Bytes read from the stream so far.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// The next message, or `None` at a clean end of stream. Memory is
    /// bounded by the codec's frame limit, checked on the length prefix, and
    /// grows only with the bytes received (the codec reserves at most one
    /// read ahead), so an announced frame that never comes costs little.
    pub(crate) async fn next(&mut self) -> Result<Option<Message>, StreamError> {
        loop {
            if let Some(m) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(m));
            }
            match self.recv.read_chunk(crate::wire::RESERVE_CHUNK, true).await? {
                Some(chunk) => {
                    self.received += chunk.bytes.len() as u64;
                    self.buf.extend_from_slice(&chunk.bytes);
                }
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    let have = self.buf.len();
                    return Err(WireError::Truncated { have, need: have + 1 }.into());
                }
            }
        }
    }
}

/// Encodes and writes one message.
pub(crate) async fn write_message(send: &mut SendStream, codec: &FrameCodec, m: &Message) -> Result<(), StreamError> {
    send.write_chunk(codec.encode_to_bytes(m)?).await?;
    Ok(())
}

/// What a session over a stream produced. A session that failed half-way
/// still reports what it sent and what it merged: those registers are
/// stored, and their changes must reach subscribers.
pub(crate) struct SessionResult {
    pub(crate) stats: SessionStats,
    pub(crate) changes: Vec<Change>,
    pub(crate) complete: bool,
    /// The peer declined the session (`Busy`): its own round waited for
    /// an accept.
    pub(crate) declined: bool,
    /// Why the session ended early, if it did.
    pub(crate) error: Option<StreamError>,
}

/// How often a reader of a peer's messages (an anti-entropy session, a
/// push stream) reads the process's memory, and how: every `every` bytes
/// of its messages (a session's sent and received; 0: never), it calls
/// `run`.
pub(crate) struct Check<F> {
    pub(crate) every: u64,
    pub(crate) run: F,
}

/// Runs an anti-entropy session over one bi stream. Reading and writing run
/// concurrently, so that two sides streaming large stores at each other
/// cannot deadlock on flow control. `accepted` is called once the peer
/// accepted the session (not when it declined it): while an initiator
/// waits for that, this peer declines rounds offered to it (see `Links`).
/// `publish` gets the
/// changes each message made as soon as it is merged: a session that
/// brings a peer many registers would otherwise hold a change for each
/// until it ends. `check` reads the process's memory as the session's
/// traffic grows.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_session(
    replica: &Replica,
    mut session: Session,
    send: SendStream,
    recv: RecvStream,
    codec: FrameCodec,
    now_ms: impl Fn() -> u64,
    accepted: impl FnOnce(),
    publish: impl Fn(Vec<Change>),
    check: Check<impl Fn()>,
) -> SessionResult {
    let mut accepted = Some(accepted);
    let mut checked_at = 0;
    // The writer owns the send stream; frames reach it through a small
    // bounded channel, which is the session's back-pressure.
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let writer = tokio::spawn(async move {
        let mut send = send;
        while let Some(frame) = rx.recv().await {
            send.write_chunk(frame).await?;
        }
        let _ = send.finish();
        Ok::<_, StreamError>(send)
    });
    let (in_tx, mut in_rx) = mpsc::channel::<Result<Option<Message>, StreamError>>(4);
    let reader = tokio::spawn(async move {
        let mut r = FrameReader::new(recv, codec);
        loop {
            let m = r.next().await;
            let end = !matches!(m, Ok(Some(_)));
            if in_tx.send(m).await.is_err() || end {
                break;
            }
        }
    });
    let result = async {
        let mut next: Option<Bytes> = None;
        let mut recv_done = false;
        loop {
            if check.every > 0 {
                let st = session.stats();
                let traffic = st.bytes_sent + st.bytes_received;
                if traffic - checked_at >= check.every {
                    checked_at = traffic;
                    (check.run)();
                }
            }
            if next.is_none() {
                if let Some(m) = session.poll_transmit(replica) {
                    next = Some(codec.encode_to_bytes(&Message::Sync(m))?);
                }
            }
            if next.is_none() && session.is_finished() {
                break;
            }
            tokio::select! {
                permit = tx.reserve(), if next.is_some() => {
                    // The writer stops only when a write failed: its own
                    // error, collected below, says why.
                    let permit = permit.map_err(|_| StreamError::WriterGone)?;
                    permit.send(next.take().expect("guarded by is_some"));
                }
                // A session waiting for its queue to drain takes nothing
                // more (see `Session::wants_input`): the peer's messages wait
                // in the stream, under its flow control.
                m = in_rx.recv(), if !recv_done && session.wants_input() => match m {
                    Some(Ok(Some(Message::Sync(msg)))) => {
                        let handled = session.handle_message(replica, msg, now_ms());
                        let changes = session.take_changes();
                        if !changes.is_empty() {
                            publish(changes);
                        }
                        handled?;
                        if !matches!(session.phase(), Phase::AwaitAccept | Phase::Declined) {
                            if let Some(f) = accepted.take() {
                                f();
                            }
                        }
                    }
                    Some(Ok(Some(other))) => {
                        return Err(StreamError::Protocol(format!("{} on an anti-entropy stream", kind(&other))))
                    }
                    Some(Err(e)) => return Err(e),
                    Some(Ok(None)) | None => {
                        recv_done = true;
                        if !session.is_finished() {
                            return Err(StreamError::Protocol("anti-entropy stream ended early".into()));
                        }
                    }
                },
                else => return Err(StreamError::Protocol("anti-entropy session stalled".into())),
            }
        }
        Ok(())
    }
    .await;
    // Whatever was queued (a Reject, say) still goes out before the stream
    // closes.
    while let Some(m) = session.poll_transmit(replica) {
        if let Ok(f) = codec.encode_to_bytes(&Message::Sync(m)) {
            if tx.send(f).await.is_err() {
                break;
            }
        }
    }
    drop(tx);
    let written = writer.await;
    reader.abort();
    let error = match result {
        Ok(()) => None,
        Err(StreamError::WriterGone) => match written {
            Ok(Err(e)) => Some(e),
            _ => Some(StreamError::WriterGone),
        },
        Err(e) => Some(e),
    };
    SessionResult {
        stats: session.stats().clone(),
        changes: session.take_changes(),
        complete: error.is_none() && session.is_complete(),
        declined: error.is_none() && session.is_declined(),
        error,
    }
}

/// A message's kind, for logs.
pub(crate) fn kind(m: &Message) -> &'static str {
    match m {
        Message::Hello(_) => "Hello",
        Message::Refused(_) => "Refused",
        Message::Deltas(_) => "Deltas",
        Message::Sync(_) => "Sync",
        Message::Membership(_) => "Membership",
        Message::Goodbye(_) => "Goodbye",
        Message::Published(_) => "Published",
        Message::Leases(_) => "Leases",
        Message::Versions(_) => "Versions",
    }
}
