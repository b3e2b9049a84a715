//! The TOML config: its schema (`file`), its values (`values`), its
//! defaults (`defaults`), where things are by default (`paths`), and the
//! printout of `sheepdog check` (`print`). A bad value is reported as
//! `FILE:LINE:COLUMN: KEY: reason`, before anything is started (exit 78).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

pub mod defaults;
mod file;
mod paths;
mod print;
pub mod schema;
pub mod units;
mod values;

use crate::error::Error;
pub use file::RESERVED_ENV;
use file::{Places, Source};
pub use paths::{
    ClientTarget, MAX_CONFIG, canonical, client_target, default_control_socket, default_socket_dir, env_dir,
    fallback_socket_dir, fallback_socket_dirs, find_program, private_dir, read_config,
};
pub use values::*;

/// The effective settings: file, then command-line overrides, then defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub config_file: Option<PathBuf>,
    pub command: Vec<String>,
    pub workers: u32,
    pub min_ready: u32,
    pub listen: Vec<ListenAddr>,
    /// `listen` was given (in the file or on the command line), not the default.
    pub listen_explicit: bool,
    /// Node workers get the Node kit: the preload, an IPC channel, cluster
    /// worker mode ([`crate::node`]).
    pub node: bool,
    /// How new connections are spread over the workers.
    pub spread: Spread,
    pub working_directory: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub readiness: Readiness,
    pub channel: Channel,
    pub ready_delay: Duration,
    pub ready_timeout: Duration,
    pub max_surge: u32,
    pub heartbeat: Option<HeartbeatPolicy>,
    /// The message node-ipc workers are pinged with.
    pub heartbeat_ping: String,
    pub memory: MemoryPolicy,
    /// Where the health and metrics endpoints are served (`[http]`), if anywhere.
    pub http: Option<ListenAddr>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub restart: RestartPolicy,
    pub recycle: RecyclePolicy,
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
    pub spread: Option<Spread>,
    pub command: Vec<String>,
    pub log_level: Option<LogLevel>,
    pub stop_signal: Option<Signal>,
}

impl Settings {
    /// Reads and validates `path` (if any), applies the overrides, and checks
    /// the settings against the machine: the program is there, the working
    /// directory too.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Settings, Error> {
        let text = match path {
            None => String::new(),
            Some(path) => read_config(path)?,
        };
        let (settings, places) = Settings::parse(&text, path, overrides)?;
        settings.check_environment(&places)?;
        Ok(settings)
    }

    /// Parses and validates a config's text, without looking at the machine.
    pub fn from_toml(text: &str, path: Option<&Path>, overrides: &Overrides) -> Result<Settings, Error> {
        Settings::parse(text, path, overrides).map(|(settings, _)| settings)
    }

    fn parse(text: &str, path: Option<&Path>, overrides: &Overrides) -> Result<(Settings, Places), Error> {
        let source = Source {
            name: path.map_or("<config>".to_string(), |p| p.display().to_string()),
            text,
        };
        let file = source.parse()?;
        let command = file.command(overrides, &source)?;
        let (workers, min_ready) = file.workers(overrides, &source)?;
        let readiness = file.readiness.unwrap_or(defaults::READINESS);
        let node = match file.node.unwrap_or(NodeKit::Auto) {
            NodeKit::Auto => crate::node::is_node_command(&command),
            NodeKit::On => true,
            NodeKit::Off => false,
        };
        let channel = file.channel(readiness, node, &source)?;
        // Relative paths in a config file are relative to the file, not to
        // wherever sheepdog happened to be started from (joining an absolute
        // path keeps it as it is).
        let base = path.and_then(Path::parent).filter(|p| !p.as_os_str().is_empty());
        let relative_to_file = |dir: &PathBuf| base.map_or_else(|| dir.clone(), |base| base.join(dir));
        let control_socket = file.control_socket(&source)?;
        let settings = Settings {
            config_file: path.map(Path::to_path_buf),
            workers,
            min_ready,
            listen: file.listen(overrides, base, &source)?,
            listen_explicit: !overrides.listen.is_empty() || file.listen.is_some(),
            node,
            spread: overrides.spread.or(file.spread).unwrap_or(defaults::SPREAD),
            working_directory: file.working_directory.as_ref().map(|w| relative_to_file(w.get_ref())),
            env: file.env(&source)?,
            readiness,
            channel,
            ready_delay: file.ready_delay(),
            ready_timeout: file.ready_timeout(readiness, &source)?,
            max_surge: file.max_surge(&source)?,
            heartbeat: file.heartbeat(channel, &source)?,
            heartbeat_ping: file.heartbeat_ping(channel, &source)?,
            memory: file.memory(&source)?,
            http: file.http(base, &source)?,
            stop_signal: overrides
                .stop_signal
                .or(file.stop_signal.map(|s| s.0))
                .unwrap_or(defaults::STOP_SIGNAL),
            stop_timeout: file.stop_timeout(),
            restart: file.restart(&source)?,
            recycle: file.recycle(&source)?,
            control_socket_explicit: control_socket.is_some(),
            control_socket: control_socket
                .as_ref()
                .map(relative_to_file)
                .unwrap_or_else(|| default_control_socket(path)),
            name: file
                .name(&source)?
                .unwrap_or_else(|| paths::default_name(path, &command)),
            log_level: overrides.log_level.or(file.log_level),
            command,
        };
        Ok((settings, source.places(&file, overrides)))
    }

    /// What only the machine can tell: the working directory is a directory,
    /// and the program is an executable there or in the workers' PATH.
    fn check_environment(&self, places: &Places) -> Result<(), Error> {
        if let Some(dir) = &self.working_directory
            && !dir.is_dir()
        {
            let at = places.working_directory.as_deref().unwrap_or("the command line");
            let why = if dir.exists() {
                "is not a directory"
            } else {
                "does not exist"
            };
            return Err(Error::config(format!(
                "{at}: working_directory: {} {why}",
                dir.display()
            )));
        }
        let path_var = self
            .env
            .get("PATH")
            .map(std::ffi::OsString::from)
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_else(|| DEFAULT_PATH.into());
        let program = std::ffi::OsStr::new(&self.command[0]);
        find_program(program, &path_var, self.working_directory.as_deref())
            .map(|_| ())
            .map_err(|why| Error::config(format!("{}: command: {why}", places.command)))
    }
}

/// The PATH a worker gets when neither sheepdog nor `[env]` has one.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

#[cfg(test)]
mod tests;
