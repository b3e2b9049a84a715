//! The flock as data, for the in-place upgrade: everything [`Flock`] knows
//! (the worker table, generations, a reload in progress, restart history,
//! backoffs, the spawn budget, every policy's deadline, the counts), in a
//! serde form of its own that the next binary reads back.
//!
//! The form is a contract between two builds, so it is kept apart from the
//! core's own types (which may change freely): enums by name, durations as
//! serde writes them, and every time point as signed nanoseconds from the
//! moment of the snapshot. The reader turns those back into its own clock
//! from the moment that corresponds to it, so a deadline 3 s away when the
//! old binary wrote it is 3 s minus the hand-over away when the new one reads it.
//!
//! Restoring validates what it reads: a time point or count out of range is
//! an error, never a panic, so a state it cannot take makes the new binary
//! hand back rather than crash.

use std::collections::{BTreeMap, VecDeque};
use std::str::FromStr;
use std::time::Duration;

use crate::clock::Moment;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::flock::{Flock, Phase};
use super::health::Timers;
use super::model::*;
use super::recycle::Recycling;
use super::reload::{ReloadOutcome, Rollout};
use super::restart::{LoadGate, RestartHistory, Slot, SpawnBudget};
use super::tally::{Cause, Histogram, ListenQueue, RELOAD_BUCKETS, Tally};
use crate::config::{Channel, HeartbeatPolicy, MAX_WORKERS, MemoryMeasure, Readiness, RecyclePolicy, RestartPolicy};

/// A time point: nanoseconds after (or, negative, before) the snapshot.
pub type At = i64;

