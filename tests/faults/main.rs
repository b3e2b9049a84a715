//! The fault suite: the real binary, one fault injected at a time while a
//! bounded request loop runs on loopback, and assertions on everything: the
//! supervisor alive (or exited with its documented code), no worker, zombie
//! or fd leaked, no request lost beyond those in flight on a killed worker,
//! and the log saying what happened.
//!
//! The first round's cases are here; each later finding has a module of
//! its own, by theme.

mod backlog;
#[path = "../common/mod.rs"]
mod common;
mod config_reads;
mod handover;
mod oom;
mod small;
mod stalls;
mod upgrade_all;

use std::time::Duration;

use common::*;

pub(crate) const SECOND: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

pub(crate) fn fixture(name: &str) -> String {
    repo_path(&format!("tests/fixtures/{name}")).display().to_string()
}

/// Launches sheepdog on 127.0.0.1:0 with `config` (TOML lines after `command`).
pub(crate) fn launch(command: &[&str], config: &str, env: &[(&str, &str)]) -> (Sheepdog, NotifySocket) {
    launch_from(Launch::new(&[]), command, config, env)
}

/// The same, from a `launch` set up beforehand (a shell prefix, say).
fn launch_from(launch: Launch, command: &[&str], config: &str, env: &[(&str, &str)]) -> (Sheepdog, NotifySocket) {
    let notify = NotifySocket::bind(launch.dir.path());
    let command: Vec<String> = command.iter().map(|c| format!("{c:?}")).collect();
    let env: String = env.iter().map(|(k, v)| format!("{k} = {v:?}\n")).collect();
    let path = launch.file(
        "app.toml",
        &format!(
            "command = [{}]\nlisten = [\"127.0.0.1:0\"]\n{config}\n[env]\n{env}",
            command.join(", ")
        ),
    );
    let launch = launch.env("NOTIFY_SOCKET", notify.path.to_str().unwrap());
    (run(launch, &path), notify)
}

/// `sheepdog run --config PATH` from `launch`.
pub(crate) fn run(mut launch: Launch, path: &std::path::Path) -> Sheepdog {
    launch.args = vec!["run".into(), "--config".into(), path.display().to_string()];
    launch.spawn()
}

/// How many fds a process holds.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn fds_attached_to_notify_datagrams_are_all_closed_and_the_sender_still_known() {
    // 200 FDSTORE=1 datagrams with 9 fds each, then READY=1 with 9 fds: more
    // fds than a small control buffer holds, so a receiver that gives up on a
    // truncated one keeps them (and loses the sender's credentials with them).
    let (mut sheepdog, notify) = launch(
        &["python3", &fixture("fd-passing-worker.py")],
        "readiness = \"notify\"\nworkers = 2\n[heartbeat]\ninterval = \"1s\"\n",
        &[("FLOOD", "200"), ("FDS", "9")],
    );
    let addr = sheepdog.bound_address();
    // READY=1 counts only if its sender's credentials were read.
    notify.messages.wait_for("READY=1", 20 * SECOND);
    let requests = RequestLoop::start(addr);
    requests.wait_successes(50, 10 * SECOND);
    // 3,600 fds were sent; a leak of even one per datagram would show here.
    let held = open_fds(sheepdog.pid());
    assert!(held < 40, "sheepdog holds {held} fds after 3,600 were sent to it");
    let result = requests.stop();
    assert_eq!(result.failed, 0, "{result:?}");
    assert_eq!(sheepdog.logs.count("missed heartbeats"), 0);
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(0));
}

/// CPU seconds a process has used (user + system).
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

