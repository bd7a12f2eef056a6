//! A loopback TCP forwarder for fault injection: cut or stall the path between a client and a
//! server while both keep running, or lose the reply to one chosen HTTP/2 (gRPC) request.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[path = "proxy_h2.rs"]
mod h2;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Forward bytes both ways.
    Forward,
    /// Keep connections open but move no bytes (a network partition; TCP delivers them later).
    Blackhole,
    /// Close every connection and refuse new ones (the listener is closed).
    Cut,
}

/// Forwards connections from a free loopback port to `target`.
///
/// # Guarantees
///
/// - [`cut`](Self::cut) closes every proxied connection and closes the listening socket, so new
///   connections are refused; [`restore`](Self::restore) listens again on the same port.
/// - [`blackhole`](Self::blackhole) stops moving bytes without closing anything, like a
///   partition: clients only notice through their own timeouts (gRPC/HTTP2 keep-alive).
///   New connections are accepted but stall too.
/// - Dropping the proxy closes the listener and all connections.
///
/// - [`lose_reply_to`](Self::lose_reply_to) loses exactly one reply: the request is delivered,
///   the server acts on it, and its answer never arrives (see there).
///
/// # Caveats
///
/// Mode changes take effect asynchronously, within milliseconds. Between `cut` and `restore`
/// another process could in theory take the port; `restore` retries binding for a few seconds
/// and then panics.
pub struct TcpProxy {
    addr: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    loss: Arc<h2::ReplyLoss>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding from a free loopback port to `target`. Must be called inside a tokio
    /// runtime; the proxy runs on it.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap_or_else(|e| panic!("proxy cannot bind a loopback port: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy listener has no address: {e}"));
        let (mode, rx) = watch::channel(Mode::Forward);
        let loss = Arc::new(h2::ReplyLoss::default());
        let task = tokio::spawn(accept_loop(listener, addr, target, rx, loss.clone()));
        TcpProxy {
            addr,
            target,
            mode,
            loss,
            task,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, ready to use as an etcd endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Closes all connections and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Stops moving bytes (connections stay open and stall) until [`restore`](Self::restore).
    pub fn blackhole(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }

    /// Forwards again: re-listens after a cut, resumes stalled connections after a blackhole.
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Forward);
    }

    /// Loses the reply to the next HTTP/2 request whose body contains `pattern`: the request
    /// reaches the server whole, and when the server's first frame of the answer arrives, the
    /// proxy closes that connection instead of forwarding it. The client sees a transport error
    /// for a request the server did act on — the "outcome unknown" of a lost reply. One-shot:
    /// later requests pass, and [`replies_lost`](Self::replies_lost) counts how often it fired.
    ///
    /// # Caveats
    ///
    /// Only connections accepted after the call are inspected (frames are parsed from their
    /// first byte), so arm it before the client connects. A request body split over several
    /// DATA frames is matched per frame.
    pub fn lose_reply_to(&self, pattern: &[u8]) {
        self.loss.arm(pattern);
    }

    /// How many replies [`lose_reply_to`](Self::lose_reply_to) has lost.
    pub fn replies_lost(&self) -> usize {
        self.loss.lost.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // Connection tasks end when the mode sender goes away.
        self.task.abort();
    }
}

impl std::fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpProxy")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("mode", &*self.mode.borrow())
            .finish()
    }
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    loss: Arc<h2::ReplyLoss>,
) {
    let mut listener = Some(listener);
    loop {
        let current = *mode.borrow_and_update();
        if current == Mode::Cut {
            listener = None;
            if mode.changed().await.is_err() {
                return;
            }
            continue;
        }
        let l = match listener.take() {
            Some(l) => l,
            None => rebind(addr).await,
        };
        tokio::select! {
            accepted = l.accept() => {
                if let Ok((client, _)) = accepted {
                    if loss.is_armed() {
                        tokio::spawn(h2::serve(client, target, mode.clone(), loss.clone()));
                    } else {
                        tokio::spawn(serve(client, target, mode.clone()));
                    }
                }
            }
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        listener = Some(l);
    }
}

async fn rebind(addr: SocketAddr) -> TcpListener {
    let mut last = None;
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("proxy cannot listen on {addr} again: {last:?}");
}

/// The two halves of the client's connection and of a new one to `target` (no Nagle delay).
pub(crate) struct Halves {
    pub(crate) client: (OwnedReadHalf, OwnedWriteHalf),
    pub(crate) upstream: (OwnedReadHalf, OwnedWriteHalf),
}

/// Connects to `target` for `client`; `None` when the target refuses.
pub(crate) async fn connect_upstream(client: TcpStream, target: SocketAddr) -> Option<Halves> {
    let upstream = TcpStream::connect(target).await.ok()?;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    Some(Halves {
        client: client.into_split(),
        upstream: upstream.into_split(),
    })
}

async fn serve(client: TcpStream, target: SocketAddr, mode: watch::Receiver<Mode>) {
    let Some(Halves {
        client: (cr, cw),
        upstream: (ur, uw),
    }) = connect_upstream(client, target).await
    else {
        return;
    };
    tokio::join!(pump(cr, uw, mode.clone()), pump(ur, cw, mode));
}

/// Copies one direction until EOF, an error, or a cut.
pub(crate) async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Cut => return,
            Mode::Blackhole => {
                if mode.changed().await.is_err() {
                    return;
                }
            }
            Mode::Forward => {
                tokio::select! {
                    read = from.read(&mut buf) => match read {
                        Ok(0) | Err(_) => {
                            let _ = to.shutdown().await;
                            return;
                        }
                        Ok(n) => {
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    },
                    changed = mode.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}
