//! Log lines on stderr. Under journald each line starts with its syslog
//! priority (`<4>` for a warning) and carries no timestamp, since the journal
//! adds its own; on a terminal a line has a time and a level word.

use std::io::Write;

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
