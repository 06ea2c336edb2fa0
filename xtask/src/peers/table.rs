//! The peers' tables, targets and JSON, from the figures `peers.rs` measured.

use std::collections::BTreeMap;
use std::time::Duration;

use graceful_testing::Failure;
use serde_json::{Value, json};

use super::{
    CEILING_TARGET, Figures, GONE_TARGET, IDLE_INTERVAL, IDLE_UPGRADES, INTERVALS, MODES, Peer,
    Tally, median_us,
};
use crate::bench::{Options, median, ratio_spread};
use crate::demo::{self, micros};

/// `0`, or the kinds seen: `reset=12 empty=3`.
fn kinds(failures: &BTreeMap<Failure, u64>) -> String {
    let seen: Vec<String> = failures
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(kind, n)| format!("{kind}={n}"))
        .collect();
    if seen.is_empty() {
        "0".to_owned()
    } else {
        seen.join(" ")
    }
}

/// `12.3 ms (9/9)`: the median of the replaced generations that ended, and how many of all
/// did; `— (0/9)` when none did.
pub(super) fn gone_cell(gone: &[u64], not_gone: usize) -> String {
    let all = gone.len() + not_gone;
    match median_us(gone) {
        Some(us) => format!("{} ({}/{all})", micros(us), gone.len()),
        None => format!("— (0/{all})"),
    }
}

/// Half the range of `values` relative to their median: how much rounds of the same thing
/// moved, as `±x`.
pub(super) fn half_range(values: &[f64]) -> f64 {
    let mid = median(values);
    if values.is_empty() || mid == 0.0 {
        return 0.0;
    }
    let (min, max) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    (max - min) / 2.0 / mid
}

impl Figures {
    /// The noise between rounds: the largest half-range, relative to the median, of any
    /// server's throughput without upgrades.
    pub(super) fn noise(&self) -> f64 {
        self.steady
            .values()
            .map(|t| half_range(&t.throughput))
            .fold(0.0, f64::max)
    }

    fn graceful_failed(&self, m: usize) -> (u64, u64) {
        let steady = self
            .steady
            .iter()
            .filter(|((mode, peer), _)| *mode == m && peer.is_graceful());
        let upgrading = self
            .upgrading
            .iter()
            .filter(|((mode, _, peer), _)| *mode == m && peer.is_graceful());
        steady
            .map(|(_, t)| t)
            .chain(upgrading.map(|(_, t)| t))
            .fold((0, 0), |(failed, all), t| {
                (failed + t.failed(), all + t.requests + t.failed())
            })
    }

    pub(super) fn report(&self, options: &Options, elapsed: Duration) -> Vec<String> {
        let mut out = vec![
            String::new(),
            format!(
                "Peers: {} rounds of {:?} per run, servers interleaved within each round ({:.0} s in all). \
                 Requests and failed: the runs with upgrades (the ceiling: its own runs). \
                 Ratios: median of the rounds' own ratios (range). \
                 Old gone: new generation ready → the replaced process ended (ended / replaced).",
                options.rounds,
                options.duration,
                elapsed.as_secs_f64()
            ),
        ];
        for (m, mode) in MODES.into_iter().enumerate() {
            for (i, interval) in INTERVALS.into_iter().enumerate() {
                out.push(String::new());
                out.push(format!(
                    "{} ({} connections), an upgrade every {interval:?}",
                    mode.describe(),
                    demo::connections(mode)
                ));
                out.push(String::new());
                out.extend(self.table(m, i));
            }
            let (steady_failed, steady_all) = self
                .steady
                .iter()
                .filter(|((mode, _), _)| *mode == m)
                .fold((0, 0), |(f, a), (_, t)| {
                    (f + t.failed(), a + t.requests + t.failed())
                });
            out.push(String::new());
            out.push(format!(
                "{}, runs without upgrades: {steady_failed} failed of {steady_all} requests.",
                mode.name()
            ));
        }

        out.push(String::new());
        out.push(format!(
            "Nothing in flight: {IDLE_UPGRADES} upgrades of each server, one {IDLE_INTERVAL:?} after the previous generation was ready, no load"
        ));
        out.push(String::new());
        out.push("| server | upgrades | handover, median | old gone, median (ended / replaced) | old gone, max |".to_owned());
        out.push("| --- | ---: | ---: | ---: | ---: |".to_owned());
        for (peer, t) in &self.idle {
            out.push(format!(
                "| {} | {} | {} | {} | {} |",
                peer.name(),
                t.upgrades(),
                t.handover_median().map_or("—".to_owned(), micros),
                gone_cell(&t.gone, t.not_gone),
                t.gone.iter().max().map_or("—".to_owned(), |us| micros(*us)),
            ));
        }

        let problems: Vec<String> = self
            .upgrading
            .iter()
            .flat_map(|((m, i, peer), t)| {
                t.problems.iter().map(move |p| {
                    format!(
                        "  {} {} every {:?}: {p}",
                        peer.name(),
                        MODES[*m].name(),
                        INTERVALS[*i]
                    )
                })
            })
            .chain(self.idle.iter().flat_map(|(peer, t)| {
                t.problems
                    .iter()
                    .map(move |p| format!("  {} idle: {p}", peer.name()))
            }))
            .collect();
        if !problems.is_empty() {
            out.push(String::new());
            out.push("Upgrades that did not complete (each ended its run's upgrades):".to_owned());
            out.extend(problems);
        }
        let samples: Vec<String> = self
            .upgrading
            .iter()
            .filter(|((_, _, peer), t)| peer.is_graceful() && !t.samples.is_empty())
            .flat_map(|((m, _, peer), t)| {
                t.samples
                    .iter()
                    .map(move |s| format!("  {} {}: {s}", peer.name(), MODES[*m].name()))
            })
            .collect();
        if !samples.is_empty() {
            out.push(String::new());
            out.push("graceful's failures, first few:".to_owned());
            out.extend(samples);
        }

        out.push(String::new());
        out.push("Targets".to_owned());
        let noise = self.noise();
        for (what, met) in self.targets(noise) {
            out.push(format!(
                "  {} {what}",
                if met { "MET   " } else { "MISSED" }
            ));
        }
        out.push(self.probation_note());
        out.push(String::new());
        out.push(resolution(noise, options.rounds));
        out
    }

