//! The server, upgraded three times under load, with nothing but `graceful::testing`.

use std::time::Duration;

use graceful::testing::{Error, Harness, Load};

#[tokio::test]
async fn survives_three_upgrades_under_load() -> Result<(), Error> {
    let harness = Harness::builder(env!("CARGO_BIN_EXE_testing-axum"))
        .arg("--addr")
        .arg_addr() // the harness's own listener, handed over as an upgrade would
        .load(
            Load::none()
                .short_http(2)
                .keep_alive_http(2)
                .answers_name_pid(),
        )
        .start()
        .await?; // returns once the server has called graceful::ready()

    let report = harness
        .under_load(|| async {
            for _ in 0..3 {
                harness.upgrade().await?; // SIGHUP; returns once the new generation is ready
            }
            Ok::<_, Error>(())
        })
        .await;
    assert_eq!(report.failures(), 0, "{report}");
    // Answered by new generations too: keep-alive clients moved, by a reconnect or with their
    // connection (hand-off), and short ones were accepted by the new generations.
    assert!(
        report.succeeded() > 0 && report.pids().len() > 1,
        "{report}"
    );
    report.outcome?;

    let generations = harness.stop().await?; // SIGTERM; returns once every generation ended
    assert_eq!(generations.len(), 4);
    for generation in &generations {
        assert!(
            generation.status().is_some_and(|s| s.success()),
            "{generation}"
        );
        assert_eq!(
            generation.drain().map(|d| d.abandoned),
            Some(0),
            "{generation}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_server_that_never_calls_ready_is_a_readiness_timeout() {
    let err = Harness::builder(env!("CARGO_BIN_EXE_testing-axum-never-ready"))
        .arg("--addr")
        .arg_addr()
        .ready_timeout(Duration::from_secs(2))
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotReady { .. }), "{err}");
    assert!(err.to_string().starts_with("readiness timeout"), "{err}");
}
