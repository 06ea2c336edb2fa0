//! A line-based TCP echo server that survives binary upgrades, and a UDP one with `--udp`.
//!
//! ```text
//! echo-server [--addr 127.0.0.1:7000 | --fd-name NAME] [--pid-file PATH] [--control-socket PATH]
//!             [--upgrade-timeout 60s] [--drain-timeout 30s] [--probation 5s]
//!             [--udp 127.0.0.1:7000]
//! echo-server upgrade --control-socket PATH [--timeout 90s]
//! ```
//!
//! Each line is answered with the line and the pid that answered: `hello` gets `hello 4242`. A
//! line `sleep <ms>` is answered after that many milliseconds, to play a slow request. With
//! `--udp ADDR`, each datagram is answered the same way, with one datagram: its text (without a
//! trailing newline) and the pid. The UDP socket is handed over like the listener, and only the
//! generation that serves reads from it.
//!
//! `kill -HUP` starts the binary at the same path with the listener inherited. Once the new
//! process is ready, this one stops accepting, finishes the line each connection is on, closes
//! every connection at that boundary, and exits when they are all closed or at the drain
//! timeout.
//!
//! For scripts, each generation prints a line on stdout when it serves, when it stops accepting,
//! and when it exits:
//!
//! ```text
//! udp pid=4242 addr=127.0.0.1:7000          (with --udp, before `ready`)
//! ready pid=4242 generation=1 addr=127.0.0.1:7000
//! stopped pid=4242 successor=4250
//! exited pid=4242 open_at_start=8 abandoned=0 outcome=Drained
//! ```

#[path = "../common/args.rs"]
mod args;
#[path = "../common/server.rs"]
mod server;

use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use graceful::{Graceful, TrackedStream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long a connection accepted just before an upgrade may take to send its first line: it
/// is served, not closed, as its client expects an answer.
const FIRST_LINE_GRACE: Duration = Duration::from_secs(2);
/// How long a closing connection waits for its client to close too.
const LINGER: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> ExitCode {
    server::main(
        "echo-server",
        "127.0.0.1:7000",
        &[("udp", "127.0.0.1:7000")],
        serve,
    )
    .await
}

async fn serve(config: server::Config) -> Result<(), graceful::Error> {
    let graceful = config.install()?;
    let mut listener = config.listen(&graceful).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| graceful::Error::io("reading the listener's address", e))?;
    let udp = match config.option("udp") {
        Some(udp_addr) => Some(graceful.udp(udp_addr).await?),
        None => None,
    };
    graceful.ready()?;
    let datagrams = match udp {
        Some(socket) => {
            let udp_addr = socket
                .local_addr()
                .map_err(|e| graceful::Error::io("reading the UDP socket's address", e))?;
            println!("udp pid={} addr={udp_addr}", std::process::id());
            Some(tokio::spawn(echo_datagrams(socket)))
        }
        None => None,
    };
    server::print_ready(&graceful, addr);
    // The listener pauses when a successor is ready, and ends only once the successor's
    // probation is over: say when accepting stopped.
    let stopping = graceful.clone();
    let stopped = tokio::spawn(async move {
        stopping.upgrade_requested().await;
        server::print_stopped(&stopping);
    });

    while let Some(conn) = listener.next().await {
        tokio::spawn(echo(conn, graceful.clone()));
    }
    let _ = stopped.await;
    if let Some(datagrams) = datagrams {
        // It ends with the listener: from here on, the new generation reads every datagram.
        let _ = datagrams.await;
    }

    server::print_exited(&graceful.drain(config.drain_timeout).await);
    Ok(())
}

/// Answers lines until the client leaves or, once an upgrade is requested, until the next line
/// boundary.
async fn echo(conn: TrackedStream<TcpStream>, graceful: Graceful) {
    let pid = std::process::id();
    let mut conn = BufReader::new(conn);
    let mut line = String::new();
    let upgrade = graceful.upgrade_requested();
    tokio::pin!(upgrade);
    let mut answered = 0u64;
    loop {
        // At a boundary. Data that has arrived is served (the client sent it expecting an
        // answer); a connection that has not sent its first line yet gets a grace period.
        let boundary_reached = async {
            upgrade.as_mut().await;
            if answered == 0 {
                tokio::time::sleep(FIRST_LINE_GRACE).await;
            }
        };
        tokio::select! {
            biased;
            available = conn.fill_buf() => match available {
                Ok([]) | Err(_) => return,
                Ok(_) => {}
            },
            () = boundary_reached => break,
        }
        // A line has begun: it is finished even if an upgrade is requested meanwhile.
        line.clear();
        match conn.read_line(&mut line).await {
            Ok(_) if line.ends_with('\n') => {}
            _ => return, // the client left, mid-line or not
        }
        let request = line.trim_end();
        if let Some(ms) = request
            .strip_prefix("sleep ")
            .and_then(|ms| ms.parse().ok())
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let reply = format!("{request} {pid}\n");
        if conn.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        answered += 1;
    }
    close_at_boundary(conn).await;
}

/// Answers each datagram with its text and this pid, as long as this generation serves.
async fn echo_datagrams(socket: graceful::UdpSocket) {
    let pid = std::process::id();
    let mut buf = vec![0u8; 65_536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok(Some((len, peer))) => {
                let text = String::from_utf8_lossy(&buf[..len]);
                let reply = format!("{} {pid}", text.trim_end_matches(['\r', '\n']));
                if let Err(err) = socket.send_to(reply.as_bytes(), peer).await {
                    tracing::warn!(%err, %peer, "cannot answer a datagram");
                }
            }
            Ok(None) => return,
            Err(err) => tracing::warn!(%err, "receiving a datagram failed"),
        }
    }
}

/// Half-closes, so that the client reads a clean end of stream after its last answer, then
/// discards whatever it sent meanwhile until it closes too: closing a socket with unread data
/// would reset the connection instead.
async fn close_at_boundary(mut conn: BufReader<TrackedStream<TcpStream>>) {
    if conn.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}
