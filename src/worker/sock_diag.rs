//! The kernel's socket diagnostics (netlink `sock_diag`), for the listening
//! TCP sockets of sheepdog's network namespace: only those are sent, however
//! many connections the host holds (where /proc/net/tcp lists them all).
//! For each: its inode, address, accept-queue length and backlog. And the
//! same for unix stream sockets, whose queues nothing else reports.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_LISTEN: u32 = 10;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;

/// A listening TCP socket, as the kernel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    pub inode: u64,
    pub address: SocketAddr,
    /// Connections waiting in the accept queue.
    pub queued: u32,
    /// The queue's limit (the listen() backlog).
    pub backlog: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

/// The netlink header, laid out as `struct nlmsghdr`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Header {
    length: u32,
    kind: u16,
    flags: u16,
    sequence: u32,
    port: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    header: Header,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Message {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// Every listening TCP socket (IPv4 and IPv6) of this network namespace.
pub fn listening_tcp() -> io::Result<Vec<Listening>> {
    let socket = open()?;
    let mut found = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let request = Request {
            header: Header {
                length: std::mem::size_of::<Request>() as u32,
                kind: SOCK_DIAG_BY_FAMILY,
                flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
                sequence: family as u32,
                port: 0,
            },
            family: family as u8,
            protocol: libc::IPPROTO_TCP as u8,
            states: 1 << TCP_LISTEN,
            ..Request::default()
        };
        send(&socket, &request)?;
        receive(&socket, &mut |payload| {
            if payload.len() >= std::mem::size_of::<Message>() {
                // SAFETY: checked to hold a whole message; read unaligned.
                let message: Message = unsafe { std::ptr::read_unaligned(payload.as_ptr().cast()) };
                found.extend(decode(&message));
            }
        })?;
    }
    Ok(found)
}

/// `struct unix_diag_req`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct UnixRequest {
    header: Header,
    family: u8,
    protocol: u8,
    pad: u16,
    states: u32,
    inode: u32,
    show: u32,
    cookie: [u32; 2],
}

/// `struct unix_diag_msg`, followed by attributes.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct UnixMessage {
    family: u8,
    kind: u8,
    state: u8,
    pad: u8,
    inode: u32,
    cookie: [u32; 2],
}

const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_RQLEN: u16 = 4;

/// The accept queue of each listening unix socket of these inodes: for a
/// listener the kernel's `UNIX_DIAG_RQLEN` holds the connections waiting
/// and the backlog, as `ss -x` shows them.
pub fn unix_queues(inodes: &[u64]) -> io::Result<Vec<(u64, u32, u32)>> {
    let socket = open()?;
    let request = UnixRequest {
        header: Header {
            length: std::mem::size_of::<UnixRequest>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            sequence: 1,
            port: 0,
        },
        family: libc::AF_UNIX as u8,
        states: 1 << TCP_LISTEN,
        show: UDIAG_SHOW_RQLEN,
        ..UnixRequest::default()
    };
    send(&socket, &request)?;
    let mut found = Vec::new();
    receive(&socket, &mut |payload| {
        let head = std::mem::size_of::<UnixMessage>();
        if payload.len() < head {
            return;
        }
        // SAFETY: checked to hold a whole message; read unaligned.
        let message: UnixMessage = unsafe { std::ptr::read_unaligned(payload.as_ptr().cast()) };
        if !inodes.contains(&u64::from(message.inode)) {
            return;
        }
        // Attributes: (length u16, type u16, value), each aligned to 4 bytes.
        let mut rest = &payload[head..];
        while rest.len() >= 4 {
            let length = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
            let kind = u16::from_ne_bytes([rest[2], rest[3]]);
            if length < 4 || length > rest.len() {
                return;
            }
            if kind == UNIX_DIAG_RQLEN && length >= 12 {
                let word = |at: usize| u32::from_ne_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]]);
                found.push((u64::from(message.inode), word(4), word(8)));
            }
            rest = &rest[((length + 3) & !3).min(rest.len())..];
        }
    })?;
    Ok(found)
}

