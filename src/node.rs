//! The Node kit: what lets a Node app written for `node app.js`, pm2 or a
//! cluster master run under sheepdog unchanged. For a Node command sheepdog
//! loads its preload into each worker (`NODE_OPTIONS=--require …`: `listen(3000)`
//! takes the passed socket, SIGTERM reaches an app that handles only SIGINT),
//! gives it an IPC channel (`process.send` exists, as under pm2) and makes it
//! a cluster worker (`NODE_UNIQUE_ID`: a seed-style master runs its worker
//! branch); run by hand with no address, it first asks the app which port it
//! listens on ([`probe_port`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::config::ListenAddr;

/// The preload, as built into this binary (`node/listen.js`).
pub const PRELOAD: &str = include_str!("../node/listen.js");

/// Where the package installs it.
pub const PACKAGED_PRELOAD: &str = "/usr/share/sheepdog/node/listen.js";

/// Programs that run Node, whose `NODE_OPTIONS` the preload rides on: node
/// itself and the usual launchers (which exec or fork node with the same
/// environment).
const NODE_PROGRAMS: [&str; 8] = ["node", "nodejs", "npm", "npx", "yarn", "pnpm", "tsx", "ts-node"];

/// Whether `command` runs Node: its program is one of [`NODE_PROGRAMS`]
/// (by file name: `/usr/bin/node`, `node20` is not).
pub fn is_node_command(command: &[String]) -> bool {
    command.first().is_some_and(|program| {
        let name = Path::new(program).file_name().and_then(|n| n.to_str()).unwrap_or("");
        NODE_PROGRAMS.contains(&name)
    })
}

/// The preload's path on this machine: the packaged file when it is this
/// very text, else a copy written once into a directory of sheepdog's own
/// user (nobody else may change code that runs in the workers).
pub fn preload_path() -> Result<PathBuf, String> {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PATH.get_or_init(|| {
        if std::fs::read(PACKAGED_PRELOAD).is_ok_and(|text| text == PRELOAD.as_bytes()) {
            return Ok(PathBuf::from(PACKAGED_PRELOAD));
        }
        write_preload()
    })
    .clone()
}

fn write_preload() -> Result<PathBuf, String> {
    let uid = nix::unistd::geteuid().as_raw();
    // The service's own runtime directory, else where control sockets go.
    let dir = crate::config::env_dir("RUNTIME_DIRECTORY").unwrap_or_else(crate::config::default_socket_dir);
    let closed = if dir.starts_with("/tmp") { 0o077 } else { 0o022 };
    let dir = match crate::config::private_dir(&dir, uid, closed) {
        Ok(()) => dir,
        Err(_) => crate::config::fallback_socket_dir()?,
    };
    // Named by its text: a sheepdog of another version beside this one
    // keeps its own.
    let path = dir.join(format!("node-preload-{:016x}.js", fnv1a(PRELOAD.as_bytes())));
    if std::fs::read(&path).is_ok_and(|text| text == PRELOAD.as_bytes()) {
        return Ok(path);
    }
    let temporary = dir.join(format!(".node-preload.{}", std::process::id()));
    // Under a file size limit (LimitFSIZE=) the write fails with EFBIG
    // rather than killing sheepdog with SIGXFSZ, whose handler may not be
    // in place yet.
    // SAFETY: signal(2) swaps a disposition; the previous one is put back.
    let previous = unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let written = std::fs::write(&temporary, PRELOAD).and_then(|()| std::fs::rename(&temporary, &path));
    // SAFETY: as above.
    unsafe { libc::signal(libc::SIGXFSZ, previous) };
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(format!("cannot write the Node preload to {}: {e}", path.display()));
    }
    Ok(path)
}

/// FNV-1a, 64 bits: a name for the preload's text, not a secret.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `NODE_OPTIONS` with the preload required first, before whatever the
/// workers' environment (`[env]`, or sheepdog's own) asks for.
pub fn add_preload(env: &mut BTreeMap<String, String>, inherited: Option<String>, preload: &Path) {
    let require = format!("--require {}", quote(&preload.display().to_string()));
    let options = match env.get("NODE_OPTIONS").cloned().or(inherited) {
        Some(options) if !options.trim().is_empty() => format!("{require} {options}"),
        _ => require,
    };
    env.insert("NODE_OPTIONS".into(), options);
}

/// A path as NODE_OPTIONS reads it: double quotes when it has a space.
fn quote(path: &str) -> String {
    if path.contains([' ', '"', '\\']) {
        format!("\"{}\"", path.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        path.to_string()
    }
}

/// How long the app may take to call `listen(port)` when asked for its port.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`probe_port`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Probed {
    /// The app called `listen(port[, host])`: the address to bind for it.
    Listens(ListenAddr),
    /// It did not, and why (exited, took too long, listened otherwise).
    Nothing(String),
}

