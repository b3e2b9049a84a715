//! The invariants of docs/reliability.md's "Invariants, checked by
//! simulation", as the simulated world checks them after every pass (and
//! as each action is taken, where the action itself is what is judged).

use std::collections::BTreeMap;

use super::*;

impl World {
    /// The invariants that hold after every pass.
    pub(super) fn check(&mut self, pass: &Pass, before: &BTreeMap<Pid, WorkerState>) {
        let workers = self.flock.workers();
        let running = !self.flock.is_shutting_down();
        // Every worker the core knows of is a process of the world.
        if let Some(w) = workers.iter().find(|w| !self.processes.contains_key(&w.pid)) {
            self.fail(format!("the core keeps pid {}, which exited", w.pid));
        }
        // A worker that listens on a port of its own never counts as serving.
        let serving = workers
            .iter()
            .filter(|w| w.is_ready() && self.processes.get(&w.pid).is_some_and(|p| !p.astray))
            .count();
        if self.flock.ready_count() > serving {
            self.fail(format!(
                "{} counted ready, {serving} serve the passed socket",
                self.flock.ready_count()
            ));
        }
        // Never more live workers than desired plus the surge.
        let live = workers.iter().filter(|w| !w.is_stopping()).count();
        let most = self.flock.desired() + self.flock.policy().max_surge;
        if live > most {
            let table: Vec<String> = workers
                .iter()
                .map(|w| format!("slot {} pid {} gen {} {:?}", w.slot, w.pid, w.generation, w.state))
                .collect();
            self.fail(format!(
                "{live} live workers, more than {most}:\n  {}",
                table.join("\n  ")
            ));
        }
        self.check_punishments(pass, before);
        self.check_said(pass, before);
        self.check_requests(pass, before);
        self.check_streaks(pass, before);
        self.check_recycling(before);
        self.check_watchdog_alive(pass);
        if self.listener_lost && !self.flock.is_shutting_down() {
            self.fail("the shared listener is lost for good, and the flock runs on".into());
        }
        self.check_reloads(pass);
        self.check_reload_blame(pass, before);
        if running {
            self.check_slots();
            self.check_refilled_at_once(pass, before);
        }
        self.last_pass = self.now;
        self.check_crash_loops(pass, before);
        self.check_wake_and_kill(pass);
        if pass.second_stop
            && let Some(w) = workers_left(&self.flock)
        {
            self.fail(format!("a second stop request, and pid {} is not killed", w));
        }
        if let Some((code, reason)) = &pass.exit
            && (self.stops_asked > 0) != (*code == 0)
        {
            self.fail(format!(
                "exit {code} ({reason}) after {} stop requests",
                self.stops_asked
            ));
        }
        if pass.was_shutting_down {
            let since = *self.shutting_down_since.get_or_insert(self.now);
            let bound = self.policy.stop_timeout + STALL + Duration::from_secs(1);
            if pass.exit.is_none() && self.now - since > bound {
                self.fail(format!("stopping for {:?}, and not exited", self.now - since));
            }
        }
    }

    /// No watchdog ping once the flock has been unhealthy for
    /// `ready_timeout` (a replacement's time to get ready), after it
    /// started (before READY=1 systemd's start timeout rules, while
    /// stopping its stop timeout): at least the minimum ready, or on their
    /// way in slots that never failed. Judged on the state that decided the
    /// ping.
    pub(super) fn check_watchdog(&self) {
        let given_up = self
            .below_since_surely
            .is_some_and(|since| self.now - since >= self.policy.ready_timeout);
        if !self.started || self.flock.is_shutting_down() || !given_up {
            return;
        }
        let slots = &self.flock.slots;
        let fresh = self
            .flock
            .workers()
            .iter()
            .filter(|w| w.is_starting() && slots[w.slot].restarts == 0 && slots[w.slot].last_end.is_none())
            .count();
        if self.flock.ready_count() + fresh < self.min_ready() {
            self.fail(format!("a watchdog ping with {} ready", self.flock.ready_count()));
        }
    }

