//! The load generator: tokio tasks that keep requests going against a server and count what
//! happens to each one.
//!
//! Each worker owns one connection at a time and sends its requests one after another:
//!
//! - `short`: HTTP/1.1, one `GET /` per connection (`Connection: close`);
//! - `keep-alive`: HTTP/1.1, requests back to back on one connection for as long as it lasts;
//! - `h2`: HTTP/2 (prior knowledge), requests back to back on one connection;
//! - `echo`: a long-lived line session with `echo-server`, a line and its answer at a time.
//!
//! A request succeeds when a complete `2xx` answer naming the pid that served it arrives. A
//! connection the server ends between two requests (an HTTP/1 response carrying
//! `Connection: close`, a connection found closed before the next request is sent, an HTTP/2
//! GOAWAY, a request hyper hands back unsent because its connection closed first, a line session
//! closed after an answer) is a *reconnect*: the server said it was done
//! before it was asked anything more, so no request was lost. Everything else is a failure,
//! counted by kind. Every wait is bounded by [`ANSWER_TIMEOUT`], and the workers stop at
//! [`Load::finish`].

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::{TrySendError, http1, http2};
use hyper::header::{CONNECTION, HOST, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a connect, or a request's complete answer, may take before it counts as a timeout.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failure, so a server that is down is not hammered.
const FAILURE_PAUSE: Duration = Duration::from_millis(20);
/// How many failure messages each load keeps, to show what went wrong.
const EXAMPLES_KEPT: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Short,
    KeepAlive,
    H2,
    Echo,
}

impl Mode {
    pub(crate) const ALL: [Mode; 4] = [Mode::Short, Mode::KeepAlive, Mode::H2, Mode::Echo];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Short => "short",
            Mode::KeepAlive => "keep-alive",
            Mode::H2 => "h2",
            Mode::Echo => "echo",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether the mode talks to `http-server` (else to `echo-server`).
    pub(crate) fn is_http(self) -> bool {
        self != Mode::Echo
    }

    /// What one request of this mode is, for tables.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Mode::Short => "HTTP/1.1, one request per connection",
            Mode::KeepAlive => "HTTP/1.1 keep-alive",
            Mode::H2 => "HTTP/2",
            Mode::Echo => "echo, long-lived line sessions",
        }
    }
}

/// The kinds of failure, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection was refused.
    Refused,
    /// The connection was reset, or a write found it broken.
    Reset,
    /// No complete answer within [`ANSWER_TIMEOUT`].
    Timeout,
    /// The connection closed before a complete answer, or the answer was garbled.
    Torn,
    /// A complete answer with a status other than 2xx.
    Status,
    /// Anything else.
    Other,
}

impl Failure {
    pub(crate) const ALL: [Failure; 6] = [
        Failure::Refused,
        Failure::Reset,
        Failure::Timeout,
        Failure::Torn,
        Failure::Status,
        Failure::Other,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::Torn => "torn",
            Failure::Status => "non-2xx",
            Failure::Other => "other",
        }
    }

    fn of_io(err: &io::Error) -> Failure {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => Failure::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Failure::Reset,
            io::ErrorKind::TimedOut => Failure::Timeout,
            io::ErrorKind::UnexpectedEof => Failure::Torn,
            _ => Failure::Other,
        }
    }

    fn of_hyper(err: &hyper::Error) -> Failure {
        if err.is_incomplete_message() {
            return Failure::Torn;
        }
        if err.is_timeout() {
            return Failure::Timeout;
        }
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<io::Error>() {
                return Failure::of_io(io);
            }
            source = cause.source();
        }
        Failure::Other
    }
}

/// A failure, with what was seen, for the report.
struct Failed {
    kind: Failure,
    detail: String,
}

impl Failed {
    fn new(kind: Failure, detail: impl fmt::Display) -> Failed {
        Failed {
            kind,
            detail: detail.to_string(),
        }
    }

    fn io(err: io::Error) -> Failed {
        Failed::new(Failure::of_io(&err), err)
    }