#[test]
fn out_of_fds_the_control_socket_neither_spins_nor_floods_the_log_and_status_answers() {
    // A hard fd limit of 48 (so raising the soft one cannot help), then more
    // idle control clients than fit: accept() fails with EMFILE.
    let launch = Launch::new(&[]).shell_prefix("ulimit -n 48");
    let path = launch.file(
        "app.toml",
        &format!(
            "command = [\"node\", {:?}]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\nready_delay = \"200ms\"\n",
            repo_path("examples/hello/server.js")
        ),
    );
    let mut sheepdog = run(launch, &path);
    let addr = sheepdog.bound_address();
    sheepdog.logs.wait_for("ready: 2/2 workers", 10 * SECOND);
    let socket = sheepdog.dir.path().join("control.sock");
    let requests = RequestLoop::start(addr);
    let idle: Vec<_> = (0..80)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    sheepdog.logs.wait_for("Too many open files", 5 * SECOND);
    let cpu_before = cpu_seconds(sheepdog.pid());
    let lines_before = sheepdog.logs.lines().len();
    std::thread::sleep(2 * SECOND);
    let spent = cpu_seconds(sheepdog.pid()) - cpu_before;
    let logged = sheepdog.logs.lines().len() - lines_before;
    assert!(spent < 0.3, "sheepdog spent {spent}s of CPU in 2s while out of fds");
    assert!(logged < 10, "{logged} log lines in 2s while out of fds");
    // An operator's status still gets its answer: an idle client makes room.
    let status = sheepdog_client(&["status", "--socket", socket.to_str().unwrap()], 10 * SECOND);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(String::from_utf8_lossy(&status.stdout).contains("2/2 ready"));
    drop(idle);
    let result = requests.stop();
    assert_eq!(result.failed, 0, "{result:?}");
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(0));
    assert!(sheepdog.logs.count("were not logged") <= 1);
}