/// Runs the command once, with the preload asked to report the first
/// `listen(port[, host])` and end the process there: the address the app
/// would bind, to bind for all the workers. Its output is discarded (the
/// workers show theirs); its process group is killed whatever happens.
pub fn probe_port(
    command: &[String],
    env: &BTreeMap<String, String>,
    working_directory: Option<&Path>,
    timeout: Duration,
    user: Option<(u32, u32)>,
) -> Result<Probed, String> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let write_raw = write.as_raw_fd();
    let mut child = Command::new(&command[0]);
    child
        .args(&command[1..])
        .envs(env)
        .env("SHEEPDOG_PORT_PROBE", "3")
        // A cluster master takes its worker branch, as in the workers.
        .env("NODE_UNIQUE_ID", "1")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(dir) = working_directory {
        child.current_dir(dir);
    }
    if let Some((uid, gid)) = user {
        child.uid(uid).gid(gid);
    }
    // SAFETY: between fork and exec only async-signal-safe calls: setpgid
    // and dup2 (which clears FD_CLOEXEC on the copy).
    unsafe {
        child.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 || libc::dup2(write_raw, 3) != 3 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut process = child
        .spawn()
        .map_err(|e| format!("cannot start `{}`: {e}", command.join(" ")))?;
    drop(write);
    let pid = process.id() as i32;
    let found = read_report(read, timeout);
    // SAFETY: kill has no memory effects; the group is the probe's own.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let status = process.wait().map_err(|e| format!("waitpid: {e}"))?;
    Ok(match found {
        Report::Line(line) => parse_report(&line),
        Report::Closed => Probed::Nothing(format!(
            "it ended ({}) before it called listen(port)",
            describe_status(status)
        )),
        Report::TimedOut => Probed::Nothing(format!("it did not call listen(port) within {}s", timeout.as_secs())),
    })
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (_, Some(signal)) => format!("signal {signal}"),
        _ => "unknown".into(),
    }
}

enum Report {
    Line(String),
    /// Every writer closed the pipe: the app ended.
    Closed,
    TimedOut,
}

/// The first line on the pipe, or none when the writers all closed it (the
/// app ended) or the time is up.
fn read_report(read: OwnedFd, timeout: Duration) -> Report {
    let deadline = Instant::now() + timeout;
    let mut file = std::fs::File::from(read);
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Report::TimedOut;
        }
        let mut poll = [libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(poll.as_mut_ptr(), 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if ready <= 0 {
            continue;
        }
        let mut buffer = [0u8; 512];
        match file.read(&mut buffer) {
            Ok(0) => return Report::Closed,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Report::Closed,
            Ok(n) => line.extend_from_slice(&buffer[..n]),
        }
        if let Some(end) = line.iter().position(|b| *b == b'\n') {
            return Report::Line(String::from_utf8_lossy(&line[..end]).into_owned());
        }
        if line.len() > 4096 {
            return Report::Line(String::from_utf8_lossy(&line).into_owned());
        }
    }
}

/// `{"port":3000,"host":null}` → `[::]:3000` (Node's own default: every
/// address, IPv6 and IPv4); a host is taken as Node would bind it.
fn parse_report(line: &str) -> Probed {
    #[derive(serde::Deserialize)]
    struct Report {
        port: u16,
        host: Option<String>,
    }
    let Ok(report) = serde_json::from_str::<Report>(line) else {
        return Probed::Nothing(format!(
            "it said something unexpected: {:?}",
            crate::text::printable(line)
        ));
    };
    let host = report.host.unwrap_or_default();
    match crate::config::resolve_host(&host, report.port) {
        Ok(address) => Probed::Listens(ListenAddr::Tcp(address)),
        Err(why) => Probed::Nothing(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_commands_are_known_by_their_program() {
        let cmd = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert!(is_node_command(&cmd(&["node", "app.js"])));
        assert!(is_node_command(&cmd(&["/usr/bin/node", "app.js"])));
        assert!(is_node_command(&cmd(&["npm", "start"])));
        assert!(!is_node_command(&cmd(&["python3", "app.py"])));
        assert!(!is_node_command(&cmd(&["sh", "-c", "node app.js"])));
        assert!(!is_node_command(&[]));
    }

    #[test]
    fn the_preload_comes_first_in_node_options() {
        let preload = Path::new("/run/sheepdog/node-preload.js");
        let mut env = BTreeMap::new();
        add_preload(&mut env, None, preload);
        assert_eq!(env["NODE_OPTIONS"], "--require /run/sheepdog/node-preload.js");
        let mut env = BTreeMap::from([("NODE_OPTIONS".to_string(), "--max-old-space-size=512".to_string())]);
        add_preload(&mut env, Some("--inspect".into()), preload);
        assert_eq!(
            env["NODE_OPTIONS"], "--require /run/sheepdog/node-preload.js --max-old-space-size=512",
            "[env] wins over what sheepdog inherited"
        );
        let mut env = BTreeMap::new();
        add_preload(&mut env, Some("--inspect".into()), Path::new("/a b/p.js"));
        assert_eq!(env["NODE_OPTIONS"], "--require \"/a b/p.js\" --inspect");
    }

    #[test]
    fn a_report_is_the_address_node_would_bind() {
        assert_eq!(
            parse_report(r#"{"port":3000,"host":null}"#),
            Probed::Listens("[::]:3000".parse().unwrap())
        );
        assert_eq!(
            parse_report(r#"{"port":3000,"host":"127.0.0.1"}"#),
            Probed::Listens("127.0.0.1:3000".parse().unwrap())
        );
        assert_eq!(
            parse_report(r#"{"port":3000,"host":"localhost"}"#),
            Probed::Listens("127.0.0.1:3000".parse().unwrap())
        );
        assert!(matches!(parse_report("{\"port\":70000}"), Probed::Nothing(_)));
        assert!(matches!(parse_report("\u{1b}[2J"), Probed::Nothing(why) if !why.contains('\u{1b}')));
    }
}
