//! Finding every running supervisor of this installation, for `sheepdog
//! upgrade --all` (the package's postinst, which runs it as root), and
//! asking them, without trusting anything a process says of itself.
//!
//! **Which processes.** Only one that really runs this installation's
//! binary, by the kernel's word (its `/proc/PID/exe`), with `run` as its
//! first argument:
//!
//! - the same file as the one at this binary's path (device and inode),
//!   that path's symlinks followed only when they belong to root or the
//!   caller;
//! - or the file the package replaced: deleted (no link left), on the same
//!   file system, once at this very path, and owned by root or the caller
//!   (no one else can leave such a file there);
//! - or, when this binary's path is such a trusted symlink (a symlink farm
//!   swapped to another release), a binary of the same name owned by root
//!   or the caller, run by root or the caller, whose status says it
//!   upgrades from this path.
//!
//! **Which socket.** The process's own listening unix sockets, read from
//! /proc (its fds' inodes, its network namespace's socket table), each
//! reached through the process's own root (`/proc/PID/root`, so a unit's
//! private mounts are no obstacle) without following anyone else's
//! symlinks ([`super::walk`]); the peer must be that very process
//! (`SO_PEERCRED`) before a byte is sent.
//!
//! **How long.** Everyone is asked at once, within one deadline: however
//! many candidates there are, looking takes [`ASK`] at most.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::walk;
use crate::control::client;
use crate::control::protocol::{Command, Reply, StatusReport};
use crate::core::Pid;

/// How long looking for supervisors takes at most, all of them together.
pub const ASK: Duration = Duration::from_secs(3);
/// Candidates asked at once (each holds a thread and a socket).
const AT_ONCE: usize = 128;

/// A running supervisor, found and asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub pid: Pid,
    /// Its app's name, as its status says (printable).
    pub name: String,
    /// Its control socket, as seen from its own root.
    pub socket: PathBuf,
    pub version: String,
}

/// This installation's binary, as the kernel knows it.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The path it runs from (what `upgrade` execs).
    pub path: PathBuf,
    /// Where that path leads, symlinks followed.
    pub canonical: PathBuf,
    /// The file there: device and inode.
    pub file: (u64, u64),
    /// The path is a symlink (one that root or the caller owns).
    pub symlink: bool,
    /// Whose files and symlinks count: root and the caller.
    pub trusted: Vec<u32>,
}

impl Installed {
    /// The binary at `path`, its symlinks followed only when root's or the caller's.
    pub fn at(path: &Path) -> Result<Installed, String> {
        let own = nix::unistd::geteuid().as_raw();
        let trusted = if own == 0 { vec![0] } else { vec![0, own] };
        let root = walk::open_root(Path::new("/"))?;
        let found = walk::resolve(&root, path, &trusted)?;
        let symlink = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Ok(Installed {
            path: path.to_path_buf(),
            canonical,
            file: (found.stat.st_dev, found.stat.st_ino),
            symlink,
            trusted,
        })
    }
}

/// Why a process counts as running this installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runs {
    /// The very file at our path.
    Same,
    /// The file our path held before the package replaced it.
    Replaced,
    /// Another release a trusted symlink at our path pointed to: only if
    /// its status says it upgrades from our path.
    Release,
}

/// A process that may be a supervisor of ours, and the sockets to try.
struct Candidate {
    pid: Pid,
    runs: Runs,
}

/// Every supervisor running this installation, by pid; and those found
/// running it that could not be asked (pid, why). Bounded by [`ASK`].
pub fn supervisors(installed: &Installed) -> (Vec<Running>, Vec<(Pid, String)>) {
    let deadline = Instant::now() + ASK;
    let candidates = candidates(installed);
    let asked = for_each_at_once(candidates, |candidate| {
        let outcome = ask_status(candidate.pid, deadline);
        (candidate, outcome)
    });
    let mut found = Vec::new();
    let mut unreachable = Vec::new();
    for (candidate, outcome) in asked {
        match outcome {
            Ok((running, upgrades_from)) => {
                let ours = candidate.runs != Runs::Release || upgrades_from.as_deref() == Some(&installed.path);
                if ours {
                    found.push(running);
                }
            }
            Err(why) if candidate.runs != Runs::Release => unreachable.push((candidate.pid, why)),
            Err(_) => {}
        }
    }
    found.sort_by_key(|r| r.pid);
    unreachable.sort_by_key(|(pid, _)| *pid);
    (found, unreachable)
}

