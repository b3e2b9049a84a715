//! Every interleaving, not a sample: a breadth-first search over the states
//! of a small flock (2 workers, `max_surge` 1) and its world, each move one
//! pass of the loop: a worker says it is ready, a worker exits, time passes
//! (less, or more, than the timeouts), the operator asks for a good or a
//! broken reload, the flock is handed over (written, read back, validated).
//! States are told apart by the flock's hand-over state (its times relative
//! to now) and the world's; each new one is checked against the invariants,
//! and a violation prints the shortest sequence of moves that reaches it
//! (breadth first: no shorter one exists). At each state the flock is also
//! handed over on the side, and every move is made on both: the restored
//! flock must act exactly as the original, and end in the same state.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    Ready(Pid),
    Exit(Pid),
    Wait(Duration),
    Reload { broken: bool },
    HandOver,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Proc {
    said_ready: bool,
    signalled: bool,
    command: CommandId,
}

#[derive(Clone)]
struct Node {
    flock: Flock,
    now: Moment,
    procs: BTreeMap<Pid, Proc>,
    next_pid: Pid,
    next_ticket: u64,
    unanswered: Vec<u64>,
    hand_overs: u32,
    started: bool,
}

/// How much of the world a search may use.
struct Bounds {
    depth: usize,
    reloads: u64,
    hand_overs: u32,
}

fn policy() -> Policy {
    let mut p = notify_policy(2);
    p.heartbeat = None;
    p.max_surge = 1;
    p.ready_timeout = 4000 * MS;
    p.stop_timeout = 2000 * MS;
    p.restart.max_restarts = 3;
    p.restart.window = Duration::from_secs(60);
    p
}

impl Node {
    fn start() -> Result<Node, String> {
        let mut node = Node {
            flock: Flock::new(policy(), FIRST_COMMAND, T0),
            now: T0,
            procs: BTreeMap::new(),
            next_pid: FIRST_PID,
            next_ticket: 1,
            unanswered: Vec::new(),
            hand_overs: 0,
            started: false,
        };
        node.pass(vec![Event::Tick])?;
        for pid in node.procs.keys().copied().collect::<Vec<_>>() {
            node.apply(Move::Ready(pid))?;
        }
        Ok(node)
    }

    fn moves(&self, bounds: &Bounds) -> Vec<Move> {
        let mut moves = Vec::new();
        for (pid, proc) in &self.procs {
            if !proc.said_ready && proc.command < BROKEN {
                moves.push(Move::Ready(*pid));
            }
            moves.push(Move::Exit(*pid));
        }
        // Past every timeout: the ready timeout, the stop timeout, a backoff.
        moves.push(Move::Wait(5000 * MS));
        if self.next_ticket <= bounds.reloads && !self.flock.is_shutting_down() {
            moves.push(Move::Reload { broken: false });
            moves.push(Move::Reload { broken: true });
        }
        if self.hand_overs < bounds.hand_overs && !self.flock.is_shutting_down() {
            moves.push(Move::HandOver);
        }
        moves
    }

