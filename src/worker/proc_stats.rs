//! Readers of /proc: a worker's process tree and its memory.
//!
//! PSS (from `smaps_rollup`) divides each page among the processes that map
//! it, so the pages a forked tree shares are counted once in total rather
//! than once per process; RSS (from `statm`) is cheaper but counts shared
//! pages in full for each process.

use std::collections::{HashMap, HashSet};

use super::sock_diag::Listening;
use crate::config::MemoryMeasure;
use crate::core::{Inspection, Pid};

/// `pid` and all its descendants (via every thread's `children` list).
pub fn process_tree(pid: Pid) -> Vec<Pid> {
    let mut tree = vec![pid];
    let mut seen: HashSet<Pid> = HashSet::from([pid]);
    let mut next = 0;
    while next < tree.len() {
        let parent = tree[next];
        next += 1;
        for child in children(parent) {
            if seen.insert(child) {
                tree.push(child);
            }
        }
    }
    tree
}

/// sheepdog's children that are not workers: processes of a worker's tree
/// that escaped its process group (`setsid`, a detached child) and whose
/// parent died, re-parented to sheepdog as the child subreaper. Each comes
/// with the worker it was started under, as far as its environment tells:
/// every worker's LISTEN_PID is its own pid, which its descendants inherit.
pub fn orphans(workers: &HashSet<Pid>) -> Vec<(Pid, Option<Pid>)> {
    children(std::process::id() as Pid)
        .into_iter()
        // A zombie is dead already (killed with its worker's group, say):
        // nothing to kill, and its environment can no longer be read.
        .filter(|pid| !workers.contains(pid) && !is_zombie(*pid))
        .map(|pid| (pid, started_under(pid)))
        .collect()
}

/// Dead (a zombie) or gone: also what a process read while it dies looks like.
pub fn is_zombie(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// The direct children of `pid`, from every thread's `children` list.
fn children(pid: Pid) -> Vec<Pid> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            children.extend(list.split_whitespace().filter_map(|c| c.parse::<Pid>().ok()));
        }
    }
    children
}

/// A process's process group, from /proc.
pub fn process_group(pid: Pid) -> Option<Pid> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: read after the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    fields.nth(2)?.parse().ok()
}

/// A process's command name, for the log.
pub fn command_name(pid: Pid) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or_else(|_| "gone".into(), |c| c.trim().to_string())
}

/// The worker a process was started under: LISTEN_PID in the environment
/// it was exec'd with.
fn started_under(pid: Pid) -> Option<Pid> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(b"LISTEN_PID="))
        .and_then(|value| std::str::from_utf8(value).ok()?.parse().ok())
}

/// Room for a whole `stat` or `statm` line (`stat` is ~300 bytes, its
/// command name at most 64).
const SMALL: usize = 1024;

/// A small /proc file in one read(2): open, read, close. What
/// `fs::read_to_string` adds (an fstat for the size, a second read to see
/// the end) doubles the cost of the reads done for every worker at every
/// memory check and scrape; a seq_file gives a record this small whole.
fn read_small<'a>(path: &str, buf: &'a mut [u8; SMALL]) -> Option<&'a str> {
    use std::io::Read;
    let n = std::fs::File::open(path).ok()?.read(buf).ok()?;
    std::str::from_utf8(&buf[..n]).ok()
}

/// The memory of one process in bytes, or None if it is gone (or a zombie).
pub fn process_memory(pid: Pid, measure: MemoryMeasure) -> Option<u64> {
    match measure {
        MemoryMeasure::Pss => {
            let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
            parse_pss_kib(&rollup).map(|kib| kib * 1024)
        }
        MemoryMeasure::Rss => {
            let mut buf = [0u8; SMALL];
            let statm = read_small(&format!("/proc/{pid}/statm"), &mut buf)?;
            let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
            Some(pages * page_size())
        }
    }
}

/// PSS figures are refreshed at least every this many measurements.
const PSS_REFRESH_ROUNDS: u64 = 60;

