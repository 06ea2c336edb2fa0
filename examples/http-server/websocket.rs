//! A WebSocket (RFC 6455) server side that owns its read buffer, so that the connection can be
//! handed over to the next generation at a message boundary.
//!
//! Why not tungstenite, which axum's `WebSocket` runs on: handing a WebSocket over means
//! handing over the TCP connection *and* every byte read from it but not processed yet, and a
//! WebSocket library reads ahead (tungstenite up to its read buffer size at a time), so bytes
//! of the client's next frame may sit in its buffer at any boundary. tungstenite 0.29 does not
//! give that buffer back: `WebSocket::into_inner` (and tokio-tungstenite's
//! `WebSocketStream::into_inner`) returns the stream alone and drops the buffer, which lives in
//! a private `FrameCodec`. Those bytes would be lost, and the client's next message with them.
//! The frame layer is small, so the example runs its own: [`WebSocket::into_parts`] gives back
//! the stream and the unprocessed bytes, which are the whole record of a hand-off at a message
//! boundary (a connection handed over mid-message would need its partial message too; this
//! one never is).
//!
//! What it implements: text, binary, fragmented messages, ping (answered with pong), pong
//! (ignored), close (answered), client frames masked as required. It does not implement
//! extensions (no permessage-deflate is negotiated) and does not check that text is UTF-8.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest message accepted; a longer one is closed with 1009 (too big).
const MAX_MESSAGE: usize = 1 << 20;

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A close code: 1000 normal, 1001 going away, 1002 protocol error, 1009 too big.
pub(crate) type CloseCode = u16;
pub(crate) const GOING_AWAY: CloseCode = 1001;
const PROTOCOL_ERROR: CloseCode = 1002;
const TOO_BIG: CloseCode = 1009;

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub(crate) fn accept_key(key: &[u8]) -> String {
    // base64(SHA-1(key + the protocol's GUID)), RFC 6455 section 4.2.2.
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key)
}

/// A complete message.
#[derive(Debug)]
pub(crate) enum Message {
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

/// What the buffered bytes hold next.
#[derive(Debug)]
pub(crate) enum Next {
    /// A complete message.
    Message(Message),
    /// Not a complete message yet: read more.
    NeedMore,
    /// The client closed (its close was answered), or broke the protocol (it was closed):
    /// the WebSocket is over.
    Closed,
}

/// One frame, parsed and unmasked.
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// The server side of a WebSocket over `S`.
#[derive(Debug)]
pub(crate) struct WebSocket<S> {
    io: S,
    /// Read from `io`, not processed yet.
    buffer: Vec<u8>,
    /// The message being assembled from fragments: its opcode and what came so far.
    partial: Option<(u8, Vec<u8>)>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// A WebSocket whose handshake is done, with `buffered` already read from `io` first.
    pub(crate) fn new(io: S, buffered: Vec<u8>) -> WebSocket<S> {
        WebSocket {
            io,
            buffer: buffered,
            partial: None,
        }
    }

    /// Whether it is between messages: no fragmented message is being assembled. Frames still
    /// in the buffer are input not processed, not state.
    pub(crate) fn at_boundary(&self) -> bool {
        self.partial.is_none()
    }

    /// The stream and the bytes read from it but not processed; only at a boundary.
    pub(crate) fn into_parts(self) -> (S, Vec<u8>) {
        debug_assert!(self.at_boundary());
        (self.io, self.buffer)
    }

    /// Reads more input into the buffer; `false` at the end of the stream.
    ///
    /// Cancel safe: a read that completes is in the buffer.
    pub(crate) async fn read_more(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 8192];
        let n = self.io.read(&mut chunk).await?;
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Processes the buffered frames up to the next complete message, answering control
    /// frames on the way.
    pub(crate) async fn next_buffered(&mut self) -> io::Result<Next> {
        loop {
            let frame = match self.parse_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(Next::NeedMore),
                Err(code) => {
                    self.close(code, "").await?;
                    return Ok(Next::Closed);
                }
            };
            match frame.opcode {
                PING => self.write_frame(PONG, &frame.payload).await?,
                PONG => {}
                CLOSE => {
                    // Answer with the client's code (RFC 6455, section 5.5.1).
                    let code = frame.payload.get(..2).unwrap_or(&[]).to_vec();
                    self.write_frame(CLOSE, &code).await?;
                    return Ok(Next::Closed);
                }
                TEXT | BINARY if self.partial.is_none() => {
                    if frame.fin {
                        return Ok(Next::Message(message(frame.opcode, frame.payload)));
                    }
                    self.partial = Some((frame.opcode, frame.payload));
                }
                CONTINUATION if self.partial.is_some() => {
                    let (opcode, mut data) = self.partial.take().expect("checked");
                    if data.len() + frame.payload.len() > MAX_MESSAGE {
                        self.close(TOO_BIG, "").await?;
                        return Ok(Next::Closed);
                    }
                    data.extend_from_slice(&frame.payload);
                    if frame.fin {
                        return Ok(Next::Message(message(opcode, data)));
                    }
                    self.partial = Some((opcode, data));
                }
                _ => {
                    self.close(PROTOCOL_ERROR, "").await?;
                    return Ok(Next::Closed);
                }
            }
        }
    }

    /// Sends a message.
    pub(crate) async fn send(&mut self, message: &Message) -> io::Result<()> {
        match message {
            Message::Text(text) => self.write_frame(TEXT, text).await,
            Message::Binary(data) => self.write_frame(BINARY, data).await,
        }
    }

