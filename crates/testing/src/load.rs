//! Clients that keep the server busy while something happens to it, and count what failed.
//!
//! Four kinds of client, each a loop on its own task:
//!
//! - short-lived HTTP: one `GET` per connection (`Connection: close`);
//! - keep-alive HTTP/1.1: `GET`s back to back on one connection, until the server answers
//!   with `Connection: close` or closes the connection between two requests; then a new
//!   connection. That move is a reconnect, not a failure;
//! - short-lived lines: connect, send one line, read one line back, close;
//! - long-lived lines: lines back to back on one connection, each answered by one line. A
//!   server that closes the connection right after an answer (before it read the next line)
//!   is moving the client, a reconnect; the next line is sent on a new connection.
//!
//! A failure is anything a client of a server that never restarts would not see: `Refused`,
//! `Reset`, `Timeout`, `Torn` (an answer cut short), `Empty` (closed before the answer),
//! `Status` (a non-2xx response), `Other`. Each loop is bounded in time and in count, and stops
//! at its next exchange boundary when told to.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONNECTION, HOST};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

/// How many failure messages are kept per kind of client, to show what went wrong.
const SAMPLES: usize = 5;
/// Pause after a failure, so that a server that is down is not hammered.
const FAILURE_PAUSE: Duration = Duration::from_millis(20);

/// The clients [`Harness::under_load`](crate::Harness::under_load) runs, and their bounds.
///
/// ```
/// use std::time::Duration;
/// use graceful_testing::Load;
///
/// let load = Load::none()
///     .keep_alive_http(4)
///     .short_http(2)
///     .path("/health")
///     .request_timeout(Duration::from_secs(2));
/// # drop(load);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Load {
    clients: BTreeMap<Client, usize>,
    path: String,
    line: String,
    request_timeout: Duration,
    max_duration: Duration,
    max_exchanges: u64,
}

impl Default for Load {
    /// [`Load::http`].
    fn default() -> Self {
        Load::http()
    }
}

impl Load {
    /// No client at all; add some.
    pub fn none() -> Load {
        Load {
            clients: BTreeMap::new(),
            path: "/".to_owned(),
            line: "hello".to_owned(),
            request_timeout: Duration::from_secs(5),
            max_duration: Duration::from_secs(120),
            max_exchanges: 10_000_000,
        }
    }

    /// Two short-lived and two keep-alive HTTP clients sending `GET /`.
    pub fn http() -> Load {
        Load::none().short_http(2).keep_alive_http(2)
    }

    /// Two short-lived and two long-lived line clients sending `hello`.
    pub fn lines() -> Load {
        Load::none().short_lines(2).long_lines(2)
    }

    /// `n` clients that send one `GET` per connection.
    pub fn short_http(self, n: usize) -> Self {
        self.clients_of(Client::ShortHttp, n)
    }

    /// `n` clients that send `GET`s back to back on keep-alive HTTP/1.1 connections.
    pub fn keep_alive_http(self, n: usize) -> Self {
        self.clients_of(Client::KeepAliveHttp, n)
    }

    /// `n` clients that send one line per connection and read one line back.
    pub fn short_lines(self, n: usize) -> Self {
        self.clients_of(Client::ShortLines, n)
    }

    /// `n` clients that exchange lines back to back on long-lived connections.
    pub fn long_lines(self, n: usize) -> Self {
        self.clients_of(Client::LongLines, n)
    }

    fn clients_of(mut self, client: Client, n: usize) -> Self {
        self.clients.insert(client, n);
        self
    }

    /// The path the HTTP clients request. Default: `/`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The line the line clients send, without its newline. Default: `hello`.
    pub fn line(mut self, line: impl Into<String>) -> Self {
        self.line = line.into();
        self
    }

    /// How long one exchange (connect, request, whole answer) may take before it counts as a
    /// [`Failure::Timeout`]. Default: 5 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long the clients run at most, even if what runs under load takes longer. Default:
    /// 120 s.
    pub fn max_duration(mut self, duration: Duration) -> Self {
        self.max_duration = duration;
        self
    }

    /// How many exchanges each client makes at most. Default: ten million.
    pub fn max_exchanges(mut self, max: u64) -> Self {
        self.max_exchanges = max;
        self
    }

