//! The core's vocabulary: what happens (events), what to do about it
//! (actions), the policy it applies, and the records of the worker table.

use std::fmt;
use std::time::Duration;

use crate::clock::Moment;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::config::{Channel, HeartbeatPolicy, MemoryMeasure, Readiness, RecyclePolicy, RestartPolicy, Settings};

pub type Pid = i32;

/// Names a worker command the shell prepared (one per generation): the core
/// says which one each spawn uses and when one is no longer needed.
pub type CommandId = u64;

/// How a worker process ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signaled(Signal),
    /// SIGKILL from the kernel's OOM killer, as its counters tell.
    OomKilled,
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exited with code {code}"),
            ExitStatus::Signaled(signal) => write!(f, "was killed by {}", signal.as_str()),
            ExitStatus::OomKilled => f.write_str("was killed by the kernel's OOM killer (SIGKILL: out of memory)"),
        }
    }
}

/// Everything the shell needs to start one worker. `Event::Spawned` echoes
/// it back, so the worker is recorded as what it was started as, whatever
/// the core decided between the order and the fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpawnOrder {
    pub slot: usize,
    pub generation: u32,
    pub command: CommandId,
    /// The generation's heartbeats (a notify worker's `WATCHDOG_USEC`).
    pub heartbeat: Option<HeartbeatPolicy>,
}

/// What operators ask for, by signal or over the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM / SIGINT: stop every worker gracefully, then exit 0.
    Stop,
    /// SIGTTIN: one worker more.
    ScaleUp,
    /// SIGTTOU: one worker less.
    ScaleDown,
    /// `sheepdog scale N`.
    Scale(usize),
    /// SIGHUP or `sheepdog reload`: roll the flock onto a new generation
    /// running `command` under `policy`. `ticket` names the request in its outcome.
    Reload {
        ticket: u64,
        policy: Box<Policy>,
        command: CommandId,
    },
    /// A reload that could not even begin (e.g. the config file is invalid).
    ReloadRefused { ticket: u64, reason: String },
    /// `sheepdog replace SLOT`: the ready worker of the slot is replaced,
    /// replacement first.
    Replace(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Nothing happened but time passed.
    Tick,
    /// The shell forked the worker `order` asked for, `at` that time (a
    /// pass that forks many on a busy machine may end well after it began:
    /// each worker's clock starts at its own fork).
    Spawned {
        order: SpawnOrder,
        pid: Pid,
        at: Moment,
    },
    /// The shell could not fork it.
    SpawnFailed {
        order: SpawnOrder,
        reason: String,
    },
    /// `waitpid` reported a child's end.
    Exited {
        pid: Pid,
        status: ExitStatus,
    },
    /// A worker (or its descendant) said something on its channel.
    Message {
        pid: Pid,
        message: WorkerMessage,
    },
    /// The memory of a worker's process tree, as `Action::Measure` asked.
    Measured {
        pid: Pid,
        bytes: u64,
    },
    /// What `Action::Inspect` found, for each worker asked about.
    Inspected(Vec<(Pid, Inspection)>),
    Request(Request),
    /// What `Action::CheckListeners` found: listeners that were shut down
    /// and listen again, and those that cannot (each said for the log).
    ListenersChecked {
        recovered: Vec<String>,
        lost: Vec<String>,
    },
    /// The listen queues, sampled with each listener check.
    QueuesSampled(Vec<super::tally::ListenQueue>),
    /// No new connection reaches the worker any more and its accept queue
    /// is empty, as `Action::Drain` asked.
    Drained {
        pid: Pid,
    },
    /// How many starting workers are running on a CPU, as
    /// `Action::SampleLoad` asked.
    LoadSampled {
        runnable: usize,
    },
}

/// What a look at a worker's process tree found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspection {
    /// It serves a passed socket: one is in an epoll set of its, or one of
    /// its threads waits in accept() on it (ports of its own beside it, an
    /// inspector's or an admin's, are its business).
    Serves,
    /// It listens on these TCP ports itself and shows no sign of serving
    /// the passed socket: no request to the flock's socket reaches it.
    Astray(Vec<String>),
    /// Neither, yet: still starting, or serving in a way that leaves no
    /// trace (a poll() or select() loop).
    Unknown,
}

