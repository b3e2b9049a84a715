//! A deterministic simulation of a flock's world, fed to the real core: a
//! seeded world of workers that boot fast or slow, crash at boot or later,
//! hang, heartbeat, and obey (or ignore) their stop signal, with operator
//! reloads and scales and stalls of the loop. Invariants are checked after
//! every pass; a failure names its seed and step, and replays from the seed.
//!
//! This is the start of issue 27's simulator: the world and four of its
//! invariants. It found two bugs on its first runs, each fixed since and
//! replayed here by its seed: a stop signal for a worker whose exit the
//! same pass applied (seed 0, step 1700: its pid could be another
//! process's by then), and READY=1 at the end of a reload made during the
//! start, with fewer than the minimum ready (seed 6, step 14).

use std::collections::BTreeMap;

use super::*;

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

/// What a worker process does in the world.
#[derive(Debug, Clone, Copy)]
struct Process {
    /// When it says it is ready; None: never.
    ready_at: Option<Moment>,
    said_ready: bool,
    /// It stopped heartbeating (hung) for good.
    hung: bool,
    /// When it exits, and how (its stop signal's end, a crash, SIGKILL).
    exits_at: Option<(Moment, ExitStatus)>,
}

struct World {
    rng: Rng,
    flock: Flock,
    now: Moment,
    next_pid: Pid,
    processes: BTreeMap<Pid, Process>,
    next_ticket: u64,
    policy: Policy,
    steps: u64,
    /// READY=1 was sent once: the flock started.
    started: bool,
    /// In-place upgrades simulated.
    handed_over: u64,
}

impl World {
    fn new(seed: u64) -> World {
        let mut policy = notify_policy(3);
        policy.max_surge = 1;
        policy.ready_timeout = 4000 * MS;
        policy.stop_timeout = 2000 * MS;
        policy.restart.max_restarts = 1_000_000;
        World {
            rng: Rng(seed),
            flock: Flock::new(policy.clone(), FIRST_COMMAND, T0),
            now: T0,
            next_pid: FIRST_PID,
            processes: BTreeMap::new(),
            next_ticket: 1,
            policy,
            steps: 0,
            started: false,
            handed_over: 0,
        }
    }

    fn fail(&self, seed: u64, why: String) -> ! {
        panic!("seed {seed}, step {}: {why}", self.steps)
    }

    /// One step: time passes, the world acts, the core sees it in one pass.
    fn step(&mut self, seed: u64) {
        self.steps += 1;
        let gap = match self.rng.below(100) {
            0 => 9_000 * MS, // the loop stalled
            1..=20 => Duration::ZERO,
            _ => Duration::from_millis(1 + self.rng.below(600)),
        };
        self.now += gap;
        let mut events = Vec::new();
        let pids: Vec<Pid> = self.processes.keys().copied().collect();
        for pid in pids {
            let now = self.now;
            let process = self.processes.get_mut(&pid).unwrap();
            if let Some((at, status)) = process.exits_at
                && at <= now
            {
                self.processes.remove(&pid);
                events.push(Event::Exited { pid, status });
                continue;
            }
            if !process.said_ready && process.ready_at.is_some_and(|at| at <= now) {
                process.said_ready = true;
                events.push(Event::Message {
                    pid,
                    message: WorkerMessage::Ready,
                });
            } else if process.said_ready && !process.hung && self.rng.one_in(2) {
                events.push(Event::Message {
                    pid,
                    message: WorkerMessage::Heartbeat,
                });
            }
            if self.rng.one_in(2_000) {
                process.hung = true;
            }
            if process.exits_at.is_none() && self.rng.one_in(1_000) {
                process.exits_at = Some((now, ExitStatus::Code(1)));
            }
        }
        match self.rng.below(400) {
            0 => {
                let mut policy = self.policy.clone();
                policy.workers = 1 + self.rng.below(4) as usize;
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                events.push(Event::Request(Request::Reload {
                    ticket,
                    policy: Box::new(policy),
                    command: 100 + ticket,
                }));
            }
            1 => events.push(Event::Request(Request::Scale(1 + self.rng.below(4) as usize))),
            _ => {}
        }
        events.push(Event::Tick);
        // Now and then the flock is handed over, as an in-place upgrade
        // does: written as its state, read back, validated, carried on.
        if self.rng.one_in(500) {
            self.hand_over(seed);
        }
        // SIM_TRACE=1 (with SIM_FIRST=seed SIM_SEEDS=1) prints the passes.
        let trace = std::env::var_os("SIM_TRACE").is_some();
        if trace {
            eprintln!("step {} at {:?}: {events:?}", self.steps, self.now);
        }
        let actions = self.flock.handle_pass(self.now, events);
        if trace {
            eprintln!("  -> {actions:?}");
        }
        self.perform_all(seed, actions);
    }

