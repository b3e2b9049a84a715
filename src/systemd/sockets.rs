//! The listening sockets: inherited from systemd (`LISTEN_FDS`, checked the way
//! `sd_listen_fds` does and then some), or bound by sheepdog itself.
//!
//! sheepdog never changes `O_NONBLOCK` on a listener: the flag lives on the
//! open file description that systemd, sheepdog and every worker share, so
//! whoever sets it sets it for all. Sockets sheepdog binds start blocking, as
//! systemd's do by default (`NonBlocking=false`); event-loop runtimes such as
//! Node switch them to non-blocking themselves.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrLike, SockaddrStorage, UnixAddr,
    sockopt,
};

use crate::config::ListenAddr;
use crate::core::ListenQueue;
use crate::error::Error;
use serde::{Deserialize, Serialize};

use crate::wire::{Bytes, FdRecord};

#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    /// From LISTEN_FDNAMES when inherited.
    pub name: Option<String>,
    /// What it listens on, for logs.
    pub address: String,
    /// A socket file sheepdog created, removed again on a clean exit if it is
    /// still the same file (device, inode).
    owned_path: Option<(PathBuf, u64, u64)>,
    /// A unix socket (which cannot listen again once shut down).
    unix: bool,
    /// Its local address as getsockname(2) gave it at start.
    local: Option<String>,
    /// The accept queue's limit it had before any worker ran (systemd's
    /// `Backlog=`, or what sheepdog listened with): what it is given back
    /// when a process holding it calls listen(2) with less.
    backlog: Option<u32>,
}

/// A listening TCP socket's accept queue and backlog, from TCP_INFO.
fn tcp_queue(fd: &OwnedFd) -> Option<(u32, u32)> {
    // SAFETY: tcp_info is plain data; zeroed is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the buffer is ours and its length is given; the kernel writes
    // at most that much and says how much in `length`.
    let done = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut length,
        )
    };
    (done == 0 && info.tcpi_state == TCP_LISTEN_STATE).then_some((info.tcpi_unacked, info.tcpi_sacked))
}

/// `TCP_LISTEN` in the kernel's TCP states.
const TCP_LISTEN_STATE: u8 = 10;

/// A listener found shut down, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerFault {
    /// Listening again on the same socket, at the same address.
    Recovered(String),
    /// Not listening, and it cannot be made to: why, for the log.
    Lost(String),
}

