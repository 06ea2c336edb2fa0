//! `graceful-hyper-server`, the bench's hyper service through `graceful::serve`: it answers
//! `GET /`, one SIGHUP starts a new generation on the same socket that answers with its own
//! pid, the old one names it as its successor and drains, and SIGTERM stops the new one.

#[path = "support/servers.rs"]
mod servers;

#[test]
fn upgrades_on_sighup_and_stops_on_sigterm() {
    servers::upgrade_once(env!("CARGO_BIN_EXE_graceful-hyper-server"), true);
}