/// What the supervisor tells systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upward {
    Ready,
    /// RELOADING=1; the shell adds MONOTONIC_USEC.
    Reloading,
    Status(String),
    Stopping,
    Watchdog,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Spawn(SpawnOrder),
    /// Send `signal` to the worker's process group.
    Signal {
        pid: Pid,
        signal: Signal,
    },
    /// Send no new connection to the worker any more, and report
    /// `Event::Drained` once its accept queue is empty: then it gets its
    /// stop signal, with nothing queued for it that a careless drain could drop.
    Drain {
        pid: Pid,
    },
    /// Send `message` (a heartbeat request) on the worker's Node IPC channel.
    Ping {
        pid: Pid,
        message: String,
    },
    /// Measure these workers' memory, `how`, and report `Event::Measured`;
    /// `limit` is what a worker may use (a tree over it is measured whole).
    Measure {
        pids: Vec<Pid>,
        how: MemoryMeasure,
        limit: Option<u64>,
    },
    /// Look for ports these workers listen on themselves (not the socket
    /// sheepdog passed) and report `Event::Inspected`.
    Inspect {
        pids: Vec<Pid>,
    },
    /// Count the starting workers running on a CPU now and report
    /// `Event::LoadSampled` (at least as many workers as CPUs are starting,
    /// and more are due).
    SampleLoad,
    /// Check that the shared listening sockets still listen (any process
    /// holding one can shut it down for everyone), listen again where the
    /// kernel allows it, and report `Event::ListenersChecked`.
    CheckListeners,
    Notify(Upward),
    /// A reload ended (or was refused): tell whoever waits on `ticket`.
    ReloadFinished {
        ticket: u64,
        ok: bool,
        message: String,
    },
    /// No worker will be started with this command any more: forget it.
    /// (Spawns asked for before it, in the same pass, still use it.)
    ReleaseCommand(CommandId),
    /// All workers are gone: exit the supervisor with this code, once the
    /// actions of this pass are done.
    Exit {
        code: i32,
        reason: String,
    },
}

/// What a worker said, over whichever channel it has (the shell parses
/// sd_notify datagrams and Node IPC lines into these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerMessage {
    /// `READY=1`, or `'ready'` over IPC.
    Ready,
    /// `WATCHDOG=1`, or any other IPC message (the reply to a ping).
    Heartbeat,
    /// `WATCHDOG=trigger`: the worker asks to be treated as hung.
    WatchdogTrigger,
    /// `STOPPING=1`, `'stopping'` or `{act: 'suicide'}`: it is leaving; start
    /// its replacement now.
    Stopping,
    Status(String),
    Errno(i32),
    /// The worker closed its Node IPC channel.
    ChannelClosed,
}

/// The policy the core applies; a projection of `Settings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub workers: usize,
    pub min_ready: usize,
    pub readiness: Readiness,
    pub channel: Channel,
    pub ready_delay: Duration,
    pub ready_timeout: Duration,
    pub heartbeat: Option<HeartbeatPolicy>,
    /// What node-ipc workers are pinged with; `{pid}` is the worker's pid.
    pub heartbeat_ping: String,
    pub memory_limit: Option<u64>,
    pub memory_interval: Duration,
    pub memory_measure: MemoryMeasure,
    pub max_surge: usize,
    /// The CPUs sheepdog may use: past this many workers starting at once,
    /// more start only while the machine has CPU to spare.
    #[serde(default = "usable_cpus")]
    pub cpus: usize,
    #[serde(with = "signal_name")]
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub restart: RestartPolicy,
    #[serde(flatten)]
    pub recycle: RecyclePolicy,
    /// systemd's WATCHDOG_USEC for sheepdog itself, when set.
    pub watchdog: Option<Duration>,
    /// How often the shared listeners are checked (`LISTENER_CHECK`; None
    /// in tests of other policies, to keep their deadlines their own).
    pub listener_check: Option<Duration>,
}

impl Policy {
    pub fn from_settings(settings: &Settings, watchdog: Option<Duration>) -> Policy {
        Policy {
            workers: settings.workers as usize,
            min_ready: settings.min_ready as usize,
            readiness: settings.readiness,
            channel: settings.channel,
            ready_delay: settings.ready_delay,
            ready_timeout: settings.ready_timeout,
            heartbeat: settings.heartbeat,
            heartbeat_ping: settings.heartbeat_ping.clone(),
            memory_limit: settings.memory.limit,
            memory_interval: settings.memory.interval,
            memory_measure: settings.memory.measure,
            max_surge: settings.max_surge as usize,
            cpus: usable_cpus(),
            stop_signal: settings.stop_signal,
            stop_timeout: settings.stop_timeout,
            restart: settings.restart.clone(),
            recycle: settings.recycle,
            watchdog,
            listener_check: Some(super::health::LISTENER_CHECK),
        }
    }
}

/// A signal written by its name ("SIGTERM").
mod signal_name {
    use std::str::FromStr;

