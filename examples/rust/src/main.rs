//! A small HTTP worker for sheepdog, in Rust, on std alone: what a worker
//! must do, and nothing else.
//!
//! - It serves on the socket it was passed (fd 3, taken with `listenfd`,
//!   which checks that `LISTEN_PID` is this process), or binds `ADDR`
//!   (127.0.0.1:8080 by default) when run by hand.
//! - It says `READY=1` once it accepts, and `WATCHDOG=1` every half of
//!   `WATCHDOG_USEC` from its accept loop, so a loop that stops turning stops
//!   the heartbeats (`sd-notify`).
//! - On SIGTERM (or SIGINT) it says `STOPPING=1`, stops accepting, finishes
//!   the requests in flight, answers the next request of each kept-alive
//!   connection with `Connection: close`, closes the connections left idle
//!   for a second, and exits 0.
//!
//! Each connection has a thread of its own: a worker of a pre-fork flock
//! serves its share of connections, and threads keep this example short.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use listenfd::ListenFd;
use sd_notify::NotifyState;

/// How long a kept-alive connection may stay idle once draining began.
const DRAIN_IDLE: Duration = Duration::from_secs(1);
/// How long a kept-alive connection may stay idle otherwise.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long the drain may take before the worker exits anyway (under
/// sheepdog's default stop_timeout of 30 s).
const DRAIN_AT_MOST: Duration = Duration::from_secs(25);
/// The longest request head read; a longer one is refused.
const MAX_HEAD: usize = 16 * 1024;

fn main() {
    if let Err(error) = run() {
        eprintln!("hello-rust: {error}");
        std::process::exit(1);
    }
}

fn run() -> io::Result<()> {
    let listener = Listener::take()?;
    // As Node, Go and gunicorn do with a passed socket: accept() must not
    // block when another worker of the flock took the connection first.
    listener.set_nonblocking()?;
    let (stop_rx, stop_tx) = UnixStream::pair()?;
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::low_level::pipe::register(signal, stop_tx.try_clone()?)?;
    }
    let flock = Arc::new(Connections::default());
    let heartbeat = sd_notify::watchdog_enabled().map(|timeout| timeout / 2);
    notify(&[NotifyState::Ready]);
    eprintln!(
        "worker {} (pid {}) serving on {}",
        worker_id(),
        std::process::id(),
        listener.describe()
    );

    let mut next_ping = Instant::now();
    loop {
        if let Some(interval) = heartbeat
            && Instant::now() >= next_ping
        {
            notify(&[NotifyState::Watchdog]);
            next_ping = Instant::now() + interval;
        }
        let wait = heartbeat.map(|_| next_ping.saturating_duration_since(Instant::now()));
        let [listening, stopping] = wait_readable([listener.as_fd(), stop_rx.as_fd()], wait)?;
        if stopping {
            break;
        }
        if listening {
            // Taken by another worker first: WouldBlock, and back to waiting.
            while let Some(stream) = listener.accept()? {
                let flock = Arc::clone(&flock);
                flock.opened();
                thread::spawn(move || {
                    if let Err(error) = serve(stream, &flock) {
                        eprintln!("connection: {error}");
                    }
                    flock.closed();
                });
            }
        }
    }

    notify(&[NotifyState::Stopping]);
    flock.drain_began.get_or_init(Instant::now);
    // Our copy of the socket only: the other workers go on accepting on it.
    drop(listener);
    if !flock.wait_until_none(DRAIN_AT_MOST) {
        eprintln!("hello-rust: connections still open after {DRAIN_AT_MOST:?}; exiting anyway");
    }
    Ok(())
}

/// The connections open now, and when the drain began.
#[derive(Default)]
struct Connections {
    open: Mutex<usize>,
    none_open: Condvar,
    drain_began: OnceLock<Instant>,
}

impl Connections {
    fn opened(&self) {
        *self.open.lock().unwrap() += 1;
    }

    fn closed(&self) {
        let mut open = self.open.lock().unwrap();
        *open -= 1;
        if *open == 0 {
            self.none_open.notify_all();
        }
    }

    fn wait_until_none(&self, at_most: Duration) -> bool {
        let open = self.open.lock().unwrap();
        let (open, _) = self.none_open.wait_timeout_while(open, at_most, |n| *n > 0).unwrap();
        *open == 0
    }

    fn draining(&self) -> bool {
        self.drain_began.get().is_some()
    }