    /// Runs the clients against `addr` while `during` runs, then stops them at their next
    /// boundary. Before `during` starts, each client has finished one exchange (or the request
    /// timeout has run out), so the load is really on.
    pub(crate) async fn run<T>(
        &self,
        addr: SocketAddr,
        during: impl Future<Output = T>,
    ) -> LoadReport<T> {
        let (stop, stopped) = watch::channel(false);
        let started = Arc::new(Started::default());
        let deadline = Instant::now() + self.max_duration;
        let mut clients = JoinSet::new();
        for (&client, &n) in &self.clients {
            for _ in 0..n {
                let run = Run {
                    client,
                    addr,
                    path: self.path.clone(),
                    line: format!("{}\n", self.line),
                    request_timeout: self.request_timeout,
                    deadline,
                    max_exchanges: self.max_exchanges,
                    stopped: stopped.clone(),
                    started: started.clone(),
                };
                clients.spawn(run.run());
            }
        }
        let all = clients.len();
        let warm_up = self.request_timeout + Duration::from_secs(1);
        let _ = timeout(warm_up, started.wait(all)).await;

        let outcome = during.await;
        let _ = stop.send(true);
        let mut tallies = BTreeMap::<Client, Tally>::new();
        while let Some(joined) = clients.join_next().await {
            if let Ok((client, tally)) = joined {
                tallies.entry(client).or_default().add(tally);
            }
        }
        LoadReport { outcome, tallies }
    }
}

/// A kind of client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Client {
    /// One HTTP/1.1 `GET` per connection.
    ShortHttp,
    /// HTTP/1.1 `GET`s back to back on keep-alive connections.
    KeepAliveHttp,
    /// One line per connection.
    ShortLines,
    /// Lines back to back on long-lived connections.
    LongLines,
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Client::ShortHttp => "short-lived HTTP",
            Client::KeepAliveHttp => "keep-alive HTTP",
            Client::ShortLines => "short-lived lines",
            Client::LongLines => "long-lived lines",
        })
    }
}

/// What went wrong in one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Failure {
    /// The connection was refused: nobody was accepting.
    Refused,
    /// The connection was reset, or broke while the client wrote.
    Reset,
    /// No complete answer within the request timeout.
    Timeout,
    /// The answer was cut short: part of it arrived.
    Torn,
    /// The connection was closed before the answer (for HTTP: before a complete response).
    Empty,
    /// An HTTP response whose status is not 2xx.
    Status,
    /// Anything else.
    Other,
}

/// What one kind of client saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tally {
    /// Exchanges answered in full (and, for HTTP, with a 2xx status).
    pub ok: u64,
    /// Times a connection was closed cleanly by the server between two exchanges and the
    /// client moved to a new one.
    pub reconnects: u64,
    /// Failed exchanges, by kind.
    pub failures: BTreeMap<Failure, u64>,
    /// The first few failures, described.
    pub samples: Vec<String>,
}

impl Tally {
    fn fail(&mut self, failure: Failure, what: impl fmt::Display) {
        *self.failures.entry(failure).or_default() += 1;
        if self.samples.len() < SAMPLES {
            self.samples.push(format!("{failure:?}: {what}"));
        }
    }

    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.reconnects += other.reconnects;
        for (failure, n) in other.failures {
            *self.failures.entry(failure).or_default() += n;
        }
        let room = SAMPLES.saturating_sub(self.samples.len());
        self.samples.extend(other.samples.into_iter().take(room));
    }

    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// What the clients saw while something ran under load, and what that returned.
#[derive(Debug)]
#[non_exhaustive]
pub struct LoadReport<T> {
    /// What the future run under load returned.
    pub outcome: T,
    tallies: BTreeMap<Client, Tally>,
}

impl<T> LoadReport<T> {
    /// Failed exchanges, of every kind, over all clients.
    pub fn failures(&self) -> u64 {
        self.tallies.values().map(Tally::failed).sum()
    }

    /// Failed exchanges of one kind, over all clients.
    pub fn failures_of(&self, failure: Failure) -> u64 {
        self.tallies
            .values()
            .filter_map(|t| t.failures.get(&failure))
            .sum()
    }

    /// Exchanges answered in full, over all clients.
    pub fn succeeded(&self) -> u64 {
        self.tallies.values().map(|t| t.ok).sum()
    }

