//! Reading frames from one end of the hand-off channel (the wire is described in
//! `handoff.rs`): whole frames, their descriptors taken in order from those received, every
//! size checked before anything is allocated for it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Instant;

use super::{
    CHANNEL, CONNECTION, Frame, HEADER, LISTENERS, MAX_NAME, MAX_REASON, MAX_RECORD,
    MAX_STATE_BYTES, MAX_STATE_FDS, MAX_TAG, NO_STATE, STATE, STATE_FAILED, STATE_REQUEST, invalid,
};
use crate::sys;

/// Reads frames from one end of the channel.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// Bytes received and not yet parsed are `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
    /// Where each receive lands, kept between receives.
    chunk: Vec<u8>,
    fds: VecDeque<OwnedFd>,
    /// The kernel dropped descriptors since the last frame that found all of its own.
    lost_fds: bool,
    eof: bool,
}

impl FrameReader {
    /// A reader with nothing read yet.
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// The next frame if one has arrived whole; `Ok(None)` at end of file (the other
    /// generation closed its end or exited).
    ///
    /// # Errors
    ///
    /// `WouldBlock` when no whole frame is there yet (try again once the socket is readable);
    /// `InvalidData` for a frame that breaks the protocol, and any error of the socket: both
    /// end the channel.
    pub fn try_next(&mut self, socket: BorrowedFd<'_>) -> io::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(Some(frame));
            }
            if self.eof {
                let left = self.buf.len() - self.start;
                return if left == 0 {
                    Ok(None)
                } else {
                    Err(invalid(format!(
                        "the hand-off channel ended in the middle of a frame ({left} bytes of it)"
                    )))
                };
            }
            self.fill(socket)?;
        }
    }

    /// The next frame, waiting until `deadline` at most; `Ok(None)` at end of file.
    ///
    /// # Errors
    ///
    /// `TimedOut` when the deadline passed first; otherwise as [`try_next`](Self::try_next).
    pub fn next_until(
        &mut self,
        socket: BorrowedFd<'_>,
        deadline: Instant,
    ) -> io::Result<Option<Frame>> {
        loop {
            match self.try_next(socket) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || !sys::wait_readable(socket, left)? {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
                other => return other,
            }
        }
    }

    fn fill(&mut self, socket: BorrowedFd<'_>) -> io::Result<()> {
        if self.chunk.is_empty() {
            self.chunk = vec![0u8; 64 << 10];
        }
        let mut fds = Vec::new();
        let (n, dropped) = sys::recv_with_fds(socket, &mut self.chunk, &mut fds)?;
        self.fds.extend(fds);
        self.lost_fds |= dropped;
        if n == 0 {
            self.eof = true;
        }
        // Parsed bytes go before new ones come: the buffer holds one frame's worth at most.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(&self.chunk[..n]);
        Ok(())
    }

    fn parse(&mut self) -> io::Result<Option<Frame>> {
        let buf = &self.buf[self.start..];
        if buf.len() < HEADER {
            return Ok(None);
        }
        let kind = buf[0];
        let nfds = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
        let (max_len, max_fds) = match kind {
            STATE_REQUEST | NO_STATE => (0, 0),
            STATE_FAILED => (MAX_REASON, 0),
            CHANNEL => (0, 1),
            STATE => (4 + MAX_STATE_BYTES, MAX_STATE_FDS),
            CONNECTION => (1 + MAX_TAG + MAX_RECORD, 1),
            LISTENERS => (
                sys::MAX_FDS_PER_MESSAGE * (1 + MAX_NAME),
                sys::MAX_FDS_PER_MESSAGE,
            ),
            other => return Err(invalid(format!("unknown hand-off frame kind {other}"))),
        };
        if buf[1] != 0 || len > max_len || nfds > max_fds {
            return Err(invalid(format!(
                "a hand-off frame of kind {kind} with {len} bytes and {nfds} descriptors is \
                 over its bounds ({max_len} bytes, {max_fds} descriptors)"
            )));
        }
        if buf.len() < HEADER + len {
            return Ok(None);
        }
        let payload = buf[HEADER..HEADER + len].to_vec();
        self.start += HEADER + len;
        let lost = self.fds.len() < nfds;
        if lost && !self.lost_fds {
            return Err(invalid(format!(
                "a hand-off frame announced {nfds} descriptors, and {} came",
                self.fds.len()
            )));
        }
        let fds: Vec<OwnedFd> = if lost {
            self.fds.drain(..).collect()
        } else {
            self.lost_fds = false;
            self.fds.drain(..nfds).collect()
        };
        Ok(Some(match kind {
            STATE_REQUEST => Frame::StateRequest,
            NO_STATE => Frame::NoState,
            STATE_FAILED => Frame::StateFailed {
                reason: String::from_utf8_lossy(&payload).into_owned(),
            },
            STATE => {
                if payload.len() < 4 || lost {
                    return Err(invalid(
                        "the state frame is too short or lost its descriptors on the way",
                    ));
                }
                let version = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                Frame::State {
                    version,
                    bytes: payload[4..].to_vec(),
                    fds,
                }
            }
            CHANNEL => {
                let fd = fds.into_iter().next().filter(|_| !lost).ok_or_else(|| {
                    invalid("the hand-off channel's descriptor was lost on the way")
                })?;
                Frame::Channel { fd }
            }
            LISTENERS => {
                if lost {
                    return Err(invalid(format!(
                        "a listeners frame lost {} of its {nfds} descriptors on the way (is \
                         this process at its descriptor limit?)",
                        nfds - fds.len()
                    )));
                }
                let names = listener_names(&payload)?;
                if names.len() != fds.len() {
                    return Err(invalid(format!(
                        "a listeners frame names {} descriptors and carries {}",
                        names.len(),
                        fds.len()
                    )));
                }
                Frame::Listeners { names, fds }
            }
            _ => {
                let tag_len = usize::from(*payload.first().unwrap_or(&0));
                let tag = payload
                    .get(1..1 + tag_len)
                    .filter(|tag| !tag.is_empty())
                    .and_then(|tag| std::str::from_utf8(tag).ok())
                    .ok_or_else(|| invalid("a connection frame without a valid tag"))?
                    .to_owned();
                if lost {
                    self.lost_fds = false;
                    return Ok(Some(Frame::LostConnection { tag }));
                }
                let record = payload[1 + tag_len..].to_vec();
                let fd = fds
                    .into_iter()
                    .next()
                    .expect("one descriptor, checked above");
                Frame::Connection { tag, record, fd }
            }
        }))
    }
}

impl FrameReader {
    /// Whether nothing is left over: no bytes or descriptors past the last frame read.
    pub(crate) fn is_drained(&self) -> bool {
        self.start == self.buf.len() && self.fds.is_empty()
    }
}

/// The names of a listeners frame: each a length byte and that many bytes of UTF-8.
fn listener_names(mut payload: &[u8]) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    while let Some((&len, rest)) = payload.split_first() {
        let len = usize::from(len);
        let name = rest
            .get(..len)
            .filter(|name| !name.is_empty())
            .and_then(|name| std::str::from_utf8(name).ok())
            .ok_or_else(|| invalid("a listeners frame with a name cut short or not UTF-8"))?;
        names.push(name.to_owned());
        payload = &rest[len..];
    }
    Ok(names)
}
