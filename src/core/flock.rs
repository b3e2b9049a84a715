//! The flock: the worker table, and the dispatch of each event to the
//! policies that decide what follows. Each policy lives in a module of its
//! own (`restart`, `health`, `reload`, `status`) with the deadline it needs.

use std::time::Duration;

use crate::clock::Moment;

use log::{debug, info, warn};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::health::Timers;
use super::model::*;
use super::recycle::Recycling;
use super::reload::{ReloadOutcome, Rollout};
use super::restart::{LoadGate, RestartHistory, Slot, SpawnBudget};
use super::tally::{ReloadResult, Tally};
use crate::config::MAX_WORKERS;
use crate::logging::RateLimit;
use crate::units::format_duration;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) enum Phase {
    #[default]
    Running,
    /// `exit_given`: the Exit action is given once, though more events
    /// may be handled in the same pass of the loop.
    ShuttingDown {
        code: i32,
        reason: String,
        exit_given: bool,
    },
}

/// The flock is its own state: the in-place upgrade writes it as it is and
/// the next binary reads it back (then [`Flock::validate`]s it). What a pass
/// or a stop keeps only for itself is not written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flock {
    pub(super) policy: Policy,
    pub(super) desired: usize,
    /// The generation new workers are started in, and its command.
    pub(super) generation: u32,
    pub(super) command: CommandId,
    /// The highest generation ever started (generations are never reused).
    pub(super) newest_generation: u32,
    pub(super) rollout: Option<Rollout>,
    pub(super) last_reload: Option<ReloadOutcome>,
    pub(super) workers: Vec<Worker>,
    pub(super) slots: Vec<Slot>,
    #[serde(flatten)]
    pub(super) history: RestartHistory,
    pub(super) budget: SpawnBudget,
    pub(super) timers: Timers,
    pub(super) recycling: Recycling,
    /// Only a running flock is handed over.
    #[serde(skip)]
    pub(super) phase: Phase,
    pub(super) announced_ready: bool,
    pub(super) last_status: String,
    pub(super) tally: Tally,
    /// What the shell adds to STATUS (which sheepdog, since an upgrade).
    #[serde(skip)]
    pub(super) note: Option<String>,
    /// Workers ordered in this pass, at most `SPAWNS_PER_PASS`.
    #[serde(skip)]
    pub(super) spawned_this_pass: usize,
    /// Paces a start past a CPU's worth of starting workers.
    #[serde(skip)]
    pub(super) load: LoadGate,
    /// Lines a worker can set off again and again (ERRNO=): 5 per 10 s.
    #[serde(skip, default = "worker_lines")]
    pub(super) worker_lines: RateLimit,
    /// Since when fewer than `min_ready` workers serve, and the unrequested
    /// exits since: a long enough stretch with any is a crash loop too.
    #[serde(default)]
    pub(super) unhealthy: Option<(Moment, u32)>,
    /// When workers not known to serve yet were last looked at.
    #[serde(skip)]
    pub(super) last_look: Option<Moment>,
    /// The nearest deadline as the last full pass left it; until then a
    /// pass of heartbeats alone decides nothing (see `is_quiet`).
    #[serde(skip)]
    pub(super) due: Option<Moment>,
    /// The last pass was quiet: nothing was reconciled, nothing changed.
    #[serde(skip)]
    pub(super) quiet: bool,
}

impl Flock {
    /// A flock of `policy.workers` workers, none started yet, that will run `command`.
    pub fn new(policy: Policy, command: CommandId, now: Moment) -> Flock {
        let desired = clamp_workers(policy.workers);
        Flock {
            desired,
            generation: 1,
            command,
            newest_generation: 1,
            rollout: None,
            last_reload: None,
            workers: Vec::new(),
            slots: (0..desired).map(|_| Slot::fresh(now)).collect(),
            history: RestartHistory::default(),
            budget: SpawnBudget::new(desired, policy.restart.max_spawn_rate, now),
            timers: Timers::new(&policy, now),
            recycling: Recycling::default(),
            phase: Phase::Running,
            announced_ready: false,
            last_status: String::new(),
            tally: Tally::default(),
            note: None,
            spawned_this_pass: 0,
            load: LoadGate::default(),
            worker_lines: worker_lines(),
            unhealthy: None,
            last_look: None,
            due: None,
            quiet: false,
            policy,
        }
    }

