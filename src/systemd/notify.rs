//! Talking upward to systemd: sd_notify messages, the watchdog interval, and
//! whether stderr is a journal stream. Silent (and free) when sheepdog is not
//! run by systemd.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use crate::core::Upward;
use crate::logging::RateLimit;

/// Sends sd_notify datagrams to `$NOTIFY_SOCKET` without ever blocking, so a
/// stalled receiver cannot stall the supervisor. A unix datagram queue is
/// short (`net.unix.max_dgram_qlen`, 10 by default), so what does not fit
/// waits in an outbox, in order, and is retried. Only the newest STATUS= is
/// kept and one WATCHDOG=1 is enough. READY=1, RELOADING=1 and STOPPING=1
/// change systemd's view of the service and are never dropped; should
/// thousands of them pile up (a receiver gone for good, and an operator
/// reloading in a loop), the oldest reload pairs already superseded by a later
/// READY=1 are merged away, so the outbox stays bounded and its last word stands.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    outbox: VecDeque<Outgoing>,
    /// Superseded state changes merged away, not logged yet.
    merged: u64,
    /// Messages systemd's socket refused (it is gone, or not a socket),
    /// since the last line that said so.
    refused: u64,
    /// A socket that refuses refuses every STATUS= and ping: said once a
    /// minute at most.
    refusals: RateLimit,
}

/// A datagram waiting for systemd, with what it is.
struct Outgoing {
    kind: Kind,
    datagram: String,
}

/// What a datagram says, for merging the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ready,
    Reloading,
    Stopping,
    Watchdog,
    Status,
}

impl Kind {
    fn of(message: &Upward) -> Kind {
        match message {
            Upward::Ready => Kind::Ready,
            Upward::Reloading => Kind::Reloading,
            Upward::Stopping => Kind::Stopping,
            Upward::Watchdog => Kind::Watchdog,
            Upward::Status(_) => Kind::Status,
        }
    }

    /// What a datagram the binary before wrote says (read once, at the
    /// hand-over): by its first assignment.
    fn of_datagram(datagram: &str) -> Kind {
        match datagram.split(['\n', '=']).next() {
            Some("READY") => Kind::Ready,
            Some("RELOADING") => Kind::Reloading,
            Some("STOPPING") => Kind::Stopping,
            Some("WATCHDOG") => Kind::Watchdog,
            _ => Kind::Status,
        }
    }
}

/// State changes waiting beyond this many means the receiver is gone.
const MAX_STATE_CHANGES: usize = 4096;

impl Notifier {
    pub fn from_env() -> Notifier {
        let mut notifier = Notifier {
            target: None,
            outbox: VecDeque::new(),
            merged: 0,
            refused: 0,
            refusals: RateLimit::new(1, std::time::Duration::from_secs(60)),
        };
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return notifier;
        };
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let address = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name),
            None => SocketAddr::from_pathname(&path),
        };
        let socket = UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s));
        match (socket, address) {
            (Ok(socket), Ok(address)) => notifier.target = Some((socket, address)),
            (Err(e), _) | (_, Err(e)) => log::warn!("cannot use NOTIFY_SOCKET {}: {e}", path.to_string_lossy()),
        }
        notifier
    }

    pub fn send(&mut self, message: &Upward) {
        if self.target.is_none() {
            return;
        }
        let kind = Kind::of(message);
        match kind {
            Kind::Status => self.outbox.retain(|m| m.kind != Kind::Status),
            Kind::Watchdog if self.outbox.iter().any(|m| m.kind == Kind::Watchdog) => return,
            _ => {}
        }
        self.outbox.push_back(Outgoing {
            kind,
            datagram: format_message(message),
        });
        self.merge_superseded();
        self.flush();
    }

    /// Keeps the outbox bounded without losing its final state: drops the
    /// oldest READY=1 or RELOADING=1 that a later READY=1 supersedes.
    fn merge_superseded(&mut self) {
        while self.outbox.len() > MAX_STATE_CHANGES {
            let last_ready = self.outbox.iter().rposition(|m| m.kind == Kind::Ready);
            let oldest = self
                .outbox
                .iter()
                .position(|m| matches!(m.kind, Kind::Ready | Kind::Reloading))
                .filter(|i| last_ready.is_some_and(|last| *i < last));
            let Some(index) = oldest else { return };
            self.outbox.remove(index);
            self.merged += 1;
        }
    }

    /// Sends what waits in the outbox, as far as the receiver takes it.
    pub fn flush(&mut self) {
        let Some((socket, address)) = &self.target else { return };
        while let Some(Outgoing { datagram: text, .. }) = self.outbox.front() {
            match socket.send_to_addr(text.as_bytes(), address) {
                Ok(_) if self.refused > 0 => {
                    log::info!(
                        "systemd's notify socket takes messages again ({} were refused)",
                        self.refused
                    );
                    self.refused = 0;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.refused += 1;
                    if self.refusals.allow(crate::clock::Moment::now()) {
                        log::warn!(
                            "cannot notify systemd ({text:?}): {e}; {} message{} refused so far (said once a minute)",
                            self.refused,
                            if self.refused == 1 { "" } else { "s" }
                        );
                    }
                }
            }
            self.outbox.pop_front();
        }
        if self.merged > 0 && self.outbox.len() < MAX_STATE_CHANGES / 2 {
            log::warn!(
                "systemd was not reading its notify socket: {} superseded reload messages were merged",
                self.merged
            );
            self.merged = 0;
        }
    }

    /// What waits for systemd to read, as a copy: for the binary that takes
    /// over in place.
    pub fn pending(&self) -> Vec<String> {
        self.outbox.iter().map(|m| m.datagram.clone()).collect()
    }

    /// Takes over what the binary before this one had not sent yet, ahead
    /// of anything this one says.
    pub fn resume(&mut self, outbox: Vec<String>) {
        if self.target.is_none() {
            return;
        }
        for datagram in outbox.into_iter().rev() {
            self.outbox.push_front(Outgoing {
                kind: Kind::of_datagram(&datagram),
                datagram,
            });
        }
        self.merge_superseded();
    }

    /// Messages wait for the receiver: the loop should retry soon.
    pub fn has_pending(&self) -> bool {
        !self.outbox.is_empty()
    }
}

