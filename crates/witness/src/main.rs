//! `witness serve` records reports; `witness report` is the workload that sends them. One
//! static binary for both, so one `FROM scratch` image serves the witness host and the tasks.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use drover_api::duration::HumanDuration;
use drover_witness::datagram::{Datagram, Kind, Received};
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};

/// The witness: an observer of Drover's copies that Drover does not control.
#[derive(Debug, Parser)]
#[command(name = "witness", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive reports on a UDP address and append each, stamped with this clock, to a file.
    Serve {
        /// Where to listen.
        #[arg(long, default_value = "0.0.0.0:7700")]
        listen: SocketAddr,
        /// The JSON-lines file to append to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Report this copy alive to the witness every period until SIGTERM, or, with --work, until
    /// the work is done (then report done and exit 0).
    Report {
        /// The witness's address.
        #[arg(long, env = "WITNESS_ADDR")]
        to: SocketAddr,
        /// How often to report.
        #[arg(long, default_value = "100ms")]
        every: HumanDuration,
        /// A job's work: run this long, then report done and exit.
        #[arg(long)]
        work: Option<HumanDuration>,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { listen, out } => serve(listen, out).await,
        Command::Report { to, every, work } => report(to, every.into(), work.map(Into::into)).await,
    };
    if let Err(error) = result {
        eprintln!("witness: {error}");
        std::process::exit(1);
    }
}

async fn serve(listen: SocketAddr, out: PathBuf) -> std::io::Result<()> {
    let socket = UdpSocket::bind(listen).await?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out)?;
    let mut term = signal(SignalKind::terminate())?;
    eprintln!(
        "witness: listening on {}, recording to {}",
        socket.local_addr()?,
        out.display()
    );
    let mut buf = [0u8; 1024];
    loop {
        let (n, from) = tokio::select! {
            _ = term.recv() => return Ok(()),
            received = socket.recv_from(&mut buf) => received?,
        };
        let at_ms = now_ms();
        let text = String::from_utf8_lossy(&buf[..n]);
        match Datagram::parse(&text) {
            Ok(datagram) => {
                let line = serde_json::to_string(&Received { at_ms, datagram })
                    .map_err(std::io::Error::other)?;
                // One write per line, so a reader never sees half a record.
                file.write_all(format!("{line}\n").as_bytes())?;
            }
            Err(error) => eprintln!("witness: from {from}: {error}"),
        }
    }
}

/// Milliseconds since the Unix epoch on this host's clock.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn report(to: SocketAddr, every: Duration, work: Option<Duration>) -> std::io::Result<()> {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| format!("unknown-{name}"));
    let instance = var("DROVER_INSTANCE");
    let host = var("DROVER_NODE");
    let pid = std::process::id();
    let copy: u64 = rand::random();
    let bind: SocketAddr = if to.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(every);
    let done_at = work.map(|w| tokio::time::Instant::now() + w);
    let mut seq = 0u64;
    let text = |kind: Kind, seq: u64| {
        let datagram = Datagram {
            kind,
            instance: instance.clone(),
            host: host.clone(),
            pid,
            copy,
            seq,
        };
        datagram.to_string()
    };
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = tick.tick() => {}
        }
        let finished = done_at.is_some_and(|at| tokio::time::Instant::now() >= at);
        let kind = if finished { Kind::Done } else { Kind::Alive };
        // A lost datagram is a missing report, not a failure of the copy: keep going.
        let _ = socket.send_to(text(kind, seq).as_bytes(), to).await;
        seq += 1;
        if finished {
            return Ok(());
        }
    }
}