    /// A few words for the end of STATUS while the flock runs (the shell's:
    /// "sheepdog 0.2.0, upgraded from 0.1.0 at …").
    pub fn set_note(&mut self, note: Option<String>) {
        self.note = note;
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
        self.history.total
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn is_shutting_down(&self) -> bool {
        self.phase != Phase::Running
    }

    pub(super) fn is_running(&self) -> bool {
        self.phase == Phase::Running
    }

    /// One pass of the loop: applies every event the shell read, then
    /// reconciles the table with what is desired, once. No deadline is
    /// judged before all that was pending was applied: a `READY=1` that
    /// waited in its socket while the loop was late was on time.
    pub fn handle_pass(&mut self, now: Moment, events: Vec<Event>) -> Vec<Action> {
        let mut actions = Vec::new();
        self.quiet = self.is_quiet(now, &events);
        self.guard_against_stalls(now);
        if self.quiet {
            // Each heartbeat moves its worker's hung deadline later: nothing
            // can follow from them before the deadline already known, so a
            // flock of 256 beating workers costs no pass over the flock per beat.
            for event in events {
                self.apply(now, event, &mut actions);
            }
            return actions;
        }
        self.spawned_this_pass = 0;
        self.load.new_pass();
        for event in events {
            self.apply(now, event, &mut actions);
        }
        self.reconcile(now, &mut actions);
        self.due = self.next_deadline();
        self.unsignal_the_gone(&mut actions);
        actions
    }

    /// A signal decided earlier in a pass for a worker whose exit the same
    /// pass then applied is not sent: the shell has reaped it, and its pid
    /// may already be another process's.
    fn unsignal_the_gone(&self, actions: &mut Vec<Action>) {
        actions.retain(|action| match action {
            Action::Signal { pid, .. } => self.workers.iter().any(|w| w.pid == *pid),
            _ => true,
        });
    }

    /// Whether a pass of `events` at `now` can decide nothing: only
    /// heartbeats from workers that are serving, and the tick, before the
    /// nearest deadline the last full pass left.
    fn is_quiet(&self, now: Moment, events: &[Event]) -> bool {
        self.due.is_some_and(|due| now < due)
            && self.is_running()
            && events.iter().all(|event| match event {
                Event::Tick => true,
                Event::Message {
                    pid,
                    message: WorkerMessage::Heartbeat,
                } => self.workers.iter().any(|w| w.pid == *pid && w.serves_for_good()),
                _ => false,
            })
    }

    /// The last pass decided nothing (heartbeats alone before any deadline):
    /// the shell has nothing to publish after it either.
    pub fn was_quiet(&self) -> bool {
        self.quiet
    }

    /// A pass of one event (as [`Flock::handle_pass`]).
    pub fn handle(&mut self, now: Moment, event: Event) -> Vec<Action> {
        self.handle_pass(now, vec![event])
    }

    /// What an action of this pass led to (a fork's pid, the memory
    /// measured), recorded at once, so that the table is current for the
    /// next action; nothing is reconciled until [`Flock::settle`].
    pub fn outcome(&mut self, now: Moment, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        self.apply(now, event, &mut actions);
        self.unsignal_the_gone(&mut actions);
        actions
    }

    /// After the outcomes of a round of actions: one reconcile for them all.
    pub fn settle(&mut self, now: Moment) -> Vec<Action> {
        let mut actions = Vec::new();
        self.reconcile(now, &mut actions);
        self.due = self.next_deadline();
        actions
    }

    fn apply(&mut self, now: Moment, event: Event, actions: &mut Vec<Action>) {
        match event {
            Event::Tick => {}
            Event::Spawned { order, pid, at } => self.on_spawned(now, at, order, pid, actions),
            Event::SpawnFailed { order, reason } => {
                let slot = order.slot;
                self.slot_mut(slot, now).spawning = false;
                warn!("worker {slot}: could not start: {reason}");
                let what = format!("worker {slot} could not start: {reason}");
                self.on_failure(now, slot, actions, &what);
            }
            Event::Exited { pid, status } => self.on_exit(now, pid, status, actions),
            Event::Message { pid, message } => self.on_message(now, pid, message, actions),
            Event::Measured { pid, bytes } => self.on_measured(pid, bytes),
            Event::Inspected(found) => self.on_inspected(now, found, actions),
            Event::Request(request) => self.on_request(now, request, actions),
            Event::ListenersChecked { recovered, lost } => self.on_listeners_checked(now, recovered, lost, actions),
            Event::QueuesSampled(queues) => self.on_queues_sampled(now, queues),
            Event::Drained { pid } => self.on_drained(now, pid, actions),
            Event::LoadSampled { runnable } => self.load.sampled(now, runnable, self.policy.cpus),
        }
    }

    /// The earliest time at which `handle(Tick)` has something to do: the
    /// nearest of the deadlines each policy keeps.
    pub fn next_deadline(&self) -> Option<Moment> {
        let mut deadlines = vec![self.stop_deadline(), self.watchdog_deadline()];
        if self.is_running() {
            deadlines.extend([
                self.readiness_deadline(),
                self.heartbeat_deadline(),
                self.backoff_reset_deadline(),
                self.spawn_deadline(),
                self.recycle_deadline(),
                self.ping_deadline(),
                self.stall_guard_deadline(),
                self.measure_deadline(),
                self.listener_check_deadline(),
                self.unhealthy_deadline(),
                self.relook_deadline(),
            ]);
        }
        deadlines.into_iter().flatten().min()
    }

    fn reconcile(&mut self, now: Moment, actions: &mut Vec<Action>) {
        self.escalate_stops(now, actions);
        if self.is_running() {
            self.promote_ready(now);
            self.reset_backoffs(now);
            self.hint_unready(now);
            self.kill_unready(now, actions);
            self.kill_hung(now, actions);
            self.break_long_unhealth(now, actions);
        }
        // Killing may have tripped the crash-loop breaker: then nothing more
        // is started, replaced or pinged.
        if let Phase::ShuttingDown {
            code,
            reason,
            exit_given,
        } = &mut self.phase
        {
            if !*exit_given && self.workers.is_empty() && !self.slots.iter().any(|s| s.spawning) {
                *exit_given = true;
                actions.push(Action::Exit {
                    code: *code,
                    reason: reason.clone(),
                });
            }
            self.ping_watchdog(now, actions);
            return;
        }
        self.recycle_aged(now);
        self.retire_surplus(now, actions);
        self.stop_astray_replacements(now, actions);
        self.stop_replaced(now, actions);
        self.fill_slots(now, actions);
        self.finish_reload_if_done(now, actions);
        self.ping_workers(now, actions);
        self.measure(now, actions);
        self.check_listeners(now, actions);
        // A worker just ready is looked at in this pass; it counts as
        // serving (and READY=1 may be said) only once that answer is in.
        self.inspect_new(now, actions);
        if !self.announced_ready && self.is_healthy() {
            self.announced_ready = true;
            info!("ready: {}/{} workers", self.ready_count(), self.desired);
            actions.push(Action::Notify(Upward::Ready));
        }
        self.ping_watchdog(now, actions);
    }

    fn on_spawned(&mut self, now: Moment, at: Moment, order: SpawnOrder, pid: Pid, actions: &mut Vec<Action>) {
        self.slot_mut(order.slot, now).spawning = false;
        debug!(
            "worker {} (pid {pid}) started, generation {}",
            order.slot, order.generation
        );
        let mut worker = Worker {
            slot: order.slot,
            pid,
            generation: order.generation,
            started_at: at,
            state: WorkerState::Starting,
            last_heartbeat: at,
            memory: None,
            status: None,
            recycle_at: self.recycle_at(pid, order.slot, order.generation, at),
            listens_itself: Vec::new(),
            inspections: 0,
            inspected: false,
            draining: false,
            ready_hinted: false,
        };
        // Forked in the pass that began a shutdown, or for a generation that
        // a reload (or an abort) replaced meanwhile: it stops like the rest.
        let unwanted = match self.phase {
            Phase::ShuttingDown { .. } => Some(StopCause::Shutdown),
            Phase::Running if order.generation != self.generation => Some(StopCause::Superseded),
            Phase::Running => None,
        };
        if let Some(cause) = unwanted {
            stop_gracefully(&mut worker, now, cause, self.policy.stop_signal, actions);
        }
        self.workers.push(worker);
    }

    fn on_exit(&mut self, now: Moment, pid: Pid, status: ExitStatus, actions: &mut Vec<Action>) {
        let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
            // Orphaned descendants of workers are re-parented to us (we are a
            // child subreaper) and reaped here.
            debug!("reaped pid {pid}, not a worker ({status})");
            return;
        };
        let worker = self.workers.swap_remove(index);
        self.count_end(&worker, status, now);
        let (slot, pid) = (worker.slot, worker.pid);
        match worker.state {
            WorkerState::Stopping {
                cause: StopCause::Failed(_),
                ..
            } => debug!("worker {slot} (pid {pid}) {status}"),
            WorkerState::Stopping { since, .. } => {
                let took = seconds(now.saturating_duration_since(since));
                info!("worker {slot} (pid {pid}) stopped: {status} after {took} of draining");
            }
            // Not stopping: only while running (a shutdown stops every worker).
            _ => {
                let uptime = seconds(now.saturating_duration_since(worker.started_at));
                let was_ready = if worker.is_ready() { "" } else { " before it was ready" };
                let what = format!("worker {slot} (pid {pid}) {status} after {uptime}{was_ready}");
                self.on_worker_failed(now, &worker, actions, &what);
            }
        }
    }

