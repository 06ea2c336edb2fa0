//! The link between two generations: a Unix stream socket whose child end is handed over.
//!
//! The child writes line messages; the parent only reads. Either side sees end of file when the
//! other exits, which is how a child learns that its parent has gone without polling, and how a
//! parent learns that a starting child has died.
//!
//! Messages, child to parent:
//! - `ready`: the child is serving; the parent may stop accepting.
//! - `descendants N`: the child now has N living descendants (used to bound the number of
//!   generations alive at once). Unknown lines are ignored, so newer versions can add messages.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::sys;

/// Longest line accepted; anything longer is a protocol error.
const MAX_LINE: usize = 256;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message {
    Ready,
    Descendants(usize),
    Unknown(String),
}

impl Message {
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Message::Ready => b"ready\n".to_vec(),
            Message::Descendants(n) => format!("descendants {n}\n").into_bytes(),
            Message::Unknown(line) => format!("{line}\n").into_bytes(),
        }
    }

    fn decode(line: &str) -> Message {
        match line.split_once(' ') {
            None if line == "ready" => Message::Ready,
            Some(("descendants", n)) => match n.parse() {
                Ok(n) => Message::Descendants(n),
                Err(_) => Message::Unknown(line.to_owned()),
            },
            _ => Message::Unknown(line.to_owned()),
        }
    }
}

/// Sends a message; a peer that has gone is reported as an error, never as SIGPIPE.
pub(crate) fn send(link: &OwnedFd, message: &Message) -> io::Result<()> {
    sys::send_all(link.as_fd(), &message.encode())
}

/// Reads messages from one end of the link.
#[derive(Debug)]
pub(crate) struct Reader {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Reader {
    pub(crate) fn new(fd: OwnedFd) -> Reader {
        Reader {
            fd,
            buf: Vec::new(),
        }
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
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if !sys::wait_readable(self.fd.as_fd(), left.max(Duration::ZERO))? {
                    return Err(io::ErrorKind::TimedOut.into());
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
        sys::send_all(a.as_fd(), b"hello from the future\n").unwrap();
        drop(a);
        let mut reader = Reader::new(b);
        assert_eq!(reader.next().unwrap(), Some(Message::Ready));
        assert_eq!(reader.next().unwrap(), Some(Message::Descendants(2)));
        assert!(matches!(reader.next().unwrap(), Some(Message::Unknown(_))));
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