/// Asks one found supervisor for `command`, through its socket again (the
/// same checks), within `timeout`.
pub fn ask(running: &Running, command: &Command, timeout: Duration) -> Result<Reply, client::NoReply> {
    let deadline = Instant::now() + timeout;
    let stream = connect(running.pid, &running.socket, deadline).map_err(client::NoReply::Failed)?;
    client::exchange(stream, command, deadline, &running.socket)
}

/// Runs `each` on every item, [`AT_ONCE`] at a time, in threads; the
/// results in the items' order.
pub fn for_each_at_once<T: Send, R: Send>(items: Vec<T>, each: impl Fn(T) -> R + Sync) -> Vec<R> {
    let mut results = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let batch: Vec<T> = items.by_ref().take(AT_ONCE).collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = batch.into_iter().map(|item| scope.spawn(|| each(item))).collect();
            results.extend(handles.into_iter().filter_map(|h| h.join().ok()));
        });
    }
    results
}

/// The processes that run this installation's binary as `… run …`.
fn candidates(installed: &Installed) -> Vec<Candidate> {
    let own = std::process::id() as Pid;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<Pid> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|pid| *pid != own)
        .collect();
    pids.sort_unstable();
    pids.into_iter()
        .filter_map(|pid| runs_installed(pid, installed).map(|runs| Candidate { pid, runs }))
        .collect()
}

/// Whether `pid` runs `… run …` from this installation's binary, and why.
fn runs_installed(pid: Pid, installed: &Installed) -> Option<Runs> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if cmdline.split(|b| *b == 0).nth(1) != Some(b"run") {
        return None;
    }
    // A hand-over's guard: a fork of a supervisor, no supervisor itself.
    let comm = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
    if comm.trim_ascii_end() == super::handover::GUARD_NAME.to_bytes() {
        return None;
    }
    // stat(2) through the magic link: the file itself, deleted or not.
    let file = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    if (file.dev(), file.ino()) == installed.file {
        return Some(Runs::Same);
    }
    if !installed.trusted.contains(&file.uid()) {
        return None;
    }
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let text = link.as_os_str().as_encoded_bytes();
    if let Some(path) = text.strip_suffix(b" (deleted)") {
        let was_ours = [&installed.path, &installed.canonical]
            .iter()
            .any(|ours| ours.as_os_str().as_encoded_bytes() == path);
        return (was_ours && file.nlink() == 0 && file.dev() == installed.file.0).then_some(Runs::Replaced);
    }
    let same_name = link.file_name() == installed.path.file_name();
    let run_by_trusted = process_uid(pid).is_some_and(|uid| installed.trusted.contains(&uid));
    (installed.symlink && same_name && run_by_trusted).then_some(Runs::Release)
}

/// The real uid a process runs as.
fn process_uid(pid: Pid) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The control socket of supervisor `pid`: among its listening unix stream
/// sockets, those named `control*.sock` first, the one whose status names
/// `pid`; with the path its status says it upgrades from.
fn ask_status(pid: Pid, deadline: Instant) -> Result<(Running, Option<PathBuf>), String> {
    let inodes = socket_inodes(pid);
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/unix"))
        .map_err(|e| format!("cannot read its sockets: {e}"))?;
    let mut candidates: Vec<PathBuf> = listening_paths(&table, &inodes);
    candidates.sort_by_key(|path| {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        !(name.starts_with("control") && name.ends_with(".sock"))
    });
    let mut why = "it listens on no control socket".to_string();
    for path in candidates {
        let stream = match connect(pid, &path, deadline) {
            Ok(stream) => stream,
            Err(e) => {
                why = e;
                continue;
            }
        };
        match client::exchange(stream, &Command::Status, deadline, &path) {
            Ok(Reply::Status(status)) if status.supervisor.pid == pid as u32 => {
                return Ok(running(pid, path, &status));
            }
            Ok(_) => why = format!("{} did not answer with its status", shown(&path)),
            Err(e) => why = e.to_string(),
        }
    }
    Err(why)
}

