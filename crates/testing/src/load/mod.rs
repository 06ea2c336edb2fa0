//! The load engine: clients that keep a server busy while something happens to it, and count
//! what failed.
//!
//! It is the one load generator of the project: [`Harness::under_load`](crate::Harness::under_load),
//! `cargo xtask demo` and `cargo xtask bench`, the `echo-client` example and `scale-probe` all
//! count with it, so "0 failed" means the same thing in the README, the demo and the tests.
//!
//! Six kinds of client ([`Client`]), each a loop on its own task:
//!
//! - short-lived HTTP: one HTTP/1.1 `GET` per connection (`Connection: close`);
//! - keep-alive HTTP/1.1: `GET`s back to back on one connection, until the server answers
//!   with `Connection: close` or closes the connection between two requests; then a new
//!   connection;
//! - HTTP/2 (prior knowledge): `GET`s back to back on one connection, until the server sends
//!   GOAWAY or closes it; then a new connection;
//! - short-lived lines: connect, send one line, read one line back, close;
//! - long-lived lines: lines back to back on one connection, each answered by one line;
//! - WebSockets: connect, handshake (`GET /ws` by default, [`Load::websocket_path`]), then text
//!   messages back to back on the one WebSocket, each answered by one text message.
//!
//! # Reconnects
//!
//! A connection the server ends between two exchanges is a *reconnect*, not a failure: the
//! server said it was done before it was asked anything more, so nothing was lost. That is a
//! response carrying `Connection: close`; a kept connection found closed (cleanly) before the
//! next request; an HTTP/2 GOAWAY, and a request it refused (a graceful GOAWAY, `NO_ERROR`,
//! whose last stream id is below the request's: the server did not process it); a request
//! that hyper hands back unsent because its connection closed first
//! (`TrySendError::message()`); a line session closed right after an
//! answer, before the server read the next line (that line is sent again on a new connection);
//! a WebSocket the server closes with a close frame instead of an answer (1001 going away, 1000
//! normal, or no code: it closes at a message boundary and discards the message it was sent,
//! which is sent again on a new WebSocket), or whose connection ends cleanly, with no byte of
//! an answer, after at least one answer (as for a line session). Any other close code instead of
//! an answer is `Empty`.
//!
//! # Failures
//!
//! A failure ([`Failure`]) is anything a client of a server that never restarts would not see:
//! `Refused`, `Reset`, `Timeout`, `Torn` (part of the answer arrived, not all of it, or it was
//! garbled), `Empty` (the connection closed before any answer), `Status` (a non-2xx response),
//! `Other`. With [`Load::answers_name_pid`], an answer that does not end with the pid of the
//! process that served it is `Torn`. For a WebSocket: a failed handshake is `Status` if the
//! server answered with another status than 101, `Empty` if it closed first; a connection that
//! ends after part of an answer arrived, or an answer that is not the text message expected, is
//! `Torn`; a reset is `Reset`.
//!
//! # Bounds
//!
//! Every exchange (connect, request, whole answer) is bounded by the request timeout; each
//! client by its maximum number of exchanges and the load's maximum duration. Clients stop at
//! their next exchange boundary when told to ([`Running::stop`]), and are aborted if the
//! [`Running`] load is dropped.

mod client;
mod report;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

pub use report::{Failure, Live, LoadReport, Tally, Timing, percentile};

use client::{Record, Run};

