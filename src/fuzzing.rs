//! The harness behind `fuzz/` (cargo-fuzz, libFuzzer): one function per
//! input that crosses a trust boundary. Each takes the fuzzer's bytes and
//! panics when a promise breaks: more than "it did not crash", what was
//! accepted must be what the documentation says is accepted, and what is
//! printed must parse back to the same value. `tests/fuzz_corpus.rs` runs the
//! committed corpora and reproducers through these same functions on stable.

use std::path::Path;
use std::str::FromStr;

use crate::config::units::{MAX_DURATION, MAX_SIZE, format_duration, format_size_exact, parse_duration, parse_size};
use crate::config::{ListenAddr, MAX_WORKERS, Overrides, Settings, StopSignal, WorkerCount};
use crate::control::protocol::{Command, Reply, encode_request, parse_request};
use crate::control::view;
use crate::worker::channel::{LineBuffer, MAX_DATAGRAM, WorkerMessage, parse_ipc_line, parse_notify};

/// The targets, by name: `fuzz/fuzz_targets/NAME.rs` calls `run(NAME, data)`.
pub const TARGETS: [&str; 8] = [
    "notify",
    "ipc",
    "control_request",
    "control_reply",
    "config",
    "config_structured",
    "units",
    "values",
];

/// Runs the target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "notify" => notify(data),
        "ipc" => ipc(data),
        "control_request" => control_request(data),
        "control_reply" => control_reply(data),
        "config" => config(data),
        "config_structured" => config_structured(data),
        "units" => units(data),
        "values" => values(data),
        other => panic!("no fuzz target {other}"),
    }
}

/// A notify datagram: refused whole only when systemd refuses it whole; else
/// every message stands for a line that says exactly that.
pub fn notify(data: &[u8]) {
    let body = data.strip_suffix(b"\0").unwrap_or(data);
    let lines: Vec<&[u8]> = body
        .split(|b| matches!(b, b'\n' | b'\r'))
        .filter(|l| !l.is_empty())
        .collect();
    match parse_notify(data) {
        Err(_) => assert!(
            data.len() > MAX_DATAGRAM || body.contains(&0) || body.iter().all(u8::is_ascii_whitespace),
            "refused a datagram systemd would read: {data:?}"
        ),
        Ok(said) => {
            assert!(said.messages.len() + said.ignored.len() <= lines.len());
            let count = |line: &[u8]| lines.iter().filter(|l| **l == line).count();
            let of = |m: &WorkerMessage| said.messages.iter().filter(|x| *x == m).count();
            assert_eq!(of(&WorkerMessage::Ready), count(b"READY=1"));
            assert_eq!(of(&WorkerMessage::Heartbeat), count(b"WATCHDOG=1"));
            assert_eq!(of(&WorkerMessage::WatchdogTrigger), count(b"WATCHDOG=trigger"));
            assert_eq!(of(&WorkerMessage::Stopping), count(b"STOPPING=1"));
            for message in &said.messages {
                if let WorkerMessage::Errno(n) = message {
                    assert!((0..=4095).contains(n), "ERRNO={n} accepted");
                }
            }
        }
    }
}

/// Node IPC framing, fed in pieces (the first byte picks where to cut),
/// against a model: each complete line is one line, or one error if longer
/// than the limit; an unfinished line longer than the limit is one error.
pub fn ipc(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let max = 16;
    let mut buffer = LineBuffer::new(max);
    let mut got = Vec::new();
    let step = usize::from(cut % 7) + 1;
    for piece in stream.chunks(step) {
        got.extend(buffer.push(piece));
    }
    let mut expected: Vec<Result<Vec<u8>, ()>> = Vec::new();
    let mut parts: Vec<&[u8]> = stream.split(|b| *b == b'\n').collect();
    let tail = parts.pop().unwrap_or_default();
    for line in parts {
        expected.push(if line.len() > max { Err(()) } else { Ok(line.to_vec()) });
    }
    if tail.len() > max {
        expected.push(Err(()));
    }
    let got: Vec<Result<Vec<u8>, ()>> = got.into_iter().map(|r| r.map_err(|_| ())).collect();
    assert_eq!(got, expected, "framing of {stream:?} in pieces of {step}");
    for line in got.into_iter().flatten() {
        let _ = parse_ipc_line(&line);
    }
}

