//! Takeover without a parent: a process that the running server did not start (a second
//! instance of a systemd template unit, a container entrypoint sharing a volume with the
//! running one, a supervisor) asks it for its sockets on its control socket, adopts them like
//! inherited ones, and reports ready on the same connection. This module is the wire and the
//! asking side; `upgrader/takeover.rs` is the answering side.
//!
//! # The conversation
//!
//! On a connection to the control socket (a Unix stream socket, mode 0600):
//!
//! ```text
//! new -> old   takeover\n
//! old -> new   error REASON\n                         refused; the connection closes
//!          or  ok PID GENERATION COUNT handoff\n      then COUNT descriptors in listeners
//!                                                     frames (`handoff.rs`), names included,
//!                                                     and a channel frame: the hand-off channel
//! new -> old   ready\n                                the link's messages from here on
//! old -> new   yielded PID\n                          the old one has stopped accepting
//! ```
//!
//! From `ok` on, the connection is the link between the two generations, as the socketpair
//! of an upgrade is (`link.rs`): `ready`, `descendants`, `stopping`, `rollback` one way,
//! `yielded`, `resumed`, `refused`, `stop` the other, so the probation and rollback work
//! unchanged.
//!
//! Invariants kept here:
//! - The `ok` line is read a byte at a time: the descriptors travel with the first byte of
//!   the frame after it, and a read that went past the line would drop them.
//! - The asking side checks who answers (SO_PEERCRED: the same user or root) before it adopts
//!   anything, as the answering side checks who asks.
//! - Nothing at the path (no socket file, or nobody listening on it) is a first start: the
//!   build goes on with nothing inherited. Anything else that goes wrong fails the build: the
//!   running server refused, went away or did not answer within the upgrade timeout, and
//!   binding its addresses now would fail or, worse, serve beside it.
//! - The old generation says nothing on the link between the last frame and `yielded`, so
//!   that nothing read with the frames belongs to the link.
//! - The new process's `ready()` returns only once the old one has answered `yielded`: an old
//!   one that gave up waiting (its upgrade timeout) closes the connection instead, and the new
//!   one's `ready()` fails rather than serve beside it.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::handoff::{Frame, FrameReader};
use crate::link::MAX_LINE;
use crate::sys;

/// The request line (without its newline) that asks for a takeover.
pub const REQUEST: &str = "takeover";

/// What a takeover brought: the sockets, the link to the previous generation, and where this
/// one stands.
#[derive(Debug)]
pub(crate) struct Taken {
    /// `(name, fd)` as `LISTEN_FDNAMES` would have named them.
    pub(crate) fds: Vec<(String, OwnedFd)>,
    /// The connection, from now on the link to the previous generation.
    pub(crate) link: OwnedFd,
    /// This process's generation: the previous one's, plus one.
    pub(crate) generation: u64,
    /// The previous generation's pid.
    pub(crate) previous: u32,
    /// The control socket asked, for messages.
    pub(crate) path: PathBuf,
    /// This process's end of the hand-off channel (state and connections), if the previous
    /// generation opened one.
    pub(crate) handoff: Option<OwnedFd>,
}

/// The first answer line: `ok PID GENERATION COUNT`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Granted {
    pub(crate) pid: u32,
    pub(crate) generation: u64,
    pub(crate) count: usize,
    /// A hand-off channel follows the descriptors.
    pub(crate) handoff: bool,
}

impl Granted {
    pub(crate) fn encode(&self) -> String {
        let handoff = if self.handoff { " handoff" } else { "" };
        format!(
            "ok {} {} {}{handoff}\n",
            self.pid, self.generation, self.count
        )
    }

    /// Reads an answer line: `Ok(granted)`, or `Err(reason)` for `error REASON` and anything
    /// not understood.
    fn decode(line: &str) -> std::result::Result<Granted, String> {
        if let Some(reason) = line.strip_prefix("error ") {
            return Err(format!("it refused: {reason}"));
        }
        let fields: Vec<&str> = line.split(' ').collect();
        let (parsed, handoff) = match fields.as_slice() {
            ["ok", pid, generation, count] => {
                ((pid.parse(), generation.parse(), count.parse()), false)
            }
            ["ok", pid, generation, count, "handoff"] => {
                ((pid.parse(), generation.parse(), count.parse()), true)
            }
            _ => return Err(format!("the answer {line:?} is not understood")),
        };
        match parsed {
            (Ok(pid), Ok(generation), Ok(count)) if generation < u64::MAX - 1 => Ok(Granted {
                pid,
                generation,
                count,
                handoff,
            }),
            _ => Err(format!("the answer {line:?} is not understood")),
        }
    }
}

