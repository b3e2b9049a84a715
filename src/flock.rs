//! The functional core: the worker table and every supervision decision.
//!
//! `Flock` performs no syscalls. The shell feeds it events (a worker exited or
//! spoke, a signal arrived, a spawn succeeded, memory was measured, time
//! passed) together with the current monotonic time, and performs the actions
//! it returns. Time is a value, so every policy — backoff, crash loop, stop
//! timeout, scaling, readiness, heartbeats, memory, the watchdog relay — is
//! tested below with a fake clock, instantly and without processes.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use nix::sys::signal::Signal;

use crate::channel::WorkerMessage;
use crate::config::{HeartbeatPolicy, MAX_WORKERS, MemoryMeasure, Readiness, RestartPolicy, Settings};
use crate::units::{format_duration, format_size};

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
    /// running under `policy`. `ticket` names the request in its outcome.
    Reload { ticket: u64, policy: Box<Policy> },
    /// A reload that could not even begin (e.g. the config file is invalid).
    ReloadRefused { ticket: u64, reason: String },
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
    Request(Request),
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
    Spawn {
        slot: usize,
        generation: u32,
    },
    /// Send `signal` to the worker's process group.
    Signal {
        pid: Pid,
        signal: Signal,
    },
    /// Send a heartbeat request on the worker's Node IPC channel.
    Ping {
        pid: Pid,
    },
    /// Measure these workers' memory and report `Event::Measured`.
    Measure {
        pids: Vec<Pid>,
    },
    Notify(Upward),
    /// A reload ended (or was refused): tell whoever waits on `ticket`.
    ReloadFinished {
        ticket: u64,
        ok: bool,
        message: String,
    },
    /// All workers are gone: exit the supervisor with this code.
    Exit {
        code: i32,
        reason: String,
    },
}

/// The policy the core applies; a projection of `Settings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub workers: usize,
    pub min_ready: usize,
    pub readiness: Readiness,
    pub ready_delay: Duration,
    pub ready_timeout: Duration,
    pub heartbeat: Option<HeartbeatPolicy>,
    pub memory_limit: Option<u64>,
    pub memory_interval: Duration,
    pub memory_measure: MemoryMeasure,
    pub max_surge: usize,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub restart: RestartPolicy,
    /// systemd's WATCHDOG_USEC for sheepdog itself, when set.
    pub watchdog: Option<Duration>,
}