/// A control request: accepted only as the protocol says (a JSON object,
/// v 1, a known command with exactly its keys), and it encodes back to
/// itself.
pub fn control_request(data: &[u8]) {
    let Ok(command) = parse_request(data) else { return };
    let value: serde_json::Value = serde_json::from_slice(data).expect("accepted, so JSON");
    let object = value.as_object().expect("accepted, so an object");
    assert_eq!(object.get("v").and_then(|v| v.as_u64()), Some(1));
    let expected_keys = match &command {
        Command::Status | Command::Reload | Command::Upgrade => 2,
        Command::Scale { workers } => {
            assert!((1..=MAX_WORKERS as usize).contains(workers), "scale to {workers}");
            3
        }
        Command::ScaleBy { by } => {
            assert!(*by != 0 && by.unsigned_abs() <= MAX_WORKERS as u64, "scale by {by}");
            3
        }
        Command::ScaleAuto { .. } => 3,
        Command::Replace { .. } => 3,
        Command::Logs { lines, slot, after } => {
            assert!(*lines <= crate::control::protocol::MAX_LOG_LINES, "{lines} lines");
            3 + usize::from(slot.is_some()) + usize::from(after.is_some())
        }
    };
    assert_eq!(object.len(), expected_keys, "stray keys accepted: {value}");
    assert_eq!(parse_request(encode_request(&command).as_bytes()), Ok(command));
}

/// A control reply, as `sheepdog status` reads and shows it: never a panic,
/// nothing a terminal would obey, and what it read encodes back to what it
/// reads.
pub fn control_reply(data: &[u8]) {
    let Ok(reply) = Reply::decode(data) else { return };
    if let Reply::Status(report) = &reply {
        // Whatever the server said, what `sheepdog status` prints holds no
        // control character but its own line ends.
        let shown = view::render(report);
        assert_eq!(
            crate::text::printable(&shown.replace('\n', "")),
            shown.replace('\n', "")
        );
    }
    if let Reply::Done(text) | Reply::Failed(text) = &reply {
        assert_eq!(crate::text::printable(text), text.as_str());
    }
    let again = Reply::decode(reply.encode().as_bytes()).expect("an encoded reply decodes");
    if !has_nan(&reply) {
        assert_eq!(again, reply);
    }
}

fn has_nan(reply: &Reply) -> bool {
    let Reply::Status(report) = reply else { return false };
    let sup = &report.supervisor;
    let floats = [sup.uptime_s, sup.reload_seconds.sum]
        .into_iter()
        .chain(sup.cpu_seconds)
        .chain(sup.reload_seconds.le.iter().copied())
        .chain(
            report
                .workers
                .iter()
                .flat_map(|w| [Some(w.uptime_s), w.cpu_percent, w.heartbeat_age_s, w.cpu_seconds])
                .flatten(),
        )
        .chain(report.waiting.iter().map(|w| w.restart_in_s));
    floats.into_iter().any(|f| !f.is_finite())
}

/// A config file: an error names the file (and a place in it); settings that
/// were accepted print (`sheepdog check`) as a file that parses back to them.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    round_trip(text);
}

fn round_trip(text: &str) {
    let path = Path::new("/etc/sheepdog/app.toml");
    match Settings::from_toml(text, Some(path), &Overrides::default()) {
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.starts_with("/etc/sheepdog/app.toml"),
                "an error that names no file: {e}"
            );
        }
        Ok(settings) => {
            let printed = settings.describe();
            let again = Settings::from_toml(&printed, Some(path), &Overrides::default())
                .unwrap_or_else(|e| panic!("check's printout does not parse: {e}\n{printed}"));
            assert_eq!(again, settings, "check's printout reads back otherwise:\n{printed}");
        }
    }
}

