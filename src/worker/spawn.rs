//! fork/exec of one worker with the fd layout and environment of the worker
//! contract: listeners at fds 3.., `LISTEN_FDS`, `LISTEN_PID` = the worker's
//! own pid, `SHEEPDOG_WORKER_ID`, `SHEEPDOG_GENERATION`; stdin on /dev/null;
//! no other fd; its own process group; dead with the supervisor.
//!
//! Everything that allocates happens before fork. Between fork and exec the
//! child makes only async-signal-safe calls (raw libc), and reports a failure
//! (chdir or exec) through a close-on-exec pipe, so the parent can log
//! "cannot execute" instead of a bare exit code 127.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;

use crate::config::{Settings, find_program};
use crate::core::Pid;
use crate::error::Error;
use crate::limits::FdLimit;
use serde::{Deserialize, Serialize};

use super::containment::ChildEntry;
use crate::wire::{Bytes, FdRecord};

/// Variables meant for sheepdog alone (a worker talks to sheepdog, and
/// sheepdog talks to systemd), and those it sets for each worker itself: an
/// inherited copy would come first, and getenv(3) takes the first.
fn scrubbed(name: &OsStr) -> bool {
    // How a binary taking over in place finds its state: for sheepdog alone.
    name == OsStr::new(crate::wire::STATE_ENV)
        // Node's cluster worker id: what makes a cluster master run as a worker.
        || name == OsStr::new("NODE_UNIQUE_ID")
        // JOURNAL_STREAM stays: it is sheepdog's stream, which a worker inherits
        // when it has none of its own.
        || crate::config::RESERVED_ENV
            .iter()
            .any(|reserved| *reserved != "JOURNAL_STREAM" && OsStr::new(reserved) == name)
}

const LISTEN_FDS_START: RawFd = 3;
const MAX_LISTENERS: usize = 64;

/// What every worker command of one supervisor shares, whatever the config
/// says: the listening sockets, and whether workers get journal streams.
#[derive(Debug, Clone, Default)]
pub struct CommandContext {
    /// The listeners' fds, in the order workers get them (fds 3..).
    pub listeners: Vec<RawFd>,
    /// `LISTEN_FDNAMES` to pass through, when systemd named the sockets.
    pub fdnames: Option<String>,
    /// sheepdog logs to the journal: give each worker a stream of its own.
    pub journal: bool,
    /// The fd limit sheepdog was started with, before it raised its own:
    /// what each worker gets back.
    pub fd_limit: Option<FdLimit>,
}

/// The fd number a worker's channel gets: right after the `listeners`.
pub fn channel_fd_number(listeners: usize) -> RawFd {
    LISTEN_FDS_START + listeners as RawFd
}

/// Everything needed to start a worker, prepared once.
pub struct WorkerCommand {
    argv: Vec<CString>,
    /// The environment shared by every worker (sheepdog's, scrubbed, plus `env`).
    env: Vec<CString>,
    path_var: OsString,
    working_directory: Option<PathBuf>,
    listeners: Vec<RawFd>,
    fdnames: Option<String>,
    devnull: OwnedFd,
    journal: Option<JournalStreams>,
    fd_limit: Option<FdLimit>,
    /// A Node worker with an IPC channel is made a cluster worker
    /// (`NODE_UNIQUE_ID`): a seed-style cluster master runs its worker branch.
    node_cluster: bool,
}

/// What one worker gets beyond the common command: its channel to sheepdog.
#[derive(Debug, Default)]
pub struct WorkerExtras {
    /// `KEY=VALUE` entries (NOTIFY_SOCKET, NODE_CHANNEL_FD, WATCHDOG_USEC…).
    pub env: Vec<String>,
    /// An fd placed right after the listeners (the Node IPC channel).
    pub channel_fd: Option<RawFd>,
    /// Add `WATCHDOG_PID=` the worker's own pid (heartbeats over notify).
    pub watchdog_pid: bool,
    /// Its stdout and stderr: a pipe sheepdog reads (outside journald).
    pub output: Option<RawFd>,
    /// Its own queues, one per listening address, in place of the
    /// command's (as many, in the same order).
    pub listeners: Option<Vec<RawFd>>,
    /// How it enters a container of its own (`Containment::enter`).
    pub enter: Option<ChildEntry>,
}

