//! The shell side of the worker channels: one sd_notify socket per worker in a
//! private directory, or one Node IPC socketpair per worker.
//!
//! A notify datagram is attributed to a worker by the socket it arrives on
//! (only that worker was told its path), then checked against the sender's
//! kernel credentials (SO_PASSCRED): it must be the worker itself or one of
//! its descendants. A sender that already exited (`systemd-notify` exits right
//! after sending) can no longer be traced; it is accepted when its uid is
//! ours, since it used the worker's private socket. Anything else is dropped
//! and logged, at a bounded rate. Nothing a worker sends can do more than that.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use crate::clock::Moment;

use log::{debug, warn};
use nix::errno::Errno;
use nix::sys::socket::{self, sockopt};

use super::channel::{self, LineBuffer, MAX_DATAGRAM, MAX_IPC_LINE, WorkerMessage};
use super::spawn::WorkerExtras;
use crate::config::{Channel, HeartbeatPolicy};
use crate::core::Pid;
use crate::logging::RateLimit;
use serde::{Deserialize, Serialize};

use crate::wire::{Bytes, FdRecord};

/// The most a single worker may make the loop read in one pass, so that one
/// flooding worker cannot starve the others.
const MAX_DATAGRAMS_PER_PASS: usize = 256;
const MAX_IPC_BYTES_PER_PASS: usize = 1024 * 1024;
/// Pings not yet written (the worker is not reading) are not queued past this.
const MAX_OUTBOX: usize = 4096;
/// How many times a worker's notify socket is bound again after its file
/// was removed, at most (each keeps an fd).
const MAX_REBINDS: usize = 4;

pub enum Link {
    Notify {
        /// The socket bound at `path`, then any bound there again after
        /// the file was removed: a sender that connected to an older one
        /// (the `sdnotify` package does, once) still reaches it, one that
        /// sends to the path (`systemd-notify`) reaches the newest.
        sockets: Vec<UnixDatagram>,
        path: PathBuf,
    },
    NodeIpc {
        stream: UnixStream,
        lines: LineBuffer,
        outbox: Vec<u8>,
        open: bool,
    },
}

/// A link made before fork, and the end of it that goes to the child.
pub struct Prepared {
    pub extras: WorkerExtras,
    pub link: Option<Link>,
    /// Kept open until the fork is done, then dropped.
    pub child_end: Option<OwnedFd>,
}

pub struct Links {
    channel: Channel,
    /// The private (0700) directory of the notify sockets.
    dir: Option<PathBuf>,
    channel_fd: i32,
    by_pid: HashMap<Pid, Link>,
    /// Which worker a pid belongs to, for the log.
    slots: HashMap<Pid, usize>,
    sequence: u64,
    drops: DropLog,
    own_uid: u32,
    /// What each Node worker's preload last reported (not handed over:
    /// the next report comes within 2 s).
    stats: HashMap<Pid, channel::NodeStats>,
}

impl Links {
    pub fn new(channel: Channel, channel_fd: i32) -> Result<Links, String> {
        let dir = match channel {
            Channel::Notify => Some(private_dir()?),
            _ => None,
        };
        Ok(Links {
            channel,
            dir,
            channel_fd,
            by_pid: HashMap::new(),
            slots: HashMap::new(),
            sequence: 0,
            drops: DropLog::default(),
            own_uid: nix::unistd::getuid().as_raw(),
            stats: HashMap::new(),
        })
    }