    /// What the flock says is true: the metrics count every worker that
    /// ended (but those stopped at a shutdown), and as crashes those that
    /// ended on their own with an exit code. (With other events read in the
    /// same pass, one of them may stop the worker before its exit is read,
    /// by a reload aborted or a crash loop: then it counts as stopped, or at
    /// a shutdown not at all.) `/readyz`'s reason is given exactly when
    /// fewer than the minimum are ready, and says a worker listens on a port
    /// of its own only of one that does.
    fn check_said(&mut self, pass: &Pass, before: &BTreeMap<Pid, WorkerState>) {
        for (pid, ..) in &pass.exited {
            let Some(state) = before.get(pid) else { continue };
            if pass.busy {
                self.ends_among_others += 1;
            }
            match state {
                WorkerState::Stopping {
                    cause: StopCause::Shutdown,
                    ..
                } => {}
                WorkerState::Stopping { .. } => self.ended += 1,
                _ => {
                    let crashed = u64::from(pass.crashed.contains(pid));
                    self.ended += 1;
                    self.crashes += crashed;
                    if pass.busy {
                        self.crashes_among_others += crashed;
                    }
                }
            }
        }
        let tally = self.flock.tally();
        let ended: u64 = tally.ended_by_cause().map(|(_, n)| n).sum();
        let crashes = tally.ended(crate::core::tally::Cause::Crash);
        let within = |counted: u64, seen: u64, among_others: u64| counted <= seen && counted + among_others >= seen;
        if !within(ended, self.ended, self.ends_among_others)
            || !within(crashes, self.crashes, self.crashes_among_others)
        {
            self.fail(format!(
                "the metrics count {ended} ended and {crashes} crashes; {} ended, {} of them crashes ({} and {} in \
                 a pass with other events)",
                self.ended, self.crashes, self.ends_among_others, self.crashes_among_others
            ));
        }
        let reason = self.flock.unhealthy_reason();
        if self.flock.is_shutting_down() {
            return;
        }
        if reason.is_some() == self.flock.is_healthy() {
            self.fail(format!(
                "healthy {}, and /readyz says {reason:?}",
                self.flock.is_healthy()
            ));
        }
        for (slot, _) in reason.iter().flat_map(|r| r.split(", ")).filter_map(|part| {
            let (_, rest) = part.split_once("worker ")?;
            let (slot, what) = rest.split_once(' ')?;
            what.starts_with("listens on")
                .then(|| (slot.parse::<usize>().ok(), what))
        }) {
            let astray = self
                .flock
                .workers()
                .iter()
                .any(|w| Some(w.slot) == slot && self.processes.get(&w.pid).is_some_and(|p| p.astray));
            if !astray {
                self.fail(format!("/readyz says worker {slot:?} listens astray: {reason:?}"));
            }
        }
    }

    /// What the operator and the workers ask for is done in their pass: a
    /// worker that asks to be replaced (WATCHDOG=trigger) is stopped; a
    /// ready worker the operator asks to replace is marked for it; the
    /// desired count follows scale requests (one at least, a reload aside).
    fn check_requests(&self, pass: &Pass, before: &BTreeMap<Pid, WorkerState>) {
        if self.flock.is_shutting_down() || pass.was_shutting_down {
            return;
        }
        for w in self.flock.workers() {
            let process = &self.processes[&w.pid];
            if process.triggered && !w.is_stopping() {
                self.fail(format!("pid {} asked to be replaced, and is not stopped", w.pid));
            }
            // STOPPING=1: it leaves, and is taken for leaving.
            if process.leaving && !w.is_stopping() {
                self.fail(format!("pid {} said it is stopping, and is not taken for it", w.pid));
            }
            // A worker is marked for a reload only while one rolls.
            if self.flock.rollout.is_none()
                && matches!(
                    w.state,
                    WorkerState::Ready {
                        retiring: Some(Retire::Reload),
                        ..
                    }
                )
            {
                self.fail(format!("pid {} is marked for a reload, and none is under way", w.pid));
            }
        }
        let ready_before = |w: &&Worker| matches!(before.get(&w.pid), Some(WorkerState::Ready { retiring: None, .. }));
        if !pass.reload_asked
            && let Some(w) = self
                .flock
                .workers()
                .iter()
                .filter(ready_before)
                .find(|w| pass.replaces.contains(&w.slot) && w.serves_for_good())
        {
            self.fail(format!(
                "pid {} of slot {} asked to be replaced, and is not",
                w.pid, w.slot
            ));
        }
        let reload_ended = pass.actions.iter().any(|a| matches!(a, Action::ReloadFinished { .. }));
        if pass.scales.is_empty() || pass.reload_asked || reload_ended {
            return;
        }
        let expected = pass
            .scales
            .iter()
            .fold(pass.desired_before, |desired, scale| match scale {
                Request::ScaleUp => desired + 1,
                Request::ScaleDown => desired.saturating_sub(1).max(1),
                Request::Scale(n) => *n,
                _ => desired,
            });
        if self.flock.desired() != expected {
            self.fail(format!(
                "{:?} from {} workers, and {} are desired",
                pass.scales,
                pass.desired_before,
                self.flock.desired()
            ));
        }
    }