/// journald's stream socket, which `systemd-cat` and systemd itself connect
/// a service's stdout and stderr to.
const JOURNAL_STDOUT: &str = "/run/systemd/journal/stdout";

/// Workers' own journal streams: each worker connects (in the child, before
/// exec) a stream of its own to journald, so its lines carry its pid and the
/// identifier `NAME-worker-SLOT`, and a worker that floods its output writes
/// to journald directly, never through sheepdog.
pub struct JournalStreams {
    address: libc::sockaddr_un,
    length: libc::socklen_t,
    name: String,
}

impl JournalStreams {
    /// Journal streams for workers of `name`, if journald's socket is there.
    pub fn new(name: &str) -> Option<JournalStreams> {
        let path = JOURNAL_STDOUT.as_bytes();
        // SAFETY: sockaddr_un is plain old data, for which all-zero bytes
        // are a valid value (an empty path).
        let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        address.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (slot, byte) in address.sun_path.iter_mut().zip(path) {
            *slot = *byte as libc::c_char;
        }
        let length = (std::mem::size_of::<libc::sa_family_t>() + path.len() + 1) as libc::socklen_t;
        Path::new(JOURNAL_STDOUT).exists().then(|| JournalStreams {
            address,
            length,
            name: name.to_string(),
        })
    }

    /// The stream header, as sd_journal_stream_fd() writes it: identifier,
    /// unit (none), priority (info), level prefixes on ("<3>" marks an error
    /// line), and no forwarding to syslog, kmsg or the console.
    fn header(&self, slot: usize) -> Vec<u8> {
        format!("{}-worker-{slot}\n\n6\n1\n0\n0\n0\n", self.name).into_bytes()
    }
}

/// The longest string execve(2) takes (MAX_ARG_STRLEN), NUL included.
const MAX_ARG_STRLEN: usize = 128 * 1024;
/// What each worker's environment adds to the shared one (LISTEN_*,
/// SHEEPDOG_*, NOTIFY_SOCKET or NODE_CHANNEL_*, WATCHDOG_*, JOURNAL_STREAM),
/// counted generously.
const PER_WORKER_ENV: usize = 4096;

/// The command and its environment must fit in what execve(2) takes, or
/// every worker would fail to start with E2BIG (a crash loop where a bad
/// config should have been refused): each string under MAX_ARG_STRLEN, all
/// of them (and their pointers) under ARG_MAX, a quarter of the stack limit.
fn fits_execve(argv: &[CString], env: &[CString]) -> Result<(), Error> {
    if let Some((index, long)) = argv
        .iter()
        .enumerate()
        .find(|(_, a)| a.as_bytes_with_nul().len() > MAX_ARG_STRLEN)
    {
        return Err(Error::config(format!(
            "command: argument {index} is {} bytes long, over the {MAX_ARG_STRLEN} execve(2) takes for one",
            long.as_bytes().len()
        )));
    }
    let size = |strings: &[CString]| -> usize {
        strings
            .iter()
            .map(|s| s.as_bytes_with_nul().len() + std::mem::size_of::<usize>())
            .sum()
    };
    let total = size(argv) + size(env) + PER_WORKER_ENV;
    // SAFETY: sysconf has no preconditions.
    let limit = unsafe { libc::sysconf(libc::_SC_ARG_MAX) };
    let limit = if limit > 0 { limit as usize } else { 128 * 1024 };
    if total > limit {
        return Err(Error::config(format!(
            "command: the command ({} bytes) and the workers' environment ({} bytes) are over the {limit} bytes \
             execve(2) takes (ARG_MAX, a quarter of the stack limit)",
            size(argv),
            size(env)
        )));
    }
    Ok(())
}

/// What the parent learnt from the child before its exec.
const STAGE_CHDIR: u8 = 1;
const STAGE_EXEC: u8 = 2;
const STAGE_FDS: u8 = 3;

