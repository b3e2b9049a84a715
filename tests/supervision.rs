//! The real binary with real workers on real sockets: socket activation,
//! readiness upward, replacement, crash loops, stop escalation, fd hygiene.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use common::*;

const SECOND: Duration = Duration::from_secs(1);

fn hello_config(launch: &Launch, extra: &str) -> String {
    let server = repo_path("examples/hello/server.js");
    launch
        .file(
            "sheepdog.toml",
            &format!(
                "command = [\"node\", {server:?}]\nworkers = 2\nready_delay = \"500ms\"\nstop_timeout = \"5s\"\n{extra}"
            ),
        )
        .display()
        .to_string()
}

#[test]
fn socket_activated_node_workers_serve_report_ready_and_stop_cleanly() {
    let addr = free_port();
    let launch = Launch::new(&[]);
    let notify = NotifySocket::bind(launch.dir.path());
    let config = hello_config(&launch, "");
    let mut launch = launch
        .activated(addr)
        .env("NOTIFY_SOCKET", notify.path.to_str().unwrap());
    launch.args = vec!["run".into(), "--config".into(), config];
    let mut sheepdog = launch.spawn();
    sheepdog.logs.wait_for("Listening on", 10 * SECOND);

    // As with systemd: the first connection starts sheepdog, and that request
    // waits in the socket's backlog until a worker accepts it.
    let first = get(addr, 20 * SECOND).expect("the first request is answered");
    assert_eq!(first.status, 200);
    notify.messages.wait_for("READY=1", 10 * SECOND);
    // READY=1 is sent in the pass that logs "ready: 2/2 workers": measure the
    // gating on sheepdog's own clock, from the spawn to that line.
    let (_, spawned) = sheepdog.logs.wait_for("2 workers of `node", 5 * SECOND);
    let (_, ready) = sheepdog.logs.wait_for("ready: 2/2 workers", 5 * SECOND);
    let waited = logged_at(&ready).saturating_sub(logged_at(&spawned));
    assert!(
        waited >= Duration::from_millis(500),
        "READY=1 came {waited:?} after the spawn, before ready_delay"
    );
    let statuses: Vec<String> = notify
        .messages
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("STATUS="))
        .collect();
    assert!(
        statuses.contains(&"STATUS=0/2 ready · 0 restarts".to_string()),
        "{statuses:?}"
    );
    notify.messages.wait_for("STATUS=2/2 ready · 0 restarts", 5 * SECOND);

    // A burst of new connections: both workers accept on the shared socket.
    let mut pids = HashSet::new();
    let mut ids = BTreeSet::new();
    for _ in 0..300 {
        let response = get(addr, 5 * SECOND).expect("request");
        assert_eq!(response.status, 200);
        let (id, pid) = response.worker();
        pids.insert(pid);
        ids.insert(id);
    }
    assert_eq!(pids.len(), 2, "both workers answered: {pids:?}");
    assert_eq!(ids, BTreeSet::from(["0".to_string(), "1".to_string()]));
    let workers = sheepdog.worker_pids();
    assert_eq!(workers.iter().copied().collect::<HashSet<_>>(), pids);

    let stop_sent = Instant::now();
    sheepdog.signal(libc::SIGTERM);
    let status = sheepdog.wait_exit(5 * SECOND);
    assert_eq!(status.code(), Some(0), "logs: {:#?}", sheepdog.logs.lines());
    assert!(stop_sent.elapsed() < 5 * SECOND);
    notify.messages.wait_for("STOPPING=1", SECOND);
    for pid in workers {
        assert!(!alive(pid), "worker {pid} outlived sheepdog");
    }
}

#[test]
fn sockets_passed_to_a_wrapper_that_forks_sheepdog_are_left_to_the_wrapper() {
    // systemd-socket-activate passes the socket (named, as systemd always
    // does) to sh, whose pid LISTEN_PID names; sh forks sheepdog. As
    // sd_listen_fds(3) does, sheepdog leaves them alone and binds its own.
    let addr = free_port();
    let mut launch = Launch::new(&[]).activated(addr).shell_prefix("true");
    launch.args = ["run", "--workers", "1", "--listen", "127.0.0.1:0", "--", "sleep", "600"]
        .map(String::from)
        .to_vec();
    let sheepdog = launch.spawn();
    sheepdog.logs.wait_for("Listening on", 10 * SECOND);
    // The first connection starts the wrapper; nobody accepts it.
    let _knock = std::net::TcpStream::connect_timeout(&addr, 5 * SECOND).unwrap();
    let (_, line) = sheepdog.logs.wait_for("(bound by sheepdog)", 10 * SECOND);
    assert!(!line.contains(&addr.to_string()), "{line}");
    sheepdog.logs.wait_for("ready: 1/1 workers", 10 * SECOND);
    assert_eq!(sheepdog.logs.count("LISTEN_FDNAMES"), 0, "{:#?}", sheepdog.logs.lines());
}

