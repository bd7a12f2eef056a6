//! The daemons' admin endpoint: `/metrics` (Prometheus text), `/healthz` (the process runs) and
//! `/readyz` (it has synced and can do its job), on axum through [`crate::http::serve`].
//!
//! Each path answers GET and HEAD, ignores a query string, and any other path is 404.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::http;

/// What `/readyz` reports: ready or not, and why not.
pub type Readiness = watch::Receiver<Result<(), String>>;

/// The OpenMetrics text format `prometheus_client` encodes.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` and serves until `shutdown`; returns the bound address (port 0 picks one).
///
/// # Guarantees
/// Clients that do not send a whole request head within [`http::HEADER_READ_TIMEOUT`] are
/// dropped; the other guarantees of [`http::serve`] apply.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    ready: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    serve_with(addr, registry, ready, shutdown, http::HEADER_READ_TIMEOUT).await
}

/// [`serve`] with the header read timeout as a parameter, so tests need not wait for the real one.
async fn serve_with(
    addr: SocketAddr,
    registry: Arc<Registry>,
    ready: Readiness,
    shutdown: CancellationToken,
    header_timeout: Duration,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(registry, ready);
    tokio::spawn(http::serve(listener, app, header_timeout, shutdown));
    Ok(bound)
}

#[derive(Clone)]
struct Admin {
    registry: Arc<Registry>,
    ready: Readiness,
}

fn router(registry: Arc<Registry>, ready: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { text(StatusCode::OK, "ok\n".into()) }),
        )
        .route("/readyz", get(readyz))
        .method_not_allowed_fallback(|| async {
            text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into())
        })
        .fallback(|| async { text(StatusCode::NOT_FOUND, "not found\n".into()) })
        .with_state(Admin { registry, ready })
}