    /// A worker failed. A new-generation worker that fails before it is ready
    /// aborts the reload; anything else is a crash to back off from.
    pub(super) fn on_worker_failed(&mut self, now: Moment, worker: &Worker, actions: &mut Vec<Action>, what: &str) {
        match &self.rollout {
            Some(rollout) if worker.is_starting() && worker.generation == rollout.generation => {
                self.abort_reload(now, what, actions);
            }
            _ => self.on_failure(now, worker.slot, actions, what),
        }
    }

    fn on_request(&mut self, now: Moment, request: Request, actions: &mut Vec<Action>) {
        if !self.is_running() {
            match request {
                Request::Stop => self.kill_all_now(now, actions),
                Request::Reload { ticket, command, .. } => {
                    actions.push(stopping_refusal(ticket));
                    actions.push(Action::ReleaseCommand(command));
                }
                Request::ReloadRefused { ticket, .. } => actions.push(stopping_refusal(ticket)),
                other => debug!("ignoring {other:?} during shutdown"),
            }
            return;
        }
        match request {
            Request::Stop => {
                info!(
                    "stopping {} workers (stop signal {}, timeout {})",
                    self.workers.len(),
                    self.policy.stop_signal.as_str(),
                    format_duration(self.policy.stop_timeout)
                );
                self.begin_shutdown(now, 0, "stopped on request".into(), actions);
            }
            Request::ScaleUp => self.scale_up(now),
            Request::ScaleDown => self.scale_down(),
            Request::Scale(workers) => self.scale_to(now, workers),
            Request::Reload {
                ticket,
                policy,
                command,
            } => self.begin_reload(now, ticket, *policy, command, actions),
            Request::ReloadRefused { ticket, reason } => self.refuse_invalid_reload(ticket, reason, actions),
            Request::Replace(slot) => self.replace_on_request(slot),
        }
    }