fn running(pid: Pid, socket: PathBuf, status: &StatusReport) -> (Running, Option<PathBuf>) {
    let running = Running {
        pid,
        name: status.supervisor.name.clone(),
        socket,
        version: status.supervisor.version.clone(),
    };
    (running, status.supervisor.exe.as_ref().map(PathBuf::from))
}

/// Connects to `path` as `pid` sees it, walked from its root without
/// following anyone else's symlinks, by `deadline`; the peer must be `pid`
/// itself.
fn connect(pid: Pid, path: &Path, deadline: Instant) -> Result<UnixStream, String> {
    let own = nix::unistd::geteuid().as_raw();
    let trusted = if own == 0 { vec![0] } else { vec![0, own] };
    let root: OwnedFd = walk::open_root(Path::new(&format!("/proc/{pid}/root")))?;
    let found = walk::resolve(&root, path, &trusted)?;
    if found.kind() != nix::sys::stat::SFlag::S_IFSOCK {
        return Err(format!("{} is not a socket", shown(path)));
    }
    let stream = client::connect_within(&found.through_fd(), Some(deadline))
        .map_err(|e| format!("cannot connect to {}: {e}", shown(path)))?;
    let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("{}: cannot tell who serves it: {}", shown(path), e.desc()))?;
    if peer.pid() != pid {
        return Err(format!(
            "{} is served by pid {}, not by pid {pid}: not asked",
            shown(path),
            peer.pid()
        ));
    }
    Ok(stream)
}

fn shown(path: &Path) -> String {
    crate::text::printable(&path.to_string_lossy()).into_owned()
}

/// The inodes of the sockets `pid` holds.
fn socket_inodes(pid: Pid) -> HashSet<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| crate::worker::proc_stats::socket_inode(&link.to_string_lossy()))
        .collect()
}

/// The paths of the listening unix stream sockets in a `/proc/net/unix`
/// table whose inode is in `inodes`.
fn listening_paths(table: &str, inodes: &HashSet<u64>) -> Vec<PathBuf> {
    const ACCEPTING: u32 = 0x0001_0000;
    const STREAM: u32 = 1;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // Num RefCount Protocol Flags Type St Inode Path
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            let kind = u32::from_str_radix(fields.get(4)?, 16).ok()?;
            let inode: u64 = fields.get(6)?.parse().ok()?;
            let path = fields.get(7)?;
            let wanted = flags & ACCEPTING != 0 && kind == STREAM && inodes.contains(&inode);
            (wanted && path.starts_with('/')).then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_stream_sockets_are_read_from_the_table() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 4242 /run/sheepdog/app/control.sock\n\
            0000000000000000: 00000002 00000000 00000000 0002 01 4343 /tmp/sheepdog.1/w0-1.sock\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 4444 /run/other.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 4545\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 4646 @abstract\n";
        let ours: HashSet<u64> = [4242, 4343, 4545, 4646].into();
        assert_eq!(
            listening_paths(table, &ours),
            vec![PathBuf::from("/run/sheepdog/app/control.sock")]
        );
    }

    #[test]
    fn this_test_is_no_supervisor() {
        let installed = Installed::at(&std::env::current_exe().unwrap()).unwrap();
        assert_eq!(runs_installed(std::process::id() as Pid, &installed), None);
    }

    #[test]
    fn asking_many_at_once_takes_as_long_as_the_slowest() {
        let started = Instant::now();
        let items: Vec<u64> = (0..300).collect();
        let out = for_each_at_once(items, |i| {
            std::thread::sleep(Duration::from_millis(100));
            i * 2
        });
        assert_eq!(out.len(), 300);
        assert_eq!(out[299], 598);
        // Three batches of 128 at most, not 300 in a row.
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }
}
