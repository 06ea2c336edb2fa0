//! For test harnesses and supervisors: start a server the way an upgrade would, and learn
//! what becomes of each of its generations.
//!
//! A harness (the `graceful-testing` crate) or a supervisor plays the generation before the
//! first: [`Handover`] starts the server with sockets it bound itself and waits until it is
//! ready ([`Started`]). If it also hands over a report channel
//! ([`Handover::report`]), every generation of that server reports on it what became of each
//! upgrade and drain ([`Report`]); runtime adapters send the end of their drain with
//! [`report_drained`]. A server not started by a harness sends nothing.
//!
//! None of this is needed to serve: a server uses [`Upgrader`] (or an adapter) alone.

pub use crate::handover::{Handover, Started};
pub use crate::report::Report;

use crate::drain::DrainReport;
use crate::upgrader::Upgrader;

/// Tells the test harness that started this server, if one did, how its drain ended
/// ([`Report::Drained`]). For runtime adapters, which call it at the end of their drain; does
/// nothing in a server not started by a harness, and never blocks.
pub fn report_drained(upgrader: &Upgrader, drain: &DrainReport) {
    upgrader.report(&Report::Drained {
        pid: upgrader.pid(),
        drain: *drain,
    });
}
