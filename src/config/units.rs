//! Human units in the config: durations ("500ms", "5s", "2m") and sizes
//! ("700MiB", "1.5GiB"). Parsing is strict: a number, optional spaces, a unit.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer};

/// The longest duration a config may give: a year.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86400);
/// The largest size a config may give: a pebibyte.
pub const MAX_SIZE: u64 = 1 << 50;

/// Parses "250ms", "5s", "1.5s", "2m", "1h" (also "us", "ns"), exactly: the
/// arithmetic is on integers, so "5555507100ms" is that many milliseconds to
/// the nanosecond. A bare number is rejected: a duration without a unit is
/// the classic "was that seconds or ms?" bug.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = split_number(text)?;
    let nanos_per_unit: u128 = match unit {
        "ns" => 1,
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" | "sec" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => return Err(format!("duration \"{text}\" needs a unit (ms, s, m, h)")),
        other => {
            return Err(format!(
                "unknown duration unit \"{other}\" in \"{text}\" (use ms, s, m, h)"
            ));
        }
    };
    let too_long = || format!("duration \"{text}\" is longer than a year");
    let nanos = number
        .times(nanos_per_unit)
        .ok_or_else(too_long)?
        .ok_or_else(|| format!("duration \"{text}\" is finer than a nanosecond"))?;
    if nanos > MAX_DURATION.as_nanos() {
        return Err(too_long());
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// Parses "700MiB", "512KiB", "1.5GiB", "700MB", "4096B" into bytes, exactly.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text)?;
    let bytes_per_unit: u128 = match unit {
        "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "" => {
            return Err(format!("size \"{text}\" needs a unit (B, KiB, MiB, GiB, KB, MB, GB)"));
        }
        other => {
            return Err(format!(
                "unknown size unit \"{other}\" in \"{text}\" (use B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    let too_large = || format!("size \"{text}\" is larger than a petabyte");
    let bytes = number
        .times(bytes_per_unit)
        .ok_or_else(too_large)?
        .ok_or_else(|| format!("size \"{text}\" is not a whole number of bytes"))?;
    if bytes > MAX_SIZE as u128 {
        return Err(too_large());
    }
    Ok(bytes as u64)
}

/// A decimal number as written: its digits, and how many of them follow
/// the point ("1.25" is 125 with 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decimal {
    digits: u128,
    scale: u32,
}

impl Decimal {
    /// `self × unit`: None when it overflows, Some(None) when it is not a
    /// whole number of the unit's base (a fraction of a nanosecond, of a byte).
    /// The whole part and the fraction are multiplied apart, so that many
    /// digits after the point ("1.0000…01s") cannot overflow into "too long".
    fn times(self, unit: u128) -> Option<Option<u128>> {
        let Some(divisor) = 10u128.checked_pow(self.scale) else {
            return Some(None); // some 39 digits after the point
        };
        let whole = (self.digits / divisor).checked_mul(unit)?;
        let rest = self.digits % divisor;
        // rest × unit / divisor is whole only if rest is a multiple of
        // divisor / gcd(unit, divisor); then it is (rest / step) × (unit / g),
        // less than `unit`, with no overflow on the way.
        let g = gcd(unit, divisor);
        let step = divisor / g;
        if !rest.is_multiple_of(step) {
            return Some(None);
        }
        Some(Some(whole.checked_add(rest / step * (unit / g))?))
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The number and the unit of "1.5 GiB": ASCII digits with at most one point
/// (digits on both sides of it), ASCII spaces or tabs around and between.
fn split_number(text: &str) -> Result<(Decimal, &str), String> {
    let trimmed = text.trim_matches([' ', '\t']);
    if trimmed.starts_with('-') {
        return Err(format!("\"{text}\" is negative"));
    }
    let end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(end);
    let not_a_number = || format!("\"{text}\" does not start with a number");
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || (number.contains('.') && fraction.is_empty()) || fraction.contains('.') {
        return Err(not_a_number());
    }
    let unit = unit.trim_start_matches([' ', '\t']);
    if unit.contains(|c: char| !c.is_ascii_alphabetic()) {
        return Err(format!("\"{text}\": a number, then a unit"));
    }
    // Leading zeros and trailing fraction zeros say nothing; what is left
    // must fit (40 significant digits is far beyond any limit here).
    let significant = format!("{}{}", whole.trim_start_matches('0'), fraction.trim_end_matches('0'));
    let scale = fraction.trim_end_matches('0').len() as u32;
    let digits = if significant.is_empty() {
        0
    } else if significant.len() > 38 {
        // Beyond any limit if the whole part is long, else too fine.
        let whole = whole.trim_start_matches('0').len();
        return Ok((
            Decimal {
                digits: if whole > 20 { u128::MAX } else { 1 },
                scale: if whole > 20 { 0 } else { u32::MAX },
            },
            unit,
        ));
    } else {
        significant.parse().map_err(|_| not_a_number())?
    };
    Ok((Decimal { digits, scale }, unit))
}

/// Formats a duration the way a person would write it in the config, and
/// exactly: it parses back to the same duration.
pub fn format_duration(duration: Duration) -> String {
    let ns = duration.as_nanos();
    const MS: u128 = 1_000_000;
    if ns == 0 {
        "0ms".into()
    } else if !ns.is_multiple_of(1_000) {
        format!("{ns}ns")
    } else if !ns.is_multiple_of(MS) {
        format!("{}us", ns / 1_000)
    } else if !ns.is_multiple_of(1000 * MS) {
        format!("{}ms", ns / MS)
    } else if !ns.is_multiple_of(60_000 * MS) {
        format!("{}s", ns / (1000 * MS))
    } else {
        format!("{}m", ns / (60_000 * MS))
    }
}

/// Formats a byte count with a binary unit, one decimal where it helps.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A byte count as a config file would say it, exactly: in the largest
/// unit that divides it ("1536MiB", "700MB", "4097B").
pub fn format_size_exact(bytes: u64) -> String {
    const UNITS: [(u64, &str); 6] = [
        (1 << 30, "GiB"),
        (1_000_000_000, "GB"),
        (1 << 20, "MiB"),
        (1_000_000, "MB"),
        (1 << 10, "KiB"),
        (1000, "KB"),
    ];
    for (size, unit) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// A duration in a config file. Deserialising it validates it, so a bad value
/// is reported by the TOML parser with its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(TextVisitor(
                "a duration such as \"5s\" or \"500ms\"",
                "s",
                parse_duration,
            ))
            .map(HumanDuration)
    }
}