impl Listener {
    fn new(fd: OwnedFd, name: Option<String>, address: String, owned_path: Option<(PathBuf, u64, u64)>) -> Listener {
        let local = socket::getsockname::<SockaddrStorage>(fd.as_raw_fd()).ok();
        let unix = local.as_ref().is_some_and(|a| a.family() == Some(AddressFamily::Unix));
        Listener {
            fd,
            name,
            address,
            owned_path,
            unix,
            local: local.map(|a| a.to_string()),
            backlog: None,
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn borrow(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A TCP socket (which can be one of a `SO_REUSEPORT` group).
    pub fn is_tcp(&self) -> bool {
        !self.unix && self.local.is_some()
    }

    /// It was bound with `SO_REUSEPORT`: more sockets may join its group.
    pub fn reuse_port(&self) -> bool {
        socket::getsockopt(&self.fd, sockopt::ReusePort).unwrap_or(false)
    }

    /// Connections waiting in its accept queue (TCP only).
    pub fn depth(&self) -> Option<u32> {
        tcp_queue(&self.fd).map(|(queued, _)| queued)
    }

    /// Whether the socket still takes connections. Any process holding it
    /// (a worker, a child that inherited fd 3) can `shutdown(2)` it, which
    /// closes it for everyone: a TCP listener then stops listening
    /// (SO_ACCEPTCONN 0), a unix one refuses connections while it still
    /// says it listens; poll(2) reports both as read-hung-up.
    fn is_shut_down(&self) -> bool {
        let listening = socket::getsockopt(&self.fd, sockopt::AcceptConn).unwrap_or(true);
        let mut probe = [libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        }];
        // SAFETY: one pollfd, alive for the call, and a zero timeout.
        let ready = unsafe { libc::poll(probe.as_mut_ptr(), 1, 0) };
        let hung_up = ready > 0 && probe[0].revents & (libc::POLLRDHUP | libc::POLLHUP) != 0;
        !listening || hung_up
    }

    /// Checks the socket and, if it was shut down, listens on it again when
    /// the kernel allows it: a TCP socket bound to a given port keeps it and
    /// listens again; a unix socket, once shut down, refuses connections
    /// for good, and a TCP one that had an ephemeral port lost it.
    pub fn check(&self) -> Option<ListenerFault> {
        if !self.is_shut_down() {
            return None;
        }
        let what = format!("the listening socket {}", self.address);
        if self.unix {
            return Some(ListenerFault::Lost(format!(
                "{what} was shut down by a process holding it; a unix socket cannot listen again once shut down \
                 (under systemd: systemctl restart the .socket unit)"
            )));
        }
        let before = self.local.clone();
        let relisten = socket::listen(&self.fd, Backlog::MAXCONN);
        let after = socket::getsockname::<SockaddrStorage>(self.fd.as_raw_fd())
            .ok()
            .map(|a| a.to_string());
        match relisten {
            Ok(()) if after == before && !self.is_shut_down() => Some(ListenerFault::Recovered(format!(
                "{what} was shut down by a process holding it (no connection reached the flock); listening on it again"
            ))),
            Ok(()) => Some(ListenerFault::Lost(format!(
                "{what} was shut down by a process holding it and lost its address (now {}): it cannot be listened on again",
                after.unwrap_or_else(|| "unknown".into())
            ))),
            Err(e) => Some(ListenerFault::Lost(format!(
                "{what} was shut down by a process holding it, and listen(2) on it again failed: {}",
                e.desc()
            ))),
        }
    }

    /// Removes the socket file sheepdog bound, unless someone replaced it.
    pub fn remove_socket_file(&self) {
        if let Some((path, dev, ino)) = &self.owned_path {
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.dev() == *dev && meta.ino() == *ino => {
                    if let Err(e) = std::fs::remove_file(path) {
                        log::warn!("cannot remove {}: {e}", path.display());
                    }
                }
                _ => {}
            }
        }
    }
}

#[derive(Debug)]
pub struct Listeners {
    pub sockets: Vec<Listener>,
    /// True when systemd passed them (LISTEN_FDS).
    pub inherited: bool,
}

impl Listeners {
    /// `LISTEN_FDNAMES` for the workers: passed through when systemd named them.
    pub fn fdnames(&self) -> Option<String> {
        if self.sockets.iter().all(|l| l.name.is_none()) {
            return None;
        }
        let names: Vec<&str> = self
            .sockets
            .iter()
            .map(|l| l.name.as_deref().unwrap_or("unknown"))
            .collect();
        Some(names.join(":"))
    }

    /// The listeners that form one group (TCP sockets of one local address,
    /// in their order here, which is the order they listened in), groups in
    /// the order of their first socket: what a worker gets as fds 3…
    pub fn groups(&self) -> Vec<Vec<usize>> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (index, listener) in self.sockets.iter().enumerate() {
            let same = |g: &Vec<usize>| {
                let first = &self.sockets[g[0]];
                first.is_tcp() && listener.is_tcp() && first.local == listener.local
            };
            match groups.iter_mut().find(|g| same(g)) {
                Some(group) => group.push(index),
                None => groups.push(vec![index]),
            }
        }
        groups
    }

    /// `LISTEN_FDNAMES` for the workers: each group's first name, when
    /// systemd named them.
    pub fn group_fdnames(&self) -> Option<String> {
        if self.sockets.iter().all(|l| l.name.is_none()) {
            return None;
        }
        let names: Vec<&str> = self
            .groups()
            .iter()
            .map(|g| self.sockets[g[0]].name.as_deref().unwrap_or("unknown"))
            .collect();
        Some(names.join(":"))
    }