    fn hyper(err: hyper::Error) -> Failed {
        let mut detail = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            detail = format!("{detail}: {cause}");
            source = cause.source();
        }
        Failed::new(Failure::of_hyper(&err), detail)
    }

    fn timeout(what: &str) -> Failed {
        Failed::new(
            Failure::Timeout,
            format!("{what} took over {ANSWER_TIMEOUT:?}"),
        )
    }
}

/// Counters read while the load runs, for the live progress line.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) requests: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) failures: AtomicU64,
    /// The pid that answered the latest request.
    pub(crate) pid: AtomicU32,
}

/// One request: when it started, relative to the load's start, and how long it took.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    pub(crate) start_us: u64,
    pub(crate) latency_us: u64,
}

impl Sample {
    pub(crate) fn end_us(self) -> u64 {
        self.start_us + self.latency_us
    }
}

/// What one worker saw.
#[derive(Debug, Default)]
struct Record {
    samples: Vec<Sample>,
    reconnects: u64,
    failures: [u64; Failure::ALL.len()],
    examples: Vec<String>,
    pids: BTreeSet<u32>,
}

/// A running load: `connections` workers of one mode against one address.
#[derive(Debug)]
pub(crate) struct Load {
    mode: Mode,
    connections: usize,
    epoch: Instant,
    live: Arc<Live>,
    stop: CancellationToken,
    workers: Vec<JoinHandle<Record>>,
}

impl Load {
    pub(crate) fn start(runtime: &Runtime, mode: Mode, addr: &str, connections: usize) -> Load {
        let epoch = Instant::now();
        let live = Arc::new(Live::default());
        let stop = CancellationToken::new();
        let workers = (0..connections)
            .map(|id| {
                let worker = Worker {
                    id,
                    mode,
                    addr: addr.to_owned(),
                    epoch,
                    live: live.clone(),
                    stop: stop.clone(),
                    record: Record::default(),
                };
                runtime.spawn(worker.run())
            })
            .collect();
        Load {
            mode,
            connections,
            epoch,
            live,
            stop,
            workers,
        }
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    pub(crate) fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Stops every worker once its current request is answered, and gathers what they saw.
    pub(crate) fn finish(self, runtime: &Runtime) -> Report {
        self.stop.cancel();
        let elapsed = self.epoch.elapsed();
        let mut report = Report {
            mode: self.mode,
            connections: self.connections,
            epoch: self.epoch,
            elapsed,
            samples: Vec::new(),
            reconnects: 0,
            failures: [0; Failure::ALL.len()],
            examples: Vec::new(),
            pids: BTreeSet::new(),
        };
        for worker in self.workers {
            match runtime.block_on(worker) {
                Ok(record) => report.add(record),
                Err(err) => {
                    report.failures[Failure::Other as usize] += 1;
                    report.examples.push(format!("a worker failed: {err}"));
                }
            }
        }
        report.samples.sort_by_key(|s| s.start_us);
        report
    }
}

/// Everything a load saw, once it has finished.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) mode: Mode,
    pub(crate) connections: usize,
    /// When the load started; samples are relative to it.
    pub(crate) epoch: Instant,
    pub(crate) elapsed: Duration,
    /// Every successful request, by start time.
    pub(crate) samples: Vec<Sample>,
    pub(crate) reconnects: u64,
    failures: [u64; Failure::ALL.len()],
    /// The first few failures, as seen.
    pub(crate) examples: Vec<String>,
    /// Every pid that answered.
    pub(crate) pids: BTreeSet<u32>,
}

impl Report {
    fn add(&mut self, record: Record) {
        self.samples.extend(record.samples);
        self.reconnects += record.reconnects;
        for (total, n) in self.failures.iter_mut().zip(record.failures) {
            *total += n;
        }
        let room = (EXAMPLES_KEPT * 2).saturating_sub(self.examples.len());
        self.examples.extend(record.examples.into_iter().take(room));
        self.pids.extend(record.pids);
    }

    pub(crate) fn requests(&self) -> u64 {
        self.samples.len() as u64
    }

    pub(crate) fn failed(&self) -> u64 {
        self.failures.iter().sum()
    }

    pub(crate) fn failures_of(&self, kind: Failure) -> u64 {
        self.failures[kind as usize]
    }