/// Measures workers' trees every memory interval, cheaply. PSS costs the
/// kernel a walk of every page table (`smaps_rollup`, ~60 µs for a small
/// process, against ~8 µs for `statm`). Since PSS ≤ RSS, a tree whose RSS is
/// within the limit cannot be over it by PSS: RSS is read every round, PSS
/// only when RSS is over the limit; and, to keep the figures shown in STATUS
/// and /metrics current, when RSS moved by more than 1/16 since PSS was last
/// read, or every 60th round (staggered by pid). An idle flock of 256 workers
/// measured every second reads ~4 PSS a second, not ~26 (bench/RESULTS.md).
#[derive(Default)]
pub struct MemoryMeter {
    round: u64,
    /// The last PSS of each worker's tree, and its RSS when that was read.
    pss: HashMap<Pid, (u64, u64)>,
    /// The last RSS of each worker's tree.
    rss: HashMap<Pid, u64>,
}

/// Whether a worker's PSS must be read this round: when its RSS is over the
/// limit (PSS decides), when it was never read (`rss_then` is its RSS when
/// it last was), when RSS moved by more than 1/16 since, or when its refresh
/// comes round (every 60th round, staggered by pid so that reads spread out).
fn pss_due(round: u64, pid: Pid, over_limit: bool, rss_then: Option<u64>, rss_now: u64) -> bool {
    let Some(then) = rss_then else {
        return true;
    };
    over_limit || then.abs_diff(rss_now) > then / 16 || (round + pid as u64).is_multiple_of(PSS_REFRESH_ROUNDS)
}

impl MemoryMeter {
    pub fn new() -> MemoryMeter {
        MemoryMeter::default()
    }

    /// Starts a round of measurements (one `Action::Measure`).
    pub fn next_round(&mut self) {
        self.round += 1;
    }

    /// The memory of `pid`'s process tree, with the trees of the processes
    /// that escaped it (`escaped`), or None if it is gone.
    pub fn measure(&mut self, pid: Pid, escaped: &[Pid], measure: MemoryMeasure, limit: Option<u64>) -> Option<u64> {
        process_memory(pid, MemoryMeasure::Rss)?;
        let mut tree = process_tree(pid);
        for &root in escaped {
            let theirs: Vec<Pid> = process_tree(root).into_iter().filter(|p| !tree.contains(p)).collect();
            tree.extend(theirs);
        }
        let rss = sum(&tree, MemoryMeasure::Rss)?;
        self.rss.insert(pid, rss);
        if measure == MemoryMeasure::Rss {
            return Some(rss);
        }
        let over = limit.is_some_and(|limit| rss > limit);
        match self.pss.get(&pid) {
            Some(&(pss, then)) if !pss_due(self.round, pid, over, Some(then), rss) => Some(pss.min(rss)),
            _ => {
                let pss = sum(&tree, MemoryMeasure::Pss)?;
                self.pss.insert(pid, (pss, rss));
                Some(pss)
            }
        }
    }

    /// Forgets an exited worker.
    pub fn forget(&mut self, pid: Pid) {
        self.pss.remove(&pid);
        self.rss.remove(&pid);
    }

    /// The last RSS and PSS measured of a worker's tree (PSS only where
    /// `memory.measure = "pss"` had it read).
    pub fn last(&self, pid: Pid) -> (Option<u64>, Option<u64>) {
        (self.rss.get(&pid).copied(), self.pss.get(&pid).map(|&(pss, _)| pss))
    }
}

/// The RSS of `pid`'s process tree, read now: for the figures shown when
/// no memory checks run (and so no `MemoryMeter` figure is at hand).
pub fn tree_rss(pid: Pid) -> Option<u64> {
    sum(&process_tree(pid), MemoryMeasure::Rss)
}

