//! A one-shot event that synchronous code can wait for and asynchronous code can subscribe to.
//!
//! The core has no runtime. Adapters turn an [`Event`] into their own primitive with
//! [`Event::on_set`] (the tokio adapter cancels a `CancellationToken` there).

use std::fmt;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

type Callback = Box<dyn FnOnce() + Send>;

/// Something that happens at most once in the life of a process, such as "this process has been
/// replaced".
///
/// Once set, an event stays set. The callbacks registered with [`on_set`](Event::on_set) have
/// run by the time a waiter wakes or [`is_set`](Event::is_set) says so: a process that exits as
/// soon as it sees the event does not cut them short.
pub struct Event {
    state: Mutex<State>,
    cond: Condvar,
}

#[derive(Default)]
struct State {
    set: bool,
    /// Being set: its callbacks are running.
    setting: bool,
    callbacks: Vec<Callback>,
}

impl Event {
    pub(crate) fn new() -> Event {
        Event {
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
        }
    }

    /// Whether the event has happened.
    pub fn is_set(&self) -> bool {
        self.lock().set
    }

    /// Blocks the calling thread until the event happens.
    pub fn wait(&self) {
        let state = self.lock();
        drop(
            self.cond
                .wait_while(state, |s| !s.set)
                .unwrap_or_else(PoisonError::into_inner),
        );
    }

    /// Blocks until the event happens or `timeout` runs out; returns whether it happened.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !state.set {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .cond
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Runs `callback` once when the event happens, on the thread that sets it; at once, on
    /// this thread, if it has happened already. The callback must not block.
    pub fn on_set(&self, callback: impl FnOnce() + Send + 'static) {
        let mut state = self.lock();
        if state.set {
            drop(state);
            callback();
        } else {
            state.callbacks.push(Box::new(callback));
        }
    }

    /// Sets the event; returns false if it was set already. Runs the callbacks first, then
    /// wakes the waiters.
    pub(crate) fn set(&self) -> bool {
        let mut state = self.lock();
        if state.set || state.setting {
            return false;
        }
        state.setting = true;
        // Callbacks registered while these run are queued, and run below.
        loop {
            let callbacks = std::mem::take(&mut state.callbacks);
            if callbacks.is_empty() {
                break;
            }
            drop(state);
            for callback in callbacks {
                callback();
            }
            state = self.lock();
        }
        state.set = true;
        drop(state);
        self.cond.notify_all();
        true
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn callbacks_run_once_whether_registered_before_or_after() {
        let event = Event::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        event.on_set(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        assert!(!event.wait_timeout(Duration::ZERO));
        assert!(event.set());
        assert!(!event.set());
        let c = calls.clone();
        event.on_set(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(event.is_set());
    }

    #[test]
    fn wait_returns_when_set_from_another_thread() {
        let event = Arc::new(Event::new());
        let setter = {
            let event = event.clone();
            std::thread::spawn(move || event.set())
        };
        event.wait();
        assert!(setter.join().unwrap());
    }
}
