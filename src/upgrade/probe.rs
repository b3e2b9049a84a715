//! Before handing over, the running supervisor asks the binary installed at
//! its path what it is: `sheepdog upgrade-probe` prints one JSON line with
//! its version and the state format it reads. A binary that cannot be
//! executed, exits without that line, or takes too long is refused before
//! anything changes: this is what keeps a broken package from taking a
//! flock down.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
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

/// The binary at `path`, opened once: what is probed is what is exec'd,
/// whatever is installed at the path in between.
pub struct Opened {
    pub file: OwnedFd,
}

/// Opens `path` and checks it can be the next sheepdog: an ELF executable.
/// A script is refused here, not run: only a sheepdog binary can take the
/// flock over, and a wrapper that answers the probe (by exec'ing one) but
/// does something else when run (exits 0, forks instead of exec'ing) would
/// end the flock without a failure systemd could see.
pub fn open(path: &Path) -> Result<Opened, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot open {shown}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot open {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    let mut magic = [0u8; 4];
    let is_elf = std::os::unix::fs::FileExt::read_exact_at(&file, &mut magic, 0).is_ok() && magic == *b"\x7fELF";
    if !is_elf {
        let what = if magic.starts_with(b"#!") {
            "a script (#!)"
        } else {
            "not an ELF executable"
        };
        return Err(format!(
            "{shown} is {what}: only the sheepdog binary itself can take a flock over in place \
             (a wrapper cannot); restart the service to run it (systemctl restart)"
        ));
    }
    Ok(Opened { file: file.into() })
}

/// Runs the binary open at `opened` (found at `path`) as `path
/// upgrade-probe` and reads its answer, within `timeout`. It runs in a
/// process group of its own, which is killed when the probe ends or is
/// out of time: nothing it started is left behind.
pub fn probe(path: &Path, opened: &Opened, timeout: Duration) -> Result<Successor, String> {
    use std::os::unix::process::CommandExt;
    let shown = path.display();
    let deadline = Instant::now() + timeout;
    // /proc/self/fd/N is resolved in the child before its close-on-exec
    // fds are closed: the open file itself runs.
    let program = format!("/proc/self/fd/{}", opened.file.as_raw_fd());
    let mut child = Command::new(&program)
        .arg0(path)
        .arg("upgrade-probe")
        .env_clear()
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot execute {shown}: {e}"))?;
    let group = child.id() as i32;
    let (output, finished) = read_until(&mut child, deadline);
    let sweep = || {
        // SAFETY: kill(2) of the probe's own process group.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    };
    let status = match finished {
        Some(status) => {
            sweep();
            status
        }
        None => {
            sweep();
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
            version: crate::text::printable(&successor.version).chars().take(100).collect(),
            ..successor
        }),
        _ => {
            let mut stderr = String::new();
            if let Some(err) = child.stderr.take() {
                // Whatever it left holding the pipe, this read does not wait.
                let _ = nix::fcntl::fcntl(&err, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
                let _ = err.take(MAX_ANSWER as u64).read_to_string(&mut stderr);
            }
            let said = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            let said = if said.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    crate::text::printable(&said.chars().take(200).collect::<String>())
                )
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
