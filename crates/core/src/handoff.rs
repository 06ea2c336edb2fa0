//! The hand-off channel between two generations: the application's state and its live
//! connections, with their descriptors. For runtime adapters; applications use the adapter's
//! API (`graceful::Graceful::hand_off`, `handed_over`, `inherited_state`).
//!
//! Each upgrade creates a Unix stream socket of its own for this, next to the readiness link
//! (which carries lines): the new generation finds its end through `GRACEFUL_HANDOFF_FD`. A
//! process that does not know the variable (an older build) never reads it, and is never sent
//! anything it did not ask for: state only on request, connections only under the tags it
//! announced on the link (`takes TAG…`, before `ready`).
//!
//! # Frames
//!
//! An 8-byte header (kind, a zero byte, the descriptor count as u16 and the payload length as
//! u32, both big-endian), then the payload. A frame's descriptors travel as SCM_RIGHTS with its
//! first byte; the kernel hands them out with the bytes they were sent with, so a reader takes
//! each frame's descriptors, in order, from those received so far.
//!
//! | kind | from | payload | descriptors |
//! |------|------|---------|-------------|
//! | [`Frame::StateRequest`] | new | none | none |
//! | [`Frame::State`] | old | version (u32), then the application's bytes | the state's |
//! | [`Frame::NoState`] | old | none | none |
//! | [`Frame::StateFailed`] | old | why, UTF-8 | none |
//! | [`Frame::Connection`] | old | tag length (u8), tag, record | the connection |
//! | [`Frame::Listeners`] | old | per descriptor: name length (u8), name | the listeners |
//! | [`Frame::Channel`] | old | none | the new process's end of a hand-off channel |
//!
//! [`Frame::Listeners`] travels on another connection: a takeover's, where a process that the
//! running one did not start asks for its sockets on the control socket (`takeover.rs`). The
//! names are the `LISTEN_FDNAMES` names an upgrade would pass, one per descriptor, at most
//! [`MAX_STATE_FDS`] (253) per frame; more take several frames. [`Frame::Channel`] follows
//! them there: the hand-off channel of the takeover, which an upgrade passes as
//! `GRACEFUL_HANDOFF_FD` instead.
//!
//! Every size is bounded ([`MAX_STATE_BYTES`], [`MAX_STATE_FDS`], [`MAX_TAG`],
//! [`MAX_RECORD`]); a frame over a bound is a protocol error that ends the channel.
//!
//! Both ends are used without blocking ([`OutFrame::try_send`], [`FrameReader::try_next`]), so
//! an async runtime can drive them from its reactor; the `*_until` methods wait with `poll`
//! for synchronous callers.

use std::fmt;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Instant;

use crate::sys;

mod reader;

pub use reader::FrameReader;

/// The most bytes a state may have: it is read whole, before the new generation is ready.
pub const MAX_STATE_BYTES: usize = 64 << 20;
/// The most descriptors a state may carry (what one message can carry).
pub const MAX_STATE_FDS: usize = sys::MAX_FDS_PER_MESSAGE;
/// The longest tag naming the protocol of a handed-over connection.
pub const MAX_TAG: usize = 64;
/// The most bytes a connection's record may have: its protocol state and the input read but
/// not processed yet.
pub const MAX_RECORD: usize = 64 << 10;

/// An application's state, as its writer saves it for the next generation and as the next
/// generation inherits it: bytes in a format of the application's, the version of that format,
/// and descriptors (files, sockets, memfds) that go with it.
#[derive(Debug, Default)]
pub struct SavedState {
    /// The version of the format of `bytes`: the reader refuses versions it does not know.
    pub version: u32,
    /// The application's bytes, at most [`MAX_STATE_BYTES`].
    pub bytes: Vec<u8>,
    /// Descriptors that go with them, at most [`MAX_STATE_FDS`], in order.
    pub fds: Vec<OwnedFd>,
}

impl SavedState {
    /// A state of `version` with `bytes` and no descriptors.
    pub fn new(version: u32, bytes: impl Into<Vec<u8>>) -> SavedState {
        SavedState {
            version,
            bytes: bytes.into(),
            fds: Vec::new(),
        }
    }

