//! What tracking a connection costs, with no I/O: creating and dropping a tracked connection
//! (`Graceful::track` of an integer standing in for the connection; its `ConnectionGuard` holds
//! a tracker token), reading the count (`Graceful::connections`), and the per-connection watch
//! on `upgrade_requested()` that a server polls at its boundaries. Each is measured with no
//! other connection open and with 10 000 held open, to show that the cost does not grow with
//! the count.
//!
//! ```text
//! cargo bench -p graceful-benches --bench tracking -- --measurement-time 3
//! ```

#[path = "support.rs"]
mod support;

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::Context;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// How many tracked connections are held open in the second round.
const HELD: usize = 10_000;

fn tracking(c: &mut Criterion) {
    let runtime = support::runtime();
    let graceful = support::graceful(&runtime);
    let mut held = Vec::new();
    let mut group = c.benchmark_group("tracking");
    for open in [0, HELD] {
        held.resize_with(open, || graceful.track(0_u64));
        assert_eq!(graceful.connections(), open);

        group.bench_function(BenchmarkId::new("track + drop", open), |b| {
            b.iter(|| drop(black_box(graceful.track(black_box(0_u64)))));
        });
        group.bench_function(BenchmarkId::new("connections()", open), |b| {
            b.iter(|| black_box(&graceful).connections());
        });
        group.bench_function(
            BenchmarkId::new("upgrade_requested() + first poll + drop", open),
            |b| {
                let mut cx = Context::from_waker(futures::task::noop_waker_ref());
                assert!(
                    pin!(graceful.upgrade_requested())
                        .poll(&mut cx)
                        .is_pending()
                );
                b.iter(|| {
                    let mut requested = pin!(black_box(&graceful).upgrade_requested());
                    black_box(requested.as_mut().poll(&mut cx))
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, tracking);
criterion_main!(benches);