    fn perform_all(&mut self, seed: u64, mut actions: Vec<Action>) {
        let mut rounds = 0;
        while !actions.is_empty() {
            rounds += 1;
            if rounds > 100 {
                self.fail(seed, "actions without end".into());
            }
            let mut next = Vec::new();
            let mut settle = false;
            for action in actions {
                for event in self.perform(seed, action) {
                    settle = true;
                    next.extend(self.flock.outcome(self.now, event));
                }
            }
            if settle {
                next.extend(self.flock.settle(self.now));
            }
            actions = next;
        }
        self.check(seed);
    }

    /// The flock through the hand-over state and back, the new binary's
    /// clock a few milliseconds on (the world waits for it).
    fn hand_over(&mut self, seed: u64) {
        if self.flock.is_shutting_down() {
            return;
        }
        let state = super::snapshot::state_of(&self.flock, self.now)
            .unwrap_or_else(|why| self.fail(seed, format!("no state to hand over: {why}")));
        let json = serde_json::to_string(&state).unwrap();
        let read = serde_json::from_str(&json).unwrap();
        self.flock = super::snapshot::restore(read, self.now)
            .unwrap_or_else(|why| self.fail(seed, format!("the state does not restore: {why}")));
        self.handed_over += 1;
    }

    /// Performs one action as the world would take it; returns its outcome.
    fn perform(&mut self, seed: u64, action: Action) -> Vec<Event> {
        match action {
            Action::Spawn(order) => {
                self.next_pid += 1;
                let pid = self.next_pid;
                let boot = match self.rng.below(10) {
                    0 => None,                                               // never ready
                    1 => Some(Duration::from_millis(self.rng.below(8_000))), // slow
                    _ => Some(Duration::from_millis(self.rng.below(300))),
                };
                let crash_at_boot = self.rng.one_in(20);
                self.processes.insert(
                    pid,
                    Process {
                        ready_at: boot.map(|b| self.now + b),
                        said_ready: false,
                        hung: false,
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
                    self.fail(seed, format!("{signal:?} sent to pid {pid}, which is no live worker"));
                };
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
            Action::Drain { pid } => vec![Event::Drained { pid }],
            Action::Measure { pids, .. } => pids
                .into_iter()
                .map(|pid| Event::Measured { pid, bytes: 50 << 20 })
                .collect(),
            Action::Inspect { pids } => vec![Event::Inspected(
                pids.into_iter().map(|pid| (pid, Inspection::Serves)).collect(),
            )],
            Action::SampleLoad => vec![Event::LoadSampled { runnable: 0 }],
            Action::CheckListeners => vec![Event::QueuesSampled(Vec::new())],
            // The first READY=1 waits for the minimum ready; a later one ends
            // a reload (systemd needs it whatever the count).
            Action::Notify(Upward::Ready) if !self.started => {
                self.started = true;
                let ready = self.flock.workers().iter().filter(|w| w.is_ready()).count();
                if ready < self.flock.policy().min_ready.clamp(1, self.flock.desired()) {
                    self.fail(seed, format!("READY=1 with {ready} workers ready"));
                }
                Vec::new()
            }
            Action::Exit { code, reason } => self.fail(seed, format!("the flock exited ({code}): {reason}")),
            Action::Ping { .. } | Action::Notify(_) | Action::ReloadFinished { .. } | Action::ReleaseCommand(_) => {
                Vec::new()
            }
        }
    }

    /// The invariants that hold after every pass.
    fn check(&self, seed: u64) {
        let workers = self.flock.workers();
        // Every worker the core knows of is a process of the world.
        if let Some(w) = workers.iter().find(|w| !self.processes.contains_key(&w.pid)) {
            self.fail(seed, format!("the core keeps pid {}, which exited", w.pid));
        }
        // Never more live workers than desired plus the surge.
        let live = workers.iter().filter(|w| !w.is_stopping()).count();
        let most = self.flock.desired() + self.flock.policy().max_surge;
        if live > most {
            self.fail(seed, format!("{live} live workers, more than {most}"));
        }
    }
}

/// The steps run, and the hand-overs among them.
fn run(seed: u64, steps: u64) -> (u64, u64) {
    let mut world = World::new(seed);
    for _ in 0..steps {
        world.step(seed);
    }
    (world.steps, world.handed_over)
}

#[test]
fn a_simulated_world_never_breaks_the_invariants() {
    let started = std::time::Instant::now();
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let first: u64 = std::env::var("SIM_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let runs: Vec<(u64, u64)> = (first..first + seeds).map(|seed| run(seed, 50_000)).collect();
    let total: u64 = runs.iter().map(|r| r.0).sum();
    let handed_over: u64 = runs.iter().map(|r| r.1).sum();
    println!(
        "simulated {total} steps over {seeds} seeds ({handed_over} in-place hand-overs) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(handed_over > seeds * 50, "{handed_over} hand-overs");
    assert_eq!(total, seeds * 50_000);
}
