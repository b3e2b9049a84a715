//! Workers' output when sheepdog does not log to the journal (a terminal, a
//! container's stdout for `kubectl logs`, a file): each worker writes its
//! stdout and stderr into a pipe of its own, and sheepdog passes every line
//! on with the worker's slot and pid (`myapp-worker-1[4419]: …`, the shape
//! of journald's short output), keeping the last lines for `sheepdog logs`.
//! Under journald each worker has a journal stream of its own instead.
//!
//! Lines go out through the log outlet: a stalled reader drops lines (and
//! says how many), never blocks the loop. A worker that floods is read at
//! most [`BYTES_PER_WINDOW`] every [`WINDOW`] (640 KiB/s); past that its pipe
//! is left unread until the next window, so a flood (`yes`) waits on its
//! own writes instead of eating sheepdog's CPU.

use std::collections::{HashMap, VecDeque};
use std::io::Read as _;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::clock::Moment;
use crate::core::Pid;
use crate::wire::FdRecord;

/// The lines kept for `sheepdog logs`, across the flock.
pub const KEPT_LINES: usize = 2000;
/// A longer line is cut there (the rest comes as the next line).
const MAX_LINE: usize = 16 * 1024;
/// How much of one worker's output is passed on per window, at most.
pub const BYTES_PER_WINDOW: usize = 64 * 1024;
pub const WINDOW: std::time::Duration = std::time::Duration::from_millis(100);

/// One line a worker wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// Counts every line passed on, from 1: `logs -f` asks for those after one.
    pub seq: u64,
    pub slot: usize,
    pub pid: Pid,
    /// When sheepdog read it, in seconds since the epoch.
    pub time: f64,
    pub line: String,
}

struct Output {
    pipe: std::fs::File,
    slot: usize,
    partial: Vec<u8>,
    /// The window's start and what was read in it.
    window: (Moment, usize),
}

/// What a read of a worker's pipe came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Read all there was; more may come.
    Open,
    /// Its window's share is read: leave the pipe unread until then.
    Throttled(Moment),
    /// Every writer closed it: it is dropped.
    Closed,
}

/// A worker's pipe, as handed over to the next binary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputState {
    pub pid: Pid,
    pub slot: usize,
    pub fd: FdRecord,
}

/// Every worker's output pipe, and the last lines.
pub struct Outputs {
    name: String,
    by_pid: HashMap<Pid, Output>,
    kept: VecDeque<LogLine>,
    seq: u64,
}

impl Outputs {
    pub fn new(name: &str) -> Outputs {
        Outputs {
            name: name.to_string(),
            by_pid: HashMap::new(),
            kept: VecDeque::new(),
            seq: 0,
        }
    }

