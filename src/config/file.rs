//! The config file as written, and its sections turned into settings, each
//! section with its own checks. Every error points at its place:
//! `FILE:LINE:COLUMN: KEY: reason`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::schema::KEYS;
use super::units::{HumanDuration, HumanSize, MAX_DURATION, format_duration, format_size_exact};
use super::values::*;
use super::{Overrides, defaults};
use crate::error::Error;

/// The config file as written. Every key is optional; unknown keys are
/// errors (`Source::parse` names them against schema::KEYS first).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub command: Option<Spanned<Vec<String>>>,
    pub workers: Option<Spanned<WorkerCount>>,
    pub min_ready: Option<Spanned<u32>>,
    pub listen: Option<Spanned<Vec<ListenAddr>>>,
    pub spread: Option<Spread>,
    pub working_directory: Option<Spanned<PathBuf>>,
    pub env: Option<BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
    pub readiness: Option<Readiness>,
    pub channel: Option<Spanned<Channel>>,
    pub ready_delay: Option<HumanDuration>,
    pub ready_timeout: Option<Spanned<HumanDuration>>,
    pub max_surge: Option<Spanned<u32>>,
    pub heartbeat: Option<Spanned<HeartbeatFile>>,
    pub memory: Option<Spanned<MemoryFile>>,
    pub http: Option<Spanned<HttpFile>>,
    pub stop_signal: Option<StopSignal>,
    pub stop_timeout: Option<HumanDuration>,
    pub max_restarts: Option<u32>,
    pub restart_window: Option<HumanDuration>,
    pub backoff_initial: Option<Spanned<HumanDuration>>,
    pub backoff_max: Option<Spanned<HumanDuration>>,
    pub backoff_reset: Option<HumanDuration>,
    pub max_spawn_rate: Option<Spanned<u32>>,
    pub min_uptime: Option<HumanDuration>,
    pub max_age: Option<Spanned<HumanDuration>>,
    pub max_age_jitter: Option<Spanned<HumanDuration>>,
    pub control_socket: Option<Spanned<PathBuf>>,
    pub name: Option<Spanned<String>>,
    pub log_level: Option<LogLevel>,
    pub node: Option<NodeKit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HeartbeatFile {
    interval: Option<Spanned<HumanDuration>>,
    timeout: Option<Spanned<HumanDuration>>,
    ping: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MemoryFile {
    limit: Option<Spanned<HumanSize>>,
    interval: Option<Spanned<HumanDuration>>,
    measure: Option<MemoryMeasure>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HttpFile {
    listen: Option<Spanned<ListenAddr>>,
}

/// The variables sheepdog sets in each worker's environment itself.
pub const RESERVED_ENV: [&str; 12] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "NODE_CHANNEL_FD",
    "NODE_CHANNEL_SERIALIZATION_MODE",
    "SHEEPDOG_WORKER_ID",
    "SHEEPDOG_GENERATION",
    "NODE_APP_INSTANCE",
    "JOURNAL_STREAM",
];

/// The longest string execve(2) takes (MAX_ARG_STRLEN, 32 pages), NUL included.
const MAX_ARG_STRLEN: usize = 128 * 1024;
/// What `[env]` may hold in all: a quarter of the usual 2 MiB that execve
/// takes for arguments and environment (a quarter of an 8 MiB stack limit),
/// leaving the rest to the command line and the environment sheepdog had.
const MAX_ENV_TOTAL: usize = 512 * 1024;

fn reserved_why(name: &str) -> &'static str {
    match name {
        n if n.starts_with("LISTEN_") => "the sockets it passes",
        "NOTIFY_SOCKET" | "WATCHDOG_USEC" | "WATCHDOG_PID" => "readiness and heartbeats over notify",
        n if n.starts_with("NODE_CHANNEL") => "the node-ipc channel",
        "JOURNAL_STREAM" => "the worker's own journal stream",
        "NODE_APP_INSTANCE" => "the worker's slot, as pm2 names it",
        _ => "the worker's slot and generation",
    }
}

/// A config file's name and text, to point at a place in it.
pub(super) struct Source<'a> {
    pub name: String,
    pub text: &'a str,
}

