//! Upgrading sheepdog itself in place: the binary now installed at
//! sheepdog's path takes over the running flock under the same pid, so
//! systemd's MainPID, the workers' parent and their PDEATHSIG all stay
//! valid, and no worker is stopped.
//!
//! # How a hand-over goes
//!
//! 1. `sheepdog upgrade` asks over the control socket. At the end of that
//!    pass the supervisor runs the new binary's probe (`sheepdog
//!    upgrade-probe`, bounded to [`PROBE_TIMEOUT`]): a binary that cannot
//!    be executed, exits without answering, or reads another state format
//!    is refused there, and nothing changes.
//! 2. It blocks every signal (they stay pending across exec), takes those
//!    already caught, and writes its whole state ([`state::HandOver`]: the
//!    core's flock as it is, the shell's commands and clients, every fd with its
//!    inode) into a memfd. Every fd it names loses close-on-exec.
//! 3. It execs the binary at its path with its own argv, and the memfd and
//!    an fd onto its own (old) executable named in `SHEEPDOG_UPGRADE`. If
//!    the exec fails, it puts everything back and answers why.
//! 4. The new binary reads the state, checks every fd, takes them, installs
//!    its signal handlers, restores the signal mask, handles what was
//!    pending, and answers the client: "upgraded from X to Y".
//! 5. A new binary that cannot take the state (another format after all,
//!    an fd that is not what the state says) execs the old executable
//!    again through that fd, with the same state and the reason: the old
//!    binary carries on and answers the client with the failure. Only if
//!    even that fails are the workers stopped and sheepdog exits 1, so
//!    that systemd restarts the service cleanly; no worker is left behind.

pub mod find;
pub mod handover;
pub mod probe;
pub mod state;
pub mod walk;

use std::path::PathBuf;
use std::time::Duration;

/// Where a binary taking over finds its state: `state=FD,exe=FD`.
pub const ENV: &str = crate::wire::STATE_ENV;
/// Set by a new binary handing the state back: why it could not take it.
pub const ENV_REFUSED: &str = "SHEEPDOG_UPGRADE_REFUSED";
/// The longest the supervisor waits for a new binary's probe (its loop
/// waits with it).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The path this process was started from: what an upgrade execs (the
/// binary installed there by then). That is the path it was invoked by
/// (`argv[0]`, through PATH if bare) when it is this very file, so that an
/// install that swaps a symlink (`/usr/local/bin/sheepdog` → a versioned
/// directory) is followed; else the executable's own path, from which the
/// kernel's " (deleted)" for a replaced file is cut.
pub fn own_path() -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let exe = std::fs::read_link("/proc/self/exe").ok()?;
    let text = exe.as_os_str().as_encoded_bytes();
    let exe = match text.strip_suffix(b" (deleted)") {
        // SAFETY: a prefix of the encoded bytes of an OsStr, cut at an
        // ASCII boundary.
        Some(path) => PathBuf::from(unsafe { std::ffi::OsStr::from_encoded_bytes_unchecked(path) }),
        None => exe,
    };
    let invoked = std::env::args_os().next().and_then(|arg0| {
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        let found = crate::config::find_program(&arg0, &path_var, None).ok()?;
        std::path::absolute(found).ok()
    });
    let same = |path: &PathBuf| {
        let (Ok(a), Ok(b)) = (std::fs::metadata(path), std::fs::metadata("/proc/self/exe")) else {
            return false;
        };
        (a.dev(), a.ino()) == (b.dev(), b.ino())
    };
    Some(invoked.filter(same).unwrap_or(exe))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_path_is_the_test_binary() {
        let path = own_path().unwrap();
        assert!(path.is_absolute());
        assert_eq!(
            std::fs::canonicalize(path).unwrap(),
            std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap()
        );
    }
}