    /// Failures in a row of a slot: one more now.
    pub(super) fn fail_in_a_row(&mut self, slot: usize) {
        let (now, newest) = (self.now, self.flock.newest_generation);
        let streak = self.streaks.entry(slot).or_insert((0, now, newest));
        let failures = if streak.2 == newest { streak.0 } else { 0 };
        *streak = (failures + 1, now, newest);
        if std::env::var_os("SIM_TRACE").is_some() {
            eprintln!("  world: slot {slot} failed {} in a row", failures + 1);
        }
    }

    /// A slot's failures in a row: workers stopped for a failure this
    /// pass count (their exits were counted as they came); a worker started
    /// after the last of them and ready ends the streak.
    fn check_streaks(&mut self, pass: &Pass, before: &BTreeMap<Pid, WorkerState>) {
        if self.flock.is_shutting_down() {
            return;
        }
        // A reload begun in the pass starts every slot afresh: failures the
        // pass's messages brought (read before the request) are wiped, those
        // its deadlines found (judged after it) count.
        let judged_after = |w: &Worker| {
            matches!(
                w.state,
                WorkerState::Stopping {
                    cause: StopCause::Failed(Failure::Hung | Failure::NotReadyInTime),
                    ..
                }
            )
        };
        let failed: Vec<usize> = self
            .flock
            .workers()
            .iter()
            .filter(|w| newly_failed(w, before) && !pass.aborts(before, w.pid, self.processes[&w.pid].command))
            .filter(|w| !pass.reload_asked || judged_after(w))
            .map(|w| w.slot)
            .collect();
        for slot in failed {
            self.fail_in_a_row(slot);
        }
        let newest = self.flock.newest_generation;
        self.streaks.retain(|_, (.., generation)| *generation == newest);
        for w in self.flock.workers() {
            if w.is_ready()
                && let Some((_, last, _)) = self.streaks.get(&w.slot)
                && self.processes[&w.pid].spawned_at >= *last
            {
                self.streaks.remove(&w.slot);
            }
        }
    }

    /// Past a CPU's worth of starting workers, more start only as many as
    /// the last look at the CPUs (in this pass) found idle.
    pub(super) fn check_load(&mut self, slot: usize) {
        let floor = self.flock.policy().cpus.max(2);
        let starting = self.flock.workers().iter().filter(|w| w.is_starting()).count();
        if starting < floor {
            return;
        }
        if self.load_allowance == 0 {
            self.fail(format!(
                "slot {slot} started with {starting} starting already, and the CPUs busy or not looked at"
            ));
        }
        self.load_allowance -= 1;
    }

    /// A slot is refilled no sooner than its backoff allows: after `n`
    /// failures in a row, `backoff(n - 1)` after the last.
    pub(super) fn check_backoff(&self, slot: usize) {
        let Some(&(failures, last, generation)) = self.streaks.get(&slot) else {
            return;
        };
        if generation != self.flock.newest_generation {
            return;
        }
        let wait = backoff(&self.policy.restart, failures - 1);
        if self.now < last + wait {
            self.fail(format!(
                "slot {slot} refilled {:?} after its failure {failures} in a row; its backoff is {wait:?}",
                self.now - last
            ));
        }
    }

