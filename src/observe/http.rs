//! The health and metrics endpoint's HTTP server, inside the supervisor's
//! loop: `GET` and `HEAD` only, one request per connection, never blocking.
//!
//! Bounded like the control socket: the request head must arrive whole
//! within 5 s and 8 KiB (parsed by `httparse`), at most 128 clients are
//! connected at once (one that has sent nothing yet makes room for a new
//! one), a reply not read within 10 s is dropped with its client, and out of
//! fds a connection is taken with a reserve fd and closed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use crate::clock::Moment;

use log::warn;

use crate::clients::{Client, Clients, Conn, Limits};
use crate::config::ListenAddr;
use crate::error::Error;
use serde::{Deserialize, Serialize};

use crate::wire::{Bytes, FdRecord};

const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;
const MAX_CLIENTS: usize = 128;
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

pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buffer),
            Stream::Unix(s) => s.read(buffer),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buffer),
            Stream::Unix(s) => s.write(buffer),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl Conn for Stream {
    fn set_nonblocking(&self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(true),
            Stream::Unix(s) => s.set_nonblocking(true),
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

/// What the server keeps of a client beside what every client has.
#[derive(Default)]
pub struct Asked {
    /// HEAD: the reply's headers only.
    head_only: bool,
}

fn limits() -> Limits {
    Limits {
        name: "http",
        client: "http client",
        max_clients: MAX_CLIENTS,
        request_deadline: REQUEST_DEADLINE,
        reply_deadline: Some(CLIENT_DEADLINE),
    }
}

pub struct HttpServer {
    endpoint: Endpoint,
    /// What it listens on, for logs.
    pub address: String,
    /// Its clients (the loop watches and flushes them).
    pub clients: Clients<Stream, Asked>,
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
            clients: Clients::new(limits(), 1, Vec::new()),
        })
    }

    pub fn listener_fd(&self) -> BorrowedFd<'_> {
        match &self.endpoint {
            Endpoint::Tcp(l) => l.as_fd(),
            Endpoint::Unix(l, ..) => l.as_fd(),
        }
    }

    /// Accepts pending connections (a budget per pass); returns the new
    /// clients to watch and read.
    pub fn accept(&mut self, now: Moment) -> Vec<u64> {
        let endpoint = &self.endpoint;
        let take = || match endpoint {
            Endpoint::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            Endpoint::Unix(l, ..) => l.accept().map(|(s, _)| Stream::Unix(s)),
        };
        self.clients.accept(
            now,
            take,
            |_| Ok(()),
            |mut stream, _| {
                // Every client is being answered: this one is told to retry.
                let _ = stream.write(&encode(&HttpResponse::text(503, "busy; try again\n"), false));
            },
        )
    }

    /// Reads what a client sent: its request once the head is whole. A
    /// malformed, oversized or non-GET request is answered here.
    pub fn read(&mut self, id: u64) -> HttpInput {
        // A body or a pipelined request is not read: the reply ends the connection.
        let whole = |c: &Client<Stream, Asked>| {
            c.answered || c.input.len() > MAX_HEAD || c.input.windows(4).any(|w| w == b"\r\n\r\n")
        };
        if !self.clients.read(id, whole) {
            return HttpInput::Gone;
        }
        let Some(client) = self.clients.get_mut(id) else {
            return HttpInput::Gone;
        };
        if client.answered || client.input.is_empty() {
            return HttpInput::Pending;
        }
        match parse(&client.input) {
            Parsed::Partial if client.input.len() <= MAX_HEAD => HttpInput::Pending,
            Parsed::Partial | Parsed::TooLarge => {
                let message = format!("request head over {MAX_HEAD} bytes\n");
                self.refuse(id, HttpResponse::text(431, message))
            }
            Parsed::Bad(why) => self.refuse(id, HttpResponse::text(400, format!("{why}\n"))),
            Parsed::Method(method) => {
                let response = HttpResponse::text(405, format!("{method} is not served here: GET only\n"));
                self.refuse(id, response)
            }
            Parsed::Get { path, head_only } => {
                client.answered = true;
                client.extra.head_only = head_only;
                client.input = Vec::new();
                HttpInput::Request(HttpRequest { path })
            }
        }
    }

    fn refuse(&mut self, id: u64, response: HttpResponse) -> HttpInput {
        if let Some(client) = self.clients.get_mut(id) {
            client.input = Vec::new();
        }
        self.respond(id, &response);
        HttpInput::Pending
    }

    /// Sends the response and closes the connection once it is written.
    /// True when some could not be written yet (watch for writability).
    pub fn respond(&mut self, id: u64, response: &HttpResponse) -> bool {
        let Some(client) = self.clients.get_mut(id) else {
            return false;
        };
        let bytes = encode(response, client.extra.head_only);
        self.clients.send(id, &bytes)
    }

    /// Drops clients out of time: no whole request within 5 s (told 408
    /// if it can take it), or a reply not read within 10 s.
    pub fn expire(&mut self, now: Moment) {
        let timeout = encode(&HttpResponse::text(408, "request timeout\n"), false);
        self.clients.expire(now, Some(&timeout), false);
    }

    /// What this server holds, for the binary that takes over.
    pub fn export(&self) -> HttpState {
        let (listener, unix) = match &self.endpoint {
            Endpoint::Tcp(l) => (FdRecord::of(l.as_fd()), None),
            Endpoint::Unix(l, path, (dev, ino)) => (FdRecord::of(l.as_fd()), Some((Bytes::path(path), *dev, *ino))),
        };
        let clients = self.clients.export(|id, c| HttpClientState {
            id,
            fd: FdRecord::of(c.stream.as_fd()),
            unix: matches!(c.stream, Stream::Unix(_)),
            input: Bytes::new(&c.input),
            output: Bytes::new(&c.output),
            opened: c.opened,
            answered: c.answered,
            head_only: c.extra.head_only,
        });
        HttpState {
            listener,
            unix,
            address: self.address.clone(),
            clients,
            next_client: self.clients.next_id(),
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
                    // A response is only ever queued to be sent and closed.
                    closing: c.answered,
                    ignored: 0,
                    extra: Asked { head_only: c.head_only },
                };
                (c.id, client)
            })
            .collect();
        HttpServer {
            endpoint,
            address: state.address,
            clients: Clients::new(limits(), state.next_client, clients),
        }
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
