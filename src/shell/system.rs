//! The seam between the supervisor's logic and the operating system: every
//! effect the shell has (fork/exec, signals, pings, /proc reads, sd_notify,
//! control replies, the clock, waiting) goes through [`System`], so that the
//! supervisor can be driven by a recording fake in tests and by [`Os`](super::os::Os)
//! for real.

use crate::clock::Moment;

use nix::sys::signal::Signal;

use crate::config::MemoryMeasure;
use crate::control::protocol::{Command, Reply};
use crate::core::{ExitStatus, Inspection, ListenQueue, Pid, SpawnOrder, Upward};
use crate::observe::http::{HttpRequest, HttpResponse};
pub use crate::systemd::sockets::ListenerFault;
use crate::upgrade::probe::Successor;
use crate::upgrade::state::SupervisorState;
use crate::worker::channel::WorkerMessage;
use crate::worker::spawn::WorkerCommand;

/// A control client, as the server numbers them.
pub type ClientId = u64;

/// What happened out there, as one wait found it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A signal to sheepdog (SIGCHLD is turned into `Exited` by the system).
    Signal(i32),
    /// A child was reaped.
    Exited { pid: Pid, status: ExitStatus },
    /// A worker said something on its channel.
    Message { pid: Pid, message: WorkerMessage },
    /// A stopping worker's queue is closed and empty (`System::drain`).
    Drained(Pid),
    /// A control client's complete request.
    Control { client: ClientId, command: Command },
    /// An HTTP client's request (`/healthz`, `/readyz`, `/metrics`, ...).
    Http { client: ClientId, request: HttpRequest },
}

/// What a worker uses, as the system last saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorkerUsage {
    pub cpu_seconds: Option<f64>,
    /// CPU use over its life, in % of one core.
    pub cpu_percent: Option<f64>,
    /// Its process tree's, as the memory checks last measured it (read
    /// now when there are none).
    pub rss_bytes: Option<u64>,
    pub pss_bytes: Option<u64>,
    /// The queue it accepts from, when each worker has one.
    pub queue: Option<usize>,
    /// New connections steered to it (round robin only).
    pub connections: Option<u64>,
    /// A Node worker's V8 heap (used, total) and event-loop lag in ms, as
    /// sheepdog's preload last reported them.
    pub heap: Option<(u64, u64)>,
    pub lag_ms: Option<f64>,
}

/// What the supervisor process itself uses.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OwnUsage {
    pub cpu_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub open_fds: Option<u64>,
}

pub trait System {
    /// The monotonic clock.
    fn now(&self) -> Moment;
    /// When the last wait's inputs began to be read: a pass judges every
    /// deadline at this time, so that a stall while it reads or acts (the
    /// supervisor stopped, starved) punishes no worker whose word arrived
    /// meanwhile; the next pass reads it.
    fn waited_at(&self) -> Moment {
        self.now()
    }
    /// Sleeps until something happens or `deadline` passes (never, if None),
    /// and returns what happened.
    fn wait(&mut self, deadline: Option<Moment>) -> Result<Vec<Input>, String>;
    /// Forks and execs the worker `order` asks for, with `command`.
    fn spawn(&mut self, order: &SpawnOrder, command: &WorkerCommand) -> Result<Pid, String>;
    /// Signals a worker's process group.
    fn signal(&mut self, pid: Pid, signal: Signal);
    /// Asks a node-ipc worker for a heartbeat with `message`.
    fn ping(&mut self, pid: Pid, message: &str);
    /// The memory of each worker's process tree; the gone ones are left out.
    fn measure(&mut self, pids: &[Pid], how: MemoryMeasure, limit: Option<u64>) -> Vec<(Pid, u64)>;
    /// Each worker's CPU time and use, and its tree's memory as last
    /// measured, in the order of `pids` (one /proc read per worker: a
    /// scrape of 256 workers must stay cheap).
    fn workers_usage(&self, pids: &[Pid]) -> Vec<WorkerUsage>;
    /// The supervisor's own CPU time, memory and open fds.
    fn own_usage(&self) -> OwnUsage;
    /// The tasks runnable on the machine now (0 when it cannot tell).
    /// How many of `pids` are running on a CPU (or waiting for one) now.
    fn runnable(&self, pids: &[Pid]) -> usize;
    /// Each listening socket's accept queue, now.
    fn listen_queues(&self) -> Vec<ListenQueue>;

    /// How new connections are spread ("round-robin over 9 queues").
    fn spread(&self) -> Option<String> {
        None
    }
    /// For each worker (every one asked about): whether its process tree
    /// serves a passed socket, listens on TCP ports of its own instead, or
    /// shows neither.
    fn inspect(&self, pids: &[Pid]) -> Vec<(Pid, Inspection)>;
    /// The shared listeners found shut down since the last check, each
    /// listening again or lost for good.
    fn check_listeners(&mut self) -> Vec<ListenerFault>;

    /// Sends no new connection to `pid` any more and reports
    /// `Input::Drained` once its queue is empty; true when there is nothing
    /// to wait for (it shares its queue, or there is only one).
    fn drain(&mut self, _pid: Pid) -> bool {
        true
    }

    /// New connections go to the queues of `open` (workers that may take
    /// them), or of `live` while none is open.
    fn steer(&mut self, _open: &[Pid], _live: &[Pid]) {}

    /// The workers' last lines, or where they are (the journal).
    fn logs(&self, _lines: usize, _slot: Option<usize>, _after: Option<u64>) -> crate::control::protocol::Logs {
        crate::control::protocol::Logs {
            name: String::new(),
            journal: false,
            unit: None,
            lines: Vec::new(),
            last: 0,
        }
    }

    /// With no worker left: new connections go to the queues the next
    /// start's first `workers` workers will be given (systemd keeps them).
    fn reserve_queues(&mut self, _workers: usize) {}
    /// Tells systemd, without ever blocking.
    fn notify(&mut self, message: &Upward);
    fn reply(&mut self, client: ClientId, reply: &Reply);
    /// Answers an HTTP client (and closes its connection once written).
    fn respond(&mut self, client: ClientId, response: &HttpResponse);
    /// The path an upgrade execs: where sheepdog was started from.
    fn upgrade_path(&self) -> Option<std::path::PathBuf>;
    /// Asks the binary installed at sheepdog's path what it is (bounded).
    fn probe_successor(&mut self) -> Result<Successor, String>;
    /// Hands the flock over to `successor` under the same pid, with
    /// `state` (its time points written relative to `taken_at`) and what
    /// the system itself holds. Returns
    /// only if it could not, with why; then nothing has changed.
    fn hand_over(&mut self, state: SupervisorState, successor: &Successor, taken_at: Moment) -> String;
    /// The flock is taken over (the first pass of a binary a hand-over
    /// started is done): the guard that would kill a hung one is released.
    fn settled(&mut self) {}
    /// Last words before exit: what waits for systemd is flushed (bounded),
    /// sheepdog's own files are removed.
    fn finish(&mut self);
}
