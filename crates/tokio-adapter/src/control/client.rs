//! The client side: one request, one answer, with nothing but std, for command-line tools
//! that have no runtime (a systemd `ExecReload=`, a deploy script).

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::MAX_LINE;

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
