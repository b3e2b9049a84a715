//! A deterministic simulation of a flock's world, fed to the real core: a
//! seeded world of workers that boot fast, slow or never, crash at boot or
//! later, hang, leave on their own, say odd things, grow in memory, listen
//! on a port of their own instead of the passed socket, answer pings over
//! Node IPC, and obey (or ignore) their stop signal; recycling by age, and
//! listeners shut down; the operator's reloads (good, broken and refused),
//! scales, stops (and a second stop while stopping) and in-place hand-overs
//! (and corrupt hand-over states); stalls of the loop, and passes at the
//! very deadline the core gave. Every
//! invariant of docs/reliability.md's "Invariants" is checked after every
//! pass (`sim/invariants.rs`); a failure names its seed and step and replays from the seed
//! (`SIM_FIRST=SEED SIM_SEEDS=1 SIM_TRACE=1`).
//!
//! Bugs it found in the core, each fixed and replayed by its seed: a stop
//! signal for a worker whose exit the same pass applied (seed 0, step 1700:
//! its pid could be another process's by then), and READY=1 at the end of a
//! reload made during the start, with fewer than the minimum ready (seed 6,
//! step 14); replacements that took the room of a slot backing off, so that
//! once it was filled the flock ran past `desired + max_surge` (seed 57,
//! step 35850; `replacements_leave_room_for_a_slot_that_backs_off`); a
//! replacement ready beside the worker it replaces, counted twice for an
//! instant, which started the clock of a long stretch below `min_ready`
//! again, so that such a flock never broke as a crash loop (seed 1529, step
//! 14448; `a_swap_within_a_pass_does_not_end_a_stretch_below_min_ready`);
//! the same clock started again by a scale-down retiring the one serving
//! worker (`a_scale_down_does_not_end_a_stretch_below_min_ready`); an astray
//! replacement kept beside the worker it was to replace, holding the surge's
//! place so that a later reload waited for ever (seed 13307182063533607681;
//! `an_astray_replacement_is_stopped_and_the_worker_it_was_to_replace_serves_on`);
//! replacements failing beside the worker they replace retried at once, as
//! that worker's long readiness cleared the slot's backoff in every pass,
//! and a replacement ready in the pass a reload began, marked for the reload
//! with the worker it replaced, so that neither replaced the other and the
//! reload waited for ever (both seed 3650559709271155169;
//! `replacements_that_keep_failing_beside_their_predecessor_back_off`,
//! `a_replacement_ready_as_a_reload_begins_takes_over_and_the_reload_completes`);
//! the highest slot passed over by recycling round after round (the same
//! seed; `the_worker_due_longest_is_recycled_first`); a watchdog ping
//! withheld while one crashed worker's replacement booted, which is enough
//! for systemd's watchdog to fire (seed 15;
//! `a_crash_replaced_in_time_does_not_cost_a_watchdog_ping`); an astray
//! replacement ready as a reload began, marked for it and so no longer
//! stopped as astray, holding the surge's place with the worker it was to
//! replace (seed 17499994589953079329, a 10⁸-pass run;
//! `an_astray_replacement_ready_as_a_reload_begins_is_stopped_and_the_reload_completes`).

mod explore;
mod invariants;

use std::collections::{BTreeMap, VecDeque};

use super::*;
use crate::clock::MAX_OFFSET;
use crate::core::flock::Phase;

/// splitmix64: a small, seedable generator; the same seed, the same world.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True one time in `n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// Commands from here on are broken reloads: their workers never get ready.
const BROKEN: CommandId = 1_000_000;
/// A worker's memory, and the limit a leaking one goes over.
const LEAN: u64 = 50 << 20;
const LIMIT: u64 = 100 << 20;
/// The longest a reload may go unanswered (a rollout of four workers, each
/// retried with backoff, takes seconds).
const ANSWER_WITHIN: Duration = Duration::from_secs(600);
/// The longest stall of the loop the world makes.
const STALL: Duration = Duration::from_secs(9);

/// What a worker process does in the world.
#[derive(Debug, Clone, Copy)]
struct Process {
    command: CommandId,
    slot: usize,
    spawned_at: Moment,
    /// When it says it is ready; None: never.
    ready_at: Option<Moment>,
    said_ready: bool,
    /// It stopped heartbeating (hung) for good. Until then it heartbeats in
    /// every pass: whatever the loop's delays, it does what it should.
    hung: bool,
    /// The core sent it a signal.
    signalled: bool,
    /// It said STOPPING=1 and leaves on its own.
    leaving: bool,
    /// It asked to be replaced (WATCHDOG=trigger).
    triggered: bool,
    memory: u64,
    /// It listens on a port of its own instead of the passed socket
    /// (`app.listen(3000)`): a look at it says so.
    astray: bool,
    /// When it exits, and how (its stop signal's end, a crash, SIGKILL).
    exits_at: Option<(Moment, ExitStatus)>,
}

