//! The core under a fake clock: a harness standing in for the shell, and
//! the policies' tests, one file per policy.

mod deadlines;
mod drain;
mod health;
mod lifecycle;
mod passes;
mod recycle;
mod reload;
mod restart;
mod sim;
mod snapshot;
mod tally;

use std::time::Duration;

use crate::clock::Moment;

use nix::sys::signal::Signal;

use super::restart::backoff;
use super::*;
use crate::config::{Channel, HeartbeatPolicy, MAX_WORKERS, MemoryMeasure, Readiness, RecyclePolicy, RestartPolicy};

const MS: Duration = Duration::from_millis(1);
/// More passes than any test needs: a loop that reaches it is stuck.
const MAX_PASSES: usize = 10_000;
/// More workers than any test starts (the largest scales up to MAX_WORKERS):
/// a policy that forks without end fails here, fast, rather than slowing
/// down with every worker it piles up.
const MOST_SPAWNS: i32 = MAX_WORKERS as i32 + 200;
/// The command the flock starts with; reloads bring their own.
const FIRST_COMMAND: CommandId = 1;
/// The fake's pids count up from here.
const FIRST_PID: Pid = 100;

fn policy(workers: usize) -> Policy {
    Policy {
        workers,
        min_ready: workers,
        readiness: Readiness::None,
        channel: Channel::None,
        ready_delay: 1000 * MS,
        ready_timeout: 3000 * MS,
        heartbeat: None,
        heartbeat_ping: "ping".into(),
        memory_limit: None,
        memory_interval: Duration::from_secs(3600),
        memory_measure: MemoryMeasure::Pss,
        max_surge: 1,
        cpus: 2,
        watchdog: None,
        stop_signal: Signal::SIGTERM,
        stop_timeout: 5000 * MS,
        restart: RestartPolicy {
            max_restarts: 5,
            window: Duration::from_secs(60),
            backoff_initial: 100 * MS,
            backoff_max: 1000 * MS,
            backoff_reset: Duration::from_secs(10),
            max_spawn_rate: 100,
            min_uptime: 500 * MS,
        },
        recycle: RecyclePolicy::default(),
        listener_check: None,
    }
}

/// What the core logged on this thread (each test runs on a thread of its
/// own), so that tests can hold the log to what happened.
mod captured {
    use std::cell::RefCell;

    thread_local! {
        static LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
        static MUTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Keeps nothing this thread logs from now on (a simulation's millions
    /// of passes would pile up their lines).
    pub fn mute() {
        MUTED.with(|m| m.set(true));
    }

    struct ThreadLog;

    impl log::Log for ThreadLog {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }

        fn log(&self, record: &log::Record) {
            if MUTED.with(std::cell::Cell::get) {
                return;
            }
            let line = format!("{} {}", record.level(), record.args());
            LINES.with(|lines| lines.borrow_mut().push(line));
        }

        fn flush(&self) {}
    }

    static INSTALL: std::sync::Once = std::sync::Once::new();

    pub fn install() {
        INSTALL.call_once(|| {
            let _ = log::set_boxed_logger(Box::new(ThreadLog));
            log::set_max_level(log::LevelFilter::Trace);
        });
    }

    /// The lines logged on this thread so far.
    pub fn lines() -> Vec<String> {
        LINES.with(|lines| lines.borrow().clone())
    }
}

/// The lines this test logged that contain `needle`.
fn logged(needle: &str) -> Vec<String> {
    captured::lines().into_iter().filter(|l| l.contains(needle)).collect()
}

/// A flock driven by a fake clock, with a fake pid allocator standing in
/// for fork.
/// The fake clock's start: any number does (a machine up for 1,000 s).
pub const T0: Moment = Moment::from_nanos(1_000_000_000_000);

struct Harness {
    flock: Flock,
    t0: Moment,
    now: Moment,
    next_pid: Pid,
    log: Vec<Action>,
    /// Starting workers running on a CPU, as a look at the load finds them.
    runnable: usize,
    /// What a look at a worker finds it listening on itself, by pid (none:
    /// no sign either way); a worker not in it serves the passed socket.
    astray: std::collections::HashMap<Pid, Vec<String>>,
    /// A drained queue is reported at once, as for a worker that shares
    /// its queue (false: the test says when, with `Event::Drained`).
    drains_at_once: bool,
}

impl Harness {
    fn new(policy: Policy) -> Harness {
        captured::install();
        let t0 = T0;
        Harness {
            flock: Flock::new(policy, FIRST_COMMAND, t0),
            t0,
            now: t0,
            next_pid: FIRST_PID,
            log: Vec::new(),
            runnable: 0,
            astray: std::collections::HashMap::new(),
            drains_at_once: true,
        }
    }

