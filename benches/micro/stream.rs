//! Reading and writing through a `TrackedStream` against a raw `TcpStream`.
//!
//! Each iteration is one ping-pong over an established loopback connection: the server's end
//! writes a buffer that the client reads, then the client writes it back and the server's end
//! reads it. In one arm the server's end is the `TrackedStream` the graceful listener accepted,
//! in the other the `TcpStream` a raw tokio listener accepted. Writes and reads run joined, so a
//! write that does not fit the socket buffer at once cannot stall the iteration.
//!
//! ```text
//! cargo bench -p graceful-benches --bench stream -- --measurement-time 3
//! ```

#[path = "support.rs"]
mod support;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The sizes exchanged: a small request, and a buffer larger than a typical TCP segment.
const SIZES: [usize; 2] = [64, 16 * 1024];

/// One round trip of `out.len()` bytes each way between `server` and `client`.
async fn ping_pong(
    server: &mut (impl AsyncRead + AsyncWrite + Unpin),
    client: &mut TcpStream,
    out: &[u8],
    back: &mut [u8],
) {
    let (written, read) = tokio::join!(server.write_all(out), client.read_exact(back));
    written.expect("server write");
    read.expect("client read");
    let (written, read) = tokio::join!(client.write_all(out), server.read_exact(back));
    written.expect("client write");
    read.expect("server read");
}

fn stream(c: &mut Criterion) {
    let runtime = support::runtime();
    let graceful = support::graceful(&runtime);
    let (mut raw_server, mut raw_client) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(support::LOOPBACK)
            .await
            .expect("cannot bind the raw listener");
        let addr = listener.local_addr().expect("the raw listener's address");
        let (client, accepted) = tokio::join!(support::connect(addr), listener.accept());
        let (server, _) = accepted.expect("raw accept");
        server.set_nodelay(true).expect("TCP_NODELAY");
        (server, client)
    });
    let (mut tracked_server, mut tracked_client) = runtime.block_on(async {
        let mut listener = graceful
            .listen(support::LOOPBACK)
            .await
            .expect("cannot create the graceful listener");
        let addr = listener
            .local_addr()
            .expect("the graceful listener's address");
        let (client, accepted) = tokio::join!(support::connect(addr), listener.accept());
        let (server, _) = accepted.expect("the graceful listener ended");
        server.get_ref().set_nodelay(true).expect("TCP_NODELAY");
        (server, client)
    });

    let mut group = c.benchmark_group("ping-pong");
    for size in SIZES {
        let out = vec![0x5a; size];
        let mut back = vec![0; size];
        group.throughput(Throughput::Bytes(2 * size as u64));
        group.bench_function(BenchmarkId::new("raw TcpStream", size), |b| {
            b.iter_custom(|iters| {
                support::time(&runtime, iters, async || {
                    ping_pong(&mut raw_server, &mut raw_client, &out, &mut back).await;
                })
            });
        });
        group.bench_function(BenchmarkId::new("TrackedStream", size), |b| {
            b.iter_custom(|iters| {
                support::time(&runtime, iters, async || {
                    ping_pong(&mut tracked_server, &mut tracked_client, &out, &mut back).await;
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, stream);
criterion_main!(benches);