#[test]
fn a_stalled_log_reader_does_not_freeze_supervision() {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("app.toml");
    // Python workers: Node would make the stderr it shares with sheepdog
    // non-blocking (libuv does), which hides the fault.
    std::fs::write(
        &config,
        format!(
            "command = [\"python3\", {:?}]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\nreadiness = \"notify\"\n[env]\nFLOOD = \"0\"\nFDS = \"0\"\n",
            fixture("fd-passing-worker.py")
        ),
    )
    .unwrap();
    // sheepdog's stderr is a pipe this test stops reading, as a stuck
    // journald or a paused `| less` would.
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let filler_end = write_end.try_clone().unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUNTIME_DIRECTORY", dir.path())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("JOURNAL_STREAM")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(write_end))
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let _guard = KillOnDrop(pid);
    let mut log = std::fs::File::from(read_end);
    let mut seen = String::new();
    let mut buffer = [0u8; 65536];
    while !seen.contains("ready: 2/2 workers") {
        let n = log.read(&mut buffer).unwrap();
        assert!(n > 0, "sheepdog's stderr closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    let addr: std::net::SocketAddr = seen
        .split(" on ")
        .nth(1)
        .and_then(|after| after.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    // Keep the pipe full: a writer of our own that blocks once it is.
    let stop = Arc::new(AtomicBool::new(false));
    let filler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut out = std::fs::File::from(filler_end);
            let chunk = [b'#'; 4095];
            while !stop.load(Ordering::Relaxed) {
                use std::io::Write;
                if out.write_all(&chunk).and_then(|_| out.write_all(b"\n")).is_err() {
                    break;
                }
            }
        })
    };
    let queued = |fd: i32| {
        let mut n: libc::c_int = 0;
        unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
        n as usize
    };
    let capacity = unsafe { libc::fcntl(log.as_raw_fd(), libc::F_GETPIPE_SZ) } as usize;
    wait_until(5 * SECOND, "the pipe to fill", || {
        queued(log.as_raw_fd()) + 8192 >= capacity
    });

    // Every log line now finds the pipe full. A killed worker is still
    // replaced, status still answers, requests are still served.
    let requests = RequestLoop::start(addr);
    let before = children(pid);
    unsafe { libc::kill(before[0], libc::SIGKILL) };
    wait_until(10 * SECOND, "the killed worker's replacement", || {
        let now = children(pid);
        now.len() == 2 && !now.contains(&before[0])
    });
    let socket = dir.path().join("control.sock");
    let status = sheepdog_client(&["status", "--socket", socket.to_str().unwrap()], 10 * SECOND);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    // A burst of log lines (SIGUSR1 logs the flock, about 1.5 KB) while
    // nothing reads: more than the 1 MiB that waits for a slow reader.
    for _ in 0..2500 {
        unsafe { libc::kill(pid, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_millis(1));
    }
    let result = requests.stop();
    assert_eq!(result.failed, 0, "{result:?}");

    // The reader is back: the count of what was dropped is said.
    stop.store(true, Ordering::Relaxed);
    let (lines, reader) = {
        let lines = Arc::new(std::sync::Mutex::new(String::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 65536];
            while let Ok(n @ 1..) = log.read(&mut buffer) {
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        (lines, reader)
    };
    filler.join().unwrap();
    let said = || lines.lock().unwrap().contains("log lines were dropped");
    let deadline = std::time::Instant::now() + 10 * SECOND;
    while !said() {
        let tail: String = lines.lock().unwrap().chars().rev().take(3000).collect();
        assert!(
            std::time::Instant::now() < deadline,
            "no count of dropped lines; the log ends: {}",
            tail.chars().rev().collect::<String>()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + 10 * SECOND;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(std::time::Instant::now() < deadline, "sheepdog did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(code, Some(0));
    reader.join().unwrap();
    assert!(lines.lock().unwrap().contains("stopped on request"));
}

/// SIGKILLs a sheepdog (and so its workers) that a failed test left running.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

#[test]
fn a_tcp_listener_shut_down_by_a_worker_is_noticed_and_listened_on_again() {
    // An explicit port, as systemd's ListenStream= gives: it survives the
    // shutdown, so listen(2) on the same socket brings the service back.
    let addr = free_port();
    let launch = Launch::new(&[]);
    let path = launch.file(
        "app.toml",
        &format!(
            "command = [\"python3\", {:?}]\nlisten = [\"{addr}\"]\nworkers = 2\nreadiness = \"notify\"\n\
             [env]\nFLOOD = \"0\"\nFDS = \"0\"\nSHUT_DOWN_LISTENER = \"1\"\n",
            fixture("fd-passing-worker.py")
        ),
    );
    let mut sheepdog = run(launch, &path);
    sheepdog.logs.wait_for("ready: 2/2 workers", 10 * SECOND);
    let requests = RequestLoop::start(addr);
    let (shut_at, _) = sheepdog.logs.wait_for("worker 0 shuts the listener down", 10 * SECOND);
    let (noticed_at, line) = sheepdog.logs.wait_for("listening on it again", 5 * SECOND);
    assert!(line.contains(" error "), "said loudly: {line}");
    assert!(
        noticed_at - shut_at < 3 * SECOND,
        "noticed after {:?}",
        noticed_at - shut_at
    );
    // Served again, by the same workers, with nothing restarted.
    let served = requests.snapshot().ok;
    requests.wait_successes(served + 100, 10 * SECOND);
    requests.stop();
    assert_eq!(sheepdog.logs.count("restarting"), 0);
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(0));
}

#[test]
fn a_unix_listener_shut_down_by_a_worker_ends_the_supervisor_with_1() {
    let launch = Launch::new(&[]);
    let socket = launch.dir.path().join("app.sock");
    let path = launch.file(
        "app.toml",
        &format!(
            "command = [\"python3\", {:?}]\nlisten = [\"unix:{}\"]\nworkers = 2\nreadiness = \"notify\"\n\
             [env]\nFLOOD = \"0\"\nFDS = \"0\"\nSHUT_DOWN_LISTENER = \"1\"\n",
            fixture("fd-passing-worker.py"),
            socket.display()
        ),
    );
    let mut sheepdog = run(launch, &path);
    sheepdog.logs.wait_for("ready: 2/2 workers", 10 * SECOND);
    let (shut_at, _) = sheepdog.logs.wait_for("worker 0 shuts the listener down", 10 * SECOND);
    let (noticed_at, line) = sheepdog.logs.wait_for("cannot listen again", 5 * SECOND);
    assert!(line.contains(" error "), "{line}");
    assert!(
        noticed_at - shut_at < 3 * SECOND,
        "noticed after {:?}",
        noticed_at - shut_at
    );
    assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(1));
    let last = sheepdog
        .logs
        .lines()
        .into_iter()
        .rev()
        .find(|l| l.contains("sheepdog["))
        .unwrap();
    assert!(last.contains("no connection can reach the flock"), "{last}");
}

/// A flock of `workers` idle `sleep`s with a notify socket each (sheepdog
/// holds one fd per worker), launched after `ulimit`.
fn sleepers(ulimit: &str, workers: u32) -> Sheepdog {
    let launch = Launch::new(&[]).shell_prefix(ulimit);
    let path = launch.file(
        "app.toml",
        &format!(
            "command = [\"sleep\", \"3600\"]\nlisten = [\"127.0.0.1:0\"]\nworkers = {workers}\n\
             readiness = \"none\"\nchannel = \"notify\"\nready_delay = \"200ms\"\nmax_spawn_rate = 1000\n"
        ),
    );
    run(launch, &path)
}

#[test]
fn a_soft_fd_limit_of_64_does_not_stop_a_flock_of_200_and_workers_get_it_back() {
    // systemd's default is a low soft limit under a high hard one.
    let mut sheepdog = sleepers("ulimit -Sn 64", 200);
    sheepdog.logs.wait_for("ready: 200/200 workers", 20 * SECOND);
    assert!(open_fds(sheepdog.pid()) > 200, "one notify socket per worker");
    let worker = sheepdog.worker_pids()[0];
    let limits = std::fs::read_to_string(format!("/proc/{worker}/limits")).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert_eq!(open_files.split_whitespace().nth(3), Some("64"), "{open_files}");
    assert_eq!(sheepdog.logs.count("could not start"), 0);
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(20 * SECOND).code(), Some(0));
}

#[test]
fn a_flock_that_cannot_fit_under_the_hard_fd_limit_is_refused_with_78() {
    let mut sheepdog = sleepers("ulimit -n 256", 200);
    assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(78));
    let (_, line) = sheepdog.logs.wait_for("file descriptors", SECOND);
    assert!(
        line.contains("200 workers need up to") && line.contains("hard limit of 256"),
        "{line}"
    );
    assert!(sheepdog.worker_pids().is_empty());
    assert_eq!(sheepdog.logs.count("worker 0"), 0, "nothing was started");
}

/// The live processes whose environment holds `marker` (a worker's tree,
/// escaped or not, inherits it).
fn marked(marker: &str) -> Vec<i32> {
    let needle = format!("ESCAPE_MARK={marker}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == needle.as_bytes()))
        })
        .filter(|pid| alive(*pid))
        .collect()
}

#[test]
fn what_escapes_a_workers_process_group_does_not_outlive_it_nor_the_flock() {
    // A setsid daemon from a shell, and a detached Node child: each leaves
    // the worker's process group and holds fd 3, the shared listener.
    let addr = free_port();
    for command in [
        format!(
            "[\"sh\", \"-c\", \"setsid sleep 3600 & exec node {}\"]",
            repo_path("examples/hello/server.js").display()
        ),
        format!("[\"node\", {:?}]", fixture("escaping-worker.js")),
    ] {
        let marker = format!("{}-{}", std::process::id(), command.len());
        let launch = Launch::new(&[]);
        let path = launch.file(
            "app.toml",
            &format!(
                "command = {command}\nlisten = [\"{addr}\"]\nworkers = 2\nready_delay = \"300ms\"\n\
                 [env]\nESCAPE_MARK = \"{marker}\"\n"
            ),
        );
        let mut sheepdog = run(launch, &path);
        sheepdog.logs.wait_for("ready: 2/2 workers", 10 * SECOND);
        let workers = sheepdog.worker_pids();
        let helpers = || -> Vec<i32> { marked(&marker).into_iter().filter(|p| !workers.contains(p)).collect() };
        wait_until(5 * SECOND, "both helpers", || helpers().len() >= 2);
        let requests = RequestLoop::start(addr);
        requests.wait_successes(20, 10 * SECOND);

        // The worker dies; what it started, escaped or not, dies with it.
        let before = helpers();
        unsafe { libc::kill(workers[0], libc::SIGKILL) };
        let (_, line) = sheepdog
            .logs
            .wait_for("left its process group and outlived it", 5 * SECOND);
        assert!(line.contains(&format!("worker pid {}", workers[0])), "{line}");
        wait_until(5 * SECOND, "the first worker's helper gone", || {
            before.iter().filter(|p| alive(**p)).count() == 1
        });
        // The other worker's helper lives on while its worker does.
        wait_until(10 * SECOND, "the replacement", || sheepdog.worker_pids().len() == 2);
        assert_eq!(before.iter().filter(|p| alive(**p)).count(), 1);
        requests.wait_successes(requests.snapshot().ok + 20, 10 * SECOND);
        let result = requests.stop();
        // At most the one request in flight on the SIGKILLed worker.
        assert!(result.failed <= 1, "{result:?}");

        // At exit nothing of the flock is left, and the port is free again.
        sheepdog.signal(libc::SIGTERM);
        assert_eq!(sheepdog.wait_exit(15 * SECOND).code(), Some(0));
        wait_until(5 * SECOND, "no process of the flock left", || {
            marked(&marker).is_empty()
        });
        std::net::TcpListener::bind(addr).expect("the port is free for the next sheepdog");
    }
}

#[test]
fn runtime_files_a_tmp_cleaner_removes_are_made_again() {
    // Senders of both kinds: sdnotify connects once (to the old socket),
    // systemd-notify sends to the path each time (to the one bound again).
    for worker in [
        format!("\"python3\", {:?}", fixture("sdnotify-worker.py")),
        format!("\"sh\", {:?}", fixture("systemd-notify-worker.sh")),
    ] {
        runtime_files_made_again(&worker);
    }
}

fn runtime_files_made_again(worker: &str) {
    // No RUNTIME_DIRECTORY: the notify sockets live under XDG_RUNTIME_DIR
    // (or /tmp), where cleaners remove what looks old.
    let launch = Launch::new(&[]).with_default_paths();
    let xdg = launch.dir.path().join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    let path = launch.file(
        "app.toml",
        &format!(
            "command = [{worker}]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\nreadiness = \"notify\"\n\
             control_socket = \"ctl/control.sock\"\n[heartbeat]\ninterval = \"500ms\"\n"
        ),
    );
    let socket = launch.dir.path().join("ctl/control.sock");
    let launch = launch.env("XDG_RUNTIME_DIR", xdg.to_str().unwrap());
    let mut sheepdog = run(launch, &path);
    sheepdog.logs.wait_for("ready: 2/2 workers", 10 * SECOND);
    let notify_dir = std::fs::read_dir(&xdg)
        .unwrap()
        .flatten()
        .next()
        .expect("the notify directory")
        .path();

    // The cleaner runs: the notify directory, its sockets, the control socket.
    std::fs::remove_dir_all(&notify_dir).unwrap();
    std::fs::remove_file(&socket).unwrap();
    let removed = std::time::Instant::now();
    sheepdog
        .logs
        .wait_for("was removed (a tmp cleaner?); made it again", 3 * SECOND);
    sheepdog.logs.wait_for("the control socket", 3 * SECOND);
    let status = || sheepdog_client(&["status", "--json", "--socket", socket.to_str().unwrap()], 10 * SECOND);
    // The workers' heartbeats (sdnotify sends to the path each time) reach
    // sheepdog again: past their timeout (1.5 s), each heartbeat is fresh.
    wait_until(10 * SECOND, "fresh heartbeats past the timeout", || {
        let out = status();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let fresh = json["workers"]
            .as_array()
            .is_some_and(|w| w.len() == 2 && w.iter().all(|w| w["heartbeat_age_s"].as_f64().is_some_and(|a| a < 1.0)));
        removed.elapsed() > 2500 * MS && fresh
    });
    assert_eq!(
        sheepdog.logs.count("missed heartbeats"),
        0,
        "{:#?}",
        sheepdog.logs.lines()
    );
    // A replacement gets its socket in the directory made again.
    let first = sheepdog.worker_pids()[0];
    unsafe { libc::kill(first, libc::SIGKILL) };
    sheepdog.logs.wait_for_nth("is ready after", 3, 10 * SECOND);
    assert_eq!(sheepdog.logs.count("could not start"), 0);
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(0));
}

