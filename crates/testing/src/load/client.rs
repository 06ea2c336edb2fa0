//! One client's loop, and how each kind of client makes one exchange and classifies it.

mod websocket;

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::{TrySendError, http1, http2};
use hyper::header::{CONNECTION, HOST, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

use super::Client;
use super::report::{Failure, Live, Tally, Timing};

/// Pause after a failure, so that a server that is down is not hammered.
const FAILURE_PAUSE: Duration = Duration::from_millis(20);

/// What one client saw.
#[derive(Debug, Default)]
pub(super) struct Record {
    pub(super) tally: Tally,
    pub(super) timings: Vec<Timing>,
    pub(super) pids: BTreeSet<u32>,
}

/// One client's loop and its settings.
pub(super) struct Run {
    pub(super) client: Client,
    pub(super) id: usize,
    pub(super) addr: SocketAddr,
    pub(super) path: String,
    pub(super) websocket_path: String,
    pub(super) line: String,
    pub(super) request_timeout: Duration,
    pub(super) deadline: Instant,
    pub(super) max_exchanges: u64,
    pub(super) pids: bool,
    pub(super) timings: bool,
    pub(super) epoch: Instant,
    pub(super) stopped: watch::Receiver<bool>,
    pub(super) live: Arc<Live>,
}

/// An answer: when its exchange started, and the pid it named.
struct Answered {
    start: Instant,
    pid: Option<u32>,
}

/// The outcome of one exchange.
enum Exchange {
    Ok(Answered),
    /// Answered, and the connection is to be replaced (the server asked to close).
    OkThenReconnect(Answered),
    /// The kept connection had been closed cleanly: nothing was lost, connect again.
    Reconnect,
    Failed(Failure, String),
}

/// A kept connection, for the long-lived clients.
enum Conn {
    None,
    Http(Sender, ConnTask),
    /// With the number of answers on it.
    Lines(BufReader<TcpStream>, u64),
    /// With the number of answers on it.
    WebSocket(Box<websocket::Socket>, u64),
}

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// A connection's task, aborted when dropped: a connection given up on does not linger.
struct ConnTask(JoinHandle<hyper::Result<()>>);

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Run {
    pub(super) async fn run(mut self) -> (Client, Record) {
        let mut record = Record::default();
        let mut conn = Conn::None;
        let mut first = true;
        for _ in 0..self.max_exchanges {
            if *self.stopped.borrow() || Instant::now() >= self.deadline {
                break;
            }
            let exchange = match timeout(self.request_timeout, self.exchange(&mut conn)).await {
                Ok(exchange) => exchange,
                Err(_) => {
                    conn = Conn::None;
                    Exchange::Failed(
                        Failure::Timeout,
                        format!("no complete answer within {:?}", self.request_timeout),
                    )
                }
            };
            match exchange {
                Exchange::Ok(answered) => self.answered(&mut record, answered),
                Exchange::OkThenReconnect(answered) => {
                    self.answered(&mut record, answered);
                    self.reconnected(&mut record);
                    conn = Conn::None;
                }
                Exchange::Reconnect => {
                    self.reconnected(&mut record);
                    conn = Conn::None;
                    continue;
                }
                Exchange::Failed(failure, what) => {
                    record
                        .tally
                        .fail(failure, format_args!("{what} ({})", self.client));
                    self.live.fail();
                    conn = Conn::None;
                    tokio::select! {
                        () = tokio::time::sleep(FAILURE_PAUSE) => {}
                        _ = self.stopped.wait_for(|stop| *stop) => {}
                    }
                }
            }
            if std::mem::take(&mut first) {
                self.live.settle();
            }
        }
        if first {
            self.live.settle();
        }
        self.live.finish();
        (self.client, record)
    }

    fn answered(&self, record: &mut Record, answered: Answered) {
        let first = record.tally.ok == 0;
        record.tally.ok += 1;
        if self.timings {
            record.timings.push(Timing {
                start_us: answered.start.duration_since(self.epoch).as_micros() as u64,
                latency_us: answered.start.elapsed().as_micros() as u64,
            });
        }
        if let Some(pid) = answered.pid {
            record.pids.insert(pid);
        }
        self.live.answer(first, answered.pid);
    }

    fn reconnected(&self, record: &mut Record) {
        record.tally.reconnects += 1;
        self.live.reconnect();
    }

    async fn exchange(&self, conn: &mut Conn) -> Exchange {
        match self.client {
            Client::ShortHttp => self.short_http().await,
            Client::KeepAliveHttp => self.kept_http(conn, false).await,
            Client::H2 => self.kept_http(conn, true).await,
            Client::ShortLines => self.short_line().await,
            Client::LongLines => self.long_line(conn).await,
            Client::WebSocket => self.websocket(conn).await,
        }
    }

    async fn connect(&self) -> Result<TcpStream, Exchange> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| failed_io(&e, "connect"))?;
        // As a latency-sensitive client would: no Nagle delay on our side.
        stream
            .set_nodelay(true)
            .map_err(|e| failed_io(&e, "TCP_NODELAY"))?;
        Ok(stream)
    }

    async fn handshake(&self, h2: bool) -> Result<(Sender, ConnTask), Exchange> {
        let io = TokioIo::new(self.connect().await?);
        // The connection's own errors surface through the requests, and through the task's
        // result when it is found closed between two requests.
        if h2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| failed_hyper(&e, "HTTP/2 handshake", Failure::Empty))?;
            Ok((Sender::H2(sender), ConnTask(tokio::spawn(conn))))
        } else {
            let (sender, conn) = http1::handshake(io)
                .await
                .map_err(|e| failed_hyper(&e, "handshake", Failure::Empty))?;
            Ok((Sender::H1(sender), ConnTask(tokio::spawn(conn))))
        }
    }

    async fn short_http(&self) -> Exchange {
        let start = Instant::now();
        let (mut sender, mut task) = match self.handshake(false).await {
            Ok(pair) => pair,
            Err(failed) => return failed,
        };
        let exchange = self.get(&mut sender, true, start).await;
        drop(sender);
        let _ = (&mut task.0).await;
        match exchange {
            Exchange::OkThenReconnect(answered) => Exchange::Ok(answered),
            // A new connection is no kept one: closed before its request, it is a failure.
            Exchange::Reconnect => Exchange::Failed(
                Failure::Empty,
                "a new connection closed before its request was sent".into(),
            ),
            other => other,
        }
    }

    async fn kept_http(&self, conn: &mut Conn, h2: bool) -> Exchange {
        if let Conn::Http(sender, task) = conn {
            if !sender.ready().await {
                // Closed while idle (or, for HTTP/2, GOAWAY): cleanly, a reconnect; with an
                // error such as a reset, a failure.
                return match (&mut task.0).await {
                    Ok(Err(err)) => failed_hyper(&err, "idle connection", Failure::Empty),
                    _ => Exchange::Reconnect,
                };
            }
        } else {
            match self.handshake(h2).await {
                Ok((sender, task)) => *conn = Conn::Http(sender, task),
                Err(failed) => return failed,
            }
        }
        let Conn::Http(sender, _) = conn else {
            unreachable!("connected above")
        };
        let start = Instant::now();
        self.get(sender, false, start).await
    }

    fn request(&self, close: bool) -> Result<Request<Empty<Bytes>>, Exchange> {
        let mut request = Request::get(self.path.as_str())
            .body(Empty::new())
            .map_err(|e| Exchange::Failed(Failure::Other, format!("request: {e}")))?;
        if let Ok(host) = HeaderValue::from_str(&self.addr.to_string()) {
            request.headers_mut().insert(HOST, host);
        }
        if close {
            let close = HeaderValue::from_static("close");
            request.headers_mut().insert(CONNECTION, close);
        }
        Ok(request)
    }

    /// One `GET` and its whole answer. `OkThenReconnect` if the server said
    /// `Connection: close`; `Reconnect` if hyper handed the request back unsent.
    async fn get(&self, sender: &mut Sender, close: bool, start: Instant) -> Exchange {
        let request = match self.request(close) {
            Ok(request) => request,
            Err(failed) => return failed,
        };
        let response = match sender {
            Sender::H1(s) => sent(s.try_send_request(request).await),
            Sender::H2(s) => sent(s.try_send_request(request).await),
        };
        let response = match response {
            Ok(Some(response)) => response,
            // The connection closed before the request was written: the server never saw it.
            Ok(None) => return Exchange::Reconnect,
            // The server said, with a graceful GOAWAY, that it did not process this stream.
            Err(err) if refused_by_goaway(&err) => return Exchange::Reconnect,
            Err(err) => return failed_hyper(&err, "request", Failure::Empty),
        };
        let status = response.status();
        let closing = response
            .headers()
            .get(CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = match response.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            // The head arrived: whatever broke, the answer was cut short.
            Err(err) => return failed_hyper(&err, "response body", Failure::Torn),
        };
        if !status.is_success() {
            return Exchange::Failed(Failure::Status, format!("status {status}"));
        }
        let pid = if self.pids {
            match std::str::from_utf8(&body).ok().and_then(last_word_pid) {
                Some(pid) => Some(pid),
                None => {
                    return Exchange::Failed(Failure::Torn, format!("body {body:?} names no pid"));
                }
            }
        } else {
            None
        };
        let answered = Answered { start, pid };
        if closing {
            Exchange::OkThenReconnect(answered)
        } else {
            Exchange::Ok(answered)
        }
    }

    async fn short_line(&self) -> Exchange {
        let start = Instant::now();
        let mut stream = match self.connect().await {
            Ok(stream) => BufReader::new(stream),
            Err(failed) => return failed,
        };
        if let Err(err) = stream.write_all(self.line_out().as_bytes()).await {
            return failed_io(&err, "send");
        }
        match read_answer(&mut stream).await {
            Answer::Line(answer) => self.line_answered(&answer, start),
            Answer::Nothing => Exchange::Failed(Failure::Empty, "closed without an answer".into()),
            Answer::Failed(exchange) => exchange,
        }
    }

    async fn long_line(&self, conn: &mut Conn) -> Exchange {
        if !matches!(conn, Conn::Lines(..)) {
            match self.connect().await {
                Ok(stream) => *conn = Conn::Lines(BufReader::new(stream), 0),
                Err(failed) => return failed,
            }
        }
        let Conn::Lines(stream, answered) = conn else {
            unreachable!("connected above")
        };
        let start = Instant::now();
        if let Err(err) = stream.write_all(self.line_out().as_bytes()).await {
            return failed_io(&err, "send");
        }
        match read_answer(stream).await {
            Answer::Line(answer) => {
                *answered += 1;
                self.line_answered(&answer, start)
            }
            // Closed at a boundary, after an answer: the server moves us. The line was not
            // read by it, and is sent again on a new connection.
            Answer::Nothing if *answered > 0 => Exchange::Reconnect,
            Answer::Nothing => Exchange::Failed(Failure::Empty, "closed without an answer".into()),
            Answer::Failed(exchange) => exchange,
        }
    }

    /// The line to send, with its newline: the client's id makes each client's lines its own.
    fn line_out(&self) -> String {
        format!("{}\n", self.line)
    }

    /// A complete answer line (newline stripped), checked for the pid if asked to.
    fn line_answered(&self, answer: &str, start: Instant) -> Exchange {
        if !self.pids {
            return Exchange::Ok(Answered { start, pid: None });
        }
        let pid = answer
            .strip_prefix(self.line.as_str())
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|pid| pid.parse().ok());
        match pid {
            Some(pid) => Exchange::Ok(Answered {
                start,
                pid: Some(pid),
            }),
            None => Exchange::Failed(
                Failure::Torn,
                format!("answer {answer:?} to {:?} (client {})", self.line, self.id),
            ),
        }
    }
}