impl Source<'_> {
    /// `FILE:LINE:COLUMN`, or `FILE` when there is no place to point at.
    pub fn at(&self, span: Option<Range<usize>>) -> String {
        match span {
            Some(span) => {
                let before = &self.text[..span.start.min(self.text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("{}:{line}:{column}", self.name)
            }
            None => self.name.clone(),
        }
    }

    pub fn invalid(&self, span: Range<usize>, key: &str, why: impl Into<String>) -> Error {
        Error::config(format!("{}: {key}: {}", self.at(Some(span)), why.into()))
    }

    /// Parses the text as a config file.
    pub fn parse(&self) -> Result<FileConfig, Error> {
        let table = DeTable::parse(self.text)
            .map_err(|e| Error::config(format!("{}: {}", self.at(e.span()), e.message().trim())))?;
        self.refuse_unknown_keys(table.get_ref(), "")?;
        serde_path_to_error::deserialize(toml::de::Deserializer::from(table)).map_err(|e| {
            // Spanned<T> shows up in the path as a private field: not a key.
            let path = e.path().to_string().replace(".$__serde_spanned_private_value", "");
            let inner = e.into_inner();
            // Every value is under a key: the file's own errors (syntax,
            // duplicate keys) were reported by the parse above.
            Error::config(format!("{}: {path}: {}", self.at(inner.span()), inner.message().trim()))
        })
    }

    /// Every key must be one of schema::KEYS, or a section of them (whose
    /// keys are checked in turn): the first that is not is named at its
    /// place, with the likeliest known key. (`deny_unknown_fields` stays
    /// on the structs as a backstop.)
    fn refuse_unknown_keys(&self, table: &DeTable, section: &str) -> Result<(), Error> {
        let mut known: Vec<&str> = Vec::new();
        for key in KEYS.iter().filter_map(|k| k.key.strip_prefix(section)) {
            let name = key.split('.').next().unwrap_or(key);
            if !known.contains(&name) {
                known.push(name);
            }
        }
        for (key, value) in table {
            let name = key.get_ref().as_ref();
            let full = format!("{section}{name}");
            if KEYS.iter().any(|k| k.key == full) {
                continue;
            }
            if known.contains(&name) {
                if let DeValue::Table(inner) = value.get_ref() {
                    self.refuse_unknown_keys(inner, &format!("{full}."))?;
                }
                continue; // not a table: serde says what it expected
            }
            let hint = match closest(name, &known) {
                Some(like) => format!("did you mean `{like}`?"),
                None => format!("expected one of {}", known.join(", ")),
            };
            return Err(Error::config(format!(
                "{}: {full}: unknown key; {hint}",
                self.at(Some(key.span()))
            )));
        }
        Ok(())
    }
}

/// The known key a mistyped one most likely meant: at most two edits away.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k)
}

/// Levenshtein distance, for the few short names of a config.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Where the keys that the environment must agree with were written, for
/// checks made after parsing (is the program there, is the directory).
#[derive(Debug, Clone, Default)]
pub(super) struct Places {
    /// `FILE:LINE:COLUMN` of `command`, or "the command line" for `--`.
    pub command: String,
    pub working_directory: Option<String>,
}

impl Source<'_> {
    pub fn places(&self, file: &FileConfig, overrides: &Overrides) -> Places {
        Places {
            command: match &file.command {
                Some(command) if overrides.command.is_empty() => self.at(Some(command.span())),
                _ => "the command line".to_string(),
            },
            working_directory: file.working_directory.as_ref().map(|w| self.at(Some(w.span()))),
        }
    }
}

fn duration(value: &Option<HumanDuration>, default: Duration) -> Duration {
    value.map_or(default, |d| d.0)
}

/// A periodic duty's interval: anything under the minimum is a busy loop.
fn interval(
    value: &Option<Spanned<HumanDuration>>,
    default: Duration,
    key: &str,
    source: &Source,
) -> Result<Duration, Error> {
    match value {
        Some(interval) if interval.get_ref().0 < defaults::MIN_INTERVAL => Err(source.invalid(
            interval.span(),
            key,
            format!("must be at least {}", format_duration(defaults::MIN_INTERVAL)),
        )),
        Some(interval) => Ok(interval.get_ref().0),
        None => Ok(default),
    }
}