/// The datagram for one upward message.
pub fn format_message(message: &Upward) -> String {
    match message {
        Upward::Ready => "READY=1".into(),
        // Type=notify-reload needs MONOTONIC_USEC with RELOADING=1, or
        // `systemctl reload` waits for its whole timeout.
        Upward::Reloading => format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            crate::clock::Moment::now().as_nanos() / 1000
        ),
        Upward::Stopping => "STOPPING=1".into(),
        Upward::Watchdog => "WATCHDOG=1".into(),
        // A status is one line: a newline would start a new assignment.
        Upward::Status(status) => format!("STATUS={}", status.replace('\n', " ")),
    }
}

/// systemd's watchdog interval for sheepdog (WATCHDOG_USEC, when WATCHDOG_PID
/// is unset or ours).
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    let (interval, complaint) = read_watchdog(usec.as_deref(), pid.as_deref(), std::process::id());
    if let Some(complaint) = complaint {
        log::warn!("{complaint}");
    }
    interval
}

/// The shortest watchdog interval taken as it is: sheepdog pings at half
/// of it, and a smaller one would keep the loop busy pinging.
const MIN_WATCHDOG: std::time::Duration = std::time::Duration::from_millis(20);
/// The longest: beyond it the value is surely not meant (and a deadline
/// that far off could overflow the clock).
const MAX_WATCHDOG: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

/// `WATCHDOG_USEC` and `WATCHDOG_PID` as sd_watchdog_enabled(3) reads them,
/// and then some: a value that is not a positive number of microseconds,
/// or a `WATCHDOG_PID` that is not a number, is ignored with a warning;
/// one for another pid silently (it was meant for a parent); an interval
/// is clamped to 20ms–1 year, with a warning.
fn read_watchdog(usec: Option<&str>, pid: Option<&str>, own: u32) -> (Option<std::time::Duration>, Option<String>) {
    let Some(usec) = usec else { return (None, None) };
    match pid.map(str::parse::<u32>) {
        Some(Err(_)) => {
            return (
                None,
                Some(format!(
                    "ignoring WATCHDOG_PID={:?}: not a pid",
                    pid.unwrap_or_default()
                )),
            );
        }
        Some(Ok(pid)) if pid != own => return (None, None),
        _ => {}
    }
    let interval = match usec.parse::<u64>() {
        Ok(n) if n > 0 && n < u64::MAX => std::time::Duration::from_micros(n),
        _ => {
            return (
                None,
                Some(format!(
                    "ignoring WATCHDOG_USEC={usec:?}: not a positive number of microseconds"
                )),
            );
        }
    };
    let clamped = interval.clamp(MIN_WATCHDOG, MAX_WATCHDOG);
    let complaint = (clamped != interval).then(|| {
        format!(
            "WATCHDOG_USEC={usec} is outside 20ms to a year; taken as {}",
            crate::units::format_duration(clamped)
        )
    });
    (Some(clamped), complaint)
}

