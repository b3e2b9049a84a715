//! What the flock has been through, counted: why workers ended, how reloads
//! went and how long they took, crash-loop exits, and the listen queues the
//! shell samples. `sheepdog status`, `/metrics` and `/readyz` read it.

use std::time::Duration;

use crate::clock::Moment;

use std::collections::BTreeMap;

use log::{info, warn};
use serde::{Deserialize, Serialize};

use super::flock::Flock;
use super::model::*;
use crate::logging::RateLimit;

/// Why a worker ended (and, unless scaled down, was replaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    /// It exited on its own with a code.
    Crash,
    /// Something else's signal killed it.
    Signal,
    /// The kernel's OOM killer killed it (the machine, or its cgroup, was
    /// out of memory).
    Oom,
    /// It missed its heartbeats and was killed.
    Hung,
    /// It was not ready within `ready_timeout` and was killed.
    ReadyTimeout,
    /// It sent WATCHDOG=trigger and was killed.
    Watchdog,
    /// It said it was leaving (STOPPING=1, 'stopping', `{act: 'suicide'}`).
    Stopping,
    /// Its process tree grew over the memory limit.
    Memory,
    /// It reached `max_age`.
    MaxAge,
    /// A reload (or its abort) rolled its slot onto another generation.
    Reload,
    /// Its slot was retired by scaling down.
    Scale,
    /// Someone asked for it to be replaced.
    Requested,
}

impl Cause {
    pub const ALL: [Cause; 12] = [
        Cause::Crash,
        Cause::Signal,
        Cause::Oom,
        Cause::Hung,
        Cause::ReadyTimeout,
        Cause::Watchdog,
        Cause::Stopping,
        Cause::Memory,
        Cause::MaxAge,
        Cause::Reload,
        Cause::Scale,
        Cause::Requested,
    ];

    /// The label in `/metrics` and the key in `status --json`.
    pub fn label(self) -> &'static str {
        match self {
            Cause::Crash => "crash",
            Cause::Signal => "signal",
            Cause::Oom => "oom",
            Cause::Hung => "hung",
            Cause::ReadyTimeout => "ready_timeout",
            Cause::Watchdog => "watchdog",
            Cause::Stopping => "stopping",
            Cause::Memory => "memory",
            Cause::MaxAge => "max_age",
            Cause::Reload => "reload",
            Cause::Scale => "scale",
            Cause::Requested => "requested",
        }
    }

    /// What happened to a worker, for `/readyz`'s reason.
    pub fn described(self) -> &'static str {
        match self {
            Cause::Crash => "crashed",
            Cause::Signal => "was killed by a signal",
            Cause::Oom => "was killed by the kernel's OOM killer",
            Cause::Hung => "missed heartbeats",
            Cause::ReadyTimeout => "was not ready in time",
            Cause::Watchdog => "asked to be killed (WATCHDOG=trigger)",
            Cause::Stopping => "said it was leaving",
            Cause::Memory => "went over its memory limit",
            Cause::MaxAge => "reached its max_age",
            Cause::Reload => "was replaced by a reload",
            Cause::Scale => "was scaled down",
            Cause::Requested => "was replaced on request",
        }
    }

    /// Why a worker that left the table ended; None for a shutdown.
    pub(super) fn of_exit(state: WorkerState, status: ExitStatus) -> Option<Cause> {
        let cause = match state {
            WorkerState::Stopping { cause, .. } => cause,
            // Not stopping: it ended on its own.
            _ => {
                return Some(match status {
                    ExitStatus::Code(_) => Cause::Crash,
                    ExitStatus::Signaled(_) => Cause::Signal,
                    ExitStatus::OomKilled => Cause::Oom,
                });
            }
        };
        Some(match cause {
            StopCause::Shutdown => return None,
            StopCause::ScaledDown => Cause::Scale,
            StopCause::Replaced(Retire::Reload | Retire::ReloadAborted) | StopCause::Superseded => Cause::Reload,
            StopCause::Replaced(Retire::MemoryLimit) => Cause::Memory,
            StopCause::Replaced(Retire::MaxAge) => Cause::MaxAge,
            StopCause::Replaced(Retire::Requested) => Cause::Requested,
            StopCause::Leaving | StopCause::Failed(Failure::LeftEarly) => Cause::Stopping,
            StopCause::Failed(Failure::Hung) => Cause::Hung,
            StopCause::Failed(Failure::NotReadyInTime) => Cause::ReadyTimeout,
            StopCause::Failed(Failure::Triggered) => Cause::Watchdog,
        })
    }
}

