//! A line-based TCP echo server that survives binary upgrades and hands its sessions over,
//! and a UDP one with `--udp`.
//!
//! ```text
//! echo-server [--addr 127.0.0.1:7000 | --fd-name NAME] [--pid-file PATH] [--control-socket PATH]
//!             [--takeover PATH] [--upgrade-timeout 60s] [--drain-timeout 30s] [--probation 5s]
//!             [--handoff on|off] [--ready-delay 0s] [--udp 127.0.0.1:7000]
//! echo-server upgrade --control-socket PATH [--timeout 90s]
//! echo-server status --control-socket PATH [--timeout 90s]
//! ```
//!
//! `--takeover PATH` takes over from a running echo-server whose control socket is at PATH,
//! without being its child (see `http-server`). Sessions and the line count are handed over
//! to it as after an upgrade.
//!
//! Each line is answered with the line and the pid that answered: `hello` gets `hello 4242`. A
//! line `sleep <ms>` is answered after that many milliseconds, to play a slow request. A line
//! `count` is answered with the number of lines this service has answered before it, across
//! generations: the count is state handed to each new generation. With `--udp ADDR`, each
//! datagram is answered the same way, with one datagram: its text (without a trailing newline)
//! and the pid. The UDP socket is handed over like the listener, and only the generation that
//! serves reads from it.
//!
//! `kill -HUP` starts the binary at the same path with the listener inherited. Once the new
//! process is ready, this one stops accepting and finishes the line each connection is on.
//! Then, with `--handoff on` (the default), it hands every session over to the new process at
//! that line boundary: the client keeps its TCP connection, and its next line is answered by
//! the new pid. With `--handoff off`, or when the new process does not take sessions, it
//! closes each connection at that boundary instead, and the client reconnects. It exits when
//! no connection is left, or at the drain timeout.
//!
//! For scripts, each generation prints a line on stdout when it serves, when it stops accepting,
//! and when it exits:
//!
//! ```text
//! udp pid=4242 addr=127.0.0.1:7000          (with --udp, before `ready`)
//! ready pid=4242 generation=1 addr=127.0.0.1:7000
//! stopped pid=4242 successor=4250
//! exited pid=4242 open_at_start=8 abandoned=0 outcome=Drained handed_off=8
//! ```

#[path = "../common/args.rs"]
mod args;
#[path = "../common/server.rs"]
mod server;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use graceful::{Graceful, Prefixed, SavedState, TrackedStream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long a connection accepted just before an upgrade may take to send its first line when
/// it cannot be handed over: it is served, not closed, as its client expects an answer.
const FIRST_LINE_GRACE: Duration = Duration::from_secs(2);
/// How long a closing connection waits for its client to close too.
const LINGER: Duration = Duration::from_secs(2);
/// The tag sessions are handed over under; the record is the input read but not answered.
const SESSION: &str = "echo-line";
/// The format of the state: the line count, as 8 big-endian bytes.
const STATE_VERSION: u32 = 1;

/// A session's connection: the accepted or handed-over stream, reading any input the previous
/// generation had read first.
type Conn = BufReader<Prefixed<TrackedStream<TcpStream>>>;

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
    let answered = Arc::new(AtomicU64::new(0));
    let mut handed = None;
    if config.handoff {
        // Before ready: the previous generation waits for this answer, and hands over only
        // what is asked for by then.
        if let Some(state) = graceful
            .inherited_state(STATE_VERSION..=STATE_VERSION)
            .await?
        {
            let count = <[u8; 8]>::try_from(state.bytes.as_slice()).map_err(|_| {
                graceful::Error::HandOff {
                    pid: std::process::id(),
                    problem: format!("the line count has {} bytes, not 8", state.bytes.len()),
                }
            })?;
            answered.store(u64::from_be_bytes(count), Ordering::SeqCst);
        }
        let saved = answered.clone();
        graceful.save_state(
            move || {
                let count = saved.load(Ordering::SeqCst);
                Ok(SavedState::new(STATE_VERSION, count.to_be_bytes()))
            },
            // The count is this generation's own either way; nothing to undo.
            || {},
        );
        handed = Some(graceful.handed_over(SESSION)?);
    }
    let mut listener = config.listen(&graceful).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| graceful::Error::io("reading the listener's address", e))?;
    let udp = match config.option("udp") {
        Some(udp_addr) => Some(graceful.udp(udp_addr).await?),
        None => None,
    };
    // A slow start (`--ready-delay`): the previous generation serves meanwhile.
    tokio::time::sleep(config.ready_delay).await;
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
    if let Some(mut handed) = handed {
        let (graceful, answered) = (graceful.clone(), answered.clone());
        tokio::spawn(async move {
            while let Some(session) = handed.next().await {
                let conn = BufReader::new(session.into_stream());
                tokio::spawn(echo(conn, graceful.clone(), answered.clone(), true));
            }
        });
    }

    while let Some(conn) = listener.next().await {
        let conn = BufReader::new(Prefixed::new(conn, Vec::new()));
        tokio::spawn(echo(
            conn,
            graceful.clone(),
            answered.clone(),
            config.handoff,
        ));
    }
    let _ = stopped.await;
    if let Some(datagrams) = datagrams {
        // It ends with the listener: from here on, the new generation reads every datagram.
        let _ = datagrams.await;
    }

    let report = graceful.drain(config.drain_timeout).await;
    server::print_exited(&report, graceful.handed_off());
    Ok(())
}

/// Answers lines until the client leaves or, once an upgrade is requested, until the next line
/// boundary; there the session is handed over to the new generation if it can be, or closed.
async fn echo(mut conn: Conn, graceful: Graceful, answered: Arc<AtomicU64>, handoff: bool) {
    let pid = std::process::id();
    let mut line = String::new();
    let upgrade = graceful.upgrade_requested();
    tokio::pin!(upgrade);
    let mut answers = 0u64;
    // Whether the session may still be handed over.
    let mut may_hand_off = handoff;
    loop {
        // At a boundary. Data that has arrived is served (the client sent it expecting an
        // answer); a connection that cannot be handed over and has not sent its first line yet
        // gets a grace period.
        let boundary_reached = async {
            upgrade.as_mut().await;
            if answers == 0 && !may_hand_off {
                tokio::time::sleep(FIRST_LINE_GRACE).await;
            }
        };
        tokio::select! {
            biased;
            available = conn.fill_buf() => match available {
                Ok([]) | Err(_) => return,
                Ok(_) => {}
            },
            () = boundary_reached => {
                if !may_hand_off {
                    break;
                }
                may_hand_off = false;
                // Nothing is buffered here (a begun line is finished first), but whatever is
                // travels as the record.
                let mut record = conn.buffer().to_vec();
                let (stream, unread) = conn.into_inner().into_parts();
                record.extend_from_slice(&unread);
                match graceful.hand_off(stream, SESSION, &record).await {
                    Ok(()) => return,
                    Err(kept) => {
                        tracing::debug!(reason = kept.reason, "closing the session instead");
                        conn = BufReader::new(Prefixed::new(kept.stream, record));
                        continue;
                    }
                }
            }
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
        let before = answered.fetch_add(1, Ordering::SeqCst);
        let reply = if request == "count" {
            format!("count {before} {pid}\n")
        } else {
            format!("{request} {pid}\n")
        };
        if conn.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        answers += 1;
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
async fn close_at_boundary(mut conn: Conn) {
    if conn.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}
