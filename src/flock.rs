//! The functional core: the worker table and every supervision decision.
//!
//! `Flock` performs no syscalls. The shell feeds it events (a worker exited, a
//! signal arrived, a spawn succeeded, time passed) together with the current
//! monotonic time, and performs the actions it returns. Time is a value, so
//! every policy — backoff, crash loop, stop timeout, scaling — is tested below
//! with a fake clock, instantly and without processes.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use nix::sys::signal::Signal;

use crate::config::{MAX_WORKERS, RestartPolicy, Settings};
use crate::units::format_duration;

pub type Pid = i32;

/// How a worker process ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signaled(Signal),
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exited with code {code}"),
            ExitStatus::Signaled(signal) => write!(f, "was killed by {}", signal.as_str()),
        }
    }
}

/// Requests that reach the supervisor as signals (or, later, the control socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM / SIGINT: stop every worker gracefully, then exit 0.
    Stop,
    /// SIGTTIN: one worker more.
    ScaleUp,
    /// SIGTTOU: one worker less.
    ScaleDown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Nothing happened but time passed.
    Tick,
    /// The shell forked the worker that `Action::Spawn` asked for.
    Spawned {
        slot: usize,
        pid: Pid,
    },
    /// The shell could not fork it.
    SpawnFailed {
        slot: usize,
        reason: String,
    },
    /// `waitpid` reported a child's end.
    Exited {
        pid: Pid,
        status: ExitStatus,
    },
    Request(Request),
}

/// What the supervisor tells systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upward {
    Ready,
    Status(String),
    Stopping,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Spawn {
        slot: usize,
        generation: u32,
    },
    /// Send `signal` to the worker's process group.
    Signal {
        pid: Pid,
        signal: Signal,
    },
    Notify(Upward),
    /// All workers are gone: exit the supervisor with this code.
    Exit {
        code: i32,
        reason: String,
    },
}

/// The policy the core applies; a projection of `Settings`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub workers: usize,
    pub min_ready: usize,
    pub ready_delay: Duration,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub restart: RestartPolicy,
}

impl Policy {
    pub fn from_settings(settings: &Settings) -> Policy {
        Policy {
            workers: settings.workers as usize,
            min_ready: settings.min_ready as usize,
            ready_delay: settings.ready_delay,
            stop_signal: settings.stop_signal,
            stop_timeout: settings.stop_timeout,
            restart: settings.restart.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Starting,
    Ready {
        since: Instant,
    },
    /// The stop signal was sent at `since`; SIGKILL follows after the stop
    /// timeout unless `killed` says it was already sent.
    Stopping {
        since: Instant,
        killed: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Worker {
    pub slot: usize,
    pub pid: Pid,
    pub generation: u32,
    pub started_at: Instant,
    pub state: WorkerState,
}

/// A slot is a stable worker identity (`SHEEPDOG_WORKER_ID`) that outlives the
/// processes filling it.
#[derive(Debug, Clone)]
struct Slot {
    /// When the slot may be filled again (now for a fresh slot, later after a crash).
    next_spawn: Instant,
    /// A spawn was requested and its outcome is not known yet.
    spawning: bool,
    /// Unrequested exits in a row: the exponent of the backoff.
    failures: u32,
    restarts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Running,
    ShuttingDown { code: i32, reason: String },
}

/// Spawns are rationed by a token bucket, so that no combination of crashing
/// workers and scaling requests turns into a fork storm.
#[derive(Debug, Clone)]
struct SpawnBudget {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    updated: Instant,
}

impl SpawnBudget {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
    }

    fn next_token_at(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.updated + Duration::from_secs_f64(missing / self.per_second)
    }
}

pub struct Flock {
    policy: Policy,
    desired: usize,
    generation: u32,
    workers: Vec<Worker>,
    slots: Vec<Slot>,
    /// Unrequested exits within the restart window, oldest first.
    recent_failures: VecDeque<Instant>,
    total_restarts: u32,
    budget: SpawnBudget,
    phase: Phase,
    announced_ready: bool,
    last_status: String,
}

impl Flock {
    pub fn new(policy: Policy, now: Instant) -> Flock {
        let desired = policy.workers.clamp(1, MAX_WORKERS as usize);
        let per_second = policy.restart.max_spawn_rate.max(1) as f64;
        // The first start may fork the whole flock at once.
        let capacity = (desired as f64).max(per_second);
        Flock {
            desired,
            generation: 1,
            workers: Vec::new(),
            slots: Vec::new(),
            recent_failures: VecDeque::new(),
            total_restarts: 0,
            budget: SpawnBudget {
                tokens: capacity,
                capacity,
                per_second,
                updated: now,
            },
            phase: Phase::Running,
            announced_ready: false,
            last_status: String::new(),
            policy,
        }
    }

    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    pub fn desired(&self) -> usize {
        self.desired
    }

    pub fn is_shutting_down(&self) -> bool {
        self.phase != Phase::Running
    }

    fn ready_count(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| matches!(w.state, WorkerState::Ready { .. }))
            .count()
    }

    fn min_ready(&self) -> usize {
        self.policy.min_ready.clamp(1, self.desired)
    }

    /// Applies one event, then reconciles the table with what is desired.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Tick => {}
            Event::Spawned { slot, pid } => self.on_spawned(now, slot, pid, &mut actions),
            Event::SpawnFailed { slot, reason } => {
                self.slot_mut(slot, now).spawning = false;
                warn!("worker {slot}: could not start: {reason}");
                self.on_failure(
                    now,
                    slot,
                    &mut actions,
                    &format!("worker {slot} could not start: {reason}"),
                );
            }
            Event::Exited { pid, status } => self.on_exit(now, pid, status, &mut actions),
            Event::Request(request) => self.on_request(now, request, &mut actions),
        }
        self.reconcile(now, &mut actions);
        actions
    }