    /// Binds one more socket of the group of listener `like` (same address,
    /// `SO_REUSEPORT`, same backlog); its index. The kernel lets it join
    /// only if the group's sockets allow it and belong to this user.
    pub fn grow(&mut self, like: usize) -> Result<usize, String> {
        let model = &self.sockets[like];
        let local = socket::getsockname::<SockaddrStorage>(model.fd.as_raw_fd()).map_err(|e| e.desc().to_string())?;
        let family = local.family().ok_or("no address family")?;
        let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
            .map_err(|e| format!("socket: {}", e.desc()))?;
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| format!("SO_REUSEADDR: {}", e.desc()))?;
        socket::setsockopt(&fd, sockopt::ReusePort, &true).map_err(|e| format!("SO_REUSEPORT: {}", e.desc()))?;
        if family == AddressFamily::Inet6 {
            // As the model: an [::] socket that takes IPv4 too, or not.
            let only = socket::getsockopt(&model.fd, sockopt::Ipv6V6Only).unwrap_or(false);
            socket::setsockopt(&fd, sockopt::Ipv6V6Only, &only).map_err(|e| format!("IPV6_V6ONLY: {}", e.desc()))?;
        }
        socket::bind(fd.as_raw_fd(), &local).map_err(|e| format!("bind: {}", e.desc()))?;
        let backlog = model.backlog.unwrap_or(libc::SOMAXCONN as u32);
        let backlog = Backlog::new(backlog.min(i32::MAX as u32) as i32).unwrap_or(Backlog::MAXCONN);
        socket::listen(&fd, backlog).map_err(|e| format!("listen: {}", e.desc()))?;
        let mut listener = Listener::new(fd, model.name.clone(), model.address.clone(), None);
        listener.backlog = model.backlog;
        self.sockets.push(listener);
        Ok(self.sockets.len() - 1)
    }

    /// Closes the sockets `grow` just added (the last ones), undoing it.
    pub fn shrink(&mut self, added: Vec<usize>) {
        for index in added.into_iter().rev() {
            if index + 1 == self.sockets.len() {
                self.sockets.pop();
            }
        }
    }

    /// The sockets' inodes, to tell them from sockets a worker opened itself.
    pub fn inodes(&self) -> Vec<u64> {
        self.sockets
            .iter()
            .filter_map(|l| nix::sys::stat::fstat(&l.fd).ok())
            .map(|stat| stat.st_ino)
            .collect()
    }

    /// Each listener's accept queue: for TCP from TCP_INFO on the fd
    /// (`tcpi_unacked` is the queue on a listening socket, `tcpi_sacked`
    /// its backlog), for unix sockets from sock_diag. A socket the kernel
    /// will not say about is left out.
    pub fn queues(&self) -> Vec<ListenQueue> {
        self.queues_indexed().into_iter().map(|(_, q)| q).collect()
    }

    /// `queues`, each with the index of its listener.
    pub fn queues_indexed(&self) -> Vec<(usize, ListenQueue)> {
        let unix: Vec<u64> = self
            .sockets
            .iter()
            .filter(|l| l.unix)
            .filter_map(|l| nix::sys::stat::fstat(&l.fd).ok())
            .map(|stat| stat.st_ino)
            .collect();
        let unix_queues = if unix.is_empty() {
            Vec::new()
        } else {
            crate::worker::sock_diag::unix_queues(&unix).unwrap_or_else(|e| {
                log::debug!("cannot read the unix sockets' queues (sock_diag): {e}");
                Vec::new()
            })
        };
        self.sockets
            .iter()
            .enumerate()
            .filter_map(|(index, listener)| {
                let (queued, backlog) = if listener.unix {
                    let inode = nix::sys::stat::fstat(&listener.fd).ok()?.st_ino;
                    let (_, queued, backlog) = unix_queues.iter().find(|(i, _, _)| *i == inode)?;
                    (*queued, *backlog)
                } else {
                    tcp_queue(&listener.fd)?
                };
                Some((
                    index,
                    ListenQueue {
                        queue: None,
                        address: listener.address.clone(),
                        queued,
                        backlog,
                    },
                ))
            })
            .collect()
    }

    /// Notes each socket's accept-queue limit as it is now: before any
    /// worker ran, it is systemd's `Backlog=` or sheepdog's own.
    pub fn remember_backlogs(&mut self) {
        let queues = self.queues();
        for listener in &mut self.sockets {
            if listener.backlog.is_none() {
                listener.backlog = queues.iter().find(|q| q.address == listener.address).map(|q| q.backlog);
            }
        }
    }

    /// Gives back its backlog to each socket a process holding it listened
    /// on again with a smaller one (`listen(3, 1)`; Node's `listen({fd: 3})`
    /// does it with 511): address, the backlog found, the one restored.
    pub fn restore_backlogs(&self) -> Vec<(String, u32, u32)> {
        let queues = self.queues();
        let mut restored = Vec::new();
        for listener in &self.sockets {
            let Some(wanted) = listener.backlog else { continue };
            let Some(now) = queues.iter().find(|q| q.address == listener.address).map(|q| q.backlog) else {
                continue;
            };
            if now >= wanted || listener.is_shut_down() {
                continue;
            }
            let backlog = Backlog::new(wanted.min(i32::MAX as u32) as i32).unwrap_or(Backlog::MAXCONN);
            match socket::listen(&listener.fd, backlog) {
                Ok(()) => restored.push((listener.address.clone(), now, wanted)),
                Err(e) => log::debug!("cannot restore the backlog of {}: {}", listener.address, e.desc()),
            }
        }
        restored
    }

    /// The listeners, for the binary that takes over.
    pub fn export(&self) -> Vec<ListenerState> {
        self.sockets
            .iter()
            .map(|l| ListenerState {
                fd: FdRecord::of(l.fd.as_fd()),
                name: l.name.clone(),
                address: l.address.clone(),
                owned_path: l
                    .owned_path
                    .as_ref()
                    .map(|(path, dev, ino)| (Bytes::path(path), *dev, *ino)),
                backlog: l.backlog,
            })
            .collect()
    }

    /// The listeners `state` describes, on the fds it names, which were
    /// checked (by the reader of the hand-over) and are taken here.
    pub fn adopt(state: Vec<ListenerState>, inherited: bool) -> Listeners {
        let sockets = state
            .into_iter()
            .map(|l| {
                // SAFETY: handed over for this, checked to be open and the
                // same inode, and owned by this listener alone.
                let fd = unsafe { OwnedFd::from_raw_fd(l.fd.fd) };
                let owned = l.owned_path.map(|(path, dev, ino)| (path.to_path(), dev, ino));
                let mut listener = Listener::new(fd, l.name, l.address, owned);
                listener.backlog = l.backlog;
                listener
            })
            .collect();
        let mut listeners = Listeners { sockets, inherited };
        // From a build before backlogs were kept: what they are now.
        listeners.remember_backlogs();
        listeners
    }

    /// The addresses, each once, however many queues it has.
    pub fn describe(&self) -> String {
        self.groups()
            .iter()
            .map(|g| self.sockets[g[0]].address.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Takes the sockets systemd passed, or binds `addresses` when there are
/// none: `queues` sockets of one `SO_REUSEPORT` group for each TCP address
/// (one socket, as any unix one, when `queues` is 1).
pub fn open(addresses: &[ListenAddr], queues: usize) -> Result<Listeners, Error> {
    let mut listeners = match inherit()? {
        Some(sockets) => Listeners {
            sockets,
            inherited: true,
        },
        None => {
            let mut sockets = Vec::new();
            for address in addresses {
                match address {
                    ListenAddr::Tcp(_) if queues > 1 => sockets.extend(bind_group(address, queues)?),
                    _ => sockets.push(bind(address, false)?),
                }
            }
            Listeners {
                sockets,
                inherited: false,
            }
        }
    };
    listeners.remember_backlogs();
    Ok(listeners)
}

/// The sockets from `LISTEN_FDS`, if they are meant for this process.
fn inherit() -> Result<Option<Vec<Listener>>, Error> {
    let Some(fds) = passed_fds(std::process::id())? else {
        return Ok(None);
    };
    let mut listeners = Vec::new();
    for (raw, name) in fds {
        check_listening(raw)?;
        // SAFETY: the fd is open (check_listening just read it), systemd
        // handed it to this process, and nothing else in sheepdog owns it:
        // ownership is taken here, once.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let address = local_address(&fd).unwrap_or_else(|| format!("fd {raw}"));
        listeners.push(Listener::new(fd, name, address, None));
    }
    Ok(Some(listeners))
}

/// Whether systemd passed this process sockets (an error in what it passed
/// counts as yes: [`open`] reports it).
pub fn passed_by_systemd() -> bool {
    !matches!(passed_fds(std::process::id()), Ok(None))
}

/// An fd systemd passed, with its name from LISTEN_FDNAMES.
type PassedFd = (RawFd, Option<String>);

/// The first fd systemd passes (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: RawFd = 3;
/// More sockets than a worker can be given (fds 3.. and its channel).
const MAX_PASSED: usize = 64;

/// The fds systemd passed and their names, read as `sd_listen_fds(3)` reads
/// them: only when `LISTEN_PID` is `own_pid` (a wrapper that forked us left
/// them to itself); `LISTEN_FDNAMES` is looked at only then. None when there
/// are none for us; an error for values that cannot be right.
fn passed_fds(own_pid: u32) -> Result<Option<Vec<PassedFd>>, Error> {
    let Ok(count) = std::env::var("LISTEN_FDS") else {
        return Ok(None);
    };
    let Ok(pid) = std::env::var("LISTEN_PID") else {
        log::debug!("LISTEN_FDS={count} without LISTEN_PID: not for this process; binding instead");
        return Ok(None);
    };
    match pid.trim().parse::<u32>() {
        Ok(pid) if pid == own_pid => {}
        Ok(pid) => {
            log::debug!("LISTEN_FDS={count} is for pid {pid}, not this one ({own_pid}); binding instead");
            return Ok(None);
        }
        Err(_) => return Err(Error::config(format!("LISTEN_PID={pid:?} is not a process id"))),
    }
    let count: usize = count
        .trim()
        .parse()
        .map_err(|_| Error::config(format!("LISTEN_FDS={count:?} is not a number of sockets")))?;
    if count == 0 {
        return Ok(None);
    }
    if count > MAX_PASSED {
        return Err(Error::config(format!(
            "LISTEN_FDS={count}: at most {MAX_PASSED} sockets are supported"
        )));
    }
    let names: Vec<Option<String>> = match std::env::var("LISTEN_FDNAMES") {
        Err(_) => vec![None; count],
        Ok(names) => {
            let names: Vec<Option<String>> = names.split(':').map(|n| Some(n.to_string())).collect();
            if names.len() != count {
                return Err(Error::config(format!(
                    "LISTEN_FDNAMES names {} sockets but LISTEN_FDS={count}",
                    names.len()
                )));
            }
            names
        }
    };
    Ok(Some(
        names
            .into_iter()
            .enumerate()
            .map(|(i, name)| (LISTEN_FDS_START + i as RawFd, name))
            .collect(),
    ))
}

/// An inherited fd must be a socket in the listening state. SO_ACCEPTCONN is
/// read rather than calling listen() again (which security modules may deny).
fn check_listening(raw: RawFd) -> Result<(), Error> {
    // Only an open fd may be borrowed: LISTEN_FDS may name any number.
    // SAFETY: fcntl(F_GETFD) on any number is harmless; it fails with EBADF
    // for one that is not open.
    if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return Err(Error::from_errno(format!("fd {raw} from LISTEN_FDS"), Errno::last()));
    }
    // SAFETY: open (checked above), and only borrowed for these checks,
    // while nothing closes it.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    let stat = nix::sys::stat::fstat(fd).map_err(|e| Error::from_errno(format!("fd {raw} from LISTEN_FDS"), e))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(Error::config(format!("fd {raw} from LISTEN_FDS is not a socket")));
    }
    match socket::getsockopt(&fd, sockopt::AcceptConn) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::config(format!(
            "fd {raw} from LISTEN_FDS is a socket but not listening (use ListenStream= with Accept=no)"
        ))),
        Err(e) => Err(Error::config(format!(
            "fd {raw} from LISTEN_FDS: SO_ACCEPTCONN: {}",
            e.desc()
        ))),
    }
}