    use nix::sys::signal::Signal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(signal: &Signal, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(signal.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Signal, D::Error> {
        let name = String::deserialize(deserializer)?;
        Signal::from_str(&name).map_err(|_| serde::de::Error::custom(format!("stop signal {name:?} is not a signal")))
    }
}

/// The CPUs this process may use (its affinity and cgroup quota), for
/// pacing a start: see `Flock`'s load gate.
pub fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Why a ready worker is being replaced, replacement first: it keeps
/// serving until a ready worker of its slot takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Retire {
    /// A reload rolls its slot onto the new generation.
    Reload,
    /// It belongs to a generation whose reload failed: back to the old one.
    ReloadAborted,
    /// Its process tree grew over the memory limit.
    MemoryLimit,
    /// It reached its `max_age`.
    MaxAge,
    /// Someone asked for it (`sheepdog replace`, a key in `top`).
    Requested,
}

impl fmt::Display for Retire {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Retire::Reload => "reload",
            Retire::ReloadAborted => "reload aborted",
            Retire::MemoryLimit => "memory limit",
            Retire::MaxAge => "max age",
            Retire::Requested => "request",
        })
    }
}

/// A failure sheepdog kills a worker for (with SIGKILL), counted as a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failure {
    /// A ready worker stopped heartbeating.
    Hung,
    /// Not ready within `ready_timeout`.
    NotReadyInTime,
    /// It sent WATCHDOG=trigger.
    Triggered,
    /// It said it is leaving before it was ready, or sooner than
    /// `min_uptime` after it started: a failed start, however polite.
    LeftEarly,
}

/// Why a worker is on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopCause {
    /// The supervisor is stopping.
    Shutdown,
    /// Its slot was retired by scaling down.
    ScaledDown,
    /// A ready worker of its slot took over.
    Replaced(Retire),
    /// It was starting in a generation that is no longer wanted (a reload
    /// began or was aborted meanwhile): nothing to keep it for.
    Superseded,
    /// It said it is leaving (STOPPING=1, 'stopping', `{act: 'suicide'}`).
    Leaving,
    /// Killed for a failure that was counted and logged when it was found.
    Failed(Failure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "is")]
pub enum WorkerState {
    Starting,
    Ready {
        since: Moment,
        /// Being replaced, replacement first; serving until then.
        retiring: Option<Retire>,
    },
    /// On its way out since `since`: SIGKILL follows after the stop timeout
    /// unless `killed` says it was already sent.
    Stopping {
        since: Moment,
        cause: StopCause,
        killed: bool,
    },
}

/// A row of the worker table; handed over as it is (fields added after
/// state format 1 carry a default, see `build::STATE_FORMAT`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    pub slot: usize,
    pub pid: Pid,
    pub generation: u32,
    pub started_at: Moment,
    pub state: WorkerState,
    pub last_heartbeat: Moment,
    /// Its process tree's memory, as last measured.
    pub memory: Option<u64>,
    /// The last STATUS= it sent.
    pub status: Option<String>,
    /// When it is due to be recycled by age (`max_age`), if it ever is.
    pub recycle_at: Option<Moment>,
    /// Ports it listens on itself instead of the socket sheepdog passed.
    pub listens_itself: Vec<String>,
    /// How many times it was looked at for such ports.
    pub inspections: u32,
    /// It was looked at since it became ready: only then can it count as
    /// serving the passed socket. (Absent from a state before it: a worker
    /// the binary before already judged is taken as looked at.)
    #[serde(default = "looked_at")]
    pub inspected: bool,
    /// Stopping, its stop signal held back until no new connection can
    /// reach it and its accept queue is empty (`Action::Drain`).
    #[serde(default)]
    pub draining: bool,
    /// Told, while it starts, what it has not said yet (not handed over: at
    /// worst said again by the next binary).
    #[serde(skip)]
    pub ready_hinted: bool,
}

fn looked_at() -> bool {
    true
}

impl Worker {
    pub fn is_stopping(&self) -> bool {
        matches!(self.state, WorkerState::Stopping { .. })
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.state, WorkerState::Ready { .. })
    }

    pub fn is_starting(&self) -> bool {
        self.state == WorkerState::Starting
    }

    /// Why it is being replaced, if it is.
    pub fn retiring(&self) -> Option<Retire> {
        match self.state {
            WorkerState::Ready { retiring, .. } => retiring,
            _ => None,
        }
    }

    /// Ready, looked at, and not found listening on a port of its own
    /// instead of the passed socket: it counts as serving the flock.
    pub fn serves(&self) -> bool {
        self.is_ready() && self.inspected && self.listens_itself.is_empty()
    }

    /// Ready, and not found listening on a port of its own: new connections
    /// may be sent its way (a worker that is stopping, starting or killed
    /// for hanging gets none).
    pub fn takes_connections(&self) -> bool {
        self.is_ready() && self.listens_itself.is_empty()
    }

    /// Ready and not being replaced: it holds its slot for good.
    pub fn serves_for_good(&self) -> bool {
        matches!(self.state, WorkerState::Ready { retiring: None, .. })
    }

    /// Starting, or ready and not being replaced: the slot needs nothing more.
    pub fn fills_slot(&self) -> bool {
        self.is_starting() || self.serves_for_good()
    }
}
