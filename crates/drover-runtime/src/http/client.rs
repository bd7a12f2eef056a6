//! The HTTP/1.1 client: one request on a fresh connection, bounded in time and in body size.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Largest response body [`get`] and [`post`] accept, so a hostile endpoint cannot exhaust the
/// caller's memory.
pub const MAX_BODY: usize = 1 << 20;

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TCP connection could not be opened (refused, unreachable, …).
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// No complete answer within the time given (connect, request and body together).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The peer did not speak HTTP/1.1: garbage, a connection closed mid-answer, and so on.
    #[error("protocol error: {0}")]
    Protocol(#[source] hyper::Error),
    /// The response body was longer than [`MAX_BODY`].
    #[error("response body longer than {MAX_BODY} bytes")]
    BodyTooLarge,
    /// The request could not be built, e.g. `path` is not a valid request target.
    #[error("invalid request: {0}")]
    InvalidRequest(#[source] hyper::http::Error),
}

/// One HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The whole body, at most [`MAX_BODY`] bytes.
    pub body: Bytes,
}

/// `GET path` on a fresh connection to `addr`.
///
/// # Guarantees
/// Returns within `timeout` (connect, request and reading the body count against it), and reads
/// at most [`MAX_BODY`] bytes of body. Any status counts as an answer: the caller judges it.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response> {
    send(addr, Method::GET, path, None, timeout).await
}

/// `POST path` with `body` (of `content_type`) on a fresh connection to `addr`; the bounds of
/// [`get`] apply.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: impl Into<Bytes>,
    timeout: Duration,
) -> Result<Response> {
    send(
        addr,
        Method::POST,
        path,
        Some((content_type, body.into())),
        timeout,
    )
    .await
}

async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<(&str, Bytes)>,
    timeout: Duration,
) -> Result<Response> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, "drover")
        // One request per connection: closing tells the peer not to hold the socket for more.
        .header(header::CONNECTION, "close");
    let body = match body {
        Some((content_type, body)) => {
            request = request.header(header::CONTENT_TYPE, content_type);
            body
        }
        None => Bytes::new(),
    };
    let request = request
        .body(Full::new(body))
        .map_err(Error::InvalidRequest)?;
    tokio::time::timeout(timeout, exchange(addr, request))
        .await
        .map_err(|_| Error::Timeout(timeout))?
}

async fn exchange(addr: SocketAddr, request: Request<Full<Bytes>>) -> Result<Response> {
    let stream = TcpStream::connect(addr).await.map_err(Error::Connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Error::Protocol)?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(Error::Protocol)?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut read = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(Error::Protocol)?.into_data() {
                if read.len() + data.len() > MAX_BODY {
                    return Err(Error::BodyTooLarge);
                }
                read.extend_from_slice(&data);
            }
        }
        Ok(Response {
            status,
            body: Bytes::from(read),
        })
    };
    // The connection is driven here rather than spawned, so a timeout (which drops this future)
    // closes the socket instead of leaving a task waiting on a peer that never answers. It may
    // finish before the body has been taken from it, so only the answer ends the loop.
    let mut connection = std::pin::pin!(connection);
    let mut answer = std::pin::pin!(answer);
    let mut connected = true;
    loop {
        tokio::select! {
            result = &mut answer => return result,
            outcome = &mut connection, if connected => {
                connected = false;
                if let Err(error) = outcome {
                    tracing::debug!(%error, %addr, "HTTP connection ended with an error");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const LIMIT: Duration = Duration::from_secs(10);

    /// A raw server that reads one request and answers `reply` (or nothing, when `None`),
    /// holding the connection open until the client goes away.
    async fn raw_server(reply: Option<Vec<u8>>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = conn.read(&mut buf).await;
                    if let Some(reply) = reply {
                        let _ = conn.write_all(&reply).await;
                    }
                    // Wait for the client to hang up.
                    while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_status_and_body() {
        let addr = raw_server(Some(
            b"HTTP/1.1 503 Unavailable\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        ))
        .await;
        let response = get(addr, "/x?y=1", LIMIT).await.expect("answer");
        assert_eq!(response.status, 503);
        assert_eq!(&response.body[..], b"hello");
    }

    #[tokio::test]
    async fn reads_a_body_that_ends_at_close() {
        // HTTP/1.0 style: no length, the body ends when the server closes.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(b"HTTP/1.0 200 OK\r\n\r\nbye").await;
            }
        });
        let response = get(addr, "/", LIMIT).await.expect("answer");
        assert_eq!((response.status, &response.body[..]), (200, &b"bye"[..]));
    }

    #[tokio::test]
    async fn garbage_is_a_protocol_error() {
        let addr = raw_server(Some(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec())).await;
        let result = get(addr, "/", LIMIT).await;
        assert!(matches!(result, Err(Error::Protocol(_))), "{result:?}");
    }

    #[tokio::test]
    async fn silence_is_a_timeout() {
        let addr = raw_server(None).await;
        let limit = Duration::from_millis(200);
        let result = tokio::time::timeout(LIMIT, get(addr, "/", limit))
            .await
            .expect("bounded by its own timeout");
        assert!(
            matches!(result, Err(Error::Timeout(d)) if d == limit),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn oversized_body_is_refused() {
        let mut reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        )
        .into_bytes();
        reply.resize(reply.len() + MAX_BODY + 1, b'x');
        let addr = raw_server(Some(reply)).await;
        let result = get(addr, "/", LIMIT).await;
        assert!(matches!(result, Err(Error::BodyTooLarge)), "{result:?}");
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        // Bind then drop, so the port is (almost certainly) closed.
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            listener.local_addr().expect("addr")
        };
        let result = get(addr, "/", LIMIT).await;
        assert!(matches!(result, Err(Error::Connect(_))), "{result:?}");
    }

    #[tokio::test]
    async fn invalid_path_is_refused_before_connecting() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let result = get(addr, "/a b", LIMIT).await;
        assert!(
            matches!(result, Err(Error::InvalidRequest(_))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn post_sends_body_and_content_type() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.ends_with(b"{\"Msg\":\"hi\"}") {
                let n = conn.read(&mut buf).await.expect("read");
                assert!(n > 0, "request ended early: {seen:?}");
                seen.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .expect("write");
            String::from_utf8_lossy(&seen).to_lowercase()
        });
        let response = post(
            addr,
            "/",
            "application/json",
            &b"{\"Msg\":\"hi\"}"[..],
            LIMIT,
        )
        .await
        .expect("answer");
        assert_eq!((response.status, &response.body[..]), (200, &b"ok"[..]));
        let seen = tokio::time::timeout(LIMIT, server)
            .await
            .expect("server done")
            .expect("server ok");
        assert!(seen.starts_with("post / http/1.1\r\n"), "{seen}");
        assert!(
            seen.contains("content-type: application/json\r\n"),
            "{seen}"
        );
        assert!(seen.contains("content-length: 12\r\n"), "{seen}");
    }
}
