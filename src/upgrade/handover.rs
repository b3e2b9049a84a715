//! The mechanics of a hand-over, on both sides of the exec: the memfd that
//! carries the state, close-on-exec flags, the signal mask, the exec itself,
//! and, in the new binary, reading the state, handing it back to the old
//! executable, or giving up cleanly.

use std::ffi::{CString, OsString};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

use super::state::MAX_STATE;
use super::{ENV, ENV_REFUSED};

/// Every fd in `fds` survives the next exec (`inherit`) or not; returns
/// those whose flag it changed, to put back if the exec fails.
pub fn set_inherited(fds: &[RawFd], inherit: bool) -> Vec<RawFd> {
    let mut changed = Vec::new();
    for &fd in fds {
        // SAFETY: F_GETFD/F_SETFD on an fd of ours; a bad one fails with EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            continue;
        }
        let wanted = if inherit {
            flags & !libc::FD_CLOEXEC
        } else {
            flags | libc::FD_CLOEXEC
        };
        // SAFETY: as above.
        if wanted != flags && unsafe { libc::fcntl(fd, libc::F_SETFD, wanted) } == 0 {
            changed.push(fd);
        }
    }
    changed
}

/// Blocks every signal; returns the mask as it was. Signals sent from now
/// on stay pending, across exec, until the new binary has its handlers.
pub fn block_signals() -> SigSet {
    let mut before = SigSet::empty();
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut before)) {
        log::warn!("cannot block signals for the hand-over: {}", e.desc());
    }
    before
}

/// Sets the signal mask to `mask`.
pub fn restore_signals(mask: &SigSet) {
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(mask), None) {
        log::warn!("cannot restore the signal mask: {}", e.desc());
    }
}

/// The signals in a mask, as numbers (the state's form).
pub fn mask_numbers(mask: &SigSet) -> Vec<i32> {
    mask.iter().map(|s| s as i32).collect()
}

/// A mask from the state's numbers (those this platform does not know are skipped).
pub fn mask_from(numbers: &[i32]) -> SigSet {
    let mut mask = SigSet::empty();
    for signal in numbers.iter().filter_map(|n| Signal::try_from(*n).ok()) {
        mask.add(signal);
    }
    mask
}

/// The state in a memfd, read from its start.
pub fn write_state(bytes: &[u8]) -> Result<OwnedFd, String> {
    let fd = nix::sys::memfd::memfd_create(c"sheepdog-state", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(|e| format!("cannot create a memfd for the state: {}", e.desc()))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)
        .and_then(|()| file.rewind())
        .map_err(|e| format!("cannot write the state: {e}"))?;
    Ok(file.into())
}

/// The executable this process runs, opened: a way back to it even once
/// the file at its path was replaced.
pub fn open_own_executable() -> Result<OwnedFd, String> {
    std::fs::File::open("/proc/self/exe")
        .map(OwnedFd::from)
        .map_err(|e| format!("cannot open /proc/self/exe: {e}"))
}

/// The environment for the next binary: this one's, with `ENV` (and
/// `ENV_REFUSED`, if given) set anew.
fn environment(state: RawFd, exe: RawFd, refused: Option<&str>) -> Vec<CString> {
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(key, _)| key != ENV && key != ENV_REFUSED)
        .filter_map(|(key, value)| {
            let mut entry = key.into_vec();
            entry.push(b'=');
            entry.extend(value.into_vec());
            CString::new(entry).ok()
        })
        .collect();
    env.extend(CString::new(format!("{ENV}=state={state},exe={exe}")).ok());
    if let Some(why) = refused {
        // One line of printable text: it only travels to be logged.
        let why: String = why
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(1000)
            .collect();
        env.extend(CString::new(format!("{ENV_REFUSED}={why}")).ok());
    }
    env
}

/// This process's own argv, as it was started.
fn arguments() -> Vec<CString> {
    std::env::args_os()
        .filter_map(|arg| CString::new(arg.into_vec()).ok())
        .collect()
}

/// Execs `path` with this process's argv and environment, the state in
/// `state` and a way back in `exe`. Returns only if the exec failed.
pub fn exec(path: &Path, state: RawFd, exe: RawFd) -> String {
    let Ok(program) = CString::new(path.as_os_str().as_bytes()) else {
        return format!("{} holds a NUL byte", path.display());
    };
    let env = environment(state, exe, None);
    let errno = match nix::unistd::execve(&program, &arguments(), &env) {
        Ok(never) => match never {},
        Err(errno) => errno,
    };
    format!("cannot execute {}: {}", path.display(), errno.desc())
}

/// Execs the executable open at `exe` (the old binary) with the state in
/// `state` and why it comes back. Returns only if that exec failed.
pub fn exec_back(exe: RawFd, state: RawFd, why: &str) -> String {
    let env = environment(state, exe, Some(why));
    let argv = arguments();
    let argv_pointers: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let env_pointers: Vec<*const libc::c_char> = env
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: execveat with AT_EMPTY_PATH runs the file open at `exe`; the
    // argument and environment arrays are NUL-terminated arrays of
    // NUL-terminated strings that live until the call returns (on failure).
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            exe,
            c"".as_ptr(),
            argv_pointers.as_ptr(),
            env_pointers.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    format!("cannot execute the old binary again: {}", Errno::last().desc())
}

/// What a binary started by a hand-over was given.
pub struct Inherited {
    /// The state's memfd.
    pub state: OwnedFd,
    /// The old binary's executable, to hand back to.
    pub exe: OwnedFd,
    /// Set when this binary is the old one, handed the state back: why.
    pub refused: Option<String>,
}

