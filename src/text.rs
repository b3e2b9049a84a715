//! Text from elsewhere made safe to print on a terminal.
//!
//! A reply read from a control socket, a worker's STATUS=, a process name:
//! whoever wrote it may be hostile (a local user answering root's `sheepdog
//! upgrade --all`) or broken. Printed raw, an escape sequence in it sets
//! the window title, clears the screen or forges a line. Every control
//! character (C0, DEL, C1) and every bidirectional override is shown as an
//! escape (`\x1b`, `\u{202e}`) instead, so what is printed is what was said,
//! visibly, and the terminal obeys none of it.

use std::borrow::Cow;

/// `text` with every character a terminal could obey shown as an escape.
/// Idempotent: what it returns is printable and comes back unchanged.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && is_unsafe(c) => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if is_unsafe(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A control character (C0, DEL, C1), or one that reorders what a terminal
/// shows (the bidirectional embeddings, overrides and isolates).
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Every string of a JSON value (keys too) made [`printable`].
pub fn printable_json(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(printable(&s).into_owned()),
        Value::Array(items) => Value::Array(items.into_iter().map(printable_json).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (printable(&k).into_owned(), printable_json(v)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_shown_not_obeyed() {
        assert_eq!(printable("plain text, ünïcode"), "plain text, ünïcode");
        assert_eq!(printable("\x1b]0;owned\x07title"), "\\x1b]0;owned\\x07title");
        assert_eq!(printable("a\nforged line"), "a\\nforged line");
        assert_eq!(printable("csi\u{9b}2J"), "csi\\u{9b}2J");
        assert_eq!(printable("del\x7f"), "del\\x7f");
        assert_eq!(printable("rtl\u{202e}txt"), "rtl\\u{202e}txt");
    }

    #[test]
    fn printing_twice_changes_nothing_more() {
        for text in ["\x1b[2J", "a\r\nb", "\u{85}\u{2066}", "ok"] {
            let once = printable(text).into_owned();
            assert_eq!(printable(&once), once);
            assert!(!once.chars().any(is_unsafe), "{once:?}");
        }
    }

    #[test]
    fn every_string_of_a_json_value_is_made_printable() {
        let value = serde_json::json!({"name\x1b": ["\x1b[31mred", 3, {"k": "\u{9b}"}]});
        let clean = printable_json(value);
        assert_eq!(
            clean,
            serde_json::json!({"name\\x1b": ["\\x1b[31mred", 3, {"k": "\\u{9b}"}]})
        );
    }
}

/// Days since 1970-01-01 as (year, month, day): Howard Hinnant's
/// civil_from_days.
pub fn civil_date(days: u64) -> (i64, i64, i64) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// "14:02:11 UTC on 2026-12-05", from milliseconds since the epoch.
pub fn format_utc(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_date(days);
    format!(
        "{:02}:{:02}:{:02} UTC on {year}-{month:02}-{day:02}",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Seconds since the epoch as `2026-12-07T02:33:00.104Z` (UTC).
pub fn utc(seconds: f64) -> String {
    let total_ms = (seconds.max(0.0) * 1000.0).round() as u64;
    let (days, ms_of_day) = (total_ms / 86_400_000, total_ms % 86_400_000);
    let (year, month, day) = civil_date(days);
    let (h, m, s, ms) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
mod utc_tests {
    #[test]
    fn wall_clock_times_read_as_utc() {
        use super::format_utc;
        assert_eq!(format_utc(0), "00:00:00 UTC on 1970-01-01");
        // `date -u -d @1796479331` says Sat Dec 5 14:02:11 UTC 2026.
        assert_eq!(format_utc(1_796_479_331_250), "14:02:11 UTC on 2026-12-05");
        assert_eq!(format_utc(951_782_400_000), "00:00:00 UTC on 2000-02-29");
    }

    #[test]
    fn utc_times_are_iso_8601() {
        assert_eq!(super::utc(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc(1_796_610_780.104), "2026-12-07T02:33:00.104Z");
        assert_eq!(super::utc(951_782_400.0), "2000-02-29T00:00:00.000Z");
    }
}
