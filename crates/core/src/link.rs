//! The link between two generations: a Unix stream socket whose child end is handed over.
//!
//! The child writes line messages; the parent only reads. Either side sees end of file when the
//! other exits, which is how a child learns that its parent has gone without polling, and how a
//! parent learns that a starting child has died.
//!
//! Messages, child to parent:
//! - `build VERSION ID`: what the child runs, each value escaped (`identity.rs`); sent just
//!   before `ready`, so the parent can report its successor's identity.
//! - `ready`: the child is serving; the parent may stop accepting.
//! - `descendants N`: the child now has N living descendants (used to bound the number of
//!   generations alive at once).
//! - `stopping`: the child stops for good (a stop signal, not a crash): a parent on probation
//!   must not take it for a failure and roll back.
//! - `rollback`: the child asks its parent, on probation, to serve again and to stop it.
//! - `takes TAG…`: sent just before `ready`, the protocols whose live connections the child
//!   takes over the hand-off channel (`handoff.rs`); the parent hands over no other.
//!
//! Parent to child:
//! - `resumed PID`: the answer to `rollback`; the parent serves again.
//! - `refused REASON`: the answer to `rollback` when the parent cannot take over.
//! - `stop`: the parent has taken the service back; the child stops gracefully.
//! - `paused`: right after the child's `ready`, the parent has stopped accepting and reading:
//!   from now on only the child takes datagrams from the shared UDP sockets.
//!
//! Unknown lines are ignored, so newer versions can add messages.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use crate::identity::BuildIdentity;
use crate::sys;

/// Longest line accepted; anything longer is a protocol error.
pub(crate) const MAX_LINE: usize = 256;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message {
    Build(BuildIdentity),
    Ready,
    Descendants(usize),
    Stopping,
    Rollback,
    Takes(Vec<String>),
    Resumed(u32),
    Refused(String),
    Stop,
    Paused,
    Unknown(String),
}

impl Message {
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Message::Build(identity) => format!(
                "build {} {}\n",
                identity.escaped_version(),
                identity.escaped_id()
            )
            .into_bytes(),
            Message::Ready => b"ready\n".to_vec(),
            Message::Descendants(n) => format!("descendants {n}\n").into_bytes(),
            Message::Stopping => b"stopping\n".to_vec(),
            Message::Rollback => b"rollback\n".to_vec(),
            Message::Takes(tags) => format!("takes {}\n", tags.join(" ")).into_bytes(),
            Message::Resumed(pid) => format!("resumed {pid}\n").into_bytes(),
            Message::Refused(reason) => format!("refused {}\n", one_line(reason)).into_bytes(),
            Message::Stop => b"stop\n".to_vec(),
            Message::Paused => b"paused\n".to_vec(),
            Message::Unknown(line) => format!("{line}\n").into_bytes(),
        }
    }

    fn decode(line: &str) -> Message {
        let unknown = || Message::Unknown(line.to_owned());
        match line.split_once(' ') {
            None => match line {
                "ready" => Message::Ready,
                "stopping" => Message::Stopping,
                "rollback" => Message::Rollback,
                "stop" => Message::Stop,
                "paused" => Message::Paused,
                _ => unknown(),
            },
            Some(("descendants", n)) => n.parse().map_or_else(|_| unknown(), Message::Descendants),
            Some(("takes", tags)) => Message::Takes(tags.split(' ').map(str::to_owned).collect()),
            Some(("resumed", pid)) => pid.parse().map_or_else(|_| unknown(), Message::Resumed),
            Some(("refused", reason)) => Message::Refused(reason.to_owned()),
            Some(("build", values)) => values
                .split_once(' ')
                .and_then(|(version, id)| BuildIdentity::from_escaped(version, id))
                .map_or_else(unknown, Message::Build),
            _ => unknown(),
        }
    }
}

/// A reason short enough for one line of the link, with no line break in it.
fn one_line(reason: &str) -> String {
    let mut line = reason.replace(['\n', '\r'], " ");
    let mut end = line.len().min(MAX_LINE - 16);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line.truncate(end);
    line
}

/// Sends a message; a peer that has gone is reported as an error, never as SIGPIPE.
pub(crate) fn send(link: &OwnedFd, message: &Message) -> io::Result<()> {
    send_fd(link.as_fd(), message)
}

/// [`send`] on a borrowed end, such as the one a [`Reader`] owns.
pub(crate) fn send_fd(link: BorrowedFd<'_>, message: &Message) -> io::Result<()> {
    sys::send_all(link, &message.encode())
}