impl FileConfig {
    /// The worker command: `--` on the command line, else `command`.
    pub fn command(&self, overrides: &Overrides, source: &Source) -> Result<Vec<String>, Error> {
        if !overrides.command.is_empty() {
            return Ok(overrides.command.clone());
        }
        match &self.command {
            Some(command) if command.get_ref().first().is_none_or(String::is_empty) => Err(source.invalid(
                command.span(),
                "command",
                "is empty: name a program, e.g. [\"node\", \"server.js\"]",
            )),
            Some(command) => match command.get_ref().iter().position(|a| a.len() + 1 > MAX_ARG_STRLEN) {
                Some(index) => Err(source.invalid(
                    command.span(),
                    "command",
                    format!(
                        "argument {index} is {} bytes long, over the {MAX_ARG_STRLEN} execve(2) takes for one",
                        command.get_ref()[index].len()
                    ),
                )),
                None => Ok(command.get_ref().clone()),
            },
            None => Err(Error::config(format!(
                "{}: no command to run: set `command = [\"node\", \"server.js\"]` in the config or pass it after `--`",
                source.name
            ))),
        }
    }

    /// `workers` (or `--workers`), and `min_ready` within it.
    pub fn workers(&self, overrides: &Overrides, source: &Source) -> Result<(u32, u32), Error> {
        let workers = overrides
            .workers
            .or(self.workers.as_ref().map(|w| *w.get_ref()))
            .unwrap_or(WorkerCount::Auto)
            .resolve();
        let min_ready = match &self.min_ready {
            Some(min) if *min.get_ref() == 0 => {
                return Err(source.invalid(min.span(), "min_ready", "must be at least 1"));
            }
            Some(min) if *min.get_ref() > workers => {
                return Err(source.invalid(
                    min.span(),
                    "min_ready",
                    format!("is {} but there are only {workers} workers", min.get_ref()),
                ));
            }
            Some(min) => *min.get_ref(),
            None => workers,
        };
        Ok((workers, min_ready))
    }

    pub fn max_surge(&self, source: &Source) -> Result<u32, Error> {
        match &self.max_surge {
            Some(surge) if *surge.get_ref() == 0 => Err(source.invalid(
                surge.span(),
                "max_surge",
                "must be at least 1: a replacement starts before the worker it replaces stops",
            )),
            Some(surge) => Ok(*surge.get_ref()),
            None => Ok(defaults::MAX_SURGE),
        }
    }

    /// Backoff, the crash-loop breaker and the spawn rate.
    pub fn restart(&self, source: &Source) -> Result<RestartPolicy, Error> {
        let initial = self.backoff_initial.as_ref();
        let backoff_initial = initial.map_or(defaults::BACKOFF_INITIAL, |b| b.get_ref().0);
        let backoff_max = self
            .backoff_max
            .as_ref()
            .map_or(defaults::BACKOFF_MAX, |b| b.get_ref().0);
        if let Some(initial) = initial
            && backoff_initial < defaults::MIN_BACKOFF
        {
            return Err(source.invalid(
                initial.span(),
                "backoff_initial",
                format!(
                    "must be at least {}, or a crashing worker becomes a fork storm",
                    format_duration(defaults::MIN_BACKOFF)
                ),
            ));
        }
        if backoff_max < backoff_initial {
            let span = self.backoff_max.as_ref().or(initial).map(|s| s.span()).unwrap_or(0..0);
            return Err(source.invalid(
                span,
                "backoff_max",
                format!(
                    "{} is shorter than backoff_initial {}",
                    format_duration(backoff_max),
                    format_duration(backoff_initial)
                ),
            ));
        }
        let max_spawn_rate = match &self.max_spawn_rate {
            Some(rate) if *rate.get_ref() == 0 => {
                return Err(source.invalid(rate.span(), "max_spawn_rate", "must be at least 1 spawn per second"));
            }
            Some(rate) if *rate.get_ref() > defaults::MAX_SPAWN_RATE_LIMIT => {
                return Err(source.invalid(
                    rate.span(),
                    "max_spawn_rate",
                    format!(
                        "must be at most {} spawns per second: more is no guard against fork storms",
                        defaults::MAX_SPAWN_RATE_LIMIT
                    ),
                ));
            }
            Some(rate) => *rate.get_ref(),
            None => defaults::MAX_SPAWN_RATE,
        };
        Ok(RestartPolicy {
            max_restarts: self.max_restarts.unwrap_or(defaults::MAX_RESTARTS),
            window: duration(&self.restart_window, defaults::RESTART_WINDOW),
            backoff_initial,
            backoff_max,
            backoff_reset: duration(&self.backoff_reset, defaults::BACKOFF_RESET),
            max_spawn_rate,
            min_uptime: duration(&self.min_uptime, defaults::MIN_UPTIME),
        })
    }