/// Asks the server listening on the control socket at `path` for its sockets; waits for them
/// until `timeout` at most. `Ok(None)` when nothing listens there: a first start.
///
/// # Errors
///
/// [`Error::Takeover`] when the server cannot be asked, is another user's, refuses, goes away
/// or does not hand everything over in time.
pub(crate) fn request(path: &Path, timeout: Duration) -> Result<Option<Taken>> {
    let deadline = Instant::now() + timeout;
    let failed = |problem: String| Error::Takeover {
        path: path.to_owned(),
        problem,
    };
    let mut stream = match UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            tracing::info!(
                path = %path.display(),
                %err,
                "nothing serves at the takeover path; starting fresh"
            );
            return Ok(None);
        }
        Err(err) => return Err(failed(format!("cannot connect: {err}"))),
    };
    let server = sys::peer(stream.as_fd()).map_err(|e| failed(format!("who listens? {e}")))?;
    let uid = sys::euid();
    if server.uid != uid && server.uid != 0 {
        return Err(failed(format!(
            "it runs as uid {}; only a server of uid {uid} or root is taken over from",
            server.uid
        )));
    }
    stream
        .set_write_timeout(Some(timeout))
        .and_then(|()| stream.write_all(format!("{REQUEST}\n").as_bytes()))
        .map_err(|e| failed(format!("cannot send the request: {e}")))?;
    let link = OwnedFd::from(stream);
    let line = sys::read_line_exact(link.as_fd(), deadline, MAX_LINE)
        .map_err(|e| failed(reading("answer", e, timeout)))?
        .ok_or_else(|| failed("it closed the connection without answering".into()))?;
    let granted = Granted::decode(&line).map_err(failed)?;
    let (fds, handoff) = receive(link.as_fd(), &granted, deadline)
        .map_err(|e| failed(reading("sockets", e, timeout)))?;
    tracing::info!(
        path = %path.display(),
        previous_pid = granted.pid,
        fds = fds.len(),
        "took over the sockets of the running server; adopting them"
    );
    Ok(Some(Taken {
        fds,
        link,
        generation: granted.generation + 1,
        previous: granted.pid,
        path: path.to_owned(),
        handoff,
    }))
}

fn reading(what: &str, err: io::Error, timeout: Duration) -> String {
    if err.kind() == io::ErrorKind::TimedOut {
        format!("no {what} within {timeout:?}")
    } else {
        format!("cannot read the {what}: {err}")
    }
}

/// Reads listeners frames until `count` descriptors have come.
/// The named descriptors of a takeover, and the hand-off channel if one came.
type Received = (Vec<(String, OwnedFd)>, Option<OwnedFd>);

fn receive(socket: BorrowedFd<'_>, granted: &Granted, deadline: Instant) -> io::Result<Received> {
    let count = granted.count;
    let mut reader = FrameReader::new();
    let mut fds = Vec::with_capacity(count);
    while fds.len() < count {
        match reader.next_until(socket, deadline)? {
            Some(Frame::Listeners { names, fds: more }) => fds.extend(names.into_iter().zip(more)),
            Some(other) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a {other:?} frame where listeners were expected"),
                ));
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the connection closed after {} of {count} descriptors",
                        fds.len()
                    ),
                ));
            }
        }
    }
    let handoff = if granted.handoff {
        match reader.next_until(socket, deadline)? {
            Some(Frame::Channel { fd }) => Some(fd),
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{other:?} where the hand-off channel was announced"),
                ));
            }
        }
    } else {
        None
    };
    if fds.len() != count || !reader.is_drained() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} descriptors or more bytes came where {count} were announced",
                fds.len()
            ),
        ));
    }
    Ok((fds, handoff))
}

/// Waits on the link for `yielded PID` until `deadline`: the previous generation has stopped
/// accepting. Lines it does not know are skipped.
///
/// # Errors
///
/// A description of what came instead: end of file (it gave up or stopped), a timeout, a
/// broken connection.
pub(crate) fn wait_yielded(
    link: BorrowedFd<'_>,
    deadline: Instant,
) -> std::result::Result<(), String> {
    loop {
        match sys::read_line_exact(link, deadline, MAX_LINE) {
            Ok(Some(line)) if line.starts_with("yielded") => return Ok(()),
            Ok(Some(line)) => tracing::debug!(line, "ignoring a line before yielded"),
            Ok(None) => {
                return Err(
                    "it closed the connection without yielding: it gave up waiting \
                            (its upgrade timeout) or is stopping"
                        .into(),
                );
            }
            Err(err) if err.kind() == io::ErrorKind::TimedOut => {
                return Err("it did not yield in time".into());
            }
            Err(err) => return Err(format!("the connection broke: {err}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_granted_or_refused() {
        let mut granted = Granted {
            pid: 42,
            generation: 3,
            count: 2,
            handoff: false,
        };
        assert_eq!(granted.encode(), "ok 42 3 2\n");
        assert_eq!(Granted::decode("ok 42 3 2").as_ref(), Ok(&granted));
        granted.handoff = true;
        assert_eq!(granted.encode(), "ok 42 3 2 handoff\n");
        assert_eq!(Granted::decode("ok 42 3 2 handoff"), Ok(granted));
        assert_eq!(
            Granted::decode("error an upgrade is already in progress"),
            Err("it refused: an upgrade is already in progress".into())
        );
        for bad in [
            "ok",
            "ok 1 2",
            "ok a 1 1",
            "ok 1 18446744073709551615 1",
            "ok 1 2 3 more",
            "maybe",
        ] {
            assert!(
                Granted::decode(bad).unwrap_err().contains("not understood"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn nothing_at_the_path_is_a_first_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        assert!(request(&path, Duration::from_secs(1)).unwrap().is_none());
        // A socket file nobody listens on: left by a server that has gone.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(request(&path, Duration::from_secs(1)).unwrap().is_none());
    }

    #[test]
    fn a_server_that_says_nothing_fails_the_takeover_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = request(&path, Duration::from_millis(50)).unwrap_err();
        assert!(err.to_string().contains("no answer within 50ms"), "{err}");
    }
}
