//! The kernel's socket diagnostics (netlink `sock_diag`), for the listening
//! TCP sockets of sheepdog's network namespace: only those are sent, however
//! many connections the host holds (where /proc/net/tcp lists them all).
//! For each: its inode, address, accept-queue length and backlog.

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
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
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
        // SAFETY: `request` is plain data of the size given; the kernel's
        // netlink address is all zeros but for its family.
        let sent = unsafe {
            let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
            kernel.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                socket.as_raw_fd(),
                (&request as *const Request).cast(),
                std::mem::size_of::<Request>(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        receive(&socket, &mut found)?;
    }
    Ok(found)
}

/// Reads the replies to one dump until its end.
fn receive(socket: &OwnedFd, found: &mut Vec<Listening>) -> io::Result<()> {
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
                SOCK_DIAG_BY_FAMILY if length >= header_size + std::mem::size_of::<Message>() => {
                    // SAFETY: checked to hold a whole message; read unaligned.
                    let message: Message = unsafe { std::ptr::read_unaligned(rest[header_size..].as_ptr().cast()) };
                    if let Some(listening) = decode(&message) {
                        found.push(listening);
                    }
                }
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
