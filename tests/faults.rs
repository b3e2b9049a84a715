//! The fault suite: the real binary, one fault injected at a time while a
//! bounded request loop runs on loopback, and assertions on everything: the
//! supervisor alive (or exited with its documented code), no worker, zombie
//! or fd leaked, no request lost beyond those in flight on a killed worker,
//! and the log saying what happened.

mod common;

use std::time::Duration;

use common::*;

const SECOND: Duration = Duration::from_secs(1);

fn fixture(name: &str) -> String {
    repo_path(&format!("tests/fixtures/{name}")).display().to_string()
}

/// Launches sheepdog on 127.0.0.1:0 with `config` (TOML lines after `command`).
fn launch(command: &[&str], config: &str, env: &[(&str, &str)]) -> (Sheepdog, NotifySocket) {
    let launch = Launch::new(&[]);
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
    let mut launch = launch.env("NOTIFY_SOCKET", notify.path.to_str().unwrap());
    launch.args = vec!["run".into(), "--config".into(), path.display().to_string()];
    (launch.spawn(), notify)
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
    let mut launch = launch;
    launch.args = vec!["run".into(), "--config".into(), path.display().to_string()];
    let mut sheepdog = launch.spawn();
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