#[test]
fn every_signal_from_1_to_31_sent_to_a_fresh_supervisor_does_what_the_manual_says() {
    let name = |signal: i32| {
        let text = unsafe { std::ffi::CStr::from_ptr(libc::strsignal(signal)) };
        format!("{signal} ({})", text.to_string_lossy())
    };
    for signal in 1..=31 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        let launch = Launch::new(&[]);
        let path = launch.file(
            "app.toml",
            "command = [\"sleep\", \"3600\"]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nready_delay = \"100ms\"\n",
        );
        let mut sheepdog = run(launch, &path);
        sheepdog.logs.wait_for("ready: 1/1 workers", 10 * SECOND);
        sheepdog.signal(signal);
        if [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT].contains(&signal) {
            // A graceful stop.
            assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(0), "{}", name(signal));
            assert_eq!(sheepdog.logs.count("stopped on request"), 1, "{}", name(signal));
            continue;
        }
        // Anything else leaves the loop running: it still answers SIGUSR1
        // with the flock's table (the second one, for SIGUSR1 itself: sent
        // once the first is out, since two of one kind can merge into one).
        if signal == libc::SIGUSR1 {
            sheepdog.logs.wait_for("the flock now", 10 * SECOND);
        }
        sheepdog.signal(libc::SIGUSR1);
        let nth = if signal == libc::SIGUSR1 { 2 } else { 1 };
        sheepdog.logs.wait_for_nth("the flock now", nth, 10 * SECOND);
        assert!(alive(sheepdog.pid()), "{}", name(signal));
        let workers = match signal {
            libc::SIGHUP | libc::SIGUSR2 => {
                sheepdog.logs.wait_for("reloaded to generation 2", 10 * SECOND);
                1
            }
            libc::SIGTTIN => 2,
            _ => 1,
        };
        wait_until(
            10 * SECOND,
            &format!("{} workers after {}", workers, name(signal)),
            || sheepdog.worker_pids().len() == workers,
        );
        sheepdog.signal(libc::SIGTERM);
        let status = sheepdog.wait_exit(10 * SECOND);
        assert_eq!(status.code(), Some(0), "{}: {status:?}", name(signal));
    }
}

