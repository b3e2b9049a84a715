//! The queues of the flock: which listening sockets form one group (one
//! address, one `SO_REUSEPORT` group), which queue each worker accepts
//! from, which queues new connections are steered to, and when a stopping
//! worker's queue has emptied.
//!
//! A worker gets queue `q` of every group (group `g`'s member `q`, modulo
//! its size) as fds 3…, so its fd layout is the one a shared socket had. A
//! queue is open while a worker of it may take new connections (ready, not
//! stopping); the steering sends each new connection to an open queue. A
//! worker's queue outlives the worker: sheepdog holds every socket, so what
//! sits in a dead worker's queue waits for the next worker given it.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::RawFd;
use std::time::Duration;

use crate::clock::Moment;

use log::{debug, info, warn};

use super::bpf::{self, RoundRobin};
use crate::config::Spread;
use crate::core::Pid;
use crate::systemd::sockets::Listeners;
use serde::{Deserialize, Serialize};

use crate::wire::FdRecord;

/// How long a queue must have been closed before it can count as empty: a
/// connection steered to it just before (its handshake under way) lands in
/// it up to a round trip later.
pub const SETTLE: Duration = Duration::from_millis(100);

/// How often draining queues are looked at.
pub const DRAIN_POLL: Duration = Duration::from_millis(10);

#[derive(Debug)]
enum Steering {
    RoundRobin(RoundRobin),
    /// Classic BPF; the open list it was last given.
    Random(Option<Vec<u32>>),
    /// One socket: nothing to steer.
    Shared,
}

#[derive(Debug)]
struct Group {
    /// Queue `q`'s socket: an index into the listeners.
    members: Vec<usize>,
    /// The queues in the group's order in the kernel (the order their
    /// sockets called listen(2)): a steering program returns a position here.
    order: Vec<usize>,
    steering: Steering,
    /// More sockets can join it (sheepdog bound it, or may join it).
    growable: bool,
}

impl Group {
    fn steered(&self) -> bool {
        !matches!(self.steering, Steering::Shared)
    }

    fn member(&self, queue: usize) -> usize {
        self.members[queue % self.members.len()]
    }

    /// The kernel's indices of these queues.
    fn indices(&self, queues: &BTreeSet<usize>) -> Vec<u32> {
        let wanted: BTreeSet<usize> = queues.iter().map(|q| q % self.members.len()).collect();
        let mut indices: Vec<u32> = wanted
            .iter()
            .filter_map(|q| self.order.iter().position(|o| o == q))
            .map(|i| i as u32)
            .collect();
        indices.sort_unstable();
        indices
    }
}

/// One queue as status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueView {
    pub queue: usize,
    /// Connections waiting in it (all groups).
    pub depth: u32,
    /// Connections steered to it (round robin only).
    pub steered: Option<u64>,
    pub open: bool,
    /// The workers given it that are still there.
    pub workers: Vec<Pid>,
}

pub struct Queues {
    groups: Vec<Group>,
    assigned: HashMap<Pid, usize>,
    /// What the steering had counted for a worker's queue when it was given it.
    steered_before: HashMap<Pid, Option<u64>>,
    /// Workers whose queue is being drained.
    draining: Vec<Pid>,
    /// Workers whose queue was drained and who got their stop signal: their
    /// queue stays theirs while they live, since a worker may accept (and
    /// drop) connections for a while after its stop signal.
    drained: BTreeSet<Pid>,
    /// Workers on their way out that sheepdog does not drain (leaving on
    /// their own, killed): their queue goes to the next worker started.
    leaving: BTreeSet<Pid>,
    /// Open queues, as last published.
    open: BTreeSet<usize>,
    /// When each queue not open was closed (absent: never open).
    closed_at: HashMap<usize, Moment>,
    /// The steering in use, for status: "round-robin", "random", "shared".
    pub mode: &'static str,
}

