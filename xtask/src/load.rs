//! The demo's and the bench's loads: which of graceful-testing's clients each mode runs. The
//! clients, what they count as a failure or a reconnect, and their bounds are the engine's
//! (`graceful_testing::load`), the same as the tests'.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use graceful_testing::load::{Client, Live, Load as Engine, LoadReport, Running};
use tokio::runtime::Runtime;

/// How long a load runs at most if nobody stops it: longer than any demo or bench step.
const MAX_DURATION: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Short,
    KeepAlive,
    H2,
    /// Long-lived WebSockets against `http-server`'s `/ws`.
    Ws,
    Echo,
}

impl Mode {
    pub(crate) const ALL: [Mode; 5] =
        [Mode::Short, Mode::KeepAlive, Mode::H2, Mode::Ws, Mode::Echo];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Short => "short",
            Mode::KeepAlive => "keep-alive",
            Mode::H2 => "h2",
            Mode::Ws => "ws",
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

    /// Whether the server hands this mode's connections over to each new generation on their
    /// own connections (live hand-off), so that its clients never have to reconnect. HTTP
    /// requests' connections are wound down instead (`Connection: close`, GOAWAY).
    pub(crate) fn handed_over_live(self) -> bool {
        matches!(self, Mode::Ws | Mode::Echo)
    }

    /// What one request of this mode is, for tables.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Mode::Short => "HTTP/1.1, one request per connection",
            Mode::KeepAlive => "HTTP/1.1 keep-alive",
            Mode::H2 => "HTTP/2",
            Mode::Ws => "WebSocket echo, long-lived",
            Mode::Echo => "echo, long-lived line sessions",
        }
    }

    fn client(self) -> Client {
        match self {
            Mode::Short => Client::ShortHttp,
            Mode::KeepAlive => Client::KeepAliveHttp,
            Mode::H2 => Client::H2,
            Mode::Ws => Client::WebSocket,
            Mode::Echo => Client::LongLines,
        }
    }
}

/// A running load: `connections` clients of one mode against one address.
#[derive(Debug)]
pub(crate) struct Load {
    mode: Mode,
    running: Running,
}

impl Load {
    /// Starts the clients; every answer must name the pid that served it.
    pub(crate) fn start(
        runtime: &Runtime,
        mode: Mode,
        addr: &str,
        connections: usize,
    ) -> Result<Load, String> {
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| format!("the server's address {addr:?}: {e}"))?;
        let engine = Engine::none()
            .clients(mode.client(), connections)
            .answers_name_pid()
            .record_timings()
            .max_duration(MAX_DURATION);
        let _runtime = runtime.enter();
        Ok(Load {
            mode,
            running: engine.start(addr),
        })
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    pub(crate) fn live(&self) -> &Arc<Live> {
        self.running.live()
    }

    /// Stops every client once its current request is over, and gathers what they saw.
    pub(crate) fn finish(self, runtime: &Runtime) -> Report {
        Report {
            mode: self.mode,
            load: runtime.block_on(self.running.stop()),
        }
    }
}

/// Everything a load saw, once it has finished.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) mode: Mode,
    pub(crate) load: LoadReport<()>,
}
