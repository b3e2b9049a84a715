//! The control socket's client side: finding the running sheepdog a command
//! means, and one request with its reply.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{Command, Reply, StatusReport, encode_request};
use crate::config::{ClientTarget, default_socket_dir};

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
                    status,
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
            let found = running(&discover(&dir));
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

/// Sends one request and waits for its reply.
pub fn request(socket: &Path, command: &Command, timeout: Option<Duration>) -> Result<Reply, NoReply> {
    use NoReply::{Failed, TimedOut};
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        Failed(format!(
            "cannot connect to {}: {e} (is sheepdog running with this config?)",
            socket.display()
        ))
    })?;
    stream.set_read_timeout(timeout).map_err(|e| Failed(e.to_string()))?;
    stream
        .write_all(format!("{}\n", encode_request(command)).as_bytes())
        .map_err(|e| Failed(format!("cannot send the request: {e}")))?;
    let mut line = Vec::new();
    match BufReader::new(&stream).read_until(b'\n', &mut line) {
        Ok(0) => Err(Failed("sheepdog closed the connection without a reply".into())),
        Ok(_) => Reply::decode(&line).map_err(Failed),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            Err(TimedOut(format!(
                "no reply within {}",
                crate::units::format_duration(timeout.unwrap_or_default())
            )))
        }
        Err(e) => Err(Failed(format!("cannot read the reply: {e}"))),
    }
}
