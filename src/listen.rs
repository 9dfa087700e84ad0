//! Serving a TCP listener with a bound on the connections served at once:
//! the accept loop of the admin port and of the HTTP endpoints.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Accepts connections on `listener` until `shutdown` resolves, each
/// served by a task running `serve`, at most `max` at once: one over the
/// bound is closed at once. Accept errors (out of file descriptors and the
/// like) are logged under `port` and retried after a pause; they never end
/// the loop, so a port of the peer cannot stop it. Once `shutdown`
/// resolves, waits for the connections in flight (each must bound itself).
pub(crate) async fn serve_bounded<F, Fut>(
    listener: TcpListener,
    max: usize,
    port: &'static str,
    shutdown: impl Future,
    serve: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(shutdown);
    let limit = Arc::new(Semaphore::new(max));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Over the limit: dropping the stream closes it.
                    let Ok(permit) = limit.clone().try_acquire_owned() else { continue };
                    let served = serve(stream);
                    conns.spawn(async move {
                        let _permit = permit;
                        served.await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, port, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    while conns.join_next().await.is_some() {}
}
