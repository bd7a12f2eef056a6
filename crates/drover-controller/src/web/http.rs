//! The web view's HTTP edge: a pure [`route`] from the request path, handlers that build a
//! page on a blocking thread and answer JSON, the embedded page (HTML, CSS, JS through
//! `include_str!`: no build step), and `/api/stream`, the Server-Sent Events of [`Notice`]s.
//!
//! The stream is bounded twice: at most [`MAX_STREAMS`] at once (more get 503), and each
//! holds only a `watch` receiver, so a browser that reads slowly or not at all costs one
//! value, never a queue; notices arriving within [`COALESCE`] of each other go out as one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, Method, Request, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use drover_api::records::TaskRef;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::notice::Notice;
use super::pages::{self, Paging};
use super::WebSource;

/// Change streams served at once; more are refused with 503.
pub const MAX_STREAMS: usize = 64;
/// Page requests waiting for the mirror's lock at once; more are refused with 503.
pub const MAX_PAGES_WAITING: usize = 128;
/// Notices closer together than this are sent as one.
pub const COALESCE: Duration = Duration::from_millis(250);
/// A comment line keeps an idle stream open through proxies this often.
const KEEPALIVE: Duration = Duration::from_secs(15);

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Why the web view could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What a request path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/`: the page.
    Index,
    /// `/app.js`.
    Script,
    /// `/style.css`.
    Style,
    /// `/api/summary`.
    Summary,
    /// `/api/nodes`.
    Nodes,
    /// `/api/tasks`.
    Tasks,
    /// `/api/tasks/<ns>/<name>/instances`.
    Instances(TaskRef),
    /// `/api/tasks/<ns>/<name>/runs`.
    Runs(TaskRef),
    /// `/api/deadletters`.
    DeadLetters,
    /// `/api/events`.
    Events,
    /// `/api/invalid`.
    Invalid,
    /// `/api/stream`.
    Stream,
    /// Anything else.
    NotFound,
}

/// The route of `path` (names in task paths must be valid DNS-1123 labels).
#[must_use]
pub fn route(keys: &drover_api::Keys, path: &str) -> Route {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        [""] | ["index.html"] => Route::Index,
        ["app.js"] => Route::Script,
        ["style.css"] => Route::Style,
        ["api", "summary"] => Route::Summary,
        ["api", "nodes"] => Route::Nodes,
        ["api", "tasks"] => Route::Tasks,
        ["api", "tasks", ns, name, what] => match (pages::task_ref(keys, ns, name), *what) {
            (Some(task), "instances") => Route::Instances(task),
            (Some(task), "runs") => Route::Runs(task),
            _ => Route::NotFound,
        },
        ["api", "deadletters"] => Route::DeadLetters,
        ["api", "events"] => Route::Events,
        ["api", "invalid"] => Route::Invalid,
        ["api", "stream"] => Route::Stream,
        _ => Route::NotFound,
    }
}

struct Web {
    source: WebSource,
    streams: Arc<Semaphore>,
    /// Page requests admitted at once (waiting or building), at most [`MAX_PAGES_WAITING`].
    pages_waiting: Arc<Semaphore>,
    /// One page is built at a time, so the planner waits for one page at most and waiting
    /// requests hold no blocking thread.
    building: Arc<Semaphore>,
    shutdown: CancellationToken,
}

/// Serves the web view of `source` on `addr` until `shutdown`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    source: WebSource,
    shutdown: CancellationToken,
) -> Result<SocketAddr, WebError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| WebError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| WebError::Bind { addr, source })?;
    let web = Arc::new(Web {
        source,
        streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        pages_waiting: Arc::new(Semaphore::new(MAX_PAGES_WAITING)),
        building: Arc::new(Semaphore::new(1)),
        shutdown: shutdown.clone(),
    });
    let app = Router::new().fallback(move |request: Request<Body>| {
        let web = web.clone();
        let (method, uri) = (request.method().clone(), request.uri().clone());
        async move { handle(&web, &method, &uri).await }
    });
    tokio::spawn(drover_runtime::http::serve(
        listener,
        app,
        drover_runtime::http::HEADER_READ_TIMEOUT,
        shutdown,
    ));
    Ok(bound)
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response {
    respond(status, "text/plain; charset=utf-8", body)
}

/// Builds a page with `build` on a blocking thread (it takes the mirror's lock) and answers it
/// as JSON.
///
/// # Guarantees
/// One page builds at a time and at most [`MAX_PAGES_WAITING`] wait for their turn (on the
/// reactor, holding no thread); more are refused with 503. So the leader's planner waits for
/// one page build at most, and a flood of requests neither queues on its lock nor fills the
/// blocking pool the planner runs on.
async fn page<F>(web: &Web, build: F) -> Response
where
    F: FnOnce(&WebSource) -> serde_json::Result<Vec<u8>> + Send + 'static,
{
    let Ok(_admitted) = web.pages_waiting.clone().try_acquire_owned() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many page requests\n");
    };
    let Ok(turn) = web.building.clone().acquire_owned().await else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    };
    let source = web.source.clone();
    // The turn goes with the build: a client that goes away does not let a second build start.
    let built = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        build(&source)
    });
    match built.await {
        Ok(Ok(body)) => respond(StatusCode::OK, "application/json", body),
        Ok(Err(_)) | Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "page failed\n"),
    }
}

async fn handle(web: &Web, method: &Method, uri: &Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the web view is read-only\n",
        );
    }
    let paging = Paging::from_query(uri.query());
    let route = route(web.source.keys(), uri.path());
    let replica = web.source.replica();
    match route {
        Route::Index => respond(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        Route::Script => respond(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
        Route::Style => respond(StatusCode::OK, "text/css; charset=utf-8", STYLE_CSS),
        Route::NotFound => text(StatusCode::NOT_FOUND, "not found\n"),
        Route::Stream => stream(web),
        Route::Summary => {
            page(web, move |src| {
                src.read(|s, ring| serde_json::to_vec(&pages::summary(s, replica, ring)))
            })
            .await
        }
        Route::Nodes => {
            page(web, move |src| {
                src.read(|s, _| serde_json::to_vec(&pages::nodes(s, src.keys(), paging)))
            })
            .await
        }
        Route::Tasks => {
            page(web, move |src| {
                src.read(|s, _| serde_json::to_vec(&pages::tasks(s, src.keys(), paging)))
            })
            .await
        }
        Route::Instances(task) => {
            page(web, move |src| {
                src.read(|s, _| {
                    serde_json::to_vec(&pages::task_instances(s, src.keys(), &task, paging))
                })
            })
            .await
        }
        Route::Runs(task) => {
            page(web, move |src| {
                src.read(|s, _| serde_json::to_vec(&pages::runs(s, &task, paging)))
            })
            .await
        }
        Route::DeadLetters => {
            page(web, move |src| {
                src.read(|s, _| serde_json::to_vec(&pages::dead_letters(s, paging)))
            })
            .await
        }
        Route::Events => {
            page(web, move |src| {
                src.read(|_, ring| serde_json::to_vec(&pages::events(ring, paging)))
            })
            .await
        }
        Route::Invalid => {
            page(web, move |src| {
                src.read(|s, _| serde_json::to_vec(&pages::invalid(s, src.keys(), paging)))
            })
            .await
        }
    }
}

/// One SSE frame carrying `notice`.
#[must_use]
pub fn frame(notice: &Notice) -> String {
    let data = serde_json::to_string(notice).unwrap_or_else(|_| "{}".into());
    format!("event: change\ndata: {data}\n\n")
}

/// A stream's state: its receiver, its slot among [`MAX_STREAMS`], whether the first frame
/// went out.
struct Stream {
    notices: watch::Receiver<Notice>,
    shutdown: CancellationToken,
    started: bool,
    _slot: OwnedSemaphorePermit,
}

fn stream(web: &Web) -> Response {
    let Ok(slot) = web.streams.clone().try_acquire_owned() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many open change streams\n",
        );
    };
    let state = Stream {
        notices: web.source.notices(),
        shutdown: web.shutdown.clone(),
        started: false,
        _slot: slot,
    };
    let frames = futures::stream::unfold(state, |mut st| async move {
        if !st.started {
            st.started = true;
            let first = format!("retry: 2000\n{}", frame(&st.notices.borrow_and_update()));
            return Some((Ok::<_, Infallible>(Bytes::from(first)), st));
        }
        tokio::select! {
            () = st.shutdown.cancelled() => None,
            changed = st.notices.changed() => {
                changed.ok()?;
                // Let a burst settle: whatever arrives meanwhile goes out in this one frame.
                tokio::select! {
                    () = st.shutdown.cancelled() => return None,
                    () = tokio::time::sleep(COALESCE) => {}
                }
                let notice = *st.notices.borrow_and_update();
                Some((Ok(Bytes::from(frame(&notice))), st))
            }
            () = tokio::time::sleep(KEEPALIVE) => Some((Ok(Bytes::from_static(b": keepalive\n\n")), st)),
        }
    });
    let mut response = respond(
        StatusCode::OK,
        "text/event-stream",
        Body::from_stream(frames),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_api::Keys;

    #[test]
    fn routes() {
        let k = Keys::new("/drover");
        assert_eq!(route(&k, "/"), Route::Index);
        assert_eq!(route(&k, "/app.js"), Route::Script);
        assert_eq!(route(&k, "/api/summary"), Route::Summary);
        assert_eq!(route(&k, "/api/nodes/"), Route::Nodes);
        assert_eq!(
            route(&k, "/api/tasks/default/web/instances"),
            Route::Instances(TaskRef::new("default", "web"))
        );
        assert_eq!(
            route(&k, "/api/tasks/default/web/runs"),
            Route::Runs(TaskRef::new("default", "web"))
        );
        assert_eq!(route(&k, "/api/tasks/Bad_Name/web/runs"), Route::NotFound);
        assert_eq!(route(&k, "/api/tasks/default/web/logs"), Route::NotFound);
        assert_eq!(route(&k, "/etc/passwd"), Route::NotFound);
    }

    /// Reads an HTTP response head from `stream`; returns its status code.
    async fn status_of(stream: &mut tokio::net::TcpStream) -> u16 {
        use tokio::io::AsyncReadExt;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut byte).await.expect("read");
            assert_eq!(
                n,
                1,
                "the head ends early: {}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head);
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status code")
    }

    /// Streams that are never read hold their slot and nothing else; past [`MAX_STREAMS`]
    /// a new one is refused, and pages are still served.
    #[tokio::test]
    async fn streams_are_bounded_and_unread_ones_block_nothing() {
        use tokio::io::AsyncWriteExt;
        let keys = Keys::new("/t");
        let mirror = crate::mirror::Mirror::new(keys.clone(), Duration::from_millis(20));
        let status = watch::channel(crate::ControllerStatus::default()).1;
        let source = WebSource::new(mirror.clone(), keys, "c0".into(), status);
        let shutdown = CancellationToken::new();
        let addr = serve(
            "127.0.0.1:0".parse().expect("addr"),
            source,
            shutdown.clone(),
        )
        .await
        .expect("serves");
        let open = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .expect("write");
            s
        };
        let mut streams = Vec::with_capacity(MAX_STREAMS);
        for _ in 0..MAX_STREAMS {
            let mut s = open("/api/stream").await;
            assert_eq!(status_of(&mut s).await, 200);
            streams.push(s);
        }
        // Many notices while nobody reads: each stream keeps only the newest.
        for rev in 1..=1000 {
            mirror
                .notice
                .send_modify(|n| n.touch(super::super::notice::Part::Nodes, rev));
        }
        let mut refused = open("/api/stream").await;
        assert_eq!(status_of(&mut refused).await, 503);
        let mut page = open("/api/summary").await;
        assert_eq!(status_of(&mut page).await, 200);
        shutdown.cancel();
    }

    /// Page requests cannot pile up on the mirror's lock: while the planner holds it (a long
    /// plan at 100,000 instances), a flood of page requests past the bound is answered 503 at
    /// once instead of each parking a blocking thread on the lock, and the planner's next
    /// `spawn_blocking` is not queued behind them.
    #[tokio::test]
    async fn page_requests_waiting_on_the_planner_lock_are_bounded() {
        use tokio::io::AsyncWriteExt;
        let keys = Keys::new("/t");
        let mirror = crate::mirror::Mirror::new(keys.clone(), Duration::from_millis(20));
        let status = watch::channel(crate::ControllerStatus::default()).1;
        let source = WebSource::new(mirror.clone(), keys, "c0".into(), status);
        let shutdown = CancellationToken::new();
        let addr = serve(
            "127.0.0.1:0".parse().expect("addr"),
            source,
            shutdown.clone(),
        )
        .await
        .expect("serves");
        // The planner plans: it holds the lock until told to stop.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
        let planner = mirror.planner.clone();
        let holder = std::thread::spawn(move || {
            let _state = planner.lock().expect("state");
            let _ = locked_tx.send(());
            let _ = held.recv();
        });
        locked_rx.await.expect("the planner locks");
        let mut waiting = Vec::new();
        for _ in 0..MAX_PAGES_WAITING {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /api/summary HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            waiting.push(s);
        }
        let mut refused = tokio::net::TcpStream::connect(addr).await.expect("connect");
        refused
            .write_all(b"GET /api/summary HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let answer = tokio::time::timeout(Duration::from_secs(5), status_of(&mut refused)).await;
        let _ = release.send(());
        holder.join().expect("holder");
        assert_eq!(
            answer.ok(),
            Some(503),
            "a page request past {MAX_PAGES_WAITING} waiting ones is refused at once"
        );
        // Those that waited are served once the plan ends.
        for mut s in waiting {
            let code = tokio::time::timeout(Duration::from_secs(10), status_of(&mut s))
                .await
                .expect("served after the plan");
            assert_eq!(code, 200);
        }
        shutdown.cancel();
    }

    #[test]
    fn a_frame_is_one_sse_event() {
        let f = frame(&Notice {
            revision: 3,
            nodes: 1,
            tasks: 2,
            instances: 3,
            events: 0,
        });
        assert!(
            f.starts_with("event: change\ndata: {\"revision\":3,"),
            "{f}"
        );
        assert!(f.ends_with("\n\n"));
        assert_eq!(f.matches('\n').count(), 3);
    }
}