    /// Recycling by age: no worker before its `max_age`, no two begun
    /// closer than `max_age / workers`, and none left waiting: while a
    /// worker is surely due (past `max_age` and the whole jitter) and the
    /// spacing allows, each pass begins a recycle.
    fn check_recycling(&mut self, before: &BTreeMap<Pid, WorkerState>) {
        let recycle = self.policy.recycle;
        let Some(max_age) = recycle.max_age else { return };
        let spacing = max_age / self.flock.desired() as u32;
        let aged = |s: &WorkerState| {
            matches!(
                s,
                WorkerState::Ready {
                    retiring: Some(Retire::MaxAge),
                    ..
                }
            )
        };
        let last = self.last_recycle;
        let mut begun = false;
        for w in self.flock.workers() {
            if !aged(&w.state) || before.get(&w.pid).is_some_and(aged) {
                continue;
            }
            let age = self.now - self.processes[&w.pid].spawned_at;
            if age < max_age {
                self.fail(format!("pid {} recycled at {age:?}, younger than {max_age:?}", w.pid));
            }
            if let Some(last) = last
                && self.now - last < spacing
            {
                self.fail(format!(
                    "pid {} recycled {:?} after the last, closer than {spacing:?}",
                    w.pid,
                    self.now - last
                ));
            }
            begun = true;
            self.last_recycle = Some(self.now);
        }
        // A recycle the world did not see begin (its worker gone in the same
        // pass) still spaces the next.
        let last = last.max(self.flock.recycling.last_begun);
        let spaced = last.is_none_or(|at| self.now - at >= spacing);
        let settled = self.unanswered.is_empty() && !self.flock.is_shutting_down();
        let due =
            self.flock.workers().iter().find(|w| {
                w.serves_for_good() && self.now - self.processes[&w.pid].spawned_at >= max_age + recycle.jitter
            });
        if let Some(w) = due
            && spaced
            && settled
            && !begun
        {
            self.fail(format!(
                "pid {} is due to be recycled ({:?} old), the last recycle began at {last:?}, and none begins",
                w.pid,
                self.now - self.processes[&w.pid].spawned_at
            ));
        }
    }

    /// Unless the flock has been unhealthy for `ready_timeout` (or stops),
    /// and while the loop is on time, systemd is pinged at least every
    /// watchdog interval: a dip that heals in time does not make systemd's
    /// watchdog fire.
    fn check_watchdog_alive(&mut self, pass: &Pass) {
        // Unhealthy: fewer desired slots served than the minimum.
        let mut served: Vec<usize> = self
            .flock
            .workers()
            .iter()
            .filter(|w| w.serves() && w.slot < self.flock.desired())
            .map(|w| w.slot)
            .collect();
        served.sort_unstable();
        served.dedup();
        // Below when the pass began, or at its end (a ping is decided
        // within it, on the state then).
        let was_below = self.below_since;
        let reshaped = pass.reload_asked
            || !pass.scales.is_empty()
            || self.flock.desired() != pass.desired_before
            || pass.actions.iter().any(|a| matches!(a, Action::ReloadFinished { .. }));
        if served.len() >= self.min_ready() || self.flock.is_shutting_down() {
            self.below_since = None;
            self.below_since_surely = None;
        } else {
            self.below_since.get_or_insert(self.now);
            if reshaped {
                self.below_since_surely = Some(self.now);
            } else {
                self.below_since_surely.get_or_insert(self.now);
            }
        }
        let Some(interval) = self.policy.watchdog else { return };
        let given_up = [was_below, self.below_since]
            .iter()
            .flatten()
            .any(|since| self.now - *since >= self.policy.ready_timeout);
        if self.flock.is_shutting_down() || (self.started && given_up) {
            self.on_time_and_healthy_since = None;
            return;
        }
        let serving = served.len();
        let since = *self.on_time_and_healthy_since.get_or_insert(self.now);
        let silent = self.now.saturating_duration_since(since.max(self.last_watchdog));
        if silent > interval {
            self.fail(format!(
                "healthy and on time since {since:?}, and no watchdog ping since {:?}: {serving} serve, {} ready, \
                 {} needed; below since {:?} (the core: {:?})",
                self.last_watchdog,
                self.flock.ready_count(),
                self.min_ready(),
                self.below_since,
                self.flock.unhealthy
            ));
        }
    }