#[test]
fn absurd_watchdog_values_from_the_environment_neither_spin_nor_stop_the_flock() {
    for (usec, says) in [
        ("0", "ignoring WATCHDOG_USEC=\"0\""),
        ("1", "taken as 20ms"),
        ("18446744073709551614", "outside 20ms to a year"),
        ("soon", "ignoring WATCHDOG_USEC=\"soon\""),
    ] {
        let mut launch = Launch::new(&[]);
        let notify = NotifySocket::bind(launch.dir.path());
        let path = launch.file(
            "app.toml",
            "command = [\"sleep\", \"3600\"]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nready_delay = \"100ms\"\n",
        );
        launch = launch
            .env("NOTIFY_SOCKET", notify.path.to_str().unwrap())
            .env("WATCHDOG_USEC", usec);
        let mut sheepdog = run(launch, &path);
        sheepdog.logs.wait_for(says, 5 * SECOND);
        notify.messages.wait_for("READY=1", 10 * SECOND);
        let cpu = cpu_seconds(sheepdog.pid());
        let pings = notify.messages.count("WATCHDOG=1");
        let started = std::time::Instant::now();
        // One second of supervision: bounded pings, next to no CPU.
        sheepdog.signal(libc::SIGUSR1);
        sheepdog.logs.wait_for("the flock now", 5 * SECOND);
        wait_until(5 * SECOND, "a second", || started.elapsed() >= SECOND);
        let pinged = notify.messages.count("WATCHDOG=1") - pings;
        assert!(pinged <= 110, "WATCHDOG_USEC={usec}: {pinged} pings in a second");
        let spent = cpu_seconds(sheepdog.pid()) - cpu;
        assert!(spent < 0.3, "WATCHDOG_USEC={usec}: {spent}s of CPU in a second");
        sheepdog.signal(libc::SIGTERM);
        assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(0), "WATCHDOG_USEC={usec}");
    }
}

