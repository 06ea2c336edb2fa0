//! The harness against servers written here: each test runs this binary again as its server
//! (`Harness::this_test`), so a server can be well-behaved or broken in exactly one way.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use graceful_testing::{Client, Error, Harness, Load, is_server};
use graceful_tokio::{DrainOutcome, Graceful, TrackedStream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long a connection accepted just before an upgrade may take to send its first line.
const FIRST_LINE_GRACE: Duration = Duration::from_secs(2);

/// A line server: each line is answered with the line and the pid. Once replaced, it finishes
/// the line it is on, then closes each connection at that boundary. It logs to stderr.
async fn serve(builder: graceful_tokio::Builder) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let graceful = builder.install().expect("install graceful");
    let mut listener = graceful.listen("127.0.0.1:0").await.expect("listen");
    graceful.ready().expect("ready");
    while let Some(conn) = listener.next().await {
        tokio::spawn(answer(conn, graceful.clone()));
    }
    graceful.drain(Duration::from_secs(10)).await;
}

async fn answer(conn: TrackedStream<TcpStream>, graceful: Graceful) {
    let pid = std::process::id();
    let mut conn = BufReader::new(conn);
    let upgrade = graceful.upgrade_requested();
    tokio::pin!(upgrade);
    let mut answered = 0;
    loop {
        let boundary = async {
            upgrade.as_mut().await;
            if answered == 0 {
                tokio::time::sleep(FIRST_LINE_GRACE).await;
            }
        };
        tokio::select! {
            biased;
            available = conn.fill_buf() => match available {
                Ok([]) | Err(_) => return,
                Ok(_) => {}
            },
            () = boundary => break,
        }
        let mut line = String::new();
        match conn.read_line(&mut line).await {
            Ok(_) if line.ends_with('\n') => {}
            _ => return,
        }
        let reply = format!("{} {pid}\n", line.trim_end());
        if conn.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        answered += 1;
    }
    // Half-close, then discard until the client closes: closing with unread data would reset.
    if conn.shutdown().await.is_ok() {
        let mut sink = [0u8; 256];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// One line to the server, its answer back.
async fn ask(harness: &Harness, line: &str) -> String {
    let mut conn = BufReader::new(TcpStream::connect(harness.addr()).await.unwrap());
    conn.write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    conn.read_line(&mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn upgrades_under_load_are_reported_generation_by_generation() {
    if is_server() {
        return serve(graceful_tokio::Builder::new()).await;
    }
    let harness = Harness::this_test("upgrades_under_load_are_reported_generation_by_generation")
        .load(Load::lines())
        .start()
        .await
        .unwrap();
    let first = harness.pid();
    assert_eq!(ask(&harness, "hi").await, format!("hi {first}\n"));

    let report = harness
        .under_load(|| async {
            let mut upgrades = Vec::new();
            for _ in 0..2 {
                upgrades.push(harness.upgrade().await?);
            }
            Ok::<_, Error>(upgrades)
        })
        .await;
    let upgrades = report.outcome.as_ref().unwrap();
    assert_eq!(report.failures(), 0, "{report}");
    assert!(report.tally(Client::ShortLines).ok > 0, "{report}");
    assert!(
        report.tally(Client::LongLines).reconnects >= 2,
        "each long-lived client was moved at least once: {report}"
    );
    assert_eq!((upgrades[0].from, upgrades[0].generation), (first, 2));
    assert_eq!(upgrades[1].from, upgrades[0].pid);
    assert_eq!((harness.pid(), harness.generation()), (upgrades[1].pid, 3));
    assert_eq!(
        ask(&harness, "now").await,
        format!("now {}\n", harness.pid())
    );

    let replaced = harness.wait_exited(first).await.unwrap();
    assert_eq!(replaced.successor(), Some(upgrades[0].pid));
    assert!(replaced.drain_time().is_some(), "{replaced}");

    let generations = harness.stop().await.unwrap();
    assert_eq!(generations.len(), 3);
    for (number, generation) in (1..).zip(&generations) {
        assert_eq!(generation.number(), number);
        assert!(
            generation.status().is_some_and(|s| s.success()),
            "{generation}\n{}",
            harness.output()
        );
        let drain = generation.drain().expect("every generation drained");
        assert_eq!(drain.abandoned, 0, "{generation}");
        assert_eq!(drain.outcome, DrainOutcome::Drained, "{generation}");
    }
    assert!(generations[2].successor().is_none() && generations[2].drain_time().is_none());
}

#[tokio::test]
async fn a_server_that_never_calls_ready_is_a_readiness_timeout() {
    if is_server() {
        let _listener = graceful_tokio::listen("127.0.0.1:0").await.unwrap();
        println!("listening, but never ready");
        return std::future::pending().await;
    }
    let err = Harness::this_test("a_server_that_never_calls_ready_is_a_readiness_timeout")
        .ready_timeout(Duration::from_secs(1))
        .start()
        .await
        .unwrap_err();
    let Error::NotReady { pid, timeout, .. } = &err else {
        panic!("expected a readiness timeout, got {err}");
    };
    assert_eq!(*timeout, Duration::from_secs(1));
    let message = err.to_string();
    assert!(
        message.starts_with("readiness timeout: the server")
            && message.contains("did not call graceful::ready() within 1s, so it was killed"),
        "{message}"
    );
    assert!(message.contains("listening, but never ready"), "{message}");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "killed and reaped"
    );
}

#[tokio::test]
async fn a_server_that_exits_before_ready_is_reported_with_its_status_and_output() {
    if is_server() {
        eprintln!("bad configuration: no database");
        std::process::exit(3);
    }
    let err = Harness::this_test(
        "a_server_that_exits_before_ready_is_reported_with_its_status_and_output",
    )
    .start()
    .await
    .unwrap_err();
    let Error::ExitedBeforeReady { status, output, .. } = &err else {
        panic!("expected an early exit, got {err}");
    };
    assert_eq!(status.code(), Some(3));
    assert!(output.contains("bad configuration: no database"), "{err}");
}

#[tokio::test]
async fn a_server_that_listens_elsewhere_did_not_adopt_the_listener() {
    if is_server() {
        let path = std::env::var_os("SOCKET").unwrap();
        let _listener = graceful_tokio::listen_unix(path).await.unwrap();
        graceful_tokio::ready().unwrap();
        return std::future::pending().await;
    }
    let dir = tempfile::tempdir().unwrap();
    let err = Harness::this_test("a_server_that_listens_elsewhere_did_not_adopt_the_listener")
        .env("SOCKET", dir.path().join("server.sock"))
        .start()
        .await
        .unwrap_err();
    let Error::ListenerNotAdopted { addr, what, .. } = &err else {
        panic!("expected the listener not adopted, got {err}");
    };
    assert_eq!(what, &format!("a TCP listener on {addr}"), "{err}");
}

#[tokio::test]
async fn a_failed_upgrade_reports_its_reason_and_the_server_keeps_serving() {
    if is_server() {
        let builder = graceful_tokio::Builder::new().executable("/nonexistent/server");
        return serve(builder).await;
    }
    let harness =
        Harness::this_test("a_failed_upgrade_reports_its_reason_and_the_server_keeps_serving")
            .start()
            .await
            .unwrap();
    let pid = harness.pid();
    let err = harness.upgrade().await.unwrap_err();
    let Error::UpgradeFailed {
        pid: failed,
        reason,
        ..
    } = &err
    else {
        panic!("expected a failed upgrade, got {err}");
    };
    assert_eq!(*failed, pid);
    assert!(
        reason.contains("cannot start /nonexistent/server"),
        "{reason}"
    );
    assert_eq!(harness.pid(), pid);
    assert_eq!(ask(&harness, "still").await, format!("still {pid}\n"));
    harness
        .wait_output("upgrade failed; this generation keeps serving")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_server_that_does_not_handle_sighup_is_reported_ended() {
    if is_server() {
        let builder = graceful_tokio::Builder::new().upgrade_signal(None);
        return serve(builder).await;
    }
    let harness = Harness::this_test("a_server_that_does_not_handle_sighup_is_reported_ended")
        .start()
        .await
        .unwrap();
    let err = harness.upgrade().await.unwrap_err();
    let Error::Exited { status, .. } = &err else {
        panic!("expected the server ended, got {err}");
    };
    assert!(status.contains("it does not handle SIGHUP"), "{err}");
}

/// A test that panics with two generations alive (the first one held in its drain by a
/// connection that never finishes its line): the harness kills and reaps both as it unwinds.
#[tokio::test]
async fn a_panicking_test_leaves_no_process_behind() {
    if is_server() {
        return serve(graceful_tokio::Builder::new()).await;
    }
    let (pids_tx, pids_rx) = std::sync::mpsc::channel();
    let test = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let harness = Harness::this_test("a_panicking_test_leaves_no_process_behind")
                .start()
                .await
                .unwrap();
            let mut stuck = TcpStream::connect(harness.addr()).await.unwrap();
            stuck.write_all(b"hello\n").await.unwrap();
            stuck.read_exact(&mut [0u8; 6]).await.unwrap();
            stuck.write_all(b"never fini").await.unwrap();
            let upgraded = harness.upgrade().await.unwrap();
            pids_tx.send([upgraded.from, upgraded.pid]).unwrap();
            panic!("a deliberate failure, with two generations alive");
        })
    });
    assert!(test.join().is_err(), "the test thread panicked");
    for pid in pids_rx.recv().unwrap() {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} was killed and reaped"
        );
    }
}