/// The farthest a time point may lie from the snapshot, either way.
const MAX_OFFSET: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlockState {
    pub policy: PolicyState,
    pub desired: usize,
    pub generation: u32,
    pub command: CommandId,
    pub newest_generation: u32,
    pub rollout: Option<RolloutState>,
    pub last_reload: Option<ReloadOutcomeState>,
    pub workers: Vec<WorkerRecord>,
    pub slots: Vec<SlotState>,
    /// Unrequested exits within the restart window, oldest first.
    pub recent_restarts: Vec<At>,
    pub total_restarts: u32,
    pub budget: BudgetState,
    pub timers: TimersState,
    pub recycling: RecyclingState,
    pub announced_ready: bool,
    pub last_status: String,
    pub tally: TallyState,
    /// Since when fewer than min_ready serve, and the failures since
    /// (absent from a build before it).
    #[serde(default)]
    pub unhealthy: Option<(At, u32)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyState {
    pub workers: usize,
    pub min_ready: usize,
    /// "notify", "node-ipc" or "none".
    pub readiness: String,
    pub channel: String,
    pub ready_delay: Duration,
    pub ready_timeout: Duration,
    pub heartbeat: Option<HeartbeatState>,
    pub heartbeat_ping: String,
    pub memory_limit: Option<u64>,
    pub memory_interval: Duration,
    /// "pss" or "rss".
    pub memory_measure: String,
    pub max_surge: usize,
    /// Absent in a state from a build before it: this machine's.
    #[serde(default = "super::model::usable_cpus")]
    pub cpus: usize,
    /// "SIGTERM".
    pub stop_signal: String,
    pub stop_timeout: Duration,
    pub restart: RestartState,
    pub max_age: Option<Duration>,
    pub max_age_jitter: Duration,
    pub watchdog: Option<Duration>,
    pub listener_check: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatState {
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartState {
    pub max_restarts: u32,
    pub window: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub backoff_reset: Duration,
    pub max_spawn_rate: u32,
    pub min_uptime: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    pub ticket: u64,
    pub generation: u32,
    pub from_generation: u32,
    pub started: At,
    pub previous: PolicyState,
    pub previous_desired: usize,
    pub previous_command: CommandId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadOutcomeState {
    pub generation: Option<u32>,
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub slot: usize,
    pub pid: Pid,
    pub generation: u32,
    pub started_at: At,
    pub state: StateRecord,
    pub last_heartbeat: At,
    pub memory: Option<u64>,
    pub status: Option<String>,
    pub recycle_at: Option<At>,
    pub listens_itself: Vec<String>,
    pub inspections: u32,
    /// Absent from a build before it: a worker the binary before already
    /// judged is taken as looked at.
    #[serde(default = "looked_at")]
    pub inspected: bool,
    /// Its stop signal is held back until its queue is empty (from a build
    /// before drains: none is).
    #[serde(default)]
    pub draining: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "is")]
pub enum StateRecord {
    Starting,
    Ready { since: At, retiring: Option<RetireName> },
    Stopping { since: At, cause: CauseName, killed: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetireName {
    Reload,
    ReloadAborted,
    MemoryLimit,
    MaxAge,
    Requested,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureName {
    Hung,
    NotReadyInTime,
    Triggered,
    LeftEarly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CauseName {
    Shutdown,
    ScaledDown,
    Replaced(RetireName),
    Superseded,
    Leaving,
    Failed(FailureName),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotState {
    pub next_spawn: At,
    pub spawning: bool,
    pub failures: u32,
    pub restarts: u32,
    /// A replacement cause's label ("crash", "hung"…), if a worker ended.
    pub last_end: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetState {
    pub tokens: f64,
    pub capacity: f64,
    pub per_second: f64,
    pub updated: At,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimersState {
    pub next_ping: At,
    pub next_measure: At,
    pub next_watchdog: At,
    pub next_listener_check: At,
    pub last_pass: At,
    pub withholding_watchdog: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecyclingState {
    pub last_begun: Option<At>,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TallyState {
    /// Workers ended, by cause label; a label this build does not know is kept out.
    pub ended: BTreeMap<String, u64>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub reloads_refused: u64,
    /// Upper bounds and cumulative counts of the reload-duration histogram.
    pub reload_buckets: Vec<(f64, u64)>,
    pub reload_count: u64,
    pub reload_sum: f64,
    pub crash_loops: u64,
    pub queues: Vec<(String, u32, u32)>,
}

/// Time points relative to the snapshot, one way and back.
struct Clock {
    now: Moment,
}

impl Clock {
    fn at(&self, moment: Moment) -> At {
        let bound = i64::try_from(MAX_OFFSET.as_nanos()).unwrap_or(i64::MAX);
        moment.offset_from(self.now).clamp(-bound, bound)
    }

    fn instant(&self, at: At, what: &str) -> Result<Moment, String> {
        if Duration::from_nanos(at.unsigned_abs()) > MAX_OFFSET {
            return Err(format!("{what}: {at} ns from the snapshot is out of range"));
        }
        self.now
            .offset_by(at)
            .ok_or_else(|| format!("{what}: {at} ns from the snapshot is not a time this clock has"))
    }

    fn maybe(&self, at: Option<At>, what: &str) -> Result<Option<Moment>, String> {
        at.map(|at| self.instant(at, what)).transpose()
    }
}

/// `instant` as a time point relative to `now`.
pub fn relative(now: Moment, instant: Moment) -> At {
    Clock { now }.at(instant)
}

/// The instant of this clock `at` from `then`, or `then` itself for one out
/// of range: for what only orders or ages (a client's connection time).
pub fn instant_near(then: Moment, at: At) -> Moment {
    Clock { now: then }.instant(at, "").unwrap_or(then)
}

impl Flock {
    /// The flock as data, its time points relative to `now`. A stopping
    /// flock has nothing to hand over: it is on its way out.
    pub fn snapshot(&self, now: Moment) -> Result<FlockState, String> {
        if self.phase != Phase::Running {
            return Err("the supervisor is stopping".into());
        }
        let clock = Clock { now };
        Ok(FlockState {
            policy: policy_state(&self.policy),
            desired: self.desired,
            generation: self.generation,
            command: self.command,
            newest_generation: self.newest_generation,
            rollout: self.rollout.as_ref().map(|r| RolloutState {
                ticket: r.ticket,
                generation: r.generation,
                from_generation: r.from_generation,
                started: clock.at(r.started),
                previous: policy_state(&r.previous),
                previous_desired: r.previous_desired,
                previous_command: r.previous_command,
            }),
            last_reload: self.last_reload.as_ref().map(|r| ReloadOutcomeState {
                generation: r.generation,
                ok: r.ok,
                message: r.message.clone(),
            }),
            workers: self.workers.iter().map(|w| worker_record(&clock, w)).collect(),
            slots: self
                .slots
                .iter()
                .map(|s| SlotState {
                    next_spawn: clock.at(s.next_spawn),
                    spawning: s.spawning,
                    failures: s.failures,
                    restarts: s.restarts,
                    last_end: s.last_end.map(|c| c.label().to_string()),
                })
                .collect(),
            recent_restarts: self.history.recent.iter().map(|at| clock.at(*at)).collect(),
            total_restarts: self.history.total,
            budget: BudgetState {
                tokens: self.budget.tokens,
                capacity: self.budget.capacity,
                per_second: self.budget.per_second,
                updated: clock.at(self.budget.updated),
            },
            timers: TimersState {
                next_ping: clock.at(self.timers.next_ping),
                next_measure: clock.at(self.timers.next_measure),
                next_watchdog: clock.at(self.timers.next_watchdog),
                next_listener_check: clock.at(self.timers.next_listener_check),
                last_pass: clock.at(self.timers.last_pass),
                withholding_watchdog: self.timers.withholding_watchdog,
            },
            recycling: RecyclingState {
                last_begun: self.recycling.last_begun.map(|at| clock.at(at)),
                count: self.recycling.count,
            },
            announced_ready: self.announced_ready,
            last_status: self.last_status.clone(),
            tally: tally_state(&self.tally),
            unhealthy: self.unhealthy.map(|(since, failures)| (clock.at(since), failures)),
        })
    }

    /// The flock `state` describes, its time points taken from `then`: the
    /// instant of this clock that is the moment of the snapshot.
    pub fn restore(state: FlockState, then: Moment) -> Result<Flock, String> {
        let clock = Clock { now: then };
        let most = MAX_WORKERS as usize;
        if state.generation == 0 || state.newest_generation < state.generation {
            return Err(format!(
                "generation {} (newest {}) cannot be",
                state.generation, state.newest_generation
            ));
        }
        if !(1..=most).contains(&state.desired) || state.slots.len() > 2 * most {
            return Err(format!(
                "{} workers desired in {} slots is out of range",
                state.desired,
                state.slots.len()
            ));
        }
        if state.workers.len() > 4 * most {
            return Err(format!(
                "{} workers is more than one sheepdog runs",
                state.workers.len()
            ));
        }
        let mut pids = std::collections::HashSet::new();
        let mut workers = Vec::with_capacity(state.workers.len());
        for record in state.workers {
            if record.pid <= 1 || !pids.insert(record.pid) || record.slot >= 2 * most {
                return Err(format!(
                    "worker {} (pid {}) cannot be: a pid of 0 or 1, twice, or a slot out of range",
                    record.slot, record.pid
                ));
            }
            workers.push(restore_worker(&clock, record)?);
        }
        let slots = state
            .slots
            .into_iter()
            .enumerate()
            .map(|(index, s)| {
                Ok(Slot {
                    next_spawn: clock.instant(s.next_spawn, &format!("slot {index}'s next start"))?,
                    spawning: s.spawning,
                    failures: s.failures,
                    restarts: s.restarts,
                    last_end: s.last_end.as_deref().and_then(cause_by_label),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let policy = restore_policy(state.policy)?;
        let rollout = match state.rollout {
            None => None,
            Some(r) => Some(Rollout {
                ticket: r.ticket,
                generation: r.generation,
                from_generation: r.from_generation,
                started: clock.instant(r.started, "the reload's start")?,
                previous: restore_policy(r.previous)?,
                previous_desired: r.previous_desired.clamp(1, most),
                previous_command: r.previous_command,
            }),
        };
        let budget = &state.budget;
        let finite = [budget.tokens, budget.capacity, budget.per_second];
        if finite.iter().any(|v| !v.is_finite() || *v < 0.0) || budget.per_second < 1.0 {
            return Err(format!("spawn budget {finite:?} cannot be"));
        }
        let recent = state
            .recent_restarts
            .iter()
            .map(|at| clock.instant(*at, "a recent restart"))
            .collect::<Result<VecDeque<_>, String>>()?;
        Ok(Flock {
            policy,
            desired: state.desired,
            generation: state.generation,
            command: state.command,
            newest_generation: state.newest_generation,
            rollout,
            last_reload: state.last_reload.map(|r| ReloadOutcome {
                generation: r.generation,
                ok: r.ok,
                message: r.message,
            }),
            workers,
            slots,
            history: RestartHistory {
                recent,
                total: state.total_restarts,
            },
            budget: SpawnBudget {
                tokens: budget.tokens.min(budget.capacity),
                capacity: budget.capacity,
                per_second: budget.per_second,
                updated: clock.instant(budget.updated, "the spawn budget")?,
            },
            timers: Timers {
                next_ping: clock.instant(state.timers.next_ping, "the next ping")?,
                next_measure: clock.instant(state.timers.next_measure, "the next memory check")?,
                next_watchdog: clock.instant(state.timers.next_watchdog, "the next watchdog ping")?,
                next_listener_check: clock.instant(state.timers.next_listener_check, "the next listener check")?,
                last_pass: clock.instant(state.timers.last_pass, "the last pass")?,
                withholding_watchdog: state.timers.withholding_watchdog,
            },
            recycling: Recycling {
                last_begun: clock.maybe(state.recycling.last_begun, "the last recycle")?,
                count: state.recycling.count,
            },
            phase: Phase::Running,
            announced_ready: state.announced_ready,
            last_status: state.last_status,
            tally: restore_tally(state.tally),
            note: None,
            spawned_this_pass: 0,
            load: LoadGate::default(),
            worker_lines: super::flock::worker_lines(),
            last_look: None,
            unhealthy: match state.unhealthy {
                Some((since, failures)) => Some((clock.instant(since, "the unhealthy stretch")?, failures)),
                None => None,
            },
        })
    }
}

fn policy_state(policy: &Policy) -> PolicyState {
    let restart = &policy.restart;
    PolicyState {
        workers: policy.workers,
        min_ready: policy.min_ready,
        readiness: policy.readiness.to_string(),
        channel: policy.channel.to_string(),
        ready_delay: policy.ready_delay,
        ready_timeout: policy.ready_timeout,
        heartbeat: policy.heartbeat.map(|h| HeartbeatState {
            interval: h.interval,
            timeout: h.timeout,
        }),
        heartbeat_ping: policy.heartbeat_ping.clone(),
        memory_limit: policy.memory_limit,
        memory_interval: policy.memory_interval,
        memory_measure: policy.memory_measure.to_string(),
        max_surge: policy.max_surge,
        cpus: policy.cpus,
        stop_signal: policy.stop_signal.as_str().to_string(),
        stop_timeout: policy.stop_timeout,
        restart: RestartState {
            max_restarts: restart.max_restarts,
            window: restart.window,
            backoff_initial: restart.backoff_initial,
            backoff_max: restart.backoff_max,
            backoff_reset: restart.backoff_reset,
            max_spawn_rate: restart.max_spawn_rate,
            min_uptime: restart.min_uptime,
        },
        max_age: policy.recycle.max_age,
        max_age_jitter: policy.recycle.jitter,
        watchdog: policy.watchdog,
        listener_check: policy.listener_check,
    }
}

/// Every duration of a policy, named, for the bound a restore holds them to.
fn durations(state: &PolicyState) -> Vec<(&'static str, Duration)> {
    let mut all = vec![
        ("ready_delay", state.ready_delay),
        ("ready_timeout", state.ready_timeout),
        ("memory interval", state.memory_interval),
        ("stop_timeout", state.stop_timeout),
        ("restart_window", state.restart.window),
        ("backoff_initial", state.restart.backoff_initial),
        ("backoff_max", state.restart.backoff_max),
        ("backoff_reset", state.restart.backoff_reset),
        ("min_uptime", state.restart.min_uptime),
        ("max_age_jitter", state.max_age_jitter),
    ];
    all.extend(
        state
            .heartbeat
            .iter()
            .flat_map(|h| [("heartbeat interval", h.interval), ("heartbeat timeout", h.timeout)]),
    );
    all.extend(state.max_age.map(|a| ("max_age", a)));
    all.extend(state.watchdog.map(|w| ("watchdog", w)));
    all.extend(state.listener_check.map(|c| ("listener check", c)));
    all
}

fn looked_at() -> bool {
    true
}

fn restore_policy(state: PolicyState) -> Result<Policy, String> {
    // No config gives a duration this long (a year at most, a heartbeat
    // timeout three): one that is could only overflow the clock later.
    if let Some((what, too_long)) = durations(&state).into_iter().find(|(_, d)| *d > MAX_OFFSET) {
        return Err(format!("{what} of {}s cannot be", too_long.as_secs()));
    }
    let readiness = match state.readiness.as_str() {
        "notify" => Readiness::Notify,
        "node-ipc" => Readiness::NodeIpc,
        "none" => Readiness::None,
        other => return Err(format!("readiness {other:?} is not one this build knows")),
    };
    let channel = Channel::named(&state.channel)
        .ok_or_else(|| format!("channel {:?} is not one this build knows", state.channel))?;
    let memory_measure = match state.memory_measure.as_str() {
        "pss" => MemoryMeasure::Pss,
        "rss" => MemoryMeasure::Rss,
        other => return Err(format!("memory measure {other:?} is not one this build knows")),
    };
    let stop_signal = Signal::from_str(&state.stop_signal)
        .map_err(|_| format!("stop signal {:?} is not a signal", state.stop_signal))?;
    let most = MAX_WORKERS as usize;
    // Intervals the loop waits on are never zero: it would spin.
    let positive = |d: Duration, what: &str| {
        if d.is_zero() {
            Err(format!("{what} of zero cannot be"))
        } else {
            Ok(d)
        }
    };
    let restart = state.restart;
    Ok(Policy {
        workers: state.workers.clamp(1, most),
        min_ready: state.min_ready.clamp(1, most),
        readiness,
        channel,
        ready_delay: state.ready_delay,
        ready_timeout: state.ready_timeout,
        heartbeat: match state.heartbeat {
            None => None,
            Some(h) => Some(HeartbeatPolicy {
                interval: positive(h.interval, "a heartbeat interval")?,
                timeout: positive(h.timeout, "a heartbeat timeout")?,
            }),
        },
        heartbeat_ping: state.heartbeat_ping,
        memory_limit: state.memory_limit,
        memory_interval: positive(state.memory_interval, "a memory interval")?,
        memory_measure,
        max_surge: state.max_surge.min(most),
        cpus: state.cpus.clamp(1, 1 << 16),
        stop_signal,
        stop_timeout: state.stop_timeout,
        restart: RestartPolicy {
            max_restarts: restart.max_restarts,
            window: restart.window,
            backoff_initial: restart.backoff_initial,
            backoff_max: restart.backoff_max,
            backoff_reset: restart.backoff_reset,
            max_spawn_rate: restart.max_spawn_rate.max(1),
            min_uptime: restart.min_uptime,
        },
        recycle: RecyclePolicy {
            max_age: state.max_age.map(|a| positive(a, "a max_age")).transpose()?,
            jitter: state.max_age_jitter,
        },
        watchdog: state.watchdog.map(|w| positive(w, "a watchdog interval")).transpose()?,
        listener_check: state
            .listener_check
            .map(|c| positive(c, "a listener check interval"))
            .transpose()?,
    })
}

fn worker_record(clock: &Clock, worker: &Worker) -> WorkerRecord {
    let state = match worker.state {
        WorkerState::Starting => StateRecord::Starting,
        WorkerState::Ready { since, retiring } => StateRecord::Ready {
            since: clock.at(since),
            retiring: retiring.map(retire_name),
        },
        WorkerState::Stopping { since, cause, killed } => StateRecord::Stopping {
            since: clock.at(since),
            cause: match cause {
                StopCause::Shutdown => CauseName::Shutdown,
                StopCause::ScaledDown => CauseName::ScaledDown,
                StopCause::Replaced(retire) => CauseName::Replaced(retire_name(retire)),
                StopCause::Superseded => CauseName::Superseded,
                StopCause::Leaving => CauseName::Leaving,
                StopCause::Failed(failure) => CauseName::Failed(match failure {
                    Failure::Hung => FailureName::Hung,
                    Failure::NotReadyInTime => FailureName::NotReadyInTime,
                    Failure::Triggered => FailureName::Triggered,
                    Failure::LeftEarly => FailureName::LeftEarly,
                }),
            },
            killed,
        },
    };
    WorkerRecord {
        slot: worker.slot,
        pid: worker.pid,
        generation: worker.generation,
        started_at: clock.at(worker.started_at),
        state,
        last_heartbeat: clock.at(worker.last_heartbeat),
        memory: worker.memory,
        status: worker.status.clone(),
        recycle_at: worker.recycle_at.map(|at| clock.at(at)),
        listens_itself: worker.listens_itself.clone(),
        inspections: worker.inspections,
        inspected: worker.inspected,
        draining: worker.draining,
    }
}

fn restore_worker(clock: &Clock, record: WorkerRecord) -> Result<Worker, String> {
    let whose = format!("worker {} (pid {})", record.slot, record.pid);
    let state = match record.state {
        StateRecord::Starting => WorkerState::Starting,
        StateRecord::Ready { since, retiring } => WorkerState::Ready {
            since: clock.instant(since, &whose)?,
            retiring: retiring.map(restore_retire),
        },
        StateRecord::Stopping { since, cause, killed } => WorkerState::Stopping {
            since: clock.instant(since, &whose)?,
            cause: match cause {
                CauseName::Shutdown => StopCause::Shutdown,
                CauseName::ScaledDown => StopCause::ScaledDown,
                CauseName::Replaced(retire) => StopCause::Replaced(restore_retire(retire)),
                CauseName::Superseded => StopCause::Superseded,
                CauseName::Leaving => StopCause::Leaving,
                CauseName::Failed(failure) => StopCause::Failed(match failure {
                    FailureName::Hung => Failure::Hung,
                    FailureName::NotReadyInTime => Failure::NotReadyInTime,
                    FailureName::Triggered => Failure::Triggered,
                    FailureName::LeftEarly => Failure::LeftEarly,
                }),
            },
            killed,
        },
    };
    Ok(Worker {
        slot: record.slot,
        pid: record.pid,
        generation: record.generation,
        started_at: clock.instant(record.started_at, &whose)?,
        state,
        last_heartbeat: clock.instant(record.last_heartbeat, &whose)?,
        memory: record.memory,
        status: record.status,
        recycle_at: clock.maybe(record.recycle_at, &whose)?,
        listens_itself: record.listens_itself,
        inspections: record.inspections,
        inspected: record.inspected,
        draining: record.draining,
        ready_hinted: false,
    })
}

fn retire_name(retire: Retire) -> RetireName {
    match retire {
        Retire::Reload => RetireName::Reload,
        Retire::ReloadAborted => RetireName::ReloadAborted,
        Retire::MemoryLimit => RetireName::MemoryLimit,
        Retire::MaxAge => RetireName::MaxAge,
        Retire::Requested => RetireName::Requested,
    }
}

fn restore_retire(name: RetireName) -> Retire {
    match name {
        RetireName::Reload => Retire::Reload,
        RetireName::ReloadAborted => Retire::ReloadAborted,
        RetireName::MemoryLimit => Retire::MemoryLimit,
        RetireName::MaxAge => Retire::MaxAge,
        RetireName::Requested => Retire::Requested,
    }
}

fn cause_by_label(label: &str) -> Option<Cause> {
    Cause::ALL.into_iter().find(|c| c.label() == label)
}

fn tally_state(tally: &Tally) -> TallyState {
    TallyState {
        ended: tally
            .ended_by_cause()
            .map(|(cause, n)| (cause.label().to_string(), n))
            .collect(),
        reloads_ok: tally.reloads_ok,
        reloads_failed: tally.reloads_failed,
        reloads_refused: tally.reloads_refused,
        reload_buckets: RELOAD_BUCKETS
            .iter()
            .copied()
            .zip(tally.reload_seconds.buckets.iter().copied())
            .collect(),
        reload_count: tally.reload_seconds.count,
        reload_sum: tally.reload_seconds.sum,
        crash_loops: tally.crash_loops,
        queues: tally
            .queues
            .iter()
            .map(|q| (q.address.clone(), q.queued, q.backlog))
            .collect(),
    }
}

/// Counts by a bucket bound this build does not have are left out: a
/// histogram is only comparable bucket by bucket.
fn restore_tally(state: TallyState) -> Tally {
    let mut tally = Tally::default();
    for (label, count) in &state.ended {
        if let Some(cause) = cause_by_label(label) {
            tally.set_ended(cause, *count);
        }
    }
    tally.reloads_ok = state.reloads_ok;
    tally.reloads_failed = state.reloads_failed;
    tally.reloads_refused = state.reloads_refused;
    let mut histogram = Histogram::default();
    for (bucket, bound) in histogram.buckets.iter_mut().zip(RELOAD_BUCKETS) {
        if let Some((_, count)) = state.reload_buckets.iter().find(|(b, _)| *b == bound) {
            *bucket = *count;
        }
    }
    histogram.count = state.reload_count;
    histogram.sum = if state.reload_sum.is_finite() {
        state.reload_sum
    } else {
        0.0
    };
    tally.reload_seconds = histogram;
    tally.crash_loops = state.crash_loops;
    tally.queues = state
        .queues
        .into_iter()
        .map(|(address, queued, backlog)| ListenQueue {
            queue: None,
            address,
            queued,
            backlog,
        })
        .collect();
    tally
}
