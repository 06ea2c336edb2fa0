//! The process's installed handle, behind the crate's free functions.
//!
//! Invariants:
//! - Only [`Builder::install`](crate::Builder::install) and the `listen` family (with `udp`)
//!   create it;
//!   every other function uses what is installed, and nothing installs as a side effect (an
//!   early `upgrade_requested()` does not take the process's sockets or its signals).
//! - A failed installation that took the process's inherited descriptors is final: the failure
//!   is remembered and returned by every later call that needs the handle, never retried (a
//!   retry could claim descriptor numbers that belong to something else by then). One that
//!   failed before (no runtime, a signal handler refused) took nothing and may be tried again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use graceful_core::{Error, Result};

use crate::builder::{Builder, Failed};
use crate::handle::Graceful;

/// What the one installation gave.
enum Installed {
    Handle(Graceful),
    /// Why it failed, as first reported.
    Failed(String),
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();
/// Held while installing, so that two threads never both build.
static INSTALLING: Mutex<()> = Mutex::new(());

/// Installs the handle that `build` makes, unless one was installed (or failed for good).
pub(crate) fn install(
    build: impl FnOnce() -> std::result::Result<Graceful, Failed>,
) -> Result<Graceful> {
    let _installing = INSTALLING.lock().unwrap_or_else(PoisonError::into_inner);
    if INSTALLED.get().is_some() {
        return Err(Error::AlreadyCreated {
            pid: std::process::id(),
        });
    }
    let (installed, result) = match build() {
        Ok(graceful) => (Installed::Handle(graceful.clone()), Ok(graceful)),
        Err(Failed {
            error,
            spent: false,
        }) => return Err(error),
        Err(Failed { error, spent: true }) => (Installed::Failed(error.to_string()), Err(error)),
    };
    if INSTALLED.set(installed).is_err() {
        unreachable!("set once, under the installing lock");
    }
    result
}

/// The installed handle.
pub(crate) fn installed() -> Result<Graceful> {
    match INSTALLED.get() {
        Some(Installed::Handle(graceful)) => Ok(graceful.clone()),
        Some(Installed::Failed(reason)) => Err(Error::Unavailable {
            reason: format!("installing it failed: {reason}"),
        }),
        None => Err(Error::Unavailable {
            reason: "nothing installed it; call graceful::listen or graceful::Builder::install \
                     first"
                .into(),
        }),
    }
}

/// The installed handle, or one installed now with the defaults: for the `listen` family and
/// `udp`.
pub(crate) fn installed_or_default() -> Result<Graceful> {
    if INSTALLED.get().is_none() {
        match install(|| Builder::new().build()) {
            Ok(graceful) => return Ok(graceful),
            // Another thread installed one meanwhile, or failed for good: `installed()` says.
            Err(Error::AlreadyCreated { .. }) => {}
            Err(err) if INSTALLED.get().is_some() => drop(err),
            // Nothing was taken; the next call tries again.
            Err(err) => return Err(err),
        }
    }
    installed()
}

/// The installed handle for the free functions that have no error to return; says once why
/// there is none.
pub(crate) fn current() -> Option<Graceful> {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    match installed() {
        Ok(graceful) => Some(graceful),
        Err(err) => {
            if !REPORTED.swap(true, Ordering::SeqCst) {
                tracing::error!(%err, "upgrades are unavailable");
                graceful_core::alert(format_args!("upgrades are unavailable: {err}"));
            }
            None
        }
    }
}
