//! The README's live hand-off example, as written there: a line server whose sessions and state
//! (its greeting) move to each new generation. `examples/echo-server` is the full version.

use futures::StreamExt;
use graceful::{Graceful, Prefixed, SavedState, TrackedStream};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The tag under which sessions move, and the version of the state's format.
const SESSION: &str = "lines";
const STATE: u32 = 1;

#[tokio::main]
async fn main() -> Result<(), graceful::Error> {
    let graceful = graceful::Builder::new().install()?;
    // Before ready: what the previous generation hands over (nothing at first start).
    let greeting = match graceful.inherited_state(STATE..=STATE).await? {
        Some(state) => String::from_utf8_lossy(&state.bytes).into_owned(),
        None => "hello".to_owned(),
    };
    let saved = greeting.clone();
    graceful.save_state(move || Ok(SavedState::new(STATE, saved.clone())), || {});
    let mut handed = graceful.handed_over(SESSION)?;
    let mut listener = graceful.listen("127.0.0.1:7000").await?;
    graceful.ready()?;

    let (g, text) = (graceful.clone(), greeting.clone());
    tokio::spawn(async move {
        while let Some(session) = handed.next().await {
            tokio::spawn(session_loop(session.into_stream(), g.clone(), text.clone()));
        }
    });
    while let Some(conn) = listener.next().await {
        let conn = Prefixed::new(conn, Vec::new());
        tokio::spawn(session_loop(conn, graceful.clone(), greeting.clone()));
    }
    graceful.drain(std::time::Duration::from_secs(30)).await;
    Ok(())
}

/// Answers lines; once replaced, hands the session over between two lines.
async fn session_loop(
    conn: Prefixed<TrackedStream<TcpStream>>,
    graceful: Graceful,
    greeting: String,
) {
    let mut conn = BufReader::new(conn);
    let mut line = String::new();
    loop {
        tokio::select! {
            biased;
            read = conn.read_line(&mut line) => match read {
                Ok(n) if n > 0 && line.ends_with('\n') => {
                    let answer = format!("{greeting} {line}");
                    if conn.write_all(answer.as_bytes()).await.is_err() { return }
                    line.clear();
                }
                _ => return,
            },
            () = graceful.upgrade_requested(), if line.is_empty() => break,
        }
    }
    // At a boundary: input read but not answered (a line begun) travels as the record.
    let mut record = line.into_bytes();
    record.extend_from_slice(conn.buffer());
    let (stream, unread) = conn.into_inner().into_parts();
    record.extend_from_slice(&unread);
    if let Err(kept) = graceful.hand_off(stream, SESSION, &record).await {
        drop(kept.stream); // no successor takes it: close, the client reconnects
    }
}
