//! Finding every running supervisor of this installation, for `sheepdog
//! upgrade --all` (the package's postinst): the processes that run
//! `sheepdog run` from this binary's path (its executable there, replaced
//! or not; or, for a symlink swapped to another release since, a supervisor
//! whose status names this path as the one it upgrades from), each reached
//! through its own control socket, wherever its unit put it.
//!
//! A unit's control socket may be anywhere (`control_socket =`, a
//! `RuntimeDirectory=` of its own, a private /tmp), so it is not looked
//! for by path: the process's own listening unix sockets are read from
//! /proc (its fds' inodes, its network namespace's socket table), and each
//! is reached through the process's own root (`/proc/PID/root`), so that a
//! unit's private mounts are no obstacle. The one whose status names that
//! pid is its control socket.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::control::client;
use crate::control::protocol::{Command, Reply};
use crate::core::Pid;

/// How long a supervisor is given to say its status while looking.
const ASK: Duration = Duration::from_secs(2);

/// A running supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub pid: Pid,
    /// Its app's name, as its status says.
    pub name: String,
    /// Its control socket, as this process reaches it.
    pub socket: PathBuf,
    pub version: String,
}

/// Every supervisor running from `exe`, by pid; and those found running
/// that could not be reached (pid, why).
pub fn supervisors(exe: &Path) -> (Vec<Running>, Vec<(Pid, String)>) {
    let own = std::process::id() as Pid;
    let mut found = Vec::new();
    let mut unreachable = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (found, unreachable);
    };
    let mut pids: Vec<Pid> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|pid| *pid != own)
        .collect();
    pids.sort_unstable();
    let canonical = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    for pid in pids {
        let Some(running_from) = supervisor_executable(pid) else {
            continue;
        };
        let ours = running_from == exe || running_from == canonical;
        // Another file of the same name may still be ours: a release a
        // symlink at our path pointed to when it started. Its status says.
        if !ours && running_from.file_name() != exe.file_name() {
            continue;
        }
        match control_socket(pid) {
            Ok((running, upgrades_from)) => {
                if ours || upgrades_from.as_deref() == Some(exe) {
                    found.push(running);
                }
            }
            Err(why) if ours => unreachable.push((pid, why)),
            Err(_) => {}
        }
    }
    (found, unreachable)
}

/// The executable of `pid` (" (deleted)" cut), if it runs `… run …` as
/// sheepdog's supervisor does.
fn supervisor_executable(pid: Pid) -> Option<PathBuf> {
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if cmdline.split(|b| *b == 0).nth(1) != Some(b"run") {
        return None;
    }
    let bytes = link.as_os_str().as_encoded_bytes();
    let path = bytes.strip_suffix(b" (deleted)").unwrap_or(bytes);
    // SAFETY: a prefix of the encoded bytes of an OsStr, cut at an ASCII boundary.
    Some(PathBuf::from(unsafe {
        std::ffi::OsStr::from_encoded_bytes_unchecked(path)
    }))
}

/// The control socket of supervisor `pid`: among its listening unix stream
/// sockets, those named `control*.sock` first, the one whose status names
/// `pid`; with the path its status says it upgrades from.
fn control_socket(pid: Pid) -> Result<(Running, Option<PathBuf>), String> {
    let inodes = socket_inodes(pid);
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/unix"))
        .map_err(|e| format!("cannot read its sockets: {e}"))?;
    let mut candidates: Vec<PathBuf> = listening_paths(&table, &inodes);
    candidates.sort_by_key(|path| {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        !(name.starts_with("control") && name.ends_with(".sock"))
    });
    for path in candidates {
        let reachable = through_root(pid, &path);
        if let Ok(Reply::Status(status)) = client::request(&reachable, &Command::Status, Some(ASK))
            && status.supervisor.pid == pid as u32
        {
            let running = Running {
                pid,
                name: status.supervisor.name.clone(),
                socket: reachable,
                version: status.supervisor.version.clone(),
            };
            return Ok((running, status.supervisor.exe.as_ref().map(PathBuf::from)));
        }
    }
    Err("no control socket of its answers".into())
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

/// `path` as seen from `pid`'s root (its unit may have mounts of its own),
/// when that fits in a unix socket address; else `path` itself.
fn through_root(pid: Pid, path: &Path) -> PathBuf {
    let through = PathBuf::from(format!("/proc/{pid}/root{}", path.display()));
    if through.as_os_str().len() <= crate::config::MAX_UNIX_PATH && through.exists() {
        through
    } else {
        path.to_path_buf()
    }
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
        assert_eq!(supervisor_executable(std::process::id() as Pid), None);
    }
}
