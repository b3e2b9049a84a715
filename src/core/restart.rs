//! Restarts: per-slot backoff, the flock's crash-loop breaker, the bound on
//! spawns per second, and filling slots (first start, refills, scaling,
//! replacements within the surge).

use std::collections::VecDeque;
use std::time::Duration;

use crate::clock::Moment;
use serde::{Deserialize, Serialize};

use log::{debug, error, info, warn};

use super::flock::{Flock, clamp_workers, stop_gracefully};
use super::model::*;
use crate::config::{MAX_WORKERS, RestartPolicy};
use crate::units::format_duration;

/// Workers started in one pass of the loop at most: a large flock starts
/// over several passes, and between them the control socket and the
/// workers' channels are served (forking hundreds of workers whose shell
/// wrappers take the CPUs would otherwise hold the loop for seconds).
pub(super) const SPAWNS_PER_PASS: usize = 32;

/// How long spawns wait when the machine has no CPU to spare, before the
/// load is looked at again (a worker that becomes ready or goes is looked
/// at sooner: events wake the loop).
pub(super) const LOAD_RETRY: Duration = Duration::from_millis(20);

/// Paces a large start by the CPU its starting workers take. A worker's
/// `ready_timeout` runs from its fork: a thousand workers forked at once
/// onto two CPUs (behind shell shims that take 100 ms of CPU each) would
/// all be late through no fault of their own, and take the loop's CPU with
/// them. So as many workers as there are CPUs start at once whatever they
/// do; more start only while fewer starting workers than CPUs are running
/// on a CPU, a CPU's worth per look. Workers whose start waits on I/O (a
/// database, a cache) leave the CPUs idle and start all at once; so do
/// workers on a machine busy with other work (a permanently busy machine
/// would otherwise hold a large flock at the floor).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct LoadGate {
    /// Spawns the last look allows, in this pass.
    allowance: usize,
    /// A look was asked for in this pass and not answered yet.
    asked: bool,
    /// The machine was busy: nothing past the floor starts before this.
    hold_until: Option<Moment>,
}

impl LoadGate {
    pub fn new_pass(&mut self) {
        self.allowance = 0;
        self.asked = false;
    }

    /// `running`: how many starting workers were running on a CPU.
    pub fn sampled(&mut self, now: Moment, running: usize, cpus: usize) {
        self.asked = false;
        if running >= cpus.max(1) {
            self.allowance = 0;
            self.hold_until = Some(now + LOAD_RETRY);
        } else {
            self.allowance = cpus.max(1);
            self.hold_until = None;
        }
    }

    /// Whether one more worker may start now, `starting` being under way;
    /// asks for a look at the load when it needs one.
    pub fn admit(&mut self, now: Moment, starting: usize, cpus: usize, actions: &mut Vec<Action>) -> bool {
        if starting < cpus.max(2) {
            return true;
        }
        if self.hold_until.is_some_and(|until| now < until) {
            return false;
        }
        if self.allowance > 0 {
            self.allowance -= 1;
            return true;
        }
        if !self.asked {
            self.asked = true;
            actions.push(Action::SampleLoad);
        }
        false
    }

    /// When the load is looked at again, after a busy look.
    pub fn hold_until(&self) -> Option<Moment> {
        self.hold_until
    }
}

/// A slot is a stable worker identity (`SHEEPDOG_WORKER_ID`) that outlives the
/// processes filling it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Slot {
    /// When the slot may be filled again (now for a fresh slot, later after a crash).
    pub next_spawn: Moment,
    /// A spawn was ordered and its outcome is not known yet.
    pub spawning: bool,
    /// Unrequested exits in a row: the exponent of the backoff.
    pub failures: u32,
    pub restarts: u32,
    /// Why its last worker ended, if one did (by its label; one this build
    /// does not know is read as none).
    #[serde(with = "super::tally::maybe_cause")]
    pub last_end: Option<super::tally::Cause>,
}

impl Slot {
    pub fn fresh(now: Moment) -> Slot {
        Slot {
            next_spawn: now,
            spawning: false,
            failures: 0,
            restarts: 0,
            last_end: None,
        }
    }
}

/// Unrequested exits across the flock.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct RestartHistory {
    /// Those within the restart window, oldest first.
    #[serde(rename = "recent_restarts")]
    pub recent: VecDeque<Moment>,
    #[serde(rename = "total_restarts")]
    pub total: u32,
}

/// Spawns are rationed by a token bucket, so that no combination of crashing
/// workers and scaling requests turns into a fork storm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct SpawnBudget {
    pub tokens: f64,
    pub capacity: f64,
    pub per_second: f64,
    pub updated: Moment,
}

