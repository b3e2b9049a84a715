//! Log lines on stderr. Under journald each line starts with its syslog
//! priority (`<4>` for a warning) and carries no timestamp, since the journal
//! adds its own; on a terminal a line has a time and a level word.
//!
//! Logging never blocks supervision: a reader of stderr that stops reading
//! (a stuck journald, a paused `| less`, a full pipe) must not freeze the
//! loop. Lines go into a bounded buffer written without blocking, flushed
//! again from the loop; when it is full, lines are dropped and counted, and
//! the count is logged once the reader is back. A write that fails for good
//! (EPIPE, EFBIG past a file size limit) drops the line, never the process.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::Moment;

use log::{Level, LevelFilter};

/// How many bytes of log lines wait for a slow reader before lines are dropped.
const MAX_PENDING: usize = 1024 * 1024;
/// How often the loop retries while lines wait.
pub const RETRY: Duration = Duration::from_millis(50);

static OUTLET: Mutex<Option<Outlet>> = Mutex::new(None);

/// How a write to stderr can be made without blocking, and what waits.
struct Outlet {
    sink: Sink,
    pending: VecDeque<u8>,
    /// Lines dropped since the last notice.
    dropped: u64,
}

enum Sink {
    /// A socket (journald's stream): send with MSG_DONTWAIT.
    Socket,
    /// A pipe, FIFO or terminal: a descriptor of our own onto it, opened
    /// through /proc, that alone is O_NONBLOCK (setting the flag on fd 2
    /// would set it for the workers that share it too).
    Private(OwnedFd),
    /// A regular file (or what could not be reopened): written as it is.
    Plain,
}

impl Sink {
    fn for_stderr() -> Sink {
        let Ok(stat) = nix::sys::stat::fstat(std::io::stderr()) else {
            return Sink::Plain;
        };
        match stat.st_mode & libc::S_IFMT {
            libc::S_IFSOCK => Sink::Socket,
            libc::S_IFIFO | libc::S_IFCHR => {
                let path = c"/proc/self/fd/2";
                // SAFETY: a plain open(2) of a NUL-terminated path. O_NOCTTY:
                // a terminal opened so must not become our controlling one.
                let fd = unsafe {
                    libc::open(
                        path.as_ptr(),
                        libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
                    )
                };
                if fd < 0 {
                    Sink::Plain
                } else {
                    // SAFETY: open(2) just returned this fd, owned by nobody else.
                    Sink::Private(unsafe { OwnedFd::from_raw_fd(fd) })
                }
            }
            _ => Sink::Plain,
        }
    }

    /// Writes what it can of `bytes` now: Ok(n), or the error (EAGAIN when
    /// the reader is slow).
    fn write(&self, bytes: &[u8]) -> Result<usize, nix::errno::Errno> {
        let (fd, socket): (RawFd, bool) = match self {
            Sink::Socket => (libc::STDERR_FILENO, true),
            Sink::Private(fd) => (fd.as_raw_fd(), false),
            Sink::Plain => (libc::STDERR_FILENO, false),
        };
        // SAFETY: `bytes` is a live buffer of the length given.
        let n = unsafe {
            if socket {
                libc::send(
                    fd,
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            } else {
                libc::write(fd, bytes.as_ptr().cast(), bytes.len())
            }
        };
        if n < 0 {
            Err(nix::errno::Errno::last())
        } else {
            Ok(n as usize)
        }
    }
}

impl Outlet {
    fn push(&mut self, line: &[u8]) {
        if self.pending.len() + line.len() > MAX_PENDING {
            // A worker's batch holds many lines.
            self.dropped += line.iter().filter(|b| **b == b'\n').count().max(1) as u64;
            return;
        }
        self.pending.extend(line);
        self.flush();
    }

    /// Writes what waits, as far as the reader takes it now.
    fn flush(&mut self) {
        use nix::errno::Errno;
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            match self.sink.write(front) {
                Ok(0) => return,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                // The reader is gone or the file can grow no more: what
                // waits is lost, and counted as lost.
                Err(_) => {
                    self.dropped += self.pending.iter().filter(|b| **b == b'\n').count().max(1) as u64;
                    self.pending.clear();
                    return;
                }
            }
        }
    }
}

/// env_logger's target: every formatted line goes through the outlet.
struct Lines;

impl Write for Lines {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut outlet) = OUTLET.lock()
            && let Some(outlet) = outlet.as_mut()
        {
            outlet.push(line);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Passes on a line that is not sheepdog's own (a worker's output), whole,
