//! The control protocol, typed: one JSON object per line each way, both
//! carrying `"v": 1`. The server, the client and the status view all speak
//! it through these types, never through untyped JSON.
//!
//! Requests: `{"v":1,"cmd":"status"}`, `{"v":1,"cmd":"reload"}`,
//! `{"v":1,"cmd":"scale","workers":4}`. Replies carry `"ok"` and either the
//! status (`supervisor`, `workers`), a `"message"`, or an `"error"`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub const PROTOCOL_VERSION: u64 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Command {
    Status,
    Reload,
    Scale {
        workers: usize,
    },
    /// `scale +N` / `scale -N`: relative to the number of workers wanted now.
    #[serde(rename = "scale")]
    ScaleBy {
        by: i64,
    },
    /// `scale auto` (or `max`): one per CPU the supervisor may use.
    #[serde(rename = "scale")]
    ScaleAuto {
        workers: Auto,
    },
    /// Hand the flock over to the binary now installed at sheepdog's path.
    Upgrade,
    /// Replace the ready worker of `slot`, replacement first.
    Replace {
        slot: usize,
    },
    /// The workers' last lines: `lines` at most, of the worker in `slot`
    /// only if given, after line `after` only if given (`logs -f`).
    Logs {
        lines: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        slot: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
    },
}

/// The most lines one `logs` reply carries.
pub const MAX_LOG_LINES: usize = crate::worker::output::KEPT_LINES;

/// The answer to `logs`: the lines, or where the workers' lines are instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logs {
    /// The app's name: a worker's lines are NAME-worker-SLOT's.
    #[serde(default)]
    pub name: String,
    /// The workers write to the journal: read them there.
    #[serde(default)]
    pub journal: bool,
    /// The systemd unit sheepdog runs in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default)]
    pub lines: Vec<crate::worker::output::LogLine>,
    /// The newest line's seq: where a follower goes on from.
    #[serde(default)]
    pub last: u64,
}

/// The word `"auto"`, as `scale auto` sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Auto {
    Auto,
}

/// The request line for `command`, without its newline.
pub fn encode_request(command: &Command) -> String {
    let mut value = serde_json::to_value(command).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut value {
        map.insert("v".into(), json!(PROTOCOL_VERSION));
    }
    value.to_string()
}

/// Parses one request line: `{"v": 1, "cmd": "status"}`. Strict, since a
/// request changes the flock: a duplicate key, a key the command does not
/// take (`{"cmd":"reload","workers":3}` is a mistyped scale, not a reload),
/// or a worker count out of range is refused, never guessed at.
pub fn parse_request(line: &[u8]) -> Result<Command, String> {
    let StrictObject(mut map) = serde_json::from_slice(line).map_err(|e| {
        let e = e.to_string();
        if e.contains("duplicate key") || e.contains("a JSON object") {
            e
        } else {
            format!("not JSON: {e}")
        }
    })?;
    match map.remove("v").map(|v| v.as_u64().ok_or(v)) {
        Some(Ok(PROTOCOL_VERSION)) => {}
        Some(Ok(other)) => {
            return Err(format!(
                "protocol version {other} is not supported (this sheepdog speaks {PROTOCOL_VERSION})"
            ));
        }
        Some(Err(v)) => return Err(format!("bad request: \"v\" must be a version number, not {v}")),
        None => return Err("missing \"v\" (protocol version)".into()),
    }
    let command = match map.remove("cmd") {
        Some(Value::String(cmd)) => cmd,
        Some(other) => return Err(format!("bad request: \"cmd\" must be a string, not {other}")),
        None => return Err("bad request: missing \"cmd\"".into()),
    };
    let command = match command.as_str() {
        "status" => Command::Status,
        "reload" => Command::Reload,
        "replace" => match map
            .remove("slot")
            .map(|v| v.as_u64().filter(|n| *n < MAX_SCALE).ok_or(v))
        {
            Some(Ok(slot)) => Command::Replace { slot: slot as usize },
            Some(Err(v)) => return Err(format!("bad request: \"slot\" must be a worker's slot, not {v}")),
            None => return Err("bad request: replace needs \"slot\"".into()),
        },
        "logs" => {
            let number = |value: Value, what: &str, max: u64| {
                value
                    .as_u64()
                    .filter(|n| *n <= max)
                    .ok_or_else(|| format!("bad request: \"{what}\" must be a whole number up to {max}, not {value}"))
            };
            let lines = match map.remove("lines") {
                Some(value) => number(value, "lines", MAX_LOG_LINES as u64)? as usize,
                None => return Err("bad request: logs needs \"lines\"".into()),
            };
            let slot = map
                .remove("slot")
                .map(|v| number(v, "slot", MAX_SCALE))
                .transpose()?
                .map(|n| n as usize);
            let after = map.remove("after").map(|v| number(v, "after", u64::MAX)).transpose()?;
            Command::Logs { lines, slot, after }
        }
        "upgrade" => Command::Upgrade,
        "scale" => match (map.remove("workers"), map.remove("by")) {
            (Some(Value::String(word)), None) if word == "auto" => Command::ScaleAuto { workers: Auto::Auto },
            (Some(value), None) => {
                let workers = value.as_u64().filter(|n| (1..=MAX_SCALE).contains(n)).ok_or_else(|| {
                    format!(
                        "bad request: \"workers\" must be a whole number from 1 to {MAX_SCALE} or \"auto\", not {value}"
                    )
                })?;
                Command::Scale {
                    workers: workers as usize,
                }
            }
            (None, Some(value)) => {
                let by = value
                    .as_i64()
                    .filter(|n| *n != 0 && n.unsigned_abs() <= MAX_SCALE)
                    .ok_or_else(|| {
                        format!("bad request: \"by\" must be a whole number from -{MAX_SCALE} to {MAX_SCALE}, not 0, not {value}")
                    })?;
                Command::ScaleBy { by }
            }
            (Some(_), Some(_)) => return Err("bad request: scale takes \"workers\" or \"by\", not both".into()),
            (None, None) => return Err("bad request: scale needs \"workers\" or \"by\"".into()),
        },
        other => {
            return Err(format!(
                "bad request: unknown command {other:?} (status, reload, scale, upgrade, replace or logs)"
            ));
        }
    };
    if let Some(key) = map.keys().next() {
        return Err(format!("bad request: {command:?} takes no {key:?}"));
    }
    Ok(command)
}