    /// The earliest time at which `handle(Tick)` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut deadlines: Vec<Instant> = Vec::new();
        for worker in &self.workers {
            match worker.state {
                WorkerState::Starting if self.phase == Phase::Running => {
                    deadlines.push(worker.started_at + self.policy.ready_delay)
                }
                WorkerState::Ready { since } if self.slots[worker.slot].failures > 0 => {
                    deadlines.push(since + self.policy.restart.backoff_reset)
                }
                WorkerState::Stopping {
                    since,
                    killed: false,
                } => deadlines.push(since + self.policy.stop_timeout),
                _ => {}
            }
        }
        if self.phase == Phase::Running {
            for (slot, state) in self.slots.iter().enumerate().take(self.desired) {
                if !state.spawning && !self.slot_is_filled(slot) {
                    deadlines.push(state.next_spawn.max(self.budget.next_token_at()));
                }
            }
        }
        deadlines.into_iter().min()
    }

    fn slot_mut(&mut self, slot: usize, now: Instant) -> &mut Slot {
        while self.slots.len() <= slot {
            self.slots.push(Slot {
                next_spawn: now,
                spawning: false,
                failures: 0,
                restarts: 0,
            });
        }
        &mut self.slots[slot]
    }

    /// A slot is filled by a worker that is not on its way out.
    fn slot_is_filled(&self, slot: usize) -> bool {
        self.workers
            .iter()
            .any(|w| w.slot == slot && !matches!(w.state, WorkerState::Stopping { .. }))
    }

    fn on_spawned(&mut self, now: Instant, slot: usize, pid: Pid, actions: &mut Vec<Action>) {
        self.slot_mut(slot, now).spawning = false;
        debug!(
            "worker {slot} (pid {pid}) started, generation {}",
            self.generation
        );
        let mut state = WorkerState::Starting;
        if self.phase != Phase::Running {
            // Forked in the same pass that began a shutdown: it stops like the rest.
            state = WorkerState::Stopping {
                since: now,
                killed: false,
            };
            actions.push(Action::Signal {
                pid,
                signal: self.policy.stop_signal,
            });
        }
        self.workers.push(Worker {
            slot,
            pid,
            generation: self.generation,
            started_at: now,
            state,
        });
    }

    fn on_exit(&mut self, now: Instant, pid: Pid, status: ExitStatus, actions: &mut Vec<Action>) {
        let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
            // Orphaned descendants of workers are re-parented to us (we are a
            // child subreaper) and reaped here.
            debug!("reaped pid {pid}, not a worker ({status})");
            return;
        };
        let worker = self.workers.swap_remove(index);
        let uptime = seconds(now.saturating_duration_since(worker.started_at));
        let (slot, pid) = (worker.slot, worker.pid);
        match worker.state {
            WorkerState::Stopping { since, .. } => {
                let took = seconds(now.saturating_duration_since(since));
                info!("worker {slot} (pid {pid}) stopped: {status} after {took} of draining");
            }
            _ if self.phase != Phase::Running => {
                info!("worker {slot} (pid {pid}) {status} during shutdown");
            }
            _ => {
                let was_ready = if matches!(worker.state, WorkerState::Ready { .. }) {
                    ""
                } else {
                    " before it was ready"
                };
                let what = format!("worker {slot} (pid {pid}) {status} after {uptime}{was_ready}");
                self.on_failure(now, slot, actions, &what);
            }
        }
    }

    /// An unrequested end of a worker: back off, and break a crash loop.
    fn on_failure(&mut self, now: Instant, slot: usize, actions: &mut Vec<Action>, what: &str) {
        if self.phase != Phase::Running {
            return;
        }
        let policy = self.policy.restart.clone();
        self.recent_failures.push_back(now);
        while let Some(&oldest) = self.recent_failures.front() {
            if now.saturating_duration_since(oldest) > policy.window {
                self.recent_failures.pop_front();
            } else {
                break;
            }
        }
        if self.recent_failures.len() > policy.max_restarts as usize {
            let reason = format!(
                "crash loop: {} unrequested worker exits within {} (max_restarts = {}); last: {what}",
                self.recent_failures.len(),
                format_duration(policy.window),
                policy.max_restarts
            );
            error!("{what}; giving up");
            self.begin_shutdown(now, 1, reason, actions);
            return;
        }
        self.total_restarts += 1;
        let state = self.slot_mut(slot, now);
        let delay = backoff(&policy, state.failures);
        state.failures += 1;
        state.restarts += 1;
        state.next_spawn = now + delay;
        if slot < self.desired {
            warn!("{what}; restarting in {}", format_duration(delay));
        } else {
            warn!("{what}; not restarted (slot retired)");
        }
    }

    fn on_request(&mut self, now: Instant, request: Request, actions: &mut Vec<Action>) {
        match (request, &self.phase) {
            (Request::Stop, Phase::Running) => {
                info!(
                    "stopping {} workers (stop signal {}, timeout {})",
                    self.workers.len(),
                    self.policy.stop_signal.as_str(),
                    format_duration(self.policy.stop_timeout)
                );
                self.begin_shutdown(now, 0, "stopped on request".into(), actions);
            }
            (Request::Stop, Phase::ShuttingDown { .. }) => {
                warn!(
                    "second stop request: killing the remaining {} workers now",
                    self.workers.len()
                );
                for worker in &mut self.workers {
                    if !matches!(worker.state, WorkerState::Stopping { killed: true, .. }) {
                        worker.state = WorkerState::Stopping {
                            since: now,
                            killed: true,
                        };
                        actions.push(Action::Signal {
                            pid: worker.pid,
                            signal: Signal::SIGKILL,
                        });
                    }
                }
            }
            (Request::ScaleUp, Phase::Running) => {
                if self.desired < MAX_WORKERS as usize {
                    self.desired += 1;
                    let slot = self.desired - 1;
                    let state = self.slot_mut(slot, now);
                    state.next_spawn = state.next_spawn.max(now);
                    info!("scaling up to {} workers", self.desired);
                } else {
                    warn!("already at the maximum of {MAX_WORKERS} workers");
                }
            }
            (Request::ScaleDown, Phase::Running) => {
                if self.desired > 1 {
                    self.desired -= 1;
                    info!("scaling down to {} workers", self.desired);
                } else {
                    warn!("not scaling below 1 worker");
                }
            }
            (_, Phase::ShuttingDown { .. }) => debug!("ignoring {request:?} during shutdown"),
        }
    }

    fn begin_shutdown(
        &mut self,
        now: Instant,
        code: i32,
        reason: String,
        actions: &mut Vec<Action>,
    ) {
        self.phase = Phase::ShuttingDown { code, reason };
        actions.push(Action::Notify(Upward::Stopping));
        for worker in &mut self.workers {
            if !matches!(worker.state, WorkerState::Stopping { .. }) {
                worker.state = WorkerState::Stopping {
                    since: now,
                    killed: false,
                };
                actions.push(Action::Signal {
                    pid: worker.pid,
                    signal: self.policy.stop_signal,
                });
            }
        }
    }

    fn reconcile(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.escalate_stops(now, actions);
        if let Phase::ShuttingDown { code, reason } = &self.phase {
            if self.workers.is_empty() && !self.slots.iter().any(|s| s.spawning) {
                actions.push(Action::Exit {
                    code: *code,
                    reason: reason.clone(),
                });
            }
            self.update_status(actions);
            return;
        }
        self.promote_ready(now);
        self.retire_surplus(now, actions);
        self.fill_slots(now, actions);
        if !self.announced_ready && self.ready_count() >= self.min_ready() {
            self.announced_ready = true;
            info!("ready: {}/{} workers", self.ready_count(), self.desired);
            actions.push(Action::Notify(Upward::Ready));
        }
        self.update_status(actions);
    }

    /// SIGKILL for workers still there a stop timeout after their stop signal.
    fn escalate_stops(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let timeout = self.policy.stop_timeout;
        for worker in &mut self.workers {
            if let WorkerState::Stopping {
                since,
                killed: false,
            } = worker.state
                && now.saturating_duration_since(since) >= timeout
            {
                warn!(
                    "worker {} (pid {}) did not stop within {}; sending SIGKILL",
                    worker.slot,
                    worker.pid,
                    format_duration(timeout)
                );
                worker.state = WorkerState::Stopping {
                    since,
                    killed: true,
                };
                actions.push(Action::Signal {
                    pid: worker.pid,
                    signal: Signal::SIGKILL,
                });
            }
        }
    }

    fn promote_ready(&mut self, now: Instant) {
        let (ready_delay, backoff_reset) =
            (self.policy.ready_delay, self.policy.restart.backoff_reset);
        for worker in &mut self.workers {
            match worker.state {
                WorkerState::Starting
                    if now.saturating_duration_since(worker.started_at) >= ready_delay =>
                {
                    debug!("worker {} (pid {}) is ready", worker.slot, worker.pid);
                    worker.state = WorkerState::Ready { since: now };
                }
                WorkerState::Ready { since }
                    if now.saturating_duration_since(since) >= backoff_reset =>
                {
                    self.slots[worker.slot].failures = 0;
                }
                _ => {}
            }
        }
    }

    /// Stops the workers of slots above the desired count (after a scale-down).
    fn retire_surplus(&mut self, now: Instant, actions: &mut Vec<Action>) {
        for worker in &mut self.workers {
            if worker.slot >= self.desired && !matches!(worker.state, WorkerState::Stopping { .. })
            {
                info!(
                    "worker {} (pid {}) retired by scale-down; sending {}",
                    worker.slot,
                    worker.pid,
                    self.policy.stop_signal.as_str()
                );
                worker.state = WorkerState::Stopping {
                    since: now,
                    killed: false,
                };
                actions.push(Action::Signal {
                    pid: worker.pid,
                    signal: self.policy.stop_signal,
                });
            }
        }
    }

    fn fill_slots(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.budget.refill(now);
        for slot in 0..self.desired {
            let state = self.slot_mut(slot, now).clone();
            if state.spawning || state.next_spawn > now || self.slot_is_filled(slot) {
                continue;
            }
            if self.budget.tokens < 1.0 {
                debug!(
                    "spawn rate limit reached ({}/s); slot {slot} waits",
                    self.policy.restart.max_spawn_rate
                );
                break;
            }
            self.budget.tokens -= 1.0;
            self.slots[slot].spawning = true;
            actions.push(Action::Spawn {
                slot,
                generation: self.generation,
            });
        }
    }

    /// One line for `systemctl status`, sent when it changes.
    fn status_line(&self) -> String {
        match &self.phase {
            Phase::Running => format!(
                "{}/{} ready · {} restarts",
                self.ready_count(),
                self.desired,
                self.total_restarts
            ),
            Phase::ShuttingDown { code: 0, .. } => {
                format!("stopping · {} workers left", self.workers.len())
            }
            Phase::ShuttingDown { reason, .. } => {
                format!("failed · {} workers left · {reason}", self.workers.len())
            }
        }
    }

    fn update_status(&mut self, actions: &mut Vec<Action>) {
        let status = self.status_line();
        if status != self.last_status {
            self.last_status = status.clone();
            actions.push(Action::Notify(Upward::Status(status)));
        }
    }
}