impl WorkerCommand {
    /// The command `settings` describe, in `context`: the one way a worker
    /// command is made from a config.
    pub fn from_settings(settings: &Settings, context: &CommandContext) -> Result<WorkerCommand, Error> {
        let mut env = settings.env.clone();
        // Without its preload (it could not be written: a full disk, a file
        // size limit) a Node worker runs as Node would, and is no cluster
        // worker (its listen({fd}) would wait for a primary's handle).
        let mut node = settings.node;
        if node {
            match crate::node::preload_path() {
                Ok(preload) => {
                    let inherited = std::env::var("NODE_OPTIONS").ok();
                    crate::node::add_preload(&mut env, inherited, &preload);
                }
                Err(why) => {
                    log::warn!("{why}: Node workers run without sheepdog's preload (listen(port) binds its own port)");
                    node = false;
                }
            }
        }
        let command = WorkerCommand::new(
            &settings.command,
            &env,
            settings.working_directory.as_deref(),
            context.listeners.clone(),
            context.fdnames.clone(),
        )?;
        let journal = context.journal.then(|| JournalStreams::new(&settings.name)).flatten();
        let mut command = command.with_journal(journal);
        command.fd_limit = context.fd_limit;
        command.node_cluster = node && settings.channel == crate::config::Channel::NodeIpc;
        Ok(command)
    }

