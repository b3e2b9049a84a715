//! The real [`System`]: one epoll over the signal pipe, the workers'
//! channels, their exec reports and the control socket; fork/exec; reaping;
//! /proc; sd_notify.
//!
//! epoll rather than poll: every fd (one per worker) is registered once, so a
//! wait costs the kernel the ready fds only, not all of them. Signal
//! handlers only queue and wake (signal-hook's self-pipe); nothing is done
//! inside them. Children are reaped only when SIGCHLD said some exited.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::clock::Moment;

use log::{debug, error, warn};
use nix::errno::Errno;
use nix::poll::PollTimeout;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use signal_hook::consts::SIGCHLD;
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;

use super::signals;
use super::system::{ClientId, Input, ListenerFault, OwnUsage, System, WorkerUsage};
use crate::config::{Channel, MemoryMeasure};
use crate::control::protocol::Reply;
use crate::control::server::{ClientInput, ControlServer};
use crate::core::{ExitStatus, Inspection, ListenQueue, Pid, SpawnOrder, Upward};
use crate::error::Error;
use crate::logging::RateLimit;
use crate::observe::http::{HttpInput, HttpResponse, HttpServer};
use crate::spread::queues::Queues;
use crate::systemd::notify::Notifier;
use crate::systemd::sockets::Listeners;
use crate::upgrade::handover;
use crate::upgrade::probe::{self, Successor};
use crate::upgrade::state::{Bytes, HandOver, OsState, SupervisorState, check_fds};
use crate::worker::containment::{Containment, ProcessGroups};
use crate::worker::links::Links;
use crate::worker::oom::OomWatch;
use crate::worker::output::Outputs;
use crate::worker::proc_stats;
use crate::worker::sock_diag;
use crate::worker::spawn::{ExecReport, WorkerCommand, channel_fd_number};

/// How long an exiting sheepdog waits for systemd to read its last messages.
const FINAL_FLUSH: Duration = Duration::from_secs(1);
/// How soon messages waiting for systemd to read its socket are retried.
const NOTIFY_RETRY: Duration = Duration::from_millis(20);
/// The longest single sleep: a lost deadline shows as a late wake, not none.
const MAX_SLEEP_MS: u128 = 60_000;

/// Events one wait takes at most: every worker's channel (a notify worker
/// has up to two sockets, one more while its notify directory is repaired)
/// and exec report, every control and HTTP client, the listeners and pipes.
const EVENTS_PER_WAIT: usize = 4 * crate::config::MAX_WORKERS as usize + 256;

/// What an epoll registration stands for, in its 64-bit tag.
const TAG_SIGNALS: u64 = 0;
const TAG_LINK: u64 = 1 << 32;
const TAG_EXEC_REPORT: u64 = 2 << 32;
const TAG_CONTROL: u64 = 3 << 32;
const TAG_CLIENT: u64 = 4 << 32;
const TAG_FAULTS: u64 = 5 << 32;
const TAG_HTTP: u64 = 6 << 32;
const TAG_HTTP_CLIENT: u64 = 7 << 32;
const TAG_OUTPUT: u64 = 8 << 32;
const TAG_KIND: u64 = 0xffff_ffff << 32;

pub struct Os {
    listeners: Listeners,
    /// Which queue each worker accepts from, and where new connections go.
    queues: Queues,
    control: ControlServer,
    http: Option<HttpServer>,
    links: Links,
    /// The workers' output pipes, outside journald.
    outputs: Option<Outputs>,
    /// Output pipes left unread until then (a worker that floods).
    throttled: Vec<(Pid, Moment)>,
    /// How each worker's processes are kept together, measured and killed.
    containment: Box<dyn Containment>,
    notifier: Notifier,
    /// Exec reports of workers just forked, read once their pipe is readable.
    exec_reports: HashMap<Pid, ExecReport>,
    /// The workers forked and not reaped yet.
    workers: HashSet<Pid>,
    /// The inodes of the listening sockets workers are given.
    passed_inodes: Vec<u64>,
    signals: SignalDelivery<UnixStream, SignalOnly>,
    /// Fault signals someone sent (see `signals::watch_faults`), read end
    /// and write end.
    faults: (UnixStream, UnixStream),
    epoll: Epoll,
    /// The path sheepdog was started from: what an upgrade execs.
    exe: Option<PathBuf>,
    /// Signals taken for a hand-over that did not happen, or handed over
    /// by the binary before: handled at the next wait, which does not block.
    carried: Vec<i32>,
    /// What epoll_wait fills (allocated once).
    events: Vec<EpollEvent>,
    /// When the last epoll_wait returned.
    woke: Option<Moment>,
    /// The binary the last probe opened: what a hand-over execs.
    successor: Option<probe::Opened>,
    /// The guard of the hand-over that made this system, until the first
    /// pass is done (its pid is no orphan to sweep).
    guard: Option<handover::Guard>,
    /// The kernel's OOM kill counts, to name an OOM kill as such.
    oom: OomWatch,
    /// A shrunk backlog is said once in 10 minutes (each new Node worker
    /// shrinks it again).
    backlog_lines: RateLimit,
}

