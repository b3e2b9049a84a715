//! Keeping a worker's processes together: each worker is a container of
//! processes (itself, what it starts, what escapes it), entered between fork
//! and exec, signalled whole, measured whole, and killed whole once its
//! leader is gone; what escaped and outlived its worker is swept.
//!
//! [`Containment`] is that seam; [`ProcessGroups`] is today's container, a
//! process group per worker with sheepdog as the child subreaper for what
//! leaves the group. A cgroup per worker would be another implementation
//! beside it: nothing else in sheepdog knows how workers are kept together.

use std::collections::HashSet;
use std::time::Duration;

use log::{debug, warn};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid as NixPid;

use super::proc_stats::{self, MemoryMeter};
use crate::clock::Moment;
use crate::config::MemoryMeasure;
use crate::core::Pid;
use crate::logging::RateLimit;

/// How a worker's processes are kept together.
pub trait Containment {
    /// What the forked child runs before exec to enter a container of its
    /// own. It may make async-signal-safe calls only.
    fn enter(&self) -> ChildEntry;
    /// Sends `signal` to every process of `worker`'s container (a wrapper
    /// such as `sh -c` or `npm start` does not swallow it).
    fn signal(&self, worker: Pid, signal: Signal) -> Result<(), Errno>;
    /// Kills what is left in `worker`'s container: its leader exited and is
    /// not reaped yet, so the container cannot have been reused.
    fn kill_all(&mut self, worker: Pid);
    /// The memory of each of `pids`' containers, what escaped them included;
    /// `workers` are every live worker.
    fn memory(
        &mut self,
        workers: &HashSet<Pid>,
        pids: &[Pid],
        how: MemoryMeasure,
        limit: Option<u64>,
    ) -> Vec<(Pid, u64)>;
    /// The last memory measured of `worker`'s container (RSS, PSS).
    fn last_memory(&self, worker: Pid) -> (Option<u64>, Option<u64>);
    /// Kills what escaped a container and outlived its worker, or, with
    /// `all` (sheepdog is exiting), everything of every container; `spare`
    /// is a child of sheepdog's that belongs to no worker.
    fn sweep(&mut self, workers: &HashSet<Pid>, spare: Option<Pid>, all: bool);
    /// `pid` was reaped: nothing of it is kept.
    fn forget(&mut self, pid: Pid);
    /// Processes killed and not reaped yet, for the binary that takes over.
    fn export(&self) -> Vec<Pid>;
}

/// A function the forked child calls before exec: async-signal-safe only.
pub type ChildEntry = unsafe fn() -> bool;

/// A process group per worker.
pub struct ProcessGroups {
    memory: MemoryMeter,
    /// Escaped processes already killed, not reaped yet.
    swept: HashSet<Pid>,
    orphan_lines: RateLimit,
}

impl ProcessGroups {
    pub fn new(swept: Vec<Pid>) -> ProcessGroups {
        ProcessGroups {
            memory: MemoryMeter::new(),
            swept: swept.into_iter().collect(),
            orphan_lines: RateLimit::new(5, Duration::from_secs(10)),
        }
    }
}

/// Its own process group: a `kill(0, …)` in one worker cannot hit the
/// others, and sheepdog can signal a worker's whole group.
///
/// # Safety
///
/// Only between fork and exec; setpgid(2) is async-signal-safe.
unsafe fn own_process_group() -> bool {
    // SAFETY: as above.
    unsafe { libc::setpgid(0, 0) == 0 }
}

impl Containment for ProcessGroups {
    fn enter(&self) -> ChildEntry {
        own_process_group
    }

    fn signal(&self, worker: Pid, signal: Signal) -> Result<(), Errno> {
        // The worker alone, if it left its group.
        match kill(NixPid::from_raw(-worker), signal) {
            Err(Errno::ESRCH) => kill(NixPid::from_raw(worker), signal),
            other => other,
        }
    }

    fn kill_all(&mut self, worker: Pid) {
        match kill(NixPid::from_raw(-worker), Signal::SIGKILL) {
            Ok(()) => log::trace!("swept the process group of pid {worker}"),
            Err(Errno::ESRCH) | Err(Errno::EPERM) => {}
            Err(e) => warn!("cannot sweep the process group of pid {worker}: {}", e.desc()),
        }
    }

    fn memory(
        &mut self,
        workers: &HashSet<Pid>,
        pids: &[Pid],
        how: MemoryMeasure,
        limit: Option<u64>,
    ) -> Vec<(Pid, u64)> {
        self.memory.next_round();
        // Processes that escaped a worker's group count for its memory.
        let mut escaped: std::collections::HashMap<Pid, Vec<Pid>> = std::collections::HashMap::new();
        for (orphan, owner) in proc_stats::orphans(workers) {
            if let Some(owner) = owner {
                escaped.entry(owner).or_default().push(orphan);
            }
        }
        pids.iter()
            .filter_map(|&pid| {
                let theirs = escaped.get(&pid).map_or(&[][..], Vec::as_slice);
                self.memory.measure(pid, theirs, how, limit).map(|bytes| (pid, bytes))
            })
            .collect()
    }

    fn last_memory(&self, worker: Pid) -> (Option<u64>, Option<u64>) {
        self.memory.last(worker)
    }

    fn sweep(&mut self, workers: &HashSet<Pid>, spare: Option<Pid>, all: bool) {
        for (orphan, owner) in proc_stats::orphans(workers) {
            if Some(orphan) == spare || !all && owner.is_some_and(|w| workers.contains(&w)) {
                continue;
            }
            if !self.swept.insert(orphan) {
                continue;
            }
            let name = proc_stats::command_name(orphan);
            let line = match (owner, proc_stats::process_group(orphan)) {
                // Still in its dead worker's group, which was just killed:
                // it is on its way out, as every process of that group is.
                (Some(worker), Some(group)) if group == worker => {
                    debug!("pid {orphan} ({name}), of worker pid {worker}'s process group, outlived it: killing it");
                    None
                }
                (Some(worker), _) => Some(format!(
                    "pid {orphan} ({name}) was started by worker pid {worker}, left its process group and outlived it: killing it"
                )),
                // Its environment could not be read because it was dying
                // (killed with its worker's group between the two reads), or
                // in an exec (a fork of the worker's shell a moment old): a
                // process of a group whose leader is dead, the group sheepdog
                // just killed with its worker, is on its way out too.
                (None, group)
                    if proc_stats::is_zombie(orphan)
                        || group.is_some_and(|g| g != orphan && !workers.contains(&g) && proc_stats::is_zombie(g)) =>
                {
                    debug!("pid {orphan} ({name}) of a dead worker's group outlived it: killing it");
                    None
                }
                (None, _) => Some(format!(
                    "pid {orphan} ({name}) was handed to sheepdog (its parent died; sheepdog is the child subreaper, or \
                     PID 1) and no worker started it (its environment names none): killing it"
                )),
            };
            if let Some(line) = line
                && self.orphan_lines.allow(Moment::now())
            {
                warn!("{line}");
            }
            // Its own group goes with it (a `setsid` daemon leads one).
            let _ = kill(NixPid::from_raw(-orphan), Signal::SIGKILL);
            let _ = kill(NixPid::from_raw(orphan), Signal::SIGKILL);
        }
    }

    fn forget(&mut self, pid: Pid) {
        self.swept.remove(&pid);
        self.memory.forget(pid);
    }

    fn export(&self) -> Vec<Pid> {
        let mut swept: Vec<Pid> = self.swept.iter().copied().collect();
        swept.sort_unstable();
        swept
    }
}