    /// Adds a descriptor.
    #[must_use]
    pub fn with_fd(mut self, fd: OwnedFd) -> SavedState {
        self.fds.push(fd);
        self
    }
}

/// The channel to a successor that is ready, for handing connections over: a duplicate of
/// this generation's end, the successor's pid, and the tags it takes.
#[derive(Debug)]
pub struct ToSuccessor {
    /// The successor's pid.
    pub pid: u32,
    /// This generation's end of the channel.
    pub socket: OwnedFd,
    /// The tags of the connections it takes; others are not to be sent.
    pub tags: Vec<String>,
}

const HEADER: usize = 8;
const STATE_REQUEST: u8 = 1;
const STATE: u8 = 2;
const NO_STATE: u8 = 3;
const STATE_FAILED: u8 = 6;
/// The longest reason a failed save is told with.
const MAX_REASON: usize = 1024;
const CONNECTION: u8 = 4;
const LISTENERS: u8 = 5;
const CHANNEL: u8 = 7;
/// The longest name of a handed-over listener (systemd's bound for `LISTEN_FDNAMES`).
const MAX_NAME: usize = crate::name::MAX_LEN;

/// One message of the hand-off channel.
#[non_exhaustive]
pub enum Frame {
    /// The new generation asks for the state.
    StateRequest,
    /// The old generation's state.
    State {
        /// The application's version of the format of `bytes`.
        version: u32,
        /// The application's bytes.
        bytes: Vec<u8>,
        /// The descriptors that go with them, in the order they were given.
        fds: Vec<OwnedFd>,
    },
    /// The old generation has no state to give.
    NoState,
    /// The old generation could not save its state: its writer failed, for this reason.
    StateFailed {
        /// Why.
        reason: String,
    },
    /// A live connection.
    Connection {
        /// The protocol it speaks, as its sender and receiver agreed.
        tag: String,
        /// Its protocol state and the input read but not processed yet.
        record: Vec<u8>,
        /// The connected socket.
        fd: OwnedFd,
    },
    /// A connection whose descriptor the kernel dropped on the way (this process is at its
    /// descriptor limit): it is gone, its client sees it closed.
    LostConnection {
        /// Its tag.
        tag: String,
    },
    /// The new process's end of the hand-off channel of a takeover.
    Channel {
        /// A Unix stream socket.
        fd: OwnedFd,
    },
    /// Listening sockets (and the other descriptors a generation hands over), with the names
    /// an upgrade would pass them under in `LISTEN_FDNAMES`: a takeover's answer.
    Listeners {
        /// One name per descriptor, in order.
        names: Vec<String>,
        /// The descriptors.
        fds: Vec<OwnedFd>,
    },
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::StateRequest => f.write_str("StateRequest"),
            Frame::State {
                version,
                bytes,
                fds,
            } => f
                .debug_struct("State")
                .field("version", version)
                .field("bytes", &bytes.len())
                .field("fds", &fds.len())
                .finish(),
            Frame::NoState => f.write_str("NoState"),
            Frame::StateFailed { reason } => f
                .debug_struct("StateFailed")
                .field("reason", reason)
                .finish(),
            Frame::Connection { tag, record, fd } => f
                .debug_struct("Connection")
                .field("tag", tag)
                .field("record", &record.len())
                .field("fd", fd)
                .finish(),
            Frame::LostConnection { tag } => {
                f.debug_struct("LostConnection").field("tag", tag).finish()
            }
            Frame::Channel { fd } => f.debug_struct("Channel").field("fd", fd).finish(),
            Frame::Listeners { names, fds } => f
                .debug_struct("Listeners")
                .field("names", names)
                .field("fds", &fds.len())
                .finish(),
        }
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// A frame on its way out, sent in as many steps as the socket needs.
pub struct OutFrame<'a> {
    bytes: Vec<u8>,
    sent: usize,
    fds: Vec<BorrowedFd<'a>>,
}

