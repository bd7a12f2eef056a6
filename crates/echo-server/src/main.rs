//! Drover's test workload: a tiny HTTP/1.1 server on Drover's one HTTP stack
//! ([`drover_runtime::http::serve`]), built as a static binary and packaged `FROM scratch` as
//! `drover/echo-server:latest` by `hack/build-images.sh`.
//!
//! - `POST /` answers 200 with the request body (so `{"Msg":"hi"}` comes back unchanged);
//! - `GET /health` answers 200, `GET /healthfail` answers 500 (for health-check tests);
//! - every request is logged to stdout, so `drover logs` has something to show;
//! - `PORT` (default 7777) picks the port; SIGTERM and SIGINT end it at once, which matters
//!   because it runs as PID 1 in its container, where default signal actions are ignored.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use drover_runtime::http;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Largest request body the server accepts; larger requests get 413.
const MAX_BODY: usize = 1 << 20;

/// How long a client may take to send a request body, as the head is bounded by
/// [`http::HEADER_READ_TIMEOUT`].
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() {
    let [terminate, interrupt] = [SignalKind::terminate(), SignalKind::interrupt()].map(|kind| {
        signal(kind)
            .inspect_err(|error| {
                let number = kind.as_raw_value();
                eprintln!("echo-server: cannot handle signal {number}: {error}");
            })
            .ok()
    });
    let port = std::env::var("PORT").unwrap_or_else(|_| "7777".to_string());
    let listener = match bind(&port).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("echo-server: cannot listen on port {port}: {error}");
            std::process::exit(1);
        }
    };
    println!("echo-server listening on port {port}");
    let serving = http::serve(
        listener,
        app(),
        http::HEADER_READ_TIMEOUT,
        CancellationToken::new(),
    );
    tokio::select! {
        () = serving => {}
        () = stopped(terminate, interrupt) => println!("echo-server stopping on signal"),
    }
    // Returning drops the runtime and with it every open connection: a signal ends it at once.
}

async fn bind(port: &str) -> std::io::Result<TcpListener> {
    let port: u16 = port
        .parse()
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
    TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await
}

/// Resolves on the first SIGTERM or SIGINT (of those that could be handled).
async fn stopped(terminate: Option<Signal>, interrupt: Option<Signal>) {
    async fn received(signal: Option<Signal>) {
        match signal {
            Some(mut signal) => {
                signal.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    tokio::select! {
        () = received(terminate) => {}
        () = received(interrupt) => {}
    }
}

/// Every request goes to [`answer`], so the routing below is the whole behaviour.
fn app() -> Router {
    Router::new().fallback(answer)
}

async fn answer(request: Request) -> Response {
    let method = request.method().clone();
    // The request target is matched whole, query included, as this workload always has.
    let target = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().to_string(), |target| target.to_string());
    println!("{method} {target}");
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if declared > MAX_BODY {
        return reply(StatusCode::PAYLOAD_TOO_LARGE, "too large\n");
    }
    match (&method, target.as_str()) {
        (&Method::POST, "/") => echo(request.into_body()).await,
        (&Method::GET, "/health") => reply(StatusCode::OK, "ok\n"),
        (&Method::GET, "/healthfail") => {
            reply(StatusCode::INTERNAL_SERVER_ERROR, "failing on purpose\n")
        }
        _ => reply(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Answers with the request body, read within [`BODY_READ_TIMEOUT`] and [`MAX_BODY`] (a chunked
/// body declares no length, so the limit is also applied while reading).
async fn echo(body: Body) -> Response {
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, MAX_BODY).collect());
    match read.await {
        Ok(Ok(body)) => reply(StatusCode::OK, body.to_bytes()),
        Ok(Err(error)) if error.is::<LengthLimitError>() => {
            reply(StatusCode::PAYLOAD_TOO_LARGE, "too large\n")
        }
        Ok(Err(error)) => {
            eprintln!("echo-server: reading the body: {error}");
            reply(StatusCode::BAD_REQUEST, "bad body\n")
        }
        Err(_) => {
            eprintln!("echo-server: no body within {BODY_READ_TIMEOUT:?}");
            reply(StatusCode::REQUEST_TIMEOUT, "body too slow\n")
        }
    }
}

/// Every answer is JSON-typed and closes the connection: one request per connection, as
/// always.
fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CONNECTION, "close"),
        ],
        body.into(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const LIMIT: Duration = Duration::from_secs(10);

    async fn start() -> SocketAddr {
        let listener = tokio::time::timeout(LIMIT, TcpListener::bind("127.0.0.1:0"))
            .await
            .expect("bind in time")
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(http::serve(
            listener,
            app(),
            http::HEADER_READ_TIMEOUT,
            CancellationToken::new(),
        ));
        addr
    }

    async fn raw(addr: SocketAddr, request: &[u8]) -> String {
        let exchange = async {
            let mut conn = TcpStream::connect(addr).await.expect("connect");
            conn.write_all(request).await.expect("write");
            let mut answer = Vec::new();
            conn.read_to_end(&mut answer).await.expect("read");
            String::from_utf8_lossy(&answer).into_owned()
        };
        tokio::time::timeout(LIMIT, exchange)
            .await
            .expect("answer in time")
    }

    #[tokio::test]
    async fn post_echoes_the_body() {
        let addr = start().await;
        let body = br#"{"Msg":"hi"}"#;
        let answer = http::post(addr, "/", "application/json", &body[..], LIMIT)
            .await
            .expect("answer");
        assert_eq!((answer.status, &answer.body[..]), (200, &body[..]));
    }

    #[tokio::test]
    async fn health_paths() {
        let addr = start().await;
        let cases: [(&str, u16, &[u8]); 4] = [
            ("/health", 200, b"ok\n"),
            ("/healthfail", 500, b"failing on purpose\n"),
            ("/nope", 404, b"not found\n"),
            ("/health?x=1", 404, b"not found\n"),
        ];
        for (path, status, body) in cases {
            let answer = http::get(addr, path, LIMIT).await.expect("answer");
            assert_eq!((answer.status, &answer.body[..]), (status, body), "{path}");
        }
    }

    #[tokio::test]
    async fn answers_are_json_typed_and_close() {
        let addr = start().await;
        let answer = raw(addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let lower = answer.to_lowercase();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            lower.contains("content-type: application/json\r\n"),
            "{answer}"
        );
        assert!(lower.contains("connection: close\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
    }

    #[tokio::test]
    async fn oversized_bodies_get_413() {
        let addr = start().await;
        let declared = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let answer = raw(addr, declared.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert!(answer.ends_with("too large\n"), "{answer}");
    }
}
