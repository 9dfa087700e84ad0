//! The HTTP endpoints of a peer, for its operators and its orchestrator:
//!
//! - `GET /metrics`: the Prometheus text format, when a recorder is given.
//! - `GET /healthz`: 200 `ok` while the process serves (a liveness probe).
//! - `GET /readyz`: 200 `ready` when the peer is bootstrapped and running;
//!   503 with a one-line reason otherwise: `loading` (not yet synced with a
//!   seed), `draining` (leaving), `superseded` (a newer incarnation of its
//!   name joined, or it was forgotten) or `stopped` (a readiness probe).
//!
//! `HEAD` is answered as `GET` without the body. Any other path is 404,
//! any other method 405. A request head is bounded in size and in time,
//! and so is the number of connections served at once; a request body is
//! never read.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::Mesh;

/// The liveness probe's path.
pub const HEALTHZ: &str = "/healthz";
/// The readiness probe's path.
pub const READYZ: &str = "/readyz";
/// The Prometheus scrape path.
pub const METRICS: &str = "/metrics";

/// How long a client may take to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read (hyper's smallest allowed buffer is 8 KiB).
const MAX_HEAD: usize = 16 * 1024;
/// Connections served at once; more are closed at once. Probes and
/// scrapes come a few a second: this only bounds what a runaway client
/// costs.
const MAX_CONNECTIONS: usize = 64;

/// Serves the endpoints for `mesh` on `listener` until `shutdown`
/// resolves. `metrics` renders `/metrics` (404 without one).
pub async fn serve(listener: TcpListener, mesh: Mesh, metrics: Option<PrometheusHandle>, shutdown: impl Future) {
    let metrics = Arc::new(metrics);
    crate::listen::serve_bounded(listener, MAX_CONNECTIONS, "http", shutdown, |stream| {
        let (mesh, metrics) = (mesh.clone(), metrics.clone());
        async move {
            let service = hyper::service::service_fn(move |req| {
                let reply = answer(&req, &mesh, metrics.as_ref().as_ref());
                async move { Ok::<_, Infallible>(reply) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
    })
    .await;
}

/// The reply to one request.
fn answer<B>(req: &Request<B>, mesh: &Mesh, metrics: Option<&PrometheusHandle>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: GET or HEAD\n".into());
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match (req.uri().path(), metrics) {
        (HEALTHZ, _) => text(StatusCode::OK, "ok\n".into()),
        (READYZ, _) => {
            let r = mesh.readiness();
            let status = if r.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            text(status, format!("{}\n", r.reason()))
        }
        (METRICS, Some(m)) => {
            let mut r = text(StatusCode::OK, m.render());
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            r
        }
        _ => text(StatusCode::NOT_FOUND, format!("not found: try {METRICS}, {HEALTHZ} or {READYZ}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}
