//! The server's standard output and error, captured for the test.
//!
//! Every generation writes to the same pipe (a new generation inherits its parent's streams),
//! so the capture is one log, in the order the lines were written. A task reads the pipe for as
//! long as the harness lives: a pipe that nobody reads fills up and would block the server on
//! its next log line. The most recent lines are kept; older ones are counted and dropped.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::watch;

/// How many lines are kept.
const KEPT_LINES: usize = 20_000;
/// How many lines an error message shows.
pub(crate) const TAIL_LINES: usize = 40;

#[derive(Debug, Default)]
pub(crate) struct Output {
    log: Mutex<Log>,
    /// Bumped on each line and at end of file.
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Log {
    lines: VecDeque<String>,
    dropped: usize,
    closed: bool,
}

impl Output {
    /// Reads `pipe` until end of file, that is until every process holding its write end has
    /// exited.
    pub(crate) async fn read(&self, pipe: OwnedFd) {
        let reader = match pipe::Receiver::from_owned_fd(pipe) {
            Ok(reader) => reader,
            Err(err) => {
                self.push(format!("[graceful-testing: cannot read the output: {err}]"));
                self.close();
                return;
            }
        };
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    self.push(text.trim_end_matches(['\n', '\r']).to_owned());
                }
                Err(err) => {
                    self.push(format!(
                        "[graceful-testing: reading the output failed: {err}]"
                    ));
                    break;
                }
            }
        }
        self.close();
    }

    fn push(&self, line: String) {
        let mut log = self.log();
        if log.lines.len() == KEPT_LINES {
            log.lines.pop_front();
            log.dropped += 1;
        }
        log.lines.push_back(line);
        drop(log);
        self.changed.send_modify(|n| *n += 1);
    }

    fn close(&self) {
        self.log().closed = true;
        self.changed.send_modify(|n| *n += 1);
    }

    /// Everything captured, one line each.
    pub(crate) fn text(&self) -> String {
        let log = self.log();
        let mut text = String::new();
        if log.dropped > 0 {
            text.push_str(&format!("[{} earlier lines dropped]\n", log.dropped));
        }
        for line in &log.lines {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// The last `n` lines.
    pub(crate) fn tail(&self, n: usize) -> String {
        let log = self.log();
        let skip = log.lines.len().saturating_sub(n);
        log.lines
            .iter()
            .skip(skip)
            .fold(String::new(), |text, line| text + line + "\n")
    }

    /// Whether a captured line contains `text`.
    pub(crate) fn contains(&self, text: &str) -> bool {
        self.log().lines.iter().any(|line| line.contains(text))
    }

    /// Whether every writer has gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.log().closed
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
