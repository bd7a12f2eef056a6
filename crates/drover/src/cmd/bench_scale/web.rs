//! `bench scale --web`: the web view of controller c0 at full size. Once every instance
//! runs, it loads the view's first page the way a browser does (the HTML, its script and
//! style, then `/api/summary` and the first page of `/api/tasks`), keeps a change stream
//! (`/api/stream`) open and re-fetches pages as a browser that follows the notices would,
//! and reads c0's resident memory before and after.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::probe;
use crate::exit::{CliError, CliResult};

/// Bound on one page fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How many rounds of re-fetching the visible pages the open view makes.
const ROUNDS: usize = 10;
/// Pause between rounds.
const ROUND_GAP: Duration = Duration::from_secs(1);

/// What the view cost.
pub struct Figures {
    /// The first page: the HTML, script, style, summary and first tasks page, one after the
    /// other.
    pub first_page: Duration,
    /// The slowest single request of the first page, and its path.
    pub slowest: (Duration, &'static str),
    /// c0's resident set before the view was opened, in KiB.
    pub rss_before_kib: u64,
    /// ... and after the stream was open and [`ROUNDS`] rounds of pages were fetched.
    pub rss_after_kib: u64,
    /// Change notices the open stream received meanwhile.
    pub notices: usize,
}

/// The current resident set of `pid` (VmRSS), in KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn fetch(addr: SocketAddr, path: &'static str) -> CliResult<Duration> {
    let started = Instant::now();
    match probe::get(addr, path, FETCH_TIMEOUT).await {
        Some((200, _)) => Ok(started.elapsed()),
        Some((code, _)) => Err(CliError::failure(format!("web view {path}: HTTP {code}"))),
        None => Err(CliError::failure(format!(
            "web view {path}: no answer within {FETCH_TIMEOUT:?}"
        ))),
    }
}

/// Measures the view served at `addr` by the controller process `pid`.
pub async fn measure(addr: SocketAddr, pid: u32) -> CliResult<Figures> {
    let rss =
        || vm_rss_kib(pid).ok_or_else(|| CliError::failure("cannot read the controller's VmRSS"));
    let rss_before_kib = rss()?;
    let first = [
        "/",
        "/app.js",
        "/style.css",
        "/api/summary",
        "/api/tasks?page=1",
    ];
    let started = Instant::now();
    let mut slowest = (Duration::ZERO, "/");
    for path in first {
        let took = fetch(addr, path).await?;
        if took > slowest.0 {
            slowest = (took, path);
        }
    }
    let first_page = started.elapsed();

    // The page's change stream stays open while it is shown.
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|error| CliError::failure(format!("web view stream: {error}")))?;
    stream
        .write_all(format!("GET /api/stream HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|error| CliError::failure(format!("web view stream: {error}")))?;
    let counted = Arc::new(AtomicUsize::new(0));
    let count = counted.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            let frames = String::from_utf8_lossy(&buf[..n])
                .matches("event: change")
                .count();
            count.fetch_add(frames, Ordering::Relaxed);
        }
    });
    let rounds = [
        "/api/summary",
        "/api/tasks?page=1",
        "/api/nodes?page=1",
        "/api/nodes?page=20",
        "/api/tasks/default/scale-0/instances?page=1",
        "/api/events",
    ];
    for _ in 0..ROUNDS {
        for path in rounds {
            fetch(addr, path).await?;
        }
        tokio::time::sleep(ROUND_GAP).await;
    }
    let rss_after_kib = rss()?;
    reader.abort();
    let notices = counted.load(Ordering::Relaxed);
    Ok(Figures {
        first_page,
        slowest,
        rss_before_kib,
        rss_after_kib,
        notices,
    })
}