/// A flock's actions as they matter outside it: what the restored twin of
/// a hand-over must do exactly as the original does. (What a pass keeps
/// for itself and the hand-over does not carry, as when workers were last
/// looked at, may time a look differently.)
fn outward(actions: &[Action]) -> Vec<Action> {
    actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Spawn(_)
                    | Action::Signal { .. }
                    | Action::Drain { .. }
                    | Action::ReloadFinished { .. }
                    | Action::Exit { .. }
                    | Action::Notify(Upward::Ready | Upward::Reloading | Upward::Stopping | Upward::Watchdog)
            )
        })
        .cloned()
        .collect()
}

struct World {
    seed: u64,
    rng: Rng,
    flock: Flock,
    /// The flock as it was before the last hand-over, fed the same passes:
    /// the restored one must act as it does.
    twin: Option<Flock>,
    now: Moment,
    next_pid: Pid,
    processes: BTreeMap<Pid, Process>,
    next_ticket: u64,
    policy: Policy,
    steps: u64,
    /// READY=1 was sent once: the flock started.
    started: bool,
    handed_over: u64,
    /// Reload requests not answered yet, and when each was asked.
    unanswered: BTreeMap<u64, Moment>,
    /// Unrequested ends as the world saw them, within the restart window.
    failures: VecDeque<Moment>,
    /// Since when each desired slot has had no live worker.
    empty_since: BTreeMap<usize, Moment>,
    /// Since when fewer than the minimum are ready, and the failures since.
    unhealthy: Option<(Moment, usize)>,
    /// Crash loops the flock exited for (each one starts a new flock).
    crash_loops: u64,
    shutting_down_since: Option<Moment>,
    /// Stop requests made (SIGTERM; a second one kills what is left).
    stops_asked: u32,
    /// Flocks stopped by the operator, and exited.
    stopped: u64,
    /// Every command a worker was started with.
    started_commands: std::collections::BTreeSet<CommandId>,
    /// Per slot, when a worker of it last ended or was told to stop.
    trouble: BTreeMap<usize, Moment>,
    /// When the loop would wake next, as the last pass left it; when that
    /// pass was.
    wake: Option<Moment>,
    last_pass: Moment,
    /// Workers pinged over Node IPC, to answer in the next pass.
    pinged: std::collections::BTreeSet<Pid>,
    /// The last watchdog ping, and since when the flock has been healthy
    /// (or starting) with the loop on time.
    last_watchdog: Moment,
    on_time_and_healthy_since: Option<Moment>,
    /// Since when fewer desired slots have been served than the minimum, as
    /// seen after each pass; and the same clock started again by every pass
    /// that changed the desired count or the minimum (the core may have
    /// seen the flock healthy within such a pass, and started its own again).
    below_since: Option<Moment>,
    below_since_surely: Option<Moment>,
    /// Per slot: failures in a row since a worker started after them got
    /// ready (or a reload began: the new generation starts afresh), when
    /// the last was seen, and the newest generation then.
    streaks: BTreeMap<usize, (u32, Moment, u32)>,
    /// When the last recycle by age began.
    last_recycle: Option<Moment>,
    /// The shell found the shared listener gone for good.
    listener_lost: bool,
    /// Workers that left the flock's table (but at a shutdown), and those
    /// of them that ended on their own with an exit code: what the metrics
    /// count as ended, and as crashes.
    ended: u64,
    crashes: u64,
    ends_among_others: u64,
    crashes_among_others: u64,
    /// Workers whose queue is being drained: since when, and when the shell
    /// reports it empty (never, for one that keeps its queue full).
    draining: BTreeMap<Pid, (Moment, Option<Moment>)>,
    /// Workers the last look at the CPUs allows to start in this pass past
    /// a CPU's worth of starting ones.
    load_allowance: usize,
}

