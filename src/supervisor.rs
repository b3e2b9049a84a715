//! The imperative shell: one event loop that turns signals, child exits and
//! worker messages into events for the [`Flock`], and performs the actions it
//! returns.
//!
//! Each pass: read the clock, drain the signal pipe, reap the exited children
//! (when SIGCHLD said there are some), read the workers' channels, feed the
//! events, perform the actions, then sleep in `epoll_wait` until something is
//! readable or the nearest deadline the core asked for. Signal handlers only
//! queue and wake (signal-hook's self-pipe); nothing is done inside them.
//!
//! epoll rather than poll: every fd (one per worker) is registered once, so a
//! pass costs the kernel the ready fds only, not all of them.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use nix::errno::Errno;
use nix::poll::PollTimeout;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid as NixPid;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGTTIN, SIGTTOU};
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;

use serde_json::{Value, json};

use crate::config::{ListenAddr, Overrides, Settings};
use crate::control::{ClientInput, Command, ControlServer, PROTOCOL_VERSION, error_reply};
use crate::flock::{Action, Event, ExitStatus, Flock, Pid, Policy, Request, WorkerState};
use crate::links::Links;
use crate::proc_stats::{self, MemoryMeter};
use crate::sockets::Listeners;
use crate::spawn::{ExecReport, JournalStreams, WorkerCommand};
use crate::systemd::Notifier;

/// Exit code when setting up the loop itself fails (EX_OSERR).
pub const EXIT_OS_ERROR: i32 = 71;

/// How long an exiting sheepdog waits for systemd to read its last messages.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

const HANDLED_SIGNALS: [i32; 6] = [SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGTTIN, SIGTTOU];

/// What an epoll registration stands for, in its 64-bit tag.
const TAG_SIGNALS: u64 = 0;
const TAG_LINK: u64 = 1 << 32;
const TAG_EXEC_REPORT: u64 = 2 << 32;
const TAG_CONTROL: u64 = 3 << 32;
const TAG_CLIENT: u64 = 4 << 32;
const TAG_KIND: u64 = 0xffff_ffff << 32;

pub struct Supervisor {
    flock: Flock,
    /// The worker command of each generation that may still be spawned.
    commands: HashMap<u32, WorkerCommand>,
    listeners: Listeners,
    control: ControlServer,
    /// To re-read the config on reload, as it was read at start.
    config_file: Option<std::path::PathBuf>,
    /// The app's name (for `sheepdog status` listing every sheepdog).
    name: String,
    overrides: Overrides,
    listen_at_start: Vec<ListenAddr>,
    watchdog: Option<Duration>,
    /// sheepdog logs to the journal: give each worker a journal stream too.
    journal: bool,
    started: Instant,
    next_ticket: u64,
    /// Control clients waiting for the outcome of the reload with this ticket.
    reload_waiters: HashMap<u64, u64>,
    links: Links,
    memory: MemoryMeter,
    notifier: Notifier,
    /// Exec reports of workers just forked, read once their pipe is readable.
    exec_reports: HashMap<Pid, ExecReport>,
    signals: SignalDelivery<UnixStream, SignalOnly>,
    epoll: Epoll,
}

/// What one wait found ready.
#[derive(Default)]
struct Ready {
    signals: bool,
    links: Vec<Pid>,
    exec_reports: Vec<Pid>,
    control: bool,
    clients: Vec<(u64, bool)>,
}