    /// Sends a close frame with `code` and `reason`.
    pub(crate) async fn close(&mut self, code: CloseCode, reason: &str) -> io::Result<()> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.write_frame(CLOSE, &payload).await
    }

    /// Waits for the client's close after ours, discarding messages; the end of the stream
    /// counts too.
    pub(crate) async fn closed(&mut self) -> io::Result<()> {
        loop {
            while let Some(frame) = self.parse_frame().ok().flatten() {
                if frame.opcode == CLOSE {
                    return Ok(());
                }
            }
            if !self.read_more().await? {
                return Ok(());
            }
        }
    }

    /// The next complete frame in the buffer, unmasked; the close code if it breaks the
    /// protocol.
    fn parse_frame(&mut self) -> Result<Option<Frame>, CloseCode> {
        let b = &self.buffer;
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = b[0] & 0x0F;
        if b[0] & 0x70 != 0 {
            return Err(PROTOCOL_ERROR); // no extension was negotiated
        }
        if b[1] & 0x80 == 0 {
            return Err(PROTOCOL_ERROR); // client frames are masked
        }
        let (len, mut at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().expect("8")), 10),
            126 | 127 => return Ok(None),
            len => (u64::from(len), 2),
        };
        if opcode >= CLOSE && (!fin || len > 125) {
            return Err(PROTOCOL_ERROR); // control frames are short and whole
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= MAX_MESSAGE)
            .ok_or(TOO_BIG)?;
        if b.len() < at + 4 + len {
            return Ok(None);
        }
        let mask: [u8; 4] = b[at..at + 4].try_into().expect("4");
        at += 4;
        let payload = b[at..at + len]
            .iter()
            .enumerate()
            .map(|(i, byte)| byte ^ mask[i % 4])
            .collect();
        self.buffer.drain(..at + len);
        Ok(Some(Frame {
            fin,
            opcode,
            payload,
        }))
    }

    /// Writes one unmasked, final frame.
    async fn write_frame(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 10);
        frame.push(0x80 | opcode);
        match payload.len() {
            len @ 0..=125 => frame.push(len as u8),
            len @ 126..=0xFFFF => {
                frame.push(126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(payload);
        self.io.write_all(&frame).await?;
        self.io.flush().await
    }
}

fn message(opcode: u8, payload: Vec<u8>) -> Message {
    if opcode == TEXT {
        Message::Text(payload)
    } else {
        Message::Binary(payload)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// A client frame: masked, with `fin` and `opcode`.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mask = [1, 2, 3, 4];
        let mut frame = vec![u8::from(fin) << 7 | opcode, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    async fn server_frame(client: &mut DuplexStream) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.unwrap();
        let mut payload = vec![0; usize::from(head[1] & 0x7f)];
        client.read_exact(&mut payload).await.unwrap();
        (head[0], payload)
    }

    async fn next_message(socket: &mut WebSocket<DuplexStream>) -> Next {
        loop {
            match socket.next_buffered().await.unwrap() {
                Next::NeedMore => assert!(socket.read_more().await.unwrap(), "ended"),
                next => return next,
            }
        }
    }

    #[tokio::test]
    async fn a_fragmented_message_is_assembled_and_a_ping_between_its_parts_answered() {
        let (server, mut client) = tokio::io::duplex(1024);
        let mut socket = WebSocket::new(server, Vec::new());
        client
            .write_all(&client_frame(false, TEXT, b"hel"))
            .await
            .unwrap();
        client
            .write_all(&client_frame(true, PING, b"p"))
            .await
            .unwrap();
        client
            .write_all(&client_frame(true, CONTINUATION, b"lo"))
            .await
            .unwrap();
        match next_message(&mut socket).await {
            Next::Message(Message::Text(text)) => assert_eq!(text, b"hello"),
            other => panic!("{other:?}"),
        }
        assert!(socket.at_boundary());
        assert_eq!(
            server_frame(&mut client).await,
            (0x80 | PONG, b"p".to_vec())
        );
    }

    #[tokio::test]
    async fn a_partial_frame_stays_unprocessed_and_comes_back_with_the_stream() {
        let (server, mut client) = tokio::io::duplex(1024);
        let frame = client_frame(true, TEXT, b"whole");
        let (first, _) = frame.split_at(4);
        let mut socket = WebSocket::new(server, first.to_vec());
        assert!(matches!(
            socket.next_buffered().await.unwrap(),
            Next::NeedMore
        ));
        assert!(socket.at_boundary());
        let (server, record) = socket.into_parts();
        assert_eq!(record, first, "the record is the bytes not processed");
        // The next generation goes on from the record.
        let mut socket = WebSocket::new(server, record);
        client.write_all(&frame[4..]).await.unwrap();
        match next_message(&mut socket).await {
            Next::Message(Message::Text(text)) => assert_eq!(text, b"whole"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unmasked_client_frame_is_closed_as_a_protocol_error() {
        let (server, mut client) = tokio::io::duplex(1024);
        let mut socket = WebSocket::new(server, vec![0x81, 0x01, b'x']);
        assert!(matches!(next_message(&mut socket).await, Next::Closed));
        let (head, payload) = server_frame(&mut client).await;
        assert_eq!(
            (head, payload),
            (0x80 | CLOSE, 1002u16.to_be_bytes().to_vec())
        );
    }
}
