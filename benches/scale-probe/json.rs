//! The one JSON object a probe prints per measurement, written by hand: the shapes are small
//! and flat (see the crate docs), and a writer is all they need.

use std::fmt::Write;
use std::time::Duration;

/// A JSON object under construction, its fields in the order they are added.
#[derive(Debug)]
pub(crate) struct Object {
    text: String,
}

impl Object {
    /// `{"probe":"<probe>"`, to which fields are added.
    pub(crate) fn new(probe: &str) -> Object {
        Object {
            text: String::from("{"),
        }
        .text_field("probe", probe)
    }

    pub(crate) fn text_field(mut self, key: &str, value: &str) -> Object {
        self.key(key);
        string(&mut self.text, value);
        self
    }

    pub(crate) fn int(mut self, key: &str, value: u64) -> Object {
        self.key(key);
        let _ = write!(self.text, "{value}");
        self
    }

    /// A number with three decimals (milliseconds to the microsecond, bytes to a thousandth).
    pub(crate) fn float(mut self, key: &str, value: f64) -> Object {
        self.key(key);
        if value.is_finite() {
            let _ = write!(self.text, "{value:.3}");
        } else {
            self.text.push_str("null");
        }
        self
    }

    pub(crate) fn object(mut self, key: &str, value: Object) -> Object {
        self.key(key);
        self.text.push_str(&value.finish());
        self
    }

    /// The object's text, closed.
    pub(crate) fn finish(mut self) -> String {
        self.text.push('}');
        self.text
    }

    /// An object without the `probe` field, for nested values.
    pub(crate) fn nested() -> Object {
        Object {
            text: String::from("{"),
        }
    }

    fn key(&mut self, key: &str) {
        if self.text.len() > 1 {
            self.text.push(',');
        }
        string(&mut self.text, key);
        self.text.push(':');
    }
}

/// `value` as a JSON string literal.
fn string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The spread of a set of timings, in milliseconds: `{"min":…,"median":…,"p95":…,"max":…}`.
/// The p95 is the nearest-rank one, so with fewer than 20 samples it is the maximum.
pub(crate) fn timings(samples: &[Duration]) -> Object {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    Object::nested()
        .float("min", rank(&ms, 0.0))
        .float("median", median(&ms))
        .float("p95", rank(&ms, 0.95))
        .float("max", rank(&ms, 1.0))
}

/// `{"min":…,"median":…,"max":…}` of plain numbers.
pub(crate) fn spread(values: &[f64]) -> Object {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Object::nested()
        .float("min", rank(&sorted, 0.0))
        .float("median", median(&sorted))
        .float("max", rank(&sorted, 1.0))
}

/// The median of sorted values; NaN (printed as null) when there are none.
pub(crate) fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The nearest-rank `quantile` of sorted values (0 is the minimum, 1 the maximum).
fn rank(sorted: &[f64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        let line = Object::new("drain")
            .text_field("error", "a \"quoted\" path\\name\nline\u{1}")
            .finish();
        assert_eq!(
            line,
            r#"{"probe":"drain","error":"a \"quoted\" path\\name\nline\u0001"}"#
        );
    }

    #[test]
    fn fields_nest_in_order() {
        let line = Object::new("upgrade")
            .int("sockets", 3)
            .float("ratio", 0.5)
            .float("nothing", f64::NAN)
            .object("inner", Object::nested().int("n", 1))
            .finish();
        assert_eq!(
            line,
            r#"{"probe":"upgrade","sockets":3,"ratio":0.500,"nothing":null,"inner":{"n":1}}"#
        );
    }

    #[test]
    fn timings_are_min_median_nearest_rank_p95_max() {
        let ms = |n: u64| Duration::from_millis(n);
        // Unsorted on purpose; 20 samples, so the p95 is the 19th smallest.
        let samples: Vec<Duration> = (1..=20).rev().map(ms).collect();
        assert_eq!(
            timings(&samples).finish(),
            r#"{"min":1.000,"median":10.500,"p95":19.000,"max":20.000}"#
        );
        assert_eq!(
            timings(&[ms(3), ms(1), ms(2)]).finish(),
            r#"{"min":1.000,"median":2.000,"p95":3.000,"max":3.000}"#
        );
        assert_eq!(
            spread(&[]).finish(),
            r#"{"min":null,"median":null,"max":null}"#
        );
    }
}