/// A byte size in a config file ("700MiB").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanSize(pub u64);

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(TextVisitor("a size such as \"700MiB\"", "MiB", parse_size))
            .map(HumanSize)
    }
}

/// Accepts only strings, so `stop_timeout = 5` gets a message asking for a unit
/// (an example of the right kind: "5s" for a duration, "5MiB" for a size)
/// rather than a type error.
struct TextVisitor<T>(&'static str, &'static str, fn(&str) -> Result<T, String>);

impl<T> TextVisitor<T> {
    fn needs_unit<E: de::Error>(&self, number: impl fmt::Display) -> E {
        E::custom(format!("{number} needs a unit and quotes, e.g. \"{number}{}\"", self.1))
    }
}

impl<T> de::Visitor<'_> for TextVisitor<T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.2)(text).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<T, E> {
        Err(self.needs_unit(number))
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<T, E> {
        Err(self.needs_unit(number))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<T, E> {
        Err(self.needs_unit(number))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_their_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 2m "), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn many_digits_after_the_point_are_read_exactly_not_as_an_overflow() {
        // 38 significant digits, the most read exactly: 1 s and a fraction
        // of a nanosecond is too fine, not too long; trailing zeros are nothing.
        let fine = "1.0000000000000000000000000000000000001s";
        assert!(parse_duration(fine).unwrap_err().contains("finer than a nanosecond"));
        assert_eq!(
            parse_duration("1.0000000010000000000000000000000000000s"),
            Ok(Duration::from_nanos(1_000_000_001))
        );
        assert_eq!(parse_size("1.50000000000000000000000000000000000KiB"), Ok(1536));
        // 39 and more: with a long whole part too large, else too fine.
        let long = format!("{}.{}s", "1".repeat(21), "1".repeat(18));
        assert!(
            parse_duration(&long).unwrap_err().contains("longer than a year"),
            "{long}"
        );
        let fine = format!("{}.{}s", "1".repeat(20), "1".repeat(19));
        assert!(
            parse_duration(&fine).unwrap_err().contains("finer than a nanosecond"),
            "{fine}"
        );
        let exact = format!("0.{}1s", "0".repeat(37));
        assert!(parse_duration(&exact).unwrap_err().contains("finer"), "{exact}");
    }

    #[test]
    fn bad_durations_are_refused_with_a_reason() {
        assert!(parse_duration("5").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("five seconds").unwrap_err().contains("number"));
        assert!(
            parse_duration("5 fortnights")
                .unwrap_err()
                .contains("unknown duration unit")
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1.2.3s").is_err());
        assert!(parse_duration("99999999h").unwrap_err().contains("year"));
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!(parse_size("700MiB"), Ok(700 * 1024 * 1024));
        assert_eq!(parse_size("1.5GiB"), Ok(1536 * 1024 * 1024));
        assert_eq!(parse_size("512 KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("700MB"), Ok(700_000_000));
        assert_eq!(parse_size("4096B"), Ok(4096));
    }

    #[test]
    fn bad_sizes_are_refused_with_a_reason() {
        assert!(parse_size("700").unwrap_err().contains("needs a unit"));
        assert!(parse_size("-1MiB").unwrap_err().contains("negative"));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("7 parsecs").unwrap_err().contains("unknown size unit"));
    }

    #[test]
    fn formatting_reads_naturally() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_size(312 * 1024 * 1024), "312 MiB");
        assert_eq!(format_size(1536 * 1024), "1.5 MiB");
        assert_eq!(format_size(100), "100 B");
    }

    #[test]
    fn exact_sizes_parse_back_to_the_same_bytes() {
        for bytes in [
            0,
            1,
            999,
            1000,
            1024,
            4097,
            700_000_000,
            700 << 20,
            1536 << 20,
            3 << 30,
            5_000_000_000,
        ] {
            let text = format_size_exact(bytes);
            assert_eq!(parse_size(&text), Ok(bytes), "{text}");
        }
        assert_eq!(format_size_exact(1536 << 20), "1536MiB");
        assert_eq!(format_size_exact(700_000_000), "700MB");
        assert_eq!(format_size_exact(4097), "4097B");
    }

    #[test]
    fn arithmetic_is_exact() {
        assert_eq!(parse_duration("5555507100ms"), Ok(Duration::from_millis(5_555_507_100)));
        assert_eq!(parse_duration("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1.000000001s"), Ok(Duration::new(1, 1)));
        assert_eq!(parse_duration("007.50s"), Ok(Duration::from_millis(7500)));
        assert!(parse_duration("0.5ns").unwrap_err().contains("finer than a nanosecond"));
        assert_eq!(parse_size("0.5KiB"), Ok(512));
        assert_eq!(parse_size("1.1GB"), Ok(1_100_000_000));
        assert!(
            parse_size("0.1KiB")
                .unwrap_err()
                .contains("not a whole number of bytes")
        );
        assert!(
            parse_size("99999999999999999999999999999999999999999GiB")
                .unwrap_err()
                .contains("petabyte")
        );
        assert!(
            parse_duration("99999999999999999999999999999999999999999h")
                .unwrap_err()
                .contains("year")
        );
        let fine = format!("1.{}1s", "0".repeat(45));
        assert!(
            parse_duration(&fine).unwrap_err().contains("finer than a nanosecond"),
            "{fine}"
        );
    }

    #[test]
    fn only_ascii_spaces_and_digits() {
        for text in [
            "5\u{a0}s",
            "\u{2003}5s",
            "5s\u{3000}",
            "٥s",
            "5 s s",
            "5s5",
            ".5s",
            "5.s",
            "1.2.3s",
            "+5s",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} was accepted");
        }
        assert_eq!(parse_duration("\t5 s "), Ok(Duration::from_secs(5)));
    }

    #[test]
    fn every_duration_prints_in_a_form_that_parses_back() {
        for nanos in [
            1,
            999,
            1_000,
            1_500,
            250_000,
            1_000_000,
            1_000_001,
            90_000_000_000,
            3_600_000_000_000,
        ] {
            let duration = Duration::from_nanos(nanos);
            assert_eq!(
                parse_duration(&format_duration(duration)),
                Ok(duration),
                "{}",
                format_duration(duration)
            );
        }
        assert_eq!(format_duration(Duration::from_nanos(1_500)), "1500ns");
        assert_eq!(format_duration(Duration::from_micros(1_001)), "1001us");
    }

    #[test]
    fn every_unit_and_its_limits() {
        assert_eq!(parse_duration("2sec"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3min"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("365h"), Ok(Duration::from_secs(365 * 3600)));
        assert_eq!(
            parse_duration("8760h"),
            Ok(Duration::from_secs(365 * 86400)),
            "a year is allowed"
        );
        assert!(parse_duration("8761h").unwrap_err().contains("longer than a year"));
        assert_eq!(parse_size("2K"), Ok(2048));
        assert_eq!(parse_size("3M"), Ok(3 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2KB"), Ok(2000));
        assert_eq!(parse_size("2kB"), Ok(2000));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1048576GiB"), Ok(1 << 50), "a petabyte is allowed");
        assert!(parse_size("1048577GiB").unwrap_err().contains("larger than a petabyte"));
    }

    #[test]
    fn formatting_covers_every_magnitude() {
        assert_eq!(format_duration(Duration::ZERO), "0ms");
        assert_eq!(format_duration(Duration::from_micros(250)), "250us");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(59)), "59s");
        assert_eq!(format_duration(Duration::from_secs(60)), "1m");
        assert_eq!(format_duration(Duration::from_secs(3600)), "60m");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1 KiB");
        assert_eq!(format_size(100 << 20), "100 MiB");
        assert_eq!(
            format_size((100 << 20) + (1 << 19)),
            "100 MiB",
            "no decimal from 100 up"
        );
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(1 << 40), "1024 GiB", "GiB is the largest unit");
        assert_eq!(format_size(1 << 50), "1048576 GiB");
    }
}
