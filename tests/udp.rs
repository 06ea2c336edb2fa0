//! The echo server's UDP socket as real processes: across upgrades, every datagram is answered,
//! and once a newer generation has answered, no older one answers again (the socket does not
//! split between generations); a generation that dies on probation gives the datagrams back to
//! its parent.
#![cfg(target_os = "linux")]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{STEP, Server};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const SERVER: &str = env!("CARGO_BIN_EXE_echo-server");
/// Upgrades in the split test.
const UPGRADES: usize = 4;
/// How many datagrams each new generation answers before the next upgrade: long enough for a
/// previous generation that kept reading to be seen doing it.
const PER_GENERATION: usize = 200;

/// The UDP address the first generation printed (`udp pid=… addr=…`); later ones inherit it.
fn udp_addr(server: &Server) -> SocketAddr {
    let prefix = format!("udp pid={} addr=", server.pid());
    server
        .output()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("the server printed no {prefix:?} line"))
}

/// A client socket that asks the server at `addr`, one datagram at a time.
async fn client(addr: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(addr).await.unwrap();
    socket
}

/// Sends `text` and returns the pid that answered it; each answer must be to this very
/// datagram, and come within [`STEP`].
async fn ask(socket: &UdpSocket, text: &str) -> Result<u32, String> {
    socket
        .send(text.as_bytes())
        .await
        .map_err(|e| format!("sending {text:?}: {e}"))?;
    let mut buf = [0u8; 256];
    let len = tokio::time::timeout(STEP, socket.recv(&mut buf))
        .await
        .map_err(|_| format!("no answer to {text:?} within {STEP:?}"))?
        .map_err(|e| format!("receiving the answer to {text:?}: {e}"))?;
    let answer = String::from_utf8_lossy(&buf[..len]);
    answer
        .strip_prefix(text)
        .and_then(|pid| pid.trim().parse().ok())
        .ok_or_else(|| format!("{answer:?} does not answer {text:?}"))
}

/// Asks, one datagram after the other, until told to stop; publishes the pid that answered
/// each, in order. Ends with an error at the first datagram left unanswered.
struct Asking {
    answers: watch::Receiver<Vec<u32>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<Result<(), String>>,
}

impl Asking {
    async fn start(addr: SocketAddr) -> Asking {
        let socket = client(addr).await;
        let (answers_tx, answers) = watch::channel(Vec::new());
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let pid = ask(&socket, &format!("datagram {n}")).await?;
                    answers_tx.send_modify(|answers| answers.push(pid));
                    n += 1;
                }
                Ok(())
            }
        });
        Asking {
            answers,
            stop,
            task,
        }
    }

    /// Waits until `pid` has answered `count` datagrams; fails if the client failed first.
    async fn wait_answered(&mut self, pid: u32, count: usize) {
        let answered = |answers: &Vec<u32>| answers.iter().filter(|&&p| p == pid).count() >= count;
        tokio::select! {
            waited = tokio::time::timeout(STEP, self.answers.wait_for(answered)) => {
                waited.unwrap_or_else(|_| {
                    panic!("waited {STEP:?} for pid {pid} to answer {count} datagrams")
                })
                .expect("the client publishes its answers");
            }
            ended = &mut self.task => panic!("the client ended first: {ended:?}"),
        }
    }

    /// Stops asking; returns the pid that answered each datagram, in order.
    async fn finish(self) -> Vec<u32> {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(STEP, self.task)
            .await
            .unwrap_or_else(|_| panic!("waited {STEP:?} for the client to stop"))
            .unwrap()
            .unwrap_or_else(|err| panic!("a datagram was not answered: {err}"));
        self.answers.borrow().clone()
    }
}