impl Queues {
    /// Forms the groups of `listeners` and sets up their steering, `how`
    /// asks for; each decision that costs the user something is said once.
    pub fn new(listeners: &Listeners, how: Spread, inherited: bool) -> Queues {
        let mut groups = Vec::new();
        let mut mode = "shared";
        for members in listeners.groups() {
            let first = &listeners.sockets[members[0]];
            let tcp = first.is_tcp();
            // A group systemd bound can grow only for a process of the same
            // user (root): tried when needed, and said if it fails.
            let growable = tcp && how != Spread::Shared && first.reuse_port();
            let steering = if how == Spread::Shared || !tcp {
                Steering::Shared
            } else if members.len() == 1 && !growable {
                if inherited {
                    info!(
                        "{}: systemd passed one socket, so all workers share one accept queue and the \
                         kernel's accept race picks who works (keep-alive connections stay with the \
                         winners); for a queue per worker, give the socket unit ReusePort=yes and the \
                         line ListenStream={} once per worker and once more (see docs/configuration.md, Spreading \
                         connections)",
                        first.address, first.address
                    );
                } else {
                    // Bound by a sheepdog before queues (an upgrade in place
                    // from it keeps its socket).
                    info!(
                        "{}: one accept queue shared by all workers, as the sheepdog that bound it made it; \
                         restart sheepdog for a queue per worker (see docs/configuration.md, Spreading connections)",
                        first.address
                    );
                }
                Steering::Shared
            } else {
                match how {
                    Spread::RoundRobin => match RoundRobin::attach(first.borrow()) {
                        Ok(steering) => Steering::RoundRobin(steering),
                        Err(e) => {
                            warn!(
                                "{}: round robin is not available ({e}): spreading new connections \
                                 at random instead (uneven for few connections); round robin needs \
                                 CAP_BPF at start (AmbientCapabilities=CAP_BPF, or run as root)",
                                first.address
                            );
                            Steering::Random(None)
                        }
                    },
                    _ => Steering::Random(None),
                }
            };
            mode = match (&steering, mode) {
                (Steering::RoundRobin(_), _) => "round-robin",
                (Steering::Random(_), "shared") => "random",
                (_, mode) => mode,
            };
            groups.push(Group {
                order: (0..members.len()).collect(),
                members,
                steering,
                growable,
            });
        }
        Queues {
            groups,
            assigned: HashMap::new(),
            steered_before: HashMap::new(),
            draining: Vec::new(),
            drained: BTreeSet::new(),
            leaving: BTreeSet::new(),
            open: BTreeSet::new(),
            closed_at: HashMap::new(),
            mode,
        }
    }

    /// Whether any group has a queue per worker.
    pub fn steered(&self) -> bool {
        self.groups.iter().any(Group::steered)
    }

    /// The queues of a steered group (1 when none is).
    pub fn width(&self) -> usize {
        self.groups
            .iter()
            .filter(|g| g.steered())
            .map(|g| g.members.len())
            .max()
            .unwrap_or(1)
    }

    /// The fds a worker of `queue` gets, in order (fds 3…).
    pub fn fds(&self, listeners: &Listeners, queue: usize) -> Vec<RawFd> {
        self.groups
            .iter()
            .map(|g| listeners.sockets[g.member(queue)].raw_fd())
            .collect()
    }

