//! The imperative shell: one `poll(2)` loop that turns signals and child exits
//! into events for the [`Flock`], and performs the actions it returns.
//!
//! Each pass: read the clock once, drain the signal pipe, reap every exited
//! child, feed the events, perform the actions, then sleep in `poll` until the
//! nearest deadline the core asked for. Signal handlers only queue and wake
//! (signal-hook's self-pipe); nothing is done inside them.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use log::{debug, error, info, warn};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid as NixPid;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGTTIN, SIGTTOU};
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;

use crate::config::MemoryMeasure;
use crate::flock::{Action, Event, ExitStatus, Flock, Policy, Request};
use crate::links::Links;
use crate::proc_stats;
use crate::sockets::Listeners;
use crate::spawn::WorkerCommand;
use crate::systemd;

/// Exit code when setting up the loop itself fails (EX_OSERR).
pub const EXIT_OS_ERROR: i32 = 71;

const HANDLED_SIGNALS: [i32; 6] = [SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGTTIN, SIGTTOU];

pub struct Supervisor {
    flock: Flock,
    command: WorkerCommand,
    listeners: Listeners,
    links: Links,
    memory_measure: MemoryMeasure,
    signals: SignalDelivery<UnixStream, SignalOnly>,
}

impl Supervisor {
    /// Installs the signal handlers (before any fork, so no exit is missed)
    /// and makes sheepdog the reaper of its workers' orphans.
    pub fn new(
        policy: Policy,
        memory_measure: MemoryMeasure,
        command: WorkerCommand,
        listeners: Listeners,
    ) -> Result<Supervisor, String> {
        let links = Links::new(policy.readiness, policy.heartbeat, command.channel_fd_number())?;
        let (read, write) = UnixStream::pair().map_err(|e| format!("cannot create the signal pipe: {e}"))?;
        read.set_nonblocking(true)
            .map_err(|e| format!("cannot set up the signal pipe: {e}"))?;
        write
            .set_nonblocking(true)
            .map_err(|e| format!("cannot set up the signal pipe: {e}"))?;
        let signals = SignalDelivery::with_pipe(read, write, SignalOnly, HANDLED_SIGNALS)
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        // Orphans of a worker (e.g. the server a wrapper script started) are
        // re-parented to us rather than to init, so we reap them.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            warn!("cannot become a child subreaper: {}", e.desc());
        }
        Ok(Supervisor {
            flock: Flock::new(policy, Instant::now()),
            command,
            listeners,
            links,
            memory_measure,
            signals,
        })
    }

    /// Runs until the flock is stopped; returns the process exit code.
    pub fn run(mut self) -> i32 {
        let mut events = vec![Event::Tick];
        loop {
            let now = Instant::now();
            let mut actions: VecDeque<Action> = VecDeque::new();
            for event in events.drain(..) {
                actions.extend(self.flock.handle(now, event));
            }
            while let Some(action) = actions.pop_front() {
                if let Some(code) = self.perform(now, action, &mut actions) {
                    for listener in &self.listeners.sockets {
                        listener.remove_socket_file();
                    }
                    self.links.cleanup();
                    return code;
                }
            }
            let readable = match self.wait(now) {
                Ok(readable) => readable,
                Err(e) => {
                    error!("poll failed: {e}");
                    return EXIT_OS_ERROR;
                }
            };
            events.extend(self.pending_signals());
            events.extend(self.reap());
            let now = Instant::now();
            for pid in readable {
                events.extend(self.links.read(pid, now));
            }
            events.push(Event::Tick);
        }
    }

    fn perform(&mut self, now: Instant, action: Action, follow_ups: &mut VecDeque<Action>) -> Option<i32> {
        match action {
            Action::Spawn { slot, generation } => {
                let event = match self.links.prepare(slot) {
                    Err(reason) => Event::SpawnFailed { slot, reason },
                    Ok(prepared) => match self.command.spawn(slot, generation, &prepared.extras) {
                        Ok(pid) => {
                            self.links.attach(pid, slot, prepared.link);
                            Event::Spawned { slot, pid }
                        }
                        Err(e) => Event::SpawnFailed {
                            slot,
                            reason: e.to_string(),
                        },
                    },
                };
                follow_ups.extend(self.flock.handle(now, event));
            }
            Action::Signal { pid, signal } => signal_worker(pid, signal),
            Action::Ping { pid } => self.links.ping(pid),
            Action::Measure { pids } => {
                for pid in pids {
                    if let Some(bytes) = proc_stats::tree_memory(pid, self.memory_measure) {
                        follow_ups.extend(self.flock.handle(now, Event::Measured { pid, bytes }));
                    }
                }
            }
            Action::Notify(message) => systemd::notify(&message),
            Action::Exit { code, reason } => {
                if code == 0 {
                    info!("{reason}; exiting");
                } else {
                    error!("{reason}");
                }
                return Some(code);
            }
        }
        None
    }

    /// Sleeps until a signal or a worker's message arrives, or the core's next
    /// deadline; returns the workers whose channels are readable.
    fn wait(&self, now: Instant) -> Result<Vec<i32>, Errno> {
        let timeout = match self.flock.next_deadline() {
            None => PollTimeout::NONE,
            Some(deadline) => {
                // Round up: waking a millisecond early would only spin.
                let ms = deadline.saturating_duration_since(now).as_micros().div_ceil(1000);
                PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let links = self.links.pollable();
        let mut fds = vec![PollFd::new(self.signals.get_read().as_fd(), PollFlags::POLLIN)];
        fds.extend(links.iter().map(|(_, fd)| PollFd::new(*fd, PollFlags::POLLIN)));
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) => Ok(fds[1..]
                .iter()
                .zip(&links)
                .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, (pid, _))| *pid)
                .collect()),
            Err(Errno::EINTR) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn pending_signals(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        for signal in self.signals.pending() {
            match signal {
                SIGCHLD => {} // reaped below, every pass
                SIGTERM | SIGINT => {
                    info!("received {}", signal_name(signal));
                    events.push(Event::Request(Request::Stop));
                }
                SIGTTIN => events.push(Event::Request(Request::ScaleUp)),
                SIGTTOU => events.push(Event::Request(Request::ScaleDown)),
                SIGHUP => warn!("received SIGHUP: reloading is not implemented yet; ignored"),
                other => debug!("ignoring signal {other}"),
            }
        }
        events
    }

    /// Reaps every exited child. A worker's process group is swept with
    /// SIGKILL while its leader is still a zombie (so the group id cannot have
    /// been reused): nothing a worker started outlives it.
    fn reap(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let peek = waitid(
                Id::All,
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
            );
            let pid = match peek {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(status) => match status.pid() {
                    Some(pid) => pid,
                    None => break,
                },
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    error!("waitid failed: {}", e.desc());
                    break;
                }
            };
            let is_worker = self.flock.workers().iter().any(|w| w.pid == pid.as_raw());
            if is_worker {
                match kill(NixPid::from_raw(-pid.as_raw()), Signal::SIGKILL) {
                    Ok(()) => debug!("killed what was left in the process group of pid {pid}"),
                    Err(Errno::ESRCH) | Err(Errno::EPERM) => {}
                    Err(e) => warn!("cannot sweep the process group of pid {pid}: {}", e.desc()),
                }
            }
            let status = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => ExitStatus::Code(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => ExitStatus::Signaled(signal),
                Ok(other) => {
                    debug!("unexpected wait status {other:?}");
                    continue;
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    error!("waitpid({pid}) failed: {}", e.desc());
                    break;
                }
            };
            self.links.detach(pid.as_raw());
            events.push(Event::Exited {
                pid: pid.as_raw(),
                status,
            });
        }
        events
    }
}

/// Signals a worker's process group (so a wrapper such as `sh -c` or `npm
/// start` does not swallow the signal), or the worker alone if it left its group.
fn signal_worker(pid: i32, signal: Signal) {
    let result = match kill(NixPid::from_raw(-pid), signal) {
        Err(Errno::ESRCH) => kill(NixPid::from_raw(pid), signal),
        other => other,
    };
    match result {
        Ok(()) => debug!("sent {} to worker pid {pid}", signal.as_str()),
        Err(Errno::ESRCH) => debug!("worker pid {pid} already gone; {} not sent", signal.as_str()),
        Err(e) => warn!("cannot send {} to worker pid {pid}: {}", signal.as_str(), e.desc()),
    }
}

fn signal_name(signal: i32) -> &'static str {
    Signal::try_from(signal).map(Signal::as_str).unwrap_or("signal")
}
