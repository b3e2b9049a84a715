//! The values a config holds, each with its own parsing and display: worker
//! counts, listen addresses, readiness protocols, signal names, log levels,
//! and the policies built from them.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

/// The most workers one sheepdog will run, whatever the config or SIGTTIN say.
pub const MAX_WORKERS: u32 = 4096;

/// How a worker's memory is counted: PSS shares each page among the processes
/// mapping it (so pages shared after fork are not counted N times); RSS counts
/// every resident page of every process in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
            return unix_path(path).map(ListenAddr::Unix);
        }
        if text.starts_with('/') {
            return unix_path(text).map(ListenAddr::Unix);
        }
        if let Some(port) = text.strip_prefix("localhost:")
            && let Ok(port) = port.parse::<u16>()
        {
            return Ok(ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        text.parse().map(ListenAddr::Tcp).map_err(|_| {
            let named = text.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok() && host.parse::<std::net::IpAddr>().is_err()
            });
            if named {
                format!(
                    "\"{text}\": give an IP address, not a host name (sheepdog binds before any name service is \
                     up): \"127.0.0.1:8080\", \"[::]:8080\" for every address, or localhost:8080"
                )
            } else {
                format!(
                    "\"{text}\" is not an address: use \"127.0.0.1:8080\", \"[::1]:8080\", localhost:8080 or \
                     \"unix:/path/to.sock\""
                )
            }
        })
    }
}

/// The address Node binds for `listen(port, host)`: every address (IPv6
/// and IPv4) without a host, `localhost` as 127.0.0.1, an IP as it is, a
/// name as the resolver gives it first.
pub fn resolve_host(host: &str, port: u16) -> Result<SocketAddr, String> {
    match host {
        "" | "::" => {
            let ipv6 = std::path::Path::new("/proc/net/if_inet6").exists();
            Ok(if ipv6 {
                SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))
            } else {
                SocketAddr::from(([0, 0, 0, 0], port))
            })
        }
        "localhost" => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        _ => {
            if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                return Ok(SocketAddr::new(ip, port));
            }
            use std::net::ToSocketAddrs;
            (host, port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut found| found.next())
                .ok_or_else(|| format!("its host {:?} does not resolve", crate::text::printable(host)))
        }
    }
}

/// `node`: whether Node workers get sheepdog's Node kit (its preload, an IPC
/// channel, cluster-worker mode): `"auto"` for commands that run Node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKit {
    Auto,
    On,
    Off,
}

impl FromStr for NodeKit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(NodeKit::Auto),
            "on" => Ok(NodeKit::On),
            "off" => Ok(NodeKit::Off),
            _ => Err(format!("\"{text}\": expected auto, on or off")),
        }
    }
}

/// The longest unix socket path the kernel takes (sun_path, less its NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// A unix socket's path, as written (a relative one is resolved later,
/// against the config file's directory).
fn unix_path(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        Err("\"unix:\" needs a path, e.g. \"unix:/run/myapp.sock\"".into())
    } else if path.starts_with('@') {
        Err(format!(
            "\"unix:{path}\": abstract sockets are not supported; give a path, e.g. \"unix:/run/myapp.sock\""
        ))
    } else if path.contains('\0') {
        Err("a unix socket path cannot hold NUL".into())
    } else if path.len() > MAX_UNIX_PATH {
        Err(format!(
            "the unix socket path {path} is longer than the {MAX_UNIX_PATH} bytes the kernel takes"
        ))
    } else {
        Ok(PathBuf::from(path))
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

/// How new connections are spread over the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Spread {
    /// A queue per worker, each new connection to the next worker that may
    /// take it (eBPF; needs `CAP_BPF` at start, else `Random`).
    RoundRobin,
    /// A queue per worker, each new connection to one of the workers that
    /// may take it at random (classic BPF, no privilege).
    Random,
    /// One queue for all: the kernel's accept race picks the worker.
    Shared,
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Spread::RoundRobin => "round-robin",
            Spread::Random => "random",
            Spread::Shared => "shared",
        })
    }
}

impl std::str::FromStr for Spread {
    type Err = String;

    fn from_str(text: &str) -> Result<Spread, String> {
        match text {
            "round-robin" => Ok(Spread::RoundRobin),
            "random" => Ok(Spread::Random),
            "shared" => Ok(Spread::Shared),
            other => Err(format!("{other:?}: expected round-robin, random or shared")),
        }
    }
}

/// How a worker tells sheepdog it is ready and alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

impl Readiness {
    /// The channel a readiness protocol speaks over.
    pub fn channel(self) -> Channel {
        match self {
            Readiness::Notify => Channel::Notify,
            Readiness::NodeIpc => Channel::NodeIpc,
            Readiness::None => Channel::None,
        }
    }
}

/// The channel a worker gets to sheepdog, for readiness, heartbeats and
/// "I am leaving": the readiness protocol's by default; with `readiness =
/// "none"`, a channel of its own for heartbeats (classic cluster workers
/// answer pings but never say they are ready).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Channel {
    /// sd_notify datagrams on a socket of sheepdog's (`NOTIFY_SOCKET`).
    Notify,
    /// Node's IPC channel (`NODE_CHANNEL_FD`).
    NodeIpc,
    None,
}

impl Channel {
    /// The channel its name (as `Display` writes it) names.
    pub fn named(name: &str) -> Option<Channel> {
        [Channel::Notify, Channel::NodeIpc, Channel::None]
            .into_iter()
            .find(|c| c.to_string() == name)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Channel::Notify => "notify",
            Channel::NodeIpc => "node-ipc",
            Channel::None => "none",
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
            // A worker that does not handle these would not stop: each stop
            // would wait out stop_timeout, then SIGKILL.
            Ok(Signal::SIGCHLD | Signal::SIGCONT | Signal::SIGWINCH | Signal::SIGURG) => Err(format!(
                "{name} is ignored by a process that does not handle it, so it cannot stop one (e.g. \"SIGTERM\", \"SIGQUIT\", \"SIGINT\")"
            )),
            Ok(Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU) => Err(format!(
                "{name} suspends a process that does not handle it rather than stopping it (e.g. \"SIGTERM\", \"SIGQUIT\", \"SIGINT\")"
            )),
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

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        })
    }
}

impl LogLevel {
    /// The level its name (as `Display` writes it) names.
    pub fn named(name: &str) -> Option<LogLevel> {
        <LogLevel as clap::ValueEnum>::from_str(name, true).ok()
    }

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub max_restarts: u32,
    pub window: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A worker that stayed ready this long resets its slot's backoff.
    pub backoff_reset: Duration,
    pub max_spawn_rate: u32,
    /// A worker that says it is leaving sooner than this after it started
    /// (or before it was ready) failed to start.
    pub min_uptime: Duration,
}

/// Recycling by age: each worker is replaced, replacement first, once it
/// has run `max_age` plus its share of `jitter` (drawn once per worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RecyclePolicy {
    pub max_age: Option<Duration>,
    /// Named for where it sits in the hand-over's policy, beside `max_age`.
    #[serde(rename = "max_age_jitter")]
    pub jitter: Duration,
}