    /// A worker that did what it should in time is never stopped for a
    /// failure, whatever the loop's delays: hung only if it hung, not ready
    /// in time only if it was not, over the limit only if it was.
    fn check_punishments(&self, pass: &Pass, before: &BTreeMap<Pid, WorkerState>) {
        let ready_timeout = self.policy.ready_timeout;
        for w in self.flock.workers() {
            let process = &self.processes[&w.pid];
            let was = before.get(&w.pid);
            let punished = match w.state {
                WorkerState::Stopping { cause, .. }
                    if !was.is_some_and(|s| matches!(s, WorkerState::Stopping { .. })) =>
                {
                    cause
                }
                WorkerState::Ready {
                    retiring: Some(retire @ (Retire::MemoryLimit | Retire::Requested)),
                    ..
                } if was != Some(&w.state) => StopCause::Replaced(retire),
                _ => continue,
            };
            let unfair = match punished {
                StopCause::Failed(Failure::Hung) => !process.hung,
                // One that listens on a port of its own never serves: not
                // ready, whatever it says.
                StopCause::Failed(Failure::NotReadyInTime) => {
                    !process.astray
                        && process
                            .ready_at
                            .is_some_and(|at| at <= process.spawned_at + ready_timeout)
                }
                StopCause::Replaced(Retire::MemoryLimit) => process.memory <= LIMIT,
                StopCause::Replaced(Retire::Requested) => {
                    let marked = matches!(
                        was,
                        Some(WorkerState::Ready {
                            retiring: Some(Retire::Requested),
                            ..
                        })
                    );
                    !marked && !pass.replaces.contains(&w.slot)
                }
                StopCause::Failed(Failure::Triggered) => !process.triggered,
                _ => false,
            };
            if unfair {
                self.fail(format!(
                    "pid {} stopped as {punished:?}, which it did not deserve: {process:?}",
                    w.pid
                ));
            }
        }
    }

    /// Every reload is answered, once, in time; a refused one at once; a
    /// failed one leaves none of its workers serving.
    fn check_reloads(&self, pass: &Pass) {
        for ticket in &pass.refused {
            if self.unanswered.contains_key(ticket) {
                self.fail(format!("refused reload {ticket} not answered in its pass"));
            }
        }
        if pass.exit.is_some()
            && let Some(ticket) = self.unanswered.keys().next()
        {
            self.fail(format!("the flock exited with reload {ticket} unanswered"));
        }
        if let Some((ticket, asked)) = self.unanswered.iter().next()
            && self.now.saturating_duration_since(*asked) > ANSWER_WITHIN
        {
            self.fail(format!(
                "reload {ticket} unanswered for {:?}; desired {}, workers:\n  {}",
                self.now - *asked,
                self.flock.desired(),
                self.table().join("\n  ")
            ));
        }
        for action in &pass.actions {
            if let Action::ReloadFinished { ticket, ok: false, .. } = action
                && let Some(w) = self.flock.workers().iter().find(|w| {
                    !w.is_stopping() && self.processes.get(&w.pid).is_some_and(|p| p.command == BROKEN + ticket)
                })
            {
                self.fail(format!("reload {ticket} failed, and its pid {} serves on", w.pid));
            }
        }
    }

    /// A reload that started workers fails only for what one of them did
    /// (exited, was stopped for a failure, listens on a port of its own) or
    /// because the flock stops.
    fn check_reload_blame(&self, pass: &Pass, before: &BTreeMap<Pid, WorkerState>) {
        for action in &pass.actions {
            let Action::ReloadFinished {
                ticket,
                ok: false,
                message,
            } = action
            else {
                continue;
            };
            let commands = [100 + ticket, BROKEN + ticket];
            if !commands.iter().any(|c| self.started_commands.contains(c)) || self.flock.is_shutting_down() {
                continue;
            }
            let exited = pass.exited.iter().any(|(_, _, c)| commands.contains(c));
            let failed = self.flock.workers().iter().any(|w| {
                newly_failed(w, before)
                    && self
                        .processes
                        .get(&w.pid)
                        .is_some_and(|p| commands.contains(&p.command))
            });
            let astray = self
                .processes
                .values()
                .any(|p| p.astray && commands.contains(&p.command));
            if !exited && !failed && !astray {
                self.fail(format!(
                    "reload {ticket} failed, though none of its workers did: {message}"
                ));
            }
        }
    }

