//! Before handing over, the running supervisor asks the binary installed at
//! its path what it is: `sheepdog upgrade-probe` prints one JSON line with
//! its version and the state format it reads. A binary that cannot be
//! executed, exits without that line, or takes too long is refused before
//! anything changes: this is what keeps a broken package from taking a
//! flock down.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What the new binary says it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Successor {
    #[serde(skip)]
    pub path: PathBuf,
    #[serde(rename = "sheepdog")]
    pub version: String,
    pub state_format: u32,
}

/// The most a probe may print.
const MAX_ANSWER: usize = 4096;

/// `sheepdog upgrade-probe`: what this build is, for a supervisor about to
/// hand over to it.
pub fn answer() -> ExitCode {
    let build = crate::build::current();
    let me = Successor {
        path: PathBuf::new(),
        version: build.version.to_string(),
        state_format: build.state_format,
    };
    println!("{}", serde_json::to_string(&me).unwrap_or_default());
    ExitCode::SUCCESS
}

/// Runs `path upgrade-probe` and reads its answer, within `timeout`.
pub fn probe(path: &Path, timeout: Duration) -> Result<Successor, String> {
    let shown = path.display();
    let deadline = Instant::now() + timeout;
    let mut child = Command::new(path)
        .arg("upgrade-probe")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot execute {shown}: {e}"))?;
    let (output, finished) = read_until(&mut child, deadline);
    let status = match finished {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{shown} did not answer its probe within {}",
                crate::units::format_duration(timeout)
            ));
        }
    };
    let line = String::from_utf8_lossy(&output);
    let line = line.lines().next().unwrap_or("").trim();
    match serde_json::from_str::<Successor>(line) {
        Ok(successor) if status.success() => Ok(Successor {
            path: path.to_path_buf(),
            ..successor
        }),
        _ => {
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut stderr);
            }
            let said = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            let said = if said.is_empty() {
                String::new()
            } else {
                format!(": {}", said.chars().take(200).collect::<String>())
            };
            Err(format!(
                "{shown} is not a sheepdog that can take over ({status}, no answer to its probe{said})"
            ))
        }
    }
}

/// The probe's stdout up to `deadline`, and its exit status if it ended.
fn read_until(child: &mut std::process::Child, deadline: Instant) -> (Vec<u8>, Option<std::process::ExitStatus>) {
    let mut output = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        let fd = stdout.as_raw_fd();
        let mut buffer = [0u8; 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut ready = [libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: one pollfd, alive for the call.
            let n = unsafe { libc::poll(ready.as_mut_ptr(), 1, left.as_millis().min(60_000) as i32) };
            if n == 0 {
                return (output, None);
            }
            if n < 0 {
                if nix::errno::Errno::last() == nix::errno::Errno::EINTR {
                    continue;
                }
                break;
            }
            match stdout.read(&mut buffer) {
                Ok(0) => break,
                Ok(got) if output.len() < MAX_ANSWER => output.extend_from_slice(&buffer[..got]),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    // Its stdout is closed: it exits now, or is made to at the deadline.
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (output, Some(status)),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            _ => return (output, None),
        }
    }
}