/// The most workers `scale` may ask for (as `workers` in a config).
const MAX_SCALE: u64 = crate::config::MAX_WORKERS as u64;

/// A JSON object whose keys are each given once.
struct StrictObject(Map<String, Value>);

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = StrictObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object (a request)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<StrictObject, A::Error> {
                let mut map = Map::new();
                while let Some((key, value)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!("bad request: duplicate key {key:?}")));
                    }
                    map.insert(key, value);
                }
                Ok(StrictObject(map))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(Box<StatusReport>),
    /// It went well (a reload that ended, a scale that began).
    Done(String),
    Failed(String),
    Logs(Logs),
}

impl Reply {
    /// The reply line, without its newline.
    pub fn encode(&self) -> String {
        let mut map = Map::new();
        map.insert("v".into(), json!(PROTOCOL_VERSION));
        match self {
            Reply::Status(report) => {
                map.insert("ok".into(), json!(true));
                if let Ok(Value::Object(fields)) = serde_json::to_value(report) {
                    map.extend(fields);
                }
            }
            Reply::Done(message) => {
                map.insert("ok".into(), json!(true));
                map.insert("message".into(), json!(message));
            }
            Reply::Failed(error) => {
                map.insert("ok".into(), json!(false));
                map.insert("error".into(), json!(error));
            }
            Reply::Logs(logs) => {
                map.insert("ok".into(), json!(true));
                map.insert("logs".into(), serde_json::to_value(logs).unwrap_or(Value::Null));
            }
        }
        Value::Object(map).to_string()
    }

    /// Reads a reply line; anything malformed is an error, never a panic.
    /// Every string in it comes out [printable](crate::text::printable):
    /// whatever a client prints of a reply, it prints no escape sequence
    /// the server put there.
    pub fn decode(line: &[u8]) -> Result<Reply, String> {
        let value: Value = serde_json::from_slice(line).map_err(|e| format!("unreadable reply: {e}"))?;
        let value = crate::text::printable_json(value);
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
        match value.get("ok").and_then(Value::as_bool) {
            Some(false) => Ok(Reply::Failed(
                text("error").unwrap_or_else(|| "failed, with no reason given".into()),
            )),
            Some(true) if value.get("logs").is_some() => serde_json::from_value(value["logs"].clone())
                .map(Reply::Logs)
                .map_err(|e| format!("unreadable logs reply: {e}")),
            Some(true) => match text("message") {
                Some(message) => Ok(Reply::Done(message)),
                None => serde_json::from_value(value)
                    .map(|report| Reply::Status(Box::new(report)))
                    .map_err(|e| format!("unreadable status reply: {e}")),
            },
            None => Err("unreadable reply: no \"ok\"".into()),
        }
    }
}

