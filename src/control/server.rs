//! The control socket's server: `sheepdog status`, `sheepdog reload`,
//! `sheepdog scale` reach the running sheepdog here.
//!
//! A unix stream socket, mode 0600, whose peers must be root or sheepdog's own
//! uid (SO_PEERCRED), speaking [`protocol`](super::protocol). The server never
//! blocks: a request must arrive whole within 5 s and 64 KiB, at most 64
//! clients are served at once (the one idle longest makes room for a new one),
//! and a reply a client does not read is dropped with the client. `reload`
//! replies when the reload has ended.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::clock::Moment;

use log::{debug, warn};
use nix::sys::socket::{self, sockopt};

use super::protocol::{Command, Reply, parse_request};
use crate::clients::{Client, Clients, Limits};
use crate::error::Error;
use serde::{Deserialize, Serialize};

use crate::wire::{Bytes, FdRecord};
const MAX_REQUEST: usize = 64 * 1024;
/// What a client may send after its request (a stray newline, say) before
/// it is disconnected: a reload waiter streaming bytes would otherwise keep
/// the loop reading and discarding.
const MAX_AFTER_REQUEST: usize = 4096;
const MAX_CLIENTS: usize = 64;
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

fn limits() -> Limits {
    Limits {
        name: "control socket",
        client: "control client",
        max_clients: MAX_CLIENTS,
        request_deadline: REQUEST_DEADLINE,
        reply_deadline: None,
    }
}

pub struct ControlServer {
    listener: UnixListener,
    /// The socket file, with its device and inode: removed on exit only if
    /// it is still the one bound here.
    path: PathBuf,
    identity: (u64, u64),
    /// Its clients (the loop watches and flushes them).
    pub clients: Clients<UnixStream, ()>,
    own_uid: u32,
    /// A private directory made for the socket when the default one was
    /// not ours: removed on exit with the socket.
    made_dir: Option<PathBuf>,
}

/// What reading from a client gave.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientInput {
    Request(Command),
    /// Nothing complete yet (or an error reply was sent).
    Pending,
    /// The client hung up.
    Gone,
}

impl ControlServer {
    /// Binds `path` (mode 0600). A stale socket file is replaced. A live one
    /// means another sheepdog uses it: an error when the path was set
    /// explicitly; at a default path (shared by every sheepdog of the same
    /// name) this one takes `control.PID.sock` beside it instead, since the
    /// control socket is a side channel the flock must not fail for.
    pub fn bind(path: &Path, explicit: bool) -> Result<ControlServer, Error> {
        match bind_socket(path) {
            Err(BindError::Live) if !explicit => {
                let own = path.with_file_name(format!("control.{}.sock", std::process::id()));
                log::warn!(
                    "control socket {} is taken by another running sheepdog; using {} (`sheepdog status` lists both)",
                    path.display(),
                    own.display()
                );
                ControlServer::bind(&own, true)
            }
            Err(BindError::Live) => Err(Error::config(format!(
                "control socket {}: another sheepdog is listening on it (set control_socket to run two)",
                path.display()
            ))),
            // The shared directory is not ours (anyone can make a /tmp path
            // first): the control socket is a side channel the flock must
            // not fail for. A private directory of its own instead, which
            // clients look for too.
            Err(BindError::Dir(why)) if !explicit => {
                let name = path
                    .parent()
                    .and_then(Path::file_name)
                    .map_or("sheepdog".into(), |n| n.to_string_lossy().into_owned());
                let fallback = crate::config::fallback_socket_dir()
                    .map_err(|e| Error::config(format!("control socket directory {why}; and {e}")))?;
                let own = fallback.join(name).join("control.sock");
                log::warn!(
                    "control socket directory {why}; using {} instead (`sheepdog status` finds it; to use the \
                     default again, remove that directory, or set XDG_RUNTIME_DIR or control_socket)",
                    own.display()
                );
                let mut server = ControlServer::bind(&own, true)?;
                server.made_dir = Some(fallback);
                Ok(server)
            }
            Err(BindError::Dir(why)) => Err(Error::config(format!("control socket directory {why}"))),
            Err(BindError::Other(e)) => Err(e),
            Ok(listener) => {
                let meta = std::fs::symlink_metadata(path)
                    .map_err(|e| Error::from_io(format!("control socket {}", path.display()), e))?;
                Ok(ControlServer {
                    listener,
                    path: path.to_path_buf(),
                    identity: (meta.dev(), meta.ino()),
                    clients: Clients::new(limits(), 1, Vec::new()),
                    own_uid: nix::unistd::getuid().as_raw(),
                    made_dir: None,
                })
            }
        }
    }