/// How a reload request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// Every slot runs the new generation.
    Ok,
    /// The new generation failed to start (or the supervisor stopped
    /// meanwhile); the old one serves.
    Failed,
    /// It never began: an invalid config, a setting that cannot change, or
    /// another reload in progress.
    Refused,
}

/// The upper bounds of the reload-duration histogram's buckets, in seconds.
pub const RELOAD_BUCKETS: [f64; 11] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// A Prometheus-style histogram: cumulative counts per upper bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations at or under each of [`RELOAD_BUCKETS`].
    pub buckets: [u64; RELOAD_BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, value: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(RELOAD_BUCKETS) {
            if value <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }
}

/// One listening socket's accept queue, as the shell sampled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenQueue {
    /// What it listens on.
    pub address: String,
    /// Connections the kernel completed that no worker accepted yet.
    pub queued: u32,
    /// The queue's limit (the listen() backlog).
    pub backlog: u32,
    /// Which of the address's queues (one per worker) it is, if it has several.
    pub queue: Option<usize>,
}

impl ListenQueue {
    /// The kernel refuses (or drops) new connections at this length.
    pub fn is_full(&self) -> bool {
        self.backlog > 0 && self.queued >= self.backlog
    }
}

/// A queue full for this many samples in a row (a second apart) is warned of.
const FULL_SAMPLES: u32 = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "TallyState", from = "TallyState")]
pub struct Tally {
    /// Workers ended, by cause, in the order of [`Cause::ALL`].
    ended: [u64; Cause::ALL.len()],
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub reloads_refused: u64,
    pub reload_seconds: Histogram,
    /// Times the crash-loop breaker tripped (the supervisor then exits).
    pub crash_loops: u64,
    /// The last sample of each listener's queue.
    pub queues: Vec<ListenQueue>,
    /// Samples in a row with some queue full.
    full_streak: u32,
    full_warnings: RateLimit,
}

/// The tally as the hand-over writes it: counts by cause label and by
/// bucket bound, so that a build with other causes or buckets takes what it
/// knows (a histogram is only comparable bucket by bucket).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TallyState {
    ended: BTreeMap<String, u64>,
    reloads_ok: u64,
    reloads_failed: u64,
    reloads_refused: u64,
    /// Upper bounds and cumulative counts of the reload-duration histogram.
    reload_buckets: Vec<(f64, u64)>,
    reload_count: u64,
    reload_sum: f64,
    crash_loops: u64,
    queues: Vec<(String, u32, u32)>,
}

impl From<Tally> for TallyState {
    fn from(tally: Tally) -> TallyState {
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
                .into_iter()
                .map(|q| (q.address, q.queued, q.backlog))
                .collect(),
        }
    }
}

impl From<TallyState> for Tally {
    fn from(state: TallyState) -> Tally {
        let mut tally = Tally::default();
        for (label, count) in &state.ended {
            if let Some(index) = Cause::ALL.iter().position(|c| c.label() == label) {
                tally.ended[index] = *count;
            }
        }
        tally.reloads_ok = state.reloads_ok;
        tally.reloads_failed = state.reloads_failed;
        tally.reloads_refused = state.reloads_refused;
        let histogram = &mut tally.reload_seconds;
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
}

/// A cause written by its label ("crash"); one this build does not know is
/// read as none.
pub(super) mod maybe_cause {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Cause;

    pub fn serialize<S: Serializer>(cause: &Option<Cause>, serializer: S) -> Result<S::Ok, S::Error> {
        match cause {
            Some(cause) => serializer.serialize_some(cause.label()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Cause>, D::Error> {
        let label = Option::<String>::deserialize(deserializer)?;
        Ok(label.and_then(|label| Cause::ALL.into_iter().find(|c| c.label() == label)))
    }
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            ended: [0; Cause::ALL.len()],
            reloads_ok: 0,
            reloads_failed: 0,
            reloads_refused: 0,
            reload_seconds: Histogram::default(),
            crash_loops: 0,
            queues: Vec::new(),
            full_streak: 0,
            full_warnings: RateLimit::new(1, Duration::from_secs(60)),
        }
    }
}

impl Tally {
    pub fn ended(&self, cause: Cause) -> u64 {
        let index = Cause::ALL.iter().position(|c| *c == cause).unwrap_or(0);
        self.ended[index]
    }

