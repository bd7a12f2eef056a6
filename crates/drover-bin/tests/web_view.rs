//! The controller's web view end to end: its JSON pages and change stream against a real etcd
//! (a foreign writer's value shown as Invalid with its key), and the page itself in headless
//! Chromium, driven over the DevTools protocol: it shows an applied task Running and then the
//! move to another node after its agent is SIGKILLed, without a reload.
//!
//! The browser test needs Debian's `chromium` (hack/install-deps.sh installs it). Without it
//! the test is skipped with a message, unless `DROVER_REQUIRE_BROWSER` is set (hack/test.sh
//! sets it), where a missing browser fails it. `DROVER_WEB_SCREENSHOT=PATH` keeps a
//! screenshot of the page after the move (docs/web-view.png comes from it).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use common::{manifest, Daemon, Etcd};
use drover_testkit::wait_for;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a controller with its web view on a free port; returns it and the view's address.
async fn controller_with_view(etcd: &Etcd) -> (Daemon, SocketAddr) {
    let port = drover_testkit::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let daemon = Daemon::start(
        &etcd.cli,
        &[
            "controller",
            "--id",
            "c0",
            "--lease-ttl",
            "2s",
            "--web-addr",
            &addr.to_string(),
        ],
    );
    wait_for(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            drover_runtime::http::get(addr, "/api/summary", HTTP_TIMEOUT)
                .await
                .ok()
                .filter(|r| r.status == 200)
        },
    )
    .await
    .unwrap_or_else(|_| panic!("the web view answers; log:\n{}", daemon.log_text()));
    (daemon, addr)
}

async fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let r = drover_runtime::http::get(addr, path, HTTP_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(r.status, 200, "GET {path}");
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Reads SSE frames from `reader` until one `change` frame; returns its data.
async fn next_change<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> serde_json::Value {
    let mut event = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(20), reader.read_line(&mut line))
            .await
            .expect("a frame within 20 s")
            .expect("read");
        assert!(n > 0, "the stream ended");
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            if event == "change" {
                return serde_json::from_str(data).expect("notice json");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_stream_show_foreign_values_as_invalid_and_push_changes() {
    let etcd = Etcd::start().await;
    let (_controller, addr) = controller_with_view(&etcd).await;

    // The change stream: a first notice at once, then one per (coalesced) change.
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(b"GET /api/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .expect("request");
    let mut reader = BufReader::new(conn);
    let first = next_change(&mut reader).await;

    // Foreign writers: values Drover did not write, under keys it reads.
    let raw = |key: String, value: &str| {
        let store = etcd.store.clone();
        let value = value.to_string();
        async move {
            store
                .put_raw(&key, value.into_bytes(), None)
                .await
                .expect("put")
        }
    };
    raw(etcd.keys.node("stranger"), "{\"not\": \"a node\"}").await;
    raw(etcd.keys.task("default", "garbled"), "not json at all").await;
    let next = next_change(&mut reader).await;
    assert!(
        next["revision"].as_i64() > first["revision"].as_i64(),
        "{first} then {next}"
    );
    let nodes = wait_for(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let page = get_json(addr, "/api/nodes").await;
            (page["total"] == 1).then_some(page)
        },
    )
    .await
    .expect("the undecodable node is listed");
    let row = &nodes["items"][0];
    assert_eq!(row["name"], "stranger");
    assert_eq!(row["alive"], true, "an undecodable node counts as alive");
    assert_eq!(row["invalid"]["key"], etcd.keys.node("stranger"));
    let tasks = get_json(addr, "/api/tasks").await;
    assert_eq!(tasks["items"][0]["name"], "garbled");
    assert_eq!(
        tasks["items"][0]["invalid"]["key"],
        etcd.keys.task("default", "garbled")
    );
    let invalid = get_json(addr, "/api/invalid").await;
    assert_eq!(invalid["total"], 2, "{invalid}");
    let summary = get_json(addr, "/api/summary").await;
    assert_eq!(summary["invalid_keys"], 2, "{summary}");
    assert_eq!(summary["replica"]["id"], "c0");

    // Read-only, and the page and its script are served.
    let page = drover_runtime::http::get(addr, "/", HTTP_TIMEOUT)
        .await
        .expect("GET /");
    assert!(String::from_utf8_lossy(&page.body).contains("/app.js"));
    let script = drover_runtime::http::get(addr, "/app.js", HTTP_TIMEOUT)
        .await
        .expect("GET");
    assert!(String::from_utf8_lossy(&script.body).contains("EventSource"));
    let post =
        drover_runtime::http::post(addr, "/api/tasks", "application/json", "{}", HTTP_TIMEOUT)
            .await
            .expect("POST answers");
    assert_eq!(post.status, 405);
    let missing = drover_runtime::http::get(addr, "/api/nope", HTTP_TIMEOUT)
        .await
        .expect("GET");
    assert_eq!(missing.status, 404);
}

/// Headless Chromium with its DevTools endpoint on a free port, showing `url`.
struct Browser {
    child: tokio::process::Child,
    _profile: tempfile::TempDir,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Browser {
    async fn open(chromium: &Path, url: &str) -> Browser {
        let profile = tempfile::tempdir().expect("tempdir");
        let mut child = tokio::process::Command::new(chromium)
            .args([
                "--headless",
                "--disable-gpu",
                "--no-sandbox",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1280,760",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let port = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1) {
                    return rest.split('/').next().and_then(|p| p.parse::<u16>().ok());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("chromium prints its DevTools address");
        // Keep draining its stderr so chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let devtools: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let ws_url = wait_for(
            Duration::from_secs(20),
            Duration::from_millis(200),
            || async {
                let r = drover_runtime::http::get(devtools, "/json/list", HTTP_TIMEOUT)
                    .await
                    .ok()?;
                let targets: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
                targets
                    .as_array()?
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            },
        )
        .await
        .expect("chromium lists its page");
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .expect("devtools websocket");
        Browser {
            child,
            _profile: profile,
            ws,
            next_id: 0,
        }
    }

    /// Calls a DevTools method and returns its result.
    async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = serde_json::json!({"id": id, "method": method, "params": params});
        self.ws
            .send(Message::text(request.to_string()))
            .await
            .expect("devtools send");
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("a devtools answer within 30 s")
                .expect("devtools open")
                .expect("devtools message");
            let Message::Text(text) = message else {
                continue;
            };
            let reply: serde_json::Value = serde_json::from_str(&text).expect("devtools json");
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> serde_json::Value {
        let result = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        result["result"]["value"].clone()
    }

    async fn text(&mut self) -> String {
        self.eval("document.body ? document.body.innerText : ''")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until the page's text has an instance row of `task` on `node` showing Running;
    /// returns the text.
    async fn wait_running_on(&mut self, task: &str, node: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        let prefix = format!("default.{task}.");
        loop {
            let text = self.text().await;
            let shown = text.lines().any(|line| {
                let cells: Vec<&str> = line.split('\t').map(str::trim).collect();
                cells.len() > 2
                    && cells[0].starts_with(&prefix)
                    && cells[1] == node
                    && cells[2] == "Running"
            });
            if shown {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed {task} Running on {node} within {within:?}; it shows:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the page's text contains `needle`.
    async fn wait_text(&mut self, needle: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let text = self.text().await;
            if text.contains(needle) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed {needle:?} within {within:?}; it shows:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn screenshot(&mut self, path: &Path) {
        let shot = self
            .call(
                "Page.captureScreenshot",
                serde_json::json!({"format": "png"}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("png data"))
            .expect("base64");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Debian's chromium, if installed.
fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn process_agent(etcd: &Etcd, node: &str, state: &Path) -> Daemon {
    Daemon::start(
        &etcd.cli,
        &[
            "agent",
            "--node",
            node,
            "--driver",
            "process",
            // Tests run as root; their tasks set no spec.user.
            "--allow-root-tasks",
            "--lease-ttl",
            "3s",
            "--state-dir",
            state.to_str().expect("utf-8"),
        ],
    )
}

async fn wait_node(etcd: &Etcd, node: &str) {
    wait_for(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            etcd.store
                .get_raw(&etcd.keys.node(node))
                .await
                .ok()
                .flatten()
                .map(|_| ())
        },
    )
    .await
    .unwrap_or_else(|_| panic!("{node} registers"));
}

/// Kills every pid listed in `file` (the workload's copies record themselves there: a
/// SIGKILLed agent leaves its copy behind, as a crashed host's would be gone).
fn kill_recorded(file: &Path) {
    for pid in std::fs::read_to_string(file).unwrap_or_default().lines() {
        if let Some(pid) = pid
            .trim()
            .parse()
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_shows_apply_and_node_death_live() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("DROVER_REQUIRE_BROWSER").is_none(),
            "DROVER_REQUIRE_BROWSER is set but chromium is not installed (hack/install-deps.sh installs it)"
        );
        eprintln!("SKIPPED: chromium is not installed (hack/install-deps.sh installs it; DROVER_REQUIRE_BROWSER=1 makes this a failure)");
        return;
    };
    let etcd = Etcd::start().await;
    let (_controller, addr) = controller_with_view(&etcd).await;
    let (state_a, state_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut agent_a = process_agent(&etcd, "node-a", state_a.path());
    wait_node(&etcd, "node-a").await;

    let mut browser =
        Browser::open(&chromium, &format!("http://{addr}/#task/default/webtest")).await;
    // The page is up and shows the task as absent; mark this page load.
    browser
        .wait_text("No such task", Duration::from_secs(30))
        .await;
    browser.eval("window.__droverLoad = 'first'").await;

    let pids = tempfile::tempdir().expect("dir");
    let pid_file = pids.path().join("pids");
    let doc = format!(
        "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: webtest\nspec:\n  command: [sh, -c, \"echo $$ >> {}; exec sleep 3600\"]\n  terminationGracePeriodSeconds: 2\n",
        pid_file.display()
    );
    let (_dir, path) = manifest(&doc);
    etcd.cli
        .ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;
    browser
        .wait_running_on("webtest", "node-a", Duration::from_secs(30))
        .await;

    let _agent_b = process_agent(&etcd, "node-b", state_b.path());
    wait_node(&etcd, "node-b").await;
    agent_a.signal("KILL");
    agent_a.kill().await;
    let text = browser
        .wait_running_on("webtest", "node-b", Duration::from_secs(30))
        .await;
    assert!(
        !text.contains("\tnode-a\tRunning"),
        "the old copy is gone from the page:\n{text}"
    );
    assert_eq!(
        browser.eval("window.__droverLoad").await,
        "first",
        "the page was never reloaded"
    );
    assert_eq!(
        browser
            .eval("document.querySelector('#live').textContent")
            .await,
        "live"
    );
    if let Some(path) = std::env::var_os("DROVER_WEB_SCREENSHOT") {
        browser.eval("location.hash = '#tasks'").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        browser
            .eval("location.hash = '#task/default/webtest'")
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        browser.screenshot(Path::new(&path)).await;
    }
    drop(browser);
    kill_recorded(&pid_file);
}