/// What one pass did, for the checks.
#[derive(Default)]
struct Pass {
    actions: Vec<Action>,
    /// Workers whose exit the world reported, whether the core had asked
    /// for it, and their command.
    exited: Vec<(Pid, bool, CommandId)>,
    /// Those of them that exited with a code (not killed by a signal).
    crashed: Vec<Pid>,
    /// Their slots.
    slot_of: BTreeMap<Pid, (usize, Moment)>,
    /// Reloads under way when the pass began: a worker of theirs that
    /// fails before it is ready aborts its reload, and is no crash.
    rolling: Vec<u64>,
    exit: Option<(i32, String)>,
    refused: Vec<u64>,
    /// The flock was shutting down when the pass began.
    was_shutting_down: bool,
    /// A second stop request is in this pass.
    second_stop: bool,
    /// The pass was set off by time alone (and heartbeats).
    events_were_time_only: bool,
    /// More than one event but heartbeats and ticks in the pass.
    busy: bool,
    /// Workers that said they are ready in this pass.
    said_ready: Vec<Pid>,
    /// Scale requests, in order, and the slots asked to be replaced.
    scales: Vec<Request>,
    replaces: Vec<usize>,
    /// A reload was asked for in this pass (it changes the desired count).
    reload_asked: bool,
    /// The desired count when the pass began.
    desired_before: usize,
}

impl Pass {
    /// `command` is one of a reload under way when the pass began.
    fn rolls(&self, command: CommandId) -> bool {
        self.rolling.iter().any(|t| command == 100 + t || command == BROKEN + t)
    }