impl fmt::Debug for OutFrame<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutFrame")
            .field("kind", &self.bytes[0])
            .field("len", &self.bytes.len())
            .field("sent", &self.sent)
            .field("fds", &self.fds.len())
            .finish()
    }
}

impl<'a> OutFrame<'a> {
    fn new(kind: u8, payload: &[&[u8]], fds: Vec<BorrowedFd<'a>>) -> OutFrame<'a> {
        let len: usize = payload.iter().map(|p| p.len()).sum();
        let mut bytes = Vec::with_capacity(HEADER + len);
        bytes.push(kind);
        bytes.push(0);
        bytes.extend_from_slice(&(fds.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&(len as u32).to_be_bytes());
        for part in payload {
            bytes.extend_from_slice(part);
        }
        OutFrame {
            bytes,
            sent: 0,
            fds,
        }
    }

    /// The new generation's request for the state.
    pub fn state_request() -> OutFrame<'static> {
        OutFrame::new(STATE_REQUEST, &[], Vec::new())
    }

    /// The answer that there is no state.
    pub fn no_state() -> OutFrame<'static> {
        OutFrame::new(NO_STATE, &[], Vec::new())
    }

    /// The answer that the state could not be saved, and why (cut to 1 KiB).
    pub fn state_failed(reason: &str) -> OutFrame<'static> {
        let mut end = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        OutFrame::new(STATE_FAILED, &[&reason.as_bytes()[..end]], Vec::new())
    }

    /// A state: `version`, `bytes` and `fds`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when it exceeds [`MAX_STATE_BYTES`] or [`MAX_STATE_FDS`].
    pub fn state(version: u32, bytes: &[u8], fds: Vec<BorrowedFd<'a>>) -> io::Result<Self> {
        if bytes.len() > MAX_STATE_BYTES || fds.len() > MAX_STATE_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the state has {} bytes and {} descriptors; at most {MAX_STATE_BYTES} bytes \
                     and {MAX_STATE_FDS} descriptors can be handed over",
                    bytes.len(),
                    fds.len()
                ),
            ));
        }
        Ok(OutFrame::new(STATE, &[&version.to_be_bytes(), bytes], fds))
    }

    /// A connection `fd` speaking `tag`, with its `record`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when the tag is empty or longer than [`MAX_TAG`], or the record longer
    /// than [`MAX_RECORD`].
    pub fn connection(tag: &str, record: &[u8], fd: BorrowedFd<'a>) -> io::Result<Self> {
        check_connection(tag, record)?;
        Ok(OutFrame::new(
            CONNECTION,
            &[&[tag.len() as u8], tag.as_bytes(), record],
            vec![fd],
        ))
    }

    /// Several frames as one, in order, their descriptors all attached to the first byte: one
    /// system call sends them, and the reader takes them apart as if they had come one by one.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when they carry more than one message can ([`MAX_STATE_FDS`]
    /// descriptors).
    pub fn batch(frames: Vec<OutFrame<'a>>) -> io::Result<OutFrame<'a>> {
        let fds: usize = frames.iter().map(|f| f.fds.len()).sum();
        if fds > sys::MAX_FDS_PER_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{fds} descriptors in one batch; one message carries at most {}",
                    sys::MAX_FDS_PER_MESSAGE
                ),
            ));
        }
        let mut batch = OutFrame {
            bytes: Vec::with_capacity(frames.iter().map(OutFrame::len).sum()),
            sent: 0,
            fds: Vec::with_capacity(fds),
        };
        for frame in frames {
            batch.bytes.extend_from_slice(&frame.bytes);
            batch.fds.extend(frame.fds);
        }
        Ok(batch)
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it has no bytes (never: a frame has a header).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// How many of its bytes have gone out.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// The new process's end of a takeover's hand-off channel.
    pub(crate) fn channel(fd: BorrowedFd<'a>) -> OutFrame<'a> {
        OutFrame::new(CHANNEL, &[], vec![fd])
    }

    /// Listening sockets `fds` under `names`, one name each, for a takeover.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when the counts differ, there are more than
    /// [`sys::MAX_FDS_PER_MESSAGE`], or a name is empty or longer than 255 bytes.
    pub(crate) fn listeners(names: &[String], fds: Vec<BorrowedFd<'a>>) -> io::Result<Self> {
        if names.len() != fds.len() || fds.len() > sys::MAX_FDS_PER_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} names for {} descriptors; one each, at most {} per frame",
                    names.len(),
                    fds.len(),
                    sys::MAX_FDS_PER_MESSAGE
                ),
            ));
        }
        let mut payload = Vec::new();
        for name in names {
            if name.is_empty() || name.len() > MAX_NAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("a listener's name has 1 to {MAX_NAME} bytes; {name:?} does not"),
                ));
            }
            payload.push(name.len() as u8);
            payload.extend_from_slice(name.as_bytes());
        }
        Ok(OutFrame::new(LISTENERS, &[&payload], fds))
    }

    /// Whether any of it has gone out. From then on it must be finished: the channel carries
    /// nothing else until it is.
    pub fn started(&self) -> bool {
        self.sent > 0
    }

    /// Sends as much as the socket takes now; `Ok(true)` once all of it has gone.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when the socket is full (try again once it is writable); any other error
    /// ends the channel (the peer has gone).
    pub fn try_send(&mut self, socket: BorrowedFd<'_>) -> io::Result<bool> {
        while self.sent < self.bytes.len() {
            let fds: &[BorrowedFd<'_>] = if self.sent == 0 { &self.fds } else { &[] };
            let n = sys::send_with_fds(socket, &self.bytes[self.sent..], fds)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.sent += n;
        }
        Ok(true)
    }

    /// Sends all of it, waiting for room until `deadline` at most.
    ///
    /// # Errors
    ///
    /// `TimedOut` when the deadline passed first; otherwise as [`try_send`](Self::try_send).
    pub fn send_until(&mut self, socket: BorrowedFd<'_>, deadline: Instant) -> io::Result<()> {
        loop {
            match self.try_send(socket) {
                Ok(_) => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || !sys::wait_writable(socket, left)? {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// Checks what a connection's frame would carry, without building it: the tag (see
/// [`check_tag`]) and a record of at most [`MAX_RECORD`] bytes.
///
/// # Errors
///
/// `InvalidInput`, naming what is over its bound.
pub fn check_connection(tag: &str, record: &[u8]) -> io::Result<()> {
    check_tag(tag)?;
    if record.len() > MAX_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the record of a {tag:?} connection has {} bytes; at most {MAX_RECORD} can be \
                 handed over",
                record.len()
            ),
        ));
    }
    Ok(())
}

/// Checks a tag: 1 to [`MAX_TAG`] printable ASCII characters, no space.
///
/// # Errors
///
/// `InvalidInput`, naming the tag and what is wrong with it.
pub fn check_tag(tag: &str) -> io::Result<()> {
    if tag.is_empty() || tag.len() > MAX_TAG || !tag.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a hand-off tag has 1 to {MAX_TAG} printable ASCII characters and no space; \
                 {tag:?} does not"
            ),
        ));
    }
    Ok(())
}

