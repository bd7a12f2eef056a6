//! Drover's test workload: a tiny HTTP/1.1 server with no dependencies worth naming, built as a
//! static binary and packaged `FROM scratch` as `drover/echo-server:latest` by
//! `hack/build-images.sh`.
//!
//! - `POST /` answers 200 with the request body (so `{"Msg":"hi"}` comes back unchanged);
//! - `GET /health` answers 200, `GET /healthfail` answers 500 (for health-check tests);
//! - every request is logged to stdout, so `drover logs` has something to show;
//! - `PORT` (default 7777) picks the port; SIGTERM and SIGINT end it at once, which matters
//!   because it runs as PID 1 in its container, where default signal actions are ignored.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest request body the server accepts; larger requests get 413.
const MAX_BODY: usize = 1 << 20;

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "7777".to_string());
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(error) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("echo-server: cannot handle signal {signal}: {error}");
        }
    }
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("echo-server: cannot listen on port {port}: {error}");
            std::process::exit(1);
        }
    };
    if let Err(error) = listener.set_nonblocking(true) {
        eprintln!("echo-server: {error}");
        std::process::exit(1);
    }
    println!("echo-server listening on port {port}");
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                std::thread::spawn(move || serve(stream));
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => eprintln!("echo-server: accept failed: {error}"),
        }
    }
    println!("echo-server stopping on signal");
}

/// Serves one connection (one request; the response closes the connection).
fn serve(stream: TcpStream) {
    if let Err(error) = answer(stream) {
        eprintln!("echo-server: {error}");
    }
}

fn answer(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut content_length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    println!("{method} {path}");
    let (status, body) = match (method.as_str(), path.as_str()) {
        (_, _) if content_length > MAX_BODY => ("413 Payload Too Large", b"too large\n".to_vec()),
        ("POST", "/") => {
            let mut body = vec![0u8; content_length];
            reader.read_exact(&mut body)?;
            ("200 OK", body)
        }
        ("GET", "/health") => ("200 OK", b"ok\n".to_vec()),
        ("GET", "/healthfail") => (
            "500 Internal Server Error",
            b"failing on purpose\n".to_vec(),
        ),
        _ => ("404 Not Found", b"not found\n".to_vec()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)?;
    stream.flush()
}