    /// A worker of a reload under way that ends before it is ready fails
    /// the reload, not the flock (one that said it is ready earlier in the
    /// same pass was ready by then).
    fn aborts(&self, before: &BTreeMap<Pid, WorkerState>, pid: Pid, command: CommandId) -> bool {
        let ready = before.get(&pid).is_some_and(|s| matches!(s, WorkerState::Ready { .. }));
        !ready && !self.said_ready.contains(&pid) && self.rolls(command)
    }
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng(seed);
        let mut policy = notify_policy(3);
        policy.max_surge = 1;
        policy.ready_timeout = 4000 * MS;
        policy.stop_timeout = 2000 * MS;
        policy.watchdog = Some(2000 * MS);
        policy.memory_limit = Some(LIMIT);
        policy.memory_interval = 1000 * MS;
        // One seed in four breaks its crash loops by the book; the others
        // never do, and run on.
        policy.restart.max_restarts = if seed.is_multiple_of(4) {
            2 + rng.below(8) as u32
        } else {
            1_000_000
        };
        policy.restart.window = Duration::from_secs(5 + rng.below(60));
        // One seed in three asks Node workers for heartbeats over IPC
        // (a ping each interval, any answer counts); the others' workers
        // send them unasked (WATCHDOG=1).
        if seed % 3 == 1 {
            policy.channel = Channel::NodeIpc;
        }
        // Two in five recycle their workers by age.
        if seed % 5 >= 3 {
            policy.recycle = RecyclePolicy {
                max_age: Some(Duration::from_secs(8 + rng.below(30))),
                jitter: Duration::from_millis(rng.below(5_000)),
            };
        }
        // One in two checks that the shared listeners still listen.
        if seed % 2 == 1 {
            policy.listener_check = Some(1000 * MS);
        }
        World {
            seed,
            rng,
            flock: Flock::new(policy.clone(), FIRST_COMMAND, T0),
            twin: None,
            now: T0,
            next_pid: FIRST_PID,
            processes: BTreeMap::new(),
            next_ticket: 1,
            policy,
            steps: 0,
            started: false,
            handed_over: 0,
            unanswered: BTreeMap::new(),
            failures: VecDeque::new(),
            empty_since: BTreeMap::new(),
            unhealthy: None,
            crash_loops: 0,
            shutting_down_since: None,
            stops_asked: 0,
            stopped: 0,
            started_commands: std::collections::BTreeSet::new(),
            // The loop's first pass comes at once.
            wake: Some(T0),
            last_pass: T0,
            trouble: BTreeMap::new(),
            pinged: std::collections::BTreeSet::new(),
            last_watchdog: T0,
            on_time_and_healthy_since: Some(T0),
            below_since: None,
            below_since_surely: None,
            streaks: BTreeMap::new(),
            last_recycle: None,
            listener_lost: false,
            ended: 0,
            crashes: 0,
            ends_among_others: 0,
            crashes_among_others: 0,
            draining: BTreeMap::new(),
            load_allowance: 0,
        }
    }

    fn fail(&self, why: String) -> ! {
        panic!(
            "seed {}, step {}: {why}\nreplay: SIM_FIRST={} SIM_SEEDS=1 SIM_TRACE=1 cargo test --lib a_simulated_world",
            self.seed, self.steps, self.seed
        )
    }

    /// One step: time passes, the world acts, the core sees it in one pass.
    fn step(&mut self) {
        self.steps += 1;
        let until_wake = self.wake.map(|at| at.saturating_duration_since(self.now));
        let gap = match self.rng.below(100) {
            0 => STALL,
            1..=20 => Duration::ZERO,
            // The loop woken by the deadline the core gave, on the dot.
            21..=50 if until_wake.is_some_and(|d| d <= STALL) => until_wake.unwrap(),
            _ => Duration::from_millis(1 + self.rng.below(600)),
        };
        // A gap longer than half the watchdog interval is the loop's own
        // lateness: systemd could not have been pinged on time.
        if self.policy.watchdog.is_some_and(|w| gap > w / 2) {
            self.on_time_and_healthy_since = None;
        }
        self.now += gap;
        let mut pass = Pass {
            rolling: self.unanswered.keys().copied().collect(),
            was_shutting_down: self.flock.is_shutting_down(),
            desired_before: self.flock.desired(),
            ..Pass::default()
        };
        let events = self.world_events(&mut pass);
        self.load_allowance = 0;
        // Now and then the flock is handed over, as an in-place upgrade
        // does: written as its state, read back, validated, carried on.
        if self.rng.one_in(500) {
            self.hand_over();
        }
        pass.busy = events
            .iter()
            .filter(|e| {
                !matches!(
                    e,
                    Event::Tick
                        | Event::Message {
                            message: WorkerMessage::Heartbeat,
                            ..
                        }
                )
            })
            .count()
            > 1;
        pass.events_were_time_only = events.iter().all(|e| {
            matches!(
                e,
                Event::Tick
                    | Event::Message {
                        message: WorkerMessage::Heartbeat,
                        ..
                    }
            )
        });
        let trace = std::env::var_os("SIM_TRACE").is_some();
        if trace {
            eprintln!("step {} at {:?}: {events:?}", self.steps, self.now);
        }
        let before: BTreeMap<Pid, WorkerState> = self.flock.workers().iter().map(|w| (w.pid, w.state)).collect();
        let twin_actions = self
            .twin
            .as_mut()
            .map(|twin| twin.handle_pass(self.now, events.clone()));
        let actions = self.flock.handle_pass(self.now, events);
        self.compare_twin(&actions, twin_actions);
        self.perform_all(actions, &mut pass);
        if let Some(status) = self.flock.status_update() {
            pass.actions.push(status);
        }
        if let Some(twin) = &mut self.twin {
            twin.status_update();
        }
        if trace {
            eprintln!(
                "  -> {:?}\n  workers: {}\n  unhealthy since {:?}\n  slots: {:?}",
                pass.actions,
                self.table().join("; "),
                self.flock.unhealthy,
                self.flock
                    .slots
                    .iter()
                    .map(|s| (s.failures, s.next_spawn))
                    .collect::<Vec<_>>()
            );
        }
        self.check(&pass, &before);
        if pass.exit.is_some() {
            // A crash loop ended the flock: systemd would start it again.
            let seed = self.rng.next();
            let steps = self.steps;
            let stopped = self.stops_asked > 0;
            let (crash_loops, handed_over) = (self.crash_loops + u64::from(!stopped), self.handed_over);
            let stops = self.stopped + u64::from(stopped);
            *self = World::new(seed);
            (self.steps, self.crash_loops, self.handed_over, self.stopped) = (steps, crash_loops, handed_over, stops);
        }
    }

    /// What the workers and the operator did since the last pass.
    fn world_events(&mut self, pass: &mut Pass) -> Vec<Event> {
        let mut events = Vec::new();
        let now = self.now;
        let empty: Vec<Pid> = self
            .draining
            .iter()
            .filter(|(_, (_, empty_at))| empty_at.is_some_and(|at| at <= now))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in empty {
            self.draining.remove(&pid);
            events.push(Event::Drained { pid });
        }
        let pids: Vec<Pid> = self.processes.keys().copied().collect();
        for pid in pids {
            let process = self.processes.get_mut(&pid).unwrap();
            if let Some((at, status)) = process.exits_at
                && at <= now
            {
                let (asked, command, slot, spawned_at) = (
                    process.signalled || process.leaving,
                    process.command,
                    process.slot,
                    process.spawned_at,
                );
                self.processes.remove(&pid);
                self.draining.remove(&pid);
                let state = self.flock.workers().iter().find(|w| w.pid == pid).map(|w| w.state);
                let was_stopping = matches!(state, Some(WorkerState::Stopping { .. }));
                let was_ready = matches!(state, Some(WorkerState::Ready { .. }));
                if !asked && !was_stopping && !self.flock.is_shutting_down() && (was_ready || !pass.rolls(command)) {
                    self.fail_in_a_row(slot);
                }
                pass.exited.push((pid, asked, command));
                pass.slot_of.insert(pid, (slot, spawned_at));
                pass.crashed
                    .extend(matches!(status, ExitStatus::Code(_)).then_some(pid));
                events.push(Event::Exited { pid, status });
                continue;
            }
            let message = if !process.said_ready && process.ready_at.is_some_and(|at| at <= now) {
                process.said_ready = true;
                pass.said_ready.push(pid);
                Some(WorkerMessage::Ready)
            } else if !process.hung
                && (self.pinged.remove(&pid) || (process.said_ready && self.policy.channel != Channel::NodeIpc))
            {
                Some(WorkerMessage::Heartbeat)
            } else {
                None
            };
            events.extend(message.map(|message| Event::Message { pid, message }));
            match self.rng.below(6_000) {
                0..=2 => process.hung = true,
                3..=8 if process.exits_at.is_none() => process.exits_at = Some((now, ExitStatus::Code(1))),
                9 if !process.leaving => {
                    process.leaving = true;
                    process.exits_at = Some((now + 300 * MS, ExitStatus::Code(0)));
                    events.push(Event::Message {
                        pid,
                        message: WorkerMessage::Stopping,
                    });
                }
                10 => process.memory = LIMIT + (LIMIT >> 1),
                11 => events.push(Event::Message {
                    pid,
                    message: WorkerMessage::Status("\u{1b}[2J odd".into()),
                }),
                12 => events.push(Event::Message {
                    pid,
                    message: WorkerMessage::Errno(self.rng.below(200) as i32),
                }),
                13 => events.push(Event::Message {
                    pid,
                    message: WorkerMessage::ChannelClosed,
                }),
                14 => {
                    process.triggered = true;
                    events.push(Event::Message {
                        pid,
                        message: WorkerMessage::WatchdogTrigger,
                    });
                }
                _ => {}
            }
        }
        self.pinged.clear();
        if self.stops_asked == 1 && self.flock.is_shutting_down() && self.rng.one_in(8) {
            self.stops_asked += 1;
            pass.second_stop = true;
            events.push(Event::Request(Request::Stop));
        }
        match self.rng.below(500) {
            0 | 1 => {
                let mut policy = self.policy.clone();
                policy.workers = 1 + self.rng.below(4) as usize;
                policy.min_ready = policy.workers;
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                let broken = self.rng.one_in(3);
                self.unanswered.insert(ticket, now);
                pass.reload_asked = true;
                events.push(Event::Request(Request::Reload {
                    ticket,
                    policy: Box::new(policy),
                    command: if broken { BROKEN + ticket } else { 100 + ticket },
                }));
            }
            2 => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.unanswered.insert(ticket, now);
                pass.refused.push(ticket);
                events.push(Event::Request(Request::ReloadRefused {
                    ticket,
                    reason: "app.toml:1:1: workers: bad".into(),
                }));
            }
            3 => pass.scales.push(Request::Scale(1 + self.rng.below(4) as usize)),
            7 => {
                let slot = self.rng.below(4) as usize;
                // What `sheepdog replace` is told: the worker that will be
                // replaced, or why none is.
                let workers = self.flock.workers().iter().filter(|w| w.slot == slot);
                let serving = workers.clone().find(|w| w.serves_for_good()).map(|w| w.pid);
                let replaced = workers.clone().any(|w| w.retiring().is_some());
                match (self.flock.replaceable(slot), serving) {
                    (Ok(pid), Some(serving)) if pid == serving => {}
                    (Err(_), None) => {}
                    // A slot being replaced already: one at a time.
                    (Err(_), Some(_)) if replaced => {}
                    (told, _) => self.fail(format!(
                        "`replace {slot}` told {told:?}, and the worker ready for good there is {serving:?}"
                    )),
                }
                pass.replaces.push(slot);
                events.push(Event::Request(Request::Replace(slot)));
            }
            // Rarely the operator stops the flock (systemctl stop), and now
            // and then asks again while it stops: then what is left is killed.
            6 if self.stops_asked == 0 && self.rng.one_in(40) => {
                self.stops_asked += 1;
                events.push(Event::Request(Request::Stop));
            }
            4 => pass.scales.push(Request::ScaleUp),
            5 => pass.scales.push(Request::ScaleDown),
            _ => {}
        }
        events.extend(pass.scales.iter().cloned().map(Event::Request));
        events.push(Event::Tick);
        events
    }

    fn perform_all(&mut self, mut actions: Vec<Action>, pass: &mut Pass) {
        let mut rounds = 0;
        while !actions.is_empty() {
            rounds += 1;
            if rounds > 100 {
                self.fail("actions without end".into());
            }
            // A ping is judged on the state that decided it, before any
            // outcome of this round is applied.
            if actions.contains(&Action::Notify(Upward::Watchdog)) {
                self.check_watchdog();
            }
            let mut next = Vec::new();
            let mut twin_next = Vec::new();
            let mut settle = false;
            for action in actions {
                pass.actions.push(action.clone());
                for event in self.perform(action, pass) {
                    settle = true;
                    if let Some(twin) = &mut self.twin {
                        twin_next.extend(twin.outcome(self.now, event.clone()));
                    }
                    next.extend(self.flock.outcome(self.now, event));
                }
            }
            if settle {
                next.extend(self.flock.settle(self.now));
                if let Some(twin) = &mut self.twin {
                    twin_next.extend(twin.settle(self.now));
                }
            }
            self.compare_twin(&next, self.twin.is_some().then_some(twin_next));
            actions = next;
        }
    }

    /// The flock through the hand-over state and back; the flock before it
    /// goes on beside as the twin the restored one must act as.
    fn hand_over(&mut self) {
        if self.flock.is_shutting_down() {
            return;
        }
        if self.rng.one_in(3) {
            self.hand_over_corrupt();
        }
        let state = super::snapshot::state_of(&self.flock, self.now)
            .unwrap_or_else(|why| self.fail(format!("no state: {why}")));
        let json = serde_json::to_string(&state).unwrap();
        let read = serde_json::from_str(&json).unwrap();
        let restored = super::snapshot::restore(read, self.now)
            .unwrap_or_else(|why| self.fail(format!("the state does not restore: {why}")));
        // What was read is what was written: the restored flock's own
        // state is the same, field for field.
        let again = super::snapshot::state_of(&restored, self.now)
            .unwrap_or_else(|why| self.fail(format!("no state from the restored flock: {why}")));
        if again != state {
            self.fail(format!(
                "the restored flock's state differs from the state written:\n  {again}\n  {state}"
            ));
        }
        self.twin = Some(std::mem::replace(&mut self.flock, restored));
        self.handed_over += 1;
        // The new binary's loop runs a pass as soon as it has the flock.
        self.wake = Some(self.now);
    }

    /// A state no config could give is refused as it is read (the new
    /// binary hands back rather than crash or spin); one at the edge of
    /// what a config gives is taken.
    fn hand_over_corrupt(&mut self) {
        let most = MAX_WORKERS as usize;
        let zero = Duration::ZERO;
        let mut bad = self.flock.clone();
        let (what, refused) = match self.rng.below(15) {
            0 => {
                bad.desired = 0;
                ("no workers desired", true)
            }
            1 => {
                bad.desired = most + 1;
                ("more workers desired than a config allows", true)
            }
            2 => {
                bad.generation = 0;
                ("generation 0", true)
            }
            3 => {
                bad.newest_generation = bad.generation - 1;
                ("a generation newer than the newest", true)
            }
            4 => {
                bad.policy.memory_interval = zero;
                ("a memory interval of zero", true)
            }
            5 => {
                bad.policy.heartbeat = bad.policy.heartbeat.map(|h| HeartbeatPolicy { interval: zero, ..h });
                ("a heartbeat interval of zero", true)
            }
            6 => {
                bad.policy.watchdog = Some(MAX_OFFSET + Duration::from_secs(1));
                ("a watchdog interval longer than the clock holds", true)
            }
            7 => {
                bad.policy.recycle.max_age = Some(zero);
                ("a max_age of zero", true)
            }
            8 => {
                bad.policy.listener_check = Some(zero);
                ("a listener check of zero", true)
            }
            9 => {
                bad.budget.per_second = 0.5;
                ("a spawn budget of half a spawn a second", true)
            }
            10 if bad.workers.len() >= 2 => {
                bad.workers[1].pid = bad.workers[0].pid;
                ("a pid twice", true)
            }
            10 if !bad.workers.is_empty() => {
                bad.workers[0].pid = 1;
                ("a worker with pid 1", true)
            }
            11 => {
                bad.slots.resize(2 * most + 1, bad.slots[0].clone());
                ("more slots than can be", true)
            }
            12 => {
                bad.slots.resize(2 * most, bad.slots[0].clone());
                ("as many slots as can be", false)
            }
            13 => {
                bad.budget.per_second = 1.0;
                ("a spawn budget of one spawn a second", false)
            }
            _ => {
                bad.desired = most;
                ("as many workers desired as a config allows", false)
            }
        };
        let Ok(state) = super::snapshot::state_of(&bad, self.now) else {
            return;
        };
        match (super::snapshot::restore(state, self.now), refused) {
            (Ok(_), true) => self.fail(format!("a hand-over state with {what} was taken")),
            (Err(why), false) => self.fail(format!("a hand-over state with {what} was refused: {why}")),
            _ => {}
        }
    }

    fn compare_twin(&self, actions: &[Action], twin: Option<Vec<Action>>) {
        if let Some(twin) = twin
            && outward(actions) != outward(&twin)
        {
            self.fail(format!(
                "the flock restored from a hand-over acts unlike the original:\n  restored: {:?}\n  original: {:?}",
                outward(actions),
                outward(&twin)
            ));
        }
    }

    /// Performs one action as the world would take it; returns its outcome.
    fn perform(&mut self, action: Action, pass: &mut Pass) -> Vec<Event> {
        match action {
            Action::Spawn(order) => {
                self.check_backoff(order.slot);
                self.check_load(order.slot);
                self.next_pid += 1;
                let pid = self.next_pid;
                self.started_commands.insert(order.command);
                let boot = match self.rng.below(10) {
                    _ if order.command >= BROKEN => None,
                    0 => None,                                               // never ready
                    1 => Some(Duration::from_millis(self.rng.below(8_000))), // slow
                    _ => Some(Duration::from_millis(self.rng.below(300))),
                };
                let crash_at_boot = self.rng.one_in(20) || (order.command >= BROKEN && self.rng.one_in(2));
                self.processes.insert(
                    pid,
                    Process {
                        command: order.command,
                        slot: order.slot,
                        spawned_at: self.now,
                        ready_at: boot.map(|b| self.now + b),
                        said_ready: false,
                        hung: false,
                        signalled: false,
                        leaving: false,
                        triggered: false,
                        memory: LEAN,
                        astray: self.rng.one_in(40),
                        exits_at: crash_at_boot.then_some((self.now + 50 * MS, ExitStatus::Code(1))),
                    },
                );
                vec![Event::Spawned {
                    order,
                    pid,
                    at: self.now,
                }]
            }
            Action::Signal { pid, signal } => {
                let Some(process) = self.processes.get_mut(&pid) else {
                    self.fail(format!("{signal:?} sent to pid {pid}, which is no live worker"));
                };
                process.signalled = true;
                // A worker being drained gets its stop signal once its queue
                // is empty, or once the drain limit has passed (at a stop,
                // at once: no other worker takes its connections).
                if let Some((since, _)) = self.draining.remove(&pid)
                    && signal != Signal::SIGKILL
                    && !self.flock.is_shutting_down()
                    && self.now - since < self.drain_limit()
                {
                    self.fail(format!(
                        "pid {pid} sent {signal:?} {:?} into its drain, its queue not empty",
                        self.now - since
                    ));
                }
                let process = self.processes.get_mut(&pid).unwrap();
                let (at, status) = if signal == Signal::SIGKILL {
                    (self.now, ExitStatus::Signaled(Signal::SIGKILL))
                } else if self.rng.one_in(10) {
                    // It ignores its stop signal: SIGKILL must follow.
                    return Vec::new();
                } else {
                    (
                        self.now + Duration::from_millis(self.rng.below(1_500)),
                        ExitStatus::Code(0),
                    )
                };
                let sooner = process.exits_at.is_none_or(|(then, _)| at < then);
                if sooner {
                    process.exits_at = Some((at, status));
                }
                Vec::new()
            }
            Action::Drain { pid } => {
                // Most queues are empty at once; some take a while, a few
                // never empty (a flood of connections).
                let empty_at = match self.rng.below(10) {
                    0..=6 => return vec![Event::Drained { pid }],
                    7 | 8 => Some(self.now + Duration::from_millis(self.rng.below(4_000))),
                    _ => None,
                };
                self.draining.insert(pid, (self.now, empty_at));
                Vec::new()
            }
            Action::Measure { pids, .. } => pids
                .into_iter()
                .map(|pid| Event::Measured {
                    pid,
                    bytes: self.processes.get(&pid).map_or(0, |p| p.memory),
                })
                .collect(),
            Action::Inspect { pids } => vec![Event::Inspected(
                pids.into_iter()
                    .map(|pid| match self.processes.get(&pid) {
                        Some(p) if p.astray => (pid, Inspection::Astray(vec!["0.0.0.0:3000".into()])),
                        _ => (pid, Inspection::Serves),
                    })
                    .collect(),
            )],
            Action::SampleLoad => {
                // The starting workers keep the CPUs busy one time in four.
                let cpus = self.flock.policy().cpus;
                let runnable = if self.rng.one_in(4) { cpus } else { 0 };
                self.load_allowance = if runnable < cpus { cpus } else { 0 };
                vec![Event::LoadSampled { runnable }]
            }
            Action::CheckListeners => {
                let mut found = vec![Event::QueuesSampled(Vec::new())];
                // Now and then the shell finds a listener shut down: made
                // to listen again, or lost for good (the service is down).
                match self.rng.below(20_000) {
                    0 => {
                        self.listener_lost = true;
                        found.push(Event::ListenersChecked {
                            recovered: Vec::new(),
                            lost: vec!["fd 3 (127.0.0.1:8080) was shut down and cannot listen again".into()],
                        });
                    }
                    1..=3 => found.push(Event::ListenersChecked {
                        recovered: vec!["fd 3 (127.0.0.1:8080) was shut down; listening again".into()],
                        lost: Vec::new(),
                    }),
                    _ => {}
                }
                found
            }
            Action::Ping { pid, .. } => {
                if !self.processes.contains_key(&pid) {
                    self.fail(format!("pid {pid} pinged, which is no live worker"));
                }
                if self.policy.channel != Channel::NodeIpc {
                    self.fail(format!("pid {pid} pinged over IPC, which the policy does not use"));
                }
                self.pinged.insert(pid);
                Vec::new()
            }
            Action::Notify(Upward::Watchdog) => {
                self.last_watchdog = self.now;
                Vec::new()
            }
            Action::Notify(Upward::Ready) if !self.started => {
                self.started = true;
                let ready = self.flock.ready_count();
                if ready < self.min_ready() {
                    self.fail(format!("READY=1 with {ready} workers ready"));
                }
                Vec::new()
            }
            Action::ReloadFinished { ticket, ok, message } => {
                if self.unanswered.remove(&ticket).is_none() {
                    self.fail(format!("reload {ticket} answered twice, or never asked: {message}"));
                }
                if ok && self.flock.generation() > 1 && self.command_of(ticket) >= BROKEN {
                    self.fail(format!("broken reload {ticket} said to succeed"));
                }
                Vec::new()
            }
            Action::Exit { code, reason } => {
                pass.exit = Some((code, reason));
                Vec::new()
            }
            Action::Notify(_) | Action::ReleaseCommand(_) => Vec::new(),
        }
    }

    /// The command a reload asked for, as the live workers of its
    /// generation run it (BROKEN and up for a broken one).
    fn command_of(&self, ticket: u64) -> CommandId {
        let generation = self.flock.generation();
        self.flock
            .workers()
            .iter()
            .filter(|w| w.generation == generation)
            .find_map(|w| self.processes.get(&w.pid).map(|p| p.command))
            .filter(|c| *c == BROKEN + ticket || *c == 100 + ticket)
            .unwrap_or(0)
    }

    /// The core's workers, one line each, for a failure's message.
    fn table(&self) -> Vec<String> {
        self.flock
            .workers()
            .iter()
            .map(|w| {
                let astray = self.processes.get(&w.pid).is_some_and(|p| p.astray);
                format!(
                    "slot {} pid {} gen {} {:?} astray {astray} recycle at {:?}",
                    w.slot, w.pid, w.generation, w.state, w.recycle_at
                )
            })
            .collect()
    }

    fn drain_limit(&self) -> Duration {
        crate::core::flock::DRAIN_LIMIT.min(self.flock.policy().stop_timeout)
    }

    fn min_ready(&self) -> usize {
        self.flock.policy().min_ready.clamp(1, self.flock.desired())
    }
}