impl SpawnBudget {
    /// The first start may fork the whole flock at once.
    pub fn new(workers: usize, max_spawn_rate: u32, now: Moment) -> SpawnBudget {
        let per_second = max_spawn_rate.max(1) as f64;
        let capacity = (workers as f64).max(per_second);
        SpawnBudget {
            tokens: capacity,
            capacity,
            per_second,
            updated: now,
        }
    }

    pub fn refill(&mut self, now: Moment) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
    }

    pub fn next_token_at(&self) -> Moment {
        let missing = (1.0 - self.tokens).max(0.0);
        self.updated + Duration::from_secs_f64(missing / self.per_second)
    }
}

/// The delay before refilling a slot after `failures` failures in a row
/// already: none for the first (a worker that ran well and died once is
/// replaced at once, as pm2, unicorn and gunicorn do), then
/// `backoff_initial · 2^(failures - 1)`, capped at `backoff_max`.
pub(super) fn backoff(policy: &RestartPolicy, failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 2u32.saturating_pow((failures - 1).min(30));
    policy.backoff_initial.saturating_mul(factor).min(policy.backoff_max)
}

/// Who fills each desired slot now, counted once per pass.
struct Occupancy {
    /// A starting worker, or a ready one not being replaced: nothing to do.
    filled: Vec<bool>,
    /// Any worker that is not stopping (a retiring one included).
    occupied: Vec<bool>,
    /// Workers not stopping, and spawns on their way.
    live: usize,
    /// Workers starting (not ready yet, not stopping), and spawns on their way.
    starting: usize,
}

impl Flock {
    /// An unrequested end of a worker: back off, and break a crash loop.
    pub(super) fn on_failure(&mut self, now: Moment, slot: usize, actions: &mut Vec<Action>, what: &str) {
        if !self.is_running() {
            return;
        }
        let what = &format!("{what}{}", self.port_clash_hint(slot));
        let policy = self.policy.restart.clone();
        let recent = &mut self.history.recent;
        recent.push_back(now);
        while recent
            .front()
            .is_some_and(|oldest| now.saturating_duration_since(*oldest) > policy.window)
        {
            recent.pop_front();
        }
        if recent.len() > policy.max_restarts as usize {
            let reason = format!(
                "crash loop: {} unrequested worker exits within {} (max_restarts = {}); last: {what}",
                recent.len(),
                format_duration(policy.window),
                policy.max_restarts
            );
            error!("{what}; giving up");
            self.tally.crash_loops += 1;
            self.begin_shutdown(now, 1, reason, actions);
            return;
        }
        self.history.total += 1;
        // Counted toward a long stretch below min_ready (cleared again by
        // the next pass if the flock is healthy all the same).
        self.unhealthy.get_or_insert((now, 0)).1 += 1;
        let state = self.slot_mut(slot, now);
        let delay = backoff(&policy, state.failures);
        state.failures += 1;
        state.restarts += 1;
        state.next_spawn = now + delay;
        if slot >= self.desired {
            warn!("{what}; not restarted (slot retired)");
        } else if delay.is_zero() {
            warn!("{what}; restarting it now");
        } else {
            warn!("{what}; restarting in {}", format_duration(delay));
        }
    }

    /// Why workers may keep failing at start: another of the flock listens
    /// on a port of its own, which the others then fail to bind
    /// (EADDRINUSE). Said on the failure's own line.
    fn port_clash_hint(&self, slot: usize) -> String {
        let Some(holder) = self
            .workers
            .iter()
            .find(|w| w.slot != slot && !w.is_stopping() && !w.listens_itself.is_empty())
        else {
            return String::new();
        };
        format!(
            " (worker {} (pid {}) listens on {} itself, so a worker binding that port fails with \
             EADDRINUSE: workers must listen on the socket sheepdog passes, fd 3; for Node, node = \"auto\" \
             does it, or node = \"on\" when node is started through a wrapper)",
            holder.slot,
            holder.pid,
            holder.listens_itself.join(", ")
        )
    }

    /// How long the flock may have fewer than `min_ready` workers serving,
    /// with unrequested exits meanwhile, before it is a crash loop: five
    /// restart windows (5 minutes by default). A flock too small to ever
    /// pass `max_restarts` in one window (one worker whose program is
    /// missing, backed off to 30 s) would otherwise retry for ever.
    pub(super) fn unhealthy_limit(&self) -> Duration {
        self.policy.restart.window.saturating_mul(5)
    }

