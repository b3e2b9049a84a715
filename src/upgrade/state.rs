//! What one binary hands to the next on an in-place upgrade, as data: the
//! format is versioned ([`crate::build::STATE_FORMAT`]), JSON, and a
//! contract between builds. Each part is written and read by the module
//! that owns what it describes (`export` and `adopt` beside each type);
//! this module only names the parts and frames the whole.
//!
//! How the format may change (a field added needs `#[serde(default)]`) is
//! written at [`crate::build::STATE_FORMAT`]; release 0.1.0's own states are
//! kept in tests/fixtures/state and decoded by a test.
//!
//! Every fd handed over is listed with its inode ([`FdRecord`]), and the
//! reader checks each one (open, a socket or pipe, the same inode) before
//! taking any: a state that does not match the fds the process holds is
//! refused whole, with nothing taken.

use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{Moment, relative_to};
pub use crate::control::server::{ClientState, ControlState};
use crate::core::{CommandId, Flock, Pid};
pub use crate::observe::http::{HttpClientState, HttpState};
pub use crate::spread::queues::{GroupState, SpreadState};
pub use crate::systemd::sockets::ListenerState;
pub use crate::wire::{Bytes, FdRecord};
pub use crate::worker::links::{LinkChannel, LinkState, LinksState};
pub use crate::worker::spawn::{CommandState, ExecReportState};

/// The most state a reader takes: 4096 workers with their channels fill a
/// few MiB.
pub const MAX_STATE: usize = 256 << 20;

/// The first thing read: which format follows, and from which build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    /// The version of the binary that wrote it.
    pub from_version: String,
    /// The origin of the state's time points (absent: the header alone
    /// tells the format, and a state without it does not parse).
    #[serde(default)]
    pub taken_at_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandOver {
    pub format: u32,
    pub from_version: String,
    /// CLOCK_MONOTONIC, in nanoseconds, when the old binary handled its
    /// last event: every time point in the state is written relative to it.
    pub taken_at_ns: u64,
    /// The supervisor's pid: a binary in another process (a wrapper that
    /// forks instead of exec'ing) must not take over workers it is not the
    /// parent of. Absent in a state from a build before it.
    #[serde(default)]
    pub pid: Option<u32>,
    pub supervisor: SupervisorState,
    pub os: OsState,
}

/// The supervisor's own part: the flock, and what the shell keeps beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisorState {
    pub flock: Flock,
    pub commands: Vec<(CommandId, CommandState)>,
    pub next_command: CommandId,
    pub context: ContextState,
    pub source: SourceState,
    pub name: String,
    pub config_path: Option<String>,
    /// When the supervisor first started (its uptime goes on).
    pub started: Moment,
    pub next_ticket: u64,
    /// Control clients waiting for a reload's outcome, by ticket.
    pub reload_waiters: Vec<(u64, u64)>,
    pub log_level: Option<String>,
    pub upgrades: UpgradesState,
    /// The control client that asked for this upgrade, to answer.
    pub requester: Option<u64>,
}

/// In-place upgrades so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpgradesState {
    pub count: u32,
    /// The version before the last upgrade.
    pub from: Option<String>,
    /// The last upgrade's wall-clock time, in milliseconds since the epoch.
    pub at_unix_ms: Option<u64>,
    /// How long the last one left events unhandled.
    pub blind: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextState {
    pub listeners: Vec<RawFd>,
    pub fdnames: Option<String>,
    pub journal: bool,
    pub fd_limit: Option<(u64, u64)>,
}

/// How to read the config again on reload (`ReloadSource`), values as the
/// config writes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceState {
    pub config_file: Option<Bytes>,
    pub workers: Option<String>,
    pub listen_overrides: Vec<String>,
    pub command_override: Vec<String>,
    pub log_level_override: Option<String>,
    /// `--spread` (absent from a build before it).
    #[serde(default)]
    pub spread_override: Option<String>,
    /// `--stop-signal` (absent from a build before it).
    #[serde(default)]
    pub stop_signal_override: Option<String>,
    pub listen: Vec<String>,
    pub inherited: bool,
    pub watchdog: Option<Duration>,
    pub control_socket: Bytes,
    pub http: Option<String>,
}

