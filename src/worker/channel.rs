//! What workers say to sheepdog, parsed by pure functions: sd_notify datagrams
//! (`READY=1\nSTATUS=…`) and Node IPC lines (one JSON value per line). Anything
//! malformed is an `Err` with a reason for the log, never a panic.

/// The largest notify datagram accepted (systemd's own limit is similar).
pub const MAX_DATAGRAM: usize = 4096;
/// The longest Node IPC line accepted.
pub const MAX_IPC_LINE: usize = 64 * 1024;

pub use crate::core::WorkerMessage;

/// What one notify datagram said, and the assignments in it that were
/// ignored (with why, for the log).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notified {
    pub messages: Vec<WorkerMessage>,
    pub ignored: Vec<String>,
}

/// The largest ERRNO= systemd takes (its ERRNO_MAX).
const MAX_ERRNO: i32 = 4095;

/// Parses one sd_notify datagram as systemd does: `KEY=VALUE` assignments
/// separated by newlines or carriage returns (systemd splits on both, so
/// `READY=1\r\n` is `READY=1`), each on its own. A bad one (`ERRNO=x`, a
/// line without `=`, one that is not UTF-8) is ignored and the others still
/// count, so a `READY=1` beside it is not lost; unknown keys are ignored
/// silently; a tag must otherwise match exactly (`READY=1 ` is not
/// `READY=1`, for systemd either). Only a datagram too large, with a NUL
/// inside (one trailing NUL is allowed) or empty is refused whole, as
/// systemd refuses it.
pub fn parse_notify(datagram: &[u8]) -> Result<Notified, String> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(format!("datagram of {} bytes exceeds {MAX_DATAGRAM}", datagram.len()));
    }
    let body = datagram.strip_suffix(b"\0").unwrap_or(datagram);
    if body.contains(&0) {
        return Err("datagram with a NUL byte inside".into());
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("empty datagram".into());
    }
    let mut said = Notified::default();
    for line in body.split(|b| matches!(b, b'\n' | b'\r')).filter(|l| !l.is_empty()) {
        let Ok(line) = std::str::from_utf8(line) else {
            said.ignored.push(format!(
                "ignored a line that is not UTF-8: {:?}",
                String::from_utf8_lossy(line)
            ));
            continue;
        };
        let Some((key, value)) = line.split_once('=') else {
            said.ignored
                .push(format!("ignored a line that is not KEY=VALUE: {:?}", truncate(line)));
            continue;
        };
        match (key, value) {
            ("READY", "1") => said.messages.push(WorkerMessage::Ready),
            ("WATCHDOG", "1") => said.messages.push(WorkerMessage::Heartbeat),
            ("WATCHDOG", "trigger") => said.messages.push(WorkerMessage::WatchdogTrigger),
            ("STOPPING", "1") => said.messages.push(WorkerMessage::Stopping),
            ("STATUS", status) => said.messages.push(WorkerMessage::Status(status.to_string())),
            ("ERRNO", errno) => match errno.trim().parse() {
                Ok(n) if (0..=MAX_ERRNO).contains(&n) => said.messages.push(WorkerMessage::Errno(n)),
                _ => said.ignored.push(format!(
                    "ignored ERRNO={:?}: not an error number from 0 to {MAX_ERRNO}",
                    truncate(errno)
                )),
            },
            // Almost a known tag: said, since it does nothing (for systemd
            // neither) and the worker surely meant it to.
            ("READY" | "WATCHDOG" | "STOPPING", value) if value.trim_end() != value => {
                said.ignored.push(format!(
                    "ignored {:?}: trailing whitespace (systemd ignores it too)",
                    truncate(line)
                ));
            }
            // Unknown keys carry nothing for us; nor does BARRIER=1, which
            // closing the fd that came with it satisfies (the shell does).
            _ => {}
        }
    }
    Ok(said)
}

/// What sheepdog's Node preload reports of a worker every 2 s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeStats {
    pub heap_used: u64,
    pub heap_total: u64,
    /// The longest event-loop delay over the last interval, in ms.
    pub lag_ms: f64,
}

/// `{"sheepdog":"stats","heap_used":…,"heap_total":…,"lag_ms":…}` from the
/// preload; None for anything else.
pub fn parse_node_stats(line: &[u8]) -> Option<NodeStats> {
    if !line.starts_with(br#"{"sheepdog":"stats""#) {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let lag_ms = value.get("lag_ms")?.as_f64().filter(|l| l.is_finite() && *l >= 0.0)?;
    Some(NodeStats {
        heap_used: value.get("heap_used")?.as_u64()?,
        heap_total: value.get("heap_total")?.as_u64()?,
        lag_ms,
    })
}

/// Parses one Node IPC line (JSON serialization). Node's own internal
/// messages (`{"cmd": "NODE_…"}`) are ignored.
pub fn parse_ipc_line(line: &[u8]) -> Result<Option<WorkerMessage>, String> {
    let value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| format!("not JSON ({e}): {:?}", truncate(&String::from_utf8_lossy(line))))?;
    let message = match &value {
        serde_json::Value::String(s) if s == "ready" => WorkerMessage::Ready,
        serde_json::Value::String(s) if s == "stopping" => WorkerMessage::Stopping,
        serde_json::Value::Object(map) => {
            if map.get("act").and_then(|a| a.as_str()) == Some("suicide") {
                WorkerMessage::Stopping
            } else if map
                .get("cmd")
                .and_then(|c| c.as_str())
                .is_some_and(|c| c.starts_with("NODE_"))
            {
                return Ok(None);
            } else {
                WorkerMessage::Heartbeat
            }
        }
        _ => WorkerMessage::Heartbeat,
    };
    Ok(Some(message))
}

fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

/// Splits a byte stream into lines of at most `max` bytes. A longer line is
/// reported once as an error and skipped up to its newline, so a worker that
/// never sends a newline cannot make sheepdog buffer without bound.
#[derive(Debug)]
pub struct LineBuffer {
    pending: Vec<u8>,
    max: usize,
    discarding: bool,
}

impl LineBuffer {
    pub fn new(max: usize) -> LineBuffer {
        LineBuffer {
            pending: Vec::new(),
            max,
            discarding: false,
        }
    }

    /// A line begun and not ended yet, and whether it is being dropped (it
    /// grew too long): what a binary taking over carries on with.
    pub fn parts(&self) -> (&[u8], bool) {
        (&self.pending, self.discarding)
    }

    /// A buffer holding what [`LineBuffer::parts`] gave.
    pub fn from_parts(max: usize, pending: Vec<u8>, discarding: bool) -> LineBuffer {
        let mut pending = pending;
        pending.truncate(max);
        LineBuffer {
            pending,
            max,
            discarding,
        }
    }

    /// Feeds bytes; returns the complete lines (without '\n') or errors for
    /// overlong ones.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Result<Vec<u8>, String>> {
        let mut out = Vec::new();
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            let (text, complete) = match piece.strip_suffix(b"\n") {
                Some(text) => (text, true),
                None => (piece, false),
            };
            if !self.discarding {
                if self.pending.len() + text.len() > self.max {
                    out.push(Err(format!("line longer than {} bytes", self.max)));
                    self.pending.clear();
                    self.discarding = true;
                } else {
                    self.pending.extend_from_slice(text);
                }
            }
            if complete {
                if !std::mem::take(&mut self.discarding) {
                    out.push(Ok(std::mem::take(&mut self.pending)));
                }
                self.pending.clear();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WorkerMessage::*;

    fn said(datagram: &[u8]) -> Vec<WorkerMessage> {
        parse_notify(datagram).unwrap().messages
    }

    fn ignored(datagram: &[u8]) -> Vec<String> {
        parse_notify(datagram).unwrap().ignored
    }

    #[test]
    fn notify_assignments_are_recognised() {
        assert_eq!(said(b"READY=1"), vec![Ready]);
        assert_eq!(said(b"WATCHDOG=1\n"), vec![Heartbeat]);
        assert_eq!(said(b"WATCHDOG=trigger"), vec![WatchdogTrigger]);
        assert_eq!(said(b"STOPPING=1"), vec![Stopping]);
        assert_eq!(
            said(b"READY=1\nSTATUS=serving 12 rps\nERRNO=5\n"),
            vec![Ready, Status("serving 12 rps".into()), Errno(5)]
        );
        assert_eq!(said(b"STATUS=a=b"), vec![Status("a=b".into())]);
        assert_eq!(said(b"READY=1\0"), vec![Ready], "one trailing NUL, as systemd allows");
    }

    #[test]
    fn unknown_keys_are_ignored_like_systemd_does() {
        let quiet = parse_notify(b"MAINPID=42\nEXTEND_TIMEOUT_USEC=5\nX_CUSTOM=1\nREADY=0").unwrap();
        assert_eq!(quiet, Notified::default());
    }

    #[test]
    fn a_bad_assignment_is_ignored_and_the_rest_still_counts() {
        assert_eq!(said(b"ERRNO=x\nREADY=1"), vec![Ready]);
        assert_eq!(
            ignored(b"ERRNO=x\nREADY=1"),
            vec!["ignored ERRNO=\"x\": not an error number from 0 to 4095"]
        );
        assert_eq!(said(b"ERRNO=-5\nREADY=1"), vec![Ready]);
        assert_eq!(said(b"ERRNO=4096"), vec![]);
        assert_eq!(said(b"ERRNO=4095"), vec![Errno(4095)]);
        assert_eq!(said(b"hello world\nWATCHDOG=1"), vec![Heartbeat]);
        assert_eq!(
            ignored(b"hello world\nWATCHDOG=1"),
            vec!["ignored a line that is not KEY=VALUE: \"hello world\""]
        );
        assert_eq!(said(b"STATUS=\xff\xfe\nREADY=1"), vec![Ready]);
        assert_eq!(ignored(b"STATUS=\xff\xfe\nREADY=1").len(), 1);
    }

    #[test]
    fn lines_end_at_a_newline_or_a_carriage_return_as_for_systemd() {
        assert_eq!(said(b"READY=1\r\n"), vec![Ready]);
        assert_eq!(said(b"STATUS=a\rWATCHDOG=1\r\n"), vec![Status("a".into()), Heartbeat]);
        assert_eq!(ignored(b"READY=1\r\n"), Vec::<String>::new());
    }

    #[test]
    fn a_tag_must_otherwise_match_exactly_as_for_systemd() {
        assert_eq!(said(b"READY=1 "), vec![]);
        assert_eq!(
            ignored(b"READY=1 "),
            vec!["ignored \"READY=1 \": trailing whitespace (systemd ignores it too)"]
        );
        assert_eq!(said(b"READY=1\t"), vec![]);
        assert_eq!(said(b"READY = 1"), vec![]);
    }

    #[test]
    fn only_what_systemd_refuses_whole_is_refused_whole() {
        assert!(parse_notify(b"READY=1\0WATCHDOG=1").unwrap_err().contains("NUL"));
        assert!(parse_notify(b"").unwrap_err().contains("empty"));
        assert!(parse_notify(b"\n\n ").unwrap_err().contains("empty"));
        assert!(
            parse_notify(&vec![b'A'; MAX_DATAGRAM + 1])
                .unwrap_err()
                .contains("exceeds")
        );
    }

    #[test]
    fn ipc_messages_follow_the_pm2_and_cluster_conventions() {
        assert_eq!(parse_ipc_line(br#""ready""#), Ok(Some(Ready)));
        assert_eq!(parse_ipc_line(br#""pong""#), Ok(Some(Heartbeat)));
        assert_eq!(parse_ipc_line(br#""stopping""#), Ok(Some(Stopping)));
        assert_eq!(parse_ipc_line(br#"{"act":"suicide"}"#), Ok(Some(Stopping)));
        assert_eq!(parse_ipc_line(br#"{"anything":[1,2]}"#), Ok(Some(Heartbeat)));
        assert_eq!(parse_ipc_line(br#"{"cmd":"NODE_HANDLE_ACK"}"#), Ok(None));
        assert!(parse_ipc_line(b"{not json").unwrap_err().starts_with("not JSON"));
        // The log shows what was sent, cut at 80 characters.
        let long = format!("{{{}", "x".repeat(200));
        let error = parse_ipc_line(long.as_bytes()).unwrap_err();
        assert!(error.ends_with(&format!("\"{{{}\"", "x".repeat(79))), "{error}");
        assert!(parse_ipc_line(b"\xff").is_err());
    }

    #[test]
    fn lines_are_split_across_reads() {
        let mut buffer = LineBuffer::new(16);
        assert!(buffer.push(b"\"rea").is_empty());
        assert_eq!(
            buffer.push(b"dy\"\n\"pong\"\n\"x"),
            vec![Ok(b"\"ready\"".to_vec()), Ok(b"\"pong\"".to_vec())]
        );
        assert_eq!(buffer.push(b"\"\n"), vec![Ok(b"\"x\"".to_vec())]);
    }

    #[test]
    fn overlong_lines_are_reported_once_and_skipped() {
        let mut buffer = LineBuffer::new(8);
        let first = buffer.push(b"0123456789");
        assert_eq!(first.len(), 1);
        assert!(first[0].is_err());
        assert!(buffer.push(b"more garbage without end").is_empty());
        assert_eq!(buffer.push(b"tail\n\"ok\"\n"), vec![Ok(b"\"ok\"".to_vec())]);
        // A line that completes past the limit in one read.
        let out = buffer.push(b"0123456789\n\"ok\"\n");
        assert!(out[0].is_err());
        assert_eq!(out[1], Ok(b"\"ok\"".to_vec()));
    }

    #[test]
    fn the_production_limits_are_exact() {
        // As documented: 64 KiB for a Node IPC line, 4096 bytes for a datagram.
        assert_eq!((MAX_IPC_LINE, MAX_DATAGRAM), (65_536, 4096));
        // A Node message of exactly MAX_IPC_LINE bytes passes; one more does not.
        let mut buffer = LineBuffer::new(MAX_IPC_LINE);
        let mut line = vec![b' '; MAX_IPC_LINE - 2];
        line.insert(0, b'"');
        line.push(b'"');
        line.push(b'\n');
        let out = buffer.push(&line);
        assert_eq!(out.len(), 1);
        assert_eq!(parse_ipc_line(out[0].as_ref().unwrap()), Ok(Some(Heartbeat)));
        let mut longer = vec![b' '; MAX_IPC_LINE + 1];
        longer.push(b'\n');
        assert!(buffer.push(&longer)[0].is_err());
        // A datagram of MAX_DATAGRAM bytes is read; one more is refused.
        let mut datagram = b"STATUS=".to_vec();
        datagram.resize(MAX_DATAGRAM, b'x');
        assert_eq!(parse_notify(&datagram).unwrap().messages.len(), 1);
        datagram.push(b'x');
        assert!(parse_notify(&datagram).is_err());
    }
}