/// A process's CPU time (user and system) and start time since boot, in seconds.
fn cpu_times(pid: &str) -> Option<(f64, f64)> {
    let mut buf = [0u8; SMALL];
    let stat = read_small(&format!("/proc/{pid}/stat"), &mut buf)?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15, starttime 22.
    let ticks = |i: usize| fields.get(i - 3)?.parse::<f64>().ok();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some(((ticks(14)? + ticks(15)?) / hz, ticks(22)? / hz))
}

/// Seconds since boot, read once for many `cpu_usage` calls.
pub fn uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A process's CPU time so far (user and system, in seconds) and its CPU use
/// over its life in % of one core (`uptime` from `uptime()`), from one read
/// of its stat.
pub fn cpu_usage(pid: Pid, uptime: Option<f64>) -> (Option<f64>, Option<f64>) {
    let Some((cpu, started)) = cpu_times(&pid.to_string()) else {
        return (None, None);
    };
    let percent = uptime
        .map(|uptime| uptime - started)
        .filter(|age| *age > 0.0)
        .map(|age| 100.0 * cpu / age);
    (Some(cpu), percent)
}

/// What the supervisor itself uses: CPU seconds, resident bytes, open fds.
pub fn own_usage() -> (Option<f64>, Option<u64>, Option<u64>) {
    let cpu = cpu_times("self").map(|(cpu, _)| cpu);
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * page_size());
    // The directory's own fd, open while it is read, is not counted.
    let fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|entries| entries.count().saturating_sub(1) as u64);
    (cpu, rss, fds)
}

fn sum(tree: &[Pid], measure: MemoryMeasure) -> Option<u64> {
    let mut total = None;
    for &member in tree {
        if let Some(bytes) = process_memory(member, measure) {
            *total.get_or_insert(0) += bytes;
        }
    }
    total
}

fn parse_pss_kib(rollup: &str) -> Option<u64> {
    let line = rollup.lines().find(|l| l.starts_with("Pss:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64
}

/// Whether a process is running on a CPU or waiting for one (state `R` in
/// /proc/PID/stat); false when it cannot be read.
pub fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_state(&stat))
        == Some('R')
}

