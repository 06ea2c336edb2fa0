#![allow(dead_code)] // each server uses a part of it

//! What the bench's hyper servers share, so that they differ only in how they survive an
//! upgrade: the service (`GET /` answers `hello from <pid>`, like the examples; anything else is
//! a 404) and the lines each generation prints on stdout, in the examples' formats
//! (`examples/common/server.rs`), so that one script drives every server alike:
//!
//! ```text
//! ready pid=4242 generation=1 addr=127.0.0.1:8080
//! stopped pid=4242 successor=4250            (or successor=none after SIGTERM, or unknown)
//! exited pid=4242 open_at_start=50 abandoned=0 outcome=Drained
//! ```

use std::convert::Infallible;
use std::fmt::Display;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};

/// The service of every bench server: `GET /` answers `hello from <pid>`.
///
/// Use it as `hyper::service::service_fn(peer::hello)`.
pub(crate) async fn hello(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() == Method::GET && request.uri().path() == "/" {
        let body = format!("hello from {}", std::process::id());
        Ok(Response::new(Full::new(Bytes::from(body))))
    } else {
        let mut response = Response::new(Full::new(Bytes::from_static(b"not found")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        Ok(response)
    }
}

/// Who replaced a generation that stopped accepting.
pub(crate) enum Successor {
    /// The successor's pid.
    Pid(u32),
    /// Replaced, but the library does not say by whom.
    Unknown,
    /// Not replaced: told to stop.
    None,
}

impl Display for Successor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Successor::Pid(pid) => write!(f, "{pid}"),
            Successor::Unknown => f.write_str("unknown"),
            Successor::None => f.write_str("none"),
        }
    }
}

/// `ready pid=… generation=… addr=…`, once this generation serves.
pub(crate) fn print_ready(generation: u64, addr: impl Display) {
    println!(
        "ready pid={} generation={generation} addr={addr}",
        std::process::id()
    );
}

/// `stopped pid=… successor=…`, once this generation has stopped accepting.
pub(crate) fn print_stopped(successor: Successor) {
    println!("stopped pid={} successor={successor}", std::process::id());
}

/// `exited pid=… open_at_start=… abandoned=… outcome=…`, once this generation has drained;
/// `outcome` is `Drained` or `Deadline`, as graceful's `DrainOutcome` prints them.
pub(crate) fn print_exited(open_at_start: usize, abandoned: usize, outcome: impl Display) {
    println!(
        "exited pid={} open_at_start={open_at_start} abandoned={abandoned} outcome={outcome}",
        std::process::id()
    );
}