    /// Clean moves to a new connection, over all clients.
    pub fn reconnects(&self) -> u64 {
        self.tallies.values().map(|t| t.reconnects).sum()
    }

    /// What one kind of client saw; empty if none ran.
    pub fn tally(&self, client: Client) -> Tally {
        self.tallies.get(&client).cloned().unwrap_or_default()
    }
}

impl<T: fmt::Debug> fmt::Display for LoadReport<T> {
    /// The totals and what ran under load returned, then a line per kind of client with its
    /// sampled failures.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} exchanges answered, {} reconnects, {} failed; under load: {:?}",
            self.succeeded(),
            self.reconnects(),
            self.failures(),
            self.outcome
        )?;
        for (client, tally) in &self.tallies {
            write!(
                f,
                "\n  {client}: {} answered, {} reconnects, {} failed {:?}",
                tally.ok,
                tally.reconnects,
                tally.failed(),
                tally.failures
            )?;
            for sample in &tally.samples {
                write!(f, "\n    {sample}")?;
            }
        }
        Ok(())
    }
}

/// Counts the clients that have finished their first exchange.
#[derive(Debug, Default)]
struct Started {
    count: AtomicUsize,
    notify: Notify,
}

impl Started {
    fn one(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    async fn wait(&self, all: usize) {
        loop {
            let notified = self.notify.notified();
            if self.count.load(Ordering::SeqCst) >= all {
                return;
            }
            notified.await;
        }
    }
}

/// One client's loop.
struct Run {
    client: Client,
    addr: SocketAddr,
    path: String,
    line: String,
    request_timeout: Duration,
    deadline: Instant,
    max_exchanges: u64,
    stopped: watch::Receiver<bool>,
    started: Arc<Started>,
}

/// The outcome of one exchange.
enum Exchange {
    Ok,
    /// Answered, and the connection is to be replaced (the server asked to close).
    OkThenReconnect,
    /// The kept connection had been closed cleanly: nothing was lost, connect again.
    Reconnect,
    Failed(Failure, String),
}

/// A kept connection, for the long-lived clients.
enum Conn {
    None,
    Http(
        SendRequest<Empty<Bytes>>,
        tokio::task::JoinHandle<hyper::Result<()>>,
    ),
    Lines(BufReader<TcpStream>, u64),
}

impl Run {
    async fn run(self) -> (Client, Tally) {
        let mut tally = Tally::default();
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
                    Exchange::Failed(Failure::Timeout, format!("{:?}", self.request_timeout))
                }
            };
            match exchange {
                Exchange::Ok => tally.ok += 1,
                Exchange::OkThenReconnect => {
                    tally.ok += 1;
                    tally.reconnects += 1;
                    conn = Conn::None;
                }
                Exchange::Reconnect => {
                    tally.reconnects += 1;
                    conn = Conn::None;
                    continue;
                }
                Exchange::Failed(failure, what) => {
                    tally.fail(failure, format_args!("{what} ({})", self.client));
                    conn = Conn::None;
                    tokio::time::sleep(FAILURE_PAUSE).await;
                }
            }
            if std::mem::take(&mut first) {
                self.started.one();
            }
        }
        if first {
            self.started.one();
        }
        (self.client, tally)
    }

    async fn exchange(&self, conn: &mut Conn) -> Exchange {
        match self.client {
            Client::ShortHttp => self.short_http().await,
            Client::KeepAliveHttp => self.keep_alive_http(conn).await,
            Client::ShortLines => self.short_line().await,
            Client::LongLines => self.long_line(conn).await,
        }
    }

    async fn connect(&self) -> Result<TcpStream, Exchange> {
        TcpStream::connect(self.addr)
            .await
            .map_err(|e| failed_io(&e, "connect"))
    }

    async fn short_http(&self) -> Exchange {
        let (mut sender, connection) = match self.handshake().await {
            Ok(pair) => pair,
            Err(failed) => return failed,
        };
        let exchange = self.get(&mut sender, true).await;
        drop(sender);
        let _ = connection.await;
        match exchange {
            Exchange::OkThenReconnect => Exchange::Ok,
            other => other,
        }
    }

    async fn keep_alive_http(&self, conn: &mut Conn) -> Exchange {
        if let Conn::Http(sender, connection) = conn {
            if sender.ready().await.is_err() {
                // Closed while idle: cleanly (a reconnect) or by a reset (a failure).
                let ended = connection.await;
                return match ended {
                    Ok(Err(err)) => failed_hyper(&err, "idle keep-alive connection"),
                    _ => Exchange::Reconnect,
                };
            }
        } else {
            match self.handshake().await {
                Ok((sender, connection)) => *conn = Conn::Http(sender, connection),
                Err(failed) => return failed,
            }
        }
        let Conn::Http(sender, _) = conn else {
            unreachable!("connected above")
        };
        self.get(sender, false).await
    }

    async fn handshake(
        &self,
    ) -> Result<
        (
            SendRequest<Empty<Bytes>>,
            tokio::task::JoinHandle<hyper::Result<()>>,
        ),
        Exchange,
    > {
        let stream = self.connect().await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed_hyper(&e, "handshake"))?;
        Ok((sender, tokio::spawn(connection)))
    }

    /// One `GET`; `OkThenReconnect` if the server said `Connection: close`.
    async fn get(&self, sender: &mut SendRequest<Empty<Bytes>>, close: bool) -> Exchange {
        let mut request =
            http::Request::get(self.path.as_str()).header(HOST, self.addr.to_string());
        if close {
            request = request.header(CONNECTION, "close");
        }
        let request = match request.body(Empty::new()) {
            Ok(request) => request,
            Err(err) => return Exchange::Failed(Failure::Other, format!("request: {err}")),
        };
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(err) => return failed_hyper(&err, "request"),
        };
        let status = response.status();
        let closing = response
            .headers()
            .get(CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if let Err(err) = response.into_body().collect().await {
            return failed_hyper(&err, "response body");
        }
        if !status.is_success() {
            return Exchange::Failed(Failure::Status, format!("status {status}"));
        }
        if closing {
            Exchange::OkThenReconnect
        } else {
            Exchange::Ok
        }
    }

    async fn short_line(&self) -> Exchange {
        let mut stream = match self.connect().await {
            Ok(stream) => BufReader::new(stream),
            Err(failed) => return failed,
        };
        if let Err(err) = stream.write_all(self.line.as_bytes()).await {
            return failed_io(&err, "send");
        }
        match read_answer(&mut stream).await {
            Answer::Line => Exchange::Ok,
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
        if let Err(err) = stream.write_all(self.line.as_bytes()).await {
            return failed_io(&err, "send");
        }
        match read_answer(stream).await {
            Answer::Line => {
                *answered += 1;
                Exchange::Ok
            }
            // Closed at a boundary, after an answer: the server moves us. The line was not
            // read by it, and is sent again on a new connection.
            Answer::Nothing if *answered > 0 => Exchange::Reconnect,
            Answer::Nothing => Exchange::Failed(Failure::Empty, "closed without an answer".into()),
            Answer::Failed(exchange) => exchange,
        }
    }
}