    /// `max_age` and `max_age_jitter`: recycling by age, off by default.
    pub fn recycle(&self, source: &Source) -> Result<RecyclePolicy, Error> {
        let jitter = self
            .max_age_jitter
            .as_ref()
            .map_or(defaults::MAX_AGE_JITTER, |j| j.get_ref().0);
        match &self.max_age {
            None => match &self.max_age_jitter {
                Some(j) => Err(source.invalid(j.span(), "max_age_jitter", "needs max_age")),
                None => Ok(RecyclePolicy::default()),
            },
            Some(age) if age.get_ref().0 < defaults::MIN_MAX_AGE => Err(source.invalid(
                age.span(),
                "max_age",
                format!(
                    "must be at least {}: recycling more often is churn",
                    format_duration(defaults::MIN_MAX_AGE)
                ),
            )),
            Some(age) => Ok(RecyclePolicy {
                max_age: Some(age.get_ref().0),
                jitter,
            }),
        }
    }

    /// `listen` (or `--listen`): at least one address.
    /// `listen`, or `--listen`; a relative unix path in the file is relative
    /// to the file's directory (`base`), as `working_directory` is.
    pub fn listen(
        &self,
        overrides: &Overrides,
        base: Option<&Path>,
        source: &Source,
    ) -> Result<Vec<ListenAddr>, Error> {
        if !overrides.listen.is_empty() {
            return Ok(overrides.listen.clone());
        }
        match &self.listen {
            Some(listen) if listen.get_ref().is_empty() => Err(source.invalid(
                listen.span(),
                "listen",
                "is empty: give at least one address, e.g. [\"127.0.0.1:8080\"]",
            )),
            Some(listen) => listen
                .get_ref()
                .iter()
                .map(|addr| match (addr, base) {
                    (ListenAddr::Unix(path), Some(base)) if path.is_relative() => {
                        let full = base.join(path);
                        if full.as_os_str().len() > MAX_UNIX_PATH {
                            return Err(source.invalid(
                                listen.span(),
                                "listen",
                                format!(
                                    "the unix socket path {} is longer than the {MAX_UNIX_PATH} bytes the kernel takes",
                                    full.display()
                                ),
                            ));
                        }
                        Ok(ListenAddr::Unix(full))
                    }
                    _ => Ok(addr.clone()),
                })
                .collect(),
            None => Ok(vec![defaults::LISTEN.parse().expect("the default address parses")]),
        }
    }

    /// `[http]` `listen`: where `/healthz`, `/readyz` and `/metrics` are
    /// served, if anywhere; a relative unix path is relative to `base`.
    pub fn http(&self, base: Option<&Path>, source: &Source) -> Result<Option<ListenAddr>, Error> {
        let Some(section) = &self.http else { return Ok(None) };
        let Some(listen) = &section.get_ref().listen else {
            return Err(source.invalid(
                section.span(),
                "http.listen",
                "is missing: give the address to serve /healthz, /readyz and /metrics on, e.g. \"127.0.0.1:9101\" \
                 (or leave out [http])",
            ));
        };
        match (listen.get_ref(), base) {
            (ListenAddr::Unix(path), Some(base)) if path.is_relative() => {
                let full = base.join(path);
                if full.as_os_str().len() > MAX_UNIX_PATH {
                    return Err(source.invalid(
                        listen.span(),
                        "http.listen",
                        format!(
                            "the unix socket path {} is longer than the {MAX_UNIX_PATH} bytes the kernel takes",
                            full.display()
                        ),
                    ));
                }
                Ok(Some(ListenAddr::Unix(full)))
            }
            (addr, _) => Ok(Some(addr.clone())),
        }
    }

