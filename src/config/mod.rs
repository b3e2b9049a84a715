//! The TOML config, its defaults, and its validation. A bad value is reported as
//! `FILE:LINE:COLUMN: KEY: reason`, before anything is started (exit 78).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;
use toml::Spanned;

pub mod units;

use units::{HumanDuration, HumanSize, format_duration, format_size};

/// The most workers one sheepdog will run, whatever the config or SIGTTIN say.
pub const MAX_WORKERS: u32 = 4096;

/// A config error, already worded for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The config file as written. Every key is optional; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    command: Option<Spanned<Vec<String>>>,
    workers: Option<Spanned<WorkerCount>>,
    min_ready: Option<Spanned<u32>>,
    listen: Option<Vec<ListenAddr>>,
    working_directory: Option<PathBuf>,
    env: Option<BTreeMap<String, String>>,
    readiness: Option<Readiness>,
    ready_delay: Option<HumanDuration>,
    ready_timeout: Option<HumanDuration>,
    max_surge: Option<Spanned<u32>>,
    heartbeat: Option<Spanned<HeartbeatFile>>,
    memory: Option<Spanned<MemoryFile>>,
    stop_signal: Option<StopSignal>,
    stop_timeout: Option<HumanDuration>,
    max_restarts: Option<u32>,
    restart_window: Option<HumanDuration>,
    backoff_initial: Option<Spanned<HumanDuration>>,
    backoff_max: Option<Spanned<HumanDuration>>,
    backoff_reset: Option<HumanDuration>,
    max_spawn_rate: Option<Spanned<u32>>,
    control_socket: Option<PathBuf>,
    name: Option<String>,
    log_level: Option<LogLevel>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatFile {
    interval: Option<Spanned<HumanDuration>>,
    timeout: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryFile {
    limit: Option<HumanSize>,
    interval: Option<Spanned<HumanDuration>>,
    measure: Option<MemoryMeasure>,
}

/// How a worker's memory is counted: PSS shares each page among the processes
/// mapping it (so pages shared after fork are not counted N times); RSS counts
/// every resident page of every process in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryMeasure {
    Pss,
    Rss,
}

impl fmt::Display for MemoryMeasure {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            MemoryMeasure::Pss => "pss",
            MemoryMeasure::Rss => "rss",
        })
    }
}

/// Heartbeats: a ready worker silent for longer than `timeout` is hung.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatPolicy {
    /// How often sheepdog pings node-ipc workers.
    pub interval: Duration,
    pub timeout: Duration,
}

/// Memory: each worker's process tree measured every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPolicy {
    pub limit: Option<u64>,
    pub interval: Duration,
    pub measure: MemoryMeasure,
}

/// `workers = 4` or `workers = "auto"` (one per available CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerCount {
    Fixed(u32),
    Auto,
}

impl WorkerCount {
    pub fn resolve(self) -> u32 {
        match self {
            WorkerCount::Fixed(n) => n,
            WorkerCount::Auto => std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
        }
    }
}

impl FromStr for WorkerCount {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "auto" {
            return Ok(WorkerCount::Auto);
        }
        let n: i64 = text
            .parse()
            .map_err(|_| format!("\"{text}\" is not a number or \"auto\""))?;
        WorkerCount::from_number(n)
    }
}

impl WorkerCount {
    fn from_number(n: i64) -> Result<Self, String> {
        if n < 1 {
            Err(format!("must be at least 1 (got {n})"))
        } else if n > MAX_WORKERS as i64 {
            Err(format!("must be at most {MAX_WORKERS} (got {n})"))
        } else {
            Ok(WorkerCount::Fixed(n as u32))
        }
    }
}

impl<'de> Deserialize<'de> for WorkerCount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let parsed = match Raw::deserialize(deserializer)
            .map_err(|_| serde::de::Error::custom("expected a number or \"auto\""))?
        {
            Raw::Number(n) => WorkerCount::from_number(n),
            Raw::Text(text) => text.parse(),
        };
        parsed.map_err(serde::de::Error::custom)
    }
}

