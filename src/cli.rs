//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ListenAddr, LogLevel, Overrides, WorkerCount};

#[derive(Debug, Parser)]
#[command(
    name = "sheepdog",
    version,
    about = "A pre-fork process supervisor for network services under systemd",
    long_about = "sheepdog runs N copies of any server program on one shared listening socket \
                  (inherited from systemd socket activation, or bound itself), replaces the ones \
                  that die, and stops them cleanly. Workers accept() directly on the socket: \
                  sheepdog never sits in the request path."
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
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The TOML config file.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Number of workers, or "auto" for one per CPU (overrides `workers`).
    #[arg(short, long, value_name = "N|auto")]
    pub workers: Option<WorkerCount>,

    /// Address to bind when systemd passes no socket: 127.0.0.1:8080, [::1]:8080,
    /// unix:/path. Repeatable; overrides `listen`.
    #[arg(short, long = "listen", value_name = "ADDR")]
    pub listen: Vec<ListenAddr>,

    /// Log level (overrides `log_level` and RUST_LOG).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,

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
        }
    }
}