/// A netlink socket for socket diagnostics.
fn open() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) returns a new fd or -1; the fd is owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Sends one request (plain data starting with its netlink header) to the kernel.
fn send<T: Copy>(socket: &OwnedFd, request: &T) -> io::Result<()> {
    // SAFETY: `request` is plain data of the size given; the kernel's
    // netlink address is all zeros but for its family.
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            socket.as_raw_fd(),
            (request as *const T).cast(),
            std::mem::size_of::<T>(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads the replies to one dump until its end, handing each message's
/// payload (after its header) to `on_message`.
fn receive(socket: &OwnedFd, on_message: &mut dyn FnMut(&[u8])) -> io::Result<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: the buffer is ours and as long as said.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        let mut rest = &buffer[..n as usize];
        let header_size = std::mem::size_of::<Header>();
        while rest.len() >= header_size {
            // SAFETY: at least a header's worth of bytes; read unaligned.
            let header: Header = unsafe { std::ptr::read_unaligned(rest.as_ptr().cast()) };
            let length = header.length as usize;
            if length < header_size || length > rest.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a malformed netlink message",
                ));
            }
            match header.kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    // SAFETY: an error message carries an errno (negated) after its header.
                    let errno: i32 = unsafe { std::ptr::read_unaligned(rest[header_size..].as_ptr().cast()) };
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                SOCK_DIAG_BY_FAMILY => on_message(&rest[header_size..length]),
                _ => {}
            }
            // Messages are aligned to 4 bytes.
            let aligned = (length + 3) & !3;
            rest = &rest[aligned.min(rest.len())..];
        }
    }
}

fn decode(message: &Message) -> Option<Listening> {
    let port = u16::from_be_bytes(message.id.sport);
    let ip: std::net::IpAddr = match i32::from(message.family) {
        libc::AF_INET => {
            let [a, b, c, d, ..] = message.id.src;
            Ipv4Addr::new(a, b, c, d).into()
        }
        libc::AF_INET6 => Ipv6Addr::from(message.id.src).into(),
        _ => return None,
    };
    Some(Listening {
        inode: u64::from(message.inode),
        address: SocketAddr::new(ip, port),
        queued: message.rqueue,
        backlog: message.wqueue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_found_with_its_queue() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        // Two connections the listener has not accepted yet.
        let _waiting: Vec<std::net::TcpStream> =
            (0..2).map(|_| std::net::TcpStream::connect(address).unwrap()).collect();
        let inode = {
            let link = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
            let link = link.to_string_lossy().into_owned();
            link.trim_start_matches("socket:[")
                .trim_end_matches(']')
                .parse::<u64>()
                .unwrap()
        };
        let all = listening_tcp().unwrap();
        let ours = all.iter().find(|l| l.inode == inode).expect("our listener");
        assert_eq!(ours.address, address);
        assert_eq!(ours.queued, 2);
        assert!(ours.backlog >= 128, "{}", ours.backlog);
        let v6 = std::net::TcpListener::bind("[::1]:0");
        if let Ok(v6) = v6 {
            let found = listening_tcp().unwrap();
            assert!(found.iter().any(|l| l.address == v6.local_addr().unwrap()));
        }
    }
}

#[cfg(test)]
mod unix_tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_listening_unix_socket_shows_its_queue_and_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
            .unwrap()
            .ino();
        let _waiting: Vec<_> = (0..3)
            .map(|_| std::os::unix::net::UnixStream::connect(&path).unwrap())
            .collect();
        let found = unix_queues(&[inode]).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        let (ino, queued, backlog) = found[0];
        assert_eq!((ino, queued), (inode, 3));
        assert!(backlog >= 128, "{backlog}");
        assert!(unix_queues(&[1]).unwrap().is_empty(), "other sockets are left out");
    }
}
