//! The listening sockets: inherited from systemd (`LISTEN_FDS`, checked the way
//! `sd_listen_fds` does and then some), or bound by sheepdog itself.
//!
//! sheepdog never changes `O_NONBLOCK` on a listener: the flag lives on the
//! open file description that systemd, sheepdog and every worker share, so
//! whoever sets it sets it for all. Sockets sheepdog binds start blocking, as
//! systemd's do by default (`NonBlocking=false`); event-loop runtimes such as
//! Node switch them to non-blocking themselves.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrStorage, UnixAddr, sockopt,
};

use crate::config::ListenAddr;

#[derive(Debug)]
pub struct SocketError(pub String);

impl fmt::Display for SocketError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SocketError {}

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
}

impl Listener {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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

    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.sockets.iter().map(|l| l.fd.as_raw_fd()).collect()
    }

    pub fn describe(&self) -> String {
        self.sockets
            .iter()
            .map(|l| l.address.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Takes the sockets systemd passed, or binds `addresses` when there are none.
pub fn open(addresses: &[ListenAddr]) -> Result<Listeners, SocketError> {
    if let Some(sockets) = inherit()? {
        return Ok(Listeners {
            sockets,
            inherited: true,
        });
    }
    let sockets = addresses.iter().map(bind).collect::<Result<Vec<_>, _>>()?;
    Ok(Listeners {
        sockets,
        inherited: false,
    })
}

/// The sockets from `LISTEN_FDS`, if they are meant for this process.
fn inherit() -> Result<Option<Vec<Listener>>, SocketError> {
    if std::env::var_os("LISTEN_FDS").is_none() {
        return Ok(None);
    }
    let declared = std::env::var("LISTEN_FDS").unwrap_or_default();
    let fds: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names()
        .map_err(|e| {
            SocketError(format!(
                "cannot take the sockets systemd passed (LISTEN_FDS={declared}): {e}"
            ))
        })?
        .collect();
    if fds.is_empty() {
        // LISTEN_PID names another process (or LISTEN_FDS=0): not ours, like sd_listen_fds.
        log::debug!("LISTEN_FDS is set but not for this process; binding instead");
        return Ok(None);
    }
    let named = std::env::var_os("LISTEN_FDNAMES").is_some();
    let mut listeners = Vec::new();
    for (raw, name) in fds {
        check_listening(raw)?;
        // Safety: systemd handed this fd to us; we take sole ownership of it once.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let address = local_address(&fd).unwrap_or_else(|| format!("fd {raw}"));
        listeners.push(Listener {
            fd,
            name: named.then_some(name),
            address,
            owned_path: None,
        });
    }
    Ok(Some(listeners))
}

/// An inherited fd must be a socket in the listening state. SO_ACCEPTCONN is
/// read rather than calling listen() again (which security modules may deny).
fn check_listening(raw: RawFd) -> Result<(), SocketError> {
    // Safety: only borrowed for the duration of these checks.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    let stat = nix::sys::stat::fstat(fd).map_err(|e| SocketError(format!("fd {raw} from LISTEN_FDS: {}", e.desc())))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(SocketError(format!("fd {raw} from LISTEN_FDS is not a socket")));
    }
    match socket::getsockopt(&fd, sockopt::AcceptConn) {
        Ok(true) => Ok(()),
        Ok(false) => Err(SocketError(format!(
            "fd {raw} from LISTEN_FDS is a socket but not listening (use ListenStream= with Accept=no)"
        ))),
        Err(e) => Err(SocketError(format!(
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

fn bind(address: &ListenAddr) -> Result<Listener, SocketError> {
    let fail = |what: &str, e: Errno| SocketError(format!("cannot {what} {address}: {}", e.desc()));
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
            let bound = match addr {
                std::net::SocketAddr::V4(v4) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(*v4)),
                std::net::SocketAddr::V6(v6) => {
                    // As systemd's BindIPv6Only=default: [::] accepts IPv4 too.
                    socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(*v6))
                }
            };
            bound.map_err(|e| fail("bind", e))?;
            let address = local_address(&fd).unwrap_or_else(|| addr.to_string());
            Listener {
                fd,
                name: None,
                address,
                owned_path: None,
            }
        }
        ListenAddr::Unix(path) => bind_unix(path).map_err(|e| SocketError(format!("cannot bind {address}: {e}")))?,
    };
    socket::listen(&listener.fd, Backlog::MAXCONN).map_err(|e| fail("listen on", e))?;
    Ok(listener)
}

/// Binds a unix socket path. A stale socket file (nobody accepting) is
/// replaced; a live one, or a file that is not a socket, is an error.
fn bind_unix(path: &Path) -> Result<Listener, String> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if socket_is_live(path)? {
                return Err("another process is listening on it".into());
            }
            log::info!("replacing stale socket file {}", path.display());
            std::fs::remove_file(path).map_err(|e| format!("cannot remove the stale socket file: {e}"))?;
        }
        Ok(_) => return Err("the path exists and is not a socket".into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.to_string()),
    }
    let fd = socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| e.desc().to_string())?;
    let addr = UnixAddr::new(path).map_err(|e| e.desc().to_string())?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(|e| e.desc().to_string())?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    Ok(Listener {
        fd,
        name: None,
        address: format!("unix:{}", path.display()),
        owned_path: Some((path.to_path_buf(), meta.dev(), meta.ino())),
    })
}

fn socket_is_live(path: &Path) -> Result<bool, String> {
    let probe = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| e.desc().to_string())?;
    let addr = UnixAddr::new(path).map_err(|e| e.desc().to_string())?;
    match socket::connect(probe.as_raw_fd(), &addr) {
        Ok(()) | Err(Errno::EAGAIN) | Err(Errno::EINPROGRESS) => Ok(true),
        Err(Errno::ECONNREFUSED) => Ok(false),
        Err(e) => Err(format!("cannot probe the existing socket file: {}", e.desc())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_tcp_on_an_ephemeral_port_and_reports_it() {
        let listener = bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(listener.address.starts_with("127.0.0.1:"));
        assert_ne!(listener.address, "127.0.0.1:0");
        check_listening(listener.fd.as_raw_fd()).unwrap();
    }

    #[test]
    fn a_port_in_use_is_an_error_naming_the_address() {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind(&ListenAddr::Tcp(addr)).unwrap_err().0;
        assert_eq!(err, format!("cannot bind {addr}: Address already in use"));
    }

    #[test]
    fn unix_socket_files_stale_are_replaced_live_are_refused() {
        let dir = std::env::temp_dir().join(format!("sheepdog-sockets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.sock");
        let _ = std::fs::remove_file(&path);

        // A stale file: bound, then its listener closed.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = bind(&ListenAddr::Unix(path.clone())).unwrap();
        let err = bind(&ListenAddr::Unix(path.clone())).unwrap_err().0;
        assert!(err.contains("another process is listening on it"), "{err}");
        listener.remove_socket_file();
        assert!(!path.exists());

        std::fs::write(&path, "not a socket").unwrap();
        let err = bind(&ListenAddr::Unix(path.clone())).unwrap_err().0;
        assert!(err.contains("not a socket"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_socket_that_is_not_listening_is_named_by_fd() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = check_listening(a.as_raw_fd()).unwrap_err().0;
        assert!(
            err.ends_with("is a socket but not listening (use ListenStream= with Accept=no)"),
            "{err}"
        );
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = check_listening(file.as_raw_fd()).unwrap_err().0;
        assert_eq!(err, format!("fd {} from LISTEN_FDS is not a socket", file.as_raw_fd()));
    }
}