impl Inherited {
    /// What `ENV` names, if this process was started by a hand-over (and
    /// the variables are gone from its environment from then on).
    pub fn from_env() -> Result<Option<Inherited>, String> {
        let Some(value) = std::env::var_os(ENV) else {
            return Ok(None);
        };
        let refused = std::env::var_os(ENV_REFUSED).map(|why| why.to_string_lossy().into_owned());
        // SAFETY: the process is single-threaded this early (nothing was
        // started yet), so no other thread reads the environment meanwhile.
        unsafe {
            std::env::remove_var(ENV);
            std::env::remove_var(ENV_REFUSED);
        }
        let (state, exe) = parse(&value).ok_or_else(|| format!("{ENV}={value:?} is not state=FD,exe=FD"))?;
        for fd in [state, exe] {
            // SAFETY: fcntl(F_GETFD) on any number is harmless.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(format!("{ENV} names fd {fd}, which is not open"));
            }
        }
        set_inherited(&[state, exe], false);
        // SAFETY: both are open (checked above), were handed to this
        // process for this, and are owned here alone.
        let (state, exe) = unsafe { (OwnedFd::from_raw_fd(state), OwnedFd::from_raw_fd(exe)) };
        Ok(Some(Inherited { state, exe, refused }))
    }

    /// The state's bytes, from the start of the memfd.
    pub fn read_state(&self) -> Result<Vec<u8>, String> {
        let mut file = std::fs::File::from(self.state.try_clone().map_err(|e| format!("the state's memfd: {e}"))?);
        let mut bytes = Vec::new();
        file.rewind()
            .and_then(|()| (&mut file).take(MAX_STATE as u64 + 1).read_to_end(&mut bytes))
            .map_err(|e| format!("cannot read the state: {e}"))?;
        Ok(bytes)
    }

    /// Execs the old binary again with the state, and why this one could
    /// not take it; returns only if that failed. What the state names
    /// survives the exec: nothing of it was taken (it is close-on-exec only
    /// once adopted).
    pub fn hand_back(&self, why: &str) -> String {
        if self.refused.is_some() {
            return "this is the old binary already: there is nothing to hand back to".into();
        }
        let state = self.state.as_raw_fd();
        // SAFETY: lseek(2) on the memfd we own.
        if unsafe { libc::lseek(state, 0, libc::SEEK_SET) } < 0 {
            return format!("cannot rewind the state: {}", Errno::last().desc());
        }
        // The exe fd too: the environment names it, and the old binary
        // expects every fd it names to be there.
        set_inherited(&[state, self.exe.as_raw_fd()], true);
        exec_back(self.exe.as_raw_fd(), state, why)
    }
}

fn parse(value: &OsString) -> Option<(RawFd, RawFd)> {
    let text = value.to_str()?;
    let mut state = None;
    let mut exe = None;
    for part in text.split(',') {
        match part.split_once('=')? {
            ("state", fd) => state = fd.parse().ok().filter(|fd| *fd >= 0),
            ("exe", fd) => exe = fd.parse().ok().filter(|fd| *fd >= 0),
            _ => return None,
        }
    }
    Some((state?, exe?))
}

/// The last resort of a binary that can neither take the flock over nor
/// hand it back: every process it is the parent of (the workers, and what
/// escaped them) is killed with its process group, so that nothing outlives
/// it, and the caller exits non-zero for systemd's Restart= to start the
/// service afresh.
pub fn stop_every_child() -> usize {
    let own = std::process::id();
    let mut children = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{own}/task")) {
        for task in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                children.extend(list.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
            }
        }
    }
    for &child in &children {
        // SAFETY: kill(2) of our own children and their groups.
        unsafe {
            libc::kill(-child, libc::SIGKILL);
            libc::kill(child, libc::SIGKILL);
        }
    }
    children.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_names_two_fds() {
        assert_eq!(parse(&"state=7,exe=9".into()), Some((7, 9)));
        assert_eq!(parse(&"exe=9,state=7".into()), Some((7, 9)));
        for bad in [
            "",
            "state=7",
            "state=x,exe=9",
            "state=-1,exe=9",
            "state=7,exe=9,more=1",
            "state",
        ] {
            assert_eq!(parse(&bad.into()), None, "{bad}");
        }
    }

    #[test]
    fn the_state_is_read_back_from_its_memfd() {
        let fd = write_state(b"{\"format\":1}").unwrap();
        let exe = open_own_executable().unwrap();
        let inherited = Inherited {
            state: fd,
            exe,
            refused: None,
        };
        assert_eq!(inherited.read_state().unwrap(), b"{\"format\":1}");
        // Read twice: each read starts at the beginning.
        assert_eq!(inherited.read_state().unwrap(), b"{\"format\":1}");
    }

    #[test]
    fn close_on_exec_is_cleared_and_put_back() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = file.as_raw_fd();
        let flags = || unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_ne!(flags() & libc::FD_CLOEXEC, 0);
        assert_eq!(set_inherited(&[fd], true), vec![fd]);
        assert_eq!(flags() & libc::FD_CLOEXEC, 0);
        assert_eq!(
            set_inherited(&[fd], true),
            Vec::<RawFd>::new(),
            "nothing left to change"
        );
        set_inherited(&[fd], false);
        assert_ne!(flags() & libc::FD_CLOEXEC, 0);
    }
}