#[test]
fn a_runtime_directory_that_cannot_be_one_is_ignored_with_a_warning() {
    let launch = Launch::new(&[]);
    let xdg = launch.dir.path().join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    let path = launch.file(
        "app.toml",
        &format!(
            "command = [\"python3\", {:?}]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\nreadiness = \"notify\"\n\
             control_socket = \"control.sock\"\n[heartbeat]\ninterval = \"500ms\"\n",
            fixture("sdnotify-worker.py")
        ),
    );
    let launch = launch
        .env("RUNTIME_DIRECTORY", "relative/run")
        .env("XDG_RUNTIME_DIR", xdg.to_str().unwrap());
    let mut sheepdog = run(launch, &path);
    sheepdog.logs.wait_for(
        "ignoring RUNTIME_DIRECTORY=\"relative/run\": not an absolute path",
        5 * SECOND,
    );
    sheepdog.logs.wait_for("ready: 2/2 workers", 10 * SECOND);
    // The notify sockets went to XDG_RUNTIME_DIR, not below the working directory.
    assert!(std::fs::read_dir(&xdg).unwrap().count() == 1);
    assert!(!sheepdog.dir.path().join("relative").exists());
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(0));
}

/// A flock of `workers` Node hello servers, each started by `sh -c` after
/// `before` (a shell command run in the worker's background).
fn hello_flock(workers: u32, before: &str, setup: impl FnOnce(Launch) -> Launch) -> Sheepdog {
    let launch = setup(Launch::new(&[]));
    let path = launch.file(
        "app.toml",
        &format!(
            "command = [\"sh\", \"-c\", \"{before} exec node {}\"]\nlisten = [\"127.0.0.1:0\"]\nworkers = {workers}\n\
             ready_delay = \"300ms\"\n",
            repo_path("examples/hello/server.js").display()
        ),
    );
    run(launch, &path)
}