    /// Makes the channel for the next worker of `slot`, with the heartbeat
    /// policy of the generation it starts in.
    pub fn prepare(&mut self, slot: usize, heartbeat: Option<HeartbeatPolicy>) -> Result<Prepared, String> {
        self.sequence += 1;
        match self.channel {
            Channel::None => Ok(Prepared {
                extras: WorkerExtras::default(),
                link: None,
                child_end: None,
            }),
            Channel::Notify => {
                self.ensure_dir()?;
                let dir = self.dir.as_ref().expect("the notify channel has a directory");
                let path = dir.join(format!("w{slot}-{}.sock", self.sequence));
                let socket = notify_socket(&path)?;
                let mut extras = WorkerExtras {
                    env: vec![format!("NOTIFY_SOCKET={}", path.display())],
                    ..Default::default()
                };
                if let Some(heartbeat) = heartbeat {
                    // As with systemd: the worker pings at least every half of it.
                    extras
                        .env
                        .push(format!("WATCHDOG_USEC={}", heartbeat.timeout.as_micros()));
                    extras.watchdog_pid = true;
                }
                Ok(Prepared {
                    extras,
                    link: Some(Link::Notify {
                        sockets: vec![socket],
                        path,
                    }),
                    child_end: None,
                })
            }
            Channel::NodeIpc => {
                let (ours, theirs) = UnixStream::pair().map_err(|e| format!("cannot create the IPC channel: {e}"))?;
                ours.set_nonblocking(true)
                    .map_err(|e| format!("cannot set up the IPC channel: {e}"))?;
                let extras = WorkerExtras {
                    env: vec![
                        format!("NODE_CHANNEL_FD={}", self.channel_fd),
                        "NODE_CHANNEL_SERIALIZATION_MODE=json".to_string(),
                    ],
                    channel_fd: Some(theirs.as_raw_fd()),
                    watchdog_pid: false,
                    ..WorkerExtras::default()
                };
                let link = Link::NodeIpc {
                    stream: ours,
                    lines: LineBuffer::new(MAX_IPC_LINE),
                    outbox: Vec::new(),
                    open: true,
                };
                Ok(Prepared {
                    extras,
                    link: Some(link),
                    child_end: Some(theirs.into()),
                })
            }
        }
    }

    pub fn attach(&mut self, pid: Pid, slot: usize, link: Option<Link>) {
        if let Some(link) = link {
            self.by_pid.insert(pid, link);
            self.slots.insert(pid, slot);
        }
    }

    /// Forgets an exited worker's channel (and removes its socket file).
    pub fn detach(&mut self, pid: Pid) {
        self.slots.remove(&pid);
        self.stats.remove(&pid);
        if let Some(Link::Notify { path, .. }) = self.by_pid.remove(&pid) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Makes the notify directory again if something removed it (a tmp
    /// cleaner, under /tmp): 0700, ours, or refused.
    fn ensure_dir(&mut self) -> Result<(), String> {
        let Some(dir) = &self.dir else { return Ok(()) };
        if dir.is_dir() {
            return Ok(());
        }
        crate::config::private_dir(dir, self.own_uid, 0o077)
            .map_err(|why| format!("cannot make the notify directory again: {why}"))?;
        warn!(
            "the notify directory {} was removed (a tmp cleaner?); made it again",
            dir.display()
        );
        Ok(())
    }

    /// The workers whose notify socket file is gone (removed with its
    /// directory): each gets a new socket bound at the same path, beside
    /// the old one. Returns them, for the shell to watch the new fd too.
    pub fn repair(&mut self) -> Vec<Pid> {
        if self.channel != Channel::Notify || self.ensure_dir().is_err() {
            return Vec::new();
        }
        let mut repaired = Vec::new();
        for (pid, link) in &mut self.by_pid {
            let Link::Notify { sockets, path } = link else { continue };
            if path.exists() || sockets.len() >= MAX_REBINDS {
                continue;
            }
            match notify_socket(path) {
                Ok(fresh) => {
                    warn!("the notify socket {} was removed; bound it again", path.display());
                    sockets.push(fresh);
                    repaired.push(*pid);
                }
                Err(e) => warn!("{e}"),
            }
        }
        repaired
    }

    /// The fds to watch for worker `pid`'s messages.
    pub fn fds(&self, pid: Pid) -> Vec<BorrowedFd<'_>> {
        match self.by_pid.get(&pid) {
            Some(Link::Notify { sockets, .. }) => sockets.iter().map(|s| s.as_fd()).collect(),
            Some(Link::NodeIpc { stream, .. }) => vec![stream.as_fd()],
            None => Vec::new(),
        }
    }

    /// The fd watched last for worker `pid` (the newest notify socket).
    pub fn fd(&self, pid: Pid) -> Option<BorrowedFd<'_>> {
        match self.by_pid.get(&pid)? {
            Link::Notify { sockets, .. } => sockets.last().map(|s| s.as_fd()),
            Link::NodeIpc { stream, .. } => Some(stream.as_fd()),
        }
    }

