#![allow(dead_code)] // each binary uses a part of it

//! A small command-line parser shared by the example binaries: `--flag value` pairs, durations
//! written like `500ms`, `2s`, `1m`, and an error naming the flag that was wrong.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

pub(crate) struct Flags {
    values: HashMap<String, String>,
}

impl Flags {
    /// Reads `--name value` pairs from the command line; every name must be in `known`.
    pub(crate) fn parse(known: &[&str]) -> Result<Flags, String> {
        Flags::parse_from(std::env::args().skip(1), known)
    }

    /// Reads `--name value` pairs from `args`; every name must be in `known`.
    pub(crate) fn parse_from(
        mut args: impl Iterator<Item = String>,
        known: &[&str],
    ) -> Result<Flags, String> {
        let mut values = HashMap::new();
        while let Some(arg) = args.next() {
            let name = arg
                .strip_prefix("--")
                .filter(|name| known.contains(name))
                .ok_or_else(|| format!("unknown argument {arg:?}"))?;
            let value = args
                .next()
                .ok_or_else(|| format!("--{name} needs a value"))?;
            values.insert(name.to_owned(), value);
        }
        Ok(Flags { values })
    }

    pub(crate) fn text(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }

    pub(crate) fn value<T: FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.values.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|_| format!("--{name} {raw:?} is not a valid value")),
        }
    }

    pub(crate) fn duration(&self, name: &str, default: Duration) -> Result<Duration, String> {
        match self.values.get(name) {
            None => Ok(default),
            Some(raw) => humantime::parse_duration(raw).map_err(|e| {
                format!("--{name} {raw:?} is not a duration like 500ms, 2s or 1m: {e}")
            }),
        }
    }
}