    /// Feeds an event, performs spawns as a successful fork would, and
    /// returns every action taken (spawns included).
    fn feed(&mut self, event: Event) -> Vec<Action> {
        self.feed_pass(vec![event])
    }

    /// Feeds what one pass of the loop read, as the shell does.
    fn feed_pass(&mut self, events: Vec<Event>) -> Vec<Action> {
        let mut taken = Vec::new();
        let mut actions = self.flock.handle_pass(self.now, events);
        while !actions.is_empty() {
            let mut next = Vec::new();
            let mut settle = false;
            for action in actions {
                for event in self.perform(vec![action], &mut taken) {
                    settle = true;
                    next.extend(self.flock.outcome(self.now, event));
                }
            }
            if settle {
                next.extend(self.flock.settle(self.now));
            }
            actions = next;
        }
        // Each event is a pass of its own here; the shell asks once per pass.
        taken.extend(self.flock.status_update());
        self.log.extend(taken.clone());
        taken
    }

    /// Performs `actions` as the shell would, into `taken`; returns what
    /// they led to, for the core.
    fn perform(&mut self, actions: Vec<Action>, taken: &mut Vec<Action>) -> Vec<Event> {
        let mut outcomes = Vec::new();
        for action in actions {
            assert!(taken.len() < MAX_PASSES, "one event set off endless actions");
            if let Action::Inspect { pids } = &action {
                let found = pids
                    .iter()
                    .map(|pid| match self.astray.get(pid) {
                        Some(own) if own.is_empty() => (*pid, Inspection::Unknown),
                        Some(own) => (*pid, Inspection::Astray(own.clone())),
                        None => (*pid, Inspection::Serves),
                    })
                    .collect();
                outcomes.push(Event::Inspected(found));
            }
            if let Action::Drain { pid } = action
                && self.drains_at_once
            {
                outcomes.push(Event::Drained { pid });
            }
            if action == Action::SampleLoad {
                let runnable = self.runnable;
                outcomes.push(Event::LoadSampled { runnable });
            }
            if let Action::Spawn(order) = action {
                self.next_pid += 1;
                assert!(self.next_pid < FIRST_PID + MOST_SPAWNS, "forks without end");
                outcomes.push(Event::Spawned {
                    order,
                    pid: self.next_pid,
                    at: self.now,
                });
            }
            taken.push(action);
        }
        outcomes
    }

    /// A harness whose flock is started and every worker ready.
    fn ready(policy: Policy) -> Harness {
        let mut h = Harness::new(policy);
        h.start();
        h.make_ready();
        h
    }

    /// A harness whose flock has run for 2 s (ready by delay, under `policy`).
    fn serving(policy: Policy) -> Harness {
        let mut h = Harness::new(policy);
        h.start();
        h.at(2000 * MS);
        h
    }

    /// The pids serving slots 0..n.
    fn serving_pids(&self, n: usize) -> Vec<Pid> {
        (0..n).map(|slot| self.pid_of(slot)).collect()
    }

    /// Ticks to `at` (since t0) and the pids then serving, slot by slot.
    fn serving_pids_after(&mut self, at: Duration) -> Vec<Pid> {
        self.at(at);
        self.serving_pids(self.flock.desired())
    }

    /// The worker started last.
    fn newest(&self) -> Pid {
        self.flock.workers().last().expect("a worker").pid
    }

    /// The pid of the worker of `slot` in `generation`, stopping or not.
    fn worker(&self, slot: usize, generation: u32) -> Pid {
        self.flock
            .workers()
            .iter()
            .find(|w| w.slot == slot && w.generation == generation)
            .map(|w| w.pid)
            .expect("a worker in that slot and generation")
    }

    fn start(&mut self) -> Vec<Action> {
        self.feed(Event::Tick)
    }

    /// Advances the clock to `at` (since t0) and ticks.
    fn at(&mut self, at: Duration) -> Vec<Action> {
        self.now = self.t0 + at;
        self.feed(Event::Tick)
    }

    /// Advances the clock deadline by deadline until `until`, as the poll
    /// loop would, collecting all actions.
    /// Bounded: a policy whose deadline never moves on fails the test
    /// rather than hanging it.
    fn run_until(&mut self, until: Duration) -> Vec<Action> {
        let mut all = Vec::new();
        let mut passes = 0;
        while let Some(deadline) = self.flock.next_deadline() {
            if deadline > self.t0 + until {
                break;
            }
            passes += 1;
            assert!(passes < MAX_PASSES, "the next deadline does not move on: {deadline:?}");
            self.now = deadline.max(self.now);
            all.extend(self.feed(Event::Tick));
        }
        self.now = self.t0 + until;
        all.extend(self.feed(Event::Tick));
        all
    }