impl Policy {
    pub fn from_settings(settings: &Settings, watchdog: Option<Duration>) -> Policy {
        Policy {
            workers: settings.workers as usize,
            min_ready: settings.min_ready as usize,
            readiness: settings.readiness,
            ready_delay: settings.ready_delay,
            ready_timeout: settings.ready_timeout,
            heartbeat: settings.heartbeat,
            memory_limit: settings.memory.limit,
            memory_interval: settings.memory.interval,
            memory_measure: settings.memory.measure,
            max_surge: settings.max_surge as usize,
            stop_signal: settings.stop_signal,
            stop_timeout: settings.stop_timeout,
            restart: settings.restart.clone(),
            watchdog,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Starting,
    Ready {
        since: Instant,
    },
    /// On its way out since `since`: asked with the stop signal, or leaving on
    /// its own. SIGKILL follows after the stop timeout unless `killed` says it
    /// was already sent.
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
    pub last_heartbeat: Instant,
    /// Its process tree's memory, as last measured.
    pub memory: Option<u64>,
    /// Still serving, but to be stopped once a replacement in its slot is ready.
    pub retiring: Option<&'static str>,
    /// The last STATUS= it sent.
    pub status: Option<String>,
    /// Killed by sheepdog for a failure already counted and logged.
    condemned: bool,
}

impl Worker {
    fn is_stopping(&self) -> bool {
        matches!(self.state, WorkerState::Stopping { .. })
    }

    fn is_ready(&self) -> bool {
        matches!(self.state, WorkerState::Ready { .. })
    }

    /// Starting, or ready and not being replaced: the slot needs nothing more.
    fn fills_slot(&self) -> bool {
        match self.state {
            WorkerState::Starting => true,
            WorkerState::Ready { .. } => self.retiring.is_none(),
            WorkerState::Stopping { .. } => false,
        }
    }
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

/// Periodic duties: pinging node-ipc workers, measuring memory, and pinging
/// systemd's watchdog.
#[derive(Debug, Clone)]
struct Timers {
    next_ping: Instant,
    next_measure: Instant,
    next_watchdog: Instant,
    /// When the loop last ran, for the stall guard.
    last_pass: Instant,
    withholding_watchdog: bool,
}

/// A rolling reload in progress: workers of older generations are replaced
/// slot by slot by workers of `generation`.
#[derive(Debug, Clone)]
struct Rollout {
    ticket: u64,
    generation: u32,
    from_generation: u32,
    started: Instant,
    /// What to go back to if the new generation fails to start.
    previous: Policy,
    previous_desired: usize,
}

/// How the last reload ended, for STATUS and `sheepdog status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    pub generation: u32,
    pub ok: bool,
    pub message: String,
}

pub struct Flock {
    policy: Policy,
    desired: usize,
    /// The generation new workers are started in.
    generation: u32,
    /// The highest generation ever started (generations are never reused).
    newest_generation: u32,
    rollout: Option<Rollout>,
    last_reload: Option<ReloadOutcome>,
    workers: Vec<Worker>,
    slots: Vec<Slot>,
    /// Unrequested exits within the restart window, oldest first.
    recent_failures: VecDeque<Instant>,
    total_restarts: u32,
    budget: SpawnBudget,
    timers: Timers,
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
            newest_generation: 1,
            rollout: None,
            last_reload: None,
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
            // Pinging or measuring a process that has just exec'd tells
            // nothing: the first of each comes one interval in.
            timers: Timers {
                next_ping: now + policy.heartbeat.map_or(Duration::ZERO, |h| h.interval),
                next_measure: now + policy.memory_interval,
                next_watchdog: now,
                last_pass: now,
                withholding_watchdog: false,
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

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The generation number the next reload will start.
    pub fn next_generation(&self) -> u32 {
        self.newest_generation + 1
    }

    /// The generation being rolled out, if a reload is in progress.
    pub fn reloading_to(&self) -> Option<u32> {
        self.rollout.as_ref().map(|r| r.generation)
    }

    pub fn last_reload(&self) -> Option<&ReloadOutcome> {
        self.last_reload.as_ref()
    }

    /// Restarts of `slot` so far (unrequested exits).
    pub fn slot_restarts(&self, slot: usize) -> u32 {
        self.slots.get(slot).map_or(0, |s| s.restarts)
    }

    pub fn total_restarts(&self) -> u32 {
        self.total_restarts
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn is_shutting_down(&self) -> bool {
        self.phase != Phase::Running
    }

    fn ready_count(&self) -> usize {
        self.workers.iter().filter(|w| w.is_ready()).count()
    }

    fn min_ready(&self) -> usize {
        self.policy.min_ready.clamp(1, self.desired)
    }

    /// At least `min_ready` workers ready (and so, where heartbeats are on,
    /// heartbeating: a silent one is killed before this is asked).
    pub fn is_healthy(&self) -> bool {
        self.ready_count() >= self.min_ready()
    }

    /// Applies one event, then reconciles the table with what is desired.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        self.guard_against_stalls(now);
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
            Event::Message { pid, message } => self.on_message(now, pid, message, &mut actions),
            Event::Measured { pid, bytes } => self.on_measured(pid, bytes),
            Event::Request(request) => self.on_request(now, request, &mut actions),
        }
        self.reconcile(now, &mut actions);
        actions
    }

    /// The earliest time at which `handle(Tick)` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut deadlines: Vec<Instant> = Vec::new();
        let running = self.phase == Phase::Running;
        for worker in &self.workers {
            match worker.state {
                WorkerState::Starting if running => deadlines.push(match self.policy.readiness {
                    Readiness::None => worker.started_at + self.policy.ready_delay,
                    _ => worker.started_at + self.policy.ready_timeout,
                }),
                WorkerState::Ready { since } if running => {
                    if self.slots[worker.slot].failures > 0 {
                        deadlines.push(since + self.policy.restart.backoff_reset);
                    }
                    if let Some(heartbeat) = self.policy.heartbeat {
                        deadlines.push(worker.last_heartbeat + heartbeat.timeout);
                    }
                }
                WorkerState::Stopping { since, killed: false } => deadlines.push(since + self.policy.stop_timeout),
                _ => {}
            }
        }
        if running {
            let filled = self.filled_slots();
            for (slot, state) in self.slots.iter().enumerate().take(self.desired) {
                if !state.spawning && !filled[slot] {
                    deadlines.push(state.next_spawn.max(self.budget.next_token_at()));
                }
            }
            if let Some(heartbeat) = self.policy.heartbeat {
                // Wake at least every interval, so that a long silence of the
                // loop can only mean the supervisor itself was stalled.
                deadlines.push(self.timers.last_pass + heartbeat.interval);
                if self.policy.readiness == Readiness::NodeIpc {
                    deadlines.push(self.timers.next_ping);
                }
            }
            if !self.workers.is_empty() {
                deadlines.push(self.timers.next_measure);
            }
        }
        if self.policy.watchdog.is_some() {
            deadlines.push(self.timers.next_watchdog);
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

    /// For each desired slot, whether a worker fills it: one pass over the
    /// table, since this runs on every loop pass.
    fn filled_slots(&self) -> Vec<bool> {
        let mut filled = vec![false; self.desired];
        for worker in &self.workers {
            if worker.fills_slot()
                && let Some(slot) = filled.get_mut(worker.slot)
            {
                *slot = true;
            }
        }
        filled
    }

    /// If the loop itself did not run for longer than a heartbeat timeout (the
    /// supervisor was SIGSTOPped or starved), the silence is ours, not the
    /// workers': give every worker a fresh timeout rather than killing all.
    fn guard_against_stalls(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.timers.last_pass);
        self.timers.last_pass = now;
        let Some(heartbeat) = self.policy.heartbeat else { return };
        if gap > heartbeat.timeout.max(heartbeat.interval * 2) {
            warn!(
                "the supervisor itself was stalled for {}; sparing the workers' heartbeats for one timeout",
                seconds(gap)
            );
            for worker in &mut self.workers {
                worker.last_heartbeat = worker.last_heartbeat.max(now);
            }
        }
    }

    fn on_spawned(&mut self, now: Instant, slot: usize, pid: Pid, actions: &mut Vec<Action>) {
        self.slot_mut(slot, now).spawning = false;
        debug!("worker {slot} (pid {pid}) started, generation {}", self.generation);
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
            last_heartbeat: now,
            memory: None,
            retiring: None,
            status: None,
            condemned: false,
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
            _ if worker.condemned => debug!("worker {slot} (pid {pid}) {status}"),
            WorkerState::Stopping { since, .. } => {
                let took = seconds(now.saturating_duration_since(since));
                info!("worker {slot} (pid {pid}) stopped: {status} after {took} of draining");
            }
            _ if self.phase != Phase::Running => {
                info!("worker {slot} (pid {pid}) {status} during shutdown");
            }
            _ => {
                let was_ready = if worker.is_ready() { "" } else { " before it was ready" };
                let what = format!("worker {slot} (pid {pid}) {status} after {uptime}{was_ready}");
                self.on_worker_failed(now, &worker, actions, &what);
            }
        }
    }

    /// A worker failed. A new-generation worker that fails before it is ready
    /// aborts the reload; anything else is a crash to back off from.
    fn on_worker_failed(&mut self, now: Instant, worker: &Worker, actions: &mut Vec<Action>, what: &str) {
        let failed_start = !worker.is_ready() && worker.retiring.is_none();
        match &self.rollout {
            Some(rollout) if failed_start && worker.generation == rollout.generation => {
                self.abort_reload(now, what, actions);
            }
            _ => self.on_failure(now, worker.slot, actions, what),
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

    /// SIGKILLs a worker for a failure (hung, not ready in time, asked to be
    /// treated as hung) and counts it like a crash.
    fn condemn(&mut self, now: Instant, index: usize, why: &str, actions: &mut Vec<Action>) {
        let before = self.workers[index].clone();
        let worker = &mut self.workers[index];
        worker.condemned = true;
        worker.state = WorkerState::Stopping {
            since: now,
            killed: true,
        };
        let (slot, pid) = (worker.slot, worker.pid);
        actions.push(Action::Signal {
            pid,
            signal: Signal::SIGKILL,
        });
        self.on_worker_failed(
            now,
            &before,
            actions,
            &format!("worker {slot} (pid {pid}) {why}; killed it"),
        );
    }

    /// Starts rolling the flock onto a new generation under `policy`.
    fn begin_reload(&mut self, now: Instant, ticket: u64, policy: Policy, actions: &mut Vec<Action>) {
        if self.refuse_during_rollout(ticket, actions) {
            return;
        }
        actions.push(Action::Notify(Upward::Reloading));
        if policy.readiness != self.policy.readiness {
            let message = format!(
                "readiness cannot change in a reload (\"{}\" to \"{}\"): restart the service instead",
                self.policy.readiness, policy.readiness
            );
            self.refuse_reload(ticket, message, actions);
            return;
        }
        self.newest_generation += 1;
        let generation = self.newest_generation;
        let previous = std::mem::replace(&mut self.policy, policy);
        let previous_desired = self.desired;
        self.desired = self.policy.workers.clamp(1, MAX_WORKERS as usize);
        self.budget.capacity = (self.desired as f64).max(self.budget.per_second);
        info!(
            "reloading: generation {} to {generation}, {} workers, at most {} extra at once",
            self.generation, self.desired, self.policy.max_surge
        );
        self.rollout = Some(Rollout {
            ticket,
            generation,
            from_generation: self.generation,
            started: now,
            previous,
            previous_desired,
        });
        self.generation = generation;
        let stop_signal = self.policy.stop_signal;
        for worker in &mut self.workers {
            match worker.state {
                // Not serving yet: nothing to keep it for.
                WorkerState::Starting => {
                    stop_gracefully(worker, now, stop_signal, actions);
                }
                WorkerState::Ready { .. } => worker.retiring = Some("reload"),
                WorkerState::Stopping { .. } => {}
            }
        }
        // The new generation starts now, whatever backoff the old one was in.
        for slot in &mut self.slots {
            slot.next_spawn = slot.next_spawn.min(now);
            slot.failures = 0;
        }
    }

    /// One reload at a time: a request during a roll is refused at once. The
    /// roll goes on, and systemd hears nothing of the refused request (the
    /// roll's own READY=1 comes when it is done).
    fn refuse_during_rollout(&mut self, ticket: u64, actions: &mut Vec<Action>) -> bool {
        let Some(rollout) = &self.rollout else { return false };
        let message = format!("a reload to generation {} is already in progress", rollout.generation);
        warn!("reload refused: {message}");
        actions.push(Action::ReloadFinished {
            ticket,
            ok: false,
            message,
        });
        true
    }

    /// A reload that does not start: READY=1 again at once, and the reason.
    fn refuse_reload(&mut self, ticket: u64, message: String, actions: &mut Vec<Action>) {
        error!("reload refused: {message}");
        self.last_reload = Some(ReloadOutcome {
            generation: self.generation,
            ok: false,
            message: message.clone(),
        });
        actions.push(Action::Notify(Upward::Ready));
        actions.push(Action::ReloadFinished {
            ticket,
            ok: false,
            message,
        });
    }

    /// The new generation failed to start: go back to the old one. Workers of
    /// the new generation still starting are stopped; ready ones are replaced
    /// by old-generation workers slot by slot, like any reload.
    fn abort_reload(&mut self, now: Instant, what: &str, actions: &mut Vec<Action>) {
        let Some(rollout) = self.rollout.take() else { return };
        let message = format!(
            "reload to generation {} failed: {what}; generation {} keeps serving",
            rollout.generation, rollout.from_generation
        );
        error!("{message}");
        self.policy = rollout.previous;
        self.desired = rollout.previous_desired;
        self.generation = rollout.from_generation;
        let stop_signal = self.policy.stop_signal;
        for worker in &mut self.workers {
            if worker.is_stopping() {
                continue;
            }
            if worker.generation == rollout.generation {
                if worker.is_ready() {
                    worker.retiring = Some("reload aborted");
                } else {
                    stop_gracefully(worker, now, stop_signal, actions);
                }
            } else if worker.retiring == Some("reload") {
                worker.retiring = None;
            }
        }
        self.last_reload = Some(ReloadOutcome {
            generation: rollout.generation,
            ok: false,
            message: message.clone(),
        });
        actions.push(Action::Notify(Upward::Ready));
        actions.push(Action::ReloadFinished {
            ticket: rollout.ticket,
            ok: false,
            message,
        });
    }

    /// The reload is done once every desired slot has a ready worker of the
    /// new generation and every old worker has been told to stop.
    fn finish_reload_if_done(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let Some(rollout) = &self.rollout else { return };
        let generation = rollout.generation;
        let old_serving = self
            .workers
            .iter()
            .any(|w| !w.is_stopping() && w.generation != generation);
        let mut ready = vec![false; self.desired];
        for worker in &self.workers {
            if worker.generation == generation
                && worker.is_ready()
                && let Some(slot) = ready.get_mut(worker.slot)
            {
                *slot = true;
            }
        }
        if old_serving || !ready.iter().all(|r| *r) {
            return;
        }
        let rollout = self.rollout.take().expect("checked above");
        let message = format!(
            "reloaded to generation {generation} ({} workers) in {}",
            self.desired,
            seconds(now.saturating_duration_since(rollout.started))
        );
        info!("{message}");
        self.last_reload = Some(ReloadOutcome {
            generation,
            ok: true,
            message: message.clone(),
        });
        actions.push(Action::Notify(Upward::Ready));
        actions.push(Action::ReloadFinished {
            ticket: rollout.ticket,
            ok: true,
            message,
        });
    }

    fn on_message(&mut self, now: Instant, pid: Pid, message: WorkerMessage, actions: &mut Vec<Action>) {
        let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
            debug!("message from pid {pid}, which is no longer a worker: {message:?}");
            return;
        };
        let worker = &mut self.workers[index];
        let (slot, stopping) = (worker.slot, worker.is_stopping());
        match message {
            WorkerMessage::Ready => {
                worker.last_heartbeat = now;
                if worker.state == WorkerState::Starting && self.policy.readiness != Readiness::None {
                    let took = seconds(now.saturating_duration_since(worker.started_at));
                    info!("worker {slot} (pid {pid}) is ready after {took}");
                    worker.state = WorkerState::Ready { since: now };
                }
            }
            WorkerMessage::Heartbeat => worker.last_heartbeat = now,
            WorkerMessage::WatchdogTrigger if !stopping => {
                self.condemn(now, index, "asked to be replaced (WATCHDOG=trigger)", actions);
            }
            WorkerMessage::Stopping if !stopping => {
                info!("worker {slot} (pid {pid}) is stopping on its own; starting its replacement now");
                worker.state = WorkerState::Stopping {
                    since: now,
                    killed: false,
                };
            }
            WorkerMessage::Status(status) => {
                debug!("worker {slot} (pid {pid}) status: {status}");
                worker.status = Some(status);
            }
            WorkerMessage::Errno(errno) => {
                let text = nix::errno::Errno::from_raw(errno).desc();
                warn!("worker {slot} (pid {pid}) reports errno {errno} ({text})");
            }
            // A draining worker closes it on its way out; a serving one can
            // no longer heartbeat, and its timeout will tell.
            WorkerMessage::ChannelClosed if stopping => debug!("worker {slot} (pid {pid}) closed its IPC channel"),
            WorkerMessage::ChannelClosed => {
                warn!("worker {slot} (pid {pid}) closed its IPC channel; it can no longer send heartbeats")
            }
            WorkerMessage::WatchdogTrigger | WorkerMessage::Stopping => {}
        }
    }

    fn on_measured(&mut self, pid: Pid, bytes: u64) {
        let Some(worker) = self.workers.iter_mut().find(|w| w.pid == pid) else {
            return;
        };
        worker.memory = Some(bytes);
        if let Some(limit) = self.policy.memory_limit
            && bytes > limit
            && worker.is_ready()
            && worker.retiring.is_none()
        {
            warn!(
                "worker {} (pid {}) uses {}, over the memory limit of {}; starting its replacement",
                worker.slot,
                worker.pid,
                format_size(bytes),
                format_size(limit)
            );
            worker.retiring = Some("memory limit");
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
            (Request::Scale(workers), Phase::Running) => {
                let workers = workers.clamp(1, MAX_WORKERS as usize);
                if workers != self.desired {
                    info!("scaling from {} to {workers} workers", self.desired);
                    for slot in self.desired..workers {
                        let state = self.slot_mut(slot, now);
                        state.next_spawn = state.next_spawn.max(now);
                    }
                    self.desired = workers;
                }
            }
            (Request::Reload { ticket, policy }, Phase::Running) => self.begin_reload(now, ticket, *policy, actions),
            (Request::ReloadRefused { ticket, reason }, Phase::Running) => {
                if !self.refuse_during_rollout(ticket, actions) {
                    actions.push(Action::Notify(Upward::Reloading));
                    self.refuse_reload(ticket, reason, actions);
                }
            }
            (Request::Reload { ticket, .. } | Request::ReloadRefused { ticket, .. }, Phase::ShuttingDown { .. }) => {
                let message = "the supervisor is stopping".to_string();
                actions.push(Action::ReloadFinished {
                    ticket,
                    ok: false,
                    message,
                });
            }
            (other, Phase::ShuttingDown { .. }) => debug!("ignoring {other:?} during shutdown"),
        }
    }

    fn begin_shutdown(&mut self, now: Instant, code: i32, reason: String, actions: &mut Vec<Action>) {
        if let Some(rollout) = self.rollout.take() {
            let message = format!(
                "reload to generation {} interrupted: the supervisor is stopping",
                rollout.generation
            );
            actions.push(Action::ReloadFinished {
                ticket: rollout.ticket,
                ok: false,
                message,
            });
        }
        self.phase = Phase::ShuttingDown { code, reason };
        actions.push(Action::Notify(Upward::Stopping));
        for worker in &mut self.workers {
            if !worker.is_stopping() {
                stop_gracefully(worker, now, self.policy.stop_signal, actions);
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
            self.ping_watchdog(now, actions);
            self.update_status(actions);
            return;
        }
        self.promote_ready(now);
        self.kill_unready(now, actions);
        self.kill_hung(now, actions);
        self.retire_surplus(now, actions);
        self.stop_replaced(now, actions);
        self.fill_slots(now, actions);
        self.finish_reload_if_done(now, actions);
        self.ping_workers(now, actions);
        self.measure(now, actions);
        if !self.announced_ready && self.is_healthy() {
            self.announced_ready = true;
            info!("ready: {}/{} workers", self.ready_count(), self.desired);
            actions.push(Action::Notify(Upward::Ready));
        }
        self.ping_watchdog(now, actions);
        self.update_status(actions);
    }

    /// SIGKILL for workers still there a stop timeout after their stop signal.
    fn escalate_stops(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let timeout = self.policy.stop_timeout;
        for worker in &mut self.workers {
            if let WorkerState::Stopping { since, killed: false } = worker.state
                && now.saturating_duration_since(since) >= timeout
            {
                warn!(
                    "worker {} (pid {}) did not stop within {}; sending SIGKILL",
                    worker.slot,
                    worker.pid,
                    format_duration(timeout)
                );
                worker.state = WorkerState::Stopping { since, killed: true };
                actions.push(Action::Signal {
                    pid: worker.pid,
                    signal: Signal::SIGKILL,
                });
            }
        }
    }

    fn promote_ready(&mut self, now: Instant) {
        let (ready_delay, backoff_reset) = (self.policy.ready_delay, self.policy.restart.backoff_reset);
        let by_delay = self.policy.readiness == Readiness::None;
        for worker in &mut self.workers {
            match worker.state {
                WorkerState::Starting
                    if by_delay && now.saturating_duration_since(worker.started_at) >= ready_delay =>
                {
                    debug!("worker {} (pid {}) is ready", worker.slot, worker.pid);
                    worker.state = WorkerState::Ready { since: now };
                    worker.last_heartbeat = now;
                }
                WorkerState::Ready { since } if now.saturating_duration_since(since) >= backoff_reset => {
                    self.slots[worker.slot].failures = 0;
                }
                _ => {}
            }
        }
    }

    /// A worker that has not said it is ready within `ready_timeout` failed to start.
    fn kill_unready(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if self.policy.readiness == Readiness::None {
            return;
        }
        let timeout = self.policy.ready_timeout;
        while let Some(index) = self
            .workers
            .iter()
            .position(|w| w.state == WorkerState::Starting && now.saturating_duration_since(w.started_at) >= timeout)
        {
            self.condemn(
                now,
                index,
                &format!("was not ready within {}", format_duration(timeout)),
                actions,
            );
        }
    }

    /// A ready worker silent for longer than the heartbeat timeout is hung.
    fn kill_hung(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let Some(heartbeat) = self.policy.heartbeat else { return };
        while let Some(index) = self
            .workers
            .iter()
            .position(|w| w.is_ready() && now.saturating_duration_since(w.last_heartbeat) >= heartbeat.timeout)
        {
            let silent = seconds(now.saturating_duration_since(self.workers[index].last_heartbeat));
            self.condemn(now, index, &format!("missed heartbeats for {silent}"), actions);
        }
    }

    /// Stops the workers of slots above the desired count (after a scale-down).
    fn retire_surplus(&mut self, now: Instant, actions: &mut Vec<Action>) {
        for worker in &mut self.workers {
            if worker.slot >= self.desired && !worker.is_stopping() {
                info!(
                    "worker {} (pid {}) retired by scale-down; sending {}",
                    worker.slot,
                    worker.pid,
                    self.policy.stop_signal.as_str()
                );
                stop_gracefully(worker, now, self.policy.stop_signal, actions);
            }
        }
    }

    /// A retiring worker is stopped only once a ready replacement serves its slot.
    fn stop_replaced(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let replaced: Vec<(usize, Pid)> = self
            .workers
            .iter()
            .filter(|w| w.is_ready() && w.retiring.is_none())
            .map(|w| (w.slot, w.pid))
            .collect();
        for worker in &mut self.workers {
            if let Some(reason) = worker.retiring
                && !worker.is_stopping()
                && let Some((_, new)) = replaced.iter().find(|(slot, _)| *slot == worker.slot)
            {
                info!(
                    "worker {} (pid {}) replaced by pid {new} ({reason}); sending {}",
                    worker.slot,
                    worker.pid,
                    self.policy.stop_signal.as_str()
                );
                stop_gracefully(worker, now, self.policy.stop_signal, actions);
            }
        }
    }

    /// Starts workers for empty slots first, then replacements for slots
    /// whose worker is retiring (reload, memory), those within `max_surge`:
    /// at most `desired + max_surge` workers run at once.
    fn fill_slots(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.budget.refill(now);
        if self.desired > 0 {
            self.slot_mut(self.desired - 1, now);
        }
        let filled = self.filled_slots();
        let mut occupied = vec![false; self.desired];
        for worker in self.workers.iter().filter(|w| !w.is_stopping()) {
            if let Some(slot) = occupied.get_mut(worker.slot) {
                *slot = true;
            }
        }
        let mut live =
            self.workers.iter().filter(|w| !w.is_stopping()).count() + self.slots.iter().filter(|s| s.spawning).count();
        for replacing in [false, true] {
            for slot in 0..self.desired {
                let state = &self.slots[slot];
                if filled[slot] || occupied[slot] != replacing || state.spawning || state.next_spawn > now {
                    continue;
                }
                if replacing && live.saturating_sub(self.desired) >= self.policy.max_surge {
                    return;
                }
                if self.budget.tokens < 1.0 {
                    debug!(
                        "spawn rate limit reached ({}/s); slot {slot} waits",
                        self.policy.restart.max_spawn_rate
                    );
                    return;
                }
                self.budget.tokens -= 1.0;
                self.slots[slot].spawning = true;
                live += 1;
                actions.push(Action::Spawn {
                    slot,
                    generation: self.generation,
                });
            }
        }
    }

    /// Node IPC heartbeats: a 'ping' every interval; any message back counts.
    fn ping_workers(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let Some(heartbeat) = self.policy.heartbeat else { return };
        if self.policy.readiness != Readiness::NodeIpc || now < self.timers.next_ping {
            return;
        }
        self.timers.next_ping = now + heartbeat.interval;
        for worker in self.workers.iter().filter(|w| !w.is_stopping()) {
            actions.push(Action::Ping { pid: worker.pid });
        }
    }

    fn measure(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if now < self.timers.next_measure {
            return;
        }
        self.timers.next_measure = now + self.policy.memory_interval;
        let pids: Vec<Pid> = self
            .workers
            .iter()
            .filter(|w| !w.is_stopping())
            .map(|w| w.pid)
            .collect();
        if !pids.is_empty() {
            actions.push(Action::Measure { pids });
        }
    }

    /// The watchdog relay: WATCHDOG=1 at half systemd's interval, but after
    /// READY only while the flock is healthy, so that systemd's
    /// `Restart=on-watchdog` takes over a flock sheepdog cannot heal. Before
    /// READY (TimeoutStartSec governs) and while stopping (TimeoutStopSec
    /// does) the pings go on.
    fn ping_watchdog(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let Some(interval) = self.policy.watchdog else { return };
        if now < self.timers.next_watchdog {
            return;
        }
        self.timers.next_watchdog = now + interval / 2;
        let starting = !self.announced_ready;
        if starting || self.is_shutting_down() || self.is_healthy() {
            if self.timers.withholding_watchdog {
                info!("the flock is healthy again; resuming watchdog pings");
                self.timers.withholding_watchdog = false;
            }
            actions.push(Action::Notify(Upward::Watchdog));
        } else if !self.timers.withholding_watchdog {
            self.timers.withholding_watchdog = true;
            warn!(
                "the flock is unhealthy ({}/{} ready, {} needed): withholding watchdog pings from systemd",
                self.ready_count(),
                self.desired,
                self.min_ready()
            );
        }
    }

    /// One line for `systemctl status`, sent when it changes.
    fn status_line(&self) -> String {
        let memory: u64 = self.workers.iter().filter_map(|w| w.memory).sum();
        let memory = if memory > 0 {
            format!(" · {}", format_size(memory))
        } else {
            String::new()
        };
        let generation = match (&self.rollout, &self.last_reload) {
            (Some(rollout), _) => format!(" · reloading to generation {}", rollout.generation),
            (None, Some(outcome)) if !outcome.ok => {
                format!(
                    " · generation {} · reload to {} failed",
                    self.generation, outcome.generation
                )
            }
            (None, _) if self.generation > 1 => format!(" · generation {}", self.generation),
            _ => String::new(),
        };
        match &self.phase {
            Phase::Running => {
                format!(
                    "{}/{} ready · {} restarts{generation}{memory}",
                    self.ready_count(),
                    self.desired,
                    self.total_restarts
                )
            }
            Phase::ShuttingDown { code: 0, .. } => format!("stopping · {} workers left", self.workers.len()),
            Phase::ShuttingDown { reason, .. } => format!("failed · {} workers left · {reason}", self.workers.len()),
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

/// Sends a worker its stop signal; SIGKILL follows after the stop timeout.
fn stop_gracefully(worker: &mut Worker, now: Instant, signal: Signal, actions: &mut Vec<Action>) {
    worker.state = WorkerState::Stopping {
        since: now,
        killed: false,
    };
    actions.push(Action::Signal {
        pid: worker.pid,
        signal,
    });
}

/// `backoff_initial · 2^failures`, capped at `backoff_max`.
fn backoff(policy: &RestartPolicy, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.min(30));
    policy.backoff_initial.saturating_mul(factor).min(policy.backoff_max)
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeartbeatPolicy;

    const MS: Duration = Duration::from_millis(1);

    fn policy(workers: usize) -> Policy {
        Policy {
            workers,
            min_ready: workers,
            readiness: Readiness::None,
            ready_delay: 1000 * MS,
            ready_timeout: 3000 * MS,
            heartbeat: None,
            memory_limit: None,
            memory_interval: Duration::from_secs(3600),
            memory_measure: MemoryMeasure::Pss,
            max_surge: 1,
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
            reason.starts_with("crash loop: 6 unrequested worker exits within 1m (max_restarts = 5)"),
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
        assert_eq!(signals(&actions), vec![(a, Signal::SIGTERM), (b, Signal::SIGTERM)]);
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
        assert!(spawns(&h.log).len() == 2, "nothing is respawned during a stop");
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
        // Nothing is pending but the (hourly, in this policy) memory check.
        assert!(h.flock.next_deadline().unwrap() > h.now + Duration::from_secs(60));
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

    fn notify_policy(workers: usize) -> Policy {
        let mut p = policy(workers);
        p.readiness = Readiness::Notify;
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

    #[test]
    fn with_a_readiness_protocol_only_the_worker_says_when_it_is_ready() {
        let mut h = Harness::new(notify_policy(2));
        h.start();
        assert!(!ready_sent(&h.at(2500 * MS)), "no ready_delay promotion under notify");
        let (a, b) = (h.pid_of(0), h.pid_of(1));
        assert!(!ready_sent(&h.say(a, WorkerMessage::Ready)));
        assert!(ready_sent(&h.say(b, WorkerMessage::Ready)));
    }

    #[test]
    fn a_worker_not_ready_within_ready_timeout_is_killed_and_counted() {
        let mut h = Harness::new(notify_policy(1));
        h.start();
        let pid = h.pid_of(0);
        assert!(signals(&h.at(2999 * MS)).is_empty());
        let actions = h.at(3000 * MS);
        assert_eq!(signals(&actions), vec![(pid, Signal::SIGKILL)]);
        assert_eq!(h.flock.total_restarts, 1);
        // Its replacement comes after the backoff, before the old one is reaped.
        assert_eq!(spawns(&h.at(3100 * MS)), vec![0]);
        h.exit(pid, ExitStatus::Signaled(Signal::SIGKILL));
        assert_eq!(h.flock.total_restarts, 1, "the reaped exit is not counted twice");
    }

    #[test]
    fn a_hung_worker_is_killed_after_the_heartbeat_timeout_and_replaced() {
        let mut h = Harness::new(notify_policy(2));
        h.start();
        h.make_ready();
        let (a, b) = (h.pid_of(0), h.pid_of(1));
        // `a` keeps heartbeating; `b` goes silent after t = 0.
        for t in [900u32, 1800, 2700, 3600] {
            h.at(t * MS);
            h.say(a, WorkerMessage::Heartbeat);
            if t < 3000 {
                assert!(signals(&h.log).is_empty(), "nobody is killed before the timeout");
            }
        }
        assert_eq!(
            signals(&h.log),
            vec![(b, Signal::SIGKILL)],
            "killed when the 3 s timeout passed"
        );
        // The loop wakes exactly at the expiry deadline.
        let mut h2 = Harness::new(notify_policy(1));
        h2.start();
        h2.make_ready();
        assert_eq!(
            h2.flock.next_deadline(),
            Some(h2.t0 + 1000 * MS),
            "the stall-guard tick comes first"
        );
        let actions = h2.run_until(3000 * MS);
        assert_eq!(signals(&actions).len(), 1);
        assert_eq!(h.flock.total_restarts, 1);
        assert_eq!(spawns(&h.run_until(4000 * MS)), vec![1]);
    }

    #[test]
    fn a_stalled_supervisor_spares_its_workers_once() {
        let mut h = Harness::new(notify_policy(1));
        h.start();
        h.make_ready();
        // The loop itself did not run for 10 s (SIGSTOPped): no mass murder.
        assert!(signals(&h.at(10_000 * MS)).is_empty());
        // But a worker still silent one timeout later is hung after all.
        assert_eq!(signals(&h.run_until(13_000 * MS)).len(), 1);
    }

    #[test]
    fn watchdog_trigger_replaces_at_once() {
        let mut h = Harness::new(notify_policy(1));
        h.start();
        h.make_ready();
        let pid = h.pid_of(0);
        assert_eq!(
            signals(&h.say(pid, WorkerMessage::WatchdogTrigger)),
            vec![(pid, Signal::SIGKILL)]
        );
        assert_eq!(h.flock.total_restarts, 1);
    }

    #[test]
    fn a_worker_that_says_it_is_stopping_gets_its_replacement_before_it_exits() {
        let mut h = Harness::new(notify_policy(1));
        h.start();
        h.make_ready();
        let old = h.pid_of(0);
        let actions = h.say(old, WorkerMessage::Stopping);
        assert_eq!(spawns(&actions), vec![0], "replacement forked at once");
        assert!(signals(&actions).is_empty(), "the leaving worker is not signalled");
        assert!(h.flock.workers().iter().any(|w| w.pid == old), "old one still draining");
        h.exit(old, ExitStatus::Code(0));
        assert_eq!(h.flock.total_restarts, 0, "leaving on its own is not a failure");
        // One that never exits is killed after the stop timeout.
        let mut p = notify_policy(1);
        p.heartbeat = None;
        let mut h = Harness::new(p);
        h.start();
        h.make_ready();
        let old = h.pid_of(0);
        h.say(old, WorkerMessage::Stopping);
        h.make_ready();
        assert_eq!(signals(&h.run_until(5000 * MS)), vec![(old, Signal::SIGKILL)]);
    }

    #[test]
    fn memory_over_the_limit_is_replaced_replacement_first_within_the_surge_bound() {
        let mut p = notify_policy(3);
        p.heartbeat = None;
        p.memory_limit = Some(700 << 20);
        p.memory_interval = 1000 * MS;
        let mut h = Harness::new(p);
        h.start();
        h.make_ready();
        let measured = h.at(1000 * MS);
        assert!(
            measured
                .iter()
                .any(|a| matches!(a, Action::Measure { pids } if pids.len() == 3))
        );
        let old: Vec<Pid> = (0..3).map(|s| h.pid_of(s)).collect();
        h.feed(Event::Measured {
            pid: old[0],
            bytes: 100 << 20,
        });
        assert_eq!(statuses(&h.log).last().unwrap(), "3/3 ready · 0 restarts · 100 MiB");
        // Two workers bloat at once; max_surge = 1: one replacement at a time.
        let mut actions = h.feed(Event::Measured {
            pid: old[1],
            bytes: 800 << 20,
        });
        actions.extend(h.feed(Event::Measured {
            pid: old[2],
            bytes: 900 << 20,
        }));
        assert_eq!(spawns(&actions), vec![1]);
        assert!(
            signals(&actions).is_empty(),
            "the bloated worker keeps serving until replaced"
        );
        let first_new = h.flock.workers().last().unwrap().pid;
        let actions = h.say(first_new, WorkerMessage::Ready);
        assert_eq!(
            signals(&actions),
            vec![(old[1], Signal::SIGTERM)],
            "stopped once its replacement is ready"
        );
        assert_eq!(spawns(&actions), vec![2], "the surge slot is free again");
        assert_eq!(h.ready_pids().len(), 3, "never fewer ready workers than desired");
        let second_new = h.flock.workers().last().unwrap().pid;
        assert_eq!(
            signals(&h.say(second_new, WorkerMessage::Ready)),
            vec![(old[2], Signal::SIGTERM)]
        );
        assert_eq!(h.flock.total_restarts, 0);
    }

    #[test]
    fn a_failed_memory_replacement_leaves_the_old_worker_serving() {
        let mut p = notify_policy(1);
        p.heartbeat = None;
        p.memory_limit = Some(1 << 20);
        let mut h = Harness::new(p);
        h.start();
        h.make_ready();
        let old = h.pid_of(0);
        let spawned = spawns(&h.feed(Event::Measured {
            pid: old,
            bytes: 2 << 20,
        }));
        assert_eq!(spawned, vec![0]);
        let new = h.flock.workers().last().unwrap().pid;
        h.exit(new, ExitStatus::Code(1));
        assert!(h.ready_pids().contains(&old));
        assert!(signals(&h.log).is_empty());
    }

    #[test]
    fn node_ipc_workers_are_pinged_every_interval() {
        let mut p = notify_policy(2);
        p.readiness = Readiness::NodeIpc;
        p.ready_timeout = 60_000 * MS;
        p.heartbeat = Some(HeartbeatPolicy {
            interval: 1000 * MS,
            timeout: 10_000 * MS,
        });
        let mut h = Harness::new(p);
        let pings = |actions: &[Action]| actions.iter().filter(|a| matches!(a, Action::Ping { .. })).count();
        assert_eq!(pings(&h.start()), 0);
        assert_eq!(pings(&h.at(999 * MS)), 0);
        assert_eq!(pings(&h.at(1000 * MS)), 2);
        assert_eq!(pings(&h.run_until(3500 * MS)), 4);
    }

    #[test]
    fn the_watchdog_relay_pings_only_a_healthy_flock() {
        let mut p = notify_policy(2);
        p.watchdog = Some(2000 * MS);
        p.restart.max_restarts = 100;
        let mut h = Harness::new(p);
        let watchdogs = |actions: &[Action]| {
            actions
                .iter()
                .filter(|a| **a == Action::Notify(Upward::Watchdog))
                .count()
        };
        assert_eq!(watchdogs(&h.start()), 1, "pinged while starting");
        assert_eq!(h.flock.next_deadline(), Some(h.t0 + 1000 * MS));
        h.make_ready();
        let mut total = 0;
        for t in (1000..=6000u32).step_by(500) {
            let actions = h.at(t * MS);
            total += watchdogs(&actions);
            for pid in h.ready_pids() {
                h.say(pid, WorkerMessage::Heartbeat);
            }
        }
        assert_eq!(total, 6, "every half interval (1 s) while healthy");
        // Every worker hangs; their replacements never become ready.
        let before = h.log.len();
        h.run_until(20_000 * MS);
        let first_kill = before
            + h.log[before..]
                .iter()
                .position(|a| matches!(a, Action::Signal { .. }))
                .unwrap();
        assert!(h.now - h.t0 >= 9000 * MS);
        assert_eq!(watchdogs(&h.log[first_kill..]), 0, "no ping for an unhealthy flock");
        assert!(
            signals(&h.log[first_kill..]).len() >= 4,
            "hung workers and unready replacements killed"
        );
        // Healthy again: the pings resume.
        h.make_ready();
        assert_eq!(watchdogs(&h.run_until(22_000 * MS)), 2);
    }

    fn reload(h: &mut Harness, ticket: u64, policy: Policy) -> Vec<Action> {
        h.feed(Event::Request(Request::Reload {
            ticket,
            policy: Box::new(policy),
        }))
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
                Action::Spawn { slot, generation } => Some((*slot, *generation)),
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
        while let Some(pid) = h
            .flock
            .workers()
            .iter()
            .find(|w| w.state == WorkerState::Starting)
            .map(|w| w.pid)
        {
            all.extend(h.say(pid, WorkerMessage::Ready));
            assert!(
                h.ready_pids().len() >= min_ready,
                "fewer than {min_ready} ready workers"
            );
        }
        all
    }

    #[test]
    fn a_reload_rolls_slot_by_slot_within_the_surge_and_never_below_min_ready() {
        let mut h = Harness::new(reload_policy(3));
        h.start();
        h.make_ready();
        let old: Vec<Pid> = (0..3).map(|s| h.pid_of(s)).collect();
        let actions = reload(&mut h, 7, reload_policy(3));
        assert_eq!(actions.first(), Some(&Action::Notify(Upward::Reloading)));
        assert_eq!(
            spawned_generations(&actions),
            vec![(0, 2)],
            "max_surge = 1: one new worker at a time"
        );
        assert!(
            signals(&actions).is_empty(),
            "nothing stops before its replacement is ready"
        );
        assert!(statuses(&h.log).last().unwrap().contains("reloading to generation 2"));

        let actions = ready_one_by_one(&mut h, 3);
        for pid in &old {
            assert!(
                signals(&actions).contains(&(*pid, Signal::SIGTERM)),
                "old worker {pid} stopped"
            );
        }
        assert_eq!(spawned_generations(&actions), vec![(1, 2), (2, 2)]);
        let (ticket, ok, message) = finished(&actions).expect("the reload finished");
        assert_eq!((ticket, ok), (7, true));
        assert!(
            message.starts_with("reloaded to generation 2 (3 workers) in"),
            "{message}"
        );
        assert!(actions.contains(&Action::Notify(Upward::Ready)));
        assert_eq!(h.flock.generation(), 2);
        assert!(
            h.flock
                .workers()
                .iter()
                .filter(|w| !w.is_stopping())
                .all(|w| w.generation == 2)
        );
        for pid in old {
            h.exit(pid, ExitStatus::Code(0));
        }
        assert_eq!(
            statuses(&h.log).last().unwrap(),
            "3/3 ready · 0 restarts · generation 2"
        );
    }

    #[test]
    fn a_larger_surge_replaces_several_slots_at_once() {
        let mut h = Harness::new(reload_policy(4));
        h.start();
        h.make_ready();
        let mut p = reload_policy(4);
        p.max_surge = 2;
        assert_eq!(spawned_generations(&reload(&mut h, 1, p)), vec![(0, 2), (1, 2)]);
    }

    #[test]
    fn a_new_generation_that_crashes_at_boot_aborts_and_the_old_keeps_serving() {
        let mut h = Harness::new(reload_policy(2));
        h.start();
        h.make_ready();
        let old: Vec<Pid> = (0..2).map(|s| h.pid_of(s)).collect();
        reload(&mut h, 3, reload_policy(2));
        let new = h.flock.workers().last().unwrap().pid;
        let actions = h.exit(new, ExitStatus::Code(1));
        let (ticket, ok, message) = finished(&actions).expect("the reload ended");
        assert_eq!((ticket, ok), (3, false));
        assert!(message.contains("reload to generation 2 failed: worker 0"), "{message}");
        assert!(message.contains("exited with code 1"), "{message}");
        assert!(message.ends_with("generation 1 keeps serving"), "{message}");
        assert!(actions.contains(&Action::Notify(Upward::Ready)));
        assert!(signals(&h.log).is_empty(), "the old workers were never signalled");
        assert_eq!(h.ready_pids(), old);
        assert!(spawns(&h.run_until(20_000 * MS)).is_empty(), "nothing more is started");
        assert_eq!(h.flock.generation(), 1);
        assert_eq!(
            h.flock.total_restarts(),
            0,
            "a failed reload is not a crash of the flock"
        );
        assert!(
            statuses(&h.log)
                .last()
                .unwrap()
                .contains("generation 1 · reload to 2 failed")
        );
        // The next reload gets a fresh generation number.
        let actions = reload(&mut h, 4, reload_policy(2));
        assert_eq!(spawned_generations(&actions), vec![(0, 3)]);
    }

    #[test]
    fn an_abort_after_some_slots_switched_rolls_them_back_replacement_first() {
        let mut h = Harness::new(reload_policy(2));
        h.start();
        h.make_ready();
        let old: Vec<Pid> = (0..2).map(|s| h.pid_of(s)).collect();
        reload(&mut h, 1, reload_policy(2));
        let new0 = h.flock.workers().last().unwrap().pid;
        let actions = h.say(new0, WorkerMessage::Ready);
        assert_eq!(signals(&actions), vec![(old[0], Signal::SIGTERM)]);
        h.exit(old[0], ExitStatus::Code(0));
        let new1 = h
            .flock
            .workers()
            .iter()
            .find(|w| w.slot == 1 && w.generation == 2)
            .unwrap()
            .pid;
        // Slot 1's new worker crashes: slot 0 must go back to generation 1,
        // its generation-2 worker serving until the replacement is ready.
        let actions = h.exit(new1, ExitStatus::Code(2));
        assert_eq!(finished(&actions).map(|f| f.1), Some(false));
        assert_eq!(spawned_generations(&actions), vec![(0, 1)]);
        assert!(signals(&actions).is_empty());
        let back = h
            .flock
            .workers()
            .iter()
            .find(|w| w.slot == 0 && w.generation == 1)
            .unwrap()
            .pid;
        assert_eq!(
            signals(&h.say(back, WorkerMessage::Ready)),
            vec![(new0, Signal::SIGTERM)]
        );
        assert!(h.ready_pids().contains(&old[1]));
        assert!(h.ready_pids().contains(&back));
    }

    #[test]
    fn a_new_generation_that_never_becomes_ready_aborts_at_ready_timeout() {
        let mut h = Harness::new(reload_policy(1));
        h.start();
        h.make_ready();
        let old = h.pid_of(0);
        h.at(1000 * MS);
        reload(&mut h, 9, reload_policy(1));
        let new = h.flock.workers().last().unwrap().pid;
        let actions = h.at(6000 * MS);
        assert_eq!(signals(&actions), vec![(new, Signal::SIGKILL)]);
        let (_, ok, message) = finished(&actions).unwrap();
        assert!(!ok);
        assert!(message.contains("was not ready within 5s"), "{message}");
        assert_eq!(h.ready_pids(), vec![old]);
    }

    #[test]
    fn a_second_reload_during_a_reload_is_refused() {
        let mut h = Harness::new(reload_policy(2));
        h.start();
        h.make_ready();
        reload(&mut h, 1, reload_policy(2));
        let actions = reload(&mut h, 2, reload_policy(2));
        let (ticket, ok, message) = finished(&actions).unwrap();
        assert_eq!((ticket, ok), (2, false));
        assert_eq!(message, "a reload to generation 2 is already in progress");
        assert!(spawned_generations(&actions).is_empty());
        // The first one goes on and succeeds.
        let done = ready_one_by_one(&mut h, 2);
        assert_eq!(finished(&done).map(|f| (f.0, f.1)), Some((1, true)));
    }

    #[test]
    fn a_reload_refused_during_a_roll_sends_nothing_upward_and_the_roll_goes_on() {
        let mut h = Harness::new(reload_policy(2));
        h.start();
        h.make_ready();
        reload(&mut h, 1, reload_policy(2));
        for actions in [
            h.feed(Event::Request(Request::ReloadRefused {
                ticket: 2,
                reason: "app.toml:1:1: bad".into(),
            })),
            reload(&mut h, 3, reload_policy(2)),
        ] {
            let (_, ok, message) = finished(&actions).expect("refused at once");
            assert!(!ok);
            assert_eq!(message, "a reload to generation 2 is already in progress");
            assert!(
                !actions
                    .iter()
                    .any(|a| matches!(a, Action::Notify(Upward::Ready | Upward::Reloading))),
                "systemd hears nothing of a refused reload during a roll: {actions:?}"
            );
        }
        assert_eq!(h.flock.last_reload(), None, "the roll's outcome is not overwritten");
        let done = ready_one_by_one(&mut h, 2);
        assert_eq!(finished(&done).map(|f| (f.0, f.1)), Some((1, true)));
        assert!(ready_sent(&done), "READY=1 once the roll is done");
        assert!(h.flock.last_reload().unwrap().ok);
    }

    #[test]
    fn a_refused_reload_changes_nothing() {
        let mut h = Harness::new(reload_policy(2));
        h.start();
        h.make_ready();
        let actions = h.feed(Event::Request(Request::ReloadRefused {
            ticket: 5,
            reason: "app.toml:3:1: bad".into(),
        }));
        assert_eq!(
            actions[..2],
            [Action::Notify(Upward::Reloading), Action::Notify(Upward::Ready)],
            "systemd sees the reload begin and end"
        );
        assert_eq!(finished(&actions), Some((5, false, "app.toml:3:1: bad".into())));
        assert!(spawns(&actions).is_empty() && signals(&actions).is_empty());
        let mut p = reload_policy(2);
        p.readiness = Readiness::NodeIpc;
        let (_, ok, message) = finished(&reload(&mut h, 6, p)).unwrap();
        assert!(!ok && message.starts_with("readiness cannot change"), "{message}");
    }

    #[test]
    fn a_reload_can_change_the_worker_count_both_ways() {
        let mut h = Harness::new(reload_policy(2));
        h.start();
        h.make_ready();
        let actions = reload(&mut h, 1, reload_policy(4));
        // Slots 2 and 3 are new capacity, started first; then one replacement
        // within the surge: never more than 4 + 1 workers.
        assert_eq!(spawned_generations(&actions), vec![(2, 2), (3, 2), (0, 2)]);
        let done = ready_one_by_one(&mut h, 2);
        assert_eq!(finished(&done).map(|f| f.1), Some(true));
        assert_eq!(h.ready_pids().len(), 4);
        let stopped: Vec<Pid> = signals(&h.log).iter().map(|(p, _)| *p).collect();
        for pid in stopped {
            h.exit(pid, ExitStatus::Code(0));
        }
        let actions = reload(&mut h, 2, reload_policy(2));
        assert_eq!(signals(&actions).len(), 2, "slots 2 and 3 retired");
        let done = ready_one_by_one(&mut h, 2);
        assert_eq!(finished(&done).map(|f| f.1), Some(true));
        assert_eq!(h.flock.desired(), 2);
    }

    #[test]
    fn scale_sets_the_worker_count() {
        let mut h = Harness::new(reload_policy(2));
        h.start();
        assert_eq!(spawns(&h.feed(Event::Request(Request::Scale(4)))), vec![2, 3]);
        h.make_ready();
        assert_eq!(signals(&h.feed(Event::Request(Request::Scale(1)))).len(), 3);
        assert_eq!(h.flock.desired(), 1);
    }
}
