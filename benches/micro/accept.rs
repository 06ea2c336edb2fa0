//! Accepting through the graceful listener against a raw tokio listener.
//!
//! Each iteration connects a client to 127.0.0.1, accepts the connection, and drops both ends:
//! the same work in every arm, so the difference between arms is what the graceful listener
//! adds per accept (a check of the stop token, a tracker token, the `TrackedStream` wrapper).
//! The kernel's share (the TCP handshake and teardown on loopback) dominates every arm.
//!
//! ```text
//! cargo bench -p graceful-benches --bench accept -- --measurement-time 3
//! ```

#[path = "support.rs"]
mod support;

use criterion::{Criterion, criterion_group, criterion_main};
use futures::StreamExt;

fn accept(c: &mut Criterion) {
    let runtime = support::runtime();
    let graceful = support::graceful(&runtime);
    let raw = runtime
        .block_on(tokio::net::TcpListener::bind(support::LOOPBACK))
        .expect("cannot bind the raw listener");
    let raw_addr = raw.local_addr().expect("the raw listener's address");
    let mut listener = runtime
        .block_on(graceful.listen(support::LOOPBACK))
        .expect("cannot create the graceful listener");
    let addr = listener
        .local_addr()
        .expect("the graceful listener's address");
    graceful.ready().expect("graceful ready");

    let mut group = c.benchmark_group("accept");
    group.bench_function("raw tokio TcpListener::accept", |b| {
        b.iter_custom(|iters| {
            support::time(&runtime, iters, async || {
                let (client, accepted) = tokio::join!(support::connect(raw_addr), raw.accept());
                let (served, _) = accepted.expect("raw accept");
                drop(served);
                drop(client);
            })
        });
    });
    group.bench_function("graceful Listener::accept", |b| {
        b.iter_custom(|iters| {
            support::time(&runtime, iters, async || {
                let (client, accepted) = tokio::join!(support::connect(addr), listener.accept());
                let (served, _) = accepted.expect("the graceful listener ended");
                drop(served);
                drop(client);
            })
        });
    });
    group.bench_function("graceful Listener as a Stream (next)", |b| {
        b.iter_custom(|iters| {
            support::time(&runtime, iters, async || {
                let (client, accepted) = tokio::join!(support::connect(addr), listener.next());
                let served = accepted.expect("the graceful listener ended");
                drop(served);
                drop(client);
            })
        });
    });
    group.finish();
}

criterion_group!(benches, accept);
criterion_main!(benches);