fn local_address(fd: &OwnedFd) -> Option<String> {
    let addr: SockaddrStorage = socket::getsockname(fd.as_raw_fd()).ok()?;
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(std::net::SocketAddrV4::from(*v4).to_string());
    }
    if let Some(v6) = addr.as_sockaddr_in6() {
        return Some(std::net::SocketAddrV6::from(*v6).to_string());
    }
    if let Some(unix) = addr.as_unix_addr() {
        return Some(match (unix.path(), unix.as_abstract()) {
            (Some(path), _) => format!("unix:{}", path.display()),
            (None, Some(name)) => format!("unix:@{}", String::from_utf8_lossy(name)),
            _ => "unix:(unnamed)".into(),
        });
    }
    None
}

/// `count` sockets of one `SO_REUSEPORT` group on `address`. The address is
/// first bound alone (no `SO_REUSEPORT`): a port another process holds is
/// an error, as it always was, rather than a group silently shared with it
/// (the kernel lets any process of the same user join one).
fn bind_group(address: &ListenAddr, count: usize) -> Result<Vec<Listener>, Error> {
    let probe = bind(address, false)?;
    let Some(local) = probe.local.clone() else {
        return Ok(vec![probe]);
    };
    drop(probe);
    let fixed: ListenAddr = local.parse().map_err(Error::config)?;
    let first = bind(&fixed, true)?;
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(bind(&fixed, true)?);
    }
    Ok(sockets)
}