enum Answer {
    Line,
    Nothing,
    Failed(Exchange),
}

/// Reads one line: complete, nothing at all (end of stream), or a failure.
async fn read_answer(stream: &mut BufReader<TcpStream>) -> Answer {
    let mut answer = Vec::new();
    match stream.read_until(b'\n', &mut answer).await {
        Ok(0) => Answer::Nothing,
        Ok(_) if answer.ends_with(b"\n") => Answer::Line,
        Ok(n) => Answer::Failed(Exchange::Failed(
            Failure::Torn,
            format!("answer cut short after {n} bytes"),
        )),
        Err(err) => Answer::Failed(failed_io(&err, "answer")),
    }
}

fn failed_io(err: &io::Error, step: &str) -> Exchange {
    let failure = match err.kind() {
        io::ErrorKind::ConnectionRefused => Failure::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Failure::Reset,
        io::ErrorKind::TimedOut => Failure::Timeout,
        io::ErrorKind::UnexpectedEof => Failure::Torn,
        _ => Failure::Other,
    };
    Exchange::Failed(failure, format!("{step}: {err}"))
}

fn failed_hyper(err: &hyper::Error, step: &str) -> Exchange {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return failed_io(io, step);
        }
        source = cause.source();
    }
    // hyper cannot tell whether part of the response had arrived.
    let failure = if err.is_incomplete_message() || err.is_canceled() {
        Failure::Empty
    } else if err.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Other
    };
    Exchange::Failed(failure, format!("{step}: {err}"))
}