    /// One table: a row per server for a mode and an interval.
    fn table(&self, m: usize, i: usize) -> Vec<String> {
        let mut out = vec![
            "| server | requests | failed, by kind | req/s without upgrades | without / ceiling | req/s with upgrades | with / without | upgrades | handover, median | old gone, median |".to_owned(),
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |".to_owned(),
        ];
        let none = Tally::default();
        let ceiling = self.steady.get(&(m, Peer::Ceiling)).unwrap_or(&none);
        out.push(row(Peer::Ceiling, ceiling, None));
        for peer in Peer::UPGRADING {
            let steady = self.steady.get(&(m, peer.steady())).unwrap_or(&none);
            let upgrading = self.upgrading.get(&(m, i, peer)).unwrap_or(&none);
            out.push(row(peer, steady, Some(upgrading)));
        }
        out
    }

    /// Each target, said with its figure, and whether it was met.
    fn targets(&self, noise: f64) -> Vec<(String, bool)> {
        let line = |met: bool, what: String| (what, met);
        let mut out = Vec::new();
        for (m, mode) in MODES.into_iter().enumerate() {
            let (failed, all) = self.graceful_failed(m);
            out.push(line(
                failed == 0,
                format!(
                    "{}: 0 failed requests for graceful (both probations, with and without upgrades): {failed} of {all}",
                    mode.name()
                ),
            ));
        }
        for (m, mode) in MODES.into_iter().enumerate() {
            let ratios = self
                .steady
                .get(&(m, Peer::Graceful))
                .map(|t| t.ratios.clone())
                .unwrap_or_default();
            let ratio = median(&ratios);
            let unresolved = if noise > 1.0 - CEILING_TARGET {
                format!(
                    " (rounds vary by ±{:.1}% here: not resolvable)",
                    noise * 100.0
                )
            } else {
                String::new()
            };
            out.push(line(
                ratio >= CEILING_TARGET,
                format!(
                    "{}: graceful without upgrades within 3% of plain hyper: {}{unresolved}",
                    mode.name(),
                    ratio_spread(&ratios)
                ),
            ));
        }
        let idle = self.idle.get(&Peer::GracefulNoProbation);
        let gone = idle.and_then(Tally::gone_median);
        let not_gone = idle.map_or(0, |t| t.not_gone);
        out.push(line(
            gone.is_some_and(|us| us <= GONE_TARGET.as_micros() as u64) && not_gone == 0,
            format!(
                "old process gone within 50 ms of the new one's readiness, nothing in flight (graceful --probation 0s, median): {}",
                idle.map_or("not measured".to_owned(), |t| gone_cell(&t.gone, t.not_gone))
            ),
        ));
        out
    }

    /// Why the default probation is not held to the 50 ms target.
    fn probation_note(&self) -> String {
        let probation = self.idle.get(&Peer::Graceful);
        format!(
            "         graceful with its default 5 s probation keeps a replaced generation (listeners paused, able to take the service back) until the probation ends or the next upgrade ends it, by design: {}, max {}",
            probation.map_or("not measured".to_owned(), |t| gone_cell(
                &t.gone, t.not_gone
            )),
            probation
                .and_then(|t| t.gone.iter().max())
                .map_or("—".to_owned(), |us| micros(*us))
        )
    }