    /// False once a worker closed its IPC channel: stop watching it.
    pub fn is_open(&self, pid: Pid) -> bool {
        !matches!(self.by_pid.get(&pid), Some(Link::NodeIpc { open: false, .. }))
    }

    /// Reads what worker `pid` sent.
    pub fn read(&mut self, pid: Pid, now: Moment) -> Vec<WorkerMessage> {
        let slot = self.slots.get(&pid).copied().unwrap_or(usize::MAX);
        let own_uid = self.own_uid;
        let Some(link) = self.by_pid.get_mut(&pid) else {
            return Vec::new();
        };
        let mut messages = Vec::new();
        match link {
            Link::Notify { sockets, .. } => {
                for socket in sockets.iter() {
                    for _ in 0..MAX_DATAGRAMS_PER_PASS {
                        match receive_datagram(socket) {
                            Ok(None) => break,
                            Ok(Some(datagram)) => {
                                let verdict = datagram.check_sender(pid, own_uid).and_then(|()| {
                                    datagram
                                        .parse()
                                        .map_err(|e| format!("{e} (from pid {})", datagram.sender))
                                });
                                match verdict {
                                    Ok(said) => {
                                        messages.extend(said.messages);
                                        for why in said.ignored {
                                            self.drops.dropped(now, slot, pid, &why);
                                        }
                                    }
                                    Err(why) => self.drops.dropped(now, slot, pid, &why),
                                }
                            }
                            Err(e) => {
                                warn!("worker {slot} (pid {pid}): cannot read its notify socket: {}", e.desc());
                                break;
                            }
                        }
                    }
                }
            }
            Link::NodeIpc {
                stream, lines, open, ..
            } => {
                let mut buffer = [0u8; 16 * 1024];
                let mut budget = MAX_IPC_BYTES_PER_PASS;
                while budget > 0 {
                    match stream.read(&mut buffer) {
                        Ok(0) => {
                            *open = false;
                            messages.push(WorkerMessage::ChannelClosed);
                            break;
                        }
                        Ok(n) => {
                            budget = budget.saturating_sub(n);
                            for line in lines.push(&buffer[..n]) {
                                if let Ok(l) = &line
                                    && let Some(stats) = channel::parse_node_stats(l)
                                {
                                    self.stats.insert(pid, stats);
                                    messages.push(WorkerMessage::Heartbeat);
                                    continue;
                                }
                                match line.and_then(|l| channel::parse_ipc_line(&l)) {
                                    Ok(Some(message)) => messages.push(message),
                                    Ok(None) => {}
                                    Err(why) => self.drops.dropped(now, slot, pid, &why),
                                }
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            warn!("worker {slot} (pid {pid}): IPC channel error: {e}");
                            *open = false;
                            break;
                        }
                    }
                }
            }
        }
        messages
    }

    /// Sends `message` (a heartbeat request) on a node-ipc worker's channel;
    /// never blocks.
    pub fn ping(&mut self, pid: Pid, message: &str) {
        let Some(Link::NodeIpc {
            stream,
            outbox,
            open: true,
            ..
        }) = self.by_pid.get_mut(&pid)
        else {
            return;
        };
        // One JSON string per line, as Node's JSON serialization reads it.
        let line = format!("{}\n", serde_json::Value::from(message));
        if outbox.len() + line.len() <= MAX_OUTBOX {
            outbox.extend_from_slice(line.as_bytes());
        }
        while !outbox.is_empty() {
            match stream.write(outbox) {
                Ok(n) => {
                    outbox.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!("worker pid {pid}: cannot ping: {e}");
                    break;
                }
            }
        }
    }

    /// Every worker's channel, for the binary that takes over.
    pub fn export(&self) -> LinksState {
        let mut links: Vec<LinkState> = self
            .by_pid
            .iter()
            .map(|(pid, link)| LinkState {
                pid: *pid,
                slot: self.slots.get(pid).copied().unwrap_or(usize::MAX),
                channel: match link {
                    Link::Notify { sockets, path } => LinkChannel::Notify {
                        sockets: sockets.iter().map(|s| FdRecord::of(s.as_fd())).collect(),
                        path: Bytes::path(path),
                    },
                    Link::NodeIpc {
                        stream,
                        lines,
                        outbox,
                        open,
                    } => {
                        let (partial, discarding) = lines.parts();
                        LinkChannel::NodeIpc {
                            stream: FdRecord::of(stream.as_fd()),
                            partial: Bytes::new(partial),
                            discarding,
                            outbox: Bytes::new(outbox),
                            open: *open,
                        }
                    }
                },
            })
            .collect();
        links.sort_by_key(|l| l.pid);
        LinksState {
            channel: self.channel.to_string(),
            dir: self.dir.as_deref().map(Bytes::path),
            channel_fd: self.channel_fd,
            sequence: self.sequence,
            links,
        }
    }

    /// The channels `state` describes, of `channel`, on the fds it names,
    /// which were checked (by the reader of the hand-over) and are taken here.
    pub fn adopt(state: LinksState, channel: Channel) -> Links {
        // SAFETY: handed over for this, checked to be open and the same
        // inodes, and each owned by exactly one link.
        let take = |fd: RawFd| unsafe { OwnedFd::from_raw_fd(fd) };
        let mut by_pid = HashMap::new();
        let mut slots = HashMap::new();
        for link in state.links {
            let adopted = match link.channel {
                LinkChannel::Notify { sockets, path } => Link::Notify {
                    sockets: sockets.iter().map(|s| UnixDatagram::from(take(s.fd))).collect(),
                    path: path.to_path(),
                },
                LinkChannel::NodeIpc {
                    stream,
                    partial,
                    discarding,
                    outbox,
                    open,
                } => Link::NodeIpc {
                    stream: UnixStream::from(take(stream.fd)),
                    lines: LineBuffer::from_parts(MAX_IPC_LINE, partial.into_vec(), discarding),
                    outbox: outbox.into_vec(),
                    open,
                },
            };
            by_pid.insert(link.pid, adopted);
            slots.insert(link.pid, link.slot);
        }
        Links {
            channel,
            dir: state.dir.map(|d| d.to_path()),
            channel_fd: state.channel_fd,
            by_pid,
            slots,
            sequence: state.sequence,
            drops: DropLog::default(),
            own_uid: nix::unistd::getuid().as_raw(),
            stats: HashMap::new(),
        }
    }

    /// What a Node worker's preload last reported.
    pub fn stats(&self, pid: Pid) -> Option<channel::NodeStats> {
        self.stats.get(&pid).copied()
    }

    /// The workers that have a channel.
    pub fn pids(&self) -> Vec<Pid> {
        self.by_pid.keys().copied().collect()
    }

    /// Removes the notify directory (on exit).
    pub fn cleanup(&mut self) {
        self.by_pid.clear();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

struct Datagram {
    bytes: Vec<u8>,
    truncated: bool,
    sender: Pid,
    uid: Option<u32>,
}

impl Datagram {
    fn parse(&self) -> Result<channel::Notified, String> {
        if self.truncated {
            return Err(format!("datagram larger than {MAX_DATAGRAM} bytes"));
        }
        channel::parse_notify(&self.bytes)
    }

    /// The worker itself, a live descendant, or an already-exited sender of
    /// our uid or root's (which could only have learnt the worker's private
    /// socket from the worker).
    fn check_sender(&self, worker: Pid, own_uid: u32) -> Result<(), String> {
        let Some(uid) = self.uid else {
            return Err("datagram without sender credentials".into());
        };
        if self.sender == worker {
            return Ok(());
        }
        if uid != own_uid && uid != 0 {
            return Err(format!(
                "datagram from pid {} of uid {uid}, not the worker's",
                self.sender
            ));
        }
        match is_descendant(self.sender, worker) {
            Some(true) | None => Ok(()),
            Some(false) => Err(format!(
                "datagram from pid {} ({}), which is neither the worker nor its descendant",
                self.sender,
                describe_process(self.sender)
            )),
        }
    }
}

/// A worker's notify socket at `path`: credentials passed, non-blocking.
fn notify_socket(path: &std::path::Path) -> Result<UnixDatagram, String> {
    let socket = UnixDatagram::bind(path).map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
    socket::setsockopt(&socket, sockopt::PassCred, &true).map_err(|e| format!("SO_PASSCRED: {}", e.desc()))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("cannot set up {}: {e}", path.display()))?;
    Ok(socket)
}

/// How many fds one datagram may carry, as systemd accepts (its
/// NOTIFY_FD_MAX): every one of them is received, so that every one is closed.
const MAX_DATAGRAM_FDS: usize = 768;

/// Receives one datagram with its sender's credentials, or None when drained.
/// Every fd that came with it is closed, even when the control data was cut
/// short (MSG_CTRUNC): the kernel installs the fds that fit and drops the rest.
fn receive_datagram(socket: &UnixDatagram) -> Result<Option<Datagram>, Errno> {
    let mut buffer = vec![0u8; MAX_DATAGRAM + 1];
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    let control_len = unsafe {
        libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32)
            + libc::CMSG_SPACE((std::mem::size_of::<RawFd>() * MAX_DATAGRAM_FDS) as u32)
    } as usize;
    // u64 words: the control buffer must be aligned for cmsghdr.
    let mut control = vec![0u64; control_len.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = control.len() * 8;
    let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC;
    // SAFETY: header points at `iov`, `buffer` and `control`, all alive and
    // of the lengths given, for the duration of the call.
    let length = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut header, flags) };
    if length < 0 {
        return match Errno::last() {
            Errno::EAGAIN => Ok(None),
            Errno::EINTR => receive_datagram(socket),
            e => Err(e),
        };
    }
    let (mut sender, mut uid) = (0, None);
    // SAFETY: the kernel set msg_controllen to what it wrote into `control`
    // (a whole number of messages, even when truncated); CMSG_FIRSTHDR and
    // CMSG_NXTHDR stay within it, and each message's data is read within its
    // own cmsg_len.
    unsafe {
        let mut message = libc::CMSG_FIRSTHDR(&header);
        while !message.is_null() {
            let data = libc::CMSG_DATA(message);
            let data_len = (*message).cmsg_len as usize - (data as usize - message as usize);
            match ((*message).cmsg_level, (*message).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) if data_len >= std::mem::size_of::<libc::ucred>() => {
                    let credentials = std::ptr::read_unaligned(data.cast::<libc::ucred>());
                    sender = credentials.pid;
                    uid = Some(credentials.uid);
                }
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    // Closing a received fd is what completes a BARRIER=1; no
                    // other fd is kept either.
                    for i in 0..data_len / std::mem::size_of::<RawFd>() {
                        let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                        libc::close(fd);
                    }
                }
                _ => {}
            }
            message = libc::CMSG_NXTHDR(&header, message);
        }
    }
    let length = length as usize;
    let truncated = header.msg_flags & libc::MSG_TRUNC != 0 || length > MAX_DATAGRAM;
    buffer.truncate(length.min(MAX_DATAGRAM));
    Ok(Some(Datagram {
        bytes: buffer,
        truncated,
        sender,
        uid,
    }))
}