    /// One move, as one pass; the actions of the pass, or the invariant it broke.
    fn apply(&mut self, m: Move) -> Result<Vec<Action>, String> {
        let event = match m {
            Move::Ready(pid) => {
                self.procs.get_mut(&pid).unwrap().said_ready = true;
                Event::Message {
                    pid,
                    message: WorkerMessage::Ready,
                }
            }
            Move::Exit(pid) => {
                let proc = self.procs.remove(&pid).unwrap();
                let code = if proc.signalled { 0 } else { 1 };
                Event::Exited {
                    pid,
                    status: ExitStatus::Code(code),
                }
            }
            Move::Wait(span) => {
                self.now += span;
                Event::Tick
            }
            Move::Reload { broken } => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.unanswered.push(ticket);
                Event::Request(Request::Reload {
                    ticket,
                    policy: Box::new(policy()),
                    command: if broken { BROKEN + ticket } else { 100 + ticket },
                })
            }
            Move::HandOver => {
                self.flock = hand_over(&self.flock, self.now)?;
                self.hand_overs += 1;
                Event::Tick
            }
        };
        self.pass(vec![event, Event::Tick])
    }

    fn pass(&mut self, events: Vec<Event>) -> Result<Vec<Action>, String> {
        let mut taken = Vec::new();
        let mut actions = self.flock.handle_pass(self.now, events);
        while !actions.is_empty() {
            if taken.len() > 1_000 {
                return Err("actions without end".into());
            }
            let mut next = Vec::new();
            let mut settle = false;
            for action in actions {
                taken.push(action.clone());
                for event in self.perform(action)? {
                    settle = true;
                    next.extend(self.flock.outcome(self.now, event));
                }
            }
            if settle {
                next.extend(self.flock.settle(self.now));
            }
            actions = next;
        }
        self.check(&taken)?;
        Ok(taken)
    }

    fn perform(&mut self, action: Action) -> Result<Vec<Event>, String> {
        Ok(match action {
            Action::Spawn(order) => {
                self.next_pid += 1;
                let pid = self.next_pid;
                self.procs.insert(
                    pid,
                    Proc {
                        said_ready: false,
                        signalled: false,
                        command: order.command,
                    },
                );
                vec![Event::Spawned {
                    order,
                    pid,
                    at: self.now,
                }]
            }
            Action::Signal { pid, signal } => {
                let proc = self
                    .procs
                    .get_mut(&pid)
                    .ok_or_else(|| format!("{signal:?} sent to pid {pid}, which is no live worker"))?;
                proc.signalled = true;
                Vec::new()
            }
            Action::Drain { pid } => vec![Event::Drained { pid }],
            Action::Inspect { pids } => vec![Event::Inspected(
                pids.into_iter().map(|pid| (pid, Inspection::Serves)).collect(),
            )],
            Action::SampleLoad => vec![Event::LoadSampled { runnable: 0 }],
            Action::CheckListeners => vec![Event::QueuesSampled(Vec::new())],
            Action::Measure { pids, .. } => pids
                .into_iter()
                .map(|pid| Event::Measured { pid, bytes: LEAN })
                .collect(),
            Action::Notify(Upward::Ready) if !self.started => {
                self.started = true;
                let ready = self.flock.ready_count();
                if ready < 2 {
                    return Err(format!("READY=1 with {ready} workers ready"));
                }
                Vec::new()
            }
            Action::ReloadFinished { ticket, ok, .. } => {
                let Some(at) = self.unanswered.iter().position(|t| *t == ticket) else {
                    return Err(format!("reload {ticket} answered twice"));
                };
                self.unanswered.remove(at);
                let broken = self.procs.values().any(|p| p.command == BROKEN + ticket);
                if ok && broken {
                    return Err(format!("broken reload {ticket} said to succeed"));
                }
                Vec::new()
            }
            _ => Vec::new(),
        })
    }

    fn check(&self, taken: &[Action]) -> Result<(), String> {
        let workers = self.flock.workers();
        if let Some(w) = workers.iter().find(|w| !self.procs.contains_key(&w.pid)) {
            return Err(format!("the core keeps pid {}, which exited", w.pid));
        }
        let live = workers.iter().filter(|w| !w.is_stopping()).count();
        if live > self.flock.desired() + self.flock.policy().max_surge {
            return Err(format!("{live} live workers"));
        }
        for action in taken {
            if let Action::ReloadFinished { ticket, ok: false, .. } = action
                && let Some(w) = workers
                    .iter()
                    .find(|w| !w.is_stopping() && self.procs.get(&w.pid).is_some_and(|p| p.command == BROKEN + ticket))
            {
                return Err(format!("reload {ticket} failed, and its pid {} serves on", w.pid));
            }
        }
        // With no reload under way, every reload asked for was answered.
        if self.flock.reloading_to().is_none()
            && let Some(ticket) = self.unanswered.first()
        {
            return Err(format!("no reload under way, and reload {ticket} unanswered"));
        }
        Ok(())
    }

    /// What tells this state from another: the flock as it would be handed
    /// over (times relative to now), the skipped phase, and the world.
    fn key(&self) -> Result<(u64, u64), String> {
        // The spawn budget is refilled lazily, by the passes that spawn:
        // a state is the same whichever pass last refilled it.
        let mut flock = self.flock.clone();
        flock.budget.refill(self.now);
        let state = super::super::snapshot::state_of(&flock, self.now).unwrap_or_default();
        let text = format!(
            "{state}|{}|{:?}|{:?}|{}|{:?}|{}|{}",
            self.flock.is_shutting_down(),
            self.procs,
            self.unanswered,
            self.next_ticket,
            self.started,
            self.hand_overs,
            self.next_pid
        );
        let hash = |salt: u64| {
            let mut h = DefaultHasher::new();
            salt.hash(&mut h);
            text.hash(&mut h);
            h.finish()
        };
        Ok((hash(1), hash(2)))
    }
}