impl Sender {
    /// Whether the connection can take another request; false once it has closed or, for
    /// HTTP/2, received GOAWAY.
    async fn ready(&mut self) -> bool {
        match self {
            Sender::H1(s) => s.ready().await.is_ok(),
            Sender::H2(s) => s.ready().await.is_ok(),
        }
    }
}

/// A response, `None` for a request hyper handed back unsent, or the error.
fn sent(
    result: Result<Response<Incoming>, TrySendError<Request<Empty<Bytes>>>>,
) -> Result<Option<Response<Incoming>>, hyper::Error> {
    match result {
        Ok(response) => Ok(Some(response)),
        Err(err) if err.message().is_some() => Ok(None),
        Err(err) => Err(err.into_error()),
    }
}

/// Whether an HTTP/2 request failed because the server's graceful GOAWAY (`NO_ERROR`) did not
/// cover it: h2 fails that way the streams above the GOAWAY's last stream id, and any stream
/// opened after it, and the server processed none of them (RFC 9113, section 6.8). The race is
/// between the GOAWAY and a request sent right after `ready()`; a stream the server did take
/// that the connection then fails ends with another error.
fn refused_by_goaway(err: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
        }
        source = cause.source();
    }
    false
}

/// `hello from 4242` → 4242.
fn last_word_pid(text: &str) -> Option<u32> {
    text.trim_end().rsplit(' ').next()?.parse().ok()
}

