//! Telling an OOM kill from any other SIGKILL: the kernel counts the
//! processes its OOM killer kills, in the memory cgroup sheepdog runs in
//! (cgroup v2 `memory.events`, `oom_kill N`; v1 `memory.oom_control`, the
//! same line) and for the whole machine (`/proc/vmstat`, `oom_kill N`).
//! A worker reaped dead of a SIGKILL while the count rose (within
//! [`CREDIT`] of it) was killed for memory. The cgroup's count is used
//! where it can be read (it counts its own processes' OOM kills, by the
//! machine's OOM killer too); the machine's counts everyone's, so there a
//! `kill -9` within seconds of another process's OOM kill is taken for one.

use std::path::PathBuf;
use std::time::Duration;

use crate::clock::Moment;

use log::warn;

use crate::logging::RateLimit;

/// How long a rise of a count may wait for the death it caused to be reaped.
const CREDIT: Duration = Duration::from_secs(10);

pub struct OomWatch {
    /// This process's memory cgroup's count file, if it can be read.
    cgroup: Option<PathBuf>,
    cgroup_seen: Option<u64>,
    machine_seen: Option<u64>,
    /// Kills counted and not matched to a worker's death yet.
    credits: Vec<Moment>,
    lines: RateLimit,
}

impl OomWatch {
    pub fn new() -> OomWatch {
        let cgroup = own_memory_cgroup();
        OomWatch {
            cgroup_seen: cgroup.as_ref().and_then(|path| read_oom_kills(path)),
            cgroup,
            machine_seen: read_oom_kills(std::path::Path::new("/proc/vmstat")),
            credits: Vec::new(),
            lines: RateLimit::new(5, Duration::from_secs(60)),
        }
    }

    /// Reads the counts; each rise is a kill to match with a death.
    fn look(&mut self, now: Moment) {
        self.credits.retain(|at| now.saturating_duration_since(*at) < CREDIT);
        let cgroup_now = self.cgroup.as_ref().and_then(|path| read_oom_kills(path));
        let machine_now = read_oom_kills(std::path::Path::new("/proc/vmstat"));
        let rise = |now: Option<u64>, seen: Option<u64>| match (now, seen) {
            (Some(now), Some(seen)) => now.saturating_sub(seen),
            _ => 0,
        };
        let in_cgroup = rise(cgroup_now, self.cgroup_seen);
        let on_machine = rise(machine_now, self.machine_seen);
        if in_cgroup > 0 && self.lines.allow(now) {
            warn!(
                "the kernel's OOM killer killed {in_cgroup} process{} of sheepdog's memory cgroup (its memory limit, \
                 e.g. MemoryMax=, was reached)",
                if in_cgroup == 1 { "" } else { "es" }
            );
        }
        self.cgroup_seen = cgroup_now.or(self.cgroup_seen);
        self.machine_seen = machine_now.or(self.machine_seen);
        // The cgroup's count is exact (it counts the kills of its processes
        // by any OOM killer, the machine's too); the machine's, the only one
        // where no cgroup count can be read, counts everyone's.
        let kills = if self.cgroup.is_some() { in_cgroup } else { on_machine }.min(1024);
        self.credits.extend(std::iter::repeat_n(now, kills as usize));
    }

    /// Whether a worker just reaped dead of a SIGKILL was killed by the
    /// OOM killer (a kill counted recently that no other death claimed).
    pub fn claim(&mut self, now: Moment) -> bool {
        self.look(now);
        self.credits.pop().is_some()
    }
}

impl Default for OomWatch {
    fn default() -> OomWatch {
        OomWatch::new()
    }
}

/// The file that counts OOM kills in this process's memory cgroup: v2's
/// `memory.events` (the `0::PATH` line of /proc/self/cgroup), else v1's
/// `memory.oom_control` (the `N:memory:PATH` line).
fn own_memory_cgroup() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut v1 = None;
    let mut v2 = None;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            v2 = Some(PathBuf::from("/sys/fs/cgroup").join(path).join("memory.events"));
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(
                PathBuf::from("/sys/fs/cgroup/memory")
                    .join(path)
                    .join("memory.oom_control"),
            );
        }
    }
    [v2, v1]
        .into_iter()
        .flatten()
        .find(|path| read_oom_kills(path).is_some())
}

/// The `oom_kill N` line of a count file.
fn read_oom_kills(path: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_oom_kills(&text)
}

fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kill_count_is_read_from_each_kind_of_file() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n";
        let vmstat = "nr_free_pages 1\noom_kill 41\nnuma_hit 3\n";
        assert_eq!(parse_oom_kills(v2), Some(2));
        assert_eq!(parse_oom_kills(v1), Some(7));
        assert_eq!(parse_oom_kills(vmstat), Some(41));
        assert_eq!(parse_oom_kills("oom 3\n"), None);
    }

    #[test]
    fn a_rise_is_claimed_once_and_not_for_ever() {
        let mut watch = OomWatch {
            cgroup: None,
            cgroup_seen: None,
            machine_seen: None,
            credits: Vec::new(),
            lines: RateLimit::new(5, Duration::from_secs(60)),
        };
        let t0 = Moment::now();
        watch.credits.push(t0);
        assert!(watch.claim(t0 + Duration::from_secs(1)));
        assert!(!watch.claim(t0 + Duration::from_secs(1)), "claimed already");
        watch.credits.push(t0);
        assert!(
            !watch.claim(t0 + CREDIT + Duration::from_secs(1)),
            "too old to be this death's"
        );
    }
}