impl Supervisor {
    /// Installs the signal handlers (before any fork, so no exit is missed)
    /// and makes sheepdog the reaper of its workers' orphans.
    pub fn new(
        settings: &Settings,
        overrides: Overrides,
        watchdog: Option<Duration>,
        journal: bool,
        command: WorkerCommand,
        listeners: Listeners,
        control: ControlServer,
    ) -> Result<Supervisor, String> {
        let policy = Policy::from_settings(settings, watchdog);
        let links = Links::new(policy.readiness, command.channel_fd_number())?;
        let memory = MemoryMeter::new();
        let (read, write) = UnixStream::pair().map_err(|e| format!("cannot create the signal pipe: {e}"))?;
        for end in [&read, &write] {
            end.set_nonblocking(true)
                .map_err(|e| format!("cannot set up the signal pipe: {e}"))?;
        }
        let signals = SignalDelivery::with_pipe(read, write, SignalOnly, HANDLED_SIGNALS)
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        let epoll =
            Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| format!("cannot create an epoll: {}", e.desc()))?;
        epoll
            .add(
                signals.get_read().as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, TAG_SIGNALS),
            )
            .map_err(|e| format!("cannot watch the signal pipe: {}", e.desc()))?;
        epoll
            .add(control.listener_fd(), EpollEvent::new(EpollFlags::EPOLLIN, TAG_CONTROL))
            .map_err(|e| format!("cannot watch the control socket: {}", e.desc()))?;
        // Orphans of a worker (e.g. the server a wrapper script started) are
        // re-parented to us rather than to init, so we reap them.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            warn!("cannot become a child subreaper: {}", e.desc());
        }
        let now = Instant::now();
        Ok(Supervisor {
            flock: Flock::new(policy, now),
            commands: HashMap::from([(1, command)]),
            listeners,
            control,
            config_file: settings.config_file.clone(),
            name: settings.name.clone(),
            overrides,
            listen_at_start: settings.listen.clone(),
            watchdog,
            journal,
            started: now,
            next_ticket: 1,
            reload_waiters: HashMap::new(),
            links,
            memory,
            notifier: Notifier::from_env(),
            exec_reports: HashMap::new(),
            signals,
            epoll,
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
            // Every action of the pass is performed, even after Exit: the
            // final STATUS= comes after it.
            let mut exit = None;
            while let Some(action) = actions.pop_front() {
                exit = exit.or(self.perform(now, action, &mut actions));
            }
            if let Some(code) = exit {
                self.finish();
                return code;
            }
            self.notifier.flush();
            let ready = match self.wait(now) {
                Ok(ready) => ready,
                Err(e) => {
                    error!("epoll_wait failed: {}", e.desc());
                    return EXIT_OS_ERROR;
                }
            };
            if ready.signals {
                events.extend(self.pending_signals());
            }
            let now = Instant::now();
            if ready.control {
                self.accept_clients(now);
            }
            for (client, writable) in ready.clients {
                events.extend(self.serve_client(client, writable));
            }
            self.control.expire(now);
            for pid in ready.exec_reports {
                self.read_exec_report(pid);
            }
            for pid in ready.links {
                events.extend(self.links.read(pid, now));
                if !self.links.is_open(pid) {
                    self.unwatch_link(pid);
                }
            }
            events.push(Event::Tick);
        }
    }

    /// Last words: gives systemd a moment to read what waits in the outbox
    /// (STOPPING=1, the final STATUS=), then removes sheepdog's files.
    fn finish(&mut self) {
        let deadline = Instant::now() + FINAL_FLUSH;
        self.notifier.flush();
        while self.notifier.has_pending() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            self.notifier.flush();
        }
        if self.notifier.has_pending() {
            warn!("systemd did not read its notify socket; exiting with messages unsent");
        }
        for listener in &self.listeners.sockets {
            listener.remove_socket_file();
        }
        self.links.cleanup();
        self.control.cleanup();
    }

    fn perform(&mut self, now: Instant, action: Action, follow_ups: &mut VecDeque<Action>) -> Option<i32> {
        match action {
            Action::Spawn { slot, generation } => {
                let event = self.spawn(slot, generation);
                follow_ups.extend(self.flock.handle(now, event));
            }
            Action::Signal { pid, signal } => signal_worker(pid, signal),
            Action::Ping { pid } => self.links.ping(pid),
            Action::Measure { pids } => {
                self.memory.next_round();
                let (measure, limit) = (self.flock.policy().memory_measure, self.flock.policy().memory_limit);
                for pid in pids {
                    if let Some(bytes) = self.memory.measure(pid, measure, limit) {
                        follow_ups.extend(self.flock.handle(now, Event::Measured { pid, bytes }));
                    }
                }
            }
            Action::Notify(message) => self.notifier.send(&message),
            Action::ReloadFinished { ticket, ok, message } => {
                if let Some(client) = self.reload_waiters.remove(&ticket) {
                    let reply = if ok {
                        json!({"v": PROTOCOL_VERSION, "ok": true, "message": message})
                    } else {
                        error_reply(&message)
                    };
                    self.reply(client, &reply);
                }
                // Only the current generation can be spawned from now on,
                // plus any generation that still has workers (after an abort).
                let flock = &self.flock;
                self.commands.retain(|generation, _| {
                    *generation == flock.generation() || flock.workers().iter().any(|w| w.generation == *generation)
                });
            }
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

    fn spawn(&mut self, slot: usize, generation: u32) -> Event {
        let Some(command) = self.commands.get(&generation) else {
            return Event::SpawnFailed {
                slot,
                reason: format!("no command for generation {generation}"),
            };
        };
        let prepared = match self.links.prepare(slot, self.flock.policy().heartbeat) {
            Ok(prepared) => prepared,
            Err(reason) => return Event::SpawnFailed { slot, reason },
        };
        let (pid, report) = match command.spawn(slot, generation, &prepared.extras) {
            Ok(spawned) => spawned,
            Err(e) => {
                return Event::SpawnFailed {
                    slot,
                    reason: e.to_string(),
                };
            }
        };
        let watched = self.epoll.add(
            report.fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, TAG_EXEC_REPORT | pid as u64),
        );
        if let Err(e) = watched {
            warn!("worker {slot} (pid {pid}): cannot watch its exec report: {}", e.desc());
        } else {
            self.exec_reports.insert(pid, report);
        }
        self.links.attach(pid, slot, prepared.link);
        if let Some(fd) = self.links.fd(pid)
            && let Err(e) = self
                .epoll
                .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, TAG_LINK | pid as u64))
        {
            warn!("worker {slot} (pid {pid}): cannot watch its channel: {}", e.desc());
        }
        Event::Spawned { slot, pid }
    }

    /// Sleeps until something is readable or the core's next deadline.
    fn wait(&self, now: Instant) -> Result<Ready, Errno> {
        // Messages waiting for systemd to read its socket are retried soon.
        let retry = self.notifier.has_pending().then(|| now + Duration::from_millis(20));
        let deadlines = [self.flock.next_deadline(), retry, self.control.next_deadline()];
        let timeout = match deadlines.into_iter().flatten().min() {
            None => PollTimeout::NONE,
            Some(deadline) => {
                // Round up: waking a millisecond early would only spin.
                let ms = deadline.saturating_duration_since(now).as_micros().div_ceil(1000);
                PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut buffer = [EpollEvent::empty(); 64];
        let count = match self.epoll.wait(&mut buffer, timeout) {
            Ok(count) => count,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(e),
        };
        let mut ready = Ready::default();
        for event in &buffer[..count] {
            let (kind, pid) = (event.data() & TAG_KIND, (event.data() & 0xffff_ffff) as Pid);
            match kind {
                TAG_LINK => ready.links.push(pid),
                TAG_EXEC_REPORT => ready.exec_reports.push(pid),
                TAG_CONTROL => ready.control = true,
                TAG_CLIENT => {
                    let writable = event.events().contains(EpollFlags::EPOLLOUT);
                    ready.clients.push((event.data() & 0xffff_ffff, writable));
                }
                _ => ready.signals = true,
            }
        }
        Ok(ready)
    }

    /// Turns the signals received into requests; SIGCHLD into reaping.
    fn pending_signals(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let mut children_exited = false;
        for signal in self.signals.pending() {
            match signal {
                SIGCHLD => children_exited = true,
                SIGTERM | SIGINT => {
                    info!("received {}", signal_name(signal));
                    events.push(Event::Request(Request::Stop));
                }
                SIGTTIN => events.push(Event::Request(Request::ScaleUp)),
                SIGTTOU => events.push(Event::Request(Request::ScaleDown)),
                SIGHUP => {
                    info!("received SIGHUP: reloading");
                    events.push(self.reload_request(0));
                }
                other => debug!("ignoring signal {other}"),
            }
        }
        if children_exited {
            events.extend(self.reap());
        }
        events
    }

    /// Re-reads the config and asks the core to roll onto it; an invalid
    /// config refuses the reload and changes nothing.
    fn reload_request(&mut self, ticket: u64) -> Event {
        let refused = |reason: String| Event::Request(Request::ReloadRefused { ticket, reason });
        let settings = match Settings::load(self.config_file.as_deref(), &self.overrides) {
            Ok(settings) => settings,
            Err(e) => return refused(e.0),
        };
        if settings.listen != self.listen_at_start && !self.listeners.inherited {
            warn!("the listen addresses cannot change in a reload; restart sheepdog to bind others");
        }
        let command = match WorkerCommand::new(
            &settings.command,
            &settings.env,
            settings.working_directory.as_deref(),
            self.listeners.raw_fds(),
            self.listeners.fdnames(),
        ) {
            Ok(command) => command.with_journal(self.journal.then(|| JournalStreams::new(&settings.name)).flatten()),
            Err(e) => return refused(e.0),
        };
        self.commands.insert(self.flock.next_generation(), command);
        let policy = Policy::from_settings(&settings, self.watchdog);
        Event::Request(Request::Reload {
            ticket,
            policy: Box::new(policy),
        })
    }

    fn accept_clients(&mut self, now: Instant) {
        for client in self.control.accept(now) {
            if let Some(fd) = self.control.client_fd(client)
                && let Err(e) = self
                    .epoll
                    .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, TAG_CLIENT | client))
            {
                warn!("cannot watch control client {client}: {}", e.desc());
            }
        }
    }

    /// Reads a control client's request, or writes the rest of its reply.
    fn serve_client(&mut self, client: u64, writable: bool) -> Vec<Event> {
        if writable {
            self.control.flush(client);
            return Vec::new();
        }
        let command = match self.control.read(client) {
            ClientInput::Request(command) => command,
            ClientInput::Pending | ClientInput::Gone => return Vec::new(),
        };
        match command {
            Command::Status => {
                let reply = self.status_reply(Instant::now());
                self.reply(client, &reply);
                Vec::new()
            }
            Command::Scale { workers } => {
                let message = format!("scaling to {workers} workers");
                self.reply(client, &json!({"v": PROTOCOL_VERSION, "ok": true, "message": message}));
                vec![Event::Request(Request::Scale(workers))]
            }
            Command::Reload => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.reload_waiters.insert(ticket, client);
                vec![self.reload_request(ticket)]
            }
        }
    }

    /// Sends a reply; watches the client for writability if it reads slowly.
    fn reply(&mut self, client: u64, reply: &Value) {
        if self.control.reply(client, reply)
            && let Some(fd) = self.control.client_fd(client)
        {
            let _ = self
                .epoll
                .modify(fd, &mut EpollEvent::new(EpollFlags::EPOLLOUT, TAG_CLIENT | client));
        }
    }

    fn status_reply(&self, now: Instant) -> Value {
        let flock = &self.flock;
        let heartbeats = flock.policy().heartbeat.is_some();
        let workers: Vec<Value> = flock
            .workers()
            .iter()
            .map(|w| {
                let state = match w.state {
                    WorkerState::Starting => "starting",
                    WorkerState::Ready { .. } if w.retiring.is_some() => "retiring",
                    WorkerState::Ready { .. } => "ready",
                    WorkerState::Stopping { .. } => "stopping",
                };
                json!({
                    "slot": w.slot,
                    "pid": w.pid,
                    "generation": w.generation,
                    "state": state,
                    "uptime_s": now.saturating_duration_since(w.started_at).as_secs_f64(),
                    "restarts": flock.slot_restarts(w.slot),
                    "memory_bytes": w.memory,
                    "cpu_percent": proc_stats::cpu_percent(w.pid),
                    "heartbeat_age_s": heartbeats.then(|| now.saturating_duration_since(w.last_heartbeat).as_secs_f64()),
                    "status": w.status,
                })
            })
            .collect();
        let ready = flock
            .workers()
            .iter()
            .filter(|w| matches!(w.state, WorkerState::Ready { .. }))
            .count();
        json!({
            "v": PROTOCOL_VERSION,
            "ok": true,
            "supervisor": {
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
                "uptime_s": now.saturating_duration_since(self.started).as_secs_f64(),
                "name": self.name,
                "config": self.config_file.as_ref().map(|p| crate::config::canonical(p).display().to_string()),
                "generation": flock.generation(),
                "desired": flock.desired(),
                "ready": ready,
                "restarts": flock.total_restarts(),
                "reloading_to": flock.reloading_to(),
                "last_reload": flock.last_reload().map(|r| json!({
                    "generation": r.generation, "ok": r.ok, "message": r.message,
                })),
            },
            "workers": workers,
        })
    }

    /// Logs the exec failure of a worker just forked (it exits 127, and is
    /// reaped and backed off like any crash).
    fn read_exec_report(&mut self, pid: Pid) {
        if let Some(report) = self.exec_reports.remove(&pid) {
            let _ = self.epoll.delete(report.fd());
            if let Err(why) = report.read() {
                error!("worker {} (pid {pid}): {why}", report.slot);
            }
        }
    }

    fn unwatch_link(&mut self, pid: Pid) {
        if let Some(fd) = self.links.fd(pid) {
            let _ = self.epoll.delete(fd);
        }
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
                    Ok(()) => log::trace!("swept the process group of pid {pid}"),
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
            let pid = pid.as_raw();
            // The exec report may still be unread if exec failed at once.
            self.read_exec_report(pid);
            self.unwatch_link(pid);
            self.links.detach(pid);
            self.memory.forget(pid);
            events.push(Event::Exited { pid, status });
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