/// The steps run, the hand-overs and the crash loops among them.
fn run(seed: u64, steps: u64) -> (u64, u64, u64, u64) {
    captured::mute();
    let mut world = World::new(seed);
    while world.steps < steps {
        world.step();
    }
    (world.steps, world.handed_over, world.crash_loops, world.stopped)
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[test]
fn a_simulated_world_never_breaks_the_invariants() {
    let started = std::time::Instant::now();
    let seeds = env_number("SIM_SEEDS", 20);
    let first = env_number("SIM_FIRST", 0);
    let steps = env_number("SIM_STEPS", 50_000);
    let runs: Vec<(u64, u64, u64, u64)> = (first..first + seeds).map(|seed| run(seed, steps)).collect();
    let total: u64 = runs.iter().map(|r| r.0).sum();
    let handed_over: u64 = runs.iter().map(|r| r.1).sum();
    let crash_loops: u64 = runs.iter().map(|r| r.2).sum();
    let stopped: u64 = runs.iter().map(|r| r.3).sum();
    println!(
        "simulated {total} steps over {seeds} seeds ({handed_over} in-place hand-overs, {crash_loops} crash loops, \
         {stopped} stops) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(total, seeds * steps);
    if seeds >= 20 && steps >= 50_000 {
        assert!(handed_over > seeds * 50, "{handed_over} hand-overs");
        assert!(crash_loops > 0, "no crash loop in {total} steps");
    }
}
