//! The client side: one request, one answer, with nothing but std, for command-line tools
//! that have no runtime (a systemd `ExecReload=`, a deploy script).

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use graceful_core::BuildIdentity;

use super::MAX_LINE;

/// What serves after an upgrade, or now: the answer to [`upgrade_identified`] and [`status`].
///
/// Shown as `pid=4243 generation=2 version=1.4.0 build=…`, leaving out what the server did not
/// say (a server of an older graceful names the pid alone; a new generation of an older one
/// does not say what it runs).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Serving {
    /// The pid of the generation that serves.
    pub pid: u32,
    /// Its generation number, if the server said.
    pub generation: Option<u64>,
    /// What it runs, if it said: its version and build id.
    pub build: Option<BuildIdentity>,
}

impl fmt::Display for Serving {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid={}", self.pid)?;
        if let Some(generation) = self.generation {
            write!(f, " generation={generation}")?;
        }
        if let Some(build) = &self.build {
            write!(f, " {build}")?;
        }
        Ok(())
    }
}

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
    upgrade_identified(path, timeout).map(|serving| serving.pid)
}

/// [`upgrade`], and what the new generation runs: its pid, generation, version and build id,
/// so that a deploy can check that the binary it shipped is the one that serves.
///
/// ```no_run
/// use std::time::Duration;
///
/// let path = "/run/my-server/control.sock";
/// match graceful_tokio::control::upgrade_identified(path, Duration::from_secs(90)) {
///     // upgraded pid=4243 generation=2 version=1.4.0 build=…
///     Ok(serving) => println!("upgraded {serving}"),
///     Err(err) => eprintln!("{err}"),
/// }
/// ```
///
/// A server of an older graceful answers with the pid alone: `generation` and `build` are then
/// `None`.
///
/// # Errors
///
/// As [`upgrade`].
pub fn upgrade_identified(
    path: impl AsRef<Path>,
    timeout: Duration,
) -> Result<Serving, ControlError> {
    request(path.as_ref(), "upgrade", timeout)
}

/// Asks the server listening on the control socket at `path` what runs now: the pid,
/// generation, version and build id of the generation that answers, the one that serves.
///
/// # Errors
///
/// [`ControlError::Protocol`] if the server does not know the request (a server of an older
/// graceful); the other variants when the server could not be asked or did not answer.
pub fn status(path: impl AsRef<Path>, timeout: Duration) -> Result<Serving, ControlError> {
    request(path.as_ref(), "status", timeout).map_err(|err| match err {
        ControlError::Failed { reason } => ControlError::Protocol {
            problem: format!("the server does not answer \"status\": {reason}"),
        },
        other => other,
    })
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
    let answer = request(path.as_ref(), "rollback", timeout);
    answer.map(|serving| serving.pid).map_err(|err| match err {
        ControlError::Failed { reason } => ControlError::RollbackFailed { reason },
        other => other,
    })
}

fn request(path: &Path, request: &str, timeout: Duration) -> Result<Serving, ControlError> {
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

    // Up to two lines; the server closes its side after its answer, which ends one that has one.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 256];
    let lines = |answer: &[u8]| answer.iter().filter(|&&b| b == b'\n').count();
    while lines(&answer) < 2 && (answer.len() as u64) < 2 * MAX_LINE {
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

fn parse_answer(answer: &[u8]) -> Result<Serving, ControlError> {
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
    let pid = match line.split_once(' ') {
        Some(("ok", pid)) => pid.parse().map_err(|_| ControlError::Protocol {
            problem: format!("the answer {line:?} does not name a pid"),
        })?,
        Some(("error", reason)) => {
            return Err(ControlError::Failed {
                reason: reason.to_owned(),
            });
        }
        _ => {
            return Err(ControlError::Protocol {
                problem: format!("the answer {line:?} is not understood"),
            });
        }
    };
    let mut serving = Serving {
        pid,
        generation: None,
        build: None,
    };
    // The second line, from servers that send it: `serving pid=… generation=… [version=…
    // build=…]`. Anything else after the first line is ignored, as older clients ignore it.
    let rest = &answer[end + 1..];
    let Some(second) = rest
        .iter()
        .position(|&b| b == b'\n')
        .map(|end| String::from_utf8_lossy(&rest[..end]))
    else {
        return Ok(serving);
    };
    let Some(fields) = second.strip_prefix("serving ") else {
        return Ok(serving);
    };
    let bad = || ControlError::Protocol {
        problem: format!("the answer's second line {second:?} is not understood"),
    };
    let field = |key: &str| {
        fields
            .split(' ')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    if field("pid") != Some(&*pid.to_string()) {
        return Err(bad());
    }
    serving.generation = Some(
        field("generation")
            .and_then(|g| g.parse().ok())
            .ok_or_else(bad)?,
    );
    serving.build = match (field("version"), field("build")) {
        (Some(version), Some(id)) => {
            Some(BuildIdentity::from_escaped(version, id).ok_or_else(bad)?)
        }
        (None, None) => None,
        _ => return Err(bad()),
    };
    Ok(serving)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_into_pids_and_reasons() {
        assert_eq!(parse_answer(b"ok 4243\n").unwrap().pid, 4243);
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

    #[test]
    fn the_second_line_names_what_serves() {
        let serving =
            parse_answer(b"ok 4243\nserving pid=4243 generation=2 version=1.0%20rc build=a@1.2\n")
                .unwrap();
        assert_eq!(
            serving,
            Serving {
                pid: 4243,
                generation: Some(2),
                build: BuildIdentity::new("1.0 rc", "a@1.2"),
            }
        );
        assert_eq!(
            serving.to_string(),
            "pid=4243 generation=2 version=1.0%20rc build=a@1.2"
        );
        // A successor that did not say what it runs.
        let serving = parse_answer(b"ok 4243\nserving pid=4243 generation=2\n").unwrap();
        assert_eq!((serving.generation, &serving.build), (Some(2), &None));
        assert_eq!(serving.to_string(), "pid=4243 generation=2");
        // An older server: the pid alone.
        assert_eq!(parse_answer(b"ok 4243\n").unwrap().to_string(), "pid=4243");
        for bad in [
            &b"ok 4243\nserving pid=1 generation=2\n"[..],
            b"ok 4243\nserving pid=4243\n",
            b"ok 4243\nserving pid=4243 generation=2 version=1\n",
            b"ok 4243\nserving pid=4243 generation=2 version=1 build=%zz\n",
        ] {
            assert!(
                matches!(parse_answer(bad), Err(ControlError::Protocol { .. })),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