/// `sheepdog status`: the supervisor, a row per worker, and the slots
/// waiting to be refilled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub supervisor: SupervisorStatus,
    pub workers: Vec<WorkerStatus>,
    #[serde(default)]
    pub waiting: Vec<WaitingSlot>,
}

/// A slot with no worker: its last one exited and the next is not started
/// yet (backoff, the spawn budget).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitingSlot {
    pub slot: usize,
    pub restarts: u32,
    /// Seconds until its worker is started.
    pub restart_in_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisorStatus {
    pub version: String,
    pub pid: u32,
    pub uptime_s: f64,
    /// The app's name (journal identifiers are NAME-worker-SLOT).
    pub name: String,
    /// The config file's absolute path, when there is one.
    pub config: Option<String>,
    pub generation: u32,
    pub desired: usize,
    pub ready: usize,
    pub restarts: u32,
    pub reloading_to: Option<u32>,
    pub last_reload: Option<LastReload>,
    /// Why the flock is not ready (the watchdog relay's rule), when it is not.
    #[serde(default)]
    pub unready: Option<String>,
    /// Workers that ended, by cause (`crash`, `signal`, `hung`, ...), zeros included.
    #[serde(default)]
    pub replacements: BTreeMap<String, u64>,
    #[serde(default)]
    pub reloads: ReloadCounts,
    #[serde(default)]
    pub reload_seconds: HistogramStatus,
    /// Times the crash-loop breaker tripped.
    #[serde(default)]
    pub crash_loops: u64,
    /// Each listening socket's accept queue, sampled when the report was made.
    #[serde(default)]
    pub listen_queues: Vec<QueueStatus>,
    /// The supervisor process itself.
    #[serde(default)]
    pub cpu_seconds: Option<f64>,
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    #[serde(default)]
    pub open_fds: Option<u64>,
    /// In-place upgrades of the supervisor, if there were any.
    #[serde(default)]
    pub upgraded: Option<UpgradeStatus>,
    /// The path an upgrade execs: where the supervisor was started from.
    #[serde(default)]
    pub exe: Option<String>,
    /// How new connections are spread over the workers.
    #[serde(default)]
    pub spread: Option<String>,
}

/// The supervisor's in-place upgrades.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeStatus {
    /// How many so far.
    pub count: u32,
    /// The version before the last one.
    pub from: String,
    /// When the last one was, in seconds since the epoch.
    pub at_unix_s: f64,
    /// How long the last one left events unhandled, in milliseconds.
    pub blind_ms: Option<f64>,
}

/// Reloads by how they ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadCounts {
    pub ok: u64,
    pub failed: u64,
    pub refused: u64,
}

/// A histogram: `counts[i]` observations at or under `le[i]` seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramStatus {
    pub le: Vec<f64>,
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

/// One listening socket's accept queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    pub address: String,
    /// Connections waiting for a worker to accept them.
    pub queued: u32,
    /// The queue's limit (the listen() backlog).
    pub backlog: u32,
    /// Which of the address's queues (one per worker) it is, if it has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReload {
    /// The generation it rolled to, or tried to; null for a refused reload.
    pub generation: Option<u32>,
    pub ok: bool,
    pub message: String,
}

/// Where a worker is in its life, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerPhase {
    Starting,
    Ready,
    /// Ready, its replacement on the way.
    Retiring,
    Stopping,
    /// A state a newer sheepdog named and this client does not know.
    #[serde(other)]
    Other,
}

impl WorkerPhase {
    /// Every phase a worker of this build can be in.
    pub const ALL: [WorkerPhase; 4] = [
        WorkerPhase::Starting,
        WorkerPhase::Ready,
        WorkerPhase::Retiring,
        WorkerPhase::Stopping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerPhase::Starting => "starting",
            WorkerPhase::Ready => "ready",
            WorkerPhase::Retiring => "retiring",
            WorkerPhase::Stopping => "stopping",
            WorkerPhase::Other => "?",
        }
    }
}