    /// The loop is woken for everything the core must do: a pass that only
    /// time (and heartbeats) set off acts only at or after the deadline the
    /// pass before gave. And a worker not gone `stop_timeout` after its stop
    /// signal is sent SIGKILL.
    fn check_wake_and_kill(&mut self, pass: &Pass) {
        let timed = pass.exited.is_empty() && pass.events_were_time_only;
        let acted = pass
            .actions
            .iter()
            .any(|a| matches!(a, Action::Spawn(_) | Action::Signal { .. } | Action::Drain { .. }));
        if timed && acted && self.wake.is_none_or(|at| at > self.now) {
            self.fail(format!(
                "the core acted at {:?}, and would have woken at {:?}",
                self.now, self.wake
            ));
        }
        self.wake = self.flock.next_deadline();
        if let Some(at) = self.wake
            && at <= self.now
        {
            self.fail(format!(
                "the next deadline, {at:?}, is not after the pass at {:?}: the loop would spin",
                self.now
            ));
        }
        if let Some((pid, (since, _))) = self
            .draining
            .iter()
            .find(|(_, (since, _))| self.now - *since >= self.drain_limit())
        {
            self.fail(format!(
                "pid {pid} has been draining for {:?}, and is not told to stop",
                self.now - *since
            ));
        }
        let timeout = self.flock.policy().stop_timeout;
        for w in self.flock.workers() {
            if let WorkerState::Stopping {
                since, killed: false, ..
            } = w.state
                && !w.draining
                && self.now - since >= timeout
            {
                self.fail(format!(
                    "pid {} was told to stop {:?} ago, and is not killed",
                    w.pid,
                    self.now - since
                ));
            }
        }
    }

    /// No desired slot waits longer than its backoff (plus a stall of the
    /// loop) for a worker.
    fn check_slots(&mut self) {
        let bound = self.policy.restart.backoff_max + STALL + Duration::from_secs(1);
        let desired = self.flock.desired();
        self.empty_since.retain(|slot, _| *slot < desired);
        for slot in 0..desired {
            let filled = self.flock.workers().iter().any(|w| w.slot == slot && !w.is_stopping());
            if filled {
                self.empty_since.remove(&slot);
                continue;
            }
            let since = *self.empty_since.entry(slot).or_insert(self.now);
            if self.now - since > bound {
                self.fail(format!("slot {slot} has waited {:?} for a worker", self.now - since));
            }
        }
    }

    /// The backoff is cleared by a long good run: a worker ready for
    /// `backoff_reset` (seen so by a pass before this one), alone in its
    /// slot since it started, that then ends on its own has its slot
    /// refilled in the same pass, whatever failures came before it (the
    /// load gate aside).
    fn check_refilled_at_once(&mut self, pass: &Pass, before: &BTreeMap<Pid, WorkerState>) {
        self.check_refilled(pass, before);
        for (slot, _) in pass.slot_of.values() {
            self.trouble.insert(*slot, self.now);
        }
        let stopped: Vec<usize> = self
            .flock
            .workers()
            .iter()
            .filter(|w| w.is_stopping() && !was_stopping(before, w.pid))
            .map(|w| w.slot)
            .collect();
        for slot in stopped {
            self.trouble.insert(slot, self.now);
        }
    }

    fn check_refilled(&self, pass: &Pass, before: &BTreeMap<Pid, WorkerState>) {
        let starting = self.flock.workers().iter().filter(|w| w.is_starting()).count();
        if starting >= self.flock.policy().cpus.max(2) {
            return;
        }
        let reset_after = self.policy.restart.backoff_reset;
        for (pid, asked, _) in &pass.exited {
            let (slot, spawned_at) = pass.slot_of[pid];
            let Some(WorkerState::Ready { since, .. }) = before.get(pid) else {
                continue;
            };
            let long_run = *since + reset_after <= self.last_pass;
            // The failures before it started were cleared once it had been
            // ready that long; none came after.
            let siblings = self
                .flock
                .workers()
                .iter()
                .any(|w| w.slot == slot && self.processes[&w.pid].spawned_at < self.now)
                || pass.slot_of.iter().any(|(other, (s, _))| other != pid && *s == slot);
            let alone = !siblings && self.trouble.get(&slot).is_none_or(|at| *at < spawned_at);
            if *asked || !long_run || !alone || slot >= self.flock.desired() {
                continue;
            }
            let filled = self.flock.workers().iter().any(|w| w.slot == slot && !w.is_stopping());
            if !filled {
                self.fail(format!(
                    "pid {pid} ran well for {:?} and ended; slot {slot} is not refilled at once",
                    self.now - *since
                ));
            }
        }
    }

