//! Several generations alive at once: a new generation may upgrade while its parent still
//! drains, and when there are more than allowed the oldest is told to finish.
#![cfg(target_os = "linux")]

mod support;

use graceful_core::Upgrader;
use support::{STEP, Setup};

/// Generation 1 upgrades to 2, which upgrades to 3, which upgrades to 4, each as soon as it is
/// ready and while every older one is still alive. With at most 3 alive, generation 1 is told
/// to finish once generation 4 is ready; the others are not.
#[test]
fn the_oldest_generation_is_told_to_finish_when_too_many_are_alive() {
    let ctx = match support::scenario_with_result(
        "the_oldest_generation_is_told_to_finish_when_too_many_are_alive",
        Setup::default(),
    ) {
        Ok(finished) => {
            assert!(
                finished.read("finish-requested-1").is_some(),
                "{}",
                finished.log
            );
            for generation in 2..=4 {
                assert!(
                    finished.read(&format!("exited-{generation}")).is_some(),
                    "generation {generation} did not finish cleanly\n{}",
                    finished.log
                );
            }
            return;
        }
        Err(ctx) => ctx,
    };

    let upgrader = Upgrader::builder().max_generations(3).build().unwrap();
    let _listener = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();
    upgrader.ready().unwrap();
    let generation = upgrader.generation();

    if generation < 4 {
        if generation > 1 {
            assert!(
                !upgrader.parent_exited().is_set(),
                "generation {generation} upgrades while its parent is alive"
            );
        }
        upgrader.upgrade().unwrap();
    }
    if generation == 1 {
        assert!(
            upgrader.finish_requested().wait_timeout(STEP),
            "generation 1 was not told to finish with 4 generations alive"
        );
        ctx.write("finish-requested-1", "");
    } else {
        assert!(
            upgrader.parent_exited().wait_timeout(STEP),
            "generation {generation}'s parent did not exit"
        );
        assert!(
            !upgrader.finish_requested().is_set(),
            "generation {generation} was told to finish with at most 3 alive"
        );
        ctx.write(&format!("exited-{generation}"), "");
    }
}