/// The clients to run against a server, and their bounds.
///
/// ```
/// use std::time::Duration;
/// use graceful_testing::Load;
///
/// let load = Load::none()
///     .keep_alive_http(4)
///     .short_http(2)
///     .h2(2)
///     .path("/health")
///     .request_timeout(Duration::from_secs(2));
/// # drop(load);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Load {
    clients: BTreeMap<Client, usize>,
    path: String,
    websocket_path: String,
    line: String,
    request_timeout: Duration,
    max_duration: Duration,
    max_exchanges: u64,
    pids: bool,
    timings: bool,
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
            websocket_path: "/ws".to_owned(),
            line: "hello".to_owned(),
            request_timeout: Duration::from_secs(5),
            max_duration: Duration::from_secs(120),
            max_exchanges: 10_000_000,
            pids: false,
            timings: false,
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

    /// `n` clients of kind `client` (replacing any number set before).
    pub fn clients(mut self, client: Client, n: usize) -> Self {
        self.clients.insert(client, n);
        self
    }

    /// `n` clients that send one `GET` per connection.
    pub fn short_http(self, n: usize) -> Self {
        self.clients(Client::ShortHttp, n)
    }

    /// `n` clients that send `GET`s back to back on keep-alive HTTP/1.1 connections.
    pub fn keep_alive_http(self, n: usize) -> Self {
        self.clients(Client::KeepAliveHttp, n)
    }

    /// `n` clients that send `GET`s back to back on HTTP/2 connections (prior knowledge).
    pub fn h2(self, n: usize) -> Self {
        self.clients(Client::H2, n)
    }

    /// `n` clients that send one line per connection and read one line back.
    pub fn short_lines(self, n: usize) -> Self {
        self.clients(Client::ShortLines, n)
    }

    /// `n` clients that exchange lines back to back on long-lived connections.
    pub fn long_lines(self, n: usize) -> Self {
        self.clients(Client::LongLines, n)
    }

    /// `n` clients that exchange text messages back to back on long-lived WebSockets.
    pub fn websockets(self, n: usize) -> Self {
        self.clients(Client::WebSocket, n)
    }

    /// The path the HTTP clients request. Default: `/`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The path the WebSocket clients open their WebSockets on. Default: `/ws`.
    pub fn websocket_path(mut self, path: impl Into<String>) -> Self {
        self.websocket_path = path.into();
        self
    }

    /// The line the line clients send, without its newline, and the text of the WebSocket
    /// clients' messages. Default: `hello`.
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

    /// How long the clients run at most, even if they are not stopped. Default: 120 s.
    pub fn max_duration(mut self, duration: Duration) -> Self {
        self.max_duration = duration;
        self
    }

    /// How many exchanges each client makes at most. Default: ten million.
    pub fn max_exchanges(mut self, max: u64) -> Self {
        self.max_exchanges = max;
        self
    }

    /// The server names itself in every answer, as the example servers do: an HTTP body ends
    /// with ` <pid>` (`hello from 4242`), a line is answered with `<line> <pid>`, a WebSocket
    /// text message `<text>` with a text message `<text> <pid>`. An answer that does not is
    /// [`Failure::Torn`]; the pids are in [`Live`] and [`LoadReport::pids`].
    pub fn answers_name_pid(mut self) -> Self {
        self.pids = true;
        self
    }

    /// Keep every answered exchange's start and latency, for [`LoadReport::timings`]. Off by
    /// default: sixteen bytes per exchange.
    pub fn record_timings(mut self) -> Self {
        self.timings = true;
        self
    }

    /// Starts the clients against `addr` on the current Tokio runtime. They run until
    /// [`Running::stop`], the maximum duration, or their maximum number of exchanges; dropping
    /// the [`Running`] load aborts them.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn start(&self, addr: SocketAddr) -> Running {
        let (stop, stopped) = watch::channel(false);
        let live = Arc::new(Live::default());
        let epoch = Instant::now();
        let deadline = epoch + self.max_duration;
        let mut clients = JoinSet::new();
        let mut kinds = HashMap::new();
        for (&client, &n) in &self.clients {
            for id in 0..n {
                let run = Run {
                    client,
                    id,
                    addr,
                    path: self.path.clone(),
                    websocket_path: self.websocket_path.clone(),
                    line: self.line.clone(),
                    request_timeout: self.request_timeout,
                    deadline,
                    max_exchanges: self.max_exchanges,
                    pids: self.pids,
                    timings: self.timings,
                    epoch,
                    stopped: stopped.clone(),
                    live: live.clone(),
                };
                kinds.insert(clients.spawn(run.run()).id(), client);
            }
        }
        Running {
            count: clients.len(),
            clients,
            kinds,
            stop,
            live,
            epoch,
            warm_up: self.request_timeout + Duration::from_secs(1),
        }
    }

    /// Runs the clients against `addr` while `during` runs, then stops them at their next
    /// boundary. Before `during` starts, each client has finished one exchange (or the request
    /// timeout has run out), so the load is really on.
    pub(crate) async fn run<T>(
        &self,
        addr: SocketAddr,
        during: impl Future<Output = T>,
    ) -> LoadReport<T> {
        let running = self.start(addr);
        running.warmed_up().await;
        let outcome = during.await;
        running.stop().await.with_outcome(outcome)
    }
}

/// A load that runs; see [`Load::start`]. Dropping it aborts the clients.
#[derive(Debug)]
#[must_use = "the clients are aborted when this is dropped"]
pub struct Running {
    clients: JoinSet<(Client, Record)>,
    /// Which kind each client task is, for one that fails.
    kinds: HashMap<tokio::task::Id, Client>,
    count: usize,
    stop: watch::Sender<bool>,
    live: Arc<Live>,
    epoch: Instant,
    warm_up: Duration,
}

impl Running {
    /// The counters the clients update as they go.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// How many clients run.
    pub fn clients(&self) -> usize {
        self.count
    }

    /// Waits until each client has finished its first exchange, answered or not, for the
    /// request timeout and a second at most. Cancel safe.
    pub async fn warmed_up(&self) {
        let all = self.count;
        let _ = timeout(self.warm_up, self.live.wait_until(|l| l.settled() >= all)).await;
    }

    /// Stops every client once its current exchange is over (each is bounded by the request
    /// timeout), and gathers what they saw. Not cancel safe: dropping the future aborts the
    /// clients and loses the report.
    pub async fn stop(mut self) -> LoadReport<()> {
        let _ = self.stop.send(true);
        let elapsed = self.epoch.elapsed();
        let mut report = LoadReport::new(self.epoch, elapsed, self.count);
        while let Some(joined) = self.clients.join_next().await {
            match joined {
                Ok((client, record)) => report.add(client, record),
                Err(err) => {
                    let client = self.kinds.get(&err.id()).copied();
                    report.client_failed(client.unwrap_or(Client::ShortHttp), &err);
                }
            }
        }
        report.finish();
        report
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
    /// HTTP/2 `GET`s (prior knowledge) back to back on one connection at a time.
    H2,
    /// One line per connection.
    ShortLines,
    /// Lines back to back on long-lived connections.
    LongLines,
    /// Text messages back to back on long-lived WebSockets.
    WebSocket,
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Client::ShortHttp => "short-lived HTTP",
            Client::KeepAliveHttp => "keep-alive HTTP",
            Client::H2 => "HTTP/2",
            Client::ShortLines => "short-lived lines",
            Client::LongLines => "long-lived lines",
            Client::WebSocket => "WebSocket",
        })
    }
}