/// The state letter of a /proc/PID/stat line, after the command in
/// parentheses (which may hold spaces and parentheses itself).
fn stat_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pss_is_read_from_smaps_rollup_text() {
        let text = "55d0c0a1e000-7ffd4b1f9000 ---p 00000000 00:00 0  [rollup]\nRss:  10240 kB\nPss:   4321 kB\nPss_Anon: 100 kB\n";
        assert_eq!(parse_pss_kib(text), Some(4321));
        assert_eq!(parse_pss_kib("Rss: 1 kB\n"), None);
    }

    #[test]
    fn our_own_memory_is_measured_both_ways() {
        let me = std::process::id() as Pid;
        let rss = process_memory(me, MemoryMeasure::Rss).unwrap();
        let pss = process_memory(me, MemoryMeasure::Pss).unwrap();
        assert!(rss > 1024 * 1024, "{rss}");
        assert!(pss > 0 && pss <= rss + 1024 * 1024, "pss {pss} rss {rss}");
        assert_eq!(process_memory(i32::MAX, MemoryMeasure::Rss), None);
    }

    #[test]
    fn pss_is_read_when_over_the_limit_unknown_moved_or_due() {
        let (pid, mib) = (7, 1 << 20);
        assert!(pss_due(0, pid, false, None, 16 * mib), "never read");
        assert!(pss_due(1, pid, true, Some(16 * mib), 16 * mib), "RSS over the limit");
        let due: Vec<u64> = (0..150)
            .filter(|r| pss_due(*r, pid, false, Some(16 * mib), 16 * mib))
            .collect();
        assert_eq!(due, vec![53, 113], "every 60th round, staggered by pid");
        assert!(
            pss_due(52, 8, false, Some(16 * mib), 16 * mib),
            "another pid, another round"
        );
        assert!(
            !pss_due(1, pid, false, Some(16 * mib), 16 * mib + mib),
            "RSS moved by 1/16: not yet"
        );
        assert!(
            pss_due(1, pid, false, Some(16 * mib), 16 * mib + mib + 1),
            "grown by more than 1/16"
        );
        assert!(
            pss_due(1, pid, false, Some(16 * mib), 15 * mib - 1),
            "shrunk by more than 1/16"
        );
    }

    #[test]
    fn the_meter_measures_a_live_tree_and_nothing_for_a_gone_one() {
        let me = std::process::id() as Pid;
        let rss = process_memory(me, MemoryMeasure::Rss).unwrap();
        let mut meter = MemoryMeter::new();
        for _ in 0..3 {
            meter.next_round();
            let pss = meter.measure(me, &[], MemoryMeasure::Pss, None).unwrap();
            assert!(pss > 0 && pss <= rss + (4 << 20), "pss {pss} rss {rss}");
        }
        assert!(meter.measure(me, &[], MemoryMeasure::Rss, Some(1)).unwrap() >= rss / 2);
        assert_eq!(meter.measure(i32::MAX, &[], MemoryMeasure::Pss, None), None);
        meter.forget(me);
        assert!(meter.pss.is_empty());
    }

    #[test]
    fn a_process_is_traced_to_its_worker_by_the_listen_pid_it_inherited() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .env("LISTEN_PID", "4242")
            .spawn()
            .unwrap();
        let pid = child.id() as Pid;
        // spawn() may return before the child's exec is visible in /proc.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while started_under(pid).is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(started_under(pid), Some(4242));
        let mut plain = std::process::Command::new("sleep")
            .arg("10")
            .env_remove("LISTEN_PID")
            .spawn()
            .unwrap();
        assert_eq!(started_under(plain.id() as Pid), None);
        // Children of ours that are not workers are orphans, with their worker.
        let workers = HashSet::from([plain.id() as Pid]);
        assert!(orphans(&workers).contains(&(pid, Some(4242))));
        assert!(!orphans(&workers).iter().any(|(p, _)| *p == plain.id() as Pid));
        for c in [&mut child, &mut plain] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    #[test]
    fn the_tree_includes_children_and_grandchildren() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id() as Pid;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let tree = loop {
            let tree = process_tree(pid);
            if tree.len() == 3 || std::time::Instant::now() > deadline {
                break tree;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let _ = std::process::Command::new("pkill")
            .args(["-P", &pid.to_string()])
            .status();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(tree.len(), 3, "{tree:?}");
        assert_eq!(tree[0], pid);
    }
}

/// Of the `listening` sockets (from sock_diag), those `pid` holds that are
/// not `inherited` (the sockets sheepdog passed): a worker that binds a port
/// of its own (`app.listen(3000)`) instead of taking fd 3.
pub fn own_listeners(pid: Pid, listening: &[Listening], inherited: &[u64]) -> Vec<String> {
    match inspect(pid, listening, inherited) {
        Inspection::Astray(own) => own,
        _ => Vec::new(),
    }
}

/// What `pid`'s process tree shows: a passed socket served (`inherited`,
/// by inode), TCP ports of its own listened on instead, or neither.
pub fn inspect(pid: Pid, listening: &[Listening], inherited: &[u64]) -> Inspection {
    let tree = process_tree(pid);
    // A worker that serves the passed socket is not astray, whatever else it
    // listens on (Node's inspector port, an admin port): its own business.
    if tree.iter().any(|&p| serves(p, inherited)) {
        return Inspection::Serves;
    }
    let held: HashSet<u64> = tree.iter().flat_map(|&p| socket_inodes(p)).collect();
    let mut own: Vec<String> = listening
        .iter()
        .filter(|l| held.contains(&l.inode) && !inherited.contains(&l.inode))
        .map(|l| l.address.to_string())
        .collect();
    if own.is_empty() {
        return Inspection::Unknown;
    }
    own.sort();
    own.dedup();
    Inspection::Astray(own)
}

