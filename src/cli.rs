//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ListenAddr, LogLevel, Overrides, Spread, StopSignal, WorkerCount};

#[derive(Debug, Parser)]
#[command(
    name = "sheepdog",
    version,
    about = "A pre-fork process supervisor for network services under systemd",
    long_about = "sheepdog runs N copies of any server program on one shared listening socket \
                  (inherited from systemd socket activation, or bound itself), replaces the ones \
                  that crash, hang or bloat, rolls them over on reload without dropping a request, \
                  and tells systemd the truth about the flock (readiness, status, watchdog). \
                  Workers accept() directly on the socket: sheepdog never sits in the request path."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the workers and supervise them until stopped.
    Run(RunArgs),
    /// Validate a config file and print the effective settings (exit 0, or 78 when invalid).
    Check(RunArgs),
    /// Show the supervisor and a table of its workers.
    Status(StatusArgs),
    /// Roll the workers onto the config and code as they are now, and wait for
    /// the outcome: exit 0 when done, 1 when it failed (the old workers keep serving).
    Reload(ReloadArgs),
    /// Set the number of workers: N, +N or -N (relative to now), or auto (max)
    /// for one per CPU.
    Scale(ScaleArgs),
    /// A live view of the flock, refreshed in place (q or Ctrl-C quits).
    Top(TopArgs),
    /// Hand the running flock over to the sheepdog binary now installed at
    /// its path, in place: same pid, same workers, nothing dropped. Waits for
    /// the outcome: exit 0 when upgraded, 1 when not (the old binary goes on).
    Upgrade(UpgradeArgs),
    /// What this binary is, for a supervisor about to hand over to it: one
    /// JSON line with its version and the state format it reads.
    #[command(hide = true)]
    UpgradeProbe,
    /// Replace one worker gracefully, replacement first (as a memory
    /// recycle does): `sheepdog replace 1`.
    Replace(ReplaceArgs),
    /// The workers' output: under systemd from the journal (journalctl),
    /// otherwise the last lines sheepdog kept, each with its worker's slot
    /// and pid.
    Logs(LogsArgs),
    /// Make an app a service that starts at boot (pm2 startup + save): its
    /// config in /etc/sheepdog/NAME.toml, sheepdog@NAME.socket enabled and
    /// started; waits until it serves. As root.
    Install(InstallArgs),
    /// Undo `sheepdog install NAME`: stop and disable the units, remove the
    /// config and the drop-ins.
    Uninstall {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Turn a pm2 ecosystem file into one sheepdog config per app
    /// (DIR/NAME.toml), each checked; what does not map is listed.
    Import(ImportArgs),
    /// Print the shell completions for bash, zsh or fish (the package
    /// installs them): `sheepdog completions bash > /etc/bash_completion.d/sheepdog`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a manual page (roff), as packaged: sheepdog.1 or sheepdog.toml.5.
    #[command(hide = true)]
    Man {
        #[arg(default_value = "sheepdog.1")]
        page: String,
    },
}