/// through the same outlet: never blocking, dropped and counted when full.
pub fn raw(line: &[u8]) {
    if let Ok(mut outlet) = OUTLET.lock()
        && let Some(outlet) = outlet.as_mut()
    {
        outlet.push(line);
        return;
    }
    if cfg!(test) {
        // What the test harness captures, rather than its own output.
        eprint!("{}", String::from_utf8_lossy(line));
    } else {
        // Before logging is set up; a failed write loses the line only.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line);
    }
}

/// Writes the lines that wait, if the reader takes them now; once none
/// wait, logs how many were dropped meanwhile.
pub fn flush() {
    let dropped = {
        let Ok(mut guard) = OUTLET.lock() else { return };
        let Some(outlet) = guard.as_mut() else { return };
        outlet.flush();
        if outlet.pending.is_empty() {
            std::mem::take(&mut outlet.dropped)
        } else {
            0
        }
    };
    if dropped > 0 {
        log::warn!("{dropped} log lines were dropped: stderr was not being read");
    }
}

/// Whether log lines wait for a slow reader (the loop then wakes to retry).
pub fn has_pending() -> bool {
    OUTLET
        .lock()
        .ok()
        .is_some_and(|outlet| outlet.as_ref().is_some_and(|o| !o.pending.is_empty()))
}

/// The bytes that wait for a slow reader and the count of lines dropped, as
/// a copy: for the binary that takes over in place, which writes them first.
pub fn pending() -> (Vec<u8>, u64) {
    OUTLET
        .lock()
        .ok()
        .and_then(|outlet| {
            outlet
                .as_ref()
                .map(|o| (o.pending.iter().copied().collect(), o.dropped))
        })
        .unwrap_or_default()
}

/// Takes over what the binary before this one had not written yet: ahead
/// of anything this one logged, in order.
pub fn resume(bytes: &[u8], dropped: u64) {
    if let Ok(mut guard) = OUTLET.lock()
        && let Some(outlet) = guard.as_mut()
    {
        let ours = std::mem::take(&mut outlet.pending);
        outlet.pending.extend(bytes.iter().take(MAX_PENDING));
        outlet.pending.extend(ours);
        outlet.dropped += dropped;
        outlet.flush();
    }
}

/// Gives a slow reader up to `timeout` to take the last lines (at exit).
pub fn drain(timeout: Duration) {
    let deadline = Moment::now() + timeout;
    flush();
    while has_pending() && Moment::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        flush();
    }
}

pub fn init(level: Option<LevelFilter>, journal: bool) {
    let mut builder = env_logger::Builder::new();
    if let Ok(mut outlet) = OUTLET.lock() {
        *outlet = Some(Outlet {
            sink: Sink::for_stderr(),
            pending: VecDeque::new(),
            dropped: 0,
        });
    }
    builder.target(env_logger::Target::Pipe(Box::new(Lines)));
    builder.write_style(env_logger::WriteStyle::Never);
    // RUST_LOG is honoured unless --log-level or log_level says otherwise.
    builder.filter_level(LevelFilter::Info);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    if let Some(level) = level {
        builder.filter_level(level);
    }
    if journal {
        builder.format(|out, record| writeln!(out, "<{}>{}", priority(record.level()), record.args()));
    } else {
        builder.format(|out, record| {
            let level = match record.level() {
                Level::Error => "error",
                Level::Warn => "warn ",
                Level::Info => "info ",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            writeln!(
                out,
                "{} sheepdog[{}] {level} {}",
                out.timestamp_millis(),
                std::process::id(),
                record.args()
            )
        });
    }
    builder.init();
}

/// syslog(3) priorities as journald reads them from a `<N>` prefix.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// At most `burst` lines per `window`: what someone outside can trigger
/// again and again (a worker, a client, an operator's signals) must not
/// flood the log. The count of what was held back is told when the next
/// window opens.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    burst: u32,
    window: Duration,
    opened: Option<Moment>,
    used: u32,
    suppressed: u32,
}

impl RateLimit {
    pub fn new(burst: u32, window: Duration) -> RateLimit {
        RateLimit {
            burst,
            window,
            opened: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged now.
    pub fn allow(&mut self, now: Moment) -> bool {
        let opened = *self.opened.get_or_insert(now);
        if now.saturating_duration_since(opened) >= self.window {
            if self.suppressed > 0 {
                log::warn!("{} more like it were not logged", self.suppressed);
            }
            self.opened = Some(now);
            self.used = 0;
            self.suppressed = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_and_no_more() {
        let t0 = Moment::now();
        let mut limit = RateLimit::new(3, Duration::from_secs(10));
        let allowed: Vec<bool> = (0..5).map(|_| limit.allow(t0)).collect();
        assert_eq!(allowed, [true, true, true, false, false]);
        assert!(!limit.allow(t0 + Duration::from_millis(9999)));
        assert!(limit.allow(t0 + Duration::from_secs(10)), "a new window");
        assert_eq!(limit.suppressed, 0);
    }
}