/// Whether `pid` descends from `ancestor` (by parent chain or process group),
/// or None if `pid` is gone and cannot be traced any more.
fn is_descendant(pid: Pid, ancestor: Pid) -> Option<bool> {
    let mut current = pid;
    for depth in 0..64 {
        let Some((ppid, pgrp)) = parent_and_group(current) else {
            return if depth == 0 { None } else { Some(false) };
        };
        if pgrp == ancestor || ppid == ancestor {
            return Some(true);
        }
        // While the kernel reaps a process its stat still reads, with parent
        // 0: it is as good as gone (systemd-notify exits right after sending).
        if ppid == 0 && depth == 0 {
            return None;
        }
        if ppid <= 1 {
            return Some(false);
        }
        current = ppid;
    }
    Some(false)
}

/// "comm, parent P, group G", for the log.
fn describe_process(pid: Pid) -> String {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    match parent_and_group(pid) {
        Some((ppid, pgrp)) => format!("{}, parent {ppid}, group {pgrp}", name.trim()),
        None => "gone".into(),
    }
}

fn parent_and_group(pid: Pid) -> Option<(Pid, Pid)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: read after the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let _state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((ppid, pgrp))
}

/// A private directory for the notify sockets: under systemd's
/// RuntimeDirectory= when there is one, else $XDG_RUNTIME_DIR or /tmp.
fn private_dir() -> Result<PathBuf, String> {
    let base = crate::config::env_dir("RUNTIME_DIRECTORY")
        .or_else(|| crate::config::env_dir("XDG_RUNTIME_DIR"))
        .unwrap_or_else(std::env::temp_dir);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = base.join(format!("sheepdog.{}.{nanos:x}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create the notify directory {}: {e}", dir.display()))?;
    // A unix socket path must fit in sun_path (108 bytes with its NUL).
    if dir.as_os_str().len() > 80 {
        return Err(format!(
            "the notify directory path {} is too long for unix sockets",
            dir.display()
        ));
    }
    Ok(dir)
}