    /// The crash-loop exit comes exactly when the world's count of
    /// unrequested ends passes `max_restarts` within the window, or after
    /// five windows below the minimum with failures meanwhile; never else.
    fn check_crash_loops(&mut self, pass: &Pass, before: &BTreeMap<Pid, WorkerState>) {
        if pass.was_shutting_down {
            return;
        }
        let newly_failed = self
            .flock
            .workers()
            .iter()
            .filter(|w| newly_failed(w, before) && !pass.aborts(before, w.pid, self.processes[&w.pid].command))
            .count();
        let unrequested = pass
            .exited
            .iter()
            .filter(|(pid, asked, command)| {
                !asked && !was_stopping(before, *pid) && !pass.aborts(before, *pid, *command)
            })
            .count();
        let failures = newly_failed + unrequested;
        if failures > 0 && std::env::var_os("SIM_TRACE").is_some() {
            eprintln!("  world: {newly_failed} stopped for a failure, {unrequested} unrequested exits");
        }
        let restart = &self.policy.restart;
        for _ in 0..failures {
            self.failures.push_back(self.now);
        }
        while self.failures.front().is_some_and(|t| self.now - *t > restart.window) {
            self.failures.pop_front();
        }
        let too_many = failures > 0 && self.failures.len() > restart.max_restarts as usize;
        // Below the minimum: since when, and with how many failures.
        let healthy = self.flock.ready_count() >= self.min_ready();
        let long_unhealthy = if healthy && pass.exit.is_none() {
            self.unhealthy = None;
            false
        } else {
            let (since, seen) = self.unhealthy.get_or_insert((self.now, 0));
            *seen += failures;
            *seen > 0 && self.now - *since >= restart.window.saturating_mul(5)
        };
        // The decision is the shutdown's start; the exit follows once the
        // workers are gone.
        let crash_loop = match &self.flock.phase {
            Phase::ShuttingDown { reason, .. } => Some(reason.clone()),
            Phase::Running => None,
        };
        if self.stops_asked > 0 || self.listener_lost {
            return;
        }
        match (&crash_loop, too_many || long_unhealthy) {
            (Some(reason), false) => self.fail(format!(
                "a crash loop with {} failures in the window (max {}): {reason}",
                self.failures.len(),
                restart.max_restarts
            )),
            (None, true) => self.fail(format!(
                "no crash loop with {} failures in the window (max {}), unhealthy since {:?} (the core: {:?})",
                self.failures.len(),
                restart.max_restarts,
                self.unhealthy,
                self.flock.unhealthy
            )),
            _ => {}
        }
        if let Some(reason) = crash_loop
            && !reason.starts_with("crash loop")
            && self.stops_asked == 0
        {
            self.fail(format!("the flock stops unasked: {reason}"));
        }
    }
}

/// The worker was stopping when the pass began.
fn was_stopping(before: &BTreeMap<Pid, WorkerState>, pid: Pid) -> bool {
    before
        .get(&pid)
        .is_some_and(|s| matches!(s, WorkerState::Stopping { .. }))
}

/// The worker was stopped for a failure in this pass.
fn newly_failed(w: &Worker, before: &BTreeMap<Pid, WorkerState>) -> bool {
    matches!(
        w.state,
        WorkerState::Stopping {
            cause: StopCause::Failed(_),
            ..
        }
    ) && !was_stopping(before, w.pid)
}

/// A worker not yet sent SIGKILL.
fn workers_left(flock: &Flock) -> Option<Pid> {
    flock
        .workers()
        .iter()
        .find(|w| !matches!(w.state, WorkerState::Stopping { killed: true, .. }))
        .map(|w| w.pid)
}
