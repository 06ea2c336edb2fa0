//! `peer-ecdysis`, the ecdysis bench peer: it answers `GET /`, one SIGHUP starts a new
//! generation on the same socket that answers with its own pid, the old one reports
//! `successor=unknown` (ecdysis does not say) and drains, and SIGTERM stops the new one.

#[path = "support/servers.rs"]
mod servers;

#[test]
fn upgrades_on_sighup_and_stops_on_sigterm() {
    servers::upgrade_once(env!("CARGO_BIN_EXE_peer-ecdysis"), false);
}