    /// A pipe for the next worker: the end sheepdog reads (non-blocking) and
    /// the end the child gets as its stdout and stderr.
    pub fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("cannot create an output pipe: {}", e.desc()))?;
        nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .map_err(|e| format!("cannot make an output pipe non-blocking: {}", e.desc()))?;
        // A worker that writes a burst while the loop is busy waits less.
        let _ = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
        Ok((read, write))
    }

    pub fn attach(&mut self, pid: Pid, slot: usize, read: OwnedFd) {
        self.by_pid.insert(
            pid,
            Output {
                pipe: std::fs::File::from(read),
                slot,
                partial: Vec::new(),
                window: (Moment::now(), 0),
            },
        );
    }

    pub fn fd(&self, pid: Pid) -> Option<BorrowedFd<'_>> {
        self.by_pid.get(&pid).map(|o| o.pipe.as_fd())
    }

    /// Reads what the worker wrote (its window's share at most) and passes
    /// each whole line on. Once every writer has closed the pipe (the worker
    /// and all it started are gone) it is dropped, after its last partial line.
    pub fn read(&mut self, pid: Pid, now: Moment) -> Read {
        let Some(output) = self.by_pid.get_mut(&pid) else {
            return Read::Closed;
        };
        if now.saturating_duration_since(output.window.0) >= WINDOW {
            output.window = (now, 0);
        }
        let mut buffer = [0u8; 16 * 1024];
        let mut outcome = Read::Open;
        let mut lines = Vec::new();
        loop {
            let room = BYTES_PER_WINDOW.saturating_sub(output.window.1);
            if room == 0 {
                outcome = Read::Throttled(output.window.0 + WINDOW);
                break;
            }
            let want = room.min(buffer.len());
            match output.pipe.read(&mut buffer[..want]) {
                Ok(0) => {
                    outcome = Read::Closed;
                    break;
                }
                Ok(n) => {
                    output.window.1 += n;
                    output.partial.extend_from_slice(&buffer[..n]);
                    let mut start = 0;
                    while let Some(end) = output.partial[start..].iter().position(|b| *b == b'\n') {
                        lines.push(output.partial[start..start + end].to_vec());
                        start += end + 1;
                    }
                    output.partial.drain(..start);
                    while output.partial.len() >= MAX_LINE {
                        lines.push(output.partial.drain(..MAX_LINE).collect());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    outcome = Read::Closed;
                    break;
                }
            }
        }
        let slot = output.slot;
        if outcome == Read::Closed && !output.partial.is_empty() {
            lines.push(std::mem::take(&mut output.partial));
        }
        self.pass_on(slot, pid, &lines);
        if outcome == Read::Closed {
            self.by_pid.remove(&pid);
        }
        outcome
    }

    /// At the supervisor's exit: what every pipe still holds is passed on
    /// (a worker's last lines, written as it stopped, would otherwise be
    /// lost), up to a bound per pipe rather than the throttle's share.
    pub fn read_rest(&mut self, now: Moment) {
        const WINDOWS_AT_EXIT: usize = 16;
        for pid in self.pids() {
            for _ in 0..WINDOWS_AT_EXIT {
                if let Some(output) = self.by_pid.get_mut(&pid) {
                    output.window = (now, 0);
                }
                if !matches!(self.read(pid, now), Read::Throttled(_)) {
                    break;
                }
            }
        }
    }

    /// Passes a worker's lines on in one write to the outlet, and keeps them.
    fn pass_on(&mut self, slot: usize, pid: Pid, lines: &[Vec<u8>]) {
        if lines.is_empty() {
            return;
        }
        let prefix = format!("{}-worker-{slot}[{pid}]: ", self.name);
        let mut out = Vec::with_capacity(lines.iter().map(|l| l.len() + prefix.len() + 1).sum());
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let keep_from = lines.len().saturating_sub(KEPT_LINES);
        for (index, line) in lines.iter().enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(line);
            out.push(b'\n');
            self.seq += 1;
            if index < keep_from {
                continue;
            }
            if self.kept.len() == KEPT_LINES {
                self.kept.pop_front();
            }
            self.kept.push_back(LogLine {
                seq: self.seq,
                slot,
                pid,
                time,
                line: String::from_utf8_lossy(line).into_owned(),
            });
        }
        crate::logging::raw(&out);
    }

    /// The last `count` lines (of `slot` only, if given) after `after`.
    pub fn recent(&self, count: usize, slot: Option<usize>, after: Option<u64>) -> Vec<LogLine> {
        let mut lines: Vec<LogLine> = self
            .kept
            .iter()
            .rev()
            .filter(|l| slot.is_none_or(|s| l.slot == s) && after.is_none_or(|a| l.seq > a))
            .take(count)
            .cloned()
            .collect();
        lines.reverse();
        lines
    }

    /// The seq of the newest line (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    pub fn export(&self) -> Vec<OutputState> {
        let mut states: Vec<OutputState> = self
            .by_pid
            .iter()
            .map(|(pid, o)| OutputState {
                pid: *pid,
                slot: o.slot,
                fd: FdRecord::of(o.pipe.as_fd()),
            })
            .collect();
        states.sort_by_key(|s| s.pid);
        states
    }

    /// The pipes handed over (checked to be open and the same).
    pub fn adopt(name: &str, states: Vec<OutputState>) -> Outputs {
        let mut outputs = Outputs::new(name);
        for state in states {
            // SAFETY: handed over for this, checked by check_fds, and taken
            // here once.
            let fd = unsafe { OwnedFd::from_raw_fd(state.fd.fd) };
            outputs.attach(state.pid, state.slot, fd);
        }
        outputs
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pids(&self) -> Vec<Pid> {
        self.by_pid.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_flood_is_read_a_windows_share_at_a_time() {
        let mut outputs = Outputs::new("app");
        let (read, write) = Outputs::pipe().unwrap();
        outputs.attach(9, 0, read);
        let mut writer = std::fs::File::from(write);
        for _ in 0..(3 * BYTES_PER_WINDOW / 4) {
            writer.write_all(b"y\n").unwrap();
        }
        // A window after it was attached: a window of its own begins.
        let t0 = Moment::now() + WINDOW;
        assert_eq!(outputs.read(9, t0), Read::Throttled(t0 + WINDOW));
        assert_eq!(outputs.last_seq(), (BYTES_PER_WINDOW / 2) as u64, "a window's share");
        assert_eq!(
            outputs.read(9, t0 + WINDOW / 2),
            Read::Throttled(t0 + WINDOW),
            "not before the next window"
        );
        assert_eq!(outputs.read(9, t0 + WINDOW), Read::Open, "the rest");
        assert_eq!(outputs.last_seq(), (3 * BYTES_PER_WINDOW / 4) as u64);
    }

    #[test]
    fn lines_are_attributed_kept_and_asked_for_by_slot_and_seq() {
        let mut outputs = Outputs::new("app");
        let (read, write) = Outputs::pipe().unwrap();
        outputs.attach(41, 1, read);
        let mut writer = std::fs::File::from(write);
        writer.write_all(b"one\r\ntwo\nthr").unwrap();
        assert_eq!(outputs.read(41, Moment::now()), Read::Open);
        let lines = outputs.recent(10, None, None);
        assert_eq!(
            lines.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
            ["one", "two"]
        );
        assert_eq!((lines[0].slot, lines[0].pid, lines[0].seq), (1, 41, 1));
        drop(writer);
        assert_eq!(outputs.read(41, Moment::now()), Read::Closed);
        assert_eq!(
            outputs.recent(10, None, Some(2))[0].line,
            "thr",
            "the partial line at the end"
        );
        assert!(outputs.recent(10, Some(0), None).is_empty());
        assert_eq!(outputs.recent(1, Some(1), None)[0].line, "thr");
        assert!(outputs.pids().is_empty());
    }

    #[test]
    fn a_line_without_end_is_cut_and_the_kept_lines_are_bounded() {
        let mut outputs = Outputs::new("app");
        let (read, write) = Outputs::pipe().unwrap();
        outputs.attach(7, 0, read);
        let mut writer = std::fs::File::from(write);
        writer.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
        outputs.read(7, Moment::now());
        assert_eq!(outputs.recent(10, None, None)[0].line.len(), MAX_LINE);
        let mut now = Moment::now();
        for i in 0..KEPT_LINES + 5 {
            writeln!(writer, "{i}").unwrap();
            if i % 1000 == 0 {
                now += WINDOW;
                outputs.read(7, now);
            }
        }
        now += WINDOW;
        outputs.read(7, now);
        assert_eq!(outputs.recent(usize::MAX, None, None).len(), KEPT_LINES);
        assert_eq!(outputs.last_seq(), (KEPT_LINES + 6) as u64);
    }

    #[test]
    fn at_exit_what_a_pipe_holds_is_passed_on_whatever_the_throttle() {
        let mut outputs = Outputs::new("app");
        let (read, write) = Outputs::pipe().unwrap();
        outputs.attach(5, 2, read);
        let mut writer = std::fs::File::from(write);
        for _ in 0..BYTES_PER_WINDOW / 2 {
            writer.write_all(b"y\n").unwrap();
        }
        writer.write_all(b"graceful stop done\n").unwrap();
        drop(writer);
        let now = Moment::now();
        assert!(
            matches!(outputs.read(5, now), Read::Throttled(_)),
            "a flood is throttled"
        );
        outputs.read_rest(now);
        assert_eq!(outputs.recent(1, None, None)[0].line, "graceful stop done");
        assert!(outputs.pids().is_empty(), "read to its end");
    }
}