    /// The queue for a worker about to start: one no worker has with
    /// connections waiting (a dead worker's); then one whose workers are
    /// all leaving on their own or killed (what reaches it meanwhile would
    /// otherwise wait for the next start); then any no worker has; a new
    /// one when all are taken and the groups can grow; else the one fewest
    /// workers share.
    pub fn pick(&mut self, listeners: &mut Listeners) -> usize {
        if !self.steered() {
            return 0;
        }
        let width = self.width();
        let mut taken = vec![0usize; width];
        for queue in self.assigned.values() {
            if let Some(count) = taken.get_mut(*queue) {
                *count += 1;
            }
        }
        let free: Vec<usize> = (0..width).filter(|q| taken[*q] == 0).collect();
        if let Some(queue) = free.iter().find(|q| self.depth(listeners, **q) > 0) {
            return *queue;
        }
        let abandoned = (0..width).find(|q| {
            taken[*q] > 0
                && self
                    .assigned
                    .iter()
                    .filter(|(_, own)| *own == q)
                    .all(|(pid, _)| self.leaving.contains(pid))
        });
        if let Some(queue) = abandoned.or(free.first().copied()) {
            return queue;
        }
        if self.grow(listeners) {
            return width;
        }
        // Shared, then: not with a worker on its way out (its queue could
        // not be drained while another worker takes from it).
        let leaving: BTreeSet<usize> = self
            .draining
            .iter()
            .chain(&self.drained)
            .filter_map(|p| self.assigned.get(p))
            .copied()
            .collect();
        (0..width)
            .filter(|q| !leaving.contains(q))
            .min_by_key(|q| taken[*q])
            .unwrap_or(0)
    }

    /// One more queue in every steered group, if all can take one.
    fn grow(&mut self, listeners: &mut Listeners) -> bool {
        if !self.groups.iter().filter(|g| g.steered()).all(|g| g.growable) {
            return false;
        }
        if self.width() >= bpf::MAX_QUEUES {
            return false;
        }
        let mut added = Vec::new();
        for (index, group) in self.groups.iter_mut().enumerate().filter(|(_, g)| g.steered()) {
            let like = group.members[0];
            match listeners.grow(like) {
                Ok(member) => added.push((index, member)),
                Err(e) => {
                    warn!(
                        "{}: cannot open another queue ({e}); workers past {} share queues",
                        listeners.sockets[like].address,
                        group.members.len()
                    );
                    group.growable = false;
                    // A group that did not grow leaves the others as they
                    // were: the sockets just bound are dropped, and leave.
                    listeners.shrink(added.iter().map(|(_, m)| *m).collect());
                    return false;
                }
            }
        }
        for (index, member) in added {
            let group = &mut self.groups[index];
            group.order.push(group.members.len());
            group.members.push(member);
        }
        true
    }

    /// `pid` accepts from `queue` from now on.
    pub fn record(&mut self, pid: Pid, queue: usize) {
        self.assigned.insert(pid, queue);
        let before = self.steered_to(queue);
        self.steered_before.insert(pid, before);
    }

    /// Connections steered to `queue` so far, if the steering counts them.
    fn steered_to(&self, queue: usize) -> Option<u64> {
        self.groups
            .iter()
            .filter_map(|g| match &g.steering {
                Steering::RoundRobin(rr) if queue < g.members.len() => Some(rr.steered(queue)),
                _ => None,
            })
            .reduce(|a, b| a + b)
    }

    /// The queue `pid` accepts from, and the new connections steered to it
    /// since it was given it (round robin only).
    pub fn worker(&self, pid: Pid) -> (Option<usize>, Option<u64>) {
        let Some(queue) = self.queue_of(pid).filter(|_| self.steered()) else {
            return (None, None);
        };
        let since = self.steered_before.get(&pid).copied().flatten().unwrap_or(0);
        (Some(queue), self.steered_to(queue).map(|n| n.saturating_sub(since)))
    }

    /// Which queue listener `index` is, when its group has several.
    pub fn queue_number(&self, index: usize) -> Option<usize> {
        self.groups
            .iter()
            .filter(|g| g.steered())
            .find_map(|g| g.members.iter().position(|m| *m == index))
    }

    /// "round-robin over 9 queues", for status.
    pub fn describe(&self) -> String {
        if self.steered() {
            format!("{} over {} queues", self.mode, self.width())
        } else {
            "shared (one queue)".into()
        }
    }

    /// `pid` is gone.
    pub fn forget(&mut self, pid: Pid) {
        self.assigned.remove(&pid);
        self.leaving.remove(&pid);
        self.steered_before.remove(&pid);
        self.draining.retain(|p| *p != pid);
        self.drained.remove(&pid);
    }