/// The flock through the hand-over state and back, as the next binary
/// would have it.
fn hand_over(flock: &Flock, now: Moment) -> Result<Flock, String> {
    let state = super::super::snapshot::state_of(flock, now)?;
    let json = serde_json::to_string(&state).map_err(|e| e.to_string())?;
    let read = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    super::super::snapshot::restore(read, now)
}

/// Hands `node`'s flock over on the side and makes every move on both:
/// the same outward actions, the same state after.
fn check_twin(node: &Node, moves: &[Move]) -> Result<(), String> {
    if node.flock.is_shutting_down() {
        return Ok(());
    }
    let restored = hand_over(&node.flock, node.now)?;
    for m in moves.iter().filter(|m| **m != Move::HandOver) {
        let (mut original, mut twin) = (node.clone(), node.clone());
        twin.flock = restored.clone();
        let (a, b) = (original.apply(*m), twin.apply(*m));
        let (a, b) = (a.map(|a| outward(&a)), b.map(|b| outward(&b)));
        if a != b {
            return Err(format!(
                "after a hand-over, {m:?} does\n  {b:?}\nwhere the original does\n  {a:?}"
            ));
        }
        if a.is_ok() && original.key()? != twin.key()? {
            let show = |n: &Node| {
                let mut flock = n.flock.clone();
                flock.budget.refill(n.now);
                super::super::snapshot::state_of(&flock, n.now)
                    .unwrap_or_default()
                    .to_string()
            };
            let (x, y) = (show(&original), show(&twin));
            let from = x.bytes().zip(y.bytes()).position(|(a, b)| a != b).unwrap_or(0);
            return Err(format!(
                "after a hand-over, {m:?} leaves another state than the original's: …{}… where the original has …{}…",
                &y[from.saturating_sub(80)..(from + 80).min(y.len())],
                &x[from.saturating_sub(80)..(from + 80).min(x.len())]
            ));
        }
    }
    Ok(())
}

/// The states explored, or the shortest sequence of moves to a violation.
fn explore(bounds: &Bounds) -> Result<usize, String> {
    captured::mute();
    // From a flock of two ready workers: the reload asked for, good or
    // broken, and everything that can happen next.
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut found: Vec<(usize, Option<Move>)> = vec![(0, None)];
    let mut frontier = Vec::new();
    for broken in [false, true] {
        let mut root = Node::start()?;
        root.apply(Move::Reload { broken })?;
        seen.insert(root.key()?);
        found.push((0, Some(Move::Reload { broken })));
        frontier.push((found.len() - 1, root));
    }
    let path = |found: &Vec<(usize, Option<Move>)>, mut at: usize| {
        let mut moves = Vec::new();
        while let (parent, Some(m)) = found[at] {
            moves.push(m);
            if at == parent {
                break;
            }
            at = parent;
        }
        moves.reverse();
        moves
    };
    for _ in 0..bounds.depth {
        let mut next = Vec::new();
        for (index, node) in frontier {
            let moves = node.moves(bounds);
            if let Err(why) = check_twin(&node, &moves) {
                return Err(format!("{why}\nafter the moves {:?}", path(&found, index)));
            }
            for m in moves {
                let mut child = node.clone();
                let outcome = child.apply(m);
                found.push((index, Some(m)));
                let at = found.len() - 1;
                if let Err(why) = outcome {
                    return Err(format!("{why}\nshortest path: {:?}", path(&found, at)));
                }
                if seen.insert(child.key()?) {
                    next.push((at, child));
                } else {
                    found.pop();
                }
            }
        }
        frontier = next;
    }
    Ok(seen.len())
}

#[test]
fn every_interleaving_of_a_small_reload_and_hand_over_keeps_the_invariants() {
    let started = std::time::Instant::now();
    let bounds = Bounds {
        depth: env_number("EXPLORE_DEPTH", 5) as usize,
        reloads: env_number("EXPLORE_RELOADS", 2),
        hand_overs: env_number("EXPLORE_HAND_OVERS", 1) as u32,
    };
    let states = explore(&bounds).unwrap_or_else(|why| panic!("{why}"));
    println!(
        "explored {states} distinct states of a 2-worker flock to depth {} ({} reloads, {} hand-over) in {:.1}s",
        bounds.depth,
        bounds.reloads,
        bounds.hand_overs,
        started.elapsed().as_secs_f64()
    );
    assert!(states > 1_000, "{states} states: the search did not go far");
}
