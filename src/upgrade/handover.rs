//! The mechanics of a hand-over, on both sides of the exec: the memfd that
//! carries the state, close-on-exec flags, the signal mask, the exec itself,
//! and, in the new binary, reading the state, handing it back to the old
//! executable, or giving up cleanly.

use std::ffi::{CString, OsString};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
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
fn environment(state: RawFd, exe: RawFd, guard: Option<&Guard>, refused: Option<&str>) -> Vec<CString> {
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(key, _)| key != ENV && key != ENV_REFUSED)
        .filter_map(|(key, value)| {
            let mut entry = key.into_vec();
            entry.push(b'=');
            entry.extend(value.into_vec());
            CString::new(entry).ok()
        })
        .collect();
    let guard = guard.map_or(String::new(), |g| {
        format!(",guard={},guard_pid={}", g.fd.as_raw_fd(), g.pid)
    });
    env.extend(CString::new(format!("{ENV}=state={state},exe={exe}{guard}")).ok());
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

/// Execs the binary open at `file` (the one that answered the probe, found
/// at `path`) with this process's argv and environment, the state in
/// `state`, a way back in `exe`, and the `guard` to release. Returns only
/// if the exec failed.
pub fn exec(path: &Path, file: RawFd, state: RawFd, exe: RawFd, guard: &Guard) -> String {
    let env = environment(state, exe, Some(guard), None);
    let errno = execveat(file, &arguments(), &env);
    format!("cannot execute {}: {}", path.display(), errno.desc())
}

/// execveat(fd, "", argv, env, AT_EMPTY_PATH): runs the file open at `fd`.
/// Returns only on failure, with why.
fn execveat(fd: RawFd, argv: &[CString], env: &[CString]) -> Errno {
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
    // SAFETY: execveat with AT_EMPTY_PATH runs the file open at `fd`; the
    // argument and environment arrays are NULL-terminated arrays of
    // NUL-terminated strings that live until the call returns (on failure).
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            c"".as_ptr(),
            argv_pointers.as_ptr(),
            env_pointers.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    Errno::last()
}

/// Execs the executable open at `exe` (the old binary) with the state in
/// `state`, the `guard` still to release, and why it comes back. Returns
/// only if that exec failed.
pub fn exec_back(exe: RawFd, state: RawFd, guard: Option<&Guard>, why: &str) -> String {
    let env = environment(state, exe, guard, Some(why));
    let errno = execveat(exe, &arguments(), &env);
    format!("cannot execute the old binary again: {}", errno.desc())
}

/// How long a hand-over may take, from the exec to the end of the new
/// binary's first pass (3 ms with 4 workers, 5 ms with 256, 50 ms at most in
/// a debug build): past it, the process is killed.
pub const HANDOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A watcher of a hand-over that survives the exec: a child forked just
/// before it, which kills the supervisor's pid with SIGKILL unless the
/// binary that runs there releases it (closes `fd`, its pipe's only write
/// end) within [`HANDOVER_TIMEOUT`]. A new binary that hangs, or does
/// anything but take the flock over, is then ended as a crash is: the
/// workers go with it (their PDEATHSIG), and systemd restarts the service.
/// A process that dies releases it too, by closing the fd.
pub struct Guard {
    pub fd: OwnedFd,
    pub pid: i32,
}

/// The guard's process name (`/proc/PID/comm`).
pub const GUARD_NAME: &std::ffi::CStr = c"sheepdog-guard";

impl Guard {
    /// Forks the watcher. Called with every signal blocked (the watcher
    /// keeps them blocked; SIGKILL and its PDEATHSIG still end it).
    pub fn start(timeout: std::time::Duration) -> Result<Guard, String> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("cannot create the hand-over guard's pipe: {}", e.desc()))?;
        let parent = nix::unistd::getpid().as_raw();
        let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let (read_fd, write_fd) = (read.as_raw_fd(), write.as_raw_fd());
        // SAFETY: the supervisor is single-threaded; the child makes only
        // async-signal-safe calls (prctl, getppid, dup2, close_range, poll,
        // clock_gettime, kill, _exit) and never returns.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe { guard_child(parent, read_fd, write_fd, timeout_ms) }
        }
        if pid < 0 {
            return Err(format!("cannot fork the hand-over guard: {}", Errno::last().desc()));
        }
        drop(read);
        Ok(Guard { fd: write, pid })
    }
}