    /// Binds the socket file again if it was removed (a tmp cleaner, an
    /// operator's `rm`): clients find sheepdog by its path. A file another
    /// sheepdog put there since is left alone. True when the listener is
    /// new (the shell watches its fd instead of the old one's).
    pub fn repair(&mut self) -> bool {
        match std::fs::symlink_metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            _ => return false,
        }
        match bind_socket(&self.path) {
            Ok(listener) => {
                let Ok(meta) = std::fs::symlink_metadata(&self.path) else {
                    return false;
                };
                // Anyone who may delete the file can repeat this: bounded.
                if self.clients.complaints.allow(Moment::now()) {
                    warn!("the control socket {} was removed; bound it again", self.path.display());
                }
                self.listener = listener;
                self.identity = (meta.dev(), meta.ino());
                true
            }
            Err(BindError::Live) => false,
            Err(BindError::Dir(e)) => {
                if self.clients.complaints.allow(Moment::now()) {
                    warn!(
                        "the control socket {} was removed and cannot be bound again: {e}",
                        self.path.display()
                    );
                }
                false
            }
            Err(BindError::Other(e)) => {
                if self.clients.complaints.allow(Moment::now()) {
                    warn!(
                        "the control socket {} was removed and cannot be bound again: {e}",
                        self.path.display()
                    );
                }
                false
            }
        }
    }

    /// The path clients reach this server at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn listener_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Accepts the pending connections (up to a budget per pass) of root or
    /// sheepdog's own uid; returns the new clients to watch.
    pub fn accept(&mut self, now: Moment) -> Vec<u64> {
        let own_uid = self.own_uid;
        let listener = &self.listener;
        self.clients.accept(
            now,
            || listener.accept().map(|(stream, _)| stream),
            |stream| {
                let credentials =
                    socket::getsockopt(stream, sockopt::PeerCredentials).map_err(|e| e.desc().to_string())?;
                if credentials.uid() != 0 && credentials.uid() != own_uid {
                    return Err(format!(
                        "refused pid {} of uid {}: only root or uid {own_uid} may control sheepdog",
                        credentials.pid(),
                        credentials.uid(),
                    ));
                }
                Ok(())
            },
            refuse,
        )
    }

    /// Reads what a client sent: its request once a whole line arrived.
    pub fn read(&mut self, id: u64) -> ClientInput {
        let whole = |c: &Client<UnixStream, ()>| {
            if c.answered {
                c.ignored > MAX_AFTER_REQUEST
            } else {
                c.input.contains(&b'\n') || c.input.len() > MAX_REQUEST
            }
        };
        if !self.clients.read(id, whole) {
            // Gone: a reload waiter that hangs up just stops waiting.
            return ClientInput::Gone;
        }
        let Some(client) = self.clients.get_mut(id) else {
            return ClientInput::Gone;
        };
        if client.answered {
            if client.ignored > MAX_AFTER_REQUEST {
                if self.clients.complaints.allow(Moment::now()) {
                    warn!(
                        "control client {id} sent over {MAX_AFTER_REQUEST} bytes after its request; disconnecting it"
                    );
                }
                self.clients.remove(id);
                return ClientInput::Gone;
            }
            return ClientInput::Pending;
        }
        let newline = client.input.iter().position(|b| *b == b'\n');
        // The limit is on the request itself, newline or not yet.
        if newline.unwrap_or(client.input.len()) > MAX_REQUEST {
            let message = format!("request longer than {MAX_REQUEST} bytes");
            client.input = Vec::new();
            if self.clients.complaints.allow(Moment::now()) {
                warn!("control client {id}: {message}; disconnecting it");
            }
            self.reply(id, &Reply::Failed(message));
            return ClientInput::Pending;
        }
        let Some(end) = newline else {
            return ClientInput::Pending;
        };
        client.answered = true;
        let line = std::mem::take(&mut client.input);
        match parse_request(&line[..end]) {
            Ok(command) => ClientInput::Request(command),
            Err(e) => {
                if self.clients.complaints.allow(Moment::now()) {
                    warn!("control client {id}: {e}");
                }
                self.reply(id, &Reply::Failed(e));
                ClientInput::Pending
            }
        }
    }

    /// Sends `reply` and closes the connection once it is written. Returns
    /// true when the reply could not be written at once (watch for writability).
    pub fn reply(&mut self, id: u64, reply: &Reply) -> bool {
        self.clients.send(id, format!("{}\n", reply.encode()).as_bytes())
    }

    /// Disconnects clients that did not send a whole request in time.
    pub fn expire(&mut self, now: Moment) {
        self.clients.expire(now, None, true);
    }

    /// What this server holds, for the binary that takes over: the
    /// listener, and each client with what it sent and what waits for it.
    pub fn export(&self) -> ControlState {
        let clients = self.clients.export(|id, c| ClientState {
            id,
            fd: FdRecord::of(c.stream.as_fd()),
            input: Bytes::new(&c.input),
            output: Bytes::new(&c.output),
            opened: c.opened,
            answered: c.answered,
            closing: c.closing,
            after_request: c.ignored,
        });
        ControlState {
            listener: FdRecord::of(self.listener.as_fd()),
            path: Bytes::path(&self.path),
            identity: self.identity,
            clients,
            next_client: self.clients.next_id(),
            made_dir: self.made_dir.as_deref().map(Bytes::path),
        }
    }

    /// The server `state` describes, on the fds it names, which were
    /// checked (by the reader of the hand-over) and are taken here.
    pub fn adopt(state: ControlState) -> ControlServer {
        // SAFETY: the fds were handed over for this, checked to be open and
        // the same inodes, and each is owned by exactly one adopter.
        let take = |fd: RawFd| unsafe { OwnedFd::from_raw_fd(fd) };
        let clients = state
            .clients
            .into_iter()
            .map(|c| {
                let client = Client {
                    stream: UnixStream::from(take(c.fd.fd)),
                    input: c.input.into_vec(),
                    output: c.output.into_vec(),
                    opened: c.opened,
                    answered: c.answered,
                    closing: c.closing,
                    ignored: c.after_request,
                    extra: (),
                };
                (c.id, client)
            })
            .collect();
        ControlServer {
            listener: UnixListener::from(take(state.listener.fd)),
            path: state.path.to_path(),
            identity: state.identity,
            clients: Clients::new(limits(), state.next_client, clients),
            own_uid: nix::unistd::getuid().as_raw(),
            made_dir: state.made_dir.map(|d| d.to_path()),
        }
    }

    /// Removes the socket file (on exit), if it is still the one bound here:
    /// another sheepdog may have replaced it since.
    pub fn cleanup(&mut self) {
        self.clients.clear();
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.identity => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    warn!("cannot remove the control socket {}: {e}", self.path.display());
                }
            }
            _ => debug!(
                "control socket {} is no longer ours; left in place",
                self.path.display()
            ),
        }
        if let Some(made) = &self.made_dir {
            // Empty by now, unless someone put something there.
            if let Some(name_dir) = self.path.parent() {
                let _ = std::fs::remove_dir(name_dir);
            }
            let _ = std::fs::remove_dir(made);
        }
    }
}