    /// Every cause with its count, zeros included (a counter that appears
    /// only at its first increment hides that increment from `rate()`).
    pub fn ended_by_cause(&self) -> impl Iterator<Item = (Cause, u64)> + '_ {
        Cause::ALL.iter().copied().zip(self.ended.iter().copied())
    }

    fn count_end(&mut self, cause: Cause) {
        if let Some(index) = Cause::ALL.iter().position(|c| *c == cause) {
            self.ended[index] += 1;
        }
    }

    /// Counts a reload's end; `took` is None for one that never began.
    pub(super) fn count_reload(&mut self, result: ReloadResult, took: Option<Duration>) {
        match result {
            ReloadResult::Ok => self.reloads_ok += 1,
            ReloadResult::Failed => self.reloads_failed += 1,
            ReloadResult::Refused => self.reloads_refused += 1,
        }
        if let Some(took) = took {
            self.reload_seconds.observe(took.as_secs_f64());
        }
    }

    /// The sum of queued connections over every listener.
    pub fn queued(&self) -> u64 {
        self.queues.iter().map(|q| u64::from(q.queued)).sum()
    }
}

impl Flock {
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Counts a worker that left the table, and remembers it for its slot.
    pub(super) fn count_end(&mut self, worker: &Worker, status: ExitStatus, now: Moment) {
        if let Some(cause) = Cause::of_exit(worker.state, status) {
            self.tally.count_end(cause);
            self.slot_mut(worker.slot, now).last_end = Some(cause);
        }
    }

    /// A new sample of the listen queues: a queue that stays full means the
    /// workers cannot keep up, and new connections are being refused.
    pub(super) fn on_queues_sampled(&mut self, now: Moment, queues: Vec<ListenQueue>) {
        let full: Vec<String> = queues
            .iter()
            .filter(|q| q.is_full())
            .map(|q| format!("{} ({}/{})", q.address, q.queued, q.backlog))
            .collect();
        if full.is_empty() {
            if self.tally.full_streak >= FULL_SAMPLES {
                info!("the listen queue is no longer full");
            }
            self.tally.full_streak = 0;
        } else {
            self.tally.full_streak += 1;
            if self.tally.full_streak >= FULL_SAMPLES && self.tally.full_warnings.allow(now) {
                warn!(
                    "the listen queue of {} has been full for {}s: the workers do not accept connections \
                     as fast as they come, and new ones are refused or dropped",
                    full.join(", "),
                    self.tally.full_streak
                );
            }
        }
        self.tally.queues = queues;
    }

    /// Why the flock is not healthy (by the watchdog relay's rule), or None
    /// when it is: "0/2 ready: worker 0 missed heartbeats, worker 1 starting".
    pub fn unhealthy_reason(&self) -> Option<String> {
        if self.is_shutting_down() {
            return Some(format!("stopping · {} workers left", self.workers.len()));
        }
        if self.is_healthy() {
            return None;
        }
        let mut why = Vec::new();
        for slot in 0..self.desired {
            let mut workers = self.workers.iter().filter(|w| w.slot == slot);
            if workers.clone().any(|w| w.serves()) {
                continue;
            }
            let last = self.slots.get(slot).and_then(|s| s.last_end);
            let astray = workers.clone().find(|w| w.is_ready() && !w.listens_itself.is_empty());
            let now = match (workers.next(), last) {
                _ if astray.is_some() => format!(
                    "worker {slot} listens on {} itself",
                    astray.map(|w| w.listens_itself.join(", ")).unwrap_or_default()
                ),
                (_, Some(cause)) => format!("worker {slot} {}", cause.described()),
                (Some(w), None) if w.is_starting() => format!("worker {slot} starting"),
                _ => format!("worker {slot} not started"),
            };
            why.push(now);
        }
        Some(format!(
            "{}/{} ready ({} needed): {}",
            self.ready_count(),
            self.desired,
            self.policy.min_ready.clamp(1, self.desired),
            why.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::ListenQueue;

    #[test]
    fn a_queue_is_full_at_its_backlog_and_one_without_a_backlog_never_is() {
        let queue = |queued, backlog| ListenQueue {
            address: "127.0.0.1:8080".into(),
            queued,
            backlog,
            queue: None,
        };
        assert!(queue(5, 5).is_full());
        assert!(!queue(4, 5).is_full());
        assert!(!queue(0, 0).is_full());
    }
}