    /// The command line, for logs and tests: `node server.js`.
    pub fn describe(&self) -> String {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn new(
        command: &[String],
        extra_env: &BTreeMap<String, String>,
        working_directory: Option<&Path>,
        listeners: Vec<RawFd>,
        fdnames: Option<String>,
    ) -> Result<WorkerCommand, Error> {
        let cstring = |bytes: Vec<u8>, what: &str| {
            CString::new(bytes).map_err(|_| Error::config(format!("{what} contains a NUL byte")))
        };
        let argv = command
            .iter()
            .map(|arg| cstring(arg.clone().into_bytes(), "the command"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut vars: BTreeMap<OsString, OsString> = std::env::vars_os().filter(|(key, _)| !scrubbed(key)).collect();
        for (key, value) in extra_env {
            vars.insert(key.into(), value.into());
        }
        let path_var = vars
            .get(OsStr::new("PATH"))
            .cloned()
            .unwrap_or_else(|| crate::config::DEFAULT_PATH.into());
        let env = vars
            .into_iter()
            .map(|(key, value)| {
                let mut entry = key.into_vec();
                entry.push(b'=');
                entry.extend(value.into_vec());
                cstring(entry, "an environment variable")
            })
            .collect::<Result<Vec<_>, _>>()?;
        fits_execve(&argv, &env)?;
        let devnull = nix::fcntl::open(
            "/dev/null",
            OFlag::O_RDWR | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| Error::from_errno("cannot open /dev/null", e))?;
        let command = WorkerCommand {
            argv,
            env,
            path_var,
            working_directory: working_directory.map(Path::to_path_buf),
            listeners,
            fdnames,
            devnull,
            journal: None,
            fd_limit: None,
            node_cluster: false,
        };
        if command.listeners.len() > MAX_LISTENERS {
            return Err(Error::config(format!(
                "{} listening sockets; at most {MAX_LISTENERS} are supported",
                command.listeners.len()
            )));
        }
        command.resolve_program()?;
        Ok(command)
    }

    /// The program to exec: `argv[0]` if it has a slash (relative to the working
    /// directory), else the first executable match in the workers' PATH.
    pub fn resolve_program(&self) -> Result<PathBuf, Error> {
        let program = OsStr::from_bytes(self.argv[0].as_bytes());
        find_program(program, &self.path_var, self.working_directory.as_deref())
            .map_err(|why| Error::config(format!("command {why}")))
    }

    /// The command as data, for the binary that takes over.
    pub fn export(&self) -> CommandState {
        CommandState {
            argv: self.argv.iter().map(|a| Bytes::new(a.as_bytes())).collect(),
            env: self.env.iter().map(|e| Bytes::new(e.as_bytes())).collect(),
            path_var: Bytes::new(self.path_var.as_bytes()),
            working_directory: self.working_directory.as_deref().map(Bytes::path),
            listeners: self.listeners.clone(),
            fdnames: self.fdnames.clone(),
            journal: self.journal.as_ref().map(|j| j.name.clone()),
            fd_limit: self.fd_limit.map(|l| (l.soft, l.hard)),
            node_cluster: self.node_cluster,
        }
    }

    /// The command `state` describes, as it was prepared (its program is
    /// looked for again at each start, as always).
    pub fn adopt(state: CommandState) -> Result<WorkerCommand, Error> {
        let cstring = |bytes: Bytes| {
            CString::new(bytes.into_vec()).map_err(|_| Error::config("a NUL byte in a handed-over command"))
        };
        let argv = state.argv.into_iter().map(cstring).collect::<Result<Vec<_>, _>>()?;
        if argv.is_empty() || state.listeners.len() > MAX_LISTENERS {
            return Err(Error::config(
                "a handed-over command with no program or too many listeners",
            ));
        }
        let devnull = nix::fcntl::open(
            "/dev/null",
            OFlag::O_RDWR | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| Error::from_errno("cannot open /dev/null", e))?;
        Ok(WorkerCommand {
            argv,
            env: state.env.into_iter().map(cstring).collect::<Result<Vec<_>, _>>()?,
            path_var: state.path_var.to_os_string(),
            working_directory: state.working_directory.map(|d| d.to_path()),
            listeners: state.listeners,
            fdnames: state.fdnames,
            devnull,
            journal: state.journal.and_then(|name| JournalStreams::new(&name)),
            fd_limit: state.fd_limit.map(|(soft, hard)| FdLimit { soft, hard }),
            node_cluster: state.node_cluster,
        })
    }

    /// Gives each worker its own journal stream (see [`JournalStreams`]).
    pub fn with_journal(mut self, journal: Option<JournalStreams>) -> WorkerCommand {
        if journal.is_some() {
            // Each worker gets the JOURNAL_STREAM of its own stream instead.
            self.env.retain(|e| !e.as_bytes().starts_with(b"JOURNAL_STREAM="));
        }
        self.journal = journal;
        self
    }

    /// Forks and execs the worker for `slot`. Returns once the child has
    /// exec'd (or failed to, which is reported and then reaped as exit 127).
    pub fn spawn(&self, slot: usize, generation: u32, extras: &WorkerExtras) -> Result<(Pid, ExecReport), Error> {
        let program = CString::new(self.resolve_program()?.into_os_string().into_vec())
            .map_err(|_| Error::config("the program path contains a NUL byte"))?;
        let directory = match &self.working_directory {
            Some(dir) => Some(
                CString::new(dir.as_os_str().as_bytes())
                    .map_err(|_| Error::config("working_directory contains a NUL byte"))?,
            ),
            None => None,
        };
        let mut env = self.env.clone();
        env.push(CString::new(format!("SHEEPDOG_WORKER_ID={slot}")).expect("no NUL"));
        // pm2's name for the slot: apps that run a cron only where it is "0".
        env.push(CString::new(format!("NODE_APP_INSTANCE={slot}")).expect("no NUL"));
        env.push(CString::new(format!("SHEEPDOG_GENERATION={generation}")).expect("no NUL"));
        env.push(CString::new(format!("LISTEN_FDS={}", self.listeners.len())).expect("no NUL"));
        if let Some(names) = &self.fdnames {
            env.push(
                CString::new(format!("LISTEN_FDNAMES={names}"))
                    .map_err(|_| Error::config("LISTEN_FDNAMES contains a NUL byte"))?,
            );
        }
        if self.node_cluster && extras.env.iter().any(|e| e.starts_with("NODE_CHANNEL_FD=")) {
            // Cluster worker ids start at 1.
            env.push(CString::new(format!("NODE_UNIQUE_ID={}", slot + 1)).expect("no NUL"));
        }
        for entry in &extras.env {
            env.push(
                CString::new(entry.as_str()).map_err(|_| Error::config(format!("{entry:?} contains a NUL byte")))?,
            );
        }
        // LISTEN_PID (and WATCHDOG_PID) must be the worker's own pid, known only
        // after fork: the child writes its digits into these fixed-width buffers.
        let mut listen_pid = *b"LISTEN_PID=\0\0\0\0\0\0\0\0\0\0\0\0";
        let mut watchdog_pid = *b"WATCHDOG_PID=\0\0\0\0\0\0\0\0\0\0\0\0";
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        envp.push(listen_pid.as_ptr().cast());
        if extras.watchdog_pid {
            envp.push(watchdog_pid.as_ptr().cast());
        }
        envp.push(std::ptr::null());
        // JOURNAL_STREAM names the worker's own stream once the child has
        // connected it (dev:ino), else still sheepdog's, which it then inherits.
        let mut journal_stream = [0u8; 64];
        let journal_header = self.journal.as_ref().map(|j| j.header(slot));
        if self.journal.is_some() {
            let fallback = format!("JOURNAL_STREAM={}", std::env::var("JOURNAL_STREAM").unwrap_or_default());
            let kept = fallback.len().min(journal_stream.len() - 1);
            journal_stream[..kept].copy_from_slice(&fallback.as_bytes()[..kept]);
            envp.insert(envp.len() - 1, journal_stream.as_ptr().cast());
        }
        let listeners = extras
            .listeners
            .as_ref()
            .filter(|own| own.len() == self.listeners.len())
            .unwrap_or(&self.listeners);
        let mut inherited = listeners.clone();
        inherited.extend(extras.channel_fd);
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());

        let (report_read, report_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(|e| Error::from_errno("cannot create a pipe", e))?;
        let child = ChildPlan {
            program: program.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            directory: directory.as_ref().map_or(std::ptr::null(), |d| d.as_ptr()),
            inherited: &inherited,
            devnull: self.devnull.as_raw_fd(),
            report: report_write.as_raw_fd(),
            parent: nix::unistd::getpid().as_raw(),
            listen_pid: listen_pid.as_mut_ptr(),
            journal: self
                .journal
                .as_ref()
                .zip(journal_header.as_ref())
                .map(|(j, h)| (&j.address, j.length, h.as_slice())),
            journal_stream: journal_stream.as_mut_ptr(),
            output: extras.output.unwrap_or(-1),
            watchdog_pid: if extras.watchdog_pid {
                watchdog_pid.as_mut_ptr()
            } else {
                std::ptr::null_mut()
            },
            max_signal: libc::SIGRTMAX(),
            fd_limit: self.fd_limit.map(|limit| libc::rlimit {
                rlim_cur: limit.soft,
                rlim_max: limit.hard,
            }),
            enter: extras.enter,
        };

        // Signals stay blocked across fork, so that no handler of sheepdog's
        // runs in the child before it has reset them.
        let all = nix::sys::signal::SigSet::all();
        let mut previous = nix::sys::signal::SigSet::empty();
        nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&all),
            Some(&mut previous),
        )
        .map_err(|e| Error::from_errno("cannot block signals", e))?;
        // SAFETY: sheepdog is single-threaded, so the child's copy of the
        // process is consistent; and the child runs only `child.exec()`,
        // which makes async-signal-safe calls only and never returns.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: we are the forked child, `child` and every buffer it
            // points into are our copies, alive until execve or _exit.
            unsafe { child.exec() }
        }
        let fork_error = Errno::last();
        let _ = nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&previous), None);
        if pid < 0 {
            return Err(Error::from_errno("fork failed", fork_error));
        }
        drop(report_write);
        let report = ExecReport {
            pipe: report_read,
            slot,
            program: program.to_string_lossy().into_owned(),
            working_directory: self.working_directory.clone(),
        };
        Ok((pid, report))
    }
}

