//! The few reports an operator must never miss, made visible without a tracing subscriber.
//!
//! graceful reports everything through `tracing`. A server that installs no subscriber sees
//! none of it, and a deploy that failed (the new binary missing, crashing, never ready) would
//! leave an empty log while the old process serves on. So the places that report such a failure
//! also call [`alert`]: when no subscriber is installed for the calling thread, it writes the
//! message to stderr as one line prefixed `graceful:`. With a subscriber, it writes nothing; the
//! event reaches the subscriber as usual, once.
//!
//! Reserved for failures that need action: an upgrade that failed or was rolled back, an upgrade
//! signal ignored, graceful unable to start, connections abandoned at the end of a drain. Never
//! between `fork` and `exec` (it allocates and locks stderr).

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::subscriber::NoSubscriber;

/// Whether the note on where the full reports go has been written.
static EXPLAINED: AtomicBool = AtomicBool::new(false);

/// Writes `graceful: <message>` to stderr if no tracing subscriber would see the event that the
/// caller reports next to it; does nothing otherwise. The first such line is followed by a note
/// that the full reports go to `tracing`. Errors writing to stderr are ignored: there is nowhere
/// left to report them.
///
/// For graceful's own crates (the runtime adapters call it too); not part of the public API.
#[doc(hidden)]
pub fn alert(message: fmt::Arguments<'_>) {
    if !no_subscriber() {
        return;
    }
    // One write per line, so that lines from several threads or generations never interleave.
    let mut text = format!("graceful: {message}\n");
    if !EXPLAINED.swap(true, Ordering::Relaxed) {
        text.push_str(
            "graceful: (written to stderr because no tracing subscriber is installed; \
             graceful reports everything else through tracing only)\n",
        );
    }
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// An upgrade failed: the reason, and that this process serves on.
pub(crate) fn upgrade_failed(pid: u32, generation: u64, err: &crate::Error) {
    alert(format_args!(
        "upgrade failed; pid {pid} (generation {generation}) keeps serving: {err}"
    ));
}

/// The successor failed during its probation and this process took the service back.
pub(crate) fn rolled_back(pid: u32, successor: u32, reason: &str) {
    alert(format_args!(
        "rolled back: the new generation (pid {successor}) failed during its probation: \
         {reason}; pid {pid} serves again"
    ));
}

/// Whether events sent from this thread now go nowhere: neither a global subscriber nor one
/// set for this thread.
fn no_subscriber() -> bool {
    tracing::dispatcher::get_default(|dispatch| dispatch.is::<NoSubscriber>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scoped_subscriber_counts_as_installed() {
        // The test binary installs no global subscriber.
        assert!(no_subscriber());
        let subscriber = tracing::Dispatch::new(tracing_subscriber::fmt().finish());
        tracing::dispatcher::with_default(&subscriber, || assert!(!no_subscriber()));
        assert!(no_subscriber());
    }
}