/// True when stderr is the journal stream systemd connected (`JOURNAL_STREAM`
/// names its device and inode), so log lines should carry `<N>` priorities.
pub fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_fd()) {
        Ok(stat) => stat.st_dev == dev && stat.st_ino == ino,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_handed_over_is_read_as_what_it_was() {
        for message in [
            Upward::Ready,
            Upward::Reloading,
            Upward::Stopping,
            Upward::Watchdog,
            Upward::Status("READY=1 is no state here".into()),
        ] {
            assert_eq!(
                Kind::of_datagram(&format_message(&message)),
                Kind::of(&message),
                "{message:?}"
            );
        }
    }

    #[test]
    fn the_watchdog_settings_from_the_environment_are_validated() {
        use std::time::Duration;
        let read = |usec, pid| read_watchdog(usec, pid, 42);
        assert_eq!(read(None, None), (None, None));
        assert_eq!(read(Some("30000000"), None), (Some(Duration::from_secs(30)), None));
        assert_eq!(read(Some("30000000"), Some("42")).0, Some(Duration::from_secs(30)));
        assert_eq!(read(Some("30000000"), Some("43")), (None, None), "another process's");
        assert!(read(Some("30000000"), Some("x")).1.unwrap().contains("not a pid"));
        for bad in ["0", "-5", "abc", "", "18446744073709551615", "1e6"] {
            let (interval, complaint) = read(Some(bad), None);
            assert_eq!(interval, None, "{bad}");
            assert!(complaint.unwrap().contains("not a positive number"), "{bad}");
        }
        let (interval, complaint) = read(Some("1"), None);
        assert_eq!(interval, Some(MIN_WATCHDOG));
        assert!(complaint.unwrap().contains("taken as 20ms"));
        assert_eq!(read(Some("20000"), None), (Some(MIN_WATCHDOG), None));
        let (interval, complaint) = read(Some("18446744073709551614"), None);
        assert_eq!(interval, Some(MAX_WATCHDOG));
        assert!(complaint.is_some());
    }

    /// A notifier and its receiver, in a directory removed when dropped.
    fn pair() -> (UnixDatagram, Notifier, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            target: Some((
                UnixDatagram::unbound()
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .unwrap(),
                SocketAddr::from_pathname(&path).unwrap(),
            )),
            outbox: VecDeque::new(),
            merged: 0,
            refused: 0,
            refusals: RateLimit::new(1, std::time::Duration::from_secs(60)),
        };
        (receiver, notifier, dir)
    }

    fn drain(receiver: &UnixDatagram) -> Vec<String> {
        receiver.set_nonblocking(true).unwrap();
        let mut buffer = [0u8; 256];
        let mut got = Vec::new();
        while let Ok(n) = receiver.recv(&mut buffer) {
            got.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
        got
    }

    /// Reads until the notifier has nothing left to send.
    fn catch_up(receiver: &UnixDatagram, notifier: &mut Notifier) -> Vec<String> {
        let mut got = drain(receiver);
        while notifier.has_pending() {
            notifier.flush();
            got.extend(drain(receiver));
        }
        got
    }

    #[test]
    fn a_stalled_receiver_never_blocks_and_loses_no_state_change() {
        let (receiver, mut notifier, _dir) = pair();
        // Nobody reads: a burst far longer than the queue, without blocking.
        notifier.send(&Upward::Ready);
        for i in 0..1000 {
            notifier.send(&Upward::Status(format!("{i}/1000 ready")));
            notifier.send(&Upward::Watchdog);
            if i % 10 == 0 {
                notifier.send(&Upward::Reloading);
                notifier.send(&Upward::Ready);
            }
        }
        notifier.send(&Upward::Stopping);
        notifier.send(&Upward::Status("stopping · 0 workers left".into()));
        assert!(notifier.has_pending());
        let got = catch_up(&receiver, &mut notifier);
        let count = |what: &str| got.iter().filter(|m| m.starts_with(what)).count();
        assert_eq!(count("READY=1"), 101);
        assert_eq!(count("RELOADING=1"), 100);
        assert_eq!(count("STOPPING=1"), 1);
        assert_eq!(got.first().map(String::as_str), Some("READY=1"));
        let stopping = got.iter().position(|m| m == "STOPPING=1").unwrap();
        assert!(got[..stopping].iter().rev().find(|m| m.starts_with("RE")).unwrap() == "READY=1");
        assert_eq!(got.last().map(String::as_str), Some("STATUS=stopping · 0 workers left"));
    }

    #[test]
    fn a_receiver_that_never_reads_costs_a_bounded_outbox_ending_in_its_last_word() {
        let (receiver, mut notifier, _dir) = pair();
        for _ in 0..3 * MAX_STATE_CHANGES {
            notifier.send(&Upward::Reloading);
            notifier.send(&Upward::Ready);
            notifier.send(&Upward::Status("x".into()));
        }
        notifier.send(&Upward::Stopping);
        assert!(
            notifier.outbox.len() <= MAX_STATE_CHANGES + 1,
            "{}",
            notifier.outbox.len()
        );
        assert!(notifier.merged > 0);
        let got = catch_up(&receiver, &mut notifier);
        let tail: Vec<&str> = got.iter().rev().take(3).rev().map(String::as_str).collect();
        assert_eq!(tail, ["READY=1", "STATUS=x", "STOPPING=1"]);
    }

    #[test]
    fn reloading_carries_the_monotonic_clock() {
        let text = format_message(&Upward::Reloading);
        let usec: u64 = text
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0);
    }

    #[test]
    fn a_status_stays_on_one_line() {
        assert_eq!(format_message(&Upward::Status("a\nREADY=1".into())), "STATUS=a READY=1");
    }
}
