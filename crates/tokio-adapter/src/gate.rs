//! Whether this generation accepts: one switch for all of the process's listeners and UDP
//! sockets.
//!
//! Invariants:
//! - Nothing is accepted before this generation is ready. A generation whose readiness fails
//!   (its PID file cannot be written) has accepted nothing, so nothing is accepted and then
//!   dropped: connections wait in the shared backlog for a generation that serves.
//! - Once a successor is ready, accepting pauses: the sockets stay open, so that the service
//!   can come back here if the successor dies during the probation. Only when the replacement
//!   is final, or on a stop, does every listener end.
//! - A listener waiting at the gate is woken by every change, so a pause, a resume or the end
//!   takes effect at once, not at the next connection.
//! - Setting the gate waits for a UDP read in progress: a receive borrows the state, which
//!   holds the watch channel's read lock, for the length of its non-blocking read (`udp.rs`).
//!   Nothing that sets the gate may run under such a borrow.
//! - The gate counts the application's listeners that can still accept: a generation whose
//!   listeners have all been dropped cannot take the service back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::sync::watch;

/// Where the gate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accepting {
    /// Not ready yet: wait (or report readiness, if the listener may).
    NotReady,
    /// Accept.
    Open,
    /// A successor serves, on probation: do not accept, but keep the socket.
    Paused,
    /// Replaced for good, or stopping: the listener ends.
    Closed,
}

/// The switch, owned by the process's handle.
#[derive(Debug)]
pub(crate) struct Gate {
    state: watch::Sender<Accepting>,
    listeners: Arc<AtomicUsize>,
}

impl Gate {
    pub(crate) fn new() -> Gate {
        Gate {
            state: watch::Sender::new(Accepting::NotReady),
            listeners: Arc::default(),
        }
    }

    #[cfg(test)]
    fn state(&self) -> Accepting {
        *self.state.borrow()
    }

    /// Moves the gate to `to`, unless it is closed already: closed is for good.
    pub(crate) fn set(&self, to: Accepting) {
        self.state.send_if_modified(|state| {
            if *state == Accepting::Closed || *state == to {
                return false;
            }
            *state = to;
            true
        });
    }

    /// Opens a gate that is still waiting for readiness.
    pub(crate) fn open_if_not_ready(&self) {
        self.state.send_if_modified(|state| {
            if *state != Accepting::NotReady {
                return false;
            }
            *state = Accepting::Open;
            true
        });
    }

    /// Completes once the gate has left [`Accepting::NotReady`]: this generation reported
    /// ready. Cancel safe.
    pub(crate) async fn reported_ready(&self) {
        let mut state = self.state.subscribe();
        // The sender lives as long as the handle that owns this gate, so this cannot fail.
        let _ = state.wait_for(|s| *s != Accepting::NotReady).await;
    }

    /// A watcher for one listener; `counted` for the application's listeners, which decide
    /// whether this generation can serve again.
    pub(crate) fn watch(&self, counted: bool) -> GateWatch {
        if counted {
            self.listeners.fetch_add(1, Ordering::SeqCst);
        }
        GateWatch {
            state: self.state.subscribe(),
            counted: counted.then(|| self.listeners.clone()),
            changed: None,
            seen: Accepting::NotReady,
        }
    }

    /// How many of the application's listeners still exist.
    pub(crate) fn listeners(&self) -> usize {
        self.listeners.load(Ordering::SeqCst)
    }
}

type Changed = Pin<Box<dyn Future<Output = bool> + Send + Sync>>;

/// One listener's view of the gate.
pub(crate) struct GateWatch {
    state: watch::Receiver<Accepting>,
    counted: Option<Arc<AtomicUsize>>,
    /// Completes at the next change of the gate; `false` when the handle has gone.
    changed: Option<Changed>,
    seen: Accepting,
}

impl GateWatch {
    /// A receiver of the gate's state, for waits that hold only `&self`: several tasks may
    /// receive from one UDP socket at once, and each needs its own wake-up at a change.
    pub(crate) fn receiver(&self) -> watch::Receiver<Accepting> {
        self.state.clone()
    }

    /// Where the gate stands; registers `cx` to be woken at its next change.
    pub(crate) fn poll_state(&mut self, cx: &mut Context<'_>) -> Accepting {
        loop {
            let changed = self.changed.get_or_insert_with(|| {
                let mut state = self.state.clone();
                // Read and marked seen here, so a change after this read completes `changed`.
                self.seen = *state.borrow_and_update();
                Box::pin(async move { state.changed().await.is_ok() })
            });
            match changed.as_mut().poll(cx) {
                Poll::Pending => return self.seen,
                Poll::Ready(true) => self.changed = None,
                // The handle has gone: nothing will open the gate again.
                Poll::Ready(false) => {
                    self.changed = Some(Box::pin(std::future::pending()));
                    self.seen = Accepting::Closed;
                    return self.seen;
                }
            }
        }
    }
}

impl Drop for GateWatch {
    fn drop(&mut self) {
        if let Some(listeners) = &self.counted {
            listeners.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl std::fmt::Debug for GateWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateWatch")
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn every_change_wakes_a_waiting_listener_and_closed_is_for_good() {
        let gate = Gate::new();
        let mut watch = gate.watch(true);
        let (waker, woken) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(watch.poll_state(&mut cx), Accepting::NotReady);
        let mut expected_wakes = 0;
        for to in [
            Accepting::Open,
            Accepting::Paused,
            Accepting::Open,
            Accepting::Closed,
        ] {
            gate.set(to);
            expected_wakes += 1;
            assert_eq!(
                woken.load(Ordering::SeqCst),
                expected_wakes,
                "woken by {to:?}"
            );
            assert_eq!(watch.poll_state(&mut cx), to);
        }
        gate.set(Accepting::Open);
        assert_eq!(watch.poll_state(&mut cx), Accepting::Closed);
        assert_eq!(
            woken.load(Ordering::SeqCst),
            expected_wakes,
            "no change, no wake"
        );
    }

    #[test]
    fn only_counted_watchers_are_listeners() {
        let gate = Gate::new();
        let app = gate.watch(true);
        let control = gate.watch(false);
        assert_eq!(gate.listeners(), 1);
        drop(control);
        assert_eq!(gate.listeners(), 1);
        drop(app);
        assert_eq!(gate.listeners(), 0);
    }

    #[test]
    fn readiness_opens_only_a_waiting_gate() {
        let gate = Gate::new();
        gate.open_if_not_ready();
        assert_eq!(gate.state(), Accepting::Open);
        gate.set(Accepting::Paused);
        gate.open_if_not_ready();
        assert_eq!(gate.state(), Accepting::Paused);
    }

    fn counting_waker() -> (Waker, Arc<AtomicUsize>) {
        struct Count(Arc<AtomicUsize>);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(AtomicUsize::new(0));
        (Waker::from(Arc::new(Count(count.clone()))), count)
    }
}