    fn exit(&mut self, pid: Pid, status: ExitStatus) -> Vec<Action> {
        self.feed(Event::Exited { pid, status })
    }

    fn pid_of(&self, slot: usize) -> Pid {
        self.flock
            .workers()
            .iter()
            .find(|w| w.slot == slot && !matches!(w.state, WorkerState::Stopping { .. }))
            .map(|w| w.pid)
            .expect("slot is filled")
    }
}

fn spawns(actions: &[Action]) -> Vec<usize> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn(order) => Some(order.slot),
            _ => None,
        })
        .collect()
}

fn signals(actions: &[Action]) -> Vec<(Pid, Signal)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Signal { pid, signal } => Some((*pid, *signal)),
            _ => None,
        })
        .collect()
}

fn statuses(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Notify(Upward::Status(s)) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn ready_sent(actions: &[Action]) -> bool {
    actions.contains(&Action::Notify(Upward::Ready))
}

/// `workers` with heartbeats over Node IPC (`interval`, `timeout`), ready
/// by delay unless the test says otherwise.
fn ipc_policy(workers: usize, interval: Duration, timeout: Duration) -> Policy {
    let mut p = policy(workers);
    p.channel = Channel::NodeIpc;
    p.heartbeat = Some(HeartbeatPolicy { interval, timeout });
    p
}

/// One worker; more than `max_restarts` failures within `window` is a crash loop.
fn crash_limit(max_restarts: u32, window: Duration) -> Policy {
    let mut p = policy(1);
    p.restart.max_restarts = max_restarts;
    p.restart.window = window;
    p
}

fn notify_policy(workers: usize) -> Policy {
    let mut p = policy(workers);
    p.readiness = Readiness::Notify;
    p.channel = Channel::Notify;
    p.heartbeat = Some(HeartbeatPolicy {
        interval: 1000 * MS,
        timeout: 3000 * MS,
    });
    p
}

impl Harness {
    fn say(&mut self, pid: Pid, message: WorkerMessage) -> Vec<Action> {
        self.feed(Event::Message { pid, message })
    }

    fn make_ready(&mut self) {
        let starting: Vec<Pid> = self
            .flock
            .workers()
            .iter()
            .filter(|w| w.state == WorkerState::Starting)
            .map(|w| w.pid)
            .collect();
        for pid in starting {
            self.say(pid, WorkerMessage::Ready);
        }
    }

    fn ready_pids(&self) -> Vec<Pid> {
        self.flock
            .workers()
            .iter()
            .filter(|w| w.is_ready())
            .map(|w| w.pid)
            .collect()
    }
}

fn reload(h: &mut Harness, ticket: u64, policy: Policy) -> Vec<Action> {
    h.feed(Event::Request(Request::Reload {
        ticket,
        policy: Box::new(policy),
        command: command_of(ticket),
    }))
}

/// The command a test reload with `ticket` brings.
fn command_of(ticket: u64) -> CommandId {
    100 + ticket
}

fn finished(actions: &[Action]) -> Option<(u64, bool, String)> {
    actions.iter().find_map(|a| match a {
        Action::ReloadFinished { ticket, ok, message } => Some((*ticket, *ok, message.clone())),
        _ => None,
    })
}

fn spawned_generations(actions: &[Action]) -> Vec<(usize, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn(order) => Some((order.slot, order.generation)),
            _ => None,
        })
        .collect()
}

fn reload_policy(workers: usize) -> Policy {
    let mut p = notify_policy(workers);
    p.heartbeat = None;
    p.ready_timeout = 5000 * MS;
    p
}

/// Makes ready every starting worker, one at a time, checking after each
/// step that no fewer than `min_ready` workers were ready.
fn ready_one_by_one(h: &mut Harness, min_ready: usize) -> Vec<Action> {
    let mut all = Vec::new();
    let mut passes = 0;
    while let Some(pid) = h
        .flock
        .workers()
        .iter()
        .find(|w| w.state == WorkerState::Starting)
        .map(|w| w.pid)
    {
        passes += 1;
        assert!(passes < MAX_PASSES, "workers keep starting");
        all.extend(h.say(pid, WorkerMessage::Ready));
        assert!(
            h.ready_pids().len() >= min_ready,
            "fewer than {min_ready} ready workers"
        );
    }
    all
}