fn bind(address: &ListenAddr, reuse_port: bool) -> Result<Listener, Error> {
    let fail = |what: &str, e: Errno| Error::from_errno(format!("cannot {what} {address}"), e);
    let listener = match address {
        ListenAddr::Tcp(addr) => {
            let family = if addr.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
                .map_err(|e| fail("create a socket for", e))?;
            // Lets a restarted sheepdog bind while old connections sit in TIME_WAIT.
            socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| fail("set SO_REUSEADDR on", e))?;
            if reuse_port {
                socket::setsockopt(&fd, sockopt::ReusePort, &true).map_err(|e| fail("set SO_REUSEPORT on", e))?;
            }
            let bound = match addr {
                std::net::SocketAddr::V4(v4) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(*v4)),
                std::net::SocketAddr::V6(v6) => {
                    // As systemd's BindIPv6Only=default: [::] accepts IPv4 too.
                    socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(*v6))
                }
            };
            bound.map_err(|e| match e {
                Errno::EADDRINUSE => {
                    let holder = super::holder::who_listens(addr)
                        .unwrap_or_else(|| "a socket that is not listening (one still closing?)".into());
                    Error::from_errno(format!("cannot bind {address}, held by {holder}"), e)
                }
                _ => fail("bind", e),
            })?;
            let address = local_address(&fd).unwrap_or_else(|| addr.to_string());
            Listener::new(fd, None, address, None)
        }
        ListenAddr::Unix(path) => bind_unix(path, &fail)?,
    };
    socket::listen(&listener.fd, Backlog::MAXCONN).map_err(|e| fail("listen on", e))?;
    Ok(listener)
}

