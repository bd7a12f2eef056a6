//! The HTTP/1.1 accept loop: an axum [`Router`] served by hyper with a bounded request head.

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a client may take to send a whole request head, counted from when the server starts
/// waiting for it (a new connection, or an idle kept-alive one).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head (request line and headers) the server reads; longer ones get 431.
pub const MAX_HEAD: usize = 8 * 1024;

/// How long to wait before accepting again after `accept` failed (e.g. out of file
/// descriptors), so the loop does not spin while the cause lasts.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `shutdown` is cancelled.
///
/// # Guarantees
/// - A connection that has not sent a complete request head within `header_timeout` is closed,
///   however slowly it trickles bytes (hyper's header read timeout bounds the whole head, not
///   each read), and so is a kept-alive connection idle for that long.
/// - Request heads longer than [`MAX_HEAD`] are answered 431.
/// - On `shutdown` the loop stops accepting and returns; open connections finish the request
///   in flight and close, idle kept-alive ones at once.
///
/// # Caveats
/// Returns without waiting for those connections. A connection that has sent nothing yet is not
/// closed by `shutdown` (hyper waits for its first request) but by the header read timeout. The time a handler takes, and reading a
/// request body, are not bounded here: handlers that read bodies bound them themselves.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(MAX_HEAD);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "HTTP server cannot accept");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let outcome = tokio::select! {
                outcome = connection.as_mut() => outcome,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = outcome {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
}
