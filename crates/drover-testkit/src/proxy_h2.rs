//! The proxy's reply-loss fault: HTTP/2 frames are read whole in both directions, a request
//! DATA frame containing the armed pattern marks its stream, and the server's first frame on
//! that stream closes the connection instead of being forwarded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{connect_upstream, pump, Halves, Mode};

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length (3), type (1), flags (1), stream id (4).
const FRAME_HEADER: usize = 9;
const DATA: u8 = 0x0;

/// The armed pattern (one-shot) and how often a reply was lost.
#[derive(Debug, Default)]
pub(super) struct ReplyLoss {
    pattern: Mutex<Option<Vec<u8>>>,
    pub(super) lost: AtomicUsize,
}

impl ReplyLoss {
    pub(super) fn arm(&self, pattern: &[u8]) {
        assert!(
            !pattern.is_empty(),
            "lose_reply_to needs a non-empty pattern"
        );
        *self.lock() = Some(pattern.to_vec());
    }

    pub(super) fn is_armed(&self) -> bool {
        self.lock().is_some()
    }

    /// Disarms and returns true if `payload` contains the armed pattern.
    fn take_if_in(&self, payload: &[u8]) -> bool {
        let mut pattern = self.lock();
        let hit = pattern
            .as_deref()
            .is_some_and(|p| payload.windows(p.len()).any(|w| w == p));
        if hit {
            *pattern = None;
        }
        hit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        self.pattern.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One proxied connection's shared state.
#[derive(Debug, Default)]
struct Conn {
    /// The stream whose reply is to be lost.
    doomed: Mutex<Option<u32>>,
    /// The client did not speak HTTP/2: both directions copy bytes as they are.
    raw: AtomicBool,
}

impl Conn {
    fn doomed(&self) -> Option<u32> {
        *self.doomed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn doom(&self, stream: u32) {
        *self.doomed.lock().unwrap_or_else(PoisonError::into_inner) = Some(stream);
    }
}

pub(super) async fn serve(
    client: TcpStream,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    loss: Arc<ReplyLoss>,
) {
    let Some(Halves {
        client: (cr, cw),
        upstream: (ur, uw),
    }) = connect_upstream(client, target).await
    else {
        return;
    };
    let conn = Arc::new(Conn::default());
    // Set when the reply is lost, to end the request direction as well.
    let (closed_tx, closed) = watch::channel(false);
    tokio::join!(
        requests(cr, uw, mode.clone(), loss.clone(), conn.clone(), closed),
        replies(ur, cw, mode, loss, conn, closed_tx),
    );
}

/// Client to server: the preface, then whole frames; marks the stream of a matching request.
async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    loss: Arc<ReplyLoss>,
    conn: Arc<Conn>,
    mut closed: watch::Receiver<bool>,
) {
    let mut acc: Vec<u8> = Vec::new();
    let mut preface_seen = false;
    loop {
        tokio::select! {
            more = read_more(&mut from, &mut acc, &mut mode) => if !more { let _ = to.shutdown().await; return; },
            _ = closed.changed() => return,
        }
        if !preface_seen {
            if acc.len() < PREFACE.len() && PREFACE.starts_with(&acc) {
                continue;
            }
            if !acc.starts_with(PREFACE) {
                conn.raw.store(true, Ordering::SeqCst);
                if to.write_all(&acc).await.is_err() {
                    return;
                }
                return pump(from, to, mode).await;
            }
            preface_seen = true;
            if to.write_all(PREFACE).await.is_err() {
                return;
            }
            acc.drain(..PREFACE.len());
        }
        while let Some(len) = frame_len(&acc) {
            let frame: Vec<u8> = acc.drain(..len).collect();
            if frame[3] == DATA && loss.take_if_in(&frame[FRAME_HEADER..]) {
                conn.doom(stream_id(&frame));
            }
            if to.write_all(&frame).await.is_err() {
                return;
            }
        }
    }
}

/// Server to client: whole frames, until the first frame of the doomed stream closes both.
async fn replies(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    loss: Arc<ReplyLoss>,
    conn: Arc<Conn>,
    closed: watch::Sender<bool>,
) {
    let mut acc: Vec<u8> = Vec::new();
    loop {
        if !read_more(&mut from, &mut acc, &mut mode).await {
            let _ = to.shutdown().await;
            return;
        }
        if conn.raw.load(Ordering::SeqCst) {
            if to.write_all(&acc).await.is_err() {
                return;
            }
            return pump(from, to, mode).await;
        }
        while let Some(len) = frame_len(&acc) {
            let frame: Vec<u8> = acc.drain(..len).collect();
            if conn.doomed() == Some(stream_id(&frame)) {
                loss.lost.fetch_add(1, Ordering::SeqCst);
                closed.send_replace(true);
                // Dropping both halves closes the client's socket: the reply is lost.
                return;
            }
            if to.write_all(&frame).await.is_err() {
                return;
            }
        }
    }
}

/// Reads more bytes into `acc`, honouring the proxy's mode; false at EOF, error or cut.
async fn read_more(
    from: &mut OwnedReadHalf,
    acc: &mut Vec<u8>,
    mode: &mut watch::Receiver<Mode>,
) -> bool {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Cut => return false,
            Mode::Blackhole => {
                if mode.changed().await.is_err() {
                    return false;
                }
            }
            Mode::Forward => {
                tokio::select! {
                    read = from.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => {
                            acc.extend_from_slice(&buf[..n]);
                            return true;
                        }
                    },
                    changed = mode.changed() => {
                        if changed.is_err() {
                            return false;
                        }
                    }
                }
            }
        }
    }
}

/// The length of the whole first frame in `buf`, once it is all there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let header = buf.get(..FRAME_HEADER)?;
    let payload =
        usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let len = FRAME_HEADER + payload;
    (buf.len() >= len).then_some(len)
}

fn stream_id(frame: &[u8]) -> u32 {
    u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_complete_only_with_its_whole_payload() {
        let mut f = vec![0, 0, 3, DATA, 0, 0, 0, 0, 5];
        assert_eq!(frame_len(&f), None);
        f.extend_from_slice(b"abc");
        assert_eq!(frame_len(&f), Some(12));
        assert_eq!(stream_id(&f), 5);
        assert_eq!(frame_len(&f[..8]), None);
    }

    #[test]
    fn the_pattern_fires_once() {
        let loss = ReplyLoss::default();
        loss.arm(b"needle");
        assert!(!loss.take_if_in(b"hay"));
        assert!(loss.take_if_in(b"a needle here"));
        assert!(!loss.is_armed());
        assert!(!loss.take_if_in(b"a needle again"));
    }
}