    /// Whether a connection idle since `idle_since` has waited long enough:
    /// `KEEP_ALIVE`, or while draining `DRAIN_IDLE` after it was last used or
    /// after the drain began, whichever is later (never at once: a request
    /// may already be on its way).
    fn idle_too_long(&self, idle_since: Instant) -> bool {
        match self.drain_began.get() {
            Some(&began) => Instant::now() >= idle_since.max(began) + DRAIN_IDLE,
            None => idle_since.elapsed() >= KEEP_ALIVE,
        }
    }
}

/// Serves one connection's requests until either side closes it.
fn serve(mut stream: Stream, flock: &Connections) -> io::Result<()> {
    // Short reads, so that an idle connection notices a drain.
    stream.set_read_timeout(Duration::from_millis(100))?;
    let mut buffer = Vec::with_capacity(1024);
    let mut idle_since = Instant::now();
    loop {
        let Some(head_end) = find(&buffer, b"\r\n\r\n") else {
            if buffer.len() > MAX_HEAD {
                stream.write_all(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                )?;
                return Ok(());
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if buffer.is_empty() && flock.idle_too_long(idle_since) {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            continue;
        };
        let request = Request::parse(&buffer[..head_end]);
        let body_end = head_end + 4 + request.content_length;
        while buffer.len() < body_end {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buffer.drain(..body_end);
        let keep_alive = request.keep_alive && !flock.draining();
        let body = format!(
            "hello from worker {} pid {} version {}\n",
            worker_id(),
            std::process::id(),
            std::env::var("APP_VERSION").unwrap_or_else(|_| "1".into())
        );
        let connection = if keep_alive { "keep-alive" } else { "close" };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes())?;
        if !keep_alive {
            return Ok(());
        }
        idle_since = Instant::now();
    }
}

/// What the worker needs of a request head.
struct Request {
    content_length: usize,
    keep_alive: bool,
}

impl Request {
    fn parse(head: &[u8]) -> Request {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n");
        let http10 = lines.next().is_some_and(|line| line.ends_with("HTTP/1.0"));
        let mut request = Request {
            content_length: 0,
            keep_alive: !http10,
        };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                request.content_length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("connection") {
                request.keep_alive =
                    value.eq_ignore_ascii_case("keep-alive") || (!http10 && !value.eq_ignore_ascii_case("close"));
            }
        }
        request
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn worker_id() -> String {
    std::env::var("SHEEPDOG_WORKER_ID").unwrap_or_else(|_| "-".into())
}

/// sd_notify, when there is a NOTIFY_SOCKET; a message that cannot be sent
/// is said on stderr and is not fatal.
fn notify(state: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(state) {
        eprintln!("hello-rust: sd_notify: {error}");
    }
}

/// Waits until either fd is readable, or `wait` passes (forever if None).
fn wait_readable(fds: [BorrowedFd<'_>; 2], wait: Option<Duration>) -> io::Result<[bool; 2]> {
    let mut polled = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    let timeout = wait.map_or(-1, |w| w.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: `polled` is an array of two initialised pollfd structs that
    // outlives the call, and its length is passed with it.
    let ready = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, timeout) };
    if ready < 0 {
        let error = io::Error::last_os_error();
        return if error.kind() == io::ErrorKind::Interrupted {
            Ok([false, false])
        } else {
            Err(error)
        };
    }
    Ok(polled.map(|p| p.revents != 0))
}

/// The passed socket, TCP or unix, or one bound here.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Listener {
    fn take() -> io::Result<Listener> {
        let mut passed = ListenFd::from_env();
        if passed.len() > 0 {
            if let Ok(Some(tcp)) = passed.take_tcp_listener(0) {
                return Ok(Listener::Tcp(tcp));
            }
            if let Some(unix) = passed.take_unix_listener(0)? {
                return Ok(Listener::Unix(unix));
            }
        }
        let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
        TcpListener::bind(&addr)
            .map(Listener::Tcp)
            .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l) => l.set_nonblocking(true),
        }
    }

    fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map_or("?".into(), |a| a.to_string()),
            Listener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_else(|| "a unix socket".into()),
        }
    }

    /// The next connection, or None when there is none waiting.
    fn accept(&self) -> io::Result<Option<Stream>> {
        let accepted = match self {
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
        };
        match accepted {
            Ok(stream) => {
                stream.set_blocking()?;
                Ok(Some(stream))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            // The client gave up before we took it: not our failure.
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
        }
    }
}

impl Stream {
    fn set_blocking(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(false),
            Stream::Unix(s) => s.set_nonblocking(false),
        }
    }

    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(timeout)),
            Stream::Unix(s) => s.set_read_timeout(Some(timeout)),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}
