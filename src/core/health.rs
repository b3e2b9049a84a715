//! Health: readiness (by protocol or by delay), heartbeats and hung workers,
//! what workers say, memory, the stall guard, and the watchdog relay to
//! systemd.

use crate::clock::Moment;
use serde::{Deserialize, Serialize};

use log::{debug, error, info, warn};

use super::flock::{Flock, seconds, sigkill};
use super::model::*;
use crate::config::{Channel, Readiness};
use crate::units::{format_duration, format_size};

/// How long after its start a worker is looked at for ports of its own:
/// when 1 s old, then 2, 4, 8, 16 and 32 s (at the memory check after each),
/// six looks through its fds rather than one every memory interval.
const INSPECT_FOR: std::time::Duration = std::time::Duration::from_secs(60);
const INSPECT_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a worker may take to say it is ready before it is told what
/// sheepdog waits for.
const READY_HINT_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// How soon a worker ready by delay that showed no sign yet of serving the
/// passed socket (nor of listening elsewhere) is looked at again.
pub(super) const RELOOK: std::time::Duration = std::time::Duration::from_millis(200);
/// The least of that grace (`ready_delay`, at least this).
const MIN_SIGN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
/// How often the shared listeners are checked: a shut-down one refuses
/// every connection, so it must be noticed within a second or two.
pub const LISTENER_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Periodic duties: pinging node-ipc workers, measuring memory, and pinging
/// systemd's watchdog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Timers {
    pub next_ping: Moment,
    pub next_measure: Moment,
    pub next_watchdog: Moment,
    pub next_listener_check: Moment,
    /// When the loop last ran, for the stall guard.
    pub last_pass: Moment,
    pub withholding_watchdog: bool,
}

impl Timers {
    /// Pinging or measuring a process that has just exec'd tells nothing:
    /// the first of each comes one interval in.
    pub fn new(policy: &Policy, now: Moment) -> Timers {
        Timers {
            next_ping: now + policy.heartbeat.map_or(std::time::Duration::ZERO, |h| h.interval),
            next_measure: now + policy.memory_interval,
            next_watchdog: now,
            next_listener_check: now + policy.listener_check.unwrap_or_default(),
            last_pass: now,
            withholding_watchdog: false,
        }
    }
}

impl Flock {
    pub(super) fn min_ready(&self) -> usize {
        self.policy.min_ready.clamp(1, self.desired)
    }

    /// At least `min_ready` workers ready (and so, where heartbeats are on,
    /// heartbeating: a silent one is killed before this is asked).
    pub fn is_healthy(&self) -> bool {
        self.ready_count() >= self.min_ready()
    }

    /// Healthy, or growing: the workers a scale-up or a reload to more
    /// workers asked for are still starting in slots that never had one (a
    /// slot whose worker failed does not count). What the watchdog relay
    /// goes by: a flock told to grow from 2 to 8 on a busy machine is not
    /// hung while its new workers boot.
    fn is_on_track(&self) -> bool {
        let fresh = |w: &Worker| {
            w.is_starting()
                && self
                    .slots
                    .get(w.slot)
                    .is_some_and(|s| s.last_end.is_none() && s.restarts == 0)
        };
        self.ready_count() + self.workers.iter().filter(|w| fresh(w)).count() >= self.min_ready()
    }

    /// With `readiness = "none"`, a worker up for `ready_delay` is ready.
    pub(super) fn promote_ready(&mut self, now: Moment) {
        if self.policy.readiness != Readiness::None {
            return;
        }
        let ready_delay = self.policy.ready_delay;
        for worker in &mut self.workers {
            if worker.is_starting() && now.saturating_duration_since(worker.started_at) >= ready_delay {
                debug!("worker {} (pid {}) is ready", worker.slot, worker.pid);
                worker.state = WorkerState::Ready {
                    since: now,
                    retiring: None,
                };
                worker.last_heartbeat = now;
            }
        }
    }