/// The child's word on its exec, read when the pipe becomes readable: EOF
/// means the exec succeeded (the pipe was close-on-exec); five bytes mean it
/// failed, at which stage and with which errno. Read asynchronously, so that
/// spawning never waits for a child to be scheduled.
pub struct ExecReport {
    pipe: OwnedFd,
    pub slot: usize,
    program: String,
    working_directory: Option<PathBuf>,
}

impl ExecReport {
    /// The report as data, for the binary that takes over.
    pub fn export(&self, pid: Pid) -> ExecReportState {
        ExecReportState {
            pid,
            pipe: FdRecord::of(self.pipe.as_fd()),
            slot: self.slot,
            program: self.program.clone(),
            working_directory: self.working_directory.as_deref().map(Bytes::path),
        }
    }

    /// The report `state` describes, on its pipe, which was checked
    /// (by the reader of the hand-over) and is taken here.
    pub fn adopt(state: ExecReportState) -> ExecReport {
        ExecReport {
            // SAFETY: handed over for this, checked to be open and the same
            // inode, and owned by this report alone.
            pipe: unsafe { OwnedFd::from_raw_fd(state.pipe.fd) },
            slot: state.slot,
            program: state.program,
            working_directory: state.working_directory.map(|d| d.to_path()),
        }
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.pipe.as_fd()
    }

