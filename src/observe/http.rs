//! The health and metrics endpoint's HTTP server, inside the supervisor's
//! loop: `GET` and `HEAD` only, one request per connection, never blocking.
//!
//! Bounded like the control socket: the request head must arrive whole
//! within 5 s and 8 KiB (parsed by `httparse`), at most 128 clients are
//! connected at once (one that has sent nothing yet makes room for a new
//! one), a reply not read within 10 s is dropped with its client, and out of
//! fds a connection is taken with a reserve fd and closed.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use crate::clock::Moment;

use log::{debug, warn};

use crate::config::ListenAddr;
use crate::error::Error;
use crate::logging::RateLimit;
use serde::{Deserialize, Serialize};

use crate::wire::{Bytes, FdRecord};

const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;
const MAX_CLIENTS: usize = 128;
const MAX_ACCEPTS_PER_PASS: usize = 64;
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// From connection to the last byte of the reply.
const CLIENT_DEADLINE: Duration = Duration::from_secs(10);

/// A request the supervisor answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The path, without its query.
    pub path: String,
}

/// What the supervisor answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl HttpResponse {
    pub fn text(status: u16, body: impl Into<String>) -> HttpResponse {
        HttpResponse {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// What reading from a client gave.
#[derive(Debug, PartialEq, Eq)]
pub enum HttpInput {
    Request(HttpRequest),
    /// Nothing complete yet, or answered here (a bad request).
    Pending,
    Gone,
}

enum Endpoint {
    Tcp(TcpListener),
    /// With the socket file's path, device and inode, removed on exit if
    /// still the one bound here.
    Unix(UnixListener, PathBuf, (u64, u64)),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buffer),
            Stream::Unix(s) => s.read(buffer),
        }
    }

    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buffer),
            Stream::Unix(s) => s.write(buffer),
        }
    }

    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }

    /// Tells the client the reply is whole (it may then close first, so
    /// that sheepdog does not hold the TIME_WAIT).
    fn finish(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }
}

struct Client {
    stream: Stream,
    input: Vec<u8>,
    output: Vec<u8>,
    opened: Moment,
    /// A whole request was read (or refused): nothing more is read.
    answered: bool,
    /// HEAD: the reply's headers only.
    head_only: bool,
}

pub struct HttpServer {
    endpoint: Endpoint,
    /// What it listens on, for logs.
    pub address: String,
    clients: HashMap<u64, Client>,
    next_client: u64,
    /// An fd held in reserve: out of fds, it is closed to take a connection
    /// and close it, rather than leave it to wake the loop again and again.
    reserve: Option<std::fs::File>,
    complaints: RateLimit,
}

impl HttpServer {
    pub fn bind(addr: &ListenAddr) -> Result<HttpServer, Error> {
        let what = format!("http.listen {addr}");
        let fail = |e: std::io::Error| Error::from_io(format!("{what}: cannot listen"), e);
        let endpoint = match addr {
            ListenAddr::Tcp(socket) => {
                let listener = TcpListener::bind(socket).map_err(fail)?;
                listener.set_nonblocking(true).map_err(fail)?;
                Endpoint::Tcp(listener)
            }
            ListenAddr::Unix(path) => {
                match std::fs::symlink_metadata(path) {
                    Ok(meta) if meta.file_type().is_socket() => {
                        if UnixStream::connect(path).is_ok() {
                            return Err(Error::config(format!("{what}: another process is listening on it")));
                        }
                        std::fs::remove_file(path).map_err(fail)?;
                    }
                    Ok(_) => {
                        return Err(Error::config(format!("{what}: the path exists and is not a socket")));
                    }
                    Err(_) => {}
                }
                let listener = UnixListener::bind(path).map_err(fail)?;
                listener.set_nonblocking(true).map_err(fail)?;
                let meta = std::fs::symlink_metadata(path).map_err(fail)?;
                Endpoint::Unix(listener, path.clone(), (meta.dev(), meta.ino()))
            }
        };
        let address = match &endpoint {
            Endpoint::Tcp(listener) => listener.local_addr().map_or(addr.to_string(), |a| a.to_string()),
            Endpoint::Unix(..) => addr.to_string(),
        };
        Ok(HttpServer {
            endpoint,
            address,
            clients: HashMap::new(),
            next_client: 1,
            reserve: std::fs::File::open("/dev/null").ok(),
            complaints: RateLimit::new(5, Duration::from_secs(10)),
        })
    }