/// The inodes of the sockets `pid` holds.
fn socket_inodes(pid: Pid) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| socket_inode(&target.to_string_lossy()))
        .collect()
}

/// Whether `pid` shows it serves one of the sockets `passed` (by inode):
/// one is in an epoll set of its (what event loops do: Node, asyncio, Go),
/// or one of its threads waits in accept(2) on it (a blocking server).
fn serves(pid: Pid, passed: &[u64]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let mut by_number: HashMap<i64, u64> = HashMap::new();
    let mut epolls = Vec::new();
    for fd in fds.flatten() {
        let Some(number) = fd.file_name().to_str().and_then(|n| n.parse::<i64>().ok()) else {
            continue;
        };
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(inode) = socket_inode(&target) {
            by_number.insert(number, inode);
        } else if target == "anon_inode:[eventpoll]" {
            epolls.push(number);
        }
    }
    let in_epoll = epolls.iter().any(|epoll| {
        std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{epoll}"))
            .is_ok_and(|info| epoll_targets(&info).any(|inode| passed.contains(&inode)))
    });
    in_epoll
        || accepting(pid)
            .iter()
            .any(|fd| by_number.get(fd).is_some_and(|i| passed.contains(i)))
}

/// The inodes an epoll's fdinfo lists (`tfd: 3 events: 19 data: … ino:a6f5`).
fn epoll_targets(fdinfo: &str) -> impl Iterator<Item = u64> + '_ {
    fdinfo
        .lines()
        .filter(|l| l.starts_with("tfd:"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("ino:")))
        .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
}

/// The fds `pid`'s threads wait in accept(2) or accept4(2) on.
fn accepting(pid: Pid) -> Vec<i64> {
    const ACCEPT: &str = "43";
    const ACCEPT4: &str = "288";
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("syscall")).ok())
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let number = fields.next()?;
            let fd = fields.next()?;
            (number == ACCEPT || number == ACCEPT4)
                .then(|| i64::from_str_radix(fd.trim_start_matches("0x"), 16).ok())?
        })
        .collect()
}

/// "socket:[1541]" → 1541.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod listener_tests {
    use super::*;
    use crate::worker::sock_diag::listening_tcp;

    #[test]
    fn a_port_of_our_own_is_found_and_an_inherited_one_is_not() {
        assert_eq!(socket_inode("socket:[1541]"), Some(1541));
        assert_eq!(socket_inode("pipe:[7]"), None);
        let own = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = own.local_addr().unwrap().to_string();
        let me = std::process::id() as Pid;
        let listening = listening_tcp().unwrap();
        assert!(own_listeners(me, &listening, &[]).contains(&address));
        let inode = {
            use std::os::fd::AsRawFd;
            let link = std::fs::read_link(format!("/proc/self/fd/{}", own.as_raw_fd())).unwrap();
            socket_inode(&link.to_string_lossy()).unwrap()
        };
        assert!(
            !own_listeners(me, &listening, &[inode]).contains(&address),
            "passed in: not its own"
        );
        assert!(own_listeners(i32::MAX, &listening, &[]).is_empty());
    }

    #[test]
    fn a_process_running_on_a_cpu_is_told_from_one_that_sleeps() {
        assert_eq!(stat_state("42 (a (b) c) R 1 42 42 0"), Some('R'));
        assert_eq!(stat_state("42 (sleep) S 1"), Some('S'));
        assert_eq!(stat_state("garbage"), None);
        // A thread spinning in this process is running; a child asleep is not.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinning = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let tid = std::fs::read_dir("/proc/thread-self/..")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|tid| is_running(*tid))
            .is_some();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spinning.join().unwrap();
        assert!(tid, "some thread of this process runs: at least the spinning one");
        let mut sleeper = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let pid = sleeper.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while is_running(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!is_running(pid), "sleep(1) sleeps");
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert!(!is_running(pid), "a reaped process is not running");
    }
}