    /// Once readable: Ok if the worker exec'd, else what went wrong.
    pub fn read(&self) -> Result<(), String> {
        let mut report = [0u8; 5];
        let mut got = 0;
        while got < report.len() {
            match nix::unistd::read(&self.pipe, &mut report[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) if got == 0 => return Ok(()),
                Err(e) => return Err(format!("cannot read its exec report: {}", e.desc())),
            }
        }
        if got < report.len() {
            return Ok(());
        }
        let errno = Errno::from_raw(i32::from_ne_bytes([report[1], report[2], report[3], report[4]]));
        let what = match report[0] {
            STAGE_CHDIR => format!(
                "cannot change to working_directory {}",
                self.working_directory.as_deref().unwrap_or(Path::new("?")).display()
            ),
            STAGE_EXEC => format!("cannot execute {}", self.program),
            _ => "cannot set up its file descriptors".to_string(),
        };
        Err(format!("{what}: {}", errno.desc()))
    }
}

/// Raw pointers prepared by the parent for the child, which must not allocate.
struct ChildPlan<'a> {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    directory: *const libc::c_char,
    /// Listeners, then the channel: placed at fds 3, 4, …
    inherited: &'a [RawFd],
    devnull: RawFd,
    report: RawFd,
    parent: libc::pid_t,
    listen_pid: *mut u8,
    watchdog_pid: *mut u8,
    /// journald's socket address and this worker's stream header.
    journal: Option<(&'a libc::sockaddr_un, libc::socklen_t, &'a [u8])>,
    /// `JOURNAL_STREAM=` to fill in with the stream's dev:ino.
    journal_stream: *mut u8,
    /// The pipe to sheepdog that becomes stdout and stderr, or -1.
    output: RawFd,
    max_signal: libc::c_int,
    /// The fd limit the worker gets (sheepdog's own, before it raised it).
    fd_limit: Option<libc::rlimit>,
    enter: Option<ChildEntry>,
}