    pub fn queue_of(&self, pid: Pid) -> Option<usize> {
        self.assigned.get(&pid).copied()
    }

    /// Steers new connections to the queues of `open` (workers that may
    /// take them); with none, to those of `live` (still starting: they
    /// will), rather than to a queue no worker will take from.
    pub fn publish(&mut self, listeners: &Listeners, open: &[Pid], live: &[Pid], now: Moment) {
        if !self.steered() {
            return;
        }
        let queues =
            |pids: &[Pid]| -> BTreeSet<usize> { pids.iter().filter_map(|p| self.assigned.get(p)).copied().collect() };
        self.leaving = self
            .assigned
            .keys()
            .filter(|pid| !live.contains(pid) && !self.draining.contains(pid) && !self.drained.contains(pid))
            .copied()
            .collect();
        let mut wanted = queues(open);
        if wanted.is_empty() {
            wanted = queues(live);
        }
        self.open_only(listeners, wanted, now);
    }

    /// Steers new connections to `wanted` (queue numbers) alone.
    fn open_only(&mut self, listeners: &Listeners, wanted: BTreeSet<usize>, now: Moment) {
        for closed in self.open.difference(&wanted) {
            self.closed_at.insert(*closed, now);
        }
        for reopened in wanted.difference(&self.open) {
            self.closed_at.remove(reopened);
        }
        let changed = wanted != self.open;
        self.open = wanted;
        for group in &mut self.groups {
            let indices = group.indices(&self.open);
            match &mut group.steering {
                Steering::RoundRobin(steering) if changed => steering.publish(&indices),
                Steering::Random(last) if last.as_ref() != Some(&indices) => {
                    let member = &listeners.sockets[group.members[0]];
                    match bpf::attach_random(member.borrow(), &indices) {
                        Ok(()) => *last = Some(indices),
                        Err(e) => warn!("{}: cannot steer new connections: {e}", member.address),
                    }
                }
                _ => {}
            }
        }
    }

    /// Before any worker runs, and when the last one is gone: new
    /// connections go to the queues the first `workers` workers will be
    /// given (the lowest), not to a spare no worker may take for a while.
    pub fn reserve(&mut self, listeners: &Listeners, workers: usize) {
        if self.steered() {
            let lowest = (0..workers.clamp(1, self.width())).collect();
            self.open_only(listeners, lowest, Moment::now());
        }
    }

    /// Starts draining `pid`'s queue; true when there is nothing to wait
    /// for (no queue of its own, or one other workers still take from).
    pub fn drain(&mut self, pid: Pid) -> bool {
        let Some(queue) = self.assigned.get(&pid) else {
            return true;
        };
        let shared = self
            .assigned
            .iter()
            .any(|(p, q)| q == queue && *p != pid && !self.draining.contains(p) && !self.drained.contains(p));
        if !self.steered() || shared {
            return true;
        }
        self.draining.push(pid);
        false
    }

    /// The draining workers whose queue is closed, settled and empty.
    pub fn drained(&mut self, listeners: &Listeners, now: Moment) -> Vec<Pid> {
        let mut done = Vec::new();
        for pid in &self.draining {
            let Some(queue) = self.assigned.get(pid) else {
                done.push(*pid);
                continue;
            };
            if self.open.contains(queue) {
                continue;
            }
            let settled = self
                .closed_at
                .get(queue)
                .is_none_or(|at| now.saturating_duration_since(*at) >= SETTLE);
            if settled && self.depth(listeners, *queue) == 0 {
                done.push(*pid);
            }
        }
        self.draining.retain(|p| !done.contains(p));
        self.drained.extend(done.iter().copied());
        if !done.is_empty() {
            debug!("drained: {done:?}");
        }
        done
    }

    /// When draining queues should be looked at next.
    pub fn next_check(&self, now: Moment) -> Option<Moment> {
        (!self.draining.is_empty()).then_some(now + DRAIN_POLL)
    }

