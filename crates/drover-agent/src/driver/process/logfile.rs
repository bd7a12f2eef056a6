//! Streaming a log file that a process is still appending to: the tail, then follow.

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, BufReader};

use crate::driver::{split_lines, Error, LogLine, LogStream, Result};

/// How often a follow looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Streams a log file: the last `tail` lines, then (with `follow`) whatever is appended until
/// `is_running` says the writer is gone and the file is drained.
pub(super) fn follow_file<F>(
    path: PathBuf,
    follow: bool,
    tail: Option<usize>,
    is_running: F,
) -> BoxStream<'static, Result<LogLine>>
where
    F: Fn() -> BoxFuture<'static, bool> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<LogLine>>(64);
    tokio::spawn(async move {
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => {
                let _ = tx
                    .send(Err(Error::io(format!("opening {}", path.display()), e)))
                    .await;
                return;
            }
        };
        let mut reader = BufReader::new(file);
        let mut buf = Vec::new();
        // Everything there is now (only the last `tail` lines are kept and sent), then follow.
        let mut first = std::collections::VecDeque::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) => break,
                Ok(_) if buf.ends_with(b"\n") && tail.is_none() => {
                    for l in split_lines(LogStream::Combined, &buf) {
                        if tx.send(Ok(l)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(_) if buf.ends_with(b"\n") => {
                    first.push_back(buf.clone());
                    if tail.is_some_and(|n| first.len() > n) {
                        first.pop_front();
                    }
                }
                Ok(n) => {
                    // A partial last line: leave it for the follow loop to complete.
                    let back = i64::try_from(n).unwrap_or(0);
                    let _ = reader.seek(std::io::SeekFrom::Current(-back)).await;
                    break;
                }
                Err(e) => {
                    let _ = tx.send(Err(Error::io("reading the log", e))).await;
                    return;
                }
            }
        }
        for line in first {
            for l in split_lines(LogStream::Combined, &line) {
                if tx.send(Ok(l)).await.is_err() {
                    return;
                }
            }
        }
        if !follow {
            return;
        }
        let mut partial = Vec::new();
        loop {
            match reader.read_until(b'\n', &mut partial).await {
                Ok(0) => {
                    if tx.is_closed() {
                        return;
                    }
                    if !is_running().await {
                        // One last drain: the writer may have written just before exiting.
                        let _ = reader.read_to_end(&mut partial).await;
                        if !partial.is_empty() {
                            for l in split_lines(LogStream::Combined, &partial) {
                                let _ = tx.send(Ok(l)).await;
                            }
                        }
                        return;
                    }
                    tokio::time::sleep(FOLLOW_POLL).await;
                }
                Ok(_) if partial.ends_with(b"\n") => {
                    for l in split_lines(LogStream::Combined, &partial) {
                        if tx.send(Ok(l)).await.is_err() {
                            return;
                        }
                    }
                    partial.clear();
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(Error::io("reading the log", e))).await;
                    return;
                }
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|l| (l, rx)) }).boxed()
}