impl ChildPlan<'_> {
    /// Runs in the forked child: sets up the worker's process and execs it,
    /// or reports the stage that failed and exits 127. Never returns.
    ///
    /// # Safety
    ///
    /// Call only in a child just forked from a single-threaded parent. Every
    /// pointer of the plan must point into the child's copy of buffers the
    /// parent prepared (NUL-terminated strings and arrays, LISTEN_PID= and
    /// WATCHDOG_PID= with room for a pid's digits and a NUL,
    /// JOURNAL_STREAM= with room for two u64s, a colon and a NUL).
    unsafe fn exec(mut self) -> ! {
        // SAFETY: as the function's contract says; what follows makes only
        // async-signal-safe libc calls on those buffers and on fds the child
        // owns, and ends in execve or _exit.
        unsafe {
            // A clean slate: default dispositions (Rust ignores SIGPIPE, and
            // exec keeps ignored signals ignored), then an empty mask.
            for signal in 1..=self.max_signal {
                if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                    libc::signal(signal, libc::SIG_DFL);
                }
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

            // A container of its own (a process group today): what it
            // starts is signalled, measured and killed with it.
            if let Some(enter) = self.enter {
                enter();
            }
            // Dies with sheepdog, even by SIGKILL. Re-check the parent to close
            // the race where sheepdog died before the prctl.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
            if libc::getppid() != self.parent {
                libc::_exit(1);
            }
            // The report pipe and /dev/null may have numbers inside the
            // 3..3+n range the listeners are about to take: move them above
            // it first, so that no dup2 below overwrites them.
            let count = self.inherited.len() as RawFd;
            let above = LISTEN_FDS_START + count;
            let report = libc::fcntl(self.report, libc::F_DUPFD_CLOEXEC, above);
            if report < 0 {
                libc::_exit(127);
            }
            self.report = report;
            self.devnull = libc::fcntl(self.devnull, libc::F_DUPFD_CLOEXEC, above);
            if self.devnull < 0 {
                self.fail(STAGE_FDS);
            }
            if self.output >= 0 {
                self.output = libc::fcntl(self.output, libc::F_DUPFD_CLOEXEC, above);
                if self.output < 0 {
                    self.fail(STAGE_FDS);
                }
            }

            let own_pid = libc::getpid() as u64;
            write_decimal(self.listen_pid.add(b"LISTEN_PID=".len()), own_pid);
            if !self.watchdog_pid.is_null() {
                write_decimal(self.watchdog_pid.add(b"WATCHDOG_PID=".len()), own_pid);
            }

            if libc::dup2(self.devnull, 0) < 0 {
                self.fail(STAGE_FDS);
            }
            // Listeners (and channel) to 3..3+n. First move them above that range (close-on-
            // exec copies), so that no source is overwritten before it is copied.
            let mut high = [0 as RawFd; MAX_LISTENERS + 1];
            for (i, &fd) in self.inherited.iter().enumerate().take(high.len()) {
                high[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above);
                if high[i] < 0 {
                    self.fail(STAGE_FDS);
                }
            }
            for (i, &copy) in high.iter().enumerate().take(self.inherited.len()) {
                // dup2 clears close-on-exec on the target: these survive exec.
                if libc::dup2(copy, LISTEN_FDS_START + i as RawFd) < 0 {
                    self.fail(STAGE_FDS);
                }
            }
            if let Some((address, length, header)) = self.journal {
                self.connect_journal(address, length, header);
            } else if self.output >= 0 && (libc::dup2(self.output, 1) < 0 || libc::dup2(self.output, 2) < 0) {
                self.fail(STAGE_FDS);
            }
            // Whatever else sheepdog itself inherited or opened: close on exec.
            let first_other = (LISTEN_FDS_START + count) as libc::c_uint;
            if libc::syscall(
                libc::SYS_close_range,
                first_other,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                for fd in first_other as RawFd..4096 {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            if !self.directory.is_null() && libc::chdir(self.directory) != 0 {
                self.fail(STAGE_CHDIR);
            }
            // The soft fd limit sheepdog was given, not the one it raised
            // for itself (a program using select() breaks past 1024). Last:
            // the fds above it are close-on-exec by now, and gone at exec.
            if let Some(limit) = &self.fd_limit {
                libc::setrlimit(libc::RLIMIT_NOFILE, limit);
            }
            libc::execve(self.program, self.argv, self.envp);
            self.fail(STAGE_EXEC)
        }
    }

    /// Connects stdout and stderr to a journal stream of the worker's own;
    /// on any failure they stay the inherited ones.
    ///
    /// # Safety
    ///
    /// As [`ChildPlan::exec`]: in the child, with the plan's buffers.
    unsafe fn connect_journal(&self, address: &libc::sockaddr_un, length: libc::socklen_t, header: &[u8]) {
        // SAFETY: async-signal-safe calls on an fd of our own; `stat` is
        // plain data (zeroed is valid); JOURNAL_STREAM= has room for two
        // u64s in decimal, a colon and a NUL (64 bytes in all).
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return;
            }
            let mut ok = libc::connect(fd, (address as *const libc::sockaddr_un).cast(), length) == 0;
            let mut written = 0;
            while ok && written < header.len() {
                let n = libc::write(fd, header[written..].as_ptr().cast(), header.len() - written);
                ok = n > 0;
                written += n.max(0) as usize;
            }
            ok = ok && libc::shutdown(fd, libc::SHUT_RD) == 0;
            let mut stat: libc::stat = std::mem::zeroed();
            if ok && libc::fstat(fd, &mut stat) == 0 && libc::dup2(fd, 1) == 1 && libc::dup2(fd, 2) == 2 {
                let prefix = b"JOURNAL_STREAM=".len();
                let length = write_decimal(self.journal_stream.add(prefix), stat.st_dev);
                *self.journal_stream.add(prefix + length) = b':';
                write_decimal(self.journal_stream.add(prefix + length + 1), stat.st_ino);
            }
            libc::close(fd);
        }
    }

    /// Tells the parent which stage failed, with errno, and exits 127.
    ///
    /// # Safety
    ///
    /// As [`ChildPlan::exec`]: in the child.
    unsafe fn fail(&self, stage: u8) -> ! {
        // SAFETY: errno is thread-local and ours; write and _exit are
        // async-signal-safe; the report pipe is the child's own fd.
        unsafe {
            let errno = *libc::__errno_location();
            let mut report = [stage, 0, 0, 0, 0];
            report[1..].copy_from_slice(&errno.to_ne_bytes());
            libc::write(self.report, report.as_ptr().cast(), report.len());
            libc::_exit(127)
        }
    }
}