    /// Connections waiting in `queue`, over every steered group.
    fn depth(&self, listeners: &Listeners, queue: usize) -> u32 {
        self.groups
            .iter()
            .filter(|g| g.steered())
            .filter_map(|g| listeners.sockets[g.member(queue)].depth())
            .sum()
    }

    /// Every queue, for status.
    pub fn view(&self, listeners: &Listeners) -> Vec<QueueView> {
        if !self.steered() {
            return Vec::new();
        }
        (0..self.width())
            .map(|queue| {
                let mut workers: Vec<Pid> = self
                    .assigned
                    .iter()
                    .filter(|(_, q)| **q == queue)
                    .map(|(p, _)| *p)
                    .collect();
                workers.sort_unstable();
                let steered = self.steered_to(queue);
                QueueView {
                    queue,
                    depth: self.depth(listeners, queue),
                    steered,
                    open: self.open.contains(&queue),
                    workers,
                }
            })
            .collect()
    }

    /// A listener that was shut down and listens again left its group and
    /// joined it at the end, the last one taking its place: the order the
    /// steering counts in changes the same way.
    pub fn rejoined(&mut self, listener: usize) {
        for group in &mut self.groups {
            let Some(queue) = group.members.iter().position(|m| *m == listener) else {
                continue;
            };
            if let Some(at) = group.order.iter().position(|q| *q == queue) {
                let last = group.order.len() - 1;
                group.order.swap(at, last);
                // What was published named the old order: say it again.
                self.open.clear();
                if let Steering::Random(last) = &mut group.steering {
                    *last = None;
                }
                debug!("queue {queue} rejoined its group: it is now last in the kernel's order");
            }
        }
    }

    /// The queues, for the binary that takes over.
    pub fn export(&self) -> SpreadState {
        SpreadState {
            groups: self
                .groups
                .iter()
                .map(|g| {
                    let (map, program) = match &g.steering {
                        Steering::RoundRobin(rr) => (Some(rr.map_fd()), Some(rr.program_fd())),
                        _ => (None, None),
                    };
                    GroupState {
                        members: g.members.clone(),
                        order: g.order.clone(),
                        steering: match g.steering {
                            Steering::RoundRobin(_) => "round-robin",
                            Steering::Random(_) => "random",
                            Steering::Shared => "shared",
                        }
                        .into(),
                        growable: g.growable,
                        map: map.map(FdRecord::of_raw),
                        program: program.map(FdRecord::of_raw),
                        layout: bpf::LAYOUT,
                    }
                })
                .collect(),
            assigned: self.assigned.iter().map(|(p, q)| (*p, *q)).collect(),
            steered_before: self
                .steered_before
                .iter()
                .filter_map(|(p, n)| n.map(|n| (*p, n)))
                .collect(),
        }
    }

    /// The queues `state` describes, over `listeners` as handed over; the
    /// map and program fds were checked and are taken here.
    pub fn adopt(state: SpreadState, listeners: &Listeners) -> Result<Queues, String> {
        let mut groups = Vec::new();
        let mut mode = "shared";
        for g in state.groups {
            if g.members.is_empty() || g.members.iter().any(|m| *m >= listeners.sockets.len()) {
                return Err("a handed-over queue group names no listener".into());
            }
            let steering = match (g.steering.as_str(), g.map, g.program) {
                ("round-robin", Some(map), Some(program)) if g.layout == bpf::LAYOUT => {
                    mode = "round-robin";
                    Steering::RoundRobin(
                        RoundRobin::adopt(map.fd, program.fd).map_err(|e| format!("cannot map the steering: {e}"))?,
                    )
                }
                ("shared", _, _) => Steering::Shared,
                _ => {
                    if mode == "shared" {
                        mode = "random";
                    }
                    Steering::Random(None)
                }
            };
            let order = if g.order.len() == g.members.len() {
                g.order
            } else {
                (0..g.members.len()).collect()
            };
            groups.push(Group {
                members: g.members,
                order,
                steering,
                growable: g.growable,
            });
        }
        Ok(Queues {
            groups,
            assigned: state.assigned.into_iter().collect(),
            steered_before: state.steered_before.into_iter().map(|(p, n)| (p, Some(n))).collect(),
            draining: Vec::new(),
            drained: BTreeSet::new(),
            leaving: BTreeSet::new(),
            open: BTreeSet::new(),
            closed_at: HashMap::new(),
            mode,
        })
    }
}

