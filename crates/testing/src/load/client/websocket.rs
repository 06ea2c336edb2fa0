//! The WebSocket client's exchange: one text message out, one text message back, on a WebSocket
//! kept open from one exchange to the next.
//!
//! tokio-tungstenite is the client. It cannot say whether a connection that ended had sent part
//! of a frame first (tungstenite reports an end without a closing handshake either way), so the
//! socket under it counts the bytes it reads: an end after some bytes of an answer is `Torn`, an
//! end with none is the clean end of a session between two exchanges.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error, Message, error::ProtocolError};

use super::{Conn, Exchange, Run, failed_io};
use crate::load::Failure;

/// A client's WebSocket.
pub(super) type Socket = WebSocketStream<Counted>;

/// A TCP connection that counts the bytes read from it.
#[derive(Debug)]
pub(super) struct Counted {
    tcp: TcpStream,
    read: u64,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.tcp).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        poll
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl Run {
    /// One message and its answer, on the kept WebSocket or on a new one.
    pub(super) async fn websocket(&self, conn: &mut Conn) -> Exchange {
        if !matches!(conn, Conn::WebSocket(..)) {
            match self.open_websocket().await {
                Ok(socket) => *conn = Conn::WebSocket(Box::new(socket), 0),
                Err(failed) => return failed,
            }
        }
        let Conn::WebSocket(socket, answered) = conn else {
            unreachable!("opened above")
        };
        let start = Instant::now();
        if let Err(err) = socket.send(Message::text(self.line.as_str())).await {
            return failed_ws(&err, "send");
        }
        let read = socket.get_ref().read;
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    *answered += 1;
                    return self.line_answered(text.as_str(), start);
                }
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(data))) => {
                    return Exchange::Failed(
                        Failure::Torn,
                        format!("a binary message of {} bytes instead of text", data.len()),
                    );
                }
                Some(Ok(Message::Close(frame))) => {
                    // tungstenite has queued the answer to the close: send it, and go.
                    let _ = socket.flush().await;
                    return match frame {
                        None => Exchange::Reconnect,
                        Some(frame)
                            if matches!(frame.code, CloseCode::Away | CloseCode::Normal) =>
                        {
                            Exchange::Reconnect
                        }
                        Some(frame) => Exchange::Failed(
                            Failure::Empty,
                            format!(
                                "closed with {} {:?} instead of an answer",
                                u16::from(frame.code),
                                frame.reason.as_str()
                            ),
                        ),
                    };
                }
                None => break,
                Some(Err(err)) if ended_cleanly(&err) => break,
                Some(Err(err)) => return failed_ws(&err, "answer"),
            }
        }
        // The connection ended without a closing handshake, and without an error.
        let partial = socket.get_ref().read - read;
        if partial > 0 {
            Exchange::Failed(
                Failure::Torn,
                format!("the connection ended after {partial} bytes of an answer"),
            )
        } else if *answered > 0 {
            // At a boundary, after an answer, as a line session's end: the message was not
            // read, and is sent again on a new WebSocket.
            Exchange::Reconnect
        } else {
            Exchange::Failed(Failure::Empty, "closed without an answer".into())
        }
    }

    /// Connects and shakes hands (`GET <websocket path>` with `Upgrade: websocket`).
    async fn open_websocket(&self) -> Result<Socket, Exchange> {
        let tcp = self.connect().await?;
        let url = format!("ws://{}{}", self.addr, self.websocket_path);
        match tokio_tungstenite::client_async(url, Counted { tcp, read: 0 }).await {
            Ok((socket, _response)) => Ok(socket),
            Err(Error::Http(response)) => Err(Exchange::Failed(
                Failure::Status,
                format!("WebSocket handshake: status {}", response.status()),
            )),
            Err(err) if ended_cleanly(&err) => Err(Exchange::Failed(
                Failure::Empty,
                format!("WebSocket handshake: {err}"),
            )),
            Err(Error::Io(err)) if err.kind() == io::ErrorKind::UnexpectedEof => Err(
                Exchange::Failed(Failure::Empty, format!("WebSocket handshake: {err}")),
            ),
            Err(err) => Err(failed_ws(&err, "WebSocket handshake")),
        }
    }
}

/// Whether tungstenite's error is the connection's clean end (no reset, no closing handshake).
fn ended_cleanly(err: &Error) -> bool {
    matches!(
        err,
        Error::ConnectionClosed
            | Error::AlreadyClosed
            | Error::Protocol(
                ProtocolError::ResetWithoutClosingHandshake | ProtocolError::HandshakeIncomplete
            )
    )
}

/// A tungstenite error: by its I/O error if it is one; a message it cannot read is `Torn`.
fn failed_ws(err: &Error, step: &str) -> Exchange {
    match err {
        Error::Io(io) => failed_io(io, step),
        Error::Capacity(_) | Error::Protocol(_) | Error::Utf8(_) => {
            Exchange::Failed(Failure::Torn, format!("{step}: {err}"))
        }
        _ => Exchange::Failed(Failure::Other, format!("{step}: {err}")),
    }
}