    /// Below `min_ready` for [`Flock::unhealthy_limit`] with failures
    /// meanwhile: stop the flock and exit 1, as for any crash loop.
    pub(super) fn break_long_unhealth(&mut self, now: Moment, actions: &mut Vec<Action>) {
        // Counted by desired slot: a replacement ready beside the worker it
        // replaces, or a worker of a slot a scale-down retires (both stopped
        // later in this pass), is no end of the stretch.
        let mut served: Vec<usize> = self
            .workers
            .iter()
            .filter(|w| w.serves() && w.slot < self.desired)
            .map(|w| w.slot)
            .collect();
        served.sort_unstable();
        served.dedup();
        if served.len() >= self.min_ready() {
            self.unhealthy = None;
            return;
        }
        let (since, failures) = *self.unhealthy.get_or_insert((now, 0));
        let limit = self.unhealthy_limit();
        if failures == 0 || now.saturating_duration_since(since) < limit {
            return;
        }
        let reason = format!(
            "crash loop: fewer than {} of {} workers ready for {} (5 × restart_window), with {failures} unrequested \
             exits meanwhile",
            self.policy.min_ready.clamp(1, self.desired),
            self.desired,
            format_duration(limit)
        );
        error!("{reason}; giving up");
        self.tally.crash_loops += 1;
        self.begin_shutdown(now, 1, reason, actions);
    }

    /// When a stretch below `min_ready` with failures becomes a crash loop.
    pub(super) fn unhealthy_deadline(&self) -> Option<Moment> {
        let (since, failures) = self.unhealthy?;
        (failures > 0).then(|| since + self.unhealthy_limit())
    }

    /// The desired slots with no live worker and none on its way, and when
    /// each will be filled (not before the spawn budget allows).
    pub fn waiting_slots(&self) -> Vec<(usize, Moment)> {
        let Occupancy { occupied, .. } = self.occupancy();
        let token = self.budget.next_token_at();
        (0..self.desired)
            .filter_map(|slot| {
                let state = self.slots.get(slot)?;
                (!occupied[slot] && !state.spawning).then(|| (slot, state.next_spawn.max(token)))
            })
            .collect()
    }

    /// A worker ready for `backoff_reset` clears its slot's backoff, if it
    /// started after the failures (at or after the slot's `next_spawn`): a
    /// predecessor serving on while its replacements fail says nothing of
    /// them.
    pub(super) fn reset_backoffs(&mut self, now: Moment) {
        let reset_after = self.policy.restart.backoff_reset;
        for worker in &self.workers {
            if let Some(since) = self.clears_backoff(worker)
                && now.saturating_duration_since(since) >= reset_after
                && let Some(slot) = self.slots.get_mut(worker.slot)
            {
                slot.failures = 0;
            }
        }
    }

    /// When a ready worker will have cleared its slot's backoff.
    pub(super) fn backoff_reset_deadline(&self) -> Option<Moment> {
        self.workers
            .iter()
            .filter_map(|w| self.clears_backoff(w))
            .map(|since| since + self.policy.restart.backoff_reset)
            .min()
    }

    /// Since when `worker` has been ready, if it is one whose readiness
    /// clears its slot's backoff: started since the slot's last failure,
    /// which has some.
    fn clears_backoff(&self, worker: &Worker) -> Option<Moment> {
        let slot = self.slots.get(worker.slot)?;
        match worker.state {
            WorkerState::Ready { since, .. } if slot.failures > 0 && worker.started_at >= slot.next_spawn => {
                Some(since)
            }
            _ => None,
        }
    }

    fn occupancy(&self) -> Occupancy {
        let mut filled = vec![false; self.desired];
        let mut occupied = vec![false; self.desired];
        let spawning = self.slots.iter().filter(|s| s.spawning).count();
        let mut live = spawning;
        let mut starting = spawning;
        for worker in self.workers.iter().filter(|w| !w.is_stopping()) {
            live += 1;
            starting += usize::from(worker.is_starting());
            if let Some(slot) = occupied.get_mut(worker.slot) {
                *slot = true;
            }
            if worker.fills_slot()
                && let Some(slot) = filled.get_mut(worker.slot)
            {
                *slot = true;
            }
        }
        Occupancy {
            filled,
            occupied,
            live,
            starting,
        }
    }

    /// Desired slots with no live worker and none on its way.
    fn empty_slots_waiting(&self, occupied: &[bool]) -> usize {
        (0..self.desired)
            .filter(|&slot| !occupied[slot] && !self.slots[slot].spawning)
            .count()
    }

