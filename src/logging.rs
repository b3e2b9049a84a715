//! Log lines on stderr. Under journald each line starts with its syslog
//! priority (`<4>` for a warning) and carries no timestamp, since the journal
//! adds its own; on a terminal a line has a time and a level word.

use std::io::Write;
use std::time::{Duration, Instant};

use log::{Level, LevelFilter};

pub fn init(level: Option<LevelFilter>, journal: bool) {
    let mut builder = env_logger::Builder::new();
    // RUST_LOG is honoured unless --log-level or log_level says otherwise.
    builder.filter_level(LevelFilter::Info);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    if let Some(level) = level {
        builder.filter_level(level);
    }
    if journal {
        builder.format(|out, record| writeln!(out, "<{}>{}", priority(record.level()), record.args()));
    } else {
        builder.format(|out, record| {
            let level = match record.level() {
                Level::Error => "error",
                Level::Warn => "warn ",
                Level::Info => "info ",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            writeln!(
                out,
                "{} sheepdog[{}] {level} {}",
                out.timestamp_millis(),
                std::process::id(),
                record.args()
            )
        });
    }
    builder.init();
}

/// syslog(3) priorities as journald reads them from a `<N>` prefix.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// At most `burst` lines per `window`: what someone outside can trigger
/// again and again (a worker, a client, an operator's signals) must not
/// flood the log. The count of what was held back is told when the next
/// window opens.
#[derive(Debug)]
pub struct RateLimit {
    burst: u32,
    window: Duration,
    opened: Option<Instant>,
    used: u32,
    suppressed: u32,
}

impl RateLimit {
    pub fn new(burst: u32, window: Duration) -> RateLimit {
        RateLimit {
            burst,
            window,
            opened: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> bool {
        let opened = *self.opened.get_or_insert(now);
        if now.saturating_duration_since(opened) >= self.window {
            if self.suppressed > 0 {
                log::warn!("{} more like it were not logged", self.suppressed);
            }
            self.opened = Some(now);
            self.used = 0;
            self.suppressed = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_and_no_more() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(3, Duration::from_secs(10));
        let allowed: Vec<bool> = (0..5).map(|_| limit.allow(t0)).collect();
        assert_eq!(allowed, [true, true, true, false, false]);
        assert!(!limit.allow(t0 + Duration::from_millis(9999)));
        assert!(limit.allow(t0 + Duration::from_secs(10)), "a new window");
        assert_eq!(limit.suppressed, 0);
    }
}