/// Where sheepdog binds when systemd did not pass it sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("\"unix:\" needs a path, e.g. \"unix:/run/myapp.sock\"".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if text.starts_with('/') {
            return Ok(ListenAddr::Unix(PathBuf::from(text)));
        }
        text.parse().map(ListenAddr::Tcp).map_err(|_| {
            format!("\"{text}\" is not an address: use \"127.0.0.1:8080\", \"[::1]:8080\" or \"unix:/path/to.sock\"")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// How a worker tells sheepdog it is ready and alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Readiness {
    /// The sd_notify protocol on a socket of sheepdog's (`NOTIFY_SOCKET`).
    Notify,
    /// Node's IPC channel (`NODE_CHANNEL_FD`): `process.send('ready')`.
    NodeIpc,
    /// Ready once it stayed up for `ready_delay`; no heartbeats.
    None,
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Readiness::Notify => "notify",
            Readiness::NodeIpc => "node-ipc",
            Readiness::None => "none",
        })
    }
}

/// A signal named as in `kill -l`, with or without the SIG prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopSignal(pub Signal);

impl FromStr for StopSignal {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let upper = text.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        match Signal::from_str(&name) {
            Ok(Signal::SIGKILL | Signal::SIGSTOP) => {
                Err(format!("{name} cannot be caught, so it cannot ask for a graceful stop"))
            }
            Ok(signal) => Ok(StopSignal(signal)),
            Err(_) => Err(format!(
                "\"{text}\" is not a signal name (e.g. \"SIGTERM\", \"SIGQUIT\")"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for StopSignal {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// Restart policy: backoff per slot, crash-loop breaker for the flock, and a
/// bound on spawns per second whatever the workers do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    pub max_restarts: u32,
    pub window: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A worker that stayed ready this long resets its slot's backoff.
    pub backoff_reset: Duration,
    pub max_spawn_rate: u32,
}

/// The effective settings: file, then command-line overrides, then defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub config_file: Option<PathBuf>,
    pub command: Vec<String>,
    pub workers: u32,
    pub min_ready: u32,
    pub listen: Vec<ListenAddr>,
    pub working_directory: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub readiness: Readiness,
    pub ready_delay: Duration,
    pub ready_timeout: Duration,
    pub max_surge: u32,
    pub heartbeat: Option<HeartbeatPolicy>,
    pub memory: MemoryPolicy,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub restart: RestartPolicy,
    pub control_socket: PathBuf,
    /// `control_socket` was set in the file: a clash with another sheepdog is
    /// an error. The default path is shared by name, so a clash there picks
    /// a path of its own instead.
    pub control_socket_explicit: bool,
    /// Names the app in logs: workers' journal identifiers are NAME-worker-SLOT.
    pub name: String,
    pub log_level: Option<LogLevel>,
}

/// What the command line may override.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub workers: Option<WorkerCount>,
    pub listen: Vec<ListenAddr>,
    pub command: Vec<String>,
    pub log_level: Option<LogLevel>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

impl Settings {
    /// Reads and validates `path` (if any) and applies the overrides.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
        match path {
            None => Settings::from_toml("", None, overrides),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("{}: cannot read the config: {e}", path.display())))?;
                Settings::from_toml(&text, Some(path), overrides)
            }
        }
    }

    pub fn from_toml(text: &str, path: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let name = path.map_or("<config>".to_string(), |p| p.display().to_string());
        let locate = |span: Option<std::ops::Range<usize>>| match span {
            Some(span) => {
                let (line, column) = line_and_column(text, span.start);
                format!("{name}:{line}:{column}")
            }
            None => name.clone(),
        };
        let file: FileConfig = {
            let deserializer = toml::de::Deserializer::parse(text)
                .map_err(|e| ConfigError(format!("{}: {}", locate(e.span()), e.message().trim())))?;
            serde_path_to_error::deserialize(deserializer).map_err(|e| {
                // Spanned<T> shows up in the path as a private field: not a key.
                let key = e.path().to_string().replace(".$__serde_spanned_private_value", "");
                let inner = e.into_inner();
                let message = inner.message().trim().to_string();
                if key == "." || message.starts_with("unknown field") {
                    ConfigError(format!("{}: {message}", locate(inner.span())))
                } else {
                    ConfigError(format!("{}: {key}: {message}", locate(inner.span())))
                }
            })?
        };
        let invalid = |span: std::ops::Range<usize>, key: &str, why: String| {
            ConfigError(format!("{}: {key}: {why}", locate(Some(span))))
        };

        let command = if !overrides.command.is_empty() {
            overrides.command.clone()
        } else {
            match &file.command {
                Some(command) if command.get_ref().is_empty() || command.get_ref()[0].is_empty() => {
                    return Err(invalid(
                        command.span(),
                        "command",
                        "is empty: name a program, e.g. [\"node\", \"server.js\"]".into(),
                    ));
                }
                Some(command) => command.get_ref().clone(),
                None => {
                    return Err(ConfigError(format!(
                        "{name}: no command to run: set `command = [\"node\", \"server.js\"]` in the config or pass it after `--`"
                    )));
                }
            }
        };
        let workers = overrides
            .workers
            .or(file.workers.as_ref().map(|w| *w.get_ref()))
            .unwrap_or(WorkerCount::Auto)
            .resolve();
        let min_ready = match &file.min_ready {
            Some(min) if *min.get_ref() == 0 => {
                return Err(invalid(min.span(), "min_ready", "must be at least 1".into()));
            }
            Some(min) if *min.get_ref() > workers => {
                return Err(invalid(
                    min.span(),
                    "min_ready",
                    format!("is {} but there are only {workers} workers", min.get_ref()),
                ));
            }
            Some(min) => *min.get_ref(),
            None => workers,
        };
        let backoff_initial = file
            .backoff_initial
            .as_ref()
            .map_or(Duration::from_millis(500), |b| b.get_ref().0);
        let backoff_max = file
            .backoff_max
            .as_ref()
            .map_or(Duration::from_secs(30), |b| b.get_ref().0);
        if let Some(initial) = &file.backoff_initial
            && initial.get_ref().0 < Duration::from_millis(10)
        {
            return Err(invalid(
                initial.span(),
                "backoff_initial",
                "must be at least 10ms, or a crashing worker becomes a fork storm".into(),
            ));
        }
        if backoff_max < backoff_initial {
            let span = file
                .backoff_max
                .as_ref()
                .or(file.backoff_initial.as_ref())
                .map(|s| s.span())
                .unwrap_or(0..0);
            return Err(invalid(
                span,
                "backoff_max",
                format!(
                    "{} is shorter than backoff_initial {}",
                    format_duration(backoff_max),
                    format_duration(backoff_initial)
                ),
            ));
        }
        let max_spawn_rate = match &file.max_spawn_rate {
            Some(rate) if *rate.get_ref() == 0 => {
                return Err(invalid(
                    rate.span(),
                    "max_spawn_rate",
                    "must be at least 1 spawn per second".into(),
                ));
            }
            Some(rate) => *rate.get_ref(),
            None => 20,
        };
        let readiness = file.readiness.unwrap_or(Readiness::None);
        let heartbeat = match &file.heartbeat {
            None => None,
            Some(section) => {
                let hb = section.get_ref();
                if readiness == Readiness::None {
                    return Err(invalid(
                        section.span(),
                        "heartbeat",
                        "needs readiness = \"notify\" or \"node-ipc\": with \"none\" a worker cannot send heartbeats"
                            .into(),
                    ));
                }
                let interval = hb.interval.as_ref().map_or(Duration::from_secs(5), |i| i.get_ref().0);
                if interval < Duration::from_millis(100) {
                    let span = hb.interval.as_ref().map_or(section.span(), |i| i.span());
                    return Err(invalid(span, "heartbeat.interval", "must be at least 100ms".into()));
                }
                let timeout = hb.timeout.as_ref().map_or(interval * 3, |t| t.get_ref().0);
                if let Some(t) = &hb.timeout
                    && timeout <= interval
                {
                    return Err(invalid(
                        t.span(),
                        "heartbeat.timeout",
                        format!(
                            "{} must be longer than the interval {}",
                            format_duration(timeout),
                            format_duration(interval)
                        ),
                    ));
                }
                Some(HeartbeatPolicy { interval, timeout })
            }
        };
        let memory = match &file.memory {
            None => MemoryPolicy {
                limit: None,
                interval: Duration::from_secs(5),
                measure: MemoryMeasure::Pss,
            },
            Some(section) => {
                let m = section.get_ref();
                let interval = m.interval.as_ref().map_or(Duration::from_secs(5), |i| i.get_ref().0);
                if interval < Duration::from_millis(100) {
                    let span = m.interval.as_ref().map_or(section.span(), |i| i.span());
                    return Err(invalid(span, "memory.interval", "must be at least 100ms".into()));
                }
                MemoryPolicy {
                    limit: m.limit.map(|l| l.0),
                    interval,
                    measure: m.measure.unwrap_or(MemoryMeasure::Pss),
                }
            }
        };
        let max_surge = match &file.max_surge {
            Some(surge) if *surge.get_ref() == 0 => {
                return Err(invalid(
                    surge.span(),
                    "max_surge",
                    "must be at least 1: a replacement starts before the worker it replaces stops".into(),
                ));
            }
            Some(surge) => *surge.get_ref(),
            None => 1,
        };
        let listen = if !overrides.listen.is_empty() {
            overrides.listen.clone()
        } else {
            file.listen
                .unwrap_or_else(|| vec![DEFAULT_LISTEN.parse().expect("the default address parses")])
        };
        // Relative paths in a config file are relative to the file, not to
        // wherever sheepdog happened to be started from.
        let base = path.and_then(Path::parent).filter(|p| !p.as_os_str().is_empty());
        let relative_to_file = |dir: PathBuf| match base {
            Some(base) if dir.is_relative() => base.join(dir),
            _ => dir,
        };
        let working_directory = file.working_directory.map(relative_to_file);
        let control_socket_explicit = file.control_socket.is_some();
        let control_socket = file
            .control_socket
            .map(relative_to_file)
            .unwrap_or_else(|| default_control_socket(path));
        let name = file.name.clone().unwrap_or_else(|| default_name(path, &command));

        Ok(Settings {
            config_file: path.map(Path::to_path_buf),
            command,
            workers,
            min_ready,
            listen,
            working_directory,
            env: file.env.unwrap_or_default(),
            readiness,
            ready_delay: file.ready_delay.map_or(Duration::from_secs(1), |d| d.0),
            ready_timeout: file.ready_timeout.map_or(Duration::from_secs(60), |d| d.0),
            max_surge,
            heartbeat,
            memory,
            stop_signal: file.stop_signal.map_or(Signal::SIGTERM, |s| s.0),
            stop_timeout: file.stop_timeout.map_or(Duration::from_secs(30), |d| d.0),
            restart: RestartPolicy {
                max_restarts: file.max_restarts.unwrap_or(10),
                window: file.restart_window.map_or(Duration::from_secs(60), |d| d.0),
                backoff_initial,
                backoff_max,
                backoff_reset: file.backoff_reset.map_or(Duration::from_secs(30), |d| d.0),
                max_spawn_rate,
            },
            control_socket,
            control_socket_explicit,
            name,
            log_level: overrides.log_level.or(file.log_level),
        })
    }

    /// The effective settings as TOML, for `sheepdog check`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let quoted =
            |items: &mut dyn Iterator<Item = String>| items.map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(out, "command = [{}]", quoted(&mut self.command.iter().cloned()));
        let _ = writeln!(out, "workers = {}", self.workers);
        let _ = writeln!(out, "min_ready = {}", self.min_ready);
        let _ = writeln!(
            out,
            "listen = [{}]",
            quoted(&mut self.listen.iter().map(|l| l.to_string()))
        );
        if let Some(dir) = &self.working_directory {
            let _ = writeln!(out, "working_directory = {:?}", dir.display().to_string());
        }
        let _ = writeln!(out, "readiness = \"{}\"", self.readiness);
        let _ = writeln!(out, "ready_delay = \"{}\"", format_duration(self.ready_delay));
        let _ = writeln!(out, "ready_timeout = \"{}\"", format_duration(self.ready_timeout));
        let _ = writeln!(out, "max_surge = {}", self.max_surge);
        let _ = writeln!(out, "stop_signal = \"{}\"", self.stop_signal.as_str());
        let _ = writeln!(out, "stop_timeout = \"{}\"", format_duration(self.stop_timeout));
        let r = &self.restart;
        let _ = writeln!(out, "max_restarts = {}", r.max_restarts);
        let _ = writeln!(out, "restart_window = \"{}\"", format_duration(r.window));
        let _ = writeln!(out, "backoff_initial = \"{}\"", format_duration(r.backoff_initial));
        let _ = writeln!(out, "backoff_max = \"{}\"", format_duration(r.backoff_max));
        let _ = writeln!(out, "backoff_reset = \"{}\"", format_duration(r.backoff_reset));
        let _ = writeln!(out, "max_spawn_rate = {}", r.max_spawn_rate);
        let socket = format!("control_socket = {:?}", self.control_socket.display().to_string());
        if self.control_socket_explicit {
            let _ = writeln!(out, "{socket}");
        } else {
            let _ = writeln!(out, "# {socket} (the default)");
        }
        let _ = writeln!(out, "name = {:?}", self.name);
        if let Some(heartbeat) = &self.heartbeat {
            let _ = writeln!(out, "\n[heartbeat]");
            let _ = writeln!(out, "interval = \"{}\"", format_duration(heartbeat.interval));
            let _ = writeln!(out, "timeout = \"{}\"", format_duration(heartbeat.timeout));
        }
        let _ = writeln!(out, "\n[memory]");
        if let Some(limit) = self.memory.limit {
            let _ = writeln!(out, "limit = \"{}\"", format_size(limit).replace(' ', ""));
        }
        let _ = writeln!(out, "interval = \"{}\"", format_duration(self.memory.interval));
        let _ = writeln!(out, "measure = \"{}\"", self.memory.measure);
        if !self.env.is_empty() {
            let _ = writeln!(out, "\n[env]");
            for (key, value) in &self.env {
                let _ = writeln!(out, "{key} = {value:?}");
            }
        }
        out
    }
}

