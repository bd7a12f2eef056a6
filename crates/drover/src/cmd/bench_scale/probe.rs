//! A minimal HTTP/1.1 GET over loopback, for etcd's `/health`, the controllers' `/readyz` and
//! the web view's pages: one request per connection, status code and body, nothing else.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest answer read: health endpoints answer a few bytes, a web view page (at most
/// 100 rows by default) some tens of KiB.
const MAX_ANSWER: u64 = 1024 * 1024;

/// `GET path` on `addr`: the status code and the body, or `None` when there is no answer
/// within `timeout` (refused, closed early, not HTTP).
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&answer);
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, body)| body.to_string());
        Some((code, body))
    };
    tokio::time::timeout(timeout, exchange).await.ok().flatten()
}