    /// Starts workers for empty slots first, then replacements for slots
    /// whose worker is retiring (reload, memory), those within `max_surge`:
    /// at most `desired + max_surge` workers run at once.
    pub(super) fn fill_slots(&mut self, now: Moment, actions: &mut Vec<Action>) {
        self.budget.refill(now);
        // A reload may have raised the count: every desired slot exists.
        self.ensure_slots(self.desired, now);
        let Occupancy {
            filled,
            occupied,
            mut live,
            mut starting,
        } = self.occupancy();
        for replacing in [false, true] {
            // An empty slot still backing off will be filled: the surge
            // keeps its room, or it would run past `desired + max_surge`.
            let waiting = self.empty_slots_waiting(&occupied);
            for slot in 0..self.desired {
                let state = &self.slots[slot];
                if filled[slot] || occupied[slot] != replacing || state.spawning || state.next_spawn > now {
                    continue;
                }
                if replacing && (live + waiting).saturating_sub(self.desired) >= self.policy.max_surge {
                    return;
                }
                if self.spawned_this_pass >= SPAWNS_PER_PASS {
                    // The rest in the next pass, at once: in between, the
                    // loop reads what the workers and clients said.
                    return;
                }
                if self.budget.tokens < 1.0 {
                    debug!(
                        "spawn rate limit reached ({}/s); slot {slot} waits",
                        self.policy.restart.max_spawn_rate
                    );
                    return;
                }
                if !self.load.admit(now, starting, self.policy.cpus, actions) {
                    debug!("{starting} workers are starting and the CPUs are busy; slot {slot} waits");
                    return;
                }
                self.budget.tokens -= 1.0;
                self.spawned_this_pass += 1;
                self.slots[slot].spawning = true;
                live += 1;
                starting += 1;
                if let Some(old) = self.workers.iter().find(|w| w.slot == slot && w.retiring().is_some()) {
                    let reason = old.retiring().map_or(String::new(), |r| r.to_string());
                    info!("worker {slot} (pid {}): starting its replacement ({reason})", old.pid);
                }
                actions.push(Action::Spawn(SpawnOrder {
                    slot,
                    generation: self.generation,
                    command: self.command,
                    heartbeat: self.policy.heartbeat,
                }));
            }
        }
    }

    /// When `fill_slots` can next start a worker: for an empty slot, when its
    /// backoff ends; for a replacement, only while the surge has room (a
    /// replacement held back by the surge waits for a worker to become
    /// ready or to exit, which are events, not deadlines); and never before
    /// the spawn budget has a token.
    pub(super) fn spawn_deadline(&self) -> Option<Moment> {
        let Occupancy {
            filled,
            occupied,
            live,
            starting,
        } = self.occupancy();
        // Past the floor, a busy machine puts the next start off (a past
        // hold changes nothing).
        let held = (starting >= self.policy.cpus.max(2))
            .then(|| self.load.hold_until())
            .flatten();
        let surge_room =
            (live + self.empty_slots_waiting(&occupied)).saturating_sub(self.desired) < self.policy.max_surge;
        (0..self.desired)
            .filter_map(|slot| {
                let state = self.slots.get(slot)?;
                let waiting = !filled[slot] && !state.spawning && (!occupied[slot] || surge_room);
                waiting.then_some(state.next_spawn)
            })
            .min()
            .map(|at| at.max(self.budget.next_token_at()))
            .map(|at| held.map_or(at, |until| at.max(until)))
    }

    /// Stops the workers of slots above the desired count (after a scale-down).
    pub(super) fn retire_surplus(&mut self, now: Moment, actions: &mut Vec<Action>) {
        let signal = self.policy.stop_signal;
        for worker in &mut self.workers {
            if worker.slot >= self.desired && !worker.is_stopping() {
                info!(
                    "worker {} (pid {}) retired by scale-down; sending {}",
                    worker.slot,
                    worker.pid,
                    signal.as_str()
                );
                stop_gracefully(worker, now, StopCause::ScaledDown, signal, actions);
            }
        }
    }

    /// SIGTTIN: one worker more.
    pub(super) fn scale_up(&mut self, now: Moment) {
        if self.desired >= MAX_WORKERS as usize {
            warn!("already at the maximum of {MAX_WORKERS} workers");
            return;
        }
        self.open_slots(now, self.desired + 1);
        info!("scaling up to {} workers", self.desired);
    }

    /// SIGTTOU: one worker less.
    pub(super) fn scale_down(&mut self) {
        if self.desired <= 1 {
            warn!("not scaling below 1 worker");
            return;
        }
        self.desired -= 1;
        info!("scaling down to {} workers", self.desired);
    }

    /// `sheepdog scale N`.
    pub(super) fn scale_to(&mut self, now: Moment, workers: usize) {
        let workers = clamp_workers(workers);
        if workers != self.desired {
            info!("scaling from {} to {workers} workers", self.desired);
            self.open_slots(now, workers);
            self.desired = workers;
        }
    }

    /// Makes slots up to `workers` fillable now (a slot still in backoff from
    /// an earlier life keeps it).
    fn open_slots(&mut self, now: Moment, workers: usize) {
        for slot in self.desired..workers {
            let state = self.slot_mut(slot, now);
            state.next_spawn = state.next_spawn.max(now);
        }
        self.desired = self.desired.max(workers);
    }
}