/// How a client finds the control socket of a running sheepdog.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The config file the server runs with (its `control_socket`, or the default for it).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The control socket itself.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// Print the status as JSON, for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// How long to wait for the reload to end.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = crate::units::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// Every sheepdog running from this binary's path, whatever its config
    /// or control socket (as root: every unit's; what the package runs).
    #[arg(long, conflicts_with_all = ["config", "socket"])]
    pub all: bool,

    /// How long to wait for each upgrade's outcome.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::units::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// How often the view is refreshed.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::units::parse_duration)]
    pub interval: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The service's name: sheepdog@NAME, /etc/sheepdog/NAME.toml.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// A config to install (its settings, written out whole); else the
    /// command after `--`, run in the current directory.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Number of workers, or "auto", for a command given after `--`.
    #[arg(short, long, value_name = "N|auto")]
    pub workers: Option<String>,

    /// The address to serve on (else the config's, or the Node app's own port).
    #[arg(short, long = "listen", value_name = "ADDR")]
    pub listen: Option<ListenAddr>,

    /// How long to wait for the app to serve.
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = crate::units::parse_duration)]
    pub timeout: std::time::Duration,

    /// The worker command, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReplaceArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// The worker's slot (as `sheepdog status` shows it).
    #[arg(value_name = "SLOT")]
    pub slot: usize,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The app's name (as `sheepdog status` lists it), when several run.
    #[arg(value_name = "NAME")]
    pub name: Option<String>,

    #[command(flatten)]
    pub client: ClientArgs,

    /// Keep printing new lines as they come (Ctrl-C ends it).
    #[arg(short, long)]
    pub follow: bool,

    /// How many of the last lines to show.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 50)]
    pub lines: usize,

    /// Only the worker in this slot.
    #[arg(long, value_name = "SLOT")]
    pub worker: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The ecosystem file: ecosystem.config.js (.cjs, .mjs) or .json.
    #[arg(value_name = "ECOSYSTEM")]
    pub file: PathBuf,

    /// Where to write NAME.toml for each app (/etc/sheepdog for the services).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,

    /// The env set to merge over `env`, as `pm2 start … --env production`
    /// merges `env_production`.
    #[arg(long, value_name = "NAME")]
    pub env: Option<String>,

    /// Overwrite configs that are there already.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// The number of workers: 4, +1, -2, auto or max (one per CPU).
    #[arg(value_name = "N|+N|-N|auto", allow_hyphen_values = true, value_parser = parse_scale)]
    pub workers: ScaleTo,
}

/// What `sheepdog scale` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleTo {
    Exactly(u32),
    By(i64),
    /// One per CPU (`auto`, or `max` as pm2 says it).
    Auto,
}

fn parse_scale(text: &str) -> Result<ScaleTo, String> {
    let max = crate::config::MAX_WORKERS as i64;
    let expected = "expected a number of workers (4), a change (+1, -2), or auto (max)";
    match text {
        "auto" | "max" => return Ok(ScaleTo::Auto),
        "" => return Err(expected.to_string()),
        _ => {}
    }
    let relative = text.starts_with('+') || text.starts_with('-');
    let n: i64 = text.parse().map_err(|_| format!("\"{text}\": {expected}"))?;
    if relative {
        if n == 0 || n.abs() > max {
            return Err(format!("\"{text}\": a change must be from -{max} to +{max}, and not 0"));
        }
        Ok(ScaleTo::By(n))
    } else if (1..=max).contains(&n) {
        Ok(ScaleTo::Exactly(n as u32))
    } else {
        Err(format!("\"{text}\": the number of workers must be from 1 to {max}"))
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The TOML config file.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Number of workers, or "auto" for one per CPU (overrides `workers`).
    #[arg(short, long, value_name = "N|auto")]
    pub workers: Option<WorkerCount>,

    /// Address to bind when systemd passes no socket: 127.0.0.1:8080, `[::1]:8080`,
    /// unix:/path. Repeatable; overrides `listen`.
    #[arg(short, long = "listen", value_name = "ADDR")]
    pub listen: Vec<ListenAddr>,

    /// Log level (overrides `log_level` and RUST_LOG).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,

    /// How new connections reach the workers: round-robin, random or shared
    /// (overrides `spread`).
    #[arg(long, value_name = "HOW")]
    pub spread: Option<Spread>,

    /// The signal that asks a worker to stop gracefully, e.g. SIGINT
    /// (overrides `stop_signal`; default SIGTERM, which Node workers that
    /// handle only SIGINT get as SIGINT).
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<StopSignal>,

    /// The worker command, after `--` (overrides `command`).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl RunArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            workers: self.workers,
            listen: self.listen.clone(),
            command: self.command.clone(),
            log_level: self.log_level,
            spread: self.spread,
            stop_signal: self.stop_signal.map(|s| s.0),
        }
    }
}
