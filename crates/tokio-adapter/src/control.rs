//! The control socket: an upgrade that reports whether it worked.
//!
//! A signal cannot answer. `kill -HUP` returns at once, before anyone knows whether the new
//! binary started, so `systemctl reload` and deploy scripts cannot tell a failed upgrade from a
//! good one. The control socket can: a client connects, asks for an upgrade, and gets the answer
//! once the new generation is ready or the attempt has failed.
//!
//! The protocol is one line each way on a Unix stream socket:
//!
//! ```text
//! -> upgrade
//! <- ok 4243                                  the new generation, pid 4243, serves
//! <- error new process (pid 4243) exited …    nothing changed; the old generation serves on
//!
//! -> rollback
//! <- ok 4242                                  the previous generation, pid 4242, serves again
//! <- error cannot roll back from pid 4243: …  nothing changed
//! ```
//!
//! `rollback` is for a deploy that sees the new build misbehave within the previous
//! generation's probation (see [`Builder::probation`](crate::Builder::probation)): the previous
//! generation accepts again and the one that answered stops gracefully.
//!
//! The server side is [`Builder::control_socket`](crate::Builder::control_socket); the client
//! side is [`upgrade`] and [`rollback`]. The socket is handed over like any listener: the old
//! generation stops accepting on it when it is replaced, and the new one answers from then on
//! (after a rollback, the old one again). A connection the old generation accepted is answered
//! by it, and counted by its drain until it is answered.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use graceful_core::{Error, Result, Upgrader};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::handle::Graceful;
use crate::tracked::TrackedStream;

/// The longest request or answer line read.
const MAX_LINE: u64 = 4096;
/// How long the previous generation may take to answer a rollback request.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why [`upgrade`] did not report a new generation.
#[derive(Debug)]
#[non_exhaustive]
pub enum ControlError {
    /// Nothing answers at the path: no server runs, it runs without a control socket, or this
    /// user may not connect.
    Unreachable {
        /// The control socket.
        path: PathBuf,
        /// The error of `connect`.
        source: io::Error,
    },
    /// The server tried and failed, or refused (an upgrade already in progress, a process
    /// that is stopping). The generation that served goes on serving.
    Failed {
        /// The server's reason.
        reason: String,
    },
    /// The server could not roll back (no previous generation, or its probation is over). The
    /// generation that served goes on serving.
    RollbackFailed {
        /// The server's reason.
        reason: String,
    },
    /// No answer within the timeout. The upgrade may still be under way.
    Timeout {
        /// The timeout that ran out.
        timeout: Duration,
    },
    /// The connection broke, or the answer was not understood.
    Protocol {
        /// What went wrong.
        problem: String,
    },
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Unreachable { path, source } => {
                write!(
                    f,
                    "cannot reach the control socket {}: {source}",
                    path.display()
                )
            }
            ControlError::Failed { reason } => write!(f, "upgrade failed: {reason}"),
            ControlError::RollbackFailed { reason } => write!(f, "rollback failed: {reason}"),
            ControlError::Timeout { timeout } => write!(
                f,
                "no answer on the control socket within {timeout:?}; the upgrade may still be \
                 in progress"
            ),
            ControlError::Protocol { problem } => write!(f, "control socket: {problem}"),
        }
    }
}

impl std::error::Error for ControlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ControlError::Unreachable { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Asks the server listening on the control socket at `path` to upgrade, and waits for the
/// outcome, for `timeout` at most; returns the pid of the new generation, which serves.
///
/// Blocking, and free of any runtime, for command-line tools: `my-server upgrade` as a
/// systemd `ExecReload=` makes `systemctl reload` fail when the upgrade fails. Give it more
/// time than the server's upgrade timeout, which bounds the server's answer.
///
/// ```no_run
/// use std::time::Duration;
///
/// match graceful_tokio::control::upgrade("/run/my-server/control.sock", Duration::from_secs(90)) {
///     Ok(pid) => println!("upgraded: pid {pid} serves"),
///     Err(err) => eprintln!("{err}"),
/// }
/// ```
///
/// # Errors
///
/// [`ControlError::Failed`] with the server's reason when the upgrade failed or was refused;
/// the other variants when the server could not be asked or did not answer.
pub fn upgrade(path: impl AsRef<Path>, timeout: Duration) -> Result<u32, ControlError> {
    request(path.as_ref(), "upgrade", timeout)
}

/// Asks the server listening on the control socket at `path` to roll back to the previous
/// generation, which must still be on probation; returns the pid of that generation once it
/// serves again. The generation that answered stops gracefully.
///
/// ```no_run
/// use std::time::Duration;
///
/// match graceful_tokio::control::rollback("/run/my-server/control.sock", Duration::from_secs(30)) {
///     Ok(pid) => println!("rolled back: pid {pid} serves again"),
///     Err(err) => eprintln!("{err}"),
/// }
/// ```
///
/// # Errors
///
/// [`ControlError::RollbackFailed`] with the server's reason (no previous generation, its
/// probation is over…); the other variants when the server could not be asked or did not
/// answer.
pub fn rollback(path: impl AsRef<Path>, timeout: Duration) -> Result<u32, ControlError> {
    request(path.as_ref(), "rollback", timeout).map_err(|err| match err {
        ControlError::Failed { reason } => ControlError::RollbackFailed { reason },
        other => other,
    })
}

fn request(path: &Path, request: &str, timeout: Duration) -> Result<u32, ControlError> {
    let deadline = Instant::now() + timeout;
    let mut stream = UnixStream::connect(path).map_err(|source| ControlError::Unreachable {
        path: path.to_owned(),
        source,
    })?;
    let broken = |e: io::Error| ControlError::Protocol {
        problem: format!("the connection failed: {e}"),
    };
    stream
        .set_write_timeout(Some(timeout.max(Duration::from_millis(1))))
        .map_err(broken)?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(broken)?;

    let mut answer = Vec::new();
    let mut chunk = [0u8; 256];
    while !answer.contains(&b'\n') && (answer.len() as u64) < MAX_LINE {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ControlError::Timeout { timeout });
        }
        stream.set_read_timeout(Some(left)).map_err(broken)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ControlError::Timeout { timeout });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(broken(e)),
        }
    }
    parse_answer(&answer)
}