#[test]
fn listen_fds_for_another_pid_are_ignored_whatever_their_names() {
    let launch = Launch::new(&[])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDNAMES", "x");
    let mut launch = launch;
    launch.args = ["run", "--workers", "1", "--listen", "127.0.0.1:0", "--", "sleep", "600"]
        .map(String::from)
        .to_vec();
    let sheepdog = launch.spawn();
    sheepdog.logs.wait_for("(bound by sheepdog)", 10 * SECOND);
    sheepdog.logs.wait_for("ready: 1/1 workers", 10 * SECOND);
}

#[test]
fn a_killed_worker_is_replaced_in_its_slot_while_requests_keep_succeeding() {
    let launch = Launch::new(&[]);
    let config = hello_config(&launch, "backoff_initial = \"100ms\"\n");
    let mut launch = launch;
    launch.args = vec![
        "run".into(),
        "--config".into(),
        config,
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    let sheepdog = launch.spawn();
    let addr = sheepdog.bound_address();
    sheepdog.logs.wait_for("ready: 2/2 workers", 10 * SECOND);

    let requests = RequestLoop::start(addr);
    requests.wait_successes(50, 10 * SECOND);
    // Find the pid answering as worker 1, then SIGKILL it.
    let victim = loop {
        let r = get(addr, 5 * SECOND).unwrap();
        if r.worker().0 == "1" {
            break r.worker().1;
        }
    };
    unsafe { libc::kill(victim, libc::SIGKILL) };
    sheepdog
        .logs
        .wait_for(&format!("worker 1 (pid {victim}) was killed by SIGKILL"), 5 * SECOND);
    // A first failure is refilled at once, as pm2 and unicorn do.
    sheepdog
        .logs
        .wait_for(&format!("(pid {victim}) was killed by SIGKILL after"), SECOND);
    sheepdog.logs.wait_for("; restarting it now", SECOND);

    // A new pid answers as worker 1.
    let deadline = Instant::now() + 10 * SECOND;
    let replacement = loop {
        assert!(Instant::now() < deadline, "no replacement answered as worker 1");
        let answers = requests.snapshot().answers;
        if let Some((_, pid)) = answers.iter().rev().find(|(id, pid)| id == "1" && *pid != victim) {
            break *pid;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    requests.wait_successes(100, 10 * SECOND);
    let result = requests.stop();
    assert_ne!(replacement, victim);
    assert!(sheepdog.worker_pids().contains(&replacement));
    // SIGKILL loses at most the one request the victim was answering; new
    // connections wait in the kernel's queue for the surviving worker.
    assert!(result.failed <= 1, "{} failed: {:?}", result.failed, result.errors);
}

#[test]
fn a_worker_that_exits_at_boot_backs_off_then_trips_the_crash_loop_breaker() {
    let launch = Launch::new(&[]);
    let spawns = launch.dir.path().join("spawns");
    let config = launch.file(
        "crash.toml",
        &format!(
            r#"command = ["sh", "-c", "echo $SHEEPDOG_WORKER_ID $(date +%s%N) >> {}; exit 3"]
workers = 2
ready_delay = "1s"
backoff_initial = "50ms"
backoff_max = "2s"
max_restarts = 8
restart_window = "30s"
stop_timeout = "2s"
"#,
            spawns.display()
        ),
    );
    let mut launch = launch;
    launch.args = vec![
        "run".into(),
        "--config".into(),
        config.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    let started = Instant::now();
    let mut sheepdog = launch.spawn();
    let status = sheepdog.wait_exit(30 * SECOND);
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Some(1));
    let logs = sheepdog.logs.lines();
    let last = logs.last().unwrap();
    assert!(
        last.contains("crash loop: 9 unrequested worker exits within 30s (max_restarts = 8)"),
        "{last}"
    );
    assert!(last.contains("exited with code 3"), "{last}");

    // Bounded spawns: 2 initial + at most 8 tolerated restarts.
    let lines = std::fs::read_to_string(&spawns).unwrap();
    let records: Vec<(String, u128)> = lines
        .lines()
        .map(|l| {
            let (id, ns) = l.split_once(' ').unwrap();
            (id.to_string(), ns.parse().unwrap())
        })
        .collect();
    assert!(records.len() <= 10, "{} spawns", records.len());
    assert!(records.len() >= 8, "{} spawns", records.len());
    // Backoff grows per slot: the first refill at once, then 50, 100, 200 ms
    // (each gap includes the previous worker's own brief life, so compare
    // with the floor only).
    for slot in ["0", "1"] {
        let times: Vec<u128> = records.iter().filter(|(id, _)| id == slot).map(|(_, t)| *t).collect();
        let gaps: Vec<u128> = times.windows(2).map(|w| (w[1] - w[0]) / 1_000_000).collect();
        assert!(gaps.len() >= 3, "slot {slot} gaps {gaps:?}");
        for (i, gap) in gaps.iter().enumerate() {
            let floor = if i == 0 { 0 } else { 50u128 << (i - 1) };
            assert!(
                *gap >= floor,
                "slot {slot} gap {i} was {gap} ms, below the backoff of {floor} ms: {gaps:?}"
            );
        }
        assert!(
            gaps.windows(2).all(|w| w[1] > w[0]),
            "slot {slot}: backoff delays grow: {gaps:?}"
        );
    }
    assert!(elapsed < 15 * SECOND, "the verdict took {elapsed:?}");
}

#[test]
fn a_worker_ignoring_sigterm_is_killed_after_the_stop_timeout() {
    let launch = Launch::new(&[]);
    let config = launch.file(
        "stubborn.toml",
        r#"command = ["sh", "-c", "trap '' TERM; while true; do sleep 0.2; done"]
workers = 1
ready_delay = "100ms"
stop_timeout = "1s"
"#,
    );
    let mut launch = launch;
    launch.args = vec![
        "run".into(),
        "--config".into(),
        config.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    let mut sheepdog = launch.spawn();
    sheepdog.logs.wait_for("ready: 1/1 workers", 10 * SECOND);
    let worker = sheepdog.worker_pids()[0];
    let sent = Instant::now();
    sheepdog.signal(libc::SIGTERM);
    let status = sheepdog.wait_exit(10 * SECOND);
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(took >= SECOND, "SIGKILL came early, after {took:?}");
    sheepdog.logs.wait_for(
        &format!("worker 0 (pid {worker}) did not stop within 1s; sending SIGKILL"),
        SECOND,
    );
    sheepdog.logs.wait_for("was killed by SIGKILL", SECOND);
    assert!(!alive(worker));
}

#[test]
fn workers_die_with_a_sigkilled_supervisor() {
    let mut launch = Launch::new(&["run", "--workers", "3", "--listen", "127.0.0.1:0", "--", "sleep", "600"]);
    launch
        .args
        .splice(1..1, ["--log-level".to_string(), "debug".to_string()]);
    let mut sheepdog = launch.spawn();
    let pids = {
        wait_until(10 * SECOND, "3 workers", || sheepdog.worker_pids().len() == 3);
        sheepdog.worker_pids()
    };
    sheepdog.signal(libc::SIGKILL);
    let killed = Instant::now();
    sheepdog.child.wait().unwrap();
    wait_until(SECOND, "every worker to die with sheepdog", || {
        pids.iter().all(|&p| !alive(p))
    });
    assert!(killed.elapsed() < SECOND);
}

#[test]
fn a_worker_sees_only_stdio_and_the_listeners() {
    // sheepdog itself inherits a stray fd 7 (not close-on-exec); workers must not.
    let launch = Launch::new(&[
        "run",
        "--workers",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "[::1]:0",
        "--",
        "sleep",
        "600",
    ])
    .shell_prefix("exec 7</dev/null");
    let sheepdog = launch.spawn();
    wait_until(10 * SECOND, "2 workers", || sheepdog.worker_pids().len() == 2);
    let sheepdog_fds = fds(sheepdog.pid());
    assert!(
        sheepdog_fds.contains(&7),
        "the stray fd reached sheepdog: {sheepdog_fds:?}"
    );
    for pid in sheepdog.worker_pids() {
        wait_until(5 * SECOND, "the worker to exec", || comm(pid) == "sleep");
        // The kernel renames the process before it closes the close-on-exec
        // fds: wait for exec to be over. A leaked fd stays, and fails this.
        let settled = Instant::now() + 5 * SECOND;
        while fds(pid) != [0, 1, 2, 3, 4] && Instant::now() < settled {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(fds(pid), vec![0, 1, 2, 3, 4], "fds of worker {pid}");
        let stdin = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
        assert_eq!(stdin.to_str(), Some("/dev/null"));
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let vars: Vec<String> = environ
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        assert!(vars.contains(&format!("LISTEN_PID={pid}")), "{vars:?}");
        assert!(vars.contains(&"LISTEN_FDS=2".to_string()));
        assert!(
            vars.iter()
                .any(|v| v == "SHEEPDOG_WORKER_ID=0" || v == "SHEEPDOG_WORKER_ID=1")
        );
        assert!(vars.contains(&"SHEEPDOG_GENERATION=1".to_string()));
        assert!(!vars.iter().any(|v| v.starts_with("NOTIFY_SOCKET=")));
        // Its own process group.
        assert_eq!(unsafe { libc::getpgid(pid) }, pid);
    }
}

#[test]
fn listener_sockets_reach_the_worker_in_order_and_listening() {
    // A python worker inspects its own fds 3 and 4 and answers what it saw.
    let launch = Launch::new(&[]);
    let report = launch.dir.path().join("report");
    let script = launch.file(
        "inspect.py",
        &format!(
            r#"import os, socket
out = []
for fd in (3, 4):
    s = socket.socket(fileno=fd)
    out.append("%d %s %d" % (fd, s.getsockname(), s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)))
    s.detach()
open({report:?} + ".tmp", "w").write("\n".join(out) + "\n")
os.rename({report:?} + ".tmp", {report:?})
import time; time.sleep(600)
"#,
            report = report.display().to_string()
        ),
    );
    let mut launch = launch;
    launch.args = vec![
        "run".into(),
        "--workers".into(),
        "1".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--listen".into(),
        "unix:app.sock".into(),
        "--".into(),
        "python3".into(),
        script.display().to_string(),
    ];
    let sheepdog = launch.spawn();
    let tcp = sheepdog.bound_address();
    wait_until(10 * SECOND, "the worker's report", || report.exists());
    let text = std::fs::read_to_string(&report).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("3 ('127.0.0.1', {}) 1", tcp.port()));
    assert!(lines[1].starts_with("4 ") && lines[1].ends_with("app.sock 1"), "{text}");
}

#[test]
fn standalone_tcp_and_unix_listeners_serve_http() {
    let launch = Launch::new(&[]);
    let config = hello_config(&launch, "");
    let socket = launch.dir.path().join("hello.sock");
    let mut launch = launch;
    launch.args = vec![
        "run".into(),
        "--config".into(),
        config,
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    let mut tcp = launch.spawn();
    let addr = tcp.bound_address();
    tcp.logs.wait_for("ready: 2/2 workers", 10 * SECOND);
    assert_eq!(get(addr, 5 * SECOND).unwrap().status, 200);
    tcp.signal(libc::SIGINT);
    assert_eq!(tcp.wait_exit(10 * SECOND).code(), Some(0));

    let launch = Launch::new(&[]);
    let config = hello_config(&launch, "");
    let mut launch = launch;
    launch.args = vec![
        "run".into(),
        "--config".into(),
        config,
        "--listen".into(),
        format!("unix:{}", socket.display()),
    ];
    let mut unix = launch.spawn();
    unix.logs.wait_for("ready: 2/2 workers", 10 * SECOND);
    let response = get_unix(&socket, 5 * SECOND).unwrap();
    assert_eq!(response.status, 200);
    assert!(response.body.starts_with("hello from worker"));
    unix.signal(libc::SIGTERM);
    assert_eq!(unix.wait_exit(10 * SECOND).code(), Some(0));
    assert!(!socket.exists(), "sheepdog removes the socket file it created");
}

#[test]
fn sigttin_and_sigttou_scale_the_flock() {
    let launch = Launch::new(&[]);
    let notify = NotifySocket::bind(launch.dir.path());
    let launch = Launch {
        args: vec![
            "run".into(),
            "--workers".into(),
            "2".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--".into(),
            "sleep".into(),
            "600".into(),
        ],
        ..launch
    }
    .env("NOTIFY_SOCKET", notify.path.to_str().unwrap());
    let mut sheepdog = launch.spawn();
    notify.messages.wait_for("READY=1", 10 * SECOND);
    sheepdog.signal(libc::SIGTTIN);
    notify.messages.wait_for("STATUS=3/3 ready", 10 * SECOND);
    assert_eq!(sheepdog.worker_pids().len(), 3);
    // Signals of one kind do not queue: wait for each step before the next.
    sheepdog.signal(libc::SIGTTOU);
    notify.messages.wait_for_nth("STATUS=2/2 ready", 2, 10 * SECOND);
    sheepdog.signal(libc::SIGTTOU);
    notify.messages.wait_for("STATUS=1/1 ready", 10 * SECOND);
    wait_until(5 * SECOND, "retired workers to be reaped", || {
        sheepdog.worker_pids().len() == 1
    });
    assert_eq!(sheepdog.logs.count("retired by scale-down"), 2);
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(0));
}

fn fds(pid: i32) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    fds
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}