async fn metrics(State(admin): State<Admin>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &admin.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response(),
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

async fn readyz(State(admin): State<Admin>) -> Response {
    // Cloned so the watch lock is not held while the answer is built.
    let state = admin.ready.borrow().clone();
    match state {
        Ok(()) => text(StatusCode::OK, "ready\n".into()),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// A plain-text answer, with the bare `text/plain` type these paths have always had.
fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::{timeout, Instant};

    const LIMIT: Duration = Duration::from_secs(10);

    struct Server {
        addr: SocketAddr,
        ready: watch::Sender<Result<(), String>>,
        shutdown: CancellationToken,
    }

    async fn start(header_timeout: Duration) -> Server {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        counter.inc();
        registry.register("admin_test", "A counter for the admin tests", counter);
        let (ready, readiness) = watch::channel(Ok(()));
        let shutdown = CancellationToken::new();
        let addr = timeout(
            LIMIT,
            serve_with(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                Arc::new(registry),
                readiness,
                shutdown.clone(),
                header_timeout,
            ),
        )
        .await
        .expect("bind in time")
        .expect("bind");
        Server {
            addr,
            ready,
            shutdown,
        }
    }

    async fn get(server: &Server, path: &str) -> http::Response {
        http::get(server.addr, path, LIMIT).await.expect("answer")
    }

    async fn connect(server: &Server) -> TcpStream {
        timeout(LIMIT, TcpStream::connect(server.addr))
            .await
            .expect("connect in time")
            .expect("connect")
    }

    /// Sends `request_line` (with `headers`, each ending in CRLF) on a connection of its own and
    /// returns everything the server wrote until it closed.
    async fn raw(server: &Server, request_line: &str, headers: &str) -> String {
        let request =
            format!("{request_line} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n");
        let exchange = async {
            let mut conn = connect(server).await;
            conn.write_all(request.as_bytes()).await.expect("write");
            let mut answer = Vec::new();
            conn.read_to_end(&mut answer).await.expect("read");
            String::from_utf8_lossy(&answer).into_owned()
        };
        timeout(LIMIT, exchange).await.expect("answer in time")
    }

    /// Waits for the server to close `conn`, returning how long that took from `since`.
    async fn closed(mut conn: impl AsyncRead + Unpin, since: Instant) -> Duration {
        let mut buf = [0u8; 256];
        timeout(LIMIT, async {
            loop {
                match conn.read(&mut buf).await {
                    // A reset is as closed as a FIN.
                    Ok(0) | Err(_) => return since.elapsed(),
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("the server closes the connection in time")
    }

    #[tokio::test]
    async fn answers_each_path() {
        let server = start(http::HEADER_READ_TIMEOUT).await;
        let metrics = get(&server, "/metrics").await;
        assert_eq!(metrics.status, 200);
        let text = String::from_utf8_lossy(&metrics.body);
        assert!(text.contains("admin_test_total 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        let health = get(&server, "/healthz").await;
        assert_eq!((health.status, &health.body[..]), (200, &b"ok\n"[..]));
        let ready = get(&server, "/readyz").await;
        assert_eq!((ready.status, &ready.body[..]), (200, &b"ready\n"[..]));
        let missing = get(&server, "/nope").await;
        assert_eq!(
            (missing.status, &missing.body[..]),
            (404, &b"not found\n"[..])
        );
    }

    #[tokio::test]
    async fn metrics_carry_the_prometheus_content_type() {
        let server = start(http::HEADER_READ_TIMEOUT).await;
        let answer = raw(&server, "GET /metrics", "").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer
                .to_lowercase()
                .contains(&format!("content-type: {METRICS_CONTENT_TYPE}\r\n")),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn query_strings_are_ignored() {
        let server = start(http::HEADER_READ_TIMEOUT).await;
        for path in ["/metrics?x=1", "/healthz?probe=1&y", "/readyz?"] {
            assert_eq!(get(&server, path).await.status, 200, "{path}");
        }
    }

    #[tokio::test]
    async fn head_is_answered_without_a_body() {
        let server = start(http::HEADER_READ_TIMEOUT).await;
        for path in ["/metrics", "/healthz", "/readyz"] {
            let answer = raw(&server, &format!("HEAD {path}"), "").await;
            assert!(
                answer.starts_with("HTTP/1.1 200 OK\r\n"),
                "{path}: {answer}"
            );
            assert!(answer.ends_with("\r\n\r\n"), "{path} sent a body: {answer}");
        }
    }

    #[tokio::test]
    async fn other_methods_are_refused() {
        let server = start(http::HEADER_READ_TIMEOUT).await;
        let answer = raw(&server, "POST /metrics", "Content-Length: 0\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
        assert!(answer.ends_with("GET only\n"), "{answer}");
    }

    #[tokio::test]
    async fn readyz_reports_why_not_ready() {
        let server = start(http::HEADER_READ_TIMEOUT).await;
        server
            .ready
            .send(Err("not synced yet".into()))
            .expect("the server holds a receiver");
        let answer = get(&server, "/readyz").await;
        assert_eq!(
            (answer.status, &answer.body[..]),
            (503, &b"not synced yet\n"[..])
        );
        server
            .ready
            .send(Ok(()))
            .expect("the server holds a receiver");
        assert_eq!(get(&server, "/readyz").await.status, 200);
    }

    #[tokio::test]
    async fn oversized_heads_get_431() {
        let server = start(http::HEADER_READ_TIMEOUT).await;
        let filler = "a".repeat(http::MAX_HEAD);
        let answer = raw(&server, "GET /metrics", &format!("X-Filler: {filler}\r\n")).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }

    /// A slowloris: half a request line, then silence. The server must drop it once the header
    /// read timeout has passed, and not before (so it is that timer, not some other failure).
    #[tokio::test]
    async fn slow_clients_are_dropped() {
        let header_timeout = Duration::from_millis(300);
        let server = start(header_timeout).await;
        let started = Instant::now();
        let mut conn = connect(&server).await;
        timeout(LIMIT, conn.write_all(b"GET /metr"))
            .await
            .expect("write in time")
            .expect("write");
        let after = closed(conn, started).await;
        assert!(after >= header_timeout, "dropped after {after:?}");
        // The server itself is fine: a prompt client is still served.
        assert_eq!(get(&server, "/healthz").await.status, 200);
    }

    /// Trickling a byte at a time must not reset the clock: the timeout bounds the whole head.
    #[tokio::test]
    async fn trickling_clients_are_dropped() {
        let header_timeout = Duration::from_millis(300);
        let server = start(header_timeout).await;
        let started = Instant::now();
        let conn = connect(&server).await;
        let (read, mut write) = conn.into_split();
        let trickle = async move {
            let _ = write.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ").await;
            // Pacing the client, not waiting for a condition: one byte every 20 ms, far more
            // often than the timeout, until the server hangs up.
            let mut pace = tokio::time::interval(Duration::from_millis(20));
            loop {
                pace.tick().await;
                if write.write_all(b"a").await.is_err() {
                    return;
                }
            }
        };
        // The writer only ends when the server hung up, so either side finishing means closed.
        let after = tokio::select! {
            after = closed(read, started) => after,
            () = trickle => started.elapsed(),
        };
        assert!(after >= header_timeout, "dropped after {after:?}");
    }

    #[tokio::test]
    async fn idle_connections_are_dropped() {
        let header_timeout = Duration::from_millis(300);
        let server = start(header_timeout).await;
        let started = Instant::now();
        let conn = connect(&server).await;
        let after = closed(conn, started).await;
        assert!(after >= header_timeout, "dropped after {after:?}");
    }

    #[tokio::test]
    async fn shutdown_closes_kept_alive_connections_and_stops_accepting() {
        // The real (10 s) timeout, so a prompt close can only come from the shutdown.
        let server = start(http::HEADER_READ_TIMEOUT).await;
        let mut conn = connect(&server).await;
        // One request on a kept-alive connection, which then sits idle.
        let answered = async {
            conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            let mut answer = Vec::new();
            let mut buf = [0u8; 256];
            while !answer.ends_with(b"\r\n\r\nok\n") {
                let n = conn.read(&mut buf).await.expect("read");
                assert!(n > 0, "closed early: {answer:?}");
                answer.extend_from_slice(&buf[..n]);
            }
        };
        timeout(LIMIT, answered).await.expect("answered in time");
        let started = Instant::now();
        server.shutdown.cancel();
        let after = closed(conn, started).await;
        assert!(after < Duration::from_secs(5), "closed after {after:?}");
        let refused = timeout(LIMIT, async {
            loop {
                if TcpStream::connect(server.addr).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(refused.is_ok(), "still accepting after shutdown");
    }
}
