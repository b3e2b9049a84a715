//! Human units in the config: durations ("500ms", "5s", "2m") and sizes
//! ("700MiB", "1.5GiB"). Parsing is strict: a number, optional spaces, a unit.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer};

/// Parses "250ms", "5s", "1.5s", "2m", "1h". A bare number is rejected: a
/// duration without a unit is the classic "was that seconds or ms?" bug.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = split_number(text)?;
    let seconds_per_unit = match unit {
        "ms" => 0.001,
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "" => return Err(format!("duration \"{text}\" needs a unit (ms, s, m, h)")),
        other => {
            return Err(format!(
                "unknown duration unit \"{other}\" in \"{text}\" (use ms, s, m, h)"
            ));
        }
    };
    let seconds = number * seconds_per_unit;
    if seconds > 365.0 * 86400.0 {
        return Err(format!("duration \"{text}\" is longer than a year"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses "700MiB", "512KiB", "1.5GiB", "700MB", "4096B" into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text)?;
    let bytes_per_unit: f64 = match unit {
        "B" => 1.0,
        "K" | "KiB" => 1024.0,
        "M" | "MiB" => 1024.0 * 1024.0,
        "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "" => {
            return Err(format!("size \"{text}\" needs a unit (B, KiB, MiB, GiB, KB, MB, GB)"));
        }
        other => {
            return Err(format!(
                "unknown size unit \"{other}\" in \"{text}\" (use B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    let bytes = number * bytes_per_unit;
    if bytes > (1u64 << 50) as f64 {
        return Err(format!("size \"{text}\" is larger than a petabyte"));
    }
    Ok(bytes.round() as u64)
}

fn split_number(text: &str) -> Result<(f64, &str), String> {
    let trimmed = text.trim();
    let end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(end);
    if trimmed.starts_with('-') {
        return Err(format!("\"{text}\" is negative"));
    }
    let number: f64 = digits
        .parse()
        .map_err(|_| format!("\"{text}\" does not start with a number"))?;
    Ok((number, unit.trim()))
}

/// Formats a duration the way a person would write it in the config.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms == 0 && !duration.is_zero() {
        format!("{}us", duration.as_micros())
    } else if !ms.is_multiple_of(1000) || ms == 0 {
        format!("{ms}ms")
    } else if !ms.is_multiple_of(60_000) || ms < 60_000 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}m", ms / 60_000)
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