/// A config file built from the bytes out of plausible keys and values, so
/// that the fuzzer spends its time past the TOML syntax.
pub fn config_structured(data: &[u8]) {
    const KEYS: [&str; 22] = [
        "workers",
        "min_ready",
        "listen",
        "readiness",
        "channel",
        "ready_delay",
        "ready_timeout",
        "max_surge",
        "stop_signal",
        "stop_timeout",
        "max_restarts",
        "restart_window",
        "backoff_initial",
        "backoff_max",
        "backoff_reset",
        "max_spawn_rate",
        "min_uptime",
        "max_age",
        "max_age_jitter",
        "name",
        "log_level",
        "control_socket",
    ];
    const VALUES: [&str; 28] = [
        "0",
        "1",
        "2",
        "4096",
        "4097",
        "-1",
        "\"auto\"",
        "\"0s\"",
        "\"100ms\"",
        "\"1.5s\"",
        "\"8760h\"",
        "\"1500us\"",
        "\"7ns\"",
        "\"notify\"",
        "\"node-ipc\"",
        "\"none\"",
        "\"SIGTERM\"",
        "\"SIGCHLD\"",
        "\"quit\"",
        "[\"127.0.0.1:0\"]",
        "[\"unix:a.sock\"]",
        "[\"unix:@x\"]",
        "[]",
        "\"app\"",
        "\"a\\nb\"",
        "\"debug\"",
        "\"\"",
        "1000",
    ];
    const SECTIONS: [&str; 8] = [
        "[heartbeat]\ninterval = \"1s\"\n",
        "[heartbeat]\ninterval = \"100ms\"\ntimeout = \"100ms\"\n",
        "[heartbeat]\nping = \"ping#{pid}\"\n",
        "[memory]\nlimit = \"700MB\"\n",
        "[memory]\nlimit = \"1KiB\"\ninterval = \"1s\"\nmeasure = \"rss\"\n",
        "[env]\nA = \"1\"\n",
        "[env]\nLISTEN_FDS = \"3\"\n",
        "[env]\n\"K Y\" = \"\\u00e9\"\n",
    ];
    let mut text = String::from("command = [\"node\", \"server.js\"]\n");
    let mut used = std::collections::BTreeSet::new();
    let mut bytes = data.iter();
    while let (Some(k), Some(v)) = (bytes.next(), bytes.next()) {
        let key = KEYS[usize::from(*k) % KEYS.len()];
        if used.insert(key) {
            text.push_str(&format!("{key} = {}\n", VALUES[usize::from(*v) % VALUES.len()]));
        }
    }
    if let Some(section) = data.last() {
        text.push_str(SECTIONS[usize::from(*section) % SECTIONS.len()]);
    }
    round_trip(&text);
}

/// Durations and sizes: accepted only within their limits, and printed in a
/// form that parses back to the same value.
pub fn units(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(duration) = parse_duration(text) {
        assert!(duration <= MAX_DURATION);
        assert!(text.is_ascii(), "a duration with non-ASCII accepted: {text:?}");
        assert_eq!(parse_duration(&format_duration(duration)), Ok(duration), "{text:?}");
    }
    if let Ok(size) = parse_size(text) {
        assert!(size <= MAX_SIZE);
        assert!(text.is_ascii(), "a size with non-ASCII accepted: {text:?}");
        assert_eq!(parse_size(&format_size_exact(size)), Ok(size), "{text:?}");
    }
}

/// Listen addresses, signal names and worker counts: what is accepted is
/// what the documentation lists, and prints back to itself.
pub fn values(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(addr) = ListenAddr::from_str(text) {
        if let ListenAddr::Unix(path) = &addr {
            let bytes = path.as_os_str().len();
            assert!(bytes > 0 && bytes <= 107 && !text.contains('\0') && !text.starts_with("unix:@"));
        }
        assert_eq!(ListenAddr::from_str(&addr.to_string()), Ok(addr), "{text:?}");
    }
    if let Ok(StopSignal(signal)) = StopSignal::from_str(text) {
        use nix::sys::signal::Signal::*;
        assert!(!matches!(
            signal,
            SIGKILL | SIGSTOP | SIGCHLD | SIGCONT | SIGWINCH | SIGURG | SIGTSTP | SIGTTIN | SIGTTOU
        ));
        assert_eq!(StopSignal::from_str(signal.as_str()), Ok(StopSignal(signal)));
    }
    if let Ok(count) = WorkerCount::from_str(text) {
        match count {
            WorkerCount::Auto => assert_eq!(text, "auto"),
            WorkerCount::Fixed(n) => assert!((1..=MAX_WORKERS).contains(&n), "{n} workers"),
        }
    }
}