/// Binds a unix socket path. A stale socket file (nobody accepting) is
/// replaced; a live one, or a file that is not a socket, is an error.
fn bind_unix(path: &Path, fail: &dyn Fn(&str, Errno) -> Error) -> Result<Listener, Error> {
    let refuse = |why: &str| Error::config(format!("cannot bind unix:{}: {why}", path.display()));
    let io_errno = |e: io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if socket_is_live(path).map_err(|e| fail("probe the socket file of", e))? {
                return Err(refuse("another process is listening on it"));
            }
            log::info!("replacing stale socket file {}", path.display());
            std::fs::remove_file(path).map_err(|e| fail("remove the stale socket file of", io_errno(e)))?;
        }
        Ok(_) => return Err(refuse("the path exists and is not a socket")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("bind", io_errno(e))),
    }
    let fd = socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| fail("create a socket for", e))?;
    let addr = UnixAddr::new(path).map_err(|e| fail("bind", e))?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(|e| fail("bind", e))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| fail("bind", io_errno(e)))?;
    Ok(Listener::new(
        fd,
        None,
        format!("unix:{}", path.display()),
        Some((path.to_path_buf(), meta.dev(), meta.ino())),
    ))
}

/// Whether something accepts on the socket file (a refused connection
/// means a stale file).
fn socket_is_live(path: &Path) -> Result<bool, Errno> {
    let probe = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    match socket::connect(probe.as_raw_fd(), &addr) {
        Ok(()) | Err(Errno::EAGAIN) | Err(Errno::EINPROGRESS) => Ok(true),
        Err(Errno::ECONNREFUSED) => Ok(false),
        Err(e) => Err(e),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerState {
    pub fd: FdRecord,
    pub name: Option<String>,
    pub address: String,
    /// A socket file sheepdog bound: path, device, inode.
    pub owned_path: Option<(Bytes, u64, u64)>,
    /// The backlog it is given back (absent from a build before it).
    #[serde(default)]
    pub backlog: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_tcp_on_an_ephemeral_port_and_reports_it() {
        let listener = bind(&"127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert!(listener.address.starts_with("127.0.0.1:"));
        assert_ne!(listener.address, "127.0.0.1:0");
        check_listening(listener.fd.as_raw_fd()).unwrap();
    }

    #[test]
    fn a_port_in_use_is_an_error_naming_the_address_and_its_holder() {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind(&ListenAddr::Tcp(addr), false).unwrap_err().to_string();
        let holder = format!("held by pid {} (", std::process::id());
        assert!(err.starts_with(&format!("cannot bind {addr}, {holder}")), "{err}");
        assert!(err.ends_with("): Address already in use"), "{err}");
    }

    #[test]
    fn unix_socket_files_stale_are_replaced_live_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");

        // A stale file: bound, then its listener closed.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = bind(&ListenAddr::Unix(path.clone()), false).unwrap();
        let err = bind(&ListenAddr::Unix(path.clone()), false).unwrap_err().to_string();
        assert!(err.contains("another process is listening on it"), "{err}");
        listener.remove_socket_file();
        assert!(!path.exists());

        std::fs::write(&path, "not a socket").unwrap();
        let err = bind(&ListenAddr::Unix(path.clone()), false).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
    }

    #[test]
    fn a_socket_that_is_not_listening_is_named_by_fd() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = check_listening(a.as_raw_fd()).unwrap_err().to_string();
        assert!(
            err.ends_with("is a socket but not listening (use ListenStream= with Accept=no)"),
            "{err}"
        );
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = check_listening(file.as_raw_fd()).unwrap_err().to_string();
        assert_eq!(err, format!("fd {} from LISTEN_FDS is not a socket", file.as_raw_fd()));
    }

    /// The environment is the process's: the tests that set it take turns.
    static ENVIRONMENT: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn with_env<T>(vars: &[(&str, &str)], body: impl FnOnce() -> T) -> T {
        let _turn = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
        let keys = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];
        // SAFETY: the tests that touch these variables hold the lock, and
        // nothing else in the test binary reads them.
        unsafe {
            for key in keys {
                std::env::remove_var(key);
            }
            for (key, value) in vars {
                std::env::set_var(key, value);
            }
        }
        let result = body();
        // SAFETY: as above.
        unsafe {
            for key in keys {
                std::env::remove_var(key);
            }
        }
        result
    }

    #[test]
    fn passed_sockets_are_ours_only_when_listen_pid_names_us() {
        let ours = [
            ("LISTEN_FDS", "2"),
            ("LISTEN_PID", "42"),
            ("LISTEN_FDNAMES", "web:admin"),
        ];
        let fds = with_env(&ours, || passed_fds(42)).unwrap().unwrap();
        assert_eq!(fds, vec![(3, Some("web".into())), (4, Some("admin".into()))]);
        // Another process's, even with names (as systemd always sets them):
        // a wrapper that forked us keeps them; we bind our own.
        assert_eq!(with_env(&ours, || passed_fds(43)).unwrap(), None);
        let no_pid = [("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "x")];
        assert_eq!(with_env(&no_pid, || passed_fds(42)).unwrap(), None);
        let unnamed = [("LISTEN_FDS", "1"), ("LISTEN_PID", "42")];
        assert_eq!(with_env(&unnamed, || passed_fds(42)).unwrap(), Some(vec![(3, None)]));
        let none = [("LISTEN_FDS", "0"), ("LISTEN_PID", "42")];
        assert_eq!(with_env(&none, || passed_fds(42)).unwrap(), None);
        assert_eq!(with_env(&[], || passed_fds(42)).unwrap(), None);
    }

    #[test]
    fn passed_values_that_cannot_be_right_are_refused() {
        let cases: [(&[(&str, &str)], &str); 4] = [
            (
                &[("LISTEN_FDS", "two"), ("LISTEN_PID", "42")],
                "LISTEN_FDS=\"two\" is not a number",
            ),
            (
                &[("LISTEN_FDS", "1"), ("LISTEN_PID", "me")],
                "LISTEN_PID=\"me\" is not a process id",
            ),
            (&[("LISTEN_FDS", "100000"), ("LISTEN_PID", "42")], "at most 64 sockets"),
            (
                &[("LISTEN_FDS", "2"), ("LISTEN_PID", "42"), ("LISTEN_FDNAMES", "web")],
                "LISTEN_FDNAMES names 1 sockets but LISTEN_FDS=2",
            ),
        ];
        for (vars, expected) in cases {
            let error = with_env(vars, || passed_fds(42)).unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
            assert_eq!(error.exit_code(), 78);
        }
    }
}