    /// A worker that has not said it is ready within `ready_timeout` failed to start.
    pub(super) fn kill_unready(&mut self, now: Moment, actions: &mut Vec<Action>) {
        if self.policy.readiness == Readiness::None {
            return;
        }
        let timeout = self.policy.ready_timeout;
        let late: Vec<Pid> = self
            .workers
            .iter()
            .filter(|w| w.is_starting() && now.saturating_duration_since(w.started_at) >= timeout)
            .map(|w| w.pid)
            .collect();
        let why = format!("was not ready within {}", format_duration(timeout));
        for pid in late {
            self.condemn_pid(now, pid, Failure::NotReadyInTime, &why, actions);
        }
    }

    /// A worker still not ready a while after its start is told, once, what
    /// sheepdog waits for, long before `ready_timeout` kills it: an app that
    /// never says it (pm2's `wait_ready` off) wants `readiness = "none"`.
    pub(super) fn hint_unready(&mut self, now: Moment) {
        let Some(after) = self.ready_hint_after() else { return };
        let waits_for = match self.policy.readiness {
            Readiness::NodeIpc => "process.send('ready') over its IPC channel",
            _ => "READY=1 on $NOTIFY_SOCKET (sd_notify)",
        };
        let timeout = format_duration(self.policy.ready_timeout);
        for worker in &mut self.workers {
            if worker.is_starting() && !worker.ready_hinted && now.saturating_duration_since(worker.started_at) >= after
            {
                worker.ready_hinted = true;
                warn!(
                    "worker {} (pid {}) is not ready after {}: readiness = \"{}\" waits for {waits_for}, and kills it \
                     at {timeout} (ready_timeout); an app that never says so wants readiness = \"none\" (ready once \
                     it has run for ready_delay)",
                    worker.slot,
                    worker.pid,
                    format_duration(after),
                    self.policy.readiness
                );
            }
        }
    }

    /// How long after its start a worker not ready yet is told so: 10 s, if
    /// that is well before its `ready_timeout`.
    fn ready_hint_after(&self) -> Option<std::time::Duration> {
        let after = READY_HINT_AFTER.min(self.policy.ready_timeout / 2);
        (self.policy.readiness != Readiness::None && after >= std::time::Duration::from_secs(1)).then_some(after)
    }

    /// [`Flock::condemn`] by pid, if it is still there (a crash loop's
    /// shutdown may have changed the table meanwhile).
    pub(super) fn condemn_pid(
        &mut self,
        now: Moment,
        pid: Pid,
        failure: Failure,
        why: &str,
        actions: &mut Vec<Action>,
    ) {
        if let Some(index) = self.workers.iter().position(|w| w.pid == pid && !w.is_stopping()) {
            self.condemn(now, index, failure, why, actions);
        }
    }

    /// When a starting worker becomes ready by delay, or is out of time to say so.
    pub(super) fn readiness_deadline(&self) -> Option<Moment> {
        let wait = match self.policy.readiness {
            Readiness::None => self.policy.ready_delay,
            _ => self.policy.ready_timeout,
        };
        let hint = self.ready_hint_after();
        self.workers
            .iter()
            .filter(|w| w.is_starting())
            .map(|w| match hint {
                Some(after) if !w.ready_hinted => w.started_at + after.min(wait),
                _ => w.started_at + wait,
            })
            .min()
    }

    /// A ready worker silent for longer than the heartbeat timeout is hung.
    pub(super) fn kill_hung(&mut self, now: Moment, actions: &mut Vec<Action>) {
        let Some(heartbeat) = self.policy.heartbeat else { return };
        let silent: Vec<(Pid, String)> = self
            .workers
            .iter()
            .filter(|w| w.is_ready() && now.saturating_duration_since(w.last_heartbeat) >= heartbeat.timeout)
            .map(|w| (w.pid, seconds(now.saturating_duration_since(w.last_heartbeat))))
            .collect();
        for (pid, silent) in silent {
            let why = format!("missed heartbeats for {silent}");
            self.condemn_pid(now, pid, Failure::Hung, &why, actions);
        }
    }

