//! The role `hold --addr A --connections N [--hello true]`: the clients of the drain and memory
//! probes, in a process of their own so that their memory and descriptors are not the
//! server's.
//!
//! It opens N connections to A, at most [`CONNECTING`] at a time; with `--hello true` each
//! sends `hello` and waits for the echo, so the server has accepted and served it. Then it
//! prints `held connections=… failed=…` and waits, counting how each connection ends: a clean
//! end of file, or a failure of the load engine's taxonomy (`graceful_testing::load::Failure`):
//! a reset, or another kind. When all have ended, after `--hold-seconds` (default
//! 120), or when its stdin closes, it prints `closed clean=… reset=… other=… open=…` and exits.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use graceful_testing::load::Failure;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::STEP;
use crate::args::Flags;
use crate::procs;

/// Connections being set up at once: far below the listener's backlog (1024), so that no SYN
/// is dropped and retried a second later.
const CONNECTING: usize = 128;

/// What happened to one connection.
#[derive(Debug)]
enum Event {
    Held,
    Failed(String),
    Ended(End),
}

/// How a held connection ended: a clean end of file, or a failure.
type End = Result<(), Failure>;

#[derive(Debug, Default)]
struct Tally {
    held: usize,
    failed: usize,
    first_error: Option<String>,
    clean: usize,
    reset: usize,
    other: usize,
}

impl Tally {
    fn count(&mut self, event: Event) {
        match event {
            Event::Held => self.held += 1,
            Event::Failed(error) => {
                self.failed += 1;
                self.first_error.get_or_insert(error);
            }
            Event::Ended(Ok(())) => self.clean += 1,
            Event::Ended(Err(Failure::Reset)) => self.reset += 1,
            Event::Ended(Err(_)) => self.other += 1,
        }
    }

    fn ended(&self) -> usize {
        self.clean + self.reset + self.other
    }
}

/// Runs the role.
pub(crate) fn run(flags: &Flags) -> Result<(), String> {
    let addr: SocketAddr = flags.required("addr")?;
    let connections = flags.count("connections", 1)?;
    let hello: bool = flags.value("hello", false)?;
    let hold_for = Duration::from_secs(flags.value("hold-seconds", 120)?);
    procs::allow_descriptors(connections as u64 + 64)?;
    crate::runtime()?.block_on(async move {
        let (stdin_closed, mut gone) = oneshot::channel();
        procs::on_stdin_closed(move || {
            let _ = stdin_closed.send(());
        });
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(CONNECTING));
        for _ in 0..connections {
            tokio::spawn(client(addr, hello, permits.clone(), events_tx.clone()));
        }
        drop(events_tx);

        let mut tally = Tally::default();
        let deadline = Instant::now() + STEP;
        while tally.held + tally.failed < connections {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => tally.count(event),
                Ok(None) | Err(_) => break,
            }
        }
        // Connections still being set up at the deadline count as failed.
        let failed = connections - tally.held;
        println!("held connections={} failed={failed}", tally.held);
        if let Some(error) = &tally.first_error {
            eprintln!("scale-probe hold: first failed connection: {error}");
        }

        let deadline = Instant::now() + hold_for;
        while tally.ended() < tally.held {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => tally.count(event),
                    None => break,
                },
                _ = &mut gone => break,
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        println!(
            "closed clean={} reset={} other={} open={}",
            tally.clean,
            tally.reset,
            tally.other,
            tally.held - tally.ended()
        );
        Ok(())
    })
}

/// One connection: set up, reported held, then watched until it ends.
async fn client(
    addr: SocketAddr,
    hello: bool,
    permits: Arc<Semaphore>,
    events: mpsc::UnboundedSender<Event>,
) {
    let Ok(permit) = permits.acquire_owned().await else {
        return;
    };
    let conn = match tokio::time::timeout(STEP, connect(addr, hello)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => {
            let _ = events.send(Event::Failed(err.to_string()));
            return;
        }
        Err(_) => {
            let _ = events.send(Event::Failed(format!("no connection within {STEP:?}")));
            return;
        }
    };
    drop(permit);
    let _ = events.send(Event::Held);
    let _ = events.send(Event::Ended(end(conn).await));
}

async fn connect(addr: SocketAddr, hello: bool) -> io::Result<BufReader<TcpStream>> {
    let mut conn = BufReader::new(TcpStream::connect(addr).await?);
    if hello {
        conn.write_all(b"hello\n").await?;
        let mut answer = String::new();
        conn.read_line(&mut answer).await?;
        if answer != "hello\n" {
            return Err(io::Error::other(format!("hello was answered {answer:?}")));
        }
    }
    Ok(conn)
}

/// Reads until the connection ends, and says how.
async fn end(mut conn: BufReader<TcpStream>) -> End {
    let mut sink = [0; 256];
    loop {
        match conn.read(&mut sink).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(err) => return Err(Failure::from_io(&err)),
        }
    }
}