/// The watcher: waits for its pipe to close (released, or the supervisor
/// gone), else kills the supervisor.
///
/// # Safety
///
/// Only in the child of a fork of a single-threaded process.
unsafe fn guard_child(parent: i32, read: RawFd, write: RawFd, timeout_ms: i32) -> ! {
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        // What `ps` and `upgrade --all` see: not a second supervisor.
        libc::prctl(libc::PR_SET_NAME, GUARD_NAME.as_ptr());
        libc::close(write);
        // Only the pipe is kept (as fd 3), and stdin/out/err: not one of
        // the supervisor's sockets stays open in the watcher.
        if read != 3 {
            libc::dup2(read, 3);
        }
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
        let mut start: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut start);
        loop {
            let mut now: libc::timespec = std::mem::zeroed();
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
            let spent = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1_000_000;
            let left = (i64::from(timeout_ms) - spent).max(0) as i32;
            let mut pipe = libc::pollfd {
                fd: 3,
                events: libc::POLLIN,
                revents: 0,
            };
            match libc::poll(&mut pipe, 1, left) {
                0 => {
                    libc::kill(parent, libc::SIGKILL);
                    libc::_exit(1);
                }
                n if n > 0 => libc::_exit(0),
                _ if *libc::__errno_location() == libc::EINTR => continue,
                _ => libc::_exit(2),
            }
        }
    }
}

/// What a binary started by a hand-over was given.
pub struct Inherited {
    /// The state's memfd.
    pub state: OwnedFd,
    /// The old binary's executable, to hand back to.
    pub exe: OwnedFd,
    /// Set when this binary is the old one, handed the state back: why.
    pub refused: Option<String>,
    /// The hand-over's guard, to release once the flock is taken over.
    pub guard: Option<Guard>,
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
        let named =
            parse(&value).ok_or_else(|| format!("{ENV}={value:?} is not state=FD,exe=FD[,guard=FD,guard_pid=PID]"))?;
        let fds: Vec<RawFd> = [named.state, named.exe]
            .into_iter()
            .chain(named.guard.map(|(fd, _)| fd))
            .collect();
        for &fd in &fds {
            // SAFETY: fcntl(F_GETFD) on any number is harmless.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(format!("{ENV} names fd {fd}, which is not open"));
            }
        }
        set_inherited(&fds, false);
        // SAFETY: each is open (checked above), was handed to this process
        // for this, and is owned here alone.
        let take = |fd: RawFd| unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Some(Inherited {
            state: take(named.state),
            exe: take(named.exe),
            refused,
            guard: named.guard.map(|(fd, pid)| Guard { fd: take(fd), pid }),
        }))
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
        // The exe fd and the guard too: the environment names them, and the
        // old binary expects every fd it names to be there.
        let mut fds = vec![state, self.exe.as_raw_fd()];
        fds.extend(self.guard.as_ref().map(|g| g.fd.as_raw_fd()));
        set_inherited(&fds, true);
        exec_back(self.exe.as_raw_fd(), state, self.guard.as_ref(), why)
    }
}

/// The fds `ENV` names.
#[derive(Debug, PartialEq, Eq)]
struct Named {
    state: RawFd,
    exe: RawFd,
    /// The guard's pipe and the guard's pid.
    guard: Option<(RawFd, i32)>,
}

fn parse(value: &OsString) -> Option<Named> {
    let text = value.to_str()?;
    let (mut state, mut exe, mut guard, mut guard_pid) = (None, None, None, None);
    for part in text.split(',') {
        let number = |n: &str| n.parse::<i32>().ok().filter(|n| *n >= 0);
        match part.split_once('=')? {
            ("state", fd) => state = number(fd),
            ("exe", fd) => exe = number(fd),
            ("guard", fd) => guard = Some(number(fd)?),
            ("guard_pid", pid) => guard_pid = Some(number(pid).filter(|p| *p > 0)?),
            _ => return None,
        }
    }
    let guard = match (guard, guard_pid) {
        (Some(fd), Some(pid)) => Some((fd, pid)),
        (None, None) => None,
        _ => return None,
    };
    Some(Named {
        state: state?,
        exe: exe?,
        guard,
    })
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
    fn the_variable_names_two_fds_and_maybe_a_guard() {
        let named = |state, exe, guard| Some(Named { state, exe, guard });
        assert_eq!(parse(&"state=7,exe=9".into()), named(7, 9, None));
        assert_eq!(parse(&"exe=9,state=7".into()), named(7, 9, None));
        assert_eq!(
            parse(&"state=7,exe=9,guard=11,guard_pid=4242".into()),
            named(7, 9, Some((11, 4242)))
        );
        for bad in [
            "",
            "state=7",
            "state=x,exe=9",
            "state=-1,exe=9",
            "state=7,exe=9,more=1",
            "state",
            "state=7,exe=9,guard=11",
            "state=7,exe=9,guard=11,guard_pid=0",
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
            guard: None,
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