    /// When the quietest ready worker is out of heartbeats.
    pub(super) fn heartbeat_deadline(&self) -> Option<Moment> {
        let heartbeat = self.policy.heartbeat?;
        self.workers
            .iter()
            .filter(|w| w.is_ready())
            .map(|w| w.last_heartbeat + heartbeat.timeout)
            .min()
    }

    /// SIGKILLs a worker for a failure (hung, not ready in time, asked to be
    /// treated as hung) and counts it like a crash.
    pub(super) fn condemn(
        &mut self,
        now: Moment,
        index: usize,
        failure: Failure,
        why: &str,
        actions: &mut Vec<Action>,
    ) {
        let before = self.workers[index].clone();
        let worker = &mut self.workers[index];
        worker.state = WorkerState::Stopping {
            since: now,
            cause: StopCause::Failed(failure),
            killed: true,
        };
        worker.draining = false;
        let (slot, pid) = (worker.slot, worker.pid);
        actions.push(sigkill(pid));
        self.on_worker_failed(
            now,
            &before,
            actions,
            &format!("worker {slot} (pid {pid}) {why}; killed it"),
        );
    }

    pub(super) fn on_message(&mut self, now: Moment, pid: Pid, message: WorkerMessage, actions: &mut Vec<Action>) {
        let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
            debug!("message from pid {pid}, which is no longer a worker: {message:?}");
            return;
        };
        let by_protocol = self.policy.readiness != Readiness::None;
        let worker = &mut self.workers[index];
        let (slot, stopping) = (worker.slot, worker.is_stopping());
        match message {
            WorkerMessage::Ready => {
                worker.last_heartbeat = now;
                if worker.is_starting() && by_protocol {
                    let took = seconds(now.saturating_duration_since(worker.started_at));
                    info!("worker {slot} (pid {pid}) is ready after {took}");
                    worker.state = WorkerState::Ready {
                        since: now,
                        retiring: None,
                    };
                }
            }
            WorkerMessage::Heartbeat => worker.last_heartbeat = now,
            WorkerMessage::WatchdogTrigger if !stopping => {
                let why = "asked to be replaced (WATCHDOG=trigger)";
                self.condemn(now, index, Failure::Triggered, why, actions);
            }
            WorkerMessage::Stopping if !stopping => {
                let uptime = now.saturating_duration_since(worker.started_at);
                if worker.is_ready() && uptime >= self.policy.restart.min_uptime {
                    info!("worker {slot} (pid {pid}) is stopping on its own; starting its replacement now");
                    worker.state = WorkerState::Stopping {
                        since: now,
                        cause: StopCause::Leaving,
                        killed: false,
                    };
                } else {
                    // Saying so buys a failed start no way out of crash
                    // protection: it is counted, backed off and may abort a
                    // reload like any crash. It is left to exit by itself.
                    let before = worker.clone();
                    worker.state = WorkerState::Stopping {
                        since: now,
                        cause: StopCause::Failed(Failure::LeftEarly),
                        killed: false,
                    };
                    let when = if before.is_ready() {
                        format!(
                            "{} after it started (min_uptime {})",
                            seconds(uptime),
                            format_duration(self.policy.restart.min_uptime)
                        )
                    } else {
                        format!("{} after it started, before it was ready", seconds(uptime))
                    };
                    let what = format!("worker {slot} (pid {pid}) said it is stopping {when}: a failed start");
                    self.on_worker_failed(now, &before, actions, &what);
                }
            }
            WorkerMessage::Status(status) => {
                debug!("worker {slot} (pid {pid}) status: {status}");
                worker.status = Some(status);
            }
            WorkerMessage::Errno(errno) => {
                // A worker may say it in a loop: every line a worker can set
                // off is rate-limited.
                if self.worker_lines.allow(now) {
                    let text = nix::errno::Errno::from_raw(errno).desc();
                    warn!("worker {slot} (pid {pid}) reports errno {errno} ({text})");
                }
            }
            // A draining worker closes it on its way out; a serving one can
            // no longer heartbeat, and its timeout will tell.
            WorkerMessage::ChannelClosed if stopping => debug!("worker {slot} (pid {pid}) closed its IPC channel"),
            WorkerMessage::ChannelClosed => {
                warn!("worker {slot} (pid {pid}) closed its IPC channel; it can no longer send heartbeats")
            }
            // Already on its way out: nothing more to do for it.
            WorkerMessage::WatchdogTrigger | WorkerMessage::Stopping => {}
        }
    }

    /// `sheepdog replace SLOT`: its ready worker is replaced as one over
    /// the memory limit is, replacement first.
    pub(super) fn replace_on_request(&mut self, slot: usize) {
        let Some(worker) = self
            .workers
            .iter_mut()
            .find(|w| w.slot == slot && matches!(w.state, WorkerState::Ready { retiring: None, .. }))
        else {
            return;
        };
        if let WorkerState::Ready { since, .. } = worker.state {
            info!(
                "worker {} (pid {}) will be replaced on request, replacement first",
                worker.slot, worker.pid
            );
            worker.state = WorkerState::Ready {
                since,
                retiring: Some(Retire::Requested),
            };
        }
    }

    /// Whether the worker of `slot` is ready and not being replaced already.
    pub fn replaceable(&self, slot: usize) -> Result<Pid, String> {
        match self.workers.iter().find(|w| w.slot == slot && !w.is_stopping()) {
            Some(w) if matches!(w.state, WorkerState::Ready { retiring: None, .. }) => Ok(w.pid),
            Some(w) if w.is_ready() => Err(format!("worker {slot} (pid {}) is being replaced already", w.pid)),
            Some(w) => Err(format!("worker {slot} (pid {}) is not ready yet", w.pid)),
            None => Err(format!("there is no worker {slot}")),
        }
    }

    pub(super) fn on_measured(&mut self, pid: Pid, bytes: u64) {
        let limit = self.policy.memory_limit;
        let Some(worker) = self.workers.iter_mut().find(|w| w.pid == pid) else {
            return;
        };
        worker.memory = Some(bytes);
        if let (Some(limit), WorkerState::Ready { since, retiring: None }) = (limit, worker.state)
            && bytes > limit
        {
            warn!(
                "worker {} (pid {}) uses {}, over the memory limit of {}; it will be replaced, replacement first",
                worker.slot,
                worker.pid,
                format_size(bytes),
                format_size(limit)
            );
            worker.state = WorkerState::Ready {
                since,
                retiring: Some(Retire::MemoryLimit),
            };
        }
    }

    /// Node IPC heartbeats: a 'ping' every interval; any message back counts.
    pub(super) fn ping_workers(&mut self, now: Moment, actions: &mut Vec<Action>) {
        let Some(interval) = self.ping_interval() else { return };
        if now < self.timers.next_ping {
            return;
        }
        self.timers.next_ping = now + interval;
        for worker in self.workers.iter().filter(|w| !w.is_stopping()) {
            let message = self.policy.heartbeat_ping.replace("{pid}", &worker.pid.to_string());
            actions.push(Action::Ping {
                pid: worker.pid,
                message,
            });
        }
    }

    /// Heartbeats over Node IPC are asked for; over notify, workers send them.
    fn ping_interval(&self) -> Option<std::time::Duration> {
        let heartbeat = self.policy.heartbeat?;
        (self.policy.channel == Channel::NodeIpc).then_some(heartbeat.interval)
    }

    pub(super) fn ping_deadline(&self) -> Option<Moment> {
        self.ping_interval().map(|_| self.timers.next_ping)
    }

    /// Every memory interval: the memory of every live worker, and, for
    /// the young ready ones, whether they listen on a port of their own.
    pub(super) fn measure(&mut self, now: Moment, actions: &mut Vec<Action>) {
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
            actions.push(Action::Measure {
                pids,
                how: self.policy.memory_measure,
                limit: self.policy.memory_limit,
            });
        }
        // A server binds its port while it starts: looking during a worker's
        // first minute, ever more sparsely, is enough, and costs nothing
        // later (a busy worker has many fds to look through).
        let young: Vec<Pid> = self
            .workers
            .iter_mut()
            .filter(|w| {
                let age = now.saturating_duration_since(w.started_at);
                let due = INSPECT_FIRST.saturating_mul(1 << w.inspections.min(16));
                w.is_ready() && age < INSPECT_FOR && age >= due
            })
            .map(|w| {
                w.inspections += 1;
                w.pid
            })
            .collect();
        if !young.is_empty() {
            self.last_look = Some(now);
            actions.push(Action::Inspect { pids: young });
        }
    }

    /// Ready workers not known to serve the flock yet: looked at now (the
    /// first time at once, then every `RELOOK`).
    pub(super) fn inspect_new(&mut self, now: Moment, actions: &mut Vec<Action>) {
        let due = self.last_look.is_none_or(|at| now >= at + RELOOK);
        let pids: Vec<Pid> = self
            .workers
            .iter_mut()
            .filter(|w| w.is_ready() && !w.inspected && (w.inspections == 0 || due))
            .map(|w| {
                w.inspections = w.inspections.max(1);
                w.pid
            })
            .collect();
        if !pids.is_empty() {
            self.last_look = Some(now);
            actions.push(Action::Inspect { pids });
        }
    }

    /// When a ready worker not known to serve yet is looked at again.
    pub(super) fn relook_deadline(&self) -> Option<Moment> {
        let waiting = self.workers.iter().any(|w| w.is_ready() && !w.inspected);
        waiting.then(|| self.last_look.map_or(self.timers.last_pass, |at| at + RELOOK))
    }

    /// How long a worker ready by delay (`readiness = "none"`) may show no
    /// sign either way before it counts as serving: it may still be setting
    /// up, or serve in a way that leaves no trace.
    fn sign_grace(&self) -> std::time::Duration {
        self.policy.ready_delay.max(MIN_SIGN_GRACE)
    }

    pub(super) fn on_inspected(&mut self, now: Moment, found: Vec<(Pid, Inspection)>, actions: &mut Vec<Action>) {
        let rollout = self.rollout.as_ref().map(|r| r.generation);
        let by_delay = self.policy.readiness == Readiness::None;
        let grace = self.sign_grace();
        let mut astray_in_reload = None;
        for (pid, found) in found {
            let Some(worker) = self.workers.iter_mut().find(|w| w.pid == pid) else {
                continue;
            };
            // A worker that said it is ready has set up: what a look finds
            // is the truth. One ready by delay may still be setting up (Node
            // opens an --inspect port before it listens on fd 3): until its
            // grace is over, only a sign that it serves is final.
            let ready_for = match worker.state {
                WorkerState::Ready { since, .. } => now.saturating_duration_since(since),
                _ => std::time::Duration::ZERO,
            };
            let setting_up = by_delay && !worker.inspected && ready_for < grace;
            let own = match found {
                Inspection::Serves => Vec::new(),
                Inspection::Astray(_) | Inspection::Unknown if setting_up => continue,
                Inspection::Astray(own) => own,
                Inspection::Unknown => Vec::new(),
            };
            worker.inspected = true;
            if !own.is_empty() && own != worker.listens_itself {
                warn!(
                    "worker {} (pid {pid}) listens on {} itself, not on the socket sheepdog passed: no request to \
                     sheepdog's socket reaches it there, and it does not count as ready; listen on fd 3 (LISTEN_FDS; \
                     for Node sheepdog's preload does it unless node = \"off\": node = \"on\" for a command \
                     that starts node through a wrapper)",
                    worker.slot,
                    own.join(", ")
                );
                if Some(worker.generation) == rollout && !worker.is_stopping() {
                    astray_in_reload = Some(format!(
                        "worker {} (pid {pid}) of generation {} listens on {} itself, not on the socket sheepdog passed",
                        worker.slot,
                        worker.generation,
                        own.join(", ")
                    ));
                }
            } else if own.is_empty() && !worker.listens_itself.is_empty() {
                info!(
                    "worker {} (pid {pid}) no longer listens on a port of its own",
                    worker.slot
                );
            }
            worker.listens_itself = own;
        }
        // New code that does not serve the socket must not replace code
        // that does: the reload is aborted as for a worker that fails.
        if let Some(why) = astray_in_reload {
            self.abort_reload(now, &why, actions);
        }
    }

    /// Every second: whether the shared listeners still listen.
    pub(super) fn check_listeners(&mut self, now: Moment, actions: &mut Vec<Action>) {
        let Some(interval) = self.policy.listener_check else {
            return;
        };
        if now < self.timers.next_listener_check {
            return;
        }
        self.timers.next_listener_check = now + interval;
        actions.push(Action::CheckListeners);
    }

    pub(super) fn listener_check_deadline(&self) -> Option<Moment> {
        self.policy.listener_check.map(|_| self.timers.next_listener_check)
    }

    /// A listener shut down is the whole service down: said loudly. One the
    /// shell made listen again is only said; one it could not ends the
    /// supervisor with 1, since a flock nobody can connect to is not up
    /// (systemd's Restart= then decides).
    pub(super) fn on_listeners_checked(
        &mut self,
        now: Moment,
        recovered: Vec<String>,
        lost: Vec<String>,
        actions: &mut Vec<Action>,
    ) {
        for fault in &recovered {
            error!("{fault}");
        }
        if lost.is_empty() {
            return;
        }
        for fault in &lost {
            error!("{fault}");
        }
        if self.is_running() {
            let reason = format!("no connection can reach the flock: {}", lost.join("; "));
            self.begin_shutdown(now, 1, reason, actions);
        }
    }

    pub(super) fn measure_deadline(&self) -> Option<Moment> {
        (!self.workers.is_empty()).then_some(self.timers.next_measure)
    }

    /// If the loop itself did not run for longer than a heartbeat timeout (the
    /// supervisor was SIGSTOPped or starved), the silence is ours, not the
    /// workers': give every worker a fresh timeout rather than killing all.
    pub(super) fn guard_against_stalls(&mut self, now: Moment) {
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

    /// With heartbeats, the loop wakes at least every interval, so that a
    /// long silence of the loop can only mean the supervisor was stalled.
    pub(super) fn stall_guard_deadline(&self) -> Option<Moment> {
        self.policy.heartbeat.map(|h| self.timers.last_pass + h.interval)
    }

    /// The watchdog relay: WATCHDOG=1 at half systemd's interval, but after
    /// READY only while the flock is healthy (or below min_ready for less
    /// than `ready_timeout`), so that systemd's
    /// `Restart=on-watchdog` takes over a flock sheepdog cannot heal. Before
    /// READY (TimeoutStartSec governs) and while stopping (TimeoutStopSec
    /// does) the pings go on.
    pub(super) fn ping_watchdog(&mut self, now: Moment, actions: &mut Vec<Action>) {
        let Some(interval) = self.policy.watchdog else { return };
        if now < self.timers.next_watchdog {
            return;
        }
        self.timers.next_watchdog = now + interval / 2;
        let starting = !self.announced_ready;
        // A dip below min_ready is given a replacement's time to get ready:
        // one ping withheld already makes systemd's watchdog fire, and a
        // single crash must not restart the whole service.
        let healing = self
            .unhealthy
            .is_some_and(|(since, _)| now.saturating_duration_since(since) < self.policy.ready_timeout);
        if starting || self.is_shutting_down() || self.is_on_track() || healing {
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

    pub(super) fn watchdog_deadline(&self) -> Option<Moment> {
        self.policy.watchdog.map(|_| self.timers.next_watchdog)
    }
}