/// The config file's name without `.toml`, else the program's name.
fn default_name(config: Option<&Path>, command: &[String]) -> String {
    config
        .and_then(Path::file_stem)
        .map(|s| s.to_string_lossy().into_owned())
        .or_else(|| {
            command
                .first()
                .and_then(|c| Path::new(c).file_name())
                .map(|s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "sheepdog".into())
}

/// Where the control socket is when the config does not say:
/// `$RUNTIME_DIRECTORY/control.sock` under systemd's RuntimeDirectory= (the
/// shipped units set `RuntimeDirectory=sheepdog/NAME`), else
/// `/run/sheepdog/NAME/control.sock` for root, the same path, so that
/// `sheepdog status --config /etc/sheepdog/NAME.toml` typed in a root shell
/// finds it; for other users `$XDG_RUNTIME_DIR/sheepdog/NAME/control.sock` (or
/// `/tmp/sheepdog-UID/NAME/control.sock`). NAME is the config file's name
/// without `.toml` (`sheepdog` without a config file).
pub fn default_control_socket(config: Option<&Path>) -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY").and_then(|d| std::env::split_paths(&d).next()) {
        return dir.join("control.sock");
    }
    let name = config
        .and_then(Path::file_stem)
        .map_or("sheepdog".into(), |s| s.to_string_lossy().into_owned());
    default_socket_dir().join(name).join("control.sock")
}

