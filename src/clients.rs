//! The clients of a socket the loop serves (the control socket, the HTTP
//! endpoint): accepted within a budget per pass, admitted up to a limit (the
//! one connected longest without a request makes room), read and written
//! without blocking, dropped when late, and handed over whole in an upgrade.
//! Out of fds, a reserve fd is spent to take a connection and close it, so a
//! shortage never spins the loop. What a request is, and what a refusal
//! says, is the server's own.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use log::{debug, warn};

use crate::clock::Moment;
use crate::logging::RateLimit;

/// A connection the loop serves.
pub trait Conn: Read + Write + AsFd {
    fn set_nonblocking(&self) -> std::io::Result<()>;
    /// Tells the peer the reply is whole (before the connection is dropped).
    fn finish(&self) {}
}

impl Conn for std::os::unix::net::UnixStream {
    fn set_nonblocking(&self) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::set_nonblocking(self, true)
    }
}

/// One client, and what the server keeps of its own beside it (`E`).
pub struct Client<S, E> {
    pub stream: S,
    pub input: Vec<u8>,
    pub output: Vec<u8>,
    pub opened: Moment,
    /// A whole request was read (or refused): no request deadline any more.
    pub answered: bool,
    /// Close once `output` is written.
    pub closing: bool,
    /// Bytes sent after the request: counted, not kept.
    pub ignored: usize,
    pub extra: E,
}

impl<S, E: Default> Client<S, E> {
    pub fn new(stream: S, opened: Moment) -> Client<S, E> {
        Client {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            opened,
            answered: false,
            closing: false,
            ignored: 0,
            extra: E::default(),
        }
    }
}

/// The limits and words of one server.
pub struct Limits {
    /// "control socket", "http": what the log lines say.
    pub name: &'static str,
    /// "control client", "http client".
    pub client: &'static str,
    pub max_clients: usize,
    /// A client without a whole request by then is dropped.
    pub request_deadline: Duration,
    /// A client that has not read its reply by then is dropped.
    pub reply_deadline: Option<Duration>,
}

/// Connections accepted in one pass at most: a flood of them waits for the
/// next pass rather than holding the loop.
const ACCEPTS_PER_PASS: usize = 64;
/// A reply that waits this long for its reader is given up, with the client.
const MAX_BACKLOG: usize = 16 << 20;

/// What a new connection is told when it is not admitted.
pub type Refuse<S> = fn(S, String);

pub struct Clients<S, E> {
    clients: HashMap<u64, Client<S, E>>,
    next: u64,
    limits: Limits,
    /// An fd held in reserve (/dev/null).
    reserve: Option<std::fs::File>,
    /// What clients can trigger again and again is logged at a bounded rate.
    pub complaints: RateLimit,
}

impl<S: Conn, E: Default> Clients<S, E> {
    pub fn new(limits: Limits, next: u64, clients: Vec<(u64, Client<S, E>)>) -> Clients<S, E> {
        Clients {
            clients: clients.into_iter().collect(),
            next,
            limits,
            reserve: open_reserve(),
            complaints: RateLimit::new(5, Duration::from_secs(10)),
        }
    }

