//! Human units in config files: sizes ("64KiB", "1MiB", "10GiB") and durations ("500ms",
//! "5s", "7d"). Parsing is strict: a value that is not exactly understood is an error.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A number of bytes, written with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// A span of time, written with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

const SIZE_UNITS: [(&str, u64); 9] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

const SPAN_UNITS: [(&str, u64); 6] = [
    ("ns", 1),
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

const DAY_NANOS: u64 = 86_400_000_000_000;

/// Splits "12KiB" into (12, "KiB"); the number must be a plain non-negative integer.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let number = text[..digits].parse().ok()?;
    Some((number, text[digits..].trim_start()))
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<ByteSize, String> {
        let invalid = || {
            format!(
                "invalid size {text:?}: write a whole number and a unit (B, KiB, MiB, GiB, TiB), e.g. \"64KiB\""
            )
        };
        let (number, unit) = split_number(text).ok_or_else(invalid)?;
        let unit = if unit.is_empty() { "B" } else { unit };
        let (_, scale) = SIZE_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .ok_or_else(invalid)?;
        number
            .checked_mul(*scale)
            .map(ByteSize)
            .ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Span, String> {
        let invalid = || {
            format!(
                "invalid duration {text:?}: write a whole number and a unit (ms, s, m, h, d), e.g. \"5s\""
            )
        };
        let (number, unit) = split_number(text).ok_or_else(invalid)?;
        let scale = if unit == "d" {
            DAY_NANOS
        } else {
            SPAN_UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, scale)| *scale)
                .ok_or_else(invalid)?
        };
        let nanos = number
            .checked_mul(scale)
            .ok_or_else(|| format!("duration {text:?} is too long"))?;
        Ok(Span(Duration::from_nanos(nanos)))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, scale) = SIZE_UNITS[..5]
            .iter()
            .rev()
            .find(|(_, scale)| self.0 >= *scale && self.0 % scale == 0)
            .unwrap_or(&SIZE_UNITS[0]);
        write!(f, "{}{name}", self.0 / scale)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos() as u64;
        if nanos != 0 && nanos % DAY_NANOS == 0 {
            return write!(f, "{}d", nanos / DAY_NANOS);
        }
        let (name, scale) = SPAN_UNITS
            .iter()
            .rev()
            .find(|(_, scale)| nanos >= *scale && nanos % scale == 0)
            .unwrap_or(&SPAN_UNITS[0]);
        write!(f, "{}{name}", nanos / scale)
    }
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size such as \"64KiB\" or a number of bytes")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<ByteSize, E> {
        text.parse().map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<ByteSize, E> {
        u64::try_from(number)
            .map(ByteSize)
            .map_err(|_| E::custom(format!("size {number} is negative")))
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(number))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ByteSize, D::Error> {
        deserializer.deserialize_any(SizeVisitor)
    }
}

struct SpanVisitor;

impl Visitor<'_> for SpanVisitor {
    type Value = Span;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration with a unit, such as \"500ms\" or \"5s\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Span, E> {
        text.parse().map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Span, D::Error> {
        deserializer.deserialize_str(SpanVisitor)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `bytes` for a person: "512 B", "1.5 MiB".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_binary_and_decimal_units() {
        assert_eq!("64KiB".parse(), Ok(ByteSize(64 << 10)));
        assert_eq!("1MiB".parse(), Ok(ByteSize(1 << 20)));
        assert_eq!("10GiB".parse(), Ok(ByteSize(10 << 30)));
        assert_eq!("2 TiB".parse(), Ok(ByteSize(2 << 40)));
        assert_eq!("512".parse(), Ok(ByteSize(512)));
        assert_eq!("3MB".parse(), Ok(ByteSize(3_000_000)));
    }

    #[test]
    fn sizes_reject_what_they_do_not_understand() {
        for bad in ["", "KiB", "1.5MiB", "-1KiB", "10 gib", "1Q", "12KiBs"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} accepted");
        }
        assert!(
            "99999999999TiB"
                .parse::<ByteSize>()
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn durations_from_milliseconds_to_days() {
        assert_eq!("500ms".parse(), Ok(Span(Duration::from_millis(500))));
        assert_eq!("5s".parse(), Ok(Span(Duration::from_secs(5))));
        assert_eq!("10m".parse(), Ok(Span(Duration::from_secs(600))));
        assert_eq!("2h".parse(), Ok(Span(Duration::from_secs(7200))));
        assert_eq!("7d".parse(), Ok(Span(Duration::from_secs(7 * 86_400))));
    }

    #[test]
    fn durations_need_a_known_unit() {
        for bad in ["5", "5 sec", "s", "1.5s", "5w", "-1s"] {
            assert!(bad.parse::<Span>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["64KiB", "1MiB", "10GiB", "7B", "500ms", "5s", "7d", "90m"] {
            let size = text.parse::<ByteSize>().map(|s| s.to_string());
            let span = text.parse::<Span>().map(|s| s.to_string());
            assert!(
                size.as_deref() == Ok(text) || span.as_deref() == Ok(text),
                "{text}"
            );
        }
    }
}
