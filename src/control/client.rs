//! The control socket's client side: finding the running sheepdog a command
//! means, and one request with its reply.

use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::protocol::{Command, Reply, StatusReport, encode_request};
use crate::config::{ClientTarget, default_socket_dir, fallback_socket_dirs};

/// How long discovery waits for each sheepdog it asks.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The control sockets under `dir` (the default socket directory): one
/// folder per name, `control.sock` in it, and `control.PID.sock` for any
/// sheepdog that found that path taken.
pub fn discover(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(names) = std::fs::read_dir(dir) else {
        return found;
    };
    for folder in names.flatten() {
        let Ok(entries) = std::fs::read_dir(folder.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_socket = entry.file_type().is_ok_and(|t| t.is_socket());
            if is_socket && name.starts_with("control") && name.ends_with(".sock") {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// The control sockets under `dir` and under the private directories a
/// sheepdog of this user made when the default one was not its own.
pub fn discover_all(dir: &Path) -> Vec<PathBuf> {
    let mut found = discover(dir);
    for fallback in fallback_socket_dirs() {
        found.extend(discover(&fallback));
    }
    found
}

/// A running sheepdog a client found, with its status.
pub struct Found {
    pub socket: PathBuf,
    pub status: StatusReport,
}

/// Asks every socket for its status; those that answer are running.
pub fn running(sockets: &[PathBuf]) -> Vec<Found> {
    sockets
        .iter()
        .filter_map(
            |socket| match request(socket, &Command::Status, Some(DISCOVERY_TIMEOUT)) {
                Ok(Reply::Status(status)) => Some(Found {
                    socket: socket.clone(),
                    status: *status,
                }),
                _ => None,
            },
        )
        .collect()
}

/// The control socket of the sheepdog a client means.
pub fn resolve(target: &ClientTarget) -> Result<PathBuf, String> {
    match target {
        ClientTarget::Socket(socket) => Ok(socket.clone()),
        ClientTarget::Default { path, config } => {
            // The default path first, then the siblings a clash made.
            let dir = path.parent().unwrap_or(Path::new("."));
            let mut candidates = vec![path.clone()];
            candidates.extend(
                discover(dir.parent().unwrap_or(Path::new("/")))
                    .into_iter()
                    .filter(|s| s.parent() == Some(dir) && s != path),
            );
            // Where a sheepdog went when the default directory was not its own.
            let name = dir.file_name();
            candidates.extend(
                fallback_socket_dirs()
                    .iter()
                    .flat_map(|fallback| discover(fallback))
                    .filter(|s| s.parent().and_then(Path::file_name) == name),
            );
            let found = running(&candidates);
            let config_text = config.to_string_lossy();
            match found
                .iter()
                .find(|f| f.status.supervisor.config.as_deref() == Some(&*config_text))
            {
                Some(found) => Ok(found.socket.clone()),
                None => match found.first() {
                    Some(other) => Err(format!(
                        "the sheepdog on {} runs {}, not {}; is sheepdog running with this config?",
                        other.socket.display(),
                        other.status.supervisor.config.as_deref().unwrap_or("no config file"),
                        config.display()
                    )),
                    // Nobody answers: the request itself will say so.
                    None => Ok(path.clone()),
                },
            }
        }
        ClientTarget::Any => {
            let dir = default_socket_dir();
            let found = running(&discover_all(&dir));
            match found.as_slice() {
                [one] => Ok(one.socket.clone()),
                [] => Err(format!(
                    "no running sheepdog found in {} (name one with --config FILE or --socket PATH)",
                    dir.display()
                )),
                many => Err(format!(
                    "{} sheepdogs are running ({}): name one with --config FILE or --socket PATH",
                    many.len(),
                    many.iter()
                        .map(|f| f.socket.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
    }
}

/// Why a request got no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoReply {
    /// The client stopped waiting: what it asked for may still be going on.
    TimedOut(String),
    /// No sheepdog there, or the exchange broke.
    Failed(String),
}

impl std::fmt::Display for NoReply {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            NoReply::TimedOut(why) | NoReply::Failed(why) => f.write_str(why),
        }
    }
}

/// The longest reply read: a status of 4096 workers is about 1.5 MiB.
const MAX_REPLY: usize = 16 << 20;

/// Sends one request and waits for its reply: `timeout` bounds the whole
/// exchange (not each read: a server trickling bytes cannot hold the client),
/// and a reply longer than `MAX_REPLY` is refused, not buffered.
pub fn request(socket: &Path, command: &Command, timeout: Option<Duration>) -> Result<Reply, NoReply> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let stream = connect_within(socket, deadline).map_err(|e| {
        NoReply::Failed(format!(
            "cannot connect to {}: {e} (is sheepdog running with this config?)",
            shown(socket)
        ))
    })?;
    trust_server(&stream, socket).map_err(NoReply::Failed)?;
    exchange_until(stream, command, deadline, socket, timeout)
}

/// Connects to the unix socket at `path`; a listener whose queue is full
/// (one that never accepts) is retried until `deadline`, never waited on
/// for ever.
pub fn connect_within(path: &Path, deadline: Option<Instant>) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    let address = UnixAddr::new(path).map_err(std::io::Error::from)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)?;
    loop {
        match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &address) {
            Ok(()) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) if deadline.is_none_or(|d| Instant::now() < d) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(nix::errno::Errno::EAGAIN) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "its queue stayed full: nobody accepts",
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// One request on a connected stream, its reply read by `deadline`.
pub fn exchange(stream: UnixStream, command: &Command, deadline: Instant, socket: &Path) -> Result<Reply, NoReply> {
    let budget = deadline.saturating_duration_since(Instant::now());
    exchange_until(stream, command, Some(deadline), socket, Some(budget))
}

fn exchange_until(
    mut stream: UnixStream,
    command: &Command,
    deadline: Option<Instant>,
    socket: &Path,
    budget: Option<Duration>,
) -> Result<Reply, NoReply> {
    use NoReply::{Failed, TimedOut};
    let timed_out = || {
        TimedOut(format!(
            "no reply within {}",
            crate::units::format_duration(budget.unwrap_or_default())
        ))
    };
    let left = |deadline: Option<Instant>| match deadline {
        None => Ok(None),
        Some(deadline) => match deadline.saturating_duration_since(Instant::now()) {
            left if left.is_zero() => Err(timed_out()),
            left => Ok(Some(left)),
        },
    };
    stream
        .set_write_timeout(left(deadline)?)
        .map_err(|e| Failed(e.to_string()))?;
    // A server that refuses at once (another user's client) answers why and
    // hangs up: its reply may be waiting even when the request cannot go.
    let sent = stream.write_all(format!("{}\n", encode_request(command)).as_bytes());
    let mut reply = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        stream
            .set_read_timeout(left(deadline)?)
            .map_err(|e| Failed(e.to_string()))?;
        match stream.read(&mut chunk) {
            Ok(0) if reply.is_empty() => {
                return Err(Failed(match &sent {
                    Err(e) => format!("cannot send the request to {}: {e}", shown(socket)),
                    Ok(()) => "sheepdog closed the connection without a reply".into(),
                }));
            }
            Ok(0) => {
                return Err(Failed(
                    "sheepdog closed the connection in the middle of its reply".into(),
                ));
            }
            Ok(n) => {
                if let Some(end) = chunk[..n].iter().position(|b| *b == b'\n') {
                    reply.extend_from_slice(&chunk[..end]);
                    return Reply::decode(&reply).map_err(Failed);
                }
                reply.extend_from_slice(&chunk[..n]);
                if reply.len() > MAX_REPLY {
                    return Err(Failed(format!(
                        "the reply is over {} MiB with no end: not a sheepdog",
                        MAX_REPLY >> 20
                    )));
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(timed_out());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if reply.is_empty() && sent.is_err() => {
                return Err(Failed(format!("cannot send the request to {}: {e}", shown(socket))));
            }
            Err(e) => return Err(Failed(format!("cannot read the reply: {e}"))),
        }
    }
}

/// A path as it may be printed (it came from the file system, or a peer).
fn shown(path: &Path) -> String {
    crate::text::printable(&path.to_string_lossy()).into_owned()
}

/// Only a server of our own uid or root's can be the sheepdog we mean: a
/// socket someone else put in our way is not asked, nor believed. (Root may
/// ask anyone's: it names their socket itself, and the server admits it.)
fn trust_server(stream: &UnixStream, socket: &Path) -> Result<(), String> {
    use nix::sys::socket::{getsockopt, sockopt};
    let peer = getsockopt(stream, sockopt::PeerCredentials)
        .map_err(|e| format!("{}: cannot tell who serves it: {e}", shown(socket)))?;
    let own = nix::unistd::geteuid().as_raw();
    if own != 0 && peer.uid() != own && peer.uid() != 0 {
        return Err(format!(
            "{} is served by pid {} of uid {}, neither root nor this user (uid {own}): not asked",
            shown(socket),
            peer.pid(),
            peer.uid()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake server that reads the request line, then writes `chunk` every
    /// `every` until the client goes away.
    fn fake_server(chunk: &'static [u8], every: Duration) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 256];
            let _ = stream.read(&mut request);
            while stream.write_all(chunk).is_ok() {
                std::thread::sleep(every);
            }
        });
        (dir, path)
    }

    #[test]
    fn a_refusal_sent_before_the_request_could_go_is_read_all_the_same() {
        // A server that answers why it refuses and hangs up before the
        // client has written its request: the write fails (EPIPE), and
        // the refusal waits in the client's socket to be read.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refusing.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let stream = UnixStream::connect(&path).unwrap();
        let (mut served, _) = listener.accept().unwrap();
        served
            .write_all(b"{\"v\":1,\"ok\":false,\"error\":\"refused pid 7 of uid 65534\"}\n")
            .unwrap();
        drop(served);
        let deadline = Instant::now() + Duration::from_secs(5);
        match exchange(stream, &Command::Reload, deadline, &path) {
            Ok(Reply::Failed(why)) => assert_eq!(why, "refused pid 7 of uid 65534"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reply_without_end_is_refused_not_buffered() {
        static MEBIBYTE: [u8; 1 << 20] = [b'x'; 1 << 20];
        let (_dir, path) = fake_server(&MEBIBYTE, Duration::ZERO);
        let outcome = request(&path, &Command::Status, Some(Duration::from_secs(30)));
        match outcome {
            Err(NoReply::Failed(why)) => assert!(why.contains("over 16 MiB"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_trickling_server_cannot_hold_the_client_past_its_timeout() {
        let (_dir, path) = fake_server(b"x", Duration::from_millis(50));
        let started = Instant::now();
        let outcome = request(&path, &Command::Status, Some(Duration::from_millis(500)));
        assert!(matches!(outcome, Err(NoReply::TimedOut(_))), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    }
}