    pub(super) fn to_json(&self, options: &Options, elapsed: Duration) -> Value {
        let ms = |us: Option<u64>| us.map(|us| us as f64 / 1e3);
        let tally = |t: &Tally| {
            json!({
                "requests": t.requests,
                "failed": t.failed(),
                "failed_by_kind": t.failures.iter().map(|(k, n)| (k.name().to_owned(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "requests_per_s": {"median": median(&t.throughput), "rounds": t.throughput},
                "ratio": {"median": median(&t.ratios), "rounds": t.ratios},
                "upgrades": t.upgrades(),
                "handover_ms_median": ms(t.handover_median()),
                "old_gone_ms_median": ms(t.gone_median()),
                "old_gone": t.gone.len(),
                "old_not_gone": t.not_gone,
                "problems": t.problems,
            })
        };
        let mut runs = Vec::new();
        for (m, mode) in MODES.into_iter().enumerate() {
            for (i, interval) in INTERVALS.into_iter().enumerate() {
                let mut servers = serde_json::Map::new();
                for peer in Peer::STEADY {
                    if let Some(t) = self.steady.get(&(m, peer)) {
                        servers.insert(format!("{}_without_upgrades", peer.key()), tally(t));
                    }
                }
                for peer in Peer::UPGRADING {
                    if let Some(t) = self.upgrading.get(&(m, i, peer)) {
                        servers.insert(format!("{}_with_upgrades", peer.key()), tally(t));
                    }
                }
                runs.push(json!({
                    "mode": mode.name(),
                    "connections": demo::connections(mode),
                    "interval_ms": interval.as_secs_f64() * 1e3,
                    "servers": servers,
                }));
            }
        }
        let idle: serde_json::Map<_, _> = self
            .idle
            .iter()
            .map(|(peer, t)| (peer.key().to_owned(), tally(t)))
            .collect();
        let noise = self.noise();
        let targets: Vec<Value> = self
            .targets(noise)
            .into_iter()
            .map(|(what, met)| json!({"target": what, "met": met}))
            .collect();
        json!({
            "options": {
                "duration_s": options.duration.as_secs_f64(),
                "rounds": options.rounds,
            },
            "elapsed_s": elapsed.as_secs_f64(),
            "runs": runs,
            "idle": idle,
            "noise_between_rounds": noise,
            "targets": targets,
            "resolution": resolution(noise, options.rounds),
        })
    }
}

/// A table row: `steady` is the server's runs without upgrades, `upgrading` its runs with
/// (none for the ceiling).
fn row(peer: Peer, steady: &Tally, upgrading: Option<&Tally>) -> String {
    let dash = || "—".to_owned();
    let counted = upgrading.unwrap_or(steady);
    let vs_ceiling = if peer == Peer::Ceiling {
        "100%".to_owned()
    } else if steady.ratios.is_empty() {
        dash()
    } else {
        ratio_spread(&steady.ratios)
    };
    let (with, ratio, upgrades, handover, gone) = match upgrading {
        None => (dash(), dash(), dash(), dash(), dash()),
        Some(t) => (
            if t.throughput.is_empty() {
                dash()
            } else {
                format!("{:.0}", median(&t.throughput))
            },
            if t.ratios.is_empty() {
                dash()
            } else {
                ratio_spread(&t.ratios)
            },
            if t.problems.is_empty() {
                t.upgrades().to_string()
            } else {
                format!("{} + {} failed", t.upgrades(), t.problems.len())
            },
            t.handover_median().map_or_else(dash, micros),
            gone_cell(&t.gone, t.not_gone),
        ),
    };
    format!(
        "| {} | {} | {} | {:.0} | {vs_ceiling} | {with} | {ratio} | {upgrades} | {handover} | {gone} |",
        peer.name(),
        counted.requests,
        kinds(&counted.failures),
        median(&steady.throughput),
    )
}

/// The sentence on what this machine cannot resolve, from the noise seen over `rounds`.
fn resolution(noise: f64, rounds: u32) -> String {
    if rounds < 2 {
        return "Resolution: one round only, so the noise between rounds was not measured: \
                no throughput figure or ratio here can be told apart from noise (run --rounds 3 \
                or more); failed requests are counts, and handover and old-gone times \
                (milliseconds against a 50 ms target) resolve."
            .to_owned();
    }
    format!(
        "Resolution: between rounds, the same server without upgrades moved by up to ±{:.1}% \
         (half the range of its rounds, against their median), so throughput differences and \
         ratios closer than that to 100% or to a target ({}) cannot be told apart from noise \
         on this machine; failed requests are counts, and handover and old-gone times \
         (milliseconds against a 50 ms target) resolve.",
        noise * 100.0,
        if noise > 1.0 - CEILING_TARGET {
            "the 3% ceiling target included"
        } else {
            "this run's noise is below the 3% ceiling target"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::Tally;

    #[test]
    fn failure_kinds_show_only_what_was_seen() {
        let mut failures = BTreeMap::new();
        assert_eq!(kinds(&failures), "0");
        failures.insert(Failure::Empty, 3);
        failures.insert(Failure::Reset, 12);
        failures.insert(Failure::Timeout, 0);
        assert_eq!(kinds(&failures), "reset=12 empty=3");
    }

    #[test]
    fn old_gone_cells_count_what_ended() {
        assert_eq!(gone_cell(&[3_000, 1_000, 2_000], 0), "2.0 ms (3/3)");
        assert_eq!(gone_cell(&[], 4), "— (0/4)");
        assert_eq!(gone_cell(&[5_100_000], 1), "5.10 s (1/2)");
    }

    #[test]
    fn noise_is_half_the_range_against_the_median() {
        assert_eq!(half_range(&[]), 0.0);
        assert_eq!(half_range(&[100.0]), 0.0);
        assert!((half_range(&[90.0, 100.0, 110.0]) - 0.1).abs() < 1e-12);
        let figures = Figures {
            steady: [
                (
                    (0, Peer::Ceiling),
                    Tally {
                        throughput: vec![95.0, 100.0, 105.0],
                        ..Tally::default()
                    },
                ),
                (
                    (1, Peer::Graceful),
                    Tally {
                        throughput: vec![80.0, 100.0, 120.0],
                        ..Tally::default()
                    },
                ),
            ]
            .into_iter()
            .collect(),
            ..Figures::default()
        };
        assert!((figures.noise() - 0.2).abs() < 1e-12);
        assert!(resolution(0.2, 3).contains("±20.0%"));
        assert!(resolution(0.2, 3).contains("the 3% ceiling target included"));
        assert!(resolution(0.01, 3).contains("noise is below the 3% ceiling target"));
        assert!(resolution(0.0, 1).contains("not measured"));
    }

    fn tally(throughput: &[f64], ratios: &[f64]) -> Tally {
        Tally {
            throughput: throughput.to_vec(),
            ratios: ratios.to_vec(),
            ..Tally::default()
        }
    }

    #[test]
    fn rows_show_ratios_of_rounds_and_what_failed() {
        let mut ceiling = tally(&[100.0, 110.0, 90.0], &[]);
        ceiling.requests = 900;
        assert_eq!(
            row(Peer::Ceiling, &ceiling, None),
            "| plain hyper (ceiling) | 900 | 0 | 100 | 100% | — | — | — | — | — |"
        );
        let steady = tally(&[98.0, 99.0, 97.0], &[0.98, 0.9, 1.08]);
        let mut upgrading = tally(&[90.0, 80.0, 85.0], &[0.9, 0.8, 0.88]);
        upgrading.requests = 765;
        upgrading.failures.insert(Failure::Reset, 7);
        upgrading.handovers = vec![7_000, 5_000, 6_000];
        upgrading.gone = vec![600_000, 500_000];
        upgrading.not_gone = 1;
        upgrading.problems.push("upgrade 4: gave up".to_owned());
        assert_eq!(
            row(Peer::Ecdysis, &steady, Some(&upgrading)),
            "| ecdysis 1.1.1 | 765 | reset=7 | 98 | 98.0% (90.0–108.0) | 85 | 88.0% (80.0–90.0) \
             | 3 + 1 failed | 6.0 ms | 600.0 ms (2/3) |"
        );
    }

    #[test]
    fn targets_are_met_or_missed_from_the_figures() {
        let mut figures = Figures::default();
        for m in 0..MODES.len() {
            figures
                .steady
                .insert((m, Peer::Graceful), tally(&[100.0], &[0.99, 0.96, 1.0]));
        }
        let idle = Tally {
            gone: vec![2_000, 4_000, 60_000],
            ..Tally::default()
        };
        figures.idle.insert(Peer::GracefulNoProbation, idle);
        let mut failing = tally(&[1.0], &[1.0]);
        failing.failures.insert(Failure::Reset, 1);
        failing.requests = 9;
        figures
            .upgrading
            .insert((1, 0, Peer::GracefulNoProbation), failing);
        let met: Vec<bool> = figures.targets(0.01).iter().map(|(_, met)| *met).collect();
        // keep-alive: 0 failed; short: 1 of 10; ceiling 99% twice; old gone median 4 ms.
        assert_eq!(met, vec![true, false, true, true, true]);
        let lines = figures.targets(0.05);
        assert!(lines[1].0.contains("1 of 10"), "{}", lines[1].0);
        assert!(lines[2].0.contains("not resolvable"), "{}", lines[2].0);
        assert!(lines[4].0.contains("4.0 ms (3/3)"), "{}", lines[4].0);
    }
}