    pub fn listener_fd(&self) -> BorrowedFd<'_> {
        match &self.endpoint {
            Endpoint::Tcp(l) => l.as_fd(),
            Endpoint::Unix(l, ..) => l.as_fd(),
        }
    }

    pub fn client_fd(&self, client: u64) -> Option<BorrowedFd<'_>> {
        self.clients.get(&client).map(|c| c.stream.as_fd())
    }

    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// A reply is waiting for the client to read it.
    pub fn is_writing(&self, client: u64) -> bool {
        self.clients.get(&client).is_some_and(|c| !c.output.is_empty())
    }

    fn accept_one(&self) -> std::io::Result<Stream> {
        match &self.endpoint {
            Endpoint::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            Endpoint::Unix(l, ..) => l.accept().map(|(s, _)| Stream::Unix(s)),
        }
    }

    /// Accepts pending connections (a budget per pass); returns the new
    /// clients to watch and read.
    pub fn accept(&mut self, now: Moment) -> Vec<u64> {
        let mut added = Vec::new();
        for _ in 0..MAX_ACCEPTS_PER_PASS {
            let stream = match self.accept_one() {
                Ok(stream) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    if self.complaints.allow(now) {
                        warn!("http: cannot accept a client: {e}");
                    }
                    if self.evict_oldest_idle() || self.refuse_with_reserve() {
                        continue;
                    }
                    break;
                }
                Err(e) => {
                    if self.complaints.allow(now) {
                        warn!("http: accept failed: {e}");
                    }
                    break;
                }
            };
            let nonblocking = match &stream {
                Stream::Tcp(s) => s.set_nonblocking(true),
                Stream::Unix(s) => s.set_nonblocking(true),
            };
            if nonblocking.is_err() {
                continue;
            }
            if self.clients.len() >= MAX_CLIENTS && !self.evict_oldest_idle() {
                // Every client is being answered: this one is told to retry.
                let mut stream = stream;
                let _ = stream.write(&encode(&HttpResponse::text(503, "busy; try again\n"), false));
                continue;
            }
            let id = self.next_client;
            self.next_client += 1;
            self.clients.insert(
                id,
                Client {
                    stream,
                    input: Vec::new(),
                    output: Vec::new(),
                    opened: now,
                    answered: false,
                    head_only: false,
                },
            );
            added.push(id);
        }
        if self.reserve.is_none() {
            self.reserve = std::fs::File::open("/dev/null").ok();
        }
        added
    }

    fn refuse_with_reserve(&mut self) -> bool {
        if self.reserve.take().is_none() {
            return false;
        }
        let taken = self.accept_one().is_ok();
        self.reserve = std::fs::File::open("/dev/null").ok();
        taken
    }

    /// Disconnects the client connected longest without a whole request.
    fn evict_oldest_idle(&mut self) -> bool {
        let oldest = self
            .clients
            .iter()
            .filter(|(_, c)| !c.answered)
            .min_by_key(|(id, c)| (c.opened, **id))
            .map(|(id, _)| *id);
        oldest.is_some_and(|id| self.clients.remove(&id).is_some())
    }

    /// Reads what a client sent: its request once the head is whole. A
    /// malformed, oversized or non-GET request is answered here.
    pub fn read(&mut self, id: u64) -> HttpInput {
        let Some(client) = self.clients.get_mut(&id) else {
            return HttpInput::Gone;
        };
        if client.answered {
            // A body or a pipelined request: not read; the reply ends the connection.
            return HttpInput::Pending;
        }
        let mut buffer = [0u8; 4096];
        loop {
            match client.stream.read(&mut buffer) {
                Ok(0) => {
                    self.clients.remove(&id);
                    return HttpInput::Gone;
                }
                Ok(n) => {
                    client.input.extend_from_slice(&buffer[..n]);
                    match parse(&client.input) {
                        Parsed::Partial if client.input.len() <= MAX_HEAD => continue,
                        Parsed::Partial | Parsed::TooLarge => {
                            let message = format!("request head over {MAX_HEAD} bytes\n");
                            return self.refuse(id, HttpResponse::text(431, message));
                        }
                        Parsed::Bad(why) => return self.refuse(id, HttpResponse::text(400, format!("{why}\n"))),
                        Parsed::Method(method) => {
                            let response = HttpResponse::text(405, format!("{method} is not served here: GET only\n"));
                            return self.refuse(id, response);
                        }
                        Parsed::Get { path, head_only } => {
                            client.answered = true;
                            client.head_only = head_only;
                            client.input = Vec::new();
                            return HttpInput::Request(HttpRequest { path });
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return HttpInput::Pending,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.clients.remove(&id);
                    return HttpInput::Gone;
                }
            }
        }
    }

    fn refuse(&mut self, id: u64, response: HttpResponse) -> HttpInput {
        if let Some(client) = self.clients.get_mut(&id) {
            client.answered = true;
            client.input = Vec::new();
        }
        self.respond(id, &response);
        HttpInput::Pending
    }

    /// Sends the response and closes the connection once it is written.
    /// True when some could not be written yet (watch for writability).
    pub fn respond(&mut self, id: u64, response: &HttpResponse) -> bool {
        let Some(client) = self.clients.get_mut(&id) else {
            return false;
        };
        client.answered = true;
        client.output = encode(response, client.head_only);
        self.flush(id)
    }

    /// Writes pending output; true if some is left.
    pub fn flush(&mut self, id: u64) -> bool {
        let Some(client) = self.clients.get_mut(&id) else {
            return false;
        };
        let mut written = 0;
        while written < client.output.len() {
            match client.stream.write(&client.output[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    client.output.drain(..written);
                    return true;
                }
                Err(_) => {
                    self.clients.remove(&id);
                    return false;
                }
            }
        }
        client.stream.finish();
        self.clients.remove(&id);
        false
    }

    /// Drops clients out of time: no whole request within 5 s (told 408
    /// if it can take it), or a reply not read within 10 s.
    pub fn expire(&mut self, now: Moment) {
        let late: Vec<(u64, bool)> = self
            .clients
            .iter()
            .filter_map(|(id, c)| {
                let age = now.saturating_duration_since(c.opened);
                if !c.answered && age >= REQUEST_DEADLINE {
                    Some((*id, true))
                } else {
                    (age >= CLIENT_DEADLINE).then_some((*id, false))
                }
            })
            .collect();
        for (id, silent) in late {
            if silent {
                debug!(
                    "http client {id} sent no whole request within {}s",
                    REQUEST_DEADLINE.as_secs()
                );
                if let Some(mut client) = self.clients.remove(&id) {
                    let _ = client
                        .stream
                        .write(&encode(&HttpResponse::text(408, "request timeout\n"), false));
                }
            } else {
                if self.complaints.allow(now) {
                    warn!(
                        "http client {id} did not read its reply within {}s; disconnecting it",
                        CLIENT_DEADLINE.as_secs()
                    );
                }
                self.clients.remove(&id);
            }
        }
    }

    pub fn next_deadline(&self) -> Option<Moment> {
        self.clients
            .values()
            .map(|c| {
                if c.answered {
                    c.opened + CLIENT_DEADLINE
                } else {
                    c.opened + REQUEST_DEADLINE
                }
            })
            .min()
    }

    /// What this server holds, for the binary that takes over.
    pub fn export(&self) -> HttpState {
        let (listener, unix) = match &self.endpoint {
            Endpoint::Tcp(l) => (FdRecord::of(l.as_fd()), None),
            Endpoint::Unix(l, path, (dev, ino)) => (FdRecord::of(l.as_fd()), Some((Bytes::path(path), *dev, *ino))),
        };
        let mut clients: Vec<HttpClientState> = self
            .clients
            .iter()
            .map(|(id, c)| HttpClientState {
                id: *id,
                fd: FdRecord::of(c.stream.as_fd()),
                unix: matches!(c.stream, Stream::Unix(_)),
                input: Bytes::new(&c.input),
                output: Bytes::new(&c.output),
                opened: c.opened,
                answered: c.answered,
                head_only: c.head_only,
            })
            .collect();
        clients.sort_by_key(|c| c.id);
        HttpState {
            listener,
            unix,
            address: self.address.clone(),
            clients,
            next_client: self.next_client,
        }
    }

    /// The server `state` describes, on the fds it names, which were
    /// checked (by the reader of the hand-over) and are taken here.
    pub fn adopt(state: HttpState) -> HttpServer {
        // SAFETY: the fds were handed over for this, checked to be open and
        // the same inodes, and each is owned by exactly one adopter.
        let take = |fd: RawFd| unsafe { OwnedFd::from_raw_fd(fd) };
        let endpoint = match state.unix {
            None => Endpoint::Tcp(TcpListener::from(take(state.listener.fd))),
            Some((path, dev, ino)) => {
                Endpoint::Unix(UnixListener::from(take(state.listener.fd)), path.to_path(), (dev, ino))
            }
        };
        let clients = state
            .clients
            .into_iter()
            .map(|c| {
                let stream = if c.unix {
                    Stream::Unix(UnixStream::from(take(c.fd.fd)))
                } else {
                    Stream::Tcp(TcpStream::from(take(c.fd.fd)))
                };
                let client = Client {
                    stream,
                    input: c.input.into_vec(),
                    output: c.output.into_vec(),
                    opened: c.opened,
                    answered: c.answered,
                    head_only: c.head_only,
                };
                (c.id, client)
            })
            .collect();
        HttpServer {
            endpoint,
            address: state.address,
            clients,
            next_client: state.next_client,
            reserve: std::fs::File::open("/dev/null").ok(),
            complaints: RateLimit::new(5, Duration::from_secs(10)),
        }
    }

    /// The clients connected now.
    pub fn client_ids(&self) -> Vec<u64> {
        self.clients.keys().copied().collect()
    }

    /// Removes a unix socket file on exit, if it is still the one bound here.
    pub fn cleanup(&mut self) {
        self.clients.clear();
        if let Endpoint::Unix(_, path, identity) = &self.endpoint
            && let Ok(meta) = std::fs::symlink_metadata(path)
            && (meta.dev(), meta.ino()) == *identity
            && let Err(e) = std::fs::remove_file(path)
        {
            warn!("cannot remove the http socket {}: {e}", path.display());
        }
    }
}

enum Parsed {
    Partial,
    /// A head over `MAX_HEAD`.
    TooLarge,
    Bad(String),
    Method(String),
    Get {
        path: String,
        head_only: bool,
    },
}

fn parse(input: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(input) {
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => Parsed::Bad(format!("more than {MAX_HEADERS} headers")),
        Err(e) => Parsed::Bad(format!("bad request: {e}")),
        // The limit holds for a head that came whole in one read too.
        Ok(httparse::Status::Complete(length)) if length > MAX_HEAD => Parsed::TooLarge,
        Ok(httparse::Status::Complete(_)) => {
            let method = request.method.unwrap_or_default();
            let target = request.path.unwrap_or("/");
            let path = target.split(['?', '#']).next().unwrap_or("/").to_string();
            match method {
                "GET" => Parsed::Get { path, head_only: false },
                "HEAD" => Parsed::Get { path, head_only: true },
                other => Parsed::Method(other.chars().take(32).collect()),
            }
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn encode(response: &HttpResponse, head_only: bool) -> Vec<u8> {
    let allow = if response.status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(response.body.as_bytes());
    }
    out
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpState {
    pub listener: FdRecord,
    /// A unix endpoint's socket file: path, device, inode.
    pub unix: Option<(Bytes, u64, u64)>,
    pub address: String,
    pub clients: Vec<HttpClientState>,
    pub next_client: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpClientState {
    pub id: u64,
    pub fd: FdRecord,
    pub unix: bool,
    pub input: Bytes,
    pub output: Bytes,
    pub opened: Moment,
    pub answered: bool,
    pub head_only: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_by_httparse_and_bad_ones_refused() {
        let get = |text: &str| match parse(text.as_bytes()) {
            Parsed::Get { path, head_only } => Some((path, head_only)),
            _ => None,
        };
        assert_eq!(
            get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("/metrics".into(), false))
        );
        assert_eq!(
            get("HEAD /readyz?verbose=1 HTTP/1.0\r\n\r\n"),
            Some(("/readyz".into(), true))
        );
        assert!(matches!(parse(b"GET /metrics HTTP/1.1\r\nHost"), Parsed::Partial));
        assert!(matches!(parse(b"POST /metrics HTTP/1.1\r\n\r\n"), Parsed::Method(m) if m == "POST"));
        assert!(matches!(parse(b"\x00\x01garbage\r\n\r\n"), Parsed::Bad(_)));
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(40));
        assert!(matches!(parse(many.as_bytes()), Parsed::Bad(why) if why.contains("headers")));
    }

    #[test]
    fn a_response_is_whole_and_closes_the_connection() {
        let text = String::from_utf8(encode(&HttpResponse::text(503, "0/2 ready\n"), false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{text}");
        assert!(text.contains("Content-Length: 10\r\n") && text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n0/2 ready\n"));
        let head = String::from_utf8(encode(&HttpResponse::text(200, "ok\n"), true)).unwrap();
        assert!(
            head.ends_with("\r\n\r\n") && head.contains("Content-Length: 3"),
            "{head}"
        );
    }
}