/// Where the default control sockets of this user's sheepdogs live, one
/// folder per name: `/run/sheepdog` for root, `$XDG_RUNTIME_DIR/sheepdog`
/// (or `/tmp/sheepdog-UID`) for other users. `sheepdog status` looks here.
pub fn default_socket_dir() -> PathBuf {
    let uid = nix::unistd::getuid().as_raw();
    if uid == 0 {
        PathBuf::from("/run/sheepdog")
    } else if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR") {
        PathBuf::from(runtime).join("sheepdog")
    } else {
        PathBuf::from(format!("/tmp/sheepdog-{uid}"))
    }
}

/// Where a client looks for a running sheepdog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientTarget {
    /// `--socket`, or `control_socket` in the config file: exactly this one.
    Socket(PathBuf),
    /// The default path for this config file, or a sibling with a pid in its
    /// name (a clash at the default path makes a second sheepdog take one);
    /// the one that runs `config` is meant.
    Default { path: PathBuf, config: PathBuf },
    /// Nothing named: every sheepdog of this user.
    Any,
}

/// The control socket a client should use: `--socket`, else the config
/// file's `control_socket`, else the default for that config file. Only that
/// key is read, so a client works even while the rest of the file is being edited.
pub fn client_target(config: Option<&Path>, socket: Option<&Path>) -> Result<ClientTarget, ConfigError> {
    if let Some(socket) = socket {
        return Ok(ClientTarget::Socket(socket.to_path_buf()));
    }
    let Some(path) = config else {
        return Ok(ClientTarget::Any);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: cannot read the config: {e}", path.display())))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.message().trim())))?;
    match table.get("control_socket").and_then(|v| v.as_str()) {
        Some(socket) => {
            let socket = PathBuf::from(socket);
            let base = path.parent().filter(|p| !p.as_os_str().is_empty());
            Ok(ClientTarget::Socket(match base {
                Some(base) if socket.is_relative() => base.join(socket),
                _ => socket,
            }))
        }
        None => Ok(ClientTarget::Default {
            path: default_control_socket(Some(path)),
            config: canonical(path),
        }),
    }
}

/// A config file's absolute path, as a running sheepdog reports it.
pub fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml(text, Some(Path::new("app.toml")), &Overrides::default())
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().0
    }

    #[test]
    fn a_minimal_file_gets_the_defaults() {
        let s = parse("command = [\"node\", \"server.js\"]\nworkers = 3\n").unwrap();
        assert_eq!(s.command, vec!["node", "server.js"]);
        assert_eq!(s.workers, 3);
        assert_eq!(s.min_ready, 3);
        assert_eq!(s.listen, vec![ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap())]);
        assert_eq!(s.stop_signal, Signal::SIGTERM);
        assert_eq!(s.stop_timeout, Duration::from_secs(30));
        assert_eq!(s.restart.max_restarts, 10);
    }

    #[test]
    fn every_key_is_read() {
        let s = parse(
            r#"
command = ["python3", "app.py"]
workers = 2
min_ready = 1
listen = ["[::1]:9000", "unix:/run/app.sock", "/run/other.sock"]
working_directory = "srv"
readiness = "none"
ready_delay = "250ms"
stop_signal = "QUIT"
stop_timeout = "5s"
max_restarts = 3
restart_window = "10s"
backoff_initial = "100ms"
backoff_max = "2s"
backoff_reset = "1m"
max_spawn_rate = 5
log_level = "debug"
[env]
NODE_ENV = "production"
"#,
        )
        .unwrap();
        assert_eq!(s.min_ready, 1);
        assert_eq!(s.listen[0], ListenAddr::Tcp("[::1]:9000".parse().unwrap()));
        assert_eq!(s.listen[1], ListenAddr::Unix("/run/app.sock".into()));
        assert_eq!(s.listen[2], ListenAddr::Unix("/run/other.sock".into()));
        assert_eq!(s.working_directory, Some(PathBuf::from("srv")));
        assert_eq!(s.ready_delay, Duration::from_millis(250));
        assert_eq!(s.stop_signal, Signal::SIGQUIT);
        assert_eq!(s.restart.backoff_reset, Duration::from_secs(60));
        assert_eq!(s.restart.max_spawn_rate, 5);
        assert_eq!(s.log_level, Some(LogLevel::Debug));
        assert_eq!(s.env["NODE_ENV"], "production");
    }

    #[test]
    fn relative_working_directory_is_relative_to_the_file() {
        let s = Settings::from_toml(
            "command = [\"x\"]\nworking_directory = \"app\"\n",
            Some(Path::new("/etc/sheepdog/my.toml")),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.working_directory, Some(PathBuf::from("/etc/sheepdog/app")));
    }

    #[test]
    fn overrides_beat_the_file() {
        let overrides = Overrides {
            workers: Some(WorkerCount::Fixed(7)),
            listen: vec!["127.0.0.1:1".parse().unwrap()],
            command: vec!["other".into()],
            log_level: Some(LogLevel::Warn),
        };
        let s = Settings::from_toml("command = [\"x\"]\nworkers = 2\n", None, &overrides).unwrap();
        assert_eq!((s.workers, s.min_ready), (7, 7));
        assert_eq!(s.command, vec!["other"]);
        assert_eq!(s.listen, vec![ListenAddr::Tcp("127.0.0.1:1".parse().unwrap())]);
    }

    #[test]
    fn auto_workers_is_the_cpu_count() {
        let s = parse("command = [\"x\"]\nworkers = \"auto\"\n").unwrap();
        assert!(s.workers >= 1);
    }

    #[test]
    fn malformed_toml_names_file_and_line() {
        let e = error("command = [\"x\"]\nworkers = = 2\n");
        assert!(e.starts_with("app.toml:2:"), "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = error("command = [\"x\"]\n\nwokers = 2\n");
        assert!(e.starts_with("app.toml:3:1: unknown field `wokers`"), "{e}");
    }

    #[test]
    fn zero_workers_is_refused() {
        let e = error("command = [\"x\"]\nworkers = 0\n");
        assert!(e.starts_with("app.toml:2:11: workers: must be at least 1"), "{e}");
    }

    #[test]
    fn bad_durations_name_their_key_and_line() {
        let e = error("command = [\"x\"]\nstop_timeout = \"-5s\"\n");
        assert!(e.starts_with("app.toml:2:16: stop_timeout: "), "{e}");
        assert!(e.contains("negative"), "{e}");
        let e = error("command = [\"x\"]\nready_delay = \"soon\"\n");
        assert!(e.starts_with("app.toml:2:15: ready_delay: "), "{e}");
        let e = error("command = [\"x\"]\nrestart_window = 60\n");
        assert!(e.contains("restart_window: 60 needs a unit"), "{e}");
    }

    #[test]
    fn missing_or_empty_command_is_refused() {
        assert!(error("workers = 2\n").contains("no command to run"));
        assert!(error("command = []\n").starts_with("app.toml:1:11: command: is empty"));
    }

    #[test]
    fn cross_checks_point_at_the_right_key() {
        let e = error("command = [\"x\"]\nworkers = 2\nmin_ready = 3\n");
        assert!(
            e.starts_with("app.toml:3:13: min_ready: is 3 but there are only 2 workers"),
            "{e}"
        );
        let e = error("command = [\"x\"]\nbackoff_initial = \"5s\"\nbackoff_max = \"1s\"\n");
        assert!(e.starts_with("app.toml:3:15: backoff_max:"), "{e}");
        let e = error("command = [\"x\"]\nbackoff_initial = \"1ms\"\n");
        assert!(e.contains("fork storm"), "{e}");
    }

    #[test]
    fn bad_signals_and_addresses_are_refused() {
        assert!(
            error("command = [\"x\"]\nstop_signal = \"SIGKILL\"\n").contains("stop_signal: SIGKILL cannot be caught")
        );
        assert!(error("command = [\"x\"]\nstop_signal = \"SIGBOGUS\"\n").contains("not a signal name"));
        let e = error("command = [\"x\"]\nlisten = [\"localhost\"]\n");
        assert!(e.contains("listen[0]: \"localhost\" is not an address"), "{e}");
    }

    #[test]
    fn health_sections_are_read_with_defaults() {
        let s = parse("command = [\"x\"]\nreadiness = \"node-ipc\"\n[heartbeat]\ninterval = \"2s\"\n[memory]\nlimit = \"700MiB\"\n").unwrap();
        assert_eq!(s.readiness, Readiness::NodeIpc);
        let heartbeat = s.heartbeat.unwrap();
        assert_eq!(
            (heartbeat.interval, heartbeat.timeout),
            (Duration::from_secs(2), Duration::from_secs(6))
        );
        assert_eq!(s.memory.limit, Some(700 * 1024 * 1024));
        assert_eq!(s.memory.measure, MemoryMeasure::Pss);
        assert_eq!(s.memory.interval, Duration::from_secs(5));
        assert_eq!(s.max_surge, 1);
        let s =
            parse("command = [\"x\"]\nreadiness = \"notify\"\nready_timeout = \"5s\"\n[memory]\nmeasure = \"rss\"\n")
                .unwrap();
        assert_eq!(s.readiness, Readiness::Notify);
        assert_eq!(s.ready_timeout, Duration::from_secs(5));
        assert_eq!(s.memory.measure, MemoryMeasure::Rss);
        assert!(s.heartbeat.is_none());
    }

    #[test]
    fn health_sections_are_validated() {
        let e = error("command = [\"x\"]\n[heartbeat]\ninterval = \"1s\"\n");
        assert!(e.starts_with("app.toml:2:1: heartbeat: needs readiness"), "{e}");
        let e = error("command = [\"x\"]\nreadiness = \"notify\"\n[heartbeat]\ninterval = \"2s\"\ntimeout = \"1s\"\n");
        assert!(
            e.starts_with("app.toml:5:11: heartbeat.timeout: 1s must be longer than the interval 2s"),
            "{e}"
        );
        let e = error("command = [\"x\"]\n[memory]\nlimit = \"lots\"\n");
        assert!(e.starts_with("app.toml:3:9: memory.limit: "), "{e}");
        let e = error("command = [\"x\"]\n[memory]\nlimit = \"-1MiB\"\n");
        assert!(e.contains("memory.limit: \"-1MiB\" is negative"), "{e}");
        let e = error("command = [\"x\"]\nreadiness = \"carrier-pigeon\"\n");
        assert!(
            e.starts_with("app.toml:2:13: readiness: unknown variant `carrier-pigeon`"),
            "{e}"
        );
        let e = error("command = [\"x\"]\n[memory]\nlimmit = \"1GiB\"\n");
        assert!(e.starts_with("app.toml:3:1: unknown field `limmit`"), "{e}");
        assert!(error("command = [\"x\"]\nmax_surge = 0\n").contains("max_surge: must be at least 1"));
    }

    #[test]
    fn the_control_socket_is_found_from_the_config_file() {
        let dir = std::env::temp_dir().join(format!("sheepdog-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("myapp.toml");
        std::fs::write(&file, "control_socket = \"run/ctl.sock\"\n").unwrap();
        assert_eq!(
            client_target(Some(&file), None).unwrap(),
            ClientTarget::Socket(dir.join("run/ctl.sock"))
        );
        std::fs::write(&file, "workers = 2\n").unwrap();
        let default = client_target(Some(&file), None).unwrap();
        assert_eq!(
            default,
            ClientTarget::Default {
                path: default_control_socket(Some(&file)),
                config: std::fs::canonicalize(&file).unwrap()
            }
        );
        assert!(default_control_socket(Some(&file)).ends_with("myapp/control.sock"));
        assert!(
            default_control_socket(Some(&file)).starts_with(default_socket_dir())
                || std::env::var_os("RUNTIME_DIRECTORY").is_some()
        );
        assert_eq!(
            client_target(Some(&file), Some(Path::new("/x.sock"))).unwrap(),
            ClientTarget::Socket(PathBuf::from("/x.sock"))
        );
        assert_eq!(client_target(None, None).unwrap(), ClientTarget::Any);
        let s = Settings::from_toml(
            "command = [\"x\"]\ncontrol_socket = \"c.sock\"\n",
            Some(&file),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.control_socket, dir.join("c.sock"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn describe_round_trips_through_the_parser() {
        let s = parse("command = [\"node\", \"a b.js\"]\nworkers = 2\nstop_timeout = \"90s\"\nreadiness = \"notify\"\n[heartbeat]\ninterval = \"1s\"\n[memory]\nlimit = \"1.5GiB\"\n[env]\nA = \"1\"\n").unwrap();
        let again = parse(&s.describe()).unwrap();
        assert_eq!(
            again,
            Settings {
                config_file: s.config_file.clone(),
                ..s
            }
        );
    }
}