    /// A second stop request: SIGKILL for whoever is still there.
    fn kill_all_now(&mut self, now: Moment, actions: &mut Vec<Action>) {
        warn!(
            "second stop request: killing the remaining {} workers now",
            self.workers.len()
        );
        for worker in &mut self.workers {
            match worker.state {
                WorkerState::Stopping { killed: true, .. } => {}
                WorkerState::Stopping { since, cause, .. } => {
                    worker.draining = false;
                    worker.state = WorkerState::Stopping {
                        since,
                        cause,
                        killed: true,
                    };
                    actions.push(sigkill(worker.pid));
                }
                _ => {
                    worker.state = WorkerState::Stopping {
                        since: now,
                        cause: StopCause::Shutdown,
                        killed: true,
                    };
                    actions.push(sigkill(worker.pid));
                }
            }
        }
    }

    pub(super) fn begin_shutdown(&mut self, now: Moment, code: i32, reason: String, actions: &mut Vec<Action>) {
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
            let took = now.saturating_duration_since(rollout.started);
            self.tally.count_reload(ReloadResult::Failed, Some(took));
        }
        self.phase = Phase::ShuttingDown {
            code,
            reason,
            exit_given: false,
        };
        actions.push(Action::Notify(Upward::Stopping));
        // Every worker gets the stop signal, those already leaving on their
        // own too (sheepdog never sent them one); not those sheepdog already
        // stopped or killed.
        let signal = self.policy.stop_signal;
        for worker in &mut self.workers {
            match worker.state {
                WorkerState::Stopping {
                    cause: StopCause::Leaving,
                    killed: false,
                    ..
                }
                | WorkerState::Starting
                | WorkerState::Ready { .. } => stop_gracefully(worker, now, StopCause::Shutdown, signal, actions),
                WorkerState::Stopping { .. } if worker.draining => send_held_stop(worker, now, signal, actions),
                WorkerState::Stopping { .. } => {}
            }
        }
    }

    /// The queue of a draining worker is empty: its stop signal goes now,
    /// and its stop timeout runs from here.
    fn on_drained(&mut self, now: Moment, pid: Pid, actions: &mut Vec<Action>) {
        let signal = self.policy.stop_signal;
        if let Some(worker) = self.workers.iter_mut().find(|w| w.pid == pid && w.draining) {
            debug!(
                "worker {} (pid {pid}): its queue is empty; sending {}",
                worker.slot,
                signal.as_str()
            );
            send_held_stop(worker, now, signal, actions);
        }
    }

    fn drain_limit(&self) -> Duration {
        DRAIN_LIMIT.min(self.policy.stop_timeout)
    }

    /// SIGKILL for workers still there a stop timeout after their stop
    /// signal; the stop signal for those whose queue did not empty in time.
    fn escalate_stops(&mut self, now: Moment, actions: &mut Vec<Action>) {
        let (limit, signal) = (self.drain_limit(), self.policy.stop_signal);
        for worker in self.workers.iter_mut().filter(|w| w.draining) {
            if let WorkerState::Stopping { since, .. } = worker.state
                && now.saturating_duration_since(since) >= limit
            {
                warn!(
                    "worker {} (pid {}): its accept queue was not empty after {}; sending {} anyway",
                    worker.slot,
                    worker.pid,
                    format_duration(limit),
                    signal.as_str()
                );
                send_held_stop(worker, now, signal, actions);
            }
        }
        let timeout = self.policy.stop_timeout;
        for worker in self.workers.iter_mut().filter(|w| !w.draining) {
            if let WorkerState::Stopping {
                since,
                cause,
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
                    cause,
                    killed: true,
                };
                actions.push(sigkill(worker.pid));
            }
        }
    }

    /// When a stopping worker that has not been killed yet gets SIGKILL.
    pub(super) fn stop_deadline(&self) -> Option<Moment> {
        self.workers
            .iter()
            .filter_map(|w| match w.state {
                WorkerState::Stopping { since, .. } if w.draining => Some(since + self.drain_limit()),
                WorkerState::Stopping {
                    since, killed: false, ..
                } => Some(since + self.policy.stop_timeout),
                _ => None,
            })
            .min()
    }

    pub(super) fn slot_mut(&mut self, slot: usize, now: Moment) -> &mut Slot {
        self.ensure_slots(slot + 1, now);
        &mut self.slots[slot]
    }

    /// At least `count` slots exist (a scale-up or a reload may add some).
    pub(super) fn ensure_slots(&mut self, count: usize, now: Moment) {
        let count = count.max(self.slots.len());
        self.slots.resize_with(count, || Slot::fresh(now));
    }

    /// Workers that serve the flock: ready, and not found listening on a
    /// port of their own instead of its socket.
    pub fn ready_count(&self) -> usize {
        self.workers.iter().filter(|w| w.serves()).count()
    }
}