    /// `[env]`: any variable but those sheepdog sets for each worker itself
    /// (a second copy would shadow or be shadowed by its own, depending on
    /// who reads it: glibc's getenv takes the first) and names no
    /// environment can hold.
    pub fn env(&self, source: &Source) -> Result<BTreeMap<String, String>, Error> {
        let mut env = BTreeMap::new();
        for (key, value) in self.env.iter().flatten() {
            let name = key.get_ref();
            let at = |why: String| Err(source.invalid(key.span(), &format!("env.{name}"), why));
            if name.is_empty() {
                return Err(source.invalid(key.span(), "env", "an empty variable name"));
            } else if name.contains(['=', '\0']) {
                return at("a variable name cannot hold '=' or NUL".into());
            } else if RESERVED_ENV.contains(&name.as_str()) {
                return at(format!(
                    "is set by sheepdog for each worker ({}); it cannot be set here",
                    reserved_why(name)
                ));
            }
            let text = match value.get_ref() {
                toml::Value::String(text) => text,
                other => {
                    let hint = match other {
                        toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                            format!(": write {name} = \"{other}\"")
                        }
                        _ => String::new(),
                    };
                    return Err(source.invalid(
                        value.span(),
                        &format!("env.{name}"),
                        format!("must be a string (an environment holds text){hint}"),
                    ));
                }
            };
            if text.contains('\0') {
                return Err(source.invalid(value.span(), &format!("env.{name}"), "a value cannot hold NUL"));
            } else if name.len() + 1 + text.len() >= MAX_ARG_STRLEN {
                return Err(source.invalid(
                    value.span(),
                    &format!("env.{name}"),
                    format!("is longer than the {MAX_ARG_STRLEN} bytes execve(2) takes for one variable"),
                ));
            }
            env.insert(name.clone(), text.clone());
        }
        let total: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        if total > MAX_ENV_TOTAL
            && let Some(table) = &self.env
        {
            let (key, _) = table.iter().next().expect("a non-empty [env]");
            return Err(source.invalid(
                key.span(),
                "env",
                format!(
                    "holds {total} bytes: more than the {MAX_ENV_TOTAL} that leave room, under execve(2)'s limit, \
                     for the command and the environment sheepdog passes on"
                ),
            ));
        }
        Ok(env)
    }

    /// `control_socket`, if set: a path.
    pub fn control_socket(&self, source: &Source) -> Result<Option<PathBuf>, Error> {
        match &self.control_socket {
            Some(socket) if socket.get_ref().as_os_str().is_empty() => Err(source.invalid(
                socket.span(),
                "control_socket",
                "is empty: leave it out for the default, or give a path",
            )),
            Some(socket) => Ok(Some(socket.get_ref().clone())),
            None => Ok(None),
        }
    }

    pub fn ready_delay(&self) -> Duration {
        duration(&self.ready_delay, defaults::READY_DELAY)
    }

    /// `ready_timeout`: a worker that must say it is ready needs some time.
    pub fn ready_timeout(&self, readiness: Readiness, source: &Source) -> Result<Duration, Error> {
        let timeout = self
            .ready_timeout
            .as_ref()
            .map_or(defaults::READY_TIMEOUT, |t| t.get_ref().0);
        match &self.ready_timeout {
            Some(t) if readiness != Readiness::None && timeout < defaults::MIN_READY_TIMEOUT => Err(source.invalid(
                t.span(),
                "ready_timeout",
                format!(
                    "must be at least {}: no worker can say it is ready sooner, so every start would fail",
                    format_duration(defaults::MIN_READY_TIMEOUT)
                ),
            )),
            _ => Ok(timeout),
        }
    }

    /// `name`: journal identifiers (NAME-worker-SLOT), one line each.
    pub fn name(&self, source: &Source) -> Result<Option<String>, Error> {
        let Some(name) = &self.name else { return Ok(None) };
        let text = name.get_ref();
        let why = if text.is_empty() {
            "is empty".to_string()
        } else if text.chars().any(char::is_control) {
            "cannot hold control characters (a newline would break the journal's stream header)".to_string()
        } else if text.len() > defaults::MAX_NAME {
            format!("is longer than {} bytes", defaults::MAX_NAME)
        } else {
            return Ok(Some(text.clone()));
        };
        Err(source.invalid(name.span(), "name", why))
    }

    pub fn stop_timeout(&self) -> Duration {
        duration(&self.stop_timeout, defaults::STOP_TIMEOUT)
    }

    /// `channel`: the readiness protocol's, or, with `readiness = "none"`,
    /// any.
    /// The channel: as written, else readiness's; a Node worker ready by
    /// delay still gets its IPC channel (`process.send` is there, as under
    /// pm2, and it can be a cluster worker).
    pub fn channel(&self, readiness: Readiness, node: bool, source: &Source) -> Result<Channel, Error> {
        match &self.channel {
            None if node && readiness == Readiness::None => Ok(Channel::NodeIpc),
            None => Ok(readiness.channel()),
            Some(channel) if readiness == Readiness::None || *channel.get_ref() == readiness.channel() => {
                Ok(*channel.get_ref())
            }
            Some(channel) => Err(source.invalid(
                channel.span(),
                "channel",
                format!(
                    "readiness = \"{readiness}\" speaks over channel \"{}\"; another channel goes with readiness = \"none\"",
                    readiness.channel()
                ),
            )),
        }
    }

    /// `[heartbeat]`: only with a channel a worker can heartbeat over.
    pub fn heartbeat(&self, channel: Channel, source: &Source) -> Result<Option<HeartbeatPolicy>, Error> {
        let Some(section) = &self.heartbeat else {
            return Ok(None);
        };
        let heartbeat = section.get_ref();
        if channel == Channel::None {
            return Err(source.invalid(
                section.span(),
                "heartbeat",
                "needs a channel to send them over: readiness = \"notify\" or \"node-ipc\", or \
                 channel = \"node-ipc\" (or \"notify\") with readiness = \"none\"",
            ));
        }
        let interval = interval(
            &heartbeat.interval,
            defaults::HEARTBEAT_INTERVAL,
            "heartbeat.interval",
            source,
        )?;
        let timeout = heartbeat
            .timeout
            .as_ref()
            .map_or(interval * defaults::HEARTBEAT_TIMEOUTS, |t| t.get_ref().0);
        if heartbeat.timeout.is_none() && timeout > MAX_DURATION {
            let span = heartbeat.interval.as_ref().map_or(section.span(), |i| i.span());
            return Err(source.invalid(
                span,
                "heartbeat.interval",
                format!(
                    "gives a timeout of {} ({} intervals), longer than a year: give a shorter interval or a timeout",
                    format_duration(timeout),
                    defaults::HEARTBEAT_TIMEOUTS
                ),
            ));
        }
        if let Some(t) = &heartbeat.timeout
            && timeout <= interval
        {
            return Err(source.invalid(
                t.span(),
                "heartbeat.timeout",
                format!(
                    "{} must be longer than the interval {}",
                    format_duration(timeout),
                    format_duration(interval)
                ),
            ));
        }
        Ok(Some(HeartbeatPolicy { interval, timeout }))
    }

    /// `[heartbeat] ping`: what node-ipc workers are pinged with.
    pub fn heartbeat_ping(&self, channel: Channel, source: &Source) -> Result<String, Error> {
        let ping = self.heartbeat.as_ref().and_then(|h| h.get_ref().ping.as_ref());
        match ping {
            None => Ok(defaults::HEARTBEAT_PING.to_string()),
            Some(ping) if channel != Channel::NodeIpc => Err(source.invalid(
                ping.span(),
                "heartbeat.ping",
                "is for node-ipc workers: over notify a worker sends WATCHDOG=1 by itself",
            )),
            Some(ping) if ping.get_ref().is_empty() => Err(source.invalid(
                ping.span(),
                "heartbeat.ping",
                "is empty: e.g. \"ping\", or \"ping#{pid}\" for workers that answer their own pid",
            )),
            Some(ping) => Ok(ping.get_ref().clone()),
        }
    }

    /// `[memory]`.
    pub fn memory(&self, source: &Source) -> Result<MemoryPolicy, Error> {
        let Some(section) = &self.memory else {
            return Ok(MemoryPolicy {
                limit: None,
                interval: defaults::MEMORY_INTERVAL,
                measure: defaults::MEMORY_MEASURE,
            });
        };
        let memory = section.get_ref();
        let interval = interval(&memory.interval, defaults::MEMORY_INTERVAL, "memory.interval", source)?;
        if let Some(limit) = &memory.limit
            && limit.get_ref().0 < defaults::MIN_MEMORY_LIMIT
        {
            return Err(source.invalid(
                limit.span(),
                "memory.limit",
                format!(
                    "must be at least {}: under it every worker is over, and replaced at every measurement",
                    format_size_exact(defaults::MIN_MEMORY_LIMIT)
                ),
            ));
        }
        Ok(MemoryPolicy {
            limit: memory.limit.as_ref().map(|l| l.get_ref().0),
            interval,
            measure: memory.measure.unwrap_or(defaults::MEMORY_MEASURE),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::edit_distance;

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(edit_distance("limit", "limit"), 0);
        assert_eq!(edit_distance("limmit", "limit"), 1);
        assert_eq!(edit_distance("wokers", "workers"), 1);
        assert_eq!(edit_distance("workers", "wrokers"), 2);
        assert_eq!(edit_distance("abc", "xyz"), 3);
        assert_eq!(edit_distance("", "name"), 4);
        assert_eq!(edit_distance("name", ""), 4);
        assert_eq!(edit_distance("xname", "name"), 1);
    }
}