#[test]
fn a_supervisor_stopped_longer_than_a_heartbeat_timeout_spares_its_workers_once_continued() {
    let launch = Launch::new(&[]);
    let path = launch.file(
        "app.toml",
        &format!(
            "command = [\"python3\", {:?}]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\nreadiness = \"notify\"\n\
             [heartbeat]\ninterval = \"300ms\"\n[env]\nFLOOD = \"0\"\nFDS = \"0\"\n",
            fixture("fd-passing-worker.py")
        ),
    );
    let mut sheepdog = run(launch, &path);
    let addr = sheepdog.bound_address();
    sheepdog.logs.wait_for("ready: 2/2 workers", 10 * SECOND);
    let workers = sheepdog.worker_pids();
    let requests = RequestLoop::start(addr);
    requests.wait_successes(20, 10 * SECOND);
    // Stopped for twice the heartbeat timeout (900 ms): the workers serve on.
    sheepdog.signal(libc::SIGSTOP);
    let served = requests.snapshot().ok;
    requests.wait_successes(served + 200, 10 * SECOND);
    let stopped = std::time::Instant::now();
    wait_until(5 * SECOND, "1.8 s stopped", || stopped.elapsed() >= 1800 * MS);
    sheepdog.signal(libc::SIGCONT);
    sheepdog.signal(libc::SIGUSR1);
    sheepdog.logs.wait_for("the flock now", 5 * SECOND);
    let result = requests.stop();
    assert_eq!(result.failed, 0, "{result:?}");
    assert_eq!(
        sheepdog.logs.count("missed heartbeats"),
        0,
        "the silence was sheepdog's own"
    );
    assert_eq!(sheepdog.worker_pids(), workers);
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(0));
}

