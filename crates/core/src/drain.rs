//! How a generation's drain ended: the one type that the runtime adapters return, that the
//! report channel carries to a test harness, and that the harness hands to its tests.
//!
//! Each [`DrainOutcome`] has one wire name, written by [`DrainOutcome::wire_name`] and read
//! back by [`DrainOutcome::from_wire_name`]; both are exhaustive matches or built on one, so a
//! new outcome does not compile until it has a name, and is never silently dropped on the way.

use std::fmt;
use std::time::Duration;

/// What a drain saw: how many connections were open, how many it had to abandon, why it ended
/// and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Tracked connections open when the drain began.
    pub open_at_start: usize,
    /// Tracked connections still open when it ended.
    pub abandoned: usize,
    /// Why it ended.
    pub outcome: DrainOutcome,
    /// How long it took.
    pub elapsed: Duration,
}

impl DrainReport {
    /// A report of a drain: `open_at_start` connections when it began, `abandoned` when it
    /// ended, why, and how long it took. For runtime adapters.
    pub fn new(
        open_at_start: usize,
        abandoned: usize,
        outcome: DrainOutcome,
        elapsed: Duration,
    ) -> DrainReport {
        DrainReport {
            open_at_start,
            abandoned,
            outcome,
            elapsed,
        }
    }

    /// The report of a drain with nothing to drain.
    pub fn empty() -> DrainReport {
        DrainReport::new(0, 0, DrainOutcome::Drained, Duration::ZERO)
    }
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.outcome {
            DrainOutcome::Drained => "all connections closed",
            DrainOutcome::Deadline => "deadline reached",
            DrainOutcome::CutShort => "cut short",
        };
        write!(
            f,
            "{} of {} connections closed in {:?} ({why}), {} abandoned",
            self.open_at_start.saturating_sub(self.abandoned),
            self.open_at_start,
            self.elapsed,
            self.abandoned
        )
    }
}

/// Why a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainOutcome {
    /// Every tracked connection closed.
    Drained,
    /// The timeout ran out.
    Deadline,
    /// Too many generations were alive, or a second stop signal came.
    CutShort,
}

impl DrainOutcome {
    /// Every outcome, for reading a wire name back.
    pub(crate) const ALL: [DrainOutcome; 3] = [
        DrainOutcome::Drained,
        DrainOutcome::Deadline,
        DrainOutcome::CutShort,
    ];

    /// The outcome's name on the report channel: one word, the same in every version (a
    /// running older generation reports to the same harness as a newer one).
    pub(crate) fn wire_name(self) -> &'static str {
        match self {
            DrainOutcome::Drained => "Drained",
            DrainOutcome::Deadline => "Deadline",
            DrainOutcome::CutShort => "CutShort",
        }
    }

    /// The outcome named `name` on the wire; `None` for a name no variant has.
    pub(crate) fn from_wire_name(name: &str) -> Option<DrainOutcome> {
        DrainOutcome::ALL
            .into_iter()
            .find(|outcome| outcome.wire_name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where each outcome sits in [`DrainOutcome::ALL`]: an exhaustive match, so that a new
    /// outcome does not compile until it is listed there, and so gets read back.
    fn position(outcome: DrainOutcome) -> usize {
        match outcome {
            DrainOutcome::Drained => 0,
            DrainOutcome::Deadline => 1,
            DrainOutcome::CutShort => 2,
        }
    }

    #[test]
    fn every_outcome_round_trips_under_one_wire_name() {
        let mut names = Vec::new();
        for (index, outcome) in DrainOutcome::ALL.into_iter().enumerate() {
            assert_eq!(
                position(outcome),
                index,
                "{outcome:?} is listed once, in order"
            );
            let name = outcome.wire_name();
            assert!(
                !name.is_empty() && !name.contains(char::is_whitespace),
                "{outcome:?}: {name:?} is one word"
            );
            assert_eq!(DrainOutcome::from_wire_name(name), Some(outcome));
            names.push(name);
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            DrainOutcome::ALL.len(),
            "wire names are distinct"
        );
        assert_eq!(DrainOutcome::from_wire_name("Other"), None);
    }

    #[test]
    fn display_says_what_was_closed_and_why() {
        let report = DrainReport::new(3, 1, DrainOutcome::Deadline, Duration::from_millis(5));
        assert_eq!(
            report.to_string(),
            "2 of 3 connections closed in 5ms (deadline reached), 1 abandoned"
        );
    }
}