/// The systemd service sheepdog runs in, from its cgroup
/// (`0::/system.slice/sheepdog@myapp.service`).
fn own_unit() -> Option<String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup
        .lines()
        .filter_map(|line| line.rsplit(':').next())
        .flat_map(|path| path.split('/'))
        .rfind(|part| part.ends_with(".service"))
        .map(str::to_string)
}

/// What one epoll wait found ready.
#[derive(Default)]
struct Ready {
    signals: bool,
    faults: bool,
    links: Vec<Pid>,
    outputs: Vec<Pid>,
    exec_reports: Vec<Pid>,
    control: bool,
    clients: Vec<(ClientId, bool)>,
    http: bool,
    http_clients: Vec<(ClientId, bool)>,
}

/// What a new system makes for itself: the signal pipe with its handlers,
/// the fault-signal pipe, and the epoll.
struct Plumbing {
    signals: SignalDelivery<UnixStream, SignalOnly>,
    faults: (UnixStream, UnixStream),
    epoll: Epoll,
}

impl Plumbing {
    fn new() -> Result<Plumbing, Error> {
        let (read, write) = UnixStream::pair().map_err(|e| Error::from_io("cannot create the signal pipe", e))?;
        for end in [&read, &write] {
            end.set_nonblocking(true)
                .map_err(|e| Error::from_io("cannot set up the signal pipe", e))?;
        }
        let signals = SignalDelivery::with_pipe(read, write, SignalOnly, signals::handled())
            .map_err(|e| Error::from_io("cannot install signal handlers", e))?;
        let faults = UnixStream::pair().map_err(|e| Error::from_io("cannot create the signal pipe", e))?;
        for end in [&faults.0, &faults.1] {
            end.set_nonblocking(true)
                .map_err(|e| Error::from_io("cannot set up the signal pipe", e))?;
        }
        signals::watch_faults(faults.1.as_raw_fd())?;
        let epoll =
            Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| Error::from_errno("cannot create an epoll", e))?;
        Ok(Plumbing { signals, faults, epoll })
    }
}

impl Os {
    /// Installs the signal handlers (before any fork, so that no exit is
    /// missed) and makes sheepdog the reaper of its workers' orphans.
    pub fn new(
        channel: Channel,
        listeners: Listeners,
        queues: Queues,
        control: ControlServer,
        http: Option<HttpServer>,
        outputs: Option<Outputs>,
        exe: Option<PathBuf>,
    ) -> Result<Os, Error> {
        let links = Links::new(channel, channel_fd_number(listeners.groups().len())).map_err(Error::os)?;
        let plumbing = Plumbing::new()?;
        let mut os = Os::assemble(plumbing, listeners, queues, control, http, links, exe);
        os.outputs = outputs;
        os.watch_all().map_err(|(what, e)| Error::from_errno(what, e))?;
        Ok(os)
    }

    /// The system the binary before this one handed over (`state`), its
    /// time points taken from `then`. Nothing is taken unless everything
    /// can be: every fd is checked first, and what can fail (the new
    /// epoll, signal pipes and handlers) is made before any fd is owned;
    /// an error leaves every handed-over fd open, for a hand-back.
    pub fn adopt(state: OsState) -> Result<Os, String> {
        let fds = state.fds();
        check_fds(&fds)?;
        let channel = Channel::named(&state.links.channel)
            .ok_or_else(|| format!("channel {:?} is not one this build knows", state.links.channel))?;
        let plumbing = Plumbing::new().map_err(|e| e.to_string())?;
        // From here on nothing fails: the fds are taken, and closed on
        // exec again (a probe or the next hand-over must not inherit them).
        handover::set_inherited(&fds.iter().map(|r| r.fd).collect::<Vec<_>>(), false);
        let listeners = Listeners::adopt(state.listeners, state.inherited);
        let queues = match state.spread {
            Some(spread) => match Queues::adopt(spread, &listeners) {
                Ok(queues) => queues,
                Err(why) => {
                    std::mem::forget(listeners);
                    return Err(why);
                }
            },
            // From a build before queues: one socket per address.
            None => Queues::new(&listeners, crate::config::Spread::RoundRobin, state.inherited),
        };
        let control = ControlServer::adopt(state.control);
        let http = state.http.map(HttpServer::adopt);
        let links = Links::adopt(state.links, channel);
        let exe = (!state.exe.as_bytes().is_empty()).then(|| state.exe.to_path());
        let mut os = Os::assemble(plumbing, listeners, queues, control, http, links, exe);
        os.outputs = state.outputs.map(|o| Outputs::adopt(&o.name, o.pipes));
        os.exec_reports = state
            .exec_reports
            .into_iter()
            .map(|r| (r.pid, ExecReport::adopt(r)))
            .collect();
        os.workers = state.workers.into_iter().collect();
        os.containment = Box::new(ProcessGroups::new(state.swept));
        os.notifier.resume(state.notify_outbox);
        // What was caught before the exec, and a reap for what ended during it.
        os.carried = state.pending_signals;
        os.carried.push(SIGCHLD);
        if let Err((what, e)) = os.watch_all() {
            // The fds are taken: dropping them would close them under the
            // hand-back, which needs them open. The process execs next.
            std::mem::forget(os);
            return Err(format!("{what}: {}", e.desc()));
        }
        // The handlers are in place: what was sent meanwhile is delivered now.
        handover::restore_signals(&handover::mask_from(&state.signal_mask));
        Ok(os)
    }