/// The queues of the flock (`spread::queues`), for the binary that takes over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpreadState {
    pub groups: Vec<GroupState>,
    /// Which queue each worker accepts from.
    pub assigned: Vec<(Pid, usize)>,
    /// What the steering had counted for a worker's queue when it was given it.
    #[serde(default)]
    pub steered_before: Vec<(Pid, u64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    /// Queue `q`'s socket: an index into `OsState::listeners`.
    pub members: Vec<usize>,
    /// The queues in the kernel's group order.
    #[serde(default)]
    pub order: Vec<usize>,
    /// "round-robin", "random" or "shared".
    pub steering: String,
    pub growable: bool,
    /// The round robin's map and program.
    pub map: Option<FdRecord>,
    pub program: Option<FdRecord>,
    /// The map's layout version.
    pub layout: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systemd::sockets;
    use std::net::TcpStream;

    fn flock_of(queues: usize) -> (Listeners, Queues) {
        let listeners = sockets::open(&["127.0.0.1:0".parse().unwrap()], queues).unwrap();
        let steering = Queues::new(&listeners, Spread::RoundRobin, false);
        (listeners, steering)
    }

    fn address(listeners: &Listeners) -> std::net::SocketAddr {
        listeners.sockets[0].address.parse().unwrap()
    }

    #[test]
    fn each_worker_gets_a_free_queue_and_the_group_grows_past_the_pool() {
        let (mut listeners, mut queues) = flock_of(2);
        assert_eq!(queues.mode, "round-robin");
        let first = queues.pick(&mut listeners);
        queues.record(100, first);
        let second = queues.pick(&mut listeners);
        queues.record(101, second);
        assert_ne!(first, second);
        let third = queues.pick(&mut listeners);
        assert_eq!((third, queues.width()), (2, 3), "a third socket joined the group");
        queues.record(102, third);
        // A worker gone leaves its queue to the next one.
        queues.forget(101);
        assert_eq!(queues.pick(&mut listeners), second);
    }

    #[test]
    fn a_queue_with_connections_waiting_goes_first_to_the_next_worker() {
        let (mut listeners, mut queues) = flock_of(3);
        queues.record(100, 0);
        queues.record(101, 1);
        queues.publish(&listeners, &[101], &[100, 101], Moment::now());
        // Connections steered to worker 101's queue, which then dies.
        let waiting: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(address(&listeners)).unwrap())
            .collect();
        queues.forget(101);
        queues.record(102, 2);
        queues.forget(102);
        // Queues 1 and 2 are free; 1 holds the two connections.
        assert_eq!(queues.pick(&mut listeners), 1);
        drop(waiting);
    }

    #[test]
    fn a_drain_ends_once_the_queue_is_closed_settled_and_empty() {
        let (listeners, mut queues) = flock_of(3);
        queues.record(100, 0);
        queues.record(101, 1);
        let t0 = Moment::now();
        queues.publish(&listeners, &[100, 101], &[100, 101], t0);
        let waiting = TcpStream::connect(address(&listeners)).unwrap();
        let other = TcpStream::connect(address(&listeners)).unwrap();
        assert!(!queues.drain(100), "its own queue: something to wait for");
        assert!(queues.drained(&listeners, t0).is_empty(), "still open");
        queues.publish(&listeners, &[101], &[100, 101], t0);
        assert!(
            queues.drained(&listeners, t0 + SETTLE).is_empty(),
            "a connection waits in it"
        );
        // Its worker takes it.
        let own = &listeners.sockets[queues.groups[0].member(0)];
        let accepted = nix::sys::socket::accept(own.raw_fd()).unwrap();
        assert!(
            queues.drained(&listeners, t0 + SETTLE / 2).is_empty(),
            "not settled yet"
        );
        assert_eq!(queues.drained(&listeners, t0 + SETTLE), vec![100]);
        assert_eq!(queues.next_check(t0), None);
        drop((waiting, other, accepted));
    }

    #[test]
    fn a_queue_shared_with_a_worker_that_stays_is_not_waited_for() {
        let (_listeners, mut queues) = flock_of(2);
        queues.record(100, 0);
        queues.record(101, 0);
        assert!(queues.drain(100));
    }

    #[test]
    fn a_queue_that_rejoined_its_group_is_steered_to_at_its_new_place() {
        let (listeners, mut queues) = flock_of(3);
        for (pid, queue) in [(100, 0), (101, 1), (102, 2)] {
            queues.record(pid, queue);
        }
        // Queue 0 is shut down and listens again: it is last in the kernel's
        // order now, queue 2 took its place.
        let socket = &listeners.sockets[queues.groups[0].member(0)];
        nix::sys::socket::shutdown(socket.raw_fd(), nix::sys::socket::Shutdown::Read).unwrap();
        nix::sys::socket::listen(&socket.borrow(), nix::sys::socket::Backlog::new(16).unwrap()).unwrap();
        queues.rejoined(queues.groups[0].member(0));
        queues.publish(&listeners, &[100], &[100], Moment::now());
        let connections: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(address(&listeners)).unwrap())
            .collect();
        let depth = |q: usize| listeners.sockets[queues.groups[0].member(q)].depth().unwrap();
        assert_eq!((depth(0), depth(1), depth(2)), (3, 0, 0));
        drop(connections);
    }
}