/// A test that ends while an upgrade is under way: the new generation, still starting, leads
/// a process group of its own (with a child it started), and the harness kills and reaps that
/// group too.
#[tokio::test]
async fn a_harness_dropped_during_an_upgrade_leaves_no_starting_successor() {
    if is_server() {
        if std::env::var("GRACEFUL_GENERATION").as_deref() != Ok("2") {
            return serve(graceful_tokio::Builder::new()).await;
        }
        // The new generation starts a child and never becomes ready. Nobody waits for the
        // child: the harness must kill and reap it.
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        println!("starting pid={} child={}", std::process::id(), child.id());
        return std::future::pending().await;
    }
    let harness =
        Harness::this_test("a_harness_dropped_during_an_upgrade_leaves_no_starting_successor")
            .start()
            .await
            .unwrap();
    {
        let upgrading = harness.upgrade();
        tokio::pin!(upgrading);
        tokio::select! {
            result = &mut upgrading => panic!("the upgrade ended: {result:?}"),
            found = harness.wait_output("starting pid=") => found.unwrap(),
        }
    }
    let output = harness.output();
    let line = output
        .lines()
        .find_map(|line| line.split_once("starting pid=").map(|(_, rest)| rest))
        .unwrap();
    let pids: Vec<u32> = line
        .split([' ', '='])
        .filter_map(|field| field.trim().parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "{line}");
    drop(harness);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} was killed and reaped"
        );
    }
}
