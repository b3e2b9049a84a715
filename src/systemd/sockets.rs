//! The listening sockets: inherited from systemd (`LISTEN_FDS`, checked the way
//! `sd_listen_fds` does and then some), or bound by sheepdog itself.
//!
//! sheepdog never changes `O_NONBLOCK` on a listener: the flag lives on the
//! open file description that systemd, sheepdog and every worker share, so
//! whoever sets it sets it for all. Sockets sheepdog binds start blocking, as
//! systemd's do by default (`NonBlocking=false`); event-loop runtimes such as
//! Node switch them to non-blocking themselves.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrStorage, UnixAddr, sockopt,
};

use crate::config::ListenAddr;
use crate::error::Error;

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
pub fn open(addresses: &[ListenAddr]) -> Result<Listeners, Error> {
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
fn inherit() -> Result<Option<Vec<Listener>>, Error> {
    if std::env::var_os("LISTEN_FDS").is_none() {
        return Ok(None);
    }
    let declared = std::env::var("LISTEN_FDS").unwrap_or_default();
    let fds: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names()
        .map_err(|e| {
            Error::config(format!(
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
        // SAFETY: the fd is open (check_listening just read it), systemd
        // handed it to this process, and nothing else in sheepdog owns it:
        // ownership is taken here, once.
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

fn bind(address: &ListenAddr) -> Result<Listener, Error> {
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
    Ok(Listener {
        fd,
        name: None,
        address: format!("unix:{}", path.display()),
        owned_path: Some((path.to_path_buf(), meta.dev(), meta.ino())),
    })
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
        let err = bind(&ListenAddr::Tcp(addr)).unwrap_err().to_string();
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
        let err = bind(&ListenAddr::Unix(path.clone())).unwrap_err().to_string();
        assert!(err.contains("another process is listening on it"), "{err}");
        listener.remove_socket_file();
        assert!(!path.exists());

        std::fs::write(&path, "not a socket").unwrap();
        let err = bind(&ListenAddr::Unix(path.clone())).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
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
}