enum Answer {
    Line(String),
    Nothing,
    Failed(Exchange),
}

/// Reads one line: complete (returned without its newline), nothing at all (end of stream), or
/// a failure.
async fn read_answer(stream: &mut BufReader<TcpStream>) -> Answer {
    let mut answer = Vec::new();
    match stream.read_until(b'\n', &mut answer).await {
        Ok(0) => Answer::Nothing,
        Ok(_) if answer.ends_with(b"\n") => {
            answer.pop();
            Answer::Line(String::from_utf8_lossy(&answer).into_owned())
        }
        Ok(n) => Answer::Failed(Exchange::Failed(
            Failure::Torn,
            format!("answer cut short after {n} bytes"),
        )),
        Err(err) => Answer::Failed(failed_io(&err, "answer")),
    }
}

fn failed_io(err: &io::Error, step: &str) -> Exchange {
    Exchange::Failed(Failure::from_io(err), format!("{step}: {err}"))
}

/// A hyper error: by its I/O cause if it has one; else an incomplete message is `incomplete`
/// (`Empty` before the response's head, `Torn` after it).
fn failed_hyper(err: &hyper::Error, step: &str, incomplete: Failure) -> Exchange {
    let mut detail = format!("{step}: {err}");
    let mut source = std::error::Error::source(err);
    let mut io_failure = None;
    while let Some(cause) = source {
        detail = format!("{detail}: {cause}");
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            io_failure.get_or_insert(Failure::from_io(io));
        }
        source = cause.source();
    }
    let failure = io_failure.unwrap_or(if err.is_incomplete_message() || err.is_canceled() {
        incomplete
    } else if err.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Other
    });
    Exchange::Failed(failure, detail)
}
