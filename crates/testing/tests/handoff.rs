//! Live hand-off at its bounds, with a server written here (`Harness::this_test`): a session
//! whose record is over the limit is given back to the old generation, which closes it cleanly
//! and says why, while the other sessions move to the new one on their connections.
#![cfg(target_os = "linux")]

use std::time::Duration;

use futures::StreamExt;
use graceful_testing::{Harness, is_server};
use graceful_tokio::{Graceful, Prefixed, TrackedStream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The tag of the sessions.
const SESSION: &str = "line";
/// How long any one exchange may take.
const STEP: Duration = Duration::from_secs(30);

type Conn = BufReader<Prefixed<TrackedStream<TcpStream>>>;

/// A line server: each line is answered with the line and the pid. A line `big` makes the
/// session's protocol state one byte larger than a record may be. Once replaced, each session is
/// handed over between two lines; one that is given back is told why (`kept: REASON`) and closed.
async fn serve() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let graceful = graceful_tokio::Builder::new()
        .probation(Duration::ZERO)
        .install()
        .expect("install graceful");
    let mut handed = graceful.handed_over(SESSION).expect("ask for sessions");
    let mut listener = graceful.listen("127.0.0.1:0").await.expect("listen");
    graceful.ready().expect("ready");
    let g = graceful.clone();
    tokio::spawn(async move {
        while let Some(session) = handed.next().await {
            tokio::spawn(session_loop(
                BufReader::new(session.into_stream()),
                g.clone(),
            ));
        }
    });
    while let Some(conn) = listener.next().await {
        let conn = BufReader::new(Prefixed::new(conn, Vec::new()));
        tokio::spawn(session_loop(conn, graceful.clone()));
    }
    graceful.drain(STEP).await;
}

async fn session_loop(mut conn: Conn, graceful: Graceful) {
    let pid = std::process::id();
    let upgrade = graceful.upgrade_requested();
    tokio::pin!(upgrade);
    let mut state = Vec::new();
    loop {
        tokio::select! {
            biased;
            available = conn.fill_buf() => match available {
                Ok([]) | Err(_) => return,
                Ok(_) => {}
            },
            () = &mut upgrade => break,
        }
        let mut line = String::new();
        match conn.read_line(&mut line).await {
            Ok(_) if line.ends_with('\n') => {}
            _ => return,
        }
        if line == "big\n" {
            state = vec![b'x'; graceful_core::handoff::MAX_RECORD + 1];
        }
        let reply = format!("{} {pid}\n", line.trim_end());
        if conn.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
    let (stream, _) = conn.into_inner().into_parts();
    let kept = match graceful.hand_off(stream, SESSION, &state).await {
        Ok(()) => return,
        Err(kept) => kept,
    };
    let mut stream = kept.stream;
    let _ = stream
        .write_all(format!("kept: {}\n", kept.reason).as_bytes())
        .await;
    // Half-close, then discard until the client closes: closing with unread data would reset.
    if stream.shutdown().await.is_ok() {
        let mut sink = [0u8; 256];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// A connection that sends lines and reads answers, each bounded by [`STEP`].
struct Client(BufReader<TcpStream>);

impl Client {
    async fn open(harness: &Harness) -> Client {
        Client(BufReader::new(
            TcpStream::connect(harness.addr()).await.unwrap(),
        ))
    }

    async fn ask(&mut self, line: &str) -> String {
        self.0
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.line().await
    }

    async fn line(&mut self) -> String {
        let mut answer = String::new();
        tokio::time::timeout(STEP, self.0.read_line(&mut answer))
            .await
            .expect("an answer in time")
            .unwrap();
        answer
    }
}

#[tokio::test]
async fn a_record_over_the_limit_is_given_back_and_the_session_closed_cleanly() {
    if is_server() {
        return serve().await;
    }
    let harness =
        Harness::this_test("a_record_over_the_limit_is_given_back_and_the_session_closed_cleanly")
            .start()
            .await
            .unwrap();
    // The harness plays generation 0: the first upgrade is from generation 1, which can hand
    // sessions over to generation 2.
    harness.upgrade().await.unwrap();
    let old = harness.pid();
    let mut small = Client::open(&harness).await;
    let mut big = Client::open(&harness).await;
    assert_eq!(small.ask("hello").await, format!("hello {old}\n"));
    assert_eq!(big.ask("big").await, format!("big {old}\n"));

    let upgraded = harness.upgrade().await.unwrap();
    assert_eq!(upgraded.from, old);
    // The small session moved: its next line is answered by the new pid, on the same connection.
    assert_eq!(
        small.ask("again").await,
        format!("again {}\n", upgraded.pid)
    );
    // The big one stayed, was told why, and ended cleanly.
    let kept = big.line().await;
    assert!(
        kept.starts_with(
            "kept: the record of a \"line\" connection has 65537 bytes; at most 65536"
        ),
        "{kept}"
    );
    let mut rest = Vec::new();
    tokio::time::timeout(STEP, big.0.read_to_end(&mut rest))
        .await
        .expect("the end of the stream in time")
        .expect("a clean end of stream, not a reset");
    assert!(rest.is_empty());
    // The old generation drained with nothing abandoned.
    let retired = harness.wait_exited(old).await.unwrap();
    assert_eq!(retired.drain().unwrap().abandoned, 0);
}