fn parse_answer(answer: &[u8]) -> Result<u32, ControlError> {
    let Some(end) = answer.iter().position(|&b| b == b'\n') else {
        return Err(ControlError::Protocol {
            problem: if answer.is_empty() {
                "the server closed the connection without answering (it may be stopping)".into()
            } else {
                format!(
                    "the answer {:?} is incomplete",
                    String::from_utf8_lossy(answer)
                )
            },
        });
    };
    let line = String::from_utf8_lossy(&answer[..end]);
    match line.split_once(' ') {
        Some(("ok", pid)) => pid.parse().map_err(|_| ControlError::Protocol {
            problem: format!("the answer {line:?} does not name a pid"),
        }),
        Some(("error", reason)) => Err(ControlError::Failed {
            reason: reason.to_owned(),
        }),
        _ => Err(ControlError::Protocol {
            problem: format!("the answer {line:?} is not understood"),
        }),
    }
}

/// Inherits or binds the control socket and answers on it while this generation serves.
pub(crate) fn serve(graceful: &Graceful, path: &Path) -> Result<()> {
    let listener = inherit_or_bind(graceful.upgrader(), path)?;
    if let Err(err) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(path = %path.display(), %err, "cannot restrict the control socket to its owner");
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("making the control socket non-blocking", e))?;
    let listener = tokio::net::UnixListener::from_std(listener)
        .map_err(|e| Error::io("registering the control socket with tokio", e))?;
    tracing::debug!(path = %path.display(), "answering upgrade requests on the control socket");
    tokio::spawn(accept(graceful.clone(), graceful.wrap_control(listener)));
    Ok(())
}

/// The inherited control socket, or a new one. A socket file that nobody listens on is left by
/// a process that has gone; it is replaced, as anything else at the path is not.
fn inherit_or_bind(upgrader: &Upgrader, path: &Path) -> Result<std::os::unix::net::UnixListener> {
    match upgrader.unix_listener(path) {
        Err(Error::Create { source, .. })
            if source.kind() == io::ErrorKind::AddrInUse && is_stale(path) =>
        {
            tracing::info!(path = %path.display(), "replacing a stale control socket");
            std::fs::remove_file(path)
                .map_err(|e| Error::io("removing a stale control socket", e))?;
            upgrader.unix_listener(path)
        }
        other => other,
    }
}

fn is_stale(path: &Path) -> bool {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    is_socket
        && matches!(UnixStream::connect(path), Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
}

/// Accepts while this generation serves, like the application's listeners: from readiness
/// until it is replaced or stopping, paused during a successor's probation.
async fn accept(graceful: Graceful, mut listener: crate::UnixListener) {
    while let Some((stream, _)) = listener.accept().await {
        tokio::spawn(answer(graceful.clone(), stream));
    }
}

async fn answer(graceful: Graceful, stream: TrackedStream<tokio::net::UnixStream>) {
    let mut stream = BufReader::new(stream);
    let mut request = String::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        (&mut stream).take(MAX_LINE).read_line(&mut request),
    )
    .await;
    let reply = match read {
        Ok(Ok(_)) if request.ends_with('\n') => respond(&graceful, request.trim()).await,
        Ok(Ok(_)) => "error the request must be one line, ending with a newline".to_owned(),
        Ok(Err(err)) => format!("error cannot read the request: {err}"),
        Err(_) => format!("error no request within {REQUEST_TIMEOUT:?}"),
    };
    let reply = format!("{}\n", reply.replace(['\n', '\r'], " "));
    let stream = stream.get_mut();
    if let Err(err) = stream.write_all(reply.as_bytes()).await {
        tracing::warn!(%err, "cannot answer on the control socket; the client has gone");
    }
    let _ = stream.shutdown().await;
}

async fn respond(graceful: &Graceful, request: &str) -> String {
    if request == "rollback" {
        tracing::warn!(
            pid = std::process::id(),
            "rollback requested on the control socket"
        );
        return match graceful.rollback(ROLLBACK_TIMEOUT).await {
            Ok(pid) => format!("ok {pid}"),
            Err(err) => format!("error {err}"),
        };
    }
    if request != "upgrade" {
        return format!(
            "error unknown request {request:?}; the requests are \"upgrade\" and \"rollback\""
        );
    }
    if graceful.is_upgrade_requested() {
        return format!(
            "error this process (pid {}) is stopping or already replaced",
            std::process::id()
        );
    }
    tracing::info!(
        pid = std::process::id(),
        "upgrade requested on the control socket"
    );
    match graceful.upgrade().await {
        Ok(pid) => format!("ok {pid}"),
        Err(err) => format!("error {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_into_pids_and_reasons() {
        assert_eq!(parse_answer(b"ok 4243\n").unwrap(), 4243);
        let err = parse_answer(b"error new process (pid 7) exited\n").unwrap_err();
        assert!(
            matches!(&err, ControlError::Failed { reason } if reason == "new process (pid 7) exited"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "upgrade failed: new process (pid 7) exited"
        );
        for bad in [&b""[..], b"ok 12", b"ok twelve\n", b"maybe\n"] {
            assert!(
                matches!(parse_answer(bad), Err(ControlError::Protocol { .. })),
                "{bad:?}"
            );
        }
    }
}