    /// `refused=0 reset=2 …`, every kind.
    pub(crate) fn failures_by_kind(&self) -> String {
        Failure::ALL
            .iter()
            .map(|k| format!("{}={}", k.name(), self.failures_of(*k)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Requests per second over the whole run.
    pub(crate) fn throughput(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64()
    }
}

struct Worker {
    id: usize,
    mode: Mode,
    addr: String,
    epoch: Instant,
    live: Arc<Live>,
    stop: CancellationToken,
    record: Record,
}

/// How a connection ended without a failure.
enum End {
    /// The load is stopping.
    Stopped,
    /// The server closed it between requests; the worker reconnects.
    Closed,
    /// A short-lived connection did its one request.
    Done,
}

impl Worker {
    async fn run(mut self) -> Record {
        let mut seq = 0;
        while !self.stop.is_cancelled() {
            let session = match self.mode {
                Mode::Short => self.short().await,
                Mode::KeepAlive => self.keep_alive(false).await,
                Mode::H2 => self.keep_alive(true).await,
                Mode::Echo => self.echo(&mut seq).await,
            };
            match session {
                Ok(End::Closed) => {
                    self.record.reconnects += 1;
                    self.live.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                Ok(End::Stopped | End::Done) => {}
                Err(failed) => {
                    self.failed(failed);
                    tokio::select! {
                        () = tokio::time::sleep(FAILURE_PAUSE) => {}
                        () = self.stop.cancelled() => {}
                    }
                }
            }
        }
        self.record
    }

    fn answered(&mut self, start: Instant, pid: u32) {
        self.record.samples.push(Sample {
            start_us: start.duration_since(self.epoch).as_micros() as u64,
            latency_us: start.elapsed().as_micros() as u64,
        });
        self.record.pids.insert(pid);
        self.live.requests.fetch_add(1, Ordering::Relaxed);
        self.live.pid.store(pid, Ordering::Relaxed);
    }

    fn failed(&mut self, failed: Failed) {
        self.record.failures[failed.kind as usize] += 1;
        self.live.failures.fetch_add(1, Ordering::Relaxed);
        if self.record.examples.len() < EXAMPLES_KEPT {
            self.record.examples.push(format!(
                "{} ({}): {}",
                failed.kind.name(),
                self.mode.name(),
                failed.detail
            ));
        }
    }

    async fn connect(&self) -> Result<TcpStream, Failed> {
        let stream = tokio::time::timeout(ANSWER_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| Failed::timeout("connecting"))?
            .map_err(Failed::io)?;
        stream.set_nodelay(true).map_err(Failed::io)?;
        Ok(stream)
    }

    fn request(&self, close: bool) -> Request<Empty<Bytes>> {
        let mut request = Request::get("/")
            .body(Empty::new())
            .expect("a valid request");
        if let Ok(host) = HeaderValue::from_str(&self.addr) {
            request.headers_mut().insert(HOST, host);
        }
        if close {
            let close = HeaderValue::from_static("close");
            request.headers_mut().insert(CONNECTION, close);
        }
        request
    }

    async fn short(&mut self) -> Result<End, Failed> {
        let start = Instant::now();
        let stream = self.connect().await?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(Failed::hyper)?;
        // The connection's own errors surface through the request.
        tokio::spawn(conn);
        match answer(sender.try_send_request(self.request(true))).await? {
            Answer::Served { pid, .. } => {
                self.answered(start, pid);
                Ok(End::Done)
            }
            Answer::Unsent => Err(Failed::new(
                Failure::Torn,
                "a new connection closed before its request was sent",
            )),
        }
    }

    async fn keep_alive(&mut self, h2: bool) -> Result<End, Failed> {
        let io = TokioIo::new(self.connect().await?);
        let mut sender = if h2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(Failed::hyper)?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(io).await.map_err(Failed::hyper)?;
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        loop {
            if self.stop.is_cancelled() {
                return Ok(End::Stopped);
            }
            // A connection the server has closed, or sent GOAWAY on, is not ready: it ended
            // before this request was sent.
            let ready = tokio::time::timeout(ANSWER_TIMEOUT, sender.ready())
                .await
                .map_err(|_| Failed::timeout("waiting for the connection to take a request"))?;
            if !ready {
                return Ok(End::Closed);
            }
            let start = Instant::now();
            let request = self.request(false);
            let answer = match &mut sender {
                Sender::H1(s) => answer(s.try_send_request(request)).await?,
                Sender::H2(s) => answer(s.try_send_request(request)).await?,
            };
            match answer {
                Answer::Served { pid, last } => {
                    self.answered(start, pid);
                    if last {
                        return Ok(End::Closed);
                    }
                }
                // The connection ended between `ready` and the request's turn to be written.
                Answer::Unsent => return Ok(End::Closed),
            }
        }
    }

    async fn echo(&mut self, seq: &mut u64) -> Result<End, Failed> {
        let mut conn = BufReader::new(self.connect().await?);
        let mut answered_here = 0;
        loop {
            if self.stop.is_cancelled() {
                return Ok(End::Stopped);
            }
            let line = format!("c{} {seq}", self.id);
            let start = Instant::now();
            let mut reply = String::new();
            let exchange = async {
                conn.get_mut()
                    .write_all(format!("{line}\n").as_bytes())
                    .await?;
                conn.read_line(&mut reply).await
            };
            let read = tokio::time::timeout(ANSWER_TIMEOUT, exchange)
                .await
                .map_err(|_| Failed::timeout("an answer"))?
                .map_err(Failed::io)?;
            if read == 0 {
                // Closed at a line boundary: the server did not read this line, which is sent
                // again on the next connection. Before any answer, it is a failure.
                return if answered_here > 0 {
                    Ok(End::Closed)
                } else {
                    Err(Failed::new(Failure::Torn, "closed before the first answer"))
                };
            }
            let pid = reply
                .strip_suffix('\n')
                .and_then(|r| r.strip_prefix(line.as_str()))
                .and_then(|r| r.strip_prefix(' '))
                .and_then(|pid| pid.parse().ok())
                .ok_or_else(|| Failed::new(Failure::Torn, format!("answer {reply:?}")))?;
            self.answered(start, pid);
            answered_here += 1;
            *seq += 1;
        }
    }
}

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    /// Whether the connection can take another request.
    async fn ready(&mut self) -> bool {
        match self {
            Sender::H1(s) => s.ready().await.is_ok(),
            Sender::H2(s) => s.ready().await.is_ok(),
        }
    }
}

/// What became of a request.
enum Answer {
    /// A complete `2xx` answer `hello from <pid>`; `last` when the server said it was the
    /// connection's last response.
    Served { pid: u32, last: bool },
    /// The connection closed before the request was written: hyper hands it back unsent, and
    /// the server never saw it.
    Unsent,
}

/// Awaits a request's complete answer.
async fn answer(
    response: impl Future<Output = Result<Response<Incoming>, TrySendError<Request<Empty<Bytes>>>>>,
) -> Result<Answer, Failed> {
    let complete = async {
        let response = match response.await {
            Ok(response) => response,
            Err(err) if err.message().is_some() => return Ok(None),
            Err(err) => return Err(err.into_error()),
        };
        let last = response
            .headers()
            .get(CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Some((status, last, body)))
    };
    let Some((status, last, body)) = tokio::time::timeout(ANSWER_TIMEOUT, complete)
        .await
        .map_err(|_| Failed::timeout("a response"))?
        .map_err(Failed::hyper)?
    else {
        return Ok(Answer::Unsent);
    };
    if !status.is_success() {
        return Err(Failed::new(Failure::Status, status));
    }
    let pid = std::str::from_utf8(&body)
        .ok()
        .and_then(|text| text.strip_prefix("hello from "))
        .and_then(|pid| pid.parse().ok())
        .ok_or_else(|| Failed::new(Failure::Torn, format!("body {body:?}")))?;
    Ok(Answer::Served { pid, last })
}

/// The `p`-th percentile (0–100) of sorted values, or 0 when there are none.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    //! The load generator against small misbehaving servers: each kind of failure must be seen
    //! as that kind, and a clean close between requests as a reconnect, or the demo's verdict
    //! means nothing.

    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// Serves every connection with `reply` until the test ends; returns its address.
    fn serve(runtime: &Runtime, reply: &'static str) -> String {
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        runtime.spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0; 1024];
                    // One request each: read its head, answer, and close (half-close first).
                    if conn.read(&mut request).await.unwrap_or(0) > 0 {
                        let _ = conn.write_all(reply.as_bytes()).await;
                    }
                    let _ = conn.shutdown().await;
                });
            }
        });
        addr
    }

    fn load(runtime: &Runtime, mode: Mode, addr: &str) -> Report {
        let load = Load::start(runtime, mode, addr, 2);
        let deadline = Instant::now() + Duration::from_secs(10);
        // Enough activity to classify, bounded in time.
        while load.live().requests.load(Ordering::Relaxed)
            + load.live().failures.load(Ordering::Relaxed)
            + load.live().reconnects.load(Ordering::Relaxed)
            < 20
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        load.finish(runtime)
    }

    const OK_THEN_CLOSE: &str =
        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 14\r\n\r\nhello from 123";

    #[test]
    fn a_response_that_closes_the_connection_is_a_reconnect() {
        let runtime = crate::runtime().unwrap();
        let addr = serve(&runtime, OK_THEN_CLOSE);
        let report = load(&runtime, Mode::KeepAlive, &addr);
        assert_eq!(report.failed(), 0, "{:?}", report.examples);
        assert!(report.requests() > 0);
        assert!(report.reconnects > 0);
        assert_eq!(report.pids, BTreeSet::from([123]));
        let report = load(&runtime, Mode::Short, &addr);
        assert_eq!(report.failed(), 0, "{:?}", report.examples);
        assert_eq!(
            report.reconnects, 0,
            "a short connection's end is no reconnect"
        );
    }

    #[test]
    fn a_connection_closed_without_an_answer_is_torn() {
        let runtime = crate::runtime().unwrap();
        let addr = serve(&runtime, "");
        for mode in [Mode::Short, Mode::KeepAlive] {
            let report = load(&runtime, mode, &addr);
            assert!(
                report.failures_of(Failure::Torn) > 0,
                "{mode:?}: {report:?}"
            );
            assert_eq!(report.failed(), report.failures_of(Failure::Torn));
            assert_eq!(report.requests(), 0);
        }
    }

    #[test]
    fn half_an_answer_is_torn_and_an_error_status_is_counted() {
        let runtime = crate::runtime().unwrap();
        let half = serve(
            &runtime,
            "HTTP/1.1 200 OK\r\ncontent-length: 14\r\n\r\nhello",
        );
        let report = load(&runtime, Mode::Short, &half);
        assert!(report.failures_of(Failure::Torn) > 0, "{report:?}");
        let error = serve(
            &runtime,
            "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        );
        let report = load(&runtime, Mode::Short, &error);
        assert!(report.failures_of(Failure::Status) > 0, "{report:?}");
        assert_eq!(report.failed(), report.failures_of(Failure::Status));
    }

    #[test]
    fn a_closed_port_is_refused() {
        let runtime = crate::runtime().unwrap();
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let report = load(&runtime, Mode::Echo, &addr);
        assert!(report.failures_of(Failure::Refused) > 0, "{report:?}");
        assert_eq!(report.failed(), report.failures_of(Failure::Refused));
    }

    #[test]
    fn an_echo_session_closed_at_a_boundary_is_a_reconnect() {
        let runtime = crate::runtime().unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // Answers three lines, then half-closes and waits for the client to close.
        runtime.spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut conn = BufReader::new(conn);
                    for _ in 0..3 {
                        let mut line = String::new();
                        if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let reply = format!("{} 77\n", line.trim_end());
                        let _ = conn.get_mut().write_all(reply.as_bytes()).await;
                    }
                    let _ = conn.get_mut().shutdown().await;
                    let mut rest = Vec::new();
                    let _ = conn.read_to_end(&mut rest).await;
                });
            }
        });
        let report = load(&runtime, Mode::Echo, &addr);
        assert_eq!(report.failed(), 0, "{:?}", report.examples);
        assert!(report.reconnects > 0);
        assert_eq!(report.pids, BTreeSet::from([77]));
    }
}