    /// Holds the guard of the hand-over that made this system until the
    /// first pass is done ([`System::settled`]).
    pub fn keep_guard(&mut self, guard: Option<handover::Guard>) {
        self.guard = guard;
    }

    fn assemble(
        plumbing: Plumbing,
        listeners: Listeners,
        queues: Queues,
        control: ControlServer,
        http: Option<HttpServer>,
        links: Links,
        exe: Option<PathBuf>,
    ) -> Os {
        // Orphans of a worker (e.g. the server a wrapper script started) are
        // re-parented to us rather than to init, so we reap them.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            warn!("cannot become a child subreaper: {}", e.desc());
        }
        Os {
            passed_inodes: listeners.inodes(),
            listeners,
            queues,
            control,
            http,
            links,
            outputs: None,
            throttled: Vec::new(),
            containment: Box::new(ProcessGroups::new(Vec::new())),
            notifier: Notifier::from_env(),
            exec_reports: HashMap::new(),
            workers: HashSet::new(),
            signals: plumbing.signals,
            faults: plumbing.faults,
            epoll: plumbing.epoll,
            exe,
            carried: Vec::new(),
            events: vec![EpollEvent::empty(); EVENTS_PER_WAIT],
            woke: None,
            successor: None,
            guard: None,
            oom: OomWatch::new(),
            backlog_lines: RateLimit::new(1, Duration::from_secs(600)),
        }
    }

    /// Registers every fd the loop watches with the epoll: the signal
    /// pipes, the control and http sockets and their clients, the exec
    /// reports and the workers' channels. Without one of the first four the
    /// supervisor cannot run (what, and why); the others are warned of.
    fn watch_all(&self) -> Result<(), (&'static str, Errno)> {
        let input = EpollFlags::EPOLLIN;
        let must = |fd: BorrowedFd<'_>, tag: u64, what: &'static str| {
            self.epoll.add(fd, EpollEvent::new(input, tag)).map_err(|e| (what, e))
        };
        must(
            self.signals.get_read().as_fd(),
            TAG_SIGNALS,
            "cannot watch the signal pipe",
        )?;
        must(self.faults.0.as_fd(), TAG_FAULTS, "cannot watch the signal pipe")?;
        must(
            self.control.listener_fd(),
            TAG_CONTROL,
            "cannot watch the control socket",
        )?;
        if let Some(http) = &self.http {
            must(http.listener_fd(), TAG_HTTP, "cannot watch the http socket")?;
        }
        let watch = |fd: BorrowedFd<'_>, flags: EpollFlags, tag: u64, what: &str| {
            if let Err(e) = self.epoll.add(fd, EpollEvent::new(flags, tag)) {
                warn!("cannot watch {what}: {}", e.desc());
            }
        };
        for client in self.control.clients.ids() {
            if let Some(fd) = self.control.clients.fd(client) {
                let flags = if self.control.clients.is_writing(client) {
                    EpollFlags::EPOLLOUT
                } else {
                    input
                };
                watch(fd, flags, TAG_CLIENT | client, "a control client");
            }
        }
        if let Some(http) = &self.http {
            for client in http.clients.ids() {
                if let Some(fd) = http.clients.fd(client) {
                    let flags = if http.clients.is_writing(client) {
                        EpollFlags::EPOLLOUT
                    } else {
                        input
                    };
                    watch(fd, flags, TAG_HTTP_CLIENT | client, "an http client");
                }
            }
        }
        for (pid, report) in &self.exec_reports {
            watch(report.fd(), input, TAG_EXEC_REPORT | *pid as u64, "an exec report");
        }
        for pid in self.links.pids() {
            if self.links.is_open(pid) {
                for fd in self.links.fds(pid) {
                    watch(fd, input, TAG_LINK | pid as u64, "a worker's channel");
                }
            }
        }
        if let Some(outputs) = &self.outputs {
            for pid in outputs.pids() {
                if let Some(fd) = outputs.fd(pid) {
                    watch(fd, input, TAG_OUTPUT | pid as u64, "a worker's output");
                }
            }
        }
        Ok(())
    }

    /// Everything this system holds, as data, its time points relative to
    /// `now`: for the binary that takes over.
    /// Watches a worker's output pipe.
    fn watch_output(&self, pid: Pid) {
        let Some(fd) = self.outputs.as_ref().and_then(|o| o.fd(pid)) else {
            return;
        };
        if let Err(e) = self
            .epoll
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, TAG_OUTPUT | pid as u64))
        {
            warn!("worker pid {pid}: cannot watch its output: {}", e.desc());
        }
    }

    /// Passes on what a worker wrote; its pipe is closed (and so leaves
    /// the epoll) once every writer has closed its end. One that floods is
    /// left out of the epoll until its next window.
    fn read_output(&mut self, pid: Pid, now: Moment) {
        let Some(outputs) = &mut self.outputs else { return };
        if let crate::worker::output::Read::Throttled(until) = outputs.read(pid, now)
            && let Some(fd) = outputs.fd(pid)
        {
            let quiet = EpollEvent::new(EpollFlags::empty(), TAG_OUTPUT | pid as u64);
            if self.epoll.modify(fd, &mut { quiet }).is_ok() {
                self.throttled.push((pid, until));
            }
        }
    }

    /// Watches again the output pipes whose window has come.
    fn resume_outputs(&mut self, now: Moment) {
        let Some(outputs) = &self.outputs else { return };
        let (due, later): (Vec<_>, Vec<_>) = self.throttled.drain(..).partition(|(_, at)| *at <= now);
        self.throttled = later;
        for (pid, _) in due {
            if let Some(fd) = outputs.fd(pid) {
                let watch = EpollEvent::new(EpollFlags::EPOLLIN, TAG_OUTPUT | pid as u64);
                let _ = self.epoll.modify(fd, &mut { watch });
            }
        }
    }

    fn export(&self, pending_signals: Vec<i32>, signal_mask: Vec<i32>) -> OsState {
        let (log_pending, log_dropped) = crate::logging::pending();
        let mut exec_reports: Vec<_> = self.exec_reports.iter().map(|(pid, r)| r.export(*pid)).collect();
        exec_reports.sort_by_key(|r| r.pid);
        let mut workers: Vec<Pid> = self.workers.iter().copied().collect();
        workers.sort_unstable();
        let swept = self.containment.export();
        OsState {
            exe: self.exe.as_deref().map_or(Bytes::new(b""), Bytes::path),
            listeners: self.listeners.export(),
            inherited: self.listeners.inherited,
            control: self.control.export(),
            http: self.http.as_ref().map(|h| h.export()),
            links: self.links.export(),
            exec_reports,
            workers,
            swept,
            notify_outbox: self.notifier.pending(),
            log_pending: Bytes::new(&log_pending),
            log_dropped,
            pending_signals,
            signal_mask,
            spread: Some(self.queues.export()),
            outputs: self.outputs.as_ref().map(|o| crate::upgrade::state::OutputsState {
                name: o.name().to_string(),
                pipes: o.export(),
            }),
        }
    }

    /// The signals caught and not handled yet, taken.
    fn take_signals(&mut self) -> Vec<i32> {
        let mut taken: Vec<i32> = self.signals.pending().collect();
        let mut sent = [0u8; 64];
        while let Ok(n @ 1..) = (&self.faults.0).read(&mut sent) {
            taken.extend(sent[..n].iter().map(|signal| i32::from(*signal)));
        }
        taken
    }

    fn epoll_wait(&mut self, now: Moment, deadline: Option<Moment>) -> Result<Ready, Errno> {
        let retry = self.notifier.has_pending().then(|| now + NOTIFY_RETRY);
        let log_retry = crate::logging::has_pending().then(|| now + crate::logging::RETRY);
        let http = self.http.as_ref().and_then(|h| h.clients.next_deadline());
        let timeout = match [deadline, retry, log_retry, self.control.clients.next_deadline(), http]
            .into_iter()
            .flatten()
            .min()
        {
            None => PollTimeout::NONE,
            Some(deadline) => {
                // Round up: waking a millisecond early would only spin.
                let ms = deadline.saturating_duration_since(now).as_micros().div_ceil(1000);
                PollTimeout::try_from(ms.min(MAX_SLEEP_MS) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        // Sleep until something is ready or the deadline (interrupted is
        // woken: a signal, or SIGSTOP then SIGCONT, after which epoll_wait
        // is never restarted).
        let buffer = &mut self.events;
        match self.epoll.wait(buffer, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
        // The pass's time is taken first, then what is ready is looked at:
        // everything that arrived before that time is read in this pass,
        // before any deadline is judged, however long the supervisor was
        // stopped or starved anywhere in between (even inside the first
        // epoll_wait, after it had collected its events).
        self.woke = Some(Moment::now());
        // Room for every fd that can be ready at once (level-triggered: what
        // the sleep saw is still ready).
        let count = loop {
            match self.epoll.wait(buffer, PollTimeout::ZERO) {
                Ok(count) => break count,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        };
        let mut ready = Ready::default();
        for event in &buffer[..count] {
            let (kind, id) = (event.data() & TAG_KIND, event.data() & 0xffff_ffff);
            match kind {
                TAG_LINK => ready.links.push(id as Pid),
                TAG_OUTPUT => ready.outputs.push(id as Pid),
                TAG_EXEC_REPORT => ready.exec_reports.push(id as Pid),
                TAG_CONTROL => ready.control = true,
                TAG_CLIENT => ready.clients.push((id, event.events().contains(EpollFlags::EPOLLOUT))),
                TAG_FAULTS => ready.faults = true,
                TAG_HTTP => ready.http = true,
                TAG_HTTP_CLIENT => ready
                    .http_clients
                    .push((id, event.events().contains(EpollFlags::EPOLLOUT))),
                _ => ready.signals = true,
            }
        }
        Ok(ready)
    }

    /// The signals received; SIGCHLD turned into the exits it announced.
    fn pending_signals(&mut self, inputs: &mut Vec<Input>) {
        let mut children_exited = false;
        let carried = std::mem::take(&mut self.carried);
        for signal in carried.into_iter().chain(self.signals.pending()) {
            match signal {
                SIGCHLD => children_exited = true,
                other => inputs.push(Input::Signal(other)),
            }
        }
        if children_exited {
            self.reap(inputs);
        }
    }

    fn accept_clients(&mut self, now: Moment) {
        for client in self.control.accept(now) {
            self.watch_client(self.control.clients.fd(client), TAG_CLIENT, client);
        }
    }

    fn watch_client(&self, fd: Option<BorrowedFd>, tag: u64, client: ClientId) {
        let watch = EpollEvent::new(EpollFlags::EPOLLIN, tag | client);
        if let Some(Err(e)) = fd.map(|fd| self.epoll.add(fd, watch)) {
            warn!("cannot watch client {client}: {}", e.desc());
        }
    }

    /// Reads a control client's request, or writes the rest of its reply.
    fn serve_client(&mut self, client: ClientId, writable: bool, inputs: &mut Vec<Input>) {
        if writable {
            self.control.clients.flush(client);
        } else if let ClientInput::Request(command) = self.control.read(client) {
            inputs.push(Input::Control { client, command });
        }
    }

    /// Accepts HTTP clients and reads each at once: a probe's request is
    /// usually there with its connection.
    fn accept_http(&mut self, now: Moment, inputs: &mut Vec<Input>) {
        let Some(http) = &mut self.http else { return };
        let added = http.accept(now);
        for client in added {
            self.watch_client(
                self.http.as_ref().and_then(|h| h.clients.fd(client)),
                TAG_HTTP_CLIENT,
                client,
            );
            self.serve_http(client, false, inputs);
        }
    }

    /// Reads an HTTP client's request, or writes the rest of its response.
    fn serve_http(&mut self, client: ClientId, writable: bool, inputs: &mut Vec<Input>) {
        let Some(http) = &mut self.http else { return };
        if writable {
            http.clients.flush(client);
        } else if let HttpInput::Request(request) = http.read(client) {
            inputs.push(Input::Http { client, request });
        }
        self.watch_http_output(client);
    }

    /// A response not written whole: wait for the client to read, and
    /// stop reading it (what it sends now is not looked at).
    fn watch_http_output(&self, client: ClientId) {
        if let Some(http) = &self.http
            && http.clients.is_writing(client)
            && let Some(fd) = http.clients.fd(client)
        {
            let _ = self
                .epoll
                .modify(fd, &mut EpollEvent::new(EpollFlags::EPOLLOUT, TAG_HTTP_CLIENT | client));
        }
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

    /// What a tmp cleaner may remove: the control socket file, the notify
    /// directory and the sockets in it, bound again (checked with the
    /// listeners, every second).
    fn repair_runtime_files(&mut self) {
        if self.control.repair()
            && let Err(e) = self.epoll.add(
                self.control.listener_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, TAG_CONTROL),
            )
        {
            warn!("cannot watch the control socket again: {}", e.desc());
        }
        for pid in self.links.repair() {
            if let Some(fd) = self.links.fd(pid)
                && let Err(e) = self
                    .epoll
                    .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, TAG_LINK | pid as u64))
            {
                warn!("cannot watch worker pid {pid}'s notify socket again: {}", e.desc());
            }
        }
    }

    fn unwatch_link(&mut self, pid: Pid) {
        for fd in self.links.fds(pid) {
            let _ = self.epoll.delete(fd);
        }
    }

    /// Reaps every exited child. A worker's process group is swept with
    /// SIGKILL while its leader is still a zombie (so the group id cannot have
    /// been reused): nothing a worker started outlives it.
    fn reap(&mut self, inputs: &mut Vec<Input>) {
        let before = inputs.len();
        self.reap_all(inputs);
        if inputs.len() > before {
            self.sweep_orphans(false);
        }
    }

    /// Kills what escaped a worker's container and outlived it (or, at
    /// exit, everything of every worker's).
    fn sweep_orphans(&mut self, all: bool) {
        let guard = self.guard.as_ref().map(|g| g.pid);
        self.containment.sweep(&self.workers, guard, all);
    }

    fn reap_all(&mut self, inputs: &mut Vec<Input>) {
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
            if self.workers.contains(&pid.as_raw()) {
                self.containment.kill_all(pid.as_raw());
            }
            let status = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => ExitStatus::Code(code),
                Ok(WaitStatus::Signaled(_, Signal::SIGKILL, _))
                    if self.workers.contains(&pid.as_raw()) && self.oom.claim(Moment::now()) =>
                {
                    ExitStatus::OomKilled
                }
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
            self.workers.remove(&pid);
            self.containment.forget(pid);
            // The exec report may still be unread if exec failed at once.
            self.read_exec_report(pid);
            self.unwatch_link(pid);
            self.links.detach(pid);
            self.queues.forget(pid);
            inputs.push(Input::Exited { pid, status });
        }
    }
}

impl System for Os {
    fn now(&self) -> Moment {
        Moment::now()
    }

    fn waited_at(&self) -> Moment {
        self.woke.unwrap_or_else(Moment::now)
    }

    fn wait(&mut self, deadline: Option<Moment>) -> Result<Vec<Input>, String> {
        self.notifier.flush();
        crate::logging::flush();
        self.resume_outputs(Moment::now());
        // Carried signals are handled now: a look at the fds, no sleep.
        let deadline = if self.carried.is_empty() {
            let drains = self.queues.next_check(Moment::now());
            let resumes = self.throttled.iter().map(|(_, at)| *at).min();
            deadline.into_iter().chain(drains).chain(resumes).min()
        } else {
            Some(Moment::now())
        };
        let ready = self
            .epoll_wait(Moment::now(), deadline)
            .map_err(|e| format!("epoll_wait failed: {}", e.desc()))?;
        let mut inputs = Vec::new();
        if ready.signals || !self.carried.is_empty() {
            self.pending_signals(&mut inputs);
        }
        if ready.faults {
            let mut sent = [0u8; 64];
            while let Ok(n @ 1..) = (&self.faults.0).read(&mut sent) {
                inputs.extend(sent[..n].iter().map(|signal| Input::Signal(i32::from(*signal))));
            }
        }
        let now = Moment::now();
        if ready.control {
            self.accept_clients(now);
        }
        for (client, writable) in ready.clients {
            self.serve_client(client, writable, &mut inputs);
        }
        self.control.expire(now);
        if ready.http {
            self.accept_http(now, &mut inputs);
        }
        for (client, writable) in ready.http_clients {
            self.serve_http(client, writable, &mut inputs);
        }
        if let Some(http) = &mut self.http {
            http.expire(now);
        }
        for pid in ready.exec_reports {
            self.read_exec_report(pid);
        }
        for pid in ready.links {
            for message in self.links.read(pid, now) {
                inputs.push(Input::Message { pid, message });
            }
            if !self.links.is_open(pid) {
                self.unwatch_link(pid);
            }
        }
        for pid in ready.outputs {
            self.read_output(pid, now);
        }
        for pid in self.queues.drained(&self.listeners, now) {
            inputs.push(Input::Drained(pid));
        }
        Ok(inputs)
    }

    fn spawn(&mut self, order: &SpawnOrder, command: &WorkerCommand) -> Result<Pid, String> {
        let mut prepared = self.links.prepare(order.slot, order.heartbeat)?;
        let output = match &self.outputs {
            Some(_) => Some(Outputs::pipe()?),
            None => None,
        };
        prepared.extras.output = output.as_ref().map(|(_, write)| write.as_raw_fd());
        let width = self.queues.width();
        let queue = self.queues.pick(&mut self.listeners);
        if self.queues.width() != width {
            // A new queue: its socket is one of the flock's, not the worker's own.
            self.passed_inodes = self.listeners.inodes();
        }
        prepared.extras.listeners = Some(self.queues.fds(&self.listeners, queue));
        prepared.extras.enter = Some(self.containment.enter());
        let (pid, report) = command
            .spawn(order.slot, order.generation, &prepared.extras)
            .map_err(|e| e.to_string())?;
        self.queues.record(pid, queue);
        let slot = order.slot;
        let watched = self.epoll.add(
            report.fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, TAG_EXEC_REPORT | pid as u64),
        );
        match watched {
            Ok(()) => {
                self.exec_reports.insert(pid, report);
            }
            Err(e) => warn!("worker {slot} (pid {pid}): cannot watch its exec report: {}", e.desc()),
        }
        self.workers.insert(pid);
        if let (Some(outputs), Some((read, write))) = (&mut self.outputs, output) {
            drop(write);
            outputs.attach(pid, slot, read);
            self.watch_output(pid);
        }
        self.links.attach(pid, slot, prepared.link);
        if let Some(fd) = self.links.fd(pid)
            && let Err(e) = self
                .epoll
                .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, TAG_LINK | pid as u64))
        {
            warn!("worker {slot} (pid {pid}): cannot watch its channel: {}", e.desc());
        }
        Ok(pid)
    }

    /// Signals every process of a worker's container.
    fn signal(&mut self, pid: Pid, signal: Signal) {
        match self.containment.signal(pid, signal) {
            Ok(()) => debug!("sent {} to worker pid {pid}", signal.as_str()),
            Err(Errno::ESRCH) => debug!("worker pid {pid} already gone; {} not sent", signal.as_str()),
            Err(e) => warn!("cannot send {} to worker pid {pid}: {}", signal.as_str(), e.desc()),
        }
    }

    fn logs(&self, lines: usize, slot: Option<usize>, after: Option<u64>) -> crate::control::protocol::Logs {
        let mut logs = crate::control::protocol::Logs {
            name: String::new(),
            journal: self.outputs.is_none(),
            unit: own_unit(),
            lines: Vec::new(),
            last: 0,
        };
        if let Some(outputs) = &self.outputs {
            logs.lines = outputs.recent(lines, slot, after);
            logs.last = outputs.last_seq();
        }
        logs
    }

    fn ping(&mut self, pid: Pid, message: &str) {
        self.links.ping(pid, message);
    }

    fn measure(&mut self, pids: &[Pid], how: MemoryMeasure, limit: Option<u64>) -> Vec<(Pid, u64)> {
        self.containment.memory(&self.workers, pids, how, limit)
    }

    fn workers_usage(&self, pids: &[Pid]) -> Vec<WorkerUsage> {
        let uptime = proc_stats::uptime();
        pids.iter()
            .map(|&pid| {
                let (rss_bytes, pss_bytes) = self.containment.last_memory(pid);
                // Without memory checks nothing measured the tree: read it now.
                let rss_bytes = rss_bytes.or_else(|| proc_stats::tree_rss(pid));
                let (cpu_seconds, cpu_percent) = proc_stats::cpu_usage(pid, uptime);
                let (queue, connections) = self.queues.worker(pid);
                let stats = self.links.stats(pid);
                WorkerUsage {
                    cpu_seconds,
                    cpu_percent,
                    rss_bytes,
                    pss_bytes,
                    queue,
                    connections,
                    heap: stats.map(|s| (s.heap_used, s.heap_total)),
                    lag_ms: stats.map(|s| s.lag_ms),
                }
            })
            .collect()
    }

    fn own_usage(&self) -> OwnUsage {
        let (cpu_seconds, rss_bytes, open_fds) = proc_stats::own_usage();
        OwnUsage {
            cpu_seconds,
            rss_bytes,
            open_fds,
        }
    }

    fn runnable(&self, pids: &[Pid]) -> usize {
        pids.iter().filter(|pid| proc_stats::is_running(**pid)).count()
    }

    fn listen_queues(&self) -> Vec<ListenQueue> {
        self.listeners
            .queues_indexed()
            .into_iter()
            .map(|(index, mut queue)| {
                queue.queue = self.queues.queue_number(index);
                queue
            })
            .collect()
    }

    fn spread(&self) -> Option<String> {
        Some(self.queues.describe())
    }

    fn check_listeners(&mut self) -> Vec<ListenerFault> {
        self.repair_runtime_files();
        for (address, found, restored) in self.listeners.restore_backlogs() {
            let line = format!(
                "the listen backlog of {address} was {found}, not {restored}: a process holding the socket called \
                 listen(2) on it again (Node's server.listen({{fd: 3}}) does, with 511, unless given a backlog); \
                 gave it back {restored}"
            );
            if self.backlog_lines.allow(Moment::now()) {
                warn!("{line}");
            } else {
                debug!("{line}");
            }
        }
        let mut faults = Vec::new();
        for (index, listener) in self.listeners.sockets.iter().enumerate() {
            if let Some(fault) = listener.check() {
                if matches!(fault, ListenerFault::Recovered(_)) {
                    self.queues.rejoined(index);
                }
                faults.push(fault);
            }
        }
        faults
    }

    fn drain(&mut self, pid: Pid) -> bool {
        self.queues.drain(pid)
    }

    fn steer(&mut self, open: &[Pid], live: &[Pid]) {
        self.queues.publish(&self.listeners, open, live, Moment::now());
    }

    fn reserve_queues(&mut self, workers: usize) {
        self.queues.reserve(&self.listeners, workers);
    }

    fn inspect(&self, pids: &[Pid]) -> Vec<(Pid, Inspection)> {
        // Every worker asked about is answered: without the socket table,
        // nothing can be said of its ports (it is innocent until found
        // listening elsewhere).
        let listening = match sock_diag::listening_tcp() {
            Ok(listening) => listening,
            Err(e) => {
                debug!("cannot list the listening sockets (sock_diag): {e}");
                Vec::new()
            }
        };
        pids.iter()
            .map(|&pid| (pid, proc_stats::inspect(pid, &listening, &self.passed_inodes)))
            .collect()
    }

    fn notify(&mut self, message: &Upward) {
        self.notifier.send(message);
    }

    /// Sends a reply; watches the client for writability if it reads slowly.
    fn reply(&mut self, client: ClientId, reply: &Reply) {
        if self.control.reply(client, reply)
            && let Some(fd) = self.control.clients.fd(client)
        {
            let _ = self
                .epoll
                .modify(fd, &mut EpollEvent::new(EpollFlags::EPOLLOUT, TAG_CLIENT | client));
        }
    }

    fn respond(&mut self, client: ClientId, response: &HttpResponse) {
        if let Some(http) = &mut self.http {
            http.respond(client, response);
        }
        self.watch_http_output(client);
    }

    fn upgrade_path(&self) -> Option<PathBuf> {
        self.exe.clone()
    }

    fn probe_successor(&mut self) -> Result<Successor, String> {
        let path = self
            .exe
            .clone()
            .ok_or("the path sheepdog was started from is unknown (/proc/self/exe)")?;
        let opened = probe::open(&path)?;
        let successor = probe::probe(&path, &opened, crate::upgrade::PROBE_TIMEOUT)?;
        self.successor = Some(opened);
        Ok(successor)
    }

    /// Blocks every signal, takes those caught, writes the whole state into
    /// a memfd, lets every fd it names (and the memfd, a way back to this
    /// executable, and the guard's pipe) survive exec, starts the guard, and
    /// execs the binary the probe opened. On failure everything is put back
    /// as it was (the guard, released, goes) and the caught signals are
    /// handled at the next wait.
    fn hand_over(&mut self, state: SupervisorState, successor: &Successor, taken_at: Moment) -> String {
        let Some(file) = self.successor.take() else {
            return "the new binary was not probed".into();
        };
        self.notifier.flush();
        crate::logging::flush();
        let mask = handover::block_signals();
        let signals = self.take_signals();
        let os = self.export(signals.clone(), handover::mask_numbers(&mask));
        let mut fds: Vec<RawFd> = os.fds().iter().map(|r| r.fd).collect();
        let whole = HandOver {
            format: crate::build::current().state_format,
            from_version: crate::build::version().to_string(),
            taken_at_ns: taken_at.as_nanos(),
            pid: Some(std::process::id()),
            supervisor: state,
            os,
        };
        let prepared = (
            handover::write_state(&whole.encode()),
            handover::open_own_executable(),
            handover::Guard::start(handover::HANDOVER_TIMEOUT),
        );
        let why = match prepared {
            (Ok(memfd), Ok(exe), Ok(guard)) => {
                fds.extend([memfd.as_raw_fd(), exe.as_raw_fd(), guard.fd.as_raw_fd()]);
                let changed = handover::set_inherited(&fds, true);
                let why = handover::exec(
                    &successor.path,
                    file.file.as_raw_fd(),
                    memfd.as_raw_fd(),
                    exe.as_raw_fd(),
                    &guard,
                );
                handover::set_inherited(&changed, false);
                // Released: the guard sees its pipe close, and goes.
                drop(guard);
                why
            }
            (Err(why), ..) | (_, Err(why), _) | (.., Err(why)) => why,
        };
        handover::restore_signals(&mask);
        self.carried.extend(signals);
        why
    }

    fn settled(&mut self) {
        // The hand-over's guard is released: it sees its pipe close.
        self.guard = None;
    }

    fn finish(&mut self) {
        let deadline = Moment::now() + FINAL_FLUSH;
        self.notifier.flush();
        while self.notifier.has_pending() && Moment::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            self.notifier.flush();
        }
        if self.notifier.has_pending() {
            warn!("systemd did not read its notify socket; exiting with messages unsent");
        }
        for listener in &self.listeners.sockets {
            listener.remove_socket_file();
        }
        // Nothing a worker started outlives the flock, not even what left
        // its process group: it would keep the port from the next sheepdog.
        self.sweep_orphans(true);
        if let Some(outputs) = &mut self.outputs {
            outputs.read_rest(Moment::now());
        }
        self.links.cleanup();
        self.control.cleanup();
        if let Some(http) = &mut self.http {
            http.cleanup();
        }
        crate::logging::drain(FINAL_FLUSH);
    }
}