/// Reads messages from one end of the link.
#[derive(Debug)]
pub(crate) struct Reader {
    fd: OwnedFd,
    buf: Vec<u8>,
    /// A pidfd of the process at the other end: its exit ends the reading like end of file,
    /// even while something it started still holds its end of the link.
    peer_exit: Option<OwnedFd>,
}

impl Reader {
    pub(crate) fn new(fd: OwnedFd) -> Reader {
        Reader {
            fd,
            buf: Vec::new(),
            peer_exit: None,
        }
    }

    /// Ends the reading at the exit of the process `peer_exit` (a pidfd) refers to, once
    /// everything it sent has been read.
    pub(crate) fn ending_at_exit(mut self, peer_exit: OwnedFd) -> Reader {
        self.peer_exit = Some(peer_exit);
        self
    }

    /// The end of the link this reader reads, for answering on it.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The next message; `None` at end of file (the peer exited). Blocks.
    pub(crate) fn next(&mut self) -> io::Result<Option<Message>> {
        self.next_before(None)
    }

    /// The next message, waiting until `deadline` at most; `Err(TimedOut)` when it runs out.
    pub(crate) fn next_until(&mut self, deadline: Instant) -> io::Result<Option<Message>> {
        self.next_before(Some(deadline))
    }

    fn next_before(&mut self, deadline: Option<Instant>) -> io::Result<Option<Message>> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..end]);
                return Ok(Some(Message::decode(line.trim_end())));
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the other generation sent a line longer than 256 bytes",
                ));
            }
            if deadline.is_some() || self.peer_exit.is_some() {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let peer_exit = self.peer_exit.as_ref().map(AsFd::as_fd);
                match sys::wait_readable_either(self.fd.as_fd(), peer_exit, left)? {
                    None => return Err(io::ErrorKind::TimedOut.into()),
                    // The peer exited and sent nothing more: as good as end of file.
                    Some(sys::Readable::Second) => return Ok(None),
                    Some(sys::Readable::First) => {}
                }
            }
            let mut chunk = [0u8; 128];
            match sys::read(self.fd.as_fd(), &mut chunk)? {
                0 => return Ok(None),
                n => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_a_socketpair_and_eof_ends_them() {
        let (a, b) = sys::socketpair().unwrap();
        send(&a, &Message::Ready).unwrap();
        send(&a, &Message::Descendants(2)).unwrap();
        let others = [
            Message::Build(BuildIdentity::new("1.2 rc", "x".repeat(100)).unwrap()),
            Message::Build(BuildIdentity::new("%".repeat(33), "\n").unwrap()),
            Message::Stopping,
            Message::Rollback,
            Message::Takes(vec!["echo".into(), "ws".into()]),
            Message::Resumed(42),
            Message::Refused("not on probation".into()),
            Message::Stop,
            Message::Paused,
        ];
        for message in &others {
            send(&a, message).unwrap();
        }
        send(&a, &Message::Refused(format!("a\nb{}", "x".repeat(400)))).unwrap();
        sys::send_all(a.as_fd(), b"hello from the future\n").unwrap();
        sys::send_all(a.as_fd(), b"build 1.0\n").unwrap();
        drop(a);
        let mut reader = Reader::new(b);
        assert_eq!(reader.next().unwrap(), Some(Message::Ready));
        assert_eq!(reader.next().unwrap(), Some(Message::Descendants(2)));
        for message in others {
            assert_eq!(reader.next().unwrap(), Some(message));
        }
        assert!(
            matches!(reader.next().unwrap(), Some(Message::Refused(r)) if r.starts_with("a b")),
            "a long reason is cut to one line"
        );
        assert!(matches!(reader.next().unwrap(), Some(Message::Unknown(_))));
        assert!(
            matches!(reader.next().unwrap(), Some(Message::Unknown(_))),
            "a build message without its id is not understood, and ignored"
        );
        assert_eq!(reader.next().unwrap(), None);
    }

    #[test]
    fn a_deadline_ends_the_wait() {
        let (_a, b) = sys::socketpair().unwrap();
        let mut reader = Reader::new(b);
        let err = reader.next_until(Instant::now()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn sending_to_a_closed_peer_is_an_error_not_a_signal() {
        let (a, b) = sys::socketpair().unwrap();
        drop(b);
        assert!(send(&a, &Message::Ready).is_err());
    }
}