/// Answers a connection that is not admitted with why, and closes it.
fn refuse(mut stream: UnixStream, why: String) {
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(format!("{}\n", Reply::Failed(why).encode()).as_bytes());
}

enum BindError {
    /// A sheepdog answers on that path.
    Live,
    /// The default directory is not a private one of ours: why.
    Dir(String),
    Other(Error),
}

/// Binds a unix socket at `path`, mode 0600, non-blocking, replacing a stale
/// socket file.
fn bind_socket(path: &Path) -> Result<UnixListener, BindError> {
    let describe =
        |e: std::io::Error| BindError::Other(Error::from_io(format!("control socket {}", path.display()), e));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Under the default socket directory: every level ours, and in /tmp
        // closed to everyone else. Elsewhere the operator chose the place.
        let shared_root = crate::config::default_socket_dir();
        if dir.starts_with(&shared_root) {
            let uid = nix::unistd::geteuid().as_raw();
            let closed = if shared_root.starts_with("/tmp") { 0o077 } else { 0o022 };
            for level in [shared_root.as_path(), dir] {
                crate::config::private_dir(level, uid, closed).map_err(BindError::Dir)?;
            }
        } else {
            std::fs::create_dir_all(dir).map_err(describe)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(BindError::Live);
            }
            std::fs::remove_file(path).map_err(describe)?;
        }
        Ok(_) => {
            return Err(BindError::Other(Error::config(format!(
                "control socket {}: the path exists and is not a socket",
                path.display()
            ))));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(describe(e)),
    }
    let listener = UnixListener::bind(path).map_err(describe)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(describe)?;
    listener.set_nonblocking(true).map_err(describe)?;
    Ok(listener)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlState {
    pub listener: FdRecord,
    pub path: Bytes,
    pub identity: (u64, u64),
    pub clients: Vec<ClientState>,
    pub next_client: u64,
    /// A private directory made for the socket (absent from a build before it).
    #[serde(default)]
    pub made_dir: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientState {
    pub id: u64,
    pub fd: FdRecord,
    pub input: Bytes,
    pub output: Bytes,
    pub opened: Moment,
    pub answered: bool,
    pub closing: bool,
    pub after_request: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> (tempfile::TempDir, ControlServer) {
        let dir = tempfile::tempdir().unwrap();
        let server = ControlServer::bind(&dir.path().join("control.sock"), true).unwrap_or_else(|_| panic!("bind"));
        (dir, server)
    }

    /// Accepts the one client that connected.
    fn accept_one(server: &mut ControlServer) -> u64 {
        let deadline = Moment::now() + Duration::from_secs(5);
        loop {
            if let [id] = server.accept(Moment::now())[..] {
                return id;
            }
            assert!(Moment::now() < deadline, "no client");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_client_streaming_after_its_request_is_disconnected() {
        let (_dir, mut server) = server();
        let mut client = UnixStream::connect(server.path()).unwrap();
        client.write_all(b"{\"v\":1,\"cmd\":\"reload\"}\n").unwrap();
        let id = accept_one(&mut server);
        assert_eq!(server.read(id), ClientInput::Request(Command::Reload));
        // A little more is ignored; a stream is not read without end.
        client.write_all(b"\n").unwrap();
        assert_eq!(server.read(id), ClientInput::Pending);
        client.set_nonblocking(true).unwrap();
        let junk = vec![b'x'; 64 * 1024];
        let _ = client.write(&junk);
        assert_eq!(server.read(id), ClientInput::Gone);
        assert!(server.clients.fd(id).is_none());
    }
}
