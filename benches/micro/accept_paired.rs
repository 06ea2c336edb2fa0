//! The accept comparison of `accept.rs`, paired, for a machine whose load drifts.
//!
//! criterion measures one arm after the other, so on a shared machine the load can change
//! between the raw arm and the graceful ones by more than the 2% being asked about. Here the
//! arms alternate in short blocks: each round runs [`BLOCK`] connections through each arm, in
//! an order that rotates from round to round, and compares each graceful arm with the raw arm
//! of the same round. The median of those per-round ratios, and the spread of its middle half,
//! is the figure; drift slower than a round cancels out.
//!
//! ```text
//! cargo bench -p graceful-benches --bench accept_paired
//! ```

#[path = "support.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use tokio::runtime::Runtime;

/// Rounds measured, after one discarded as a warm-up.
const ROUNDS: usize = 40;
/// Connections per arm per round: about 20 ms of work, short enough that the load barely
/// changes within a round.
const BLOCK: u64 = 500;

#[derive(Debug, Clone, Copy)]
enum Arm {
    Raw,
    Accept,
    Next,
}

impl Arm {
    const ALL: [Arm; 3] = [Arm::Raw, Arm::Accept, Arm::Next];

    fn name(self) -> &'static str {
        match self {
            Arm::Raw => "raw tokio TcpListener::accept",
            Arm::Accept => "graceful Listener::accept",
            Arm::Next => "graceful Listener as a Stream (next)",
        }
    }
}

/// The listeners under comparison.
struct Listeners {
    raw: tokio::net::TcpListener,
    raw_addr: SocketAddr,
    graceful: graceful::TcpListener,
    addr: SocketAddr,
}

impl Listeners {
    /// Connects, accepts and drops `BLOCK` connections through `arm`; the time per connection.
    fn block(&mut self, runtime: &Runtime, arm: Arm) -> Duration {
        let elapsed = match arm {
            Arm::Raw => support::time(runtime, BLOCK, async || {
                let (client, accepted) =
                    tokio::join!(support::connect(self.raw_addr), self.raw.accept());
                drop(accepted.expect("raw accept"));
                drop(client);
            }),
            Arm::Accept => support::time(runtime, BLOCK, async || {
                let (client, accepted) =
                    tokio::join!(support::connect(self.addr), self.graceful.accept());
                drop(accepted.expect("the graceful listener ended"));
                drop(client);
            }),
            Arm::Next => support::time(runtime, BLOCK, async || {
                let (client, accepted) =
                    tokio::join!(support::connect(self.addr), self.graceful.next());
                drop(accepted.expect("the graceful listener ended"));
                drop(client);
            }),
        };
        elapsed / BLOCK as u32
    }
}

fn main() {
    let runtime = support::runtime();
    let graceful = support::graceful(&runtime);
    let raw = runtime
        .block_on(tokio::net::TcpListener::bind(support::LOOPBACK))
        .expect("cannot bind the raw listener");
    let listener = runtime
        .block_on(graceful.listen(support::LOOPBACK))
        .expect("cannot create the graceful listener");
    graceful.ready().expect("graceful ready");
    let mut listeners = Listeners {
        raw_addr: raw.local_addr().expect("the raw listener's address"),
        raw,
        addr: listener
            .local_addr()
            .expect("the graceful listener's address"),
        graceful: listener,
    };

    // times[round][arm], in the order of Arm::ALL.
    let mut times = Vec::with_capacity(ROUNDS);
    for round in 0..=ROUNDS {
        let mut per_arm = [Duration::ZERO; 3];
        for offset in 0..Arm::ALL.len() {
            let index = (round + offset) % Arm::ALL.len();
            per_arm[index] = listeners.block(&runtime, Arm::ALL[index]);
        }
        if round > 0 {
            times.push(per_arm);
        }
    }

    println!(
        "accept, paired: {ROUNDS} rounds of {BLOCK} connections per arm, arms in rotating order"
    );
    let mut raw_times: Vec<f64> = times.iter().map(|t| t[0].as_secs_f64() * 1e6).collect();
    raw_times.sort_by(f64::total_cmp);
    println!(
        "{:<38} median {:.2} µs per connection (middle half of rounds {:.2} .. {:.2})",
        Arm::Raw.name(),
        quantile(&raw_times, 0.5),
        quantile(&raw_times, 0.25),
        quantile(&raw_times, 0.75),
    );
    for (index, arm) in Arm::ALL.iter().enumerate().skip(1) {
        let mut ratios: Vec<f64> = times
            .iter()
            .map(|t| (t[index].as_secs_f64() / t[0].as_secs_f64() - 1.0) * 100.0)
            .collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "{:<38} median {:+.2}% against raw in the same round (middle half {:+.2}% .. {:+.2}%)",
            arm.name(),
            quantile(&ratios, 0.5),
            quantile(&ratios, 0.25),
            quantile(&ratios, 0.75),
        );
    }
}

/// The `q` quantile of sorted values, by linear interpolation.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
}