/// `backoff_initial · 2^failures`, capped at `backoff_max`.
fn backoff(policy: &RestartPolicy, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.min(30));
    policy
        .backoff_initial
        .saturating_mul(factor)
        .min(policy.backoff_max)
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy(workers: usize) -> Policy {
        Policy {
            workers,
            min_ready: workers,
            ready_delay: 1000 * MS,
            stop_signal: Signal::SIGTERM,
            stop_timeout: 5000 * MS,
            restart: RestartPolicy {
                max_restarts: 5,
                window: Duration::from_secs(60),
                backoff_initial: 100 * MS,
                backoff_max: 1000 * MS,
                backoff_reset: Duration::from_secs(10),
                max_spawn_rate: 100,
            },
        }
    }

    /// A flock driven by a fake clock, with a fake pid allocator standing in
    /// for fork.
    struct Harness {
        flock: Flock,
        t0: Instant,
        now: Instant,
        next_pid: Pid,
        log: Vec<Action>,
    }

    impl Harness {
        fn new(policy: Policy) -> Harness {
            let t0 = Instant::now();
            Harness {
                flock: Flock::new(policy, t0),
                t0,
                now: t0,
                next_pid: 100,
                log: Vec::new(),
            }
        }

        /// Feeds an event, performs spawns as a successful fork would, and
        /// returns every action taken (spawns included).
        fn feed(&mut self, event: Event) -> Vec<Action> {
            let mut taken = Vec::new();
            let mut queue = VecDeque::from(self.flock.handle(self.now, event));
            while let Some(action) = queue.pop_front() {
                if let Action::Spawn { slot, .. } = action {
                    self.next_pid += 1;
                    queue.extend(self.flock.handle(
                        self.now,
                        Event::Spawned {
                            slot,
                            pid: self.next_pid,
                        },
                    ));
                }
                taken.push(action);
            }
            self.log.extend(taken.clone());
            taken
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
        fn run_until(&mut self, until: Duration) -> Vec<Action> {
            let mut all = Vec::new();
            while let Some(deadline) = self.flock.next_deadline() {
                if deadline > self.t0 + until {
                    break;
                }
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
                Action::Spawn { slot, .. } => Some(*slot),
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

    #[test]
    fn starts_every_slot_at_once() {
        let mut h = Harness::new(policy(4));
        assert_eq!(spawns(&h.start()), vec![0, 1, 2, 3]);
        assert_eq!(h.flock.workers().len(), 4);
        assert_eq!(h.flock.next_deadline(), Some(h.t0 + 1000 * MS));
    }

    #[test]
    fn ready_is_announced_only_once_min_ready_workers_are_ready() {
        let mut h = Harness::new(policy(2));
        assert!(!ready_sent(&h.start()));
        assert!(!ready_sent(&h.at(999 * MS)));
        let actions = h.at(1000 * MS);
        assert!(ready_sent(&actions));
        assert_eq!(statuses(&actions), vec!["2/2 ready · 0 restarts"]);
        assert!(!ready_sent(&h.at(2000 * MS)), "READY=1 is sent once");
    }

    #[test]
    fn min_ready_below_workers_announces_earlier() {
        let mut p = policy(2);
        p.min_ready = 1;
        let mut h = Harness::new(p);
        h.start();
        let late = h.pid_of(1);
        h.exit(late, ExitStatus::Code(1));
        assert!(ready_sent(&h.at(1000 * MS)));
    }

    #[test]
    fn crashed_worker_is_replaced_in_the_same_slot_after_backoff() {
        let mut h = Harness::new(policy(2));
        h.start();
        h.at(2000 * MS);
        let old = h.pid_of(1);
        assert!(spawns(&h.exit(old, ExitStatus::Signaled(Signal::SIGKILL))).is_empty());
        assert_eq!(h.flock.next_deadline(), Some(h.now + 100 * MS));
        assert_eq!(spawns(&h.at(2100 * MS)), vec![1]);
        assert_ne!(h.pid_of(1), old);
        assert_eq!(statuses(&h.log).last().unwrap(), "1/2 ready · 1 restarts");
    }

    #[test]
    fn backoff_doubles_per_failure_up_to_the_cap_then_resets_after_a_stable_run() {
        let mut p = policy(1);
        p.restart.max_restarts = 100;
        let mut h = Harness::new(p);
        h.start();
        let mut delays = Vec::new();
        for _ in 0..6 {
            let crashed_at = h.now;
            h.exit(h.pid_of(0), ExitStatus::Code(1));
            let respawn = h.flock.next_deadline().unwrap();
            delays.push((respawn - crashed_at).as_millis());
            h.now = respawn;
            assert_eq!(spawns(&h.feed(Event::Tick)), vec![0]);
        }
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);

        // Ready for backoff_reset (10 s): the next crash starts from the bottom again.
        let start = h.now - h.t0;
        h.run_until(start + 1000 * MS + Duration::from_secs(10));
        let crashed_at = h.now;
        h.exit(h.pid_of(0), ExitStatus::Code(1));
        assert_eq!(h.flock.next_deadline().unwrap() - crashed_at, 100 * MS);
    }

    #[test]
    fn a_crash_loop_stops_the_flock_and_exits_non_zero() {
        let mut h = Harness::new(policy(2));
        h.start();
        let mut exits = 0;
        let mut outcome = None;
        for _ in 0..50 {
            for slot in 0..2 {
                if let Some(w) = h
                    .flock
                    .workers()
                    .iter()
                    .find(|w| w.slot == slot && w.state == WorkerState::Starting)
                {
                    let pid = w.pid;
                    exits += 1;
                    h.exit(pid, ExitStatus::Code(3));
                }
            }
            let next = h.flock.next_deadline();
            let actions = match next {
                Some(deadline) => {
                    h.now = deadline;
                    h.feed(Event::Tick)
                }
                None => Vec::new(),
            };
            outcome = actions.iter().chain(h.log.iter()).find_map(|a| match a {
                Action::Exit { code, reason } => Some((*code, reason.clone())),
                _ => None,
            });
            if outcome.is_some() || h.flock.workers().is_empty() && h.flock.is_shutting_down() {
                break;
            }
        }
        // max_restarts = 5: the 6th unrequested exit in the window is the verdict.
        assert_eq!(exits, 6);
        let stopping = h.log.contains(&Action::Notify(Upward::Stopping));
        assert!(stopping);
        // The surviving worker is stopped gracefully, then the supervisor exits 1.
        let survivor = h.flock.workers().first().map(|w| w.pid);
        if let Some(pid) = survivor {
            assert!(signals(&h.log).contains(&(pid, Signal::SIGTERM)));
            let actions = h.exit(pid, ExitStatus::Code(0));
            outcome = actions.iter().find_map(|a| match a {
                Action::Exit { code, reason } => Some((*code, reason.clone())),
                _ => None,
            });
        }
        let (code, reason) = outcome.expect("the supervisor exits");
        assert_eq!(code, 1);
        assert!(
            reason
                .starts_with("crash loop: 6 unrequested worker exits within 1m (max_restarts = 5)"),
            "{reason}"
        );
        // Two initial spawns and two rounds of restarts; the 5th tolerated exit's
        // restart was still in backoff when the 6th exit broke the loop.
        assert_eq!(spawns(&h.log).len(), 2 + 4);
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let mut p = policy(1);
        p.restart.max_restarts = 2;
        p.restart.window = Duration::from_secs(10);
        let mut h = Harness::new(p);
        h.start();
        for round in 0..5u64 {
            h.run_until(Duration::from_secs(20 * round + 19));
            h.exit(h.pid_of(0), ExitStatus::Code(1));
            assert!(!h.flock.is_shutting_down(), "round {round}");
        }
    }

    #[test]
    fn stop_sends_the_stop_signal_then_sigkill_after_the_timeout_then_exits_zero() {
        let mut h = Harness::new(policy(2));
        h.start();
        h.at(2000 * MS);
        let (a, b) = (h.pid_of(0), h.pid_of(1));
        let actions = h.feed(Event::Request(Request::Stop));
        assert!(actions.contains(&Action::Notify(Upward::Stopping)));
        assert_eq!(
            signals(&actions),
            vec![(a, Signal::SIGTERM), (b, Signal::SIGTERM)]
        );
        assert_eq!(statuses(&actions), vec!["stopping · 2 workers left"]);

        // `a` drains and exits; `b` ignores SIGTERM.
        assert!(
            h.exit(a, ExitStatus::Code(0))
                .iter()
                .all(|a| !matches!(a, Action::Exit { .. }))
        );
        assert!(signals(&h.at(6999 * MS)).is_empty());
        assert_eq!(signals(&h.at(7000 * MS)), vec![(b, Signal::SIGKILL)]);
        let actions = h.exit(b, ExitStatus::Signaled(Signal::SIGKILL));
        assert!(actions.contains(&Action::Exit {
            code: 0,
            reason: "stopped on request".into()
        }));
        assert!(
            spawns(&h.log).len() == 2,
            "nothing is respawned during a stop"
        );
    }

    #[test]
    fn a_second_stop_request_kills_at_once() {
        let mut h = Harness::new(policy(1));
        h.start();
        let pid = h.pid_of(0);
        h.feed(Event::Request(Request::Stop));
        assert_eq!(
            signals(&h.feed(Event::Request(Request::Stop))),
            vec![(pid, Signal::SIGKILL)]
        );
    }

    #[test]
    fn stop_with_no_worker_alive_exits_at_once() {
        let mut h = Harness::new(policy(1));
        h.start();
        h.exit(h.pid_of(0), ExitStatus::Code(1));
        let actions = h.feed(Event::Request(Request::Stop));
        assert!(actions.contains(&Action::Exit {
            code: 0,
            reason: "stopped on request".into()
        }));
    }

    #[test]
    fn scale_up_adds_a_slot_and_scale_down_retires_the_highest() {
        let mut h = Harness::new(policy(2));
        h.start();
        assert_eq!(spawns(&h.feed(Event::Request(Request::ScaleUp))), vec![2]);
        assert_eq!(h.flock.desired(), 3);
        h.at(2000 * MS);
        assert_eq!(statuses(&h.log).last().unwrap(), "3/3 ready · 0 restarts");

        let top = h.pid_of(2);
        let actions = h.feed(Event::Request(Request::ScaleDown));
        assert_eq!(signals(&actions), vec![(top, Signal::SIGTERM)]);
        // A retired worker's exit is not a failure and is not replaced.
        let actions = h.exit(top, ExitStatus::Code(0));
        assert!(spawns(&actions).is_empty());
        assert_eq!(statuses(&h.log).last().unwrap(), "2/2 ready · 0 restarts");
        assert!(h.flock.next_deadline().is_none());
    }

    #[test]
    fn scale_down_never_goes_below_one() {
        let mut h = Harness::new(policy(1));
        h.start();
        assert!(signals(&h.feed(Event::Request(Request::ScaleDown))).is_empty());
        assert_eq!(h.flock.desired(), 1);
    }

    #[test]
    fn spawns_per_second_are_bounded_whatever_happens() {
        let mut p = policy(2);
        p.restart.max_spawn_rate = 5;
        p.restart.max_restarts = 10_000;
        p.restart.backoff_initial = 10 * MS;
        p.restart.backoff_max = 10 * MS;
        let mut h = Harness::new(p);
        h.start();
        // Crash every worker the moment it starts, and scale up 20 times, for 10 s.
        for _ in 0..20 {
            h.feed(Event::Request(Request::ScaleUp));
        }
        while h.now < h.t0 + Duration::from_secs(10) {
            let starting: Vec<Pid> = h.flock.workers().iter().map(|w| w.pid).collect();
            for pid in starting {
                h.exit(pid, ExitStatus::Code(1));
            }
            match h.flock.next_deadline() {
                Some(deadline) => {
                    h.now = deadline;
                    h.feed(Event::Tick);
                }
                None => break,
            }
        }
        // Burst capacity (max(workers, rate) = 5) plus 5 per second for 10 s.
        let total = spawns(&h.log).len();
        assert!(total <= 5 + 5 * 10 + 1, "{total} spawns");
        assert!(total >= 40, "the budget refills ({total} spawns)");
    }

    #[test]
    fn a_failed_fork_backs_off_like_a_crash() {
        let mut h = Harness::new(policy(1));
        let actions = h.flock.handle(h.now, Event::Tick);
        assert_eq!(spawns(&actions), vec![0]);
        h.flock.handle(
            h.now,
            Event::SpawnFailed {
                slot: 0,
                reason: "EAGAIN".into(),
            },
        );
        assert_eq!(h.flock.next_deadline(), Some(h.now + 100 * MS));
    }

    #[test]
    fn unknown_pids_are_ignored() {
        let mut h = Harness::new(policy(1));
        h.start();
        assert!(h.exit(99_999, ExitStatus::Code(0)).is_empty());
        assert_eq!(h.flock.workers().len(), 1);
    }

    #[test]
    fn backoff_sequence() {
        let p = policy(1).restart;
        let seq: Vec<u128> = (0..6).map(|n| backoff(&p, n).as_millis()).collect();
        assert_eq!(seq, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(&p, 1000), 1000 * MS);
    }
}