/// Logs dropped messages at most 5 times per 10 s, then counts the rest.
struct DropLog(RateLimit);

impl Default for DropLog {
    fn default() -> DropLog {
        DropLog(RateLimit::new(5, Duration::from_secs(10)))
    }
}

impl DropLog {
    fn dropped(&mut self, now: Moment, slot: usize, pid: Pid, why: &str) {
        if self.0.allow(now) {
            warn!("dropped a message for worker {slot} (pid {pid}): {why}");
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinksState {
    pub channel: String,
    pub dir: Option<Bytes>,
    pub channel_fd: RawFd,
    pub sequence: u64,
    pub links: Vec<LinkState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkState {
    pub pid: Pid,
    pub slot: usize,
    pub channel: LinkChannel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkChannel {
    Notify {
        sockets: Vec<FdRecord>,
        path: Bytes,
    },
    NodeIpc {
        stream: FdRecord,
        /// A line begun and not ended yet, and whether it is being dropped.
        partial: Bytes,
        discarding: bool,
        outbox: Bytes,
        open: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_ancestry_is_traced() {
        let me = std::process::id() as Pid;
        let parent = nix::unistd::getppid().as_raw();
        assert_eq!(is_descendant(me, parent), Some(true));
        assert_eq!(is_descendant(parent, me), Some(false));
        assert_eq!(is_descendant(i32::MAX - 1, me), None);
    }

    #[test]
    fn the_sender_check_follows_the_rules() {
        let me = std::process::id() as Pid;
        let uid = nix::unistd::getuid().as_raw();
        let datagram = |sender, uid| Datagram {
            bytes: b"READY=1".to_vec(),
            truncated: false,
            sender,
            uid,
        };
        assert!(datagram(me, Some(uid)).check_sender(me, uid).is_ok());
        assert!(datagram(me, None).check_sender(me, uid).is_err());
        // A live process that is not a descendant of the worker.
        let parent = nix::unistd::getppid().as_raw();
        assert!(
            datagram(parent, Some(uid))
                .check_sender(me, uid)
                .unwrap_err()
                .contains("neither the worker")
        );
        // Gone: accepted for our uid only.
        assert!(datagram(i32::MAX - 1, Some(uid)).check_sender(me, uid).is_ok());
        assert!(datagram(i32::MAX - 1, Some(12345)).check_sender(me, 54321).is_err());
    }

    #[test]
    fn a_truncated_datagram_is_refused() {
        let d = Datagram {
            bytes: b"READY=1".to_vec(),
            truncated: true,
            sender: 1,
            uid: Some(0),
        };
        assert!(d.parse().unwrap_err().contains("larger than"));
    }
}
