//! Accepting peers: the incoming side of the hello.

use std::sync::Arc;
use std::time::Duration;

use super::conn::{note_protocol_error, note_tls_refusal, CODE_DUPLICATE, CODE_PROTOCOL, CODE_REFUSED};
use super::hello::{check_hello, refused, HELLO_TIMEOUT};
use super::inner::Inner;
use super::links::{Side, Verdict};
use super::stream::{kind, write_message, FrameReader};
use super::versions::{hello_frames, read_versions};
use crate::wire::{Message, VersionRange};

/// Accepts incoming connections until shutdown.
pub(super) async fn accept_loop(inner: Arc<Inner>) {
    loop {
        let incoming = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            i = inner.endpoint.accept() => match i { Some(i) => i, None => return },
        };
        let inner2 = inner.clone();
        inner.tasks.spawn(async move {
            let remote = incoming.remote_address();
            match tokio::time::timeout(HELLO_TIMEOUT, accept_one(&inner2, incoming)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%remote, error = %e, "incoming connection failed"),
                Err(_) => tracing::debug!(%remote, "incoming connection: hello timed out"),
            }
        });
    }
}

/// Runs the acceptor's side of the hello on one incoming connection.
async fn accept_one(
    inner: &Arc<Inner>,
    incoming: quinn::Incoming,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // The TLS handshake verified the client's certificate against the CAs.
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            note_tls_refusal(inner, remote, false, &e);
            return Err(e.into());
        }
    };
    let (mut send, recv) = conn.accept_bi().await?;
    let mut reader = FrameReader::new(recv, inner.codec);
    let h = match reader.next().await {
        Ok(Some(Message::Hello(h))) => h,
        Ok(other) => {
            conn.close(CODE_PROTOCOL, b"expected hello");
            return Err(format!("expected a hello, got {:?}", other.as_ref().map(kind)).into());
        }
        Err(e) => {
            note_protocol_error(inner, &conn, "hello", &e);
            return Err(e.into());
        }
    };
    // The range its sender speaks, or the end of the stream from a peer of
    // an earlier build.
    let versions = match read_versions(&mut reader).await {
        Ok(v) => v,
        Err(e) => {
            note_protocol_error(inner, &conn, "hello", &e);
            return Err(e.into());
        }
    };
    match check_hello(inner, &conn, Side::Acceptor, &h, versions) {
        Verdict::Accept { version } => {
            // The link's version, which a peer of an earlier build checks
            // against its own.
            send.write_all(&hello_frames(inner, version)?).await?;
            let _ = send.finish();
            Ok(())
        }
        Verdict::ToSelf => {
            conn.close(CODE_DUPLICATE, b"self");
            Ok(())
        }
        Verdict::Refuse(r) => {
            refused(inner, &h.from, &r, versions.unwrap_or(VersionRange::single(h.version)));
            let _ = write_message(&mut send, &inner.codec, &Message::Refused(r)).await;
            let _ = send.finish();
            // Give the refusal time to arrive before the close.
            let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
            conn.close(CODE_REFUSED, b"refused");
            Ok(())
        }
    }
}