/// Both ends of a new channel, close-on-exec.
pub(crate) fn channel() -> io::Result<(OwnedFd, OwnedFd)> {
    sys::socketpair()
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};
    use std::time::Duration;

    use super::*;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn frames_and_their_descriptors_cross_in_order() {
        let (a, b) = channel().unwrap();
        let (x, _x_peer) = sys::socketpair().unwrap();
        let (y, _y_peer) = sys::socketpair().unwrap();
        OutFrame::state_request()
            .send_until(a.as_fd(), soon())
            .unwrap();
        OutFrame::state(7, b"counter=3", vec![x.as_fd()])
            .unwrap()
            .send_until(a.as_fd(), soon())
            .unwrap();
        OutFrame::connection("echo", b"half a li", y.as_fd())
            .unwrap()
            .send_until(a.as_fd(), soon())
            .unwrap();
        OutFrame::no_state().send_until(a.as_fd(), soon()).unwrap();
        OutFrame::state_failed(&"é".repeat(600))
            .send_until(a.as_fd(), soon())
            .unwrap();
        drop(a);
        let mut reader = FrameReader::new();
        let b = b.as_fd();
        assert!(matches!(
            reader.next_until(b, soon()).unwrap(),
            Some(Frame::StateRequest)
        ));
        match reader.next_until(b, soon()).unwrap() {
            Some(Frame::State {
                version,
                bytes,
                fds,
            }) => {
                assert_eq!(
                    (version, bytes.as_slice(), fds.len()),
                    (7, &b"counter=3"[..], 1)
                );
                assert_eq!(sys::fd_cloexec(fds[0].as_raw_fd()), Some(true));
            }
            other => panic!("expected the state, got {other:?}"),
        }
        match reader.next_until(b, soon()).unwrap() {
            Some(Frame::Connection { tag, record, fd }) => {
                assert_eq!(
                    (tag.as_str(), record.as_slice()),
                    ("echo", &b"half a li"[..])
                );
                // The same socket: what is written to the received copy reaches y's peer.
                sys::send_all(fd.as_fd(), b"hi").unwrap();
            }
            other => panic!("expected a connection, got {other:?}"),
        }
        assert!(matches!(
            reader.next_until(b, soon()).unwrap(),
            Some(Frame::NoState)
        ));
        match reader.next_until(b, soon()).unwrap() {
            Some(Frame::StateFailed { reason }) => assert_eq!(reason, "é".repeat(512)),
            other => panic!("expected a failed state, got {other:?}"),
        }
        assert!(reader.next_until(b, soon()).unwrap().is_none());
    }

    #[test]
    fn a_batch_is_taken_apart_frame_by_frame() {
        let (a, b) = channel().unwrap();
        let pairs: Vec<_> = (0..100).map(|_| sys::socketpair().unwrap()).collect();
        let frames = pairs
            .iter()
            .enumerate()
            .map(|(i, (x, _))| OutFrame::connection("echo", i.to_string().as_bytes(), x.as_fd()))
            .collect::<io::Result<Vec<_>>>()
            .unwrap();
        let mut batch = OutFrame::batch(frames).unwrap();
        batch.send_until(a.as_fd(), soon()).unwrap();
        assert_eq!(batch.sent(), batch.len());
        drop(a);
        let mut reader = FrameReader::new();
        for (i, (_, peer)) in pairs.iter().enumerate() {
            match reader.next_until(b.as_fd(), soon()).unwrap() {
                Some(Frame::Connection { record, fd, .. }) => {
                    assert_eq!(record, i.to_string().as_bytes());
                    // The i-th descriptor goes with the i-th frame.
                    sys::send_all(fd.as_fd(), b"x").unwrap();
                    let mut got = [0u8; 1];
                    assert_eq!(sys::read(peer.as_fd(), &mut got).unwrap(), 1);
                }
                other => panic!("expected connection {i}, got {other:?}"),
            }
        }
        assert!(reader.next_until(b.as_fd(), soon()).unwrap().is_none());
        let too_many: Vec<_> = (0..=sys::MAX_FDS_PER_MESSAGE)
            .map(|_| OutFrame::connection("echo", b"", pairs[0].0.as_fd()).unwrap())
            .collect();
        assert!(OutFrame::batch(too_many).is_err());
    }

    #[test]
    fn a_frame_sent_in_pieces_arrives_whole() {
        let (a, b) = channel().unwrap();
        let big = vec![7u8; 1 << 20];
        let sender = std::thread::spawn(move || {
            OutFrame::state(1, &big, Vec::new())
                .unwrap()
                .send_until(a.as_fd(), soon())
                .unwrap();
        });
        let mut reader = FrameReader::new();
        match reader.next_until(b.as_fd(), soon()).unwrap() {
            Some(Frame::State { bytes, .. }) => assert_eq!(bytes.len(), 1 << 20),
            other => panic!("expected the state, got {other:?}"),
        }
        sender.join().unwrap();
    }

    #[test]
    fn bounds_are_checked_on_both_sides() {
        let (x, _peer) = sys::socketpair().unwrap();
        let too_long = vec![0u8; MAX_RECORD + 1];
        let err = OutFrame::connection("echo", &too_long, x.as_fd()).unwrap_err();
        assert!(
            err.to_string().contains("65536 can be handed over"),
            "{err}"
        );
        assert!(OutFrame::connection("", b"", x.as_fd()).is_err());
        assert!(OutFrame::connection(&"t".repeat(MAX_TAG + 1), b"", x.as_fd()).is_err());

        // A peer that lies about a size is stopped before anything is allocated for it.
        let (a, b) = channel().unwrap();
        let mut header = vec![CONNECTION, 0, 0, 1];
        header.extend_from_slice(&u32::MAX.to_be_bytes());
        sys::send_all(a.as_fd(), &header).unwrap();
        let err = FrameReader::new()
            .next_until(b.as_fd(), soon())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("over its bounds"), "{err}");
    }

    #[test]
    fn a_frame_without_its_descriptor_is_a_protocol_error() {
        let (a, b) = channel().unwrap();
        // Claims one descriptor, carries none.
        let mut frame = vec![CONNECTION, 0, 0, 1, 0, 0, 0, 5, 4];
        frame.extend_from_slice(b"echo");
        sys::send_all(a.as_fd(), &frame).unwrap();
        let err = FrameReader::new()
            .next_until(b.as_fd(), soon())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("announced 1 descriptors, and 0 came"),
            "{err}"
        );
    }

    #[test]
    fn an_end_in_the_middle_of_a_frame_is_an_error_not_an_end() {
        let (a, b) = channel().unwrap();
        sys::send_all(a.as_fd(), &[NO_STATE, 0]).unwrap();
        drop(a);
        let err = FrameReader::new()
            .next_until(b.as_fd(), soon())
            .unwrap_err();
        assert!(
            err.to_string().contains("in the middle of a frame"),
            "{err}"
        );
    }

    #[test]
    fn listeners_cross_with_their_names() {
        let (a, b) = channel().unwrap();
        let (x, _x_peer) = sys::socketpair().unwrap();
        let (y, _y_peer) = sys::socketpair().unwrap();
        let names = vec![
            "tcp/127.0.0.1%3A80".to_owned(),
            "unix//run/c.sock".to_owned(),
        ];
        OutFrame::listeners(&names, vec![x.as_fd(), y.as_fd()])
            .unwrap()
            .send_until(a.as_fd(), soon())
            .unwrap();
        let mut reader = FrameReader::new();
        match reader.next_until(b.as_fd(), soon()).unwrap() {
            Some(Frame::Listeners { names: got, fds }) => {
                assert_eq!(got, names);
                assert_eq!(fds.len(), 2);
                assert_eq!(sys::fd_cloexec(fds[1].as_raw_fd()), Some(true));
            }
            other => panic!("expected listeners, got {other:?}"),
        }
        assert!(reader.is_drained());
        let err = OutFrame::listeners(&names, vec![x.as_fd()]).unwrap_err();
        assert!(
            err.to_string().contains("2 names for 1 descriptors"),
            "{err}"
        );
        let err = OutFrame::listeners(&[String::new()], vec![x.as_fd()]).unwrap_err();
        assert!(err.to_string().contains("1 to 255 bytes"), "{err}");
    }

    #[test]
    fn a_listeners_frame_must_name_each_descriptor() {
        let (a, b) = channel().unwrap();
        let (x, _x_peer) = sys::socketpair().unwrap();
        // Two descriptors, one name.
        let mut frame = vec![LISTENERS, 0, 0, 2, 0, 0, 0, 2, 1, b'a'];
        frame.truncate(10);
        sys::send_with_fds(a.as_fd(), &frame, &[x.as_fd(), x.as_fd()]).unwrap();
        let err = FrameReader::new()
            .next_until(b.as_fd(), soon())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("names 1 descriptors and carries 2"),
            "{err}"
        );
    }

    #[test]
    fn waiting_ends_at_the_deadline() {
        let (_a, b) = channel().unwrap();
        let err = FrameReader::new()
            .next_until(b.as_fd(), Instant::now() + Duration::from_millis(20))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