impl std::fmt::Display for WorkerPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub slot: usize,
    pub pid: i32,
    pub generation: u32,
    pub state: WorkerPhase,
    pub uptime_s: f64,
    pub restarts: u32,
    pub memory_bytes: Option<u64>,
    /// Over its life, in % of one core.
    pub cpu_percent: Option<f64>,
    /// CPU time used, user and system (the worker process itself).
    #[serde(default)]
    pub cpu_seconds: Option<f64>,
    /// Its process tree's resident and proportional set sizes, as last measured.
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    #[serde(default)]
    pub pss_bytes: Option<u64>,
    /// With heartbeats: seconds since the last one.
    pub heartbeat_age_s: Option<f64>,
    /// The last STATUS= it sent.
    pub status: Option<String>,
    /// TCP ports it listens on itself, not on the socket sheepdog passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listens_itself: Vec<String>,
    /// The queue it accepts from, when each worker has one of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
    /// New connections sent to it since it started (round robin only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    /// A Node worker's V8 heap, used and total (from sheepdog's preload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap_used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap_total_bytes: Option<u64>,
    /// A Node worker's longest event-loop delay over the last 2 s, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_loop_lag_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_state_is_a_word_and_one_this_client_does_not_know_is_kept_apart() {
        for phase in WorkerPhase::ALL {
            let json = serde_json::to_string(&phase).unwrap();
            assert_eq!(json, format!("\"{phase}\""));
            assert_eq!(serde_json::from_str::<WorkerPhase>(&json).unwrap(), phase);
        }
        assert_eq!(
            serde_json::from_str::<WorkerPhase>("\"hibernating\"").unwrap(),
            WorkerPhase::Other
        );
    }

    #[test]
    fn requests_are_versioned_json_lines() {
        assert_eq!(parse_request(br#"{"v":1,"cmd":"status"}"#), Ok(Command::Status));
        assert_eq!(parse_request(br#"{"v":1,"cmd":"reload"}"#), Ok(Command::Reload));
        assert_eq!(parse_request(br#"{"v":1,"cmd":"upgrade"}"#), Ok(Command::Upgrade));
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"scale","workers":4}"#),
            Ok(Command::Scale { workers: 4 })
        );
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"scale","by":-2}"#),
            Ok(Command::ScaleBy { by: -2 })
        );
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"scale","workers":"auto"}"#),
            Ok(Command::ScaleAuto { workers: Auto::Auto })
        );
        let refused: [(&[u8], &str); 19] = [
            (br#"{"cmd":"status"}"#, "missing \"v\""),
            (br#"{"v":2,"cmd":"status"}"#, "version 2 is not supported"),
            (br#"{"v":"1","cmd":"status"}"#, "\"v\" must be a version number"),
            (br#"{"v":1,"cmd":"explode"}"#, "unknown command \"explode\""),
            (br#"{"v":1}"#, "missing \"cmd\""),
            (br#"{"v":1,"cmd":7}"#, "\"cmd\" must be a string"),
            (br#"{"v":1,"cmd":"scale"}"#, "scale needs \"workers\" or \"by\""),
            // A mistyped scale is not a reload; nothing takes a stray key.
            (br#"{"v":1,"cmd":"reload","workers":3}"#, "Reload takes no \"workers\""),
            (
                br#"{"v":1,"cmd":"status","verbose":true}"#,
                "Status takes no \"verbose\"",
            ),
            (
                br#"{"v":1,"cmd":"scale","workers":2,"cmd":"reload"}"#,
                "duplicate key \"cmd\"",
            ),
            (
                br#"{"v":1,"cmd":"scale","workers":0}"#,
                "from 1 to 4096 or \"auto\", not 0",
            ),
            (br#"{"v":1,"cmd":"scale","workers":4097}"#, "or \"auto\", not 4097"),
            (br#"{"v":1,"cmd":"scale","workers":-1}"#, "or \"auto\", not -1"),
            (br#"{"v":1,"cmd":"scale","by":0}"#, "not 0"),
            (br#"{"v":1,"cmd":"scale","by":1.5}"#, "\"by\" must be a whole number"),
            (br#"{"v":1,"cmd":"scale","workers":"max"}"#, "or \"auto\", not \"max\""),
            (br#"{"v":1,"cmd":"scale","workers":2,"by":1}"#, "not both"),
            (b"[1,2]", "JSON object"),
            (b"\xff", "not JSON"),
        ];
        for (line, says) in refused {
            let error = parse_request(line).unwrap_err();
            assert!(error.contains(says), "{error}");
            // Valid JSON that breaks the protocol is not called "not JSON".
            assert_eq!(error.starts_with("not JSON"), says == "not JSON", "{error}");
        }
    }

    #[test]
    fn a_request_encodes_to_what_the_server_parses() {
        for command in [
            Command::Status,
            Command::Reload,
            Command::Scale { workers: 3 },
            Command::ScaleBy { by: -1 },
            Command::ScaleBy { by: 2 },
            Command::ScaleAuto { workers: Auto::Auto },
            Command::Upgrade,
        ] {
            let line = encode_request(&command);
            assert!(line.contains("\"v\":1"), "{line}");
            assert_eq!(parse_request(line.as_bytes()), Ok(command));
        }
    }

    fn report() -> StatusReport {
        StatusReport {
            supervisor: SupervisorStatus {
                version: "0.1.0".into(),
                pid: 42,
                uptime_s: 1.5,
                name: "myapp".into(),
                config: Some("/etc/sheepdog/myapp.toml".into()),
                generation: 2,
                desired: 1,
                ready: 1,
                restarts: 0,
                reloading_to: None,
                last_reload: Some(LastReload {
                    generation: Some(2),
                    ok: true,
                    message: "reloaded".into(),
                }),
                unready: None,
                replacements: BTreeMap::from([("crash".into(), 2), ("hung".into(), 0)]),
                reloads: ReloadCounts {
                    ok: 1,
                    failed: 0,
                    refused: 2,
                },
                reload_seconds: HistogramStatus {
                    le: vec![0.5, 1.0],
                    counts: vec![0, 1],
                    count: 1,
                    sum: 0.75,
                },
                crash_loops: 0,
                listen_queues: vec![QueueStatus {
                    address: "127.0.0.1:8080".into(),
                    queued: 3,
                    backlog: 4096,
                    queue: Some(1),
                }],
                cpu_seconds: Some(0.25),
                rss_bytes: Some(3 << 20),
                open_fds: Some(17),
                upgraded: Some(UpgradeStatus {
                    count: 1,
                    from: "0.0.9".into(),
                    at_unix_s: 1_796_479_331.25,
                    blind_ms: Some(8.5),
                }),
                exe: Some("/usr/bin/sheepdog".into()),
                spread: Some("round-robin over 3 queues".into()),
            },
            workers: vec![WorkerStatus {
                slot: 0,
                pid: 100,
                generation: 2,
                state: WorkerPhase::Ready,
                uptime_s: 1.0,
                restarts: 0,
                memory_bytes: None,
                cpu_percent: Some(0.5),
                cpu_seconds: Some(1.25),
                rss_bytes: Some(40 << 20),
                pss_bytes: Some(30 << 20),
                heartbeat_age_s: None,
                status: None,
                listens_itself: vec!["127.0.0.1:3000".into()],
                queue: Some(0),
                connections: Some(12),
                heap_used_bytes: Some(20 << 20),
                heap_total_bytes: Some(32 << 20),
                event_loop_lag_ms: Some(11.5),
            }],
            waiting: vec![WaitingSlot {
                slot: 1,
                restarts: 3,
                restart_in_s: 2.5,
            }],
        }
    }

    #[test]
    fn replies_round_trip_and_keep_their_wire_shape() {
        for reply in [
            Reply::Status(Box::new(report())),
            Reply::Done("scaling to 3 workers".into()),
            Reply::Failed("no".into()),
        ] {
            let line = reply.encode();
            assert!(line.contains("\"v\":1") && line.contains("\"ok\":"), "{line}");
            assert_eq!(Reply::decode(line.as_bytes()), Ok(reply));
        }
        let wire: Value = serde_json::from_str(&Reply::Failed("no".into()).encode()).unwrap();
        assert_eq!(wire, json!({"v": 1, "ok": false, "error": "no"}));
    }

    #[test]
    fn a_status_reply_missing_a_field_deep_inside_is_an_error_not_a_panic() {
        let mut wire: Value = serde_json::from_str(&Reply::Status(Box::new(report())).encode()).unwrap();
        for missing in ["ok", "message"] {
            let mut broken = wire.clone();
            broken["supervisor"]["last_reload"]
                .as_object_mut()
                .unwrap()
                .remove(missing);
            let error = Reply::decode(broken.to_string().as_bytes()).unwrap_err();
            assert!(error.contains(&format!("missing field `{missing}`")), "{error}");
        }
        wire["workers"][0]["pid"] = json!("not a pid");
        assert!(Reply::decode(wire.to_string().as_bytes()).is_err());
    }

    #[test]
    fn a_malformed_reply_is_an_error_not_a_panic() {
        assert!(Reply::decode(b"garbage").is_err());
        assert!(Reply::decode(br#"{"v":1}"#).is_err());
        assert!(Reply::decode(br#"{"v":1,"ok":true,"supervisor":{}}"#).is_err());
        assert_eq!(
            Reply::decode(br#"{"v":1,"ok":false}"#),
            Ok(Reply::Failed("failed, with no reason given".into()))
        );
    }
}
