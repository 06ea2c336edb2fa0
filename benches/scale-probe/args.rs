//! The command line after the subcommand: `--name value` pairs, every name known, and errors
//! that name the flag that was wrong.

use std::collections::HashMap;
use std::str::FromStr;

#[derive(Debug)]
pub(crate) struct Flags {
    values: HashMap<String, String>,
}

impl Flags {
    /// Reads `--name value` pairs from `args`; every name must be in `known`.
    pub(crate) fn parse(args: &[String], known: &[&str]) -> Result<Flags, String> {
        let mut values = HashMap::new();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let name = arg
                .strip_prefix("--")
                .filter(|name| known.contains(name))
                .ok_or_else(|| format!("unknown argument {arg:?}"))?;
            let value = args
                .next()
                .ok_or_else(|| format!("--{name} needs a value"))?;
            values.insert(name.to_owned(), value.clone());
        }
        Ok(Flags { values })
    }

    /// The value of `--name`, parsed, or `default` when it is absent.
    pub(crate) fn value<T: FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.values.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|_| format!("--{name} {raw:?} is not a valid value")),
        }
    }

    /// The value of `--name`, which must be given.
    pub(crate) fn required<T: FromStr>(&self, name: &str) -> Result<T, String> {
        let raw = self
            .values
            .get(name)
            .ok_or_else(|| format!("--{name} is required"))?;
        raw.parse()
            .map_err(|_| format!("--{name} {raw:?} is not a valid value"))
    }

    /// A count that must be at least 1, or `default` when it is absent.
    pub(crate) fn count(&self, name: &str, default: usize) -> Result<usize, String> {
        at_least_one(name, self.value(name, default)?)
    }

    /// A count that must be given, and be at least 1.
    pub(crate) fn required_count(&self, name: &str) -> Result<usize, String> {
        at_least_one(name, self.required(name)?)
    }
}

fn at_least_one(name: &str, count: usize) -> Result<usize, String> {
    match count {
        0 => Err(format!("--{name} must be at least 1")),
        n => Ok(n),
    }
}