/// Sends a worker its stop signal; SIGKILL follows after the stop timeout.
/// A worker that took connections is drained first: no new connection is
/// sent its way and the signal waits until what was queued for it has been
/// taken (at most `DRAIN_LIMIT`). At a shutdown there is no other worker to
/// send them to: the signal goes at once.
pub(super) fn stop_gracefully(
    worker: &mut Worker,
    now: Moment,
    cause: StopCause,
    signal: Signal,
    actions: &mut Vec<Action>,
) {
    let drain = worker.takes_connections() && cause != StopCause::Shutdown;
    worker.state = WorkerState::Stopping {
        since: now,
        cause,
        killed: false,
    };
    worker.draining = drain;
    actions.push(if drain {
        Action::Drain { pid: worker.pid }
    } else {
        Action::Signal {
            pid: worker.pid,
            signal,
        }
    });
}

/// The longest a stop signal waits for its worker's queue to empty: a
/// worker that does not take what is queued for it (busy, or hung but not
/// yet found out) is stopped anyway, never later than its stop timeout.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// The stop signal a drain held back, sent now.
fn send_held_stop(worker: &mut Worker, now: Moment, signal: Signal, actions: &mut Vec<Action>) {
    if let WorkerState::Stopping { cause, killed, .. } = worker.state {
        worker.state = WorkerState::Stopping {
            since: now,
            cause,
            killed,
        };
    }
    worker.draining = false;
    actions.push(Action::Signal {
        pid: worker.pid,
        signal,
    });
}

pub(super) fn sigkill(pid: Pid) -> Action {
    Action::Signal {
        pid,
        signal: Signal::SIGKILL,
    }
}

fn stopping_refusal(ticket: u64) -> Action {
    Action::ReloadFinished {
        ticket,
        ok: false,
        message: "the supervisor is stopping".into(),
    }
}

/// The rate of lines a worker can set off again and again.
pub(super) fn worker_lines() -> RateLimit {
    RateLimit::new(5, Duration::from_secs(10))
}

/// The worker count, within what one sheepdog runs.
pub(super) fn clamp_workers(workers: usize) -> usize {
    workers.clamp(1, MAX_WORKERS as usize)
}

pub(super) fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}