/// A client asks without pause while the server is upgraded four times; each new generation
/// answers a few hundred datagrams before the next upgrade, while its predecessor is still
/// alive and holds the same socket (on probation, then draining). Every datagram is answered,
/// and each generation answers.
///
/// The new generation reads only once the old one has said it paused (`paused` on the
/// readiness link), and the client asks one datagram at a time: so once the new generation has
/// answered, the old one answers nothing more. And once the harness hears that an upgrade is
/// done, the old generation has paused (it reports the upgrade after pausing): from the next
/// datagram on, it answers none (see `crates/tokio-adapter/src/udp.rs`).
#[tokio::test]
async fn datagrams_move_to_each_new_generation_and_never_back() {
    let server = Server::start(SERVER, &["--udp", "127.0.0.1:0"]).await;
    let addr = udp_addr(&server);
    let mut generations = vec![server.pid()];
    // For each replaced generation, the first datagram sent after its pause was in effect.
    let mut paused_from = Vec::new();
    let mut asking = Asking::start(addr).await;
    asking.wait_answered(server.pid(), PER_GENERATION).await;
    for _ in 0..UPGRADES {
        let upgraded = server
            .harness()
            .upgrade()
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        // The datagram in flight now may have been read before the pause: the next one not.
        paused_from.push(asking.answers.borrow().len() + 1);
        generations.push(upgraded.pid);
        asking.wait_answered(upgraded.pid, PER_GENERATION).await;
    }
    let answers = asking.finish().await;

    let rank = |pid: u32| {
        generations
            .iter()
            .position(|&g| g == pid)
            .unwrap_or_else(|| panic!("pid {pid} answered, but is no generation"))
    };
    let mut counts = vec![0usize; generations.len()];
    for &pid in &answers {
        counts[rank(pid)] += 1;
    }
    // How many datagrams each old generation answered after its successor's first answer.
    let window: Vec<usize> = (0..UPGRADES)
        .map(|old| {
            let successor_first = answers.iter().position(|&p| rank(p) == old + 1);
            successor_first.map_or(0, |first| {
                answers[first..].iter().filter(|&&p| rank(p) == old).count()
            })
        })
        .collect();
    eprintln!(
        "{} datagrams answered; by generation: {counts:?}; answered by an old generation \
         after its successor's first answer: {window:?}",
        answers.len()
    );
    assert_eq!(
        window,
        vec![0; UPGRADES],
        "an old generation answered after its successor had; by generation: {counts:?}"
    );
    assert!(
        counts.iter().all(|&count| count > 0),
        "every generation answered: {counts:?} ({generations:?})"
    );
    for (index, &pid) in answers.iter().enumerate() {
        let generation = rank(pid);
        if let Some(&paused) = paused_from.get(generation) {
            assert!(
                index < paused,
                "datagram {index} was answered by pid {pid}, which had paused from datagram \
                 {paused} on, when its successor was ready; by generation: {counts:?}"
            );
        }
    }
}

/// A new generation killed right after it reported ready: its parent, on probation, takes the
/// service back and reads the socket again. A datagram sent after the kill, while no one reads,
/// waits in the socket's queue and is answered by the parent.
#[tokio::test]
async fn a_successor_killed_on_probation_gives_the_datagrams_back() {
    let server = Server::start(SERVER, &["--udp", "127.0.0.1:0", "--probation", "30s"]).await;
    let addr = udp_addr(&server);
    let old = server.pid();
    let socket = client(addr).await;
    assert_eq!(ask(&socket, "before").await, Ok(old));

    let upgraded = server
        .harness()
        .upgrade()
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        ask(&socket, "upgraded").await,
        Ok(upgraded.pid),
        "the new generation answers once it is ready"
    );
    kill(Pid::from_raw(upgraded.pid as i32), Signal::SIGKILL).unwrap();
    // Killed: it reads nothing from here on, and its parent is paused until the rollback.
    socket.send(b"while nobody reads").await.unwrap();
    let mut buf = [0u8; 256];
    let len = tokio::time::timeout(STEP, socket.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no answer within {STEP:?} to the datagram sent after the kill"))
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&buf[..len]),
        format!("while nobody reads {old}"),
        "the parent answers what waited in the queue"
    );
    // The harness hears of the rollback on its report channel, perhaps after the answer.
    let deadline = tokio::time::Instant::now() + STEP;
    while server.rollbacks().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {STEP:?} for the rollback report"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let rollbacks = server.rollbacks();
    assert_eq!(
        rollbacks.len(),
        1,
        "the parent took the service back: {rollbacks:?}"
    );
    assert_eq!((rollbacks[0].pid, rollbacks[0].from), (old, upgraded.pid));
    assert_eq!(ask(&socket, "after").await, Ok(old));
}