/// The system's part: every fd the loop watches, and what waits in them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OsState {
    /// The path the next upgrade execs.
    pub exe: Bytes,
    pub listeners: Vec<ListenerState>,
    pub inherited: bool,
    pub control: ControlState,
    pub http: Option<HttpState>,
    pub links: LinksState,
    pub exec_reports: Vec<ExecReportState>,
    /// Workers forked and not reaped yet.
    pub workers: Vec<Pid>,
    /// Escaped processes already killed, not reaped yet.
    pub swept: Vec<Pid>,
    /// Messages for systemd not sent yet.
    pub notify_outbox: Vec<String>,
    /// Log bytes not written yet, and lines dropped.
    pub log_pending: Bytes,
    pub log_dropped: u64,
    /// Signals received and not handled yet.
    pub pending_signals: Vec<i32>,
    /// The signals that were blocked before the hand-over blocked them all.
    pub signal_mask: Vec<i32>,
    /// The queues (absent from a build before them: one shared socket per address).
    #[serde(default)]
    pub spread: Option<SpreadState>,
    /// The workers' output pipes, outside journald (absent from a build
    /// before them: the workers wrote to sheepdog's own stderr).
    #[serde(default)]
    pub outputs: Option<OutputsState>,
}

/// The workers' output pipes and the name their lines carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputsState {
    pub name: String,
    pub pipes: Vec<crate::worker::output::OutputState>,
}

impl OsState {
    /// Every fd handed over.
    pub fn fds(&self) -> Vec<FdRecord> {
        let mut fds: Vec<FdRecord> = self.listeners.iter().map(|l| l.fd).collect();
        fds.push(self.control.listener);
        fds.extend(self.control.clients.iter().map(|c| c.fd));
        if let Some(http) = &self.http {
            fds.push(http.listener);
            fds.extend(http.clients.iter().map(|c| c.fd));
        }
        for link in &self.links.links {
            match &link.channel {
                LinkChannel::Notify { sockets, .. } => fds.extend(sockets.iter().copied()),
                LinkChannel::NodeIpc { stream, .. } => fds.push(*stream),
            }
        }
        fds.extend(self.exec_reports.iter().map(|r| r.pipe));
        for group in self.spread.iter().flat_map(|s| &s.groups) {
            fds.extend(group.map.iter().chain(&group.program).copied());
        }
        fds.extend(self.outputs.iter().flat_map(|o| o.pipes.iter().map(|p| p.fd)));
        fds
    }
}

impl HandOver {
    pub fn encode(&self) -> Vec<u8> {
        relative_to(Moment::from_nanos(self.taken_at_ns), || serde_json::to_vec(self)).unwrap_or_default()
    }

    /// Reads a hand-over of `format`: the header first, so that another
    /// format is named as such rather than reported as a parse error.
    pub fn decode(bytes: &[u8], format: u32) -> Result<HandOver, String> {
        if bytes.len() > MAX_STATE {
            return Err(format!("the state is over {} MiB", MAX_STATE >> 20));
        }
        let header: Header =
            serde_json::from_slice(bytes).map_err(|e| format!("the state has no readable header: {e}"))?;
        if header.format != format {
            return Err(format!(
                "the state is in format {} (written by sheepdog {}); this build reads format {format}",
                header.format, header.from_version
            ));
        }
        relative_to(Moment::from_nanos(header.taken_at_ns), || serde_json::from_slice(bytes))
            .map_err(|e| format!("the state of format {format} does not parse: {e}"))
    }
}

/// Checks that every fd is open, is what it was (its inode), and is
/// listed once; nothing is taken.
pub fn check_fds(fds: &[FdRecord]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for record in fds {
        if record.fd < 0 || !seen.insert(record.fd) {
            return Err(format!("fd {} is handed over twice, or is no fd", record.fd));
        }
        // SAFETY: fcntl(F_GETFD) on any number is harmless; it fails with
        // EBADF for one that is not open.
        if unsafe { libc::fcntl(record.fd, libc::F_GETFD) } < 0 {
            return Err(format!("fd {} is not open", record.fd));
        }
        // SAFETY: open (checked above), and only borrowed for the fstat.
        let fd = unsafe { BorrowedFd::borrow_raw(record.fd) };
        let stat = nix::sys::stat::fstat(fd).map_err(|e| format!("fd {}: {}", record.fd, e.desc()))?;
        if stat.st_ino != record.inode {
            return Err(format!(
                "fd {} is inode {}, not the {} handed over",
                record.fd, stat.st_ino, record.inode
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn only_the_fds_the_state_names_as_they_were_are_taken() {
        let a = std::fs::File::open("/dev/null").unwrap();
        let b = std::os::unix::net::UnixStream::pair().unwrap().0;
        let (ra, rb) = (FdRecord::of(a.as_fd()), FdRecord::of(b.as_fd()));
        assert!(check_fds(&[ra, rb]).is_ok());
        let wrong = FdRecord {
            inode: rb.inode + 1,
            ..rb
        };
        assert!(check_fds(&[ra, wrong]).unwrap_err().contains("not the"));
        assert!(check_fds(&[ra, ra]).unwrap_err().contains("twice"));
        // Far above any fd limit: never open.
        let gone = FdRecord { fd: 1 << 30, inode: 1 };
        assert!(check_fds(&[gone]).unwrap_err().contains("not open"));
    }
}