#[cfg(test)]
mod leaving {
    use super::*;
    use crate::systemd::sockets;

    #[test]
    fn a_worker_leaving_on_its_own_leaves_its_queue_to_the_next_one_started() {
        let listeners = sockets::open(&["127.0.0.1:0".parse().unwrap()], 3).unwrap();
        let mut listeners = listeners;
        let mut queues = Queues::new(&listeners, Spread::RoundRobin, false);
        queues.record(100, 0);
        queues.record(101, 1);
        // 100 said STOPPING=1: no longer live, and sheepdog does not drain it.
        queues.publish(&listeners, &[101], &[101], Moment::now());
        assert_eq!(
            queues.pick(&mut listeners),
            0,
            "not the free spare: what reaches 0 would wait"
        );
        queues.record(102, 0);
        // One sheepdog drains is not given away: its queue must empty first.
        assert!(!queues.drain(101));
        queues.publish(&listeners, &[102], &[102], Moment::now());
        assert_eq!(queues.pick(&mut listeners), 2);
    }

    #[test]
    fn a_drained_worker_keeps_its_queue_until_it_is_gone() {
        // It got its stop signal and may still accept (and drop) what
        // reaches its queue: the next worker started takes a free one.
        let mut listeners = sockets::open(&["127.0.0.1:0".parse().unwrap()], 3).unwrap();
        let mut queues = Queues::new(&listeners, Spread::RoundRobin, false);
        queues.record(100, 0);
        queues.record(101, 1);
        let t0 = Moment::now();
        queues.publish(&listeners, &[100, 101], &[100, 101], t0);
        assert!(!queues.drain(100));
        queues.publish(&listeners, &[101], &[101], t0);
        assert_eq!(queues.drained(&listeners, t0 + SETTLE), vec![100]);
        queues.publish(&listeners, &[101], &[101], t0 + SETTLE);
        assert_eq!(queues.pick(&mut listeners), 2, "not queue 0: its worker still listens");
        queues.record(102, 2);
        assert_eq!(queues.pick(&mut listeners), 3, "a new queue rather than sharing 0");
        queues.forget(100);
        assert_eq!(queues.pick(&mut listeners), 0, "free once its worker is gone");
    }
}