/// Writes `value` in decimal followed by a NUL, without allocating (it runs
/// between fork and exec); returns the number of digits.
///
/// # Safety
///
/// `out` must be valid for writes of the digits and the NUL: at most 21
/// bytes (u64::MAX has 20 digits). A pid has at most 7 (pid_max ≤ 2^22),
/// which is what the LISTEN_PID= and WATCHDOG_PID= buffers leave room for.
unsafe fn write_decimal(out: *mut u8, mut value: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (value % 10) as u8;
        value /= 10;
        len += 1;
        if value == 0 {
            break;
        }
    }
    for i in 0..len {
        // SAFETY: i < len ≤ 20, within what the caller promised.
        unsafe { *out.add(i) = digits[len - 1 - i] };
    }
    // SAFETY: len ≤ 20, the NUL's place within the caller's promise.
    unsafe { *out.add(len) = 0 };
    len
}

/// A worker command (`worker::spawn::WorkerCommand`), prepared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandState {
    pub argv: Vec<Bytes>,
    pub env: Vec<Bytes>,
    pub path_var: Bytes,
    pub working_directory: Option<Bytes>,
    pub listeners: Vec<RawFd>,
    pub fdnames: Option<String>,
    /// The app's name, when workers get journal streams of their own.
    pub journal: Option<String>,
    pub fd_limit: Option<(u64, u64)>,
    /// Node workers are cluster workers (absent from a build before it).
    #[serde(default)]
    pub node_cluster: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecReportState {
    pub pid: Pid,
    pub pipe: FdRecord,
    pub slot: usize,
    pub program: String,
    pub working_directory: Option<Bytes>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_digits_fit_the_buffer() {
        let mut buffer = [0xffu8; 21];
        // SAFETY: 21 bytes, as write_decimal asks for the largest value.
        assert_eq!(unsafe { write_decimal(buffer.as_mut_ptr(), 4_194_304) }, 7);
        assert_eq!(&buffer[..8], b"4194304\0");
        // SAFETY: as above.
        assert_eq!(unsafe { write_decimal(buffer.as_mut_ptr(), 0) }, 1);
        assert_eq!(&buffer[..2], b"0\0");
        // SAFETY: as above.
        assert_eq!(unsafe { write_decimal(buffer.as_mut_ptr(), u64::MAX) }, 20);
        assert_eq!(&buffer[..21], b"18446744073709551615\0");
    }

    #[test]
    fn a_missing_program_is_reported_before_any_fork() {
        let err = WorkerCommand::new(
            &["no-such-program-sheepdog".into()],
            &BTreeMap::new(),
            None,
            vec![],
            None,
        )
        .err()
        .unwrap();
        assert_eq!(err.to_string(), "command `no-such-program-sheepdog` not found in PATH");
        let err = WorkerCommand::new(
            &["./nope.sh".into()],
            &BTreeMap::new(),
            Some(Path::new("/tmp")),
            vec![],
            None,
        )
        .err()
        .unwrap();
        assert_eq!(err.to_string(), "command /tmp/./nope.sh is not an executable file");
    }
}
