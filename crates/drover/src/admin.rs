//! The daemons' admin endpoint: `/metrics` (Prometheus text), `/healthz` (the process runs) and
//! `/readyz` (it has synced and can do its job), over a deliberately tiny HTTP/1.1 server so the
//! binary needs no web framework for three read-only paths.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Largest request head the server reads; longer requests get 431.
const MAX_HEAD: usize = 8 * 1024;

/// What `/readyz` reports: ready or not, and why not.
pub type Readiness = watch::Receiver<Result<(), String>>;

/// Binds `addr` and serves until `shutdown`; returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    ready: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    let registry = Arc::clone(&registry);
                    let ready = ready.clone();
                    tokio::spawn(async move {
                        if let Err(error) = answer(stream, &registry, &ready).await {
                            tracing::debug!(%error, "admin request failed");
                        }
                    });
                }
                Err(error) => tracing::warn!(%error, "admin endpoint cannot accept"),
            }
        }
    });
    Ok(bound)
}

async fn answer(
    mut stream: TcpStream,
    registry: &Registry,
    ready: &Readiness,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut parts = text.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n",
        )
        .await;
    }
    match path {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => {
                    respond(
                        &mut stream,
                        "200 OK",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        &body,
                    )
                    .await
                }
                Err(error) => {
                    respond(
                        &mut stream,
                        "500 Internal Server Error",
                        "text/plain",
                        &error.to_string(),
                    )
                    .await
                }
            }
        }
        "/healthz" => respond(&mut stream, "200 OK", "text/plain", "ok\n").await,
        "/readyz" => {
            let state = ready.borrow().clone();
            match state {
                Ok(()) => respond(&mut stream, "200 OK", "text/plain", "ready\n").await,
                Err(why) => {
                    respond(
                        &mut stream,
                        "503 Service Unavailable",
                        "text/plain",
                        &format!("{why}\n"),
                    )
                    .await
                }
            }
        }
        _ => respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