#[test]
fn fifty_sighups_under_load_lose_nothing() {
    let mut sheepdog = hello_flock(2, "", |l| l);
    let addr = sheepdog.bound_address();
    sheepdog.logs.wait_for("ready: 2/2 workers", 10 * SECOND);
    let requests = RequestLoop::start(addr);
    requests.wait_successes(20, 10 * SECOND);
    for _ in 0..50 {
        sheepdog.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(5));
    }
    // The first roll runs; the others are refused while it does (or merge).
    sheepdog.logs.wait_for("reloaded to generation 2", 20 * SECOND);
    let socket = sheepdog.dir.path().join("control.sock");
    let status = sheepdog_client(&["status", "--socket", socket.to_str().unwrap()], 10 * SECOND);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let result = requests.stop();
    assert_eq!(result.failed, 0, "{result:?}");
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(15 * SECOND).code(), Some(0));
}

#[test]
fn a_ten_megabyte_control_line_and_a_worker_blocked_on_a_full_pipe_change_nothing() {
    use std::io::Write;
    // The workers' stdout is a FIFO nobody reads, and each worker floods it
    // (`yes` in its process group): the flooders block there, in their own
    // processes; sheepdog logs to stderr and never waits on it.
    let mut sheepdog = hello_flock(2, "yes flooding the unread pipe &", |l| {
        l.shell_prefix("mkfifo out.fifo && exec 1<>out.fifo")
    });
    let addr = sheepdog.bound_address();
    sheepdog.logs.wait_for("ready: 2/2 workers", 10 * SECOND);
    let requests = RequestLoop::start(addr);
    requests.wait_successes(20, 10 * SECOND);
    let socket = sheepdog.dir.path().join("control.sock");
    let mut client = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    client.set_write_timeout(Some(5 * SECOND)).unwrap();
    let line = vec![b'x'; 10 * 1024 * 1024];
    let _ = client.write_all(&line); // cut off part way: that is the point
    let (_, said) = sheepdog.logs.wait_for("request longer than 65536 bytes", 5 * SECOND);
    assert!(said.contains("disconnecting"), "{said}");
    let status = sheepdog_client(&["status", "--socket", socket.to_str().unwrap()], 10 * SECOND);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let result = requests.stop();
    assert_eq!(result.failed, 0, "{result:?}");
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(15 * SECOND).code(), Some(0));
}

#[test]
fn a_log_file_at_its_size_limit_loses_lines_not_the_flock() {
    // stderr to a file under `ulimit -f` (as LimitFSIZE= would): a write past
    // the limit raises SIGXFSZ (which would kill sheepdog, exit 153) and
    // fails with EFBIG.
    let server = repo_path("examples/hello/server.js").display().to_string();
    let (mut sheepdog, notify) = launch_from(
        Launch::new(&[]).shell_prefix("ulimit -f 2; exec 2>log.txt"),
        &["node", &server],
        "workers = 2\nready_delay = \"300ms\"\n",
        &[],
    );
    notify.messages.wait_for("READY=1", 10 * SECOND);
    let log = sheepdog.dir.path().join("log.txt");
    // Lines past the limit: the flock's table, again and again.
    for _ in 0..20 {
        sheepdog.signal(libc::SIGUSR1);
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_until(5 * SECOND, "the log file at its limit", || {
        std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) >= 1024
    });
    // Still supervising: a killed worker is replaced (a STATUS= follows).
    let before = sheepdog.worker_pids();
    unsafe { libc::kill(before[0], libc::SIGKILL) };
    wait_until(10 * SECOND, "the replacement", || {
        let now = sheepdog.worker_pids();
        now.len() == 2 && !now.contains(&before[0])
    });
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(0), "not killed by SIGXFSZ");
    assert!(std::fs::metadata(&log).unwrap().len() <= 2048);
}
