//! Rolling reloads: generation g+1 replaces g slot by slot within the surge,
//! each old worker stopped only once its replacement is ready; a new worker
//! that fails to start aborts the roll and the old generation comes back.

use crate::clock::Moment;
use serde::{Deserialize, Serialize};

use log::{error, info, warn};

use super::flock::{Flock, clamp_workers, seconds, stop_gracefully};
use super::model::*;
use super::tally::ReloadResult;

/// A rolling reload in progress: workers of older generations are replaced
/// slot by slot by workers of `generation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Rollout {
    pub ticket: u64,
    pub generation: u32,
    pub from_generation: u32,
    pub started: Moment,
    /// What to go back to if the new generation fails to start.
    pub previous: Policy,
    pub previous_desired: usize,
    pub previous_command: CommandId,
}

/// How the last reload ended, for STATUS and `sheepdog status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// The generation it rolled to (or tried to); None for a reload refused
    /// before any generation began.
    pub generation: Option<u32>,
    pub ok: bool,
    pub message: String,
}

impl Flock {
    /// Starts rolling the flock onto a new generation running `command` under `policy`.
    pub(super) fn begin_reload(
        &mut self,
        now: Moment,
        ticket: u64,
        policy: Policy,
        command: CommandId,
        actions: &mut Vec<Action>,
    ) {
        if self.refuse_during_rollout(ticket, actions) {
            actions.push(Action::ReleaseCommand(command));
            return;
        }
        self.notify_reloading(actions);
        let changed = if policy.readiness != self.policy.readiness {
            Some((
                "readiness",
                self.policy.readiness.to_string(),
                policy.readiness.to_string(),
            ))
        } else if policy.channel != self.policy.channel {
            Some(("channel", self.policy.channel.to_string(), policy.channel.to_string()))
        } else {
            None
        };
        if let Some((key, from, to)) = changed {
            let message =
                format!("{key} cannot change in a reload (\"{from}\" to \"{to}\"): restart the service instead");
            self.refuse_reload(ticket, message, actions);
            actions.push(Action::ReleaseCommand(command));
            return;
        }
        self.newest_generation += 1;
        let generation = self.newest_generation;
        let previous = std::mem::replace(&mut self.policy, policy);
        let previous_desired = self.desired;
        let previous_command = std::mem::replace(&mut self.command, command);
        self.desired = clamp_workers(self.policy.workers);
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
            previous_command,
        });
        self.generation = generation;
        let stop_signal = self.policy.stop_signal;
        for worker in &mut self.workers {
            match worker.state {
                // Not serving yet: nothing to keep it for.
                WorkerState::Starting => {
                    stop_gracefully(worker, now, StopCause::Superseded, stop_signal, actions);
                }
                WorkerState::Ready { since, .. } => {
                    worker.state = WorkerState::Ready {
                        since,
                        retiring: Some(Retire::Reload),
                    }
                }
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
        self.tally.count_reload(ReloadResult::Refused, None);
        actions.push(Action::ReloadFinished {
            ticket,
            ok: false,
            message,
        });
        true
    }

    /// A reload whose config could not be used (the shell says why).
    pub(super) fn refuse_invalid_reload(&mut self, ticket: u64, reason: String, actions: &mut Vec<Action>) {
        if !self.refuse_during_rollout(ticket, actions) {
            self.notify_reloading(actions);
            self.refuse_reload(ticket, reason, actions);
        }
    }

    /// RELOADING=1, once the flock was announced ready: a reload during the
    /// start leaves READY=1 to the start, sent when the minimum is ready.
    fn notify_reloading(&self, actions: &mut Vec<Action>) {
        if self.announced_ready {
            actions.push(Action::Notify(Upward::Reloading));
        }
    }

    /// A reload that does not start: READY=1 again at once, and the reason.
    fn refuse_reload(&mut self, ticket: u64, message: String, actions: &mut Vec<Action>) {
        error!("reload refused: {message}");
        self.tally.count_reload(ReloadResult::Refused, None);
        self.end_reload(ticket, None, false, message, actions);
    }

    /// Records how a reload to `generation` ended, tells systemd the flock
    /// is ready again, and whoever waits on `ticket` how it went.
    fn end_reload(
        &mut self,
        ticket: u64,
        generation: Option<u32>,
        ok: bool,
        message: String,
        actions: &mut Vec<Action>,
    ) {
        self.last_reload = Some(ReloadOutcome {
            generation,
            ok,
            message: message.clone(),
        });
        if self.announced_ready {
            actions.push(Action::Notify(Upward::Ready));
        }
        actions.push(Action::ReloadFinished { ticket, ok, message });
    }

    /// The new generation failed to start: go back to the old one. Workers of
    /// the new generation still starting are stopped; ready ones are replaced
    /// by old-generation workers slot by slot, like any reload.
    pub(super) fn abort_reload(&mut self, now: Moment, what: &str, actions: &mut Vec<Action>) {
        let Some(rollout) = self.rollout.take() else { return };
        let message = format!(
            "reload to generation {} failed: {what}; generation {} keeps serving",
            rollout.generation, rollout.from_generation
        );
        error!("{message}");
        let took = now.saturating_duration_since(rollout.started);
        self.tally.count_reload(ReloadResult::Failed, Some(took));
        self.policy = rollout.previous;
        self.desired = rollout.previous_desired;
        self.generation = rollout.from_generation;
        let abandoned = std::mem::replace(&mut self.command, rollout.previous_command);
        let stop_signal = self.policy.stop_signal;
        for worker in &mut self.workers {
            match worker.state {
                // Only the new generation can be starting during a roll (an
                // old worker forked meanwhile was stopped as superseded).
                WorkerState::Starting => {
                    stop_gracefully(worker, now, StopCause::Superseded, stop_signal, actions);
                }
                WorkerState::Ready { since, .. } if worker.generation == rollout.generation => {
                    worker.state = WorkerState::Ready {
                        since,
                        retiring: Some(Retire::ReloadAborted),
                    };
                }
                WorkerState::Ready {
                    since,
                    retiring: Some(Retire::Reload),
                } => {
                    worker.state = WorkerState::Ready { since, retiring: None };
                }
                _ => {}
            }
        }
        self.end_reload(rollout.ticket, Some(rollout.generation), false, message, actions);
        actions.push(Action::ReleaseCommand(abandoned));
    }

    /// The reload is done once every desired slot has a ready worker of the
    /// new generation and every old worker has been told to stop.
    pub(super) fn finish_reload_if_done(&mut self, now: Moment, actions: &mut Vec<Action>) {
        let Some(rollout) = &self.rollout else { return };
        let generation = rollout.generation;
        let old_serving = self
            .workers
            .iter()
            .any(|w| !w.is_stopping() && w.generation != generation);
        let mut ready = vec![false; self.desired];
        for worker in &self.workers {
            if worker.generation == generation
                && worker.serves()
                && let Some(slot) = ready.get_mut(worker.slot)
            {
                *slot = true;
            }
        }
        if old_serving || !ready.iter().all(|r| *r) {
            return;
        }
        let Some(rollout) = self.rollout.take() else { return };
        let message = format!(
            "reloaded to generation {generation} ({} workers) in {}",
            self.desired,
            seconds(now.saturating_duration_since(rollout.started))
        );
        info!("{message}");
        let took = now.saturating_duration_since(rollout.started);
        self.tally.count_reload(ReloadResult::Ok, Some(took));
        self.end_reload(rollout.ticket, Some(generation), true, message, actions);
        actions.push(Action::ReleaseCommand(rollout.previous_command));
    }

    /// A replacement found listening on a port of its own will never serve:
    /// it is stopped as a failed start (its slot tried again after its
    /// backoff) rather than kept beside the worker it was to replace, which
    /// serves on, and would hold the surge's place for ever. So is one marked
    /// for a reload that began as it got ready: it is still the newer of the
    /// two.
    pub(super) fn stop_astray_replacements(&mut self, now: Moment, actions: &mut Vec<Action>) {
        let astray: Vec<Pid> = self
            .workers
            .iter()
            .filter(|w| w.is_ready() && !w.is_stopping() && w.inspected && !w.listens_itself.is_empty())
            .filter(|w| {
                self.workers
                    .iter()
                    .any(|old| old.slot == w.slot && old.started_at < w.started_at && old.retiring().is_some())
            })
            .map(|w| w.pid)
            .collect();
        for pid in astray {
            let why = "listens on a port of its own, not on the socket sheepdog passed, beside the worker it was to \
                       replace";
            self.condemn_pid(now, pid, Failure::NotReadyInTime, why, actions);
        }
    }

    /// A retiring worker is stopped only once a ready replacement serves its slot.
    pub(super) fn stop_replaced(&mut self, now: Moment, actions: &mut Vec<Action>) {
        // Who serves, and whether for good. A worker ready for good replaces
        // any retiring one of its slot; one itself retiring replaces those
        // started before it: a replacement ready as a reload began is marked
        // for the reload too, and must still take over from the worker it
        // replaced, or the two hold the room the new generation needs.
        let serving: Vec<(usize, Pid, Moment, bool)> = self
            .workers
            .iter()
            .filter(|w| w.serves())
            .map(|w| (w.slot, w.pid, w.started_at, w.serves_for_good()))
            .collect();
        let signal = self.policy.stop_signal;
        for worker in &mut self.workers {
            if let Some(reason) = worker.retiring()
                && let Some((_, new, ..)) = serving.iter().find(|(slot, _, started, for_good)| {
                    *slot == worker.slot && (*for_good || *started > worker.started_at)
                })
            {
                info!(
                    "worker {} (pid {}) replaced by pid {new} ({reason}); sending {}",
                    worker.slot,
                    worker.pid,
                    signal.as_str()
                );
                stop_gracefully(worker, now, StopCause::Replaced(reason), signal, actions);
            }
        }
    }
}