    /// Accepts the pending connections (up to the budget per pass) from
    /// `take`; each is checked by `admit` (refused with `refuse` and why if
    /// it fails, or if the server is full and no idle client makes room).
    /// Returns the new clients to watch.
    pub fn accept(
        &mut self,
        now: Moment,
        mut take: impl FnMut() -> std::io::Result<S>,
        admit: impl Fn(&S) -> Result<(), String>,
        refuse: Refuse<S>,
    ) -> Vec<u64> {
        let mut added = Vec::new();
        for _ in 0..ACCEPTS_PER_PASS {
            let stream = match take() {
                Ok(stream) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    if self.complaints.allow(now) {
                        warn!("{}: cannot accept a client: {e}", self.limits.name);
                    }
                    if self.evict_oldest_idle(now, "out of file descriptors")
                        || self.refuse_with_reserve(&mut take, refuse)
                    {
                        continue;
                    }
                    break;
                }
                Err(e) => {
                    if self.complaints.allow(now) {
                        warn!("{}: accept failed: {e}", self.limits.name);
                    }
                    break;
                }
            };
            let admitted = stream
                .set_nonblocking()
                .map_err(|e| e.to_string())
                .and_then(|()| admit(&stream));
            let admitted = admitted.and_then(|()| {
                let full = format!("{} clients connected", self.limits.max_clients);
                if self.clients.len() >= self.limits.max_clients && !self.evict_oldest_idle(now, &full) {
                    Err(format!(
                        "{} clients are already waiting for replies",
                        self.limits.max_clients
                    ))
                } else {
                    Ok(())
                }
            });
            if let Err(refusal) = admitted {
                if self.complaints.allow(now) {
                    warn!("{}: {refusal}", self.limits.name);
                }
                refuse(stream, refusal);
                continue;
            }
            let id = self.next;
            self.next += 1;
            self.clients.insert(id, Client::new(stream, now));
            added.push(id);
        }
        if self.reserve.is_none() {
            self.reserve = open_reserve();
        }
        added
    }

    /// Out of fds with no idle client to drop: frees the reserve fd to take
    /// one connection and refuse it. False when there is no reserve or the
    /// accept still fails.
    fn refuse_with_reserve(&mut self, take: &mut impl FnMut() -> std::io::Result<S>, refuse: Refuse<S>) -> bool {
        if self.reserve.take().is_none() {
            return false;
        }
        let taken = match take() {
            Ok(stream) => {
                refuse(stream, "sheepdog is out of file descriptors; try again later".into());
                true
            }
            Err(e) => {
                if self.complaints.allow(Moment::now()) {
                    warn!(
                        "{}: cannot accept a client even with the reserve fd: {e}",
                        self.limits.name
                    );
                }
                false
            }
        };
        self.reserve = open_reserve();
        taken
    }

    /// Makes room for a new client by dropping the one connected longest
    /// without a whole request, so that idle connections can never shut an
    /// operator out.
    fn evict_oldest_idle(&mut self, now: Moment, why: &str) -> bool {
        let oldest = self
            .clients
            .iter()
            .filter(|(_, c)| !c.answered)
            .min_by_key(|(id, c)| (c.opened, **id))
            .map(|(id, _)| *id);
        match oldest {
            Some(id) => {
                if self.complaints.allow(now) {
                    warn!(
                        "{}: {why}; disconnecting idle client {id} to admit another",
                        self.limits.name
                    );
                }
                self.clients.remove(&id);
                true
            }
            None => false,
        }
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Client<S, E>> {
        self.clients.get_mut(&id)
    }

    pub fn remove(&mut self, id: u64) {
        self.clients.remove(&id);
    }

    /// Reads what client `id` sent into its input (once answered, only
    /// counts it), until the socket has no more or `enough` says so. False
    /// when the client hung up or failed: it is dropped.
    pub fn read(&mut self, id: u64, enough: impl Fn(&Client<S, E>) -> bool) -> bool {
        let Some(client) = self.clients.get_mut(&id) else {
            return false;
        };
        let mut buffer = [0u8; 8192];
        while !enough(client) {
            match client.stream.read(&mut buffer) {
                Ok(0) => {
                    self.clients.remove(&id);
                    return false;
                }
                Ok(n) if client.answered => client.ignored += n,
                Ok(n) => client.input.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.clients.remove(&id);
                    return false;
                }
            }
        }
        true
    }

    /// Queues `bytes` for client `id` and closes the connection once they
    /// are written. True when some could not be written yet.
    pub fn send(&mut self, id: u64, bytes: &[u8]) -> bool {
        let Some(client) = self.clients.get_mut(&id) else {
            return false;
        };
        client.answered = true;
        client.output.extend_from_slice(bytes);
        client.closing = true;
        self.flush(id)
    }

    /// Writes pending output; true if some is left (the client reads slowly).
    pub fn flush(&mut self, id: u64) -> bool {
        let Some(client) = self.clients.get_mut(&id) else {
            return false;
        };
        while !client.output.is_empty() {
            match client.stream.write(&client.output) {
                Ok(0) => break,
                Ok(n) => {
                    client.output.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if client.output.len() > MAX_BACKLOG {
                        if self.complaints.allow(Moment::now()) {
                            warn!("{} {id} does not read its reply; disconnecting it", self.limits.client);
                        }
                        self.clients.remove(&id);
                        return false;
                    }
                    return true;
                }
                Err(_) => {
                    self.clients.remove(&id);
                    return false;
                }
            }
        }
        if client.closing {
            client.stream.finish();
            self.clients.remove(&id);
        }
        false
    }

    /// Drops clients out of time: no whole request within the request
    /// deadline (`last_word` is written to each first, if it can take it),
    /// or a reply not read within the reply deadline.
    pub fn expire(&mut self, now: Moment, last_word: Option<&[u8]>, warn_silent: bool) {
        let limits = &self.limits;
        let late: Vec<(u64, bool)> = self
            .clients
            .iter()
            .filter_map(|(id, c)| {
                let age = now.saturating_duration_since(c.opened);
                if !c.answered && age >= limits.request_deadline {
                    Some((*id, true))
                } else {
                    limits.reply_deadline.filter(|d| age >= *d).map(|_| (*id, false))
                }
            })
            .collect();
        for (id, silent) in late {
            let Some(mut client) = self.clients.remove(&id) else {
                continue;
            };
            let seconds = if silent {
                self.limits.request_deadline.as_secs()
            } else {
                self.limits.reply_deadline.unwrap_or_default().as_secs()
            };
            if silent {
                if let Some(word) = last_word {
                    let _ = client.stream.write(word);
                }
                if warn_silent && self.complaints.allow(now) {
                    warn!(
                        "{} {id} sent no request within {seconds}s; disconnecting it",
                        self.limits.client
                    );
                } else {
                    debug!("{} {id} sent no whole request within {seconds}s", self.limits.client);
                }
            } else if self.complaints.allow(now) {
                warn!(
                    "{} {id} did not read its reply within {seconds}s; disconnecting it",
                    self.limits.client
                );
            }
        }
    }

    /// When the next client is due to be dropped, if it says nothing more.
    pub fn next_deadline(&self) -> Option<Moment> {
        self.clients
            .values()
            .filter_map(|c| {
                if c.answered {
                    self.limits.reply_deadline.map(|d| c.opened + d)
                } else {
                    Some(c.opened + self.limits.request_deadline)
                }
            })
            .min()
    }

    pub fn fd(&self, id: u64) -> Option<BorrowedFd<'_>> {
        self.clients.get(&id).map(|c| c.stream.as_fd())
    }

    /// Whether client `id` waits to write a reply (watch it for writability).
    pub fn is_writing(&self, id: u64) -> bool {
        self.clients.get(&id).is_some_and(|c| !c.output.is_empty())
    }

    pub fn ids(&self) -> Vec<u64> {
        self.clients.keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    pub fn next_id(&self) -> u64 {
        self.next
    }

    /// Each client as `state` writes it, by id, for the binary that takes over.
    pub fn export<T>(&self, state: impl Fn(u64, &Client<S, E>) -> T) -> Vec<T> {
        let mut ids = self.ids();
        ids.sort_unstable();
        ids.into_iter().map(|id| state(id, &self.clients[&id])).collect()
    }

    pub fn clear(&mut self) {
        self.clients.clear();
    }
}

fn open_reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}
