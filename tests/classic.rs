//! Node workers written the classic way (cluster, pm2, the articles) under
//! sheepdog: they neither fool it nor get killed by it.

mod common;

use std::time::{Duration, Instant};

use common::*;

const SECOND: Duration = Duration::from_secs(1);

fn fixture(name: &str) -> String {
    repo_path(&format!("tests/fixtures/{name}")).display().to_string()
}

/// sheepdog with `config` (command and listen added), and its test notify socket.
fn launch(command: &[&str], config: &str) -> (Sheepdog, NotifySocket, std::path::PathBuf) {
    let launch = Launch::new(&[]);
    let notify = NotifySocket::bind(launch.dir.path());
    let command: Vec<String> = command.iter().map(|c| format!("{c:?}")).collect();
    let file = launch.file(
        "app.toml",
        &format!(
            "command = [{}]\nlisten = [\"127.0.0.1:0\"]\ncontrol_socket = \"control.sock\"\n{config}",
            command.join(", ")
        ),
    );
    let mut launch = launch.env("NOTIFY_SOCKET", notify.path.to_str().unwrap());
    launch.args = vec!["run".into(), "--config".into(), file.display().to_string()];
    (launch.spawn(), notify, file)
}

#[test]
fn a_release_failing_at_boot_with_suicide_is_a_crash_loop_not_a_polite_drain() {
    let config = "workers = 2\nreadiness = \"node-ipc\"\nready_timeout = \"10s\"\nbackoff_initial = \"100ms\"\n\
                  max_restarts = 6\nrestart_window = \"60s\"\n[env]\nFAIL_AT_BOOT = \"1\"\n";
    let (mut sheepdog, notify, _) = launch(&["node", &fixture("cluster-worker.js")], config);
    let started = Instant::now();
    let status = sheepdog.wait_exit(60 * SECOND);
    assert_eq!(status.code(), Some(1), "{:#?}", sheepdog.logs.lines());
    let logs = sheepdog.logs.lines();
    assert!(
        logs.last().unwrap().contains("crash loop: 7 unrequested worker exits"),
        "{logs:#?}"
    );
    let forks = sheepdog.logs.count(") started, generation");
    assert!(
        forks <= 2 + 6,
        "{forks} forks: bounded by the breaker, not only the rate cap"
    );
    assert!(sheepdog.logs.count("before it was ready: a failed start") >= 6);
    assert!(started.elapsed() < 30 * SECOND);
    // Never reported ready or healthy on the way.
    let messages = notify.messages.lines();
    assert!(!messages.contains(&"READY=1".to_string()), "{messages:#?}");
    // Both workers may fail in one pass of the loop: then the count goes
    // from 0 to 2 restarts at once.
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("STATUS=0/2 ready · 1 restarts") || m.starts_with("STATUS=0/2 ready · 2 restarts")),
        "{messages:#?}"
    );
}

#[test]
fn a_reload_onto_a_release_failing_at_boot_with_suicide_aborts() {
    let config = "workers = 2\nreadiness = \"node-ipc\"\nready_timeout = \"10s\"\n";
    let worker = fixture("cluster-worker.js");
    let (sheepdog, _, file) = launch(&["node", &fixture("ipc-worker.js")], config);
    sheepdog.logs.wait_for("ready: 2/2 workers", 10 * SECOND);
    let addr = sheepdog.bound_address();
    let requests = RequestLoop::start(addr);
    requests.wait_successes(20, 10 * SECOND);
    std::fs::write(
        &file,
        format!(
            "command = [\"node\", {worker:?}]\nlisten = [\"127.0.0.1:0\"]\ncontrol_socket = \"control.sock\"\n{config}\
             [env]\nFAIL_AT_BOOT = \"1\"\n"
        ),
    )
    .unwrap();
    let output = sheepdog_client(&["reload", "--config", file.to_str().unwrap()], 30 * SECOND);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("said it is stopping") && stderr.contains("generation 1 keeps serving"),
        "{stderr}"
    );
    requests.wait_successes(20, 10 * SECOND);
    let result = requests.stop();
    assert_eq!(result.failed, 0, "{:?}", result.errors);
    assert!(sheepdog.logs.count(") started, generation 2") <= 2, "no fork storm");
}

/// Workers that never say 'ready' but answer heartbeats, in either shape.
fn heartbeats_without_ready(shape: &str, ping: &str) {
    let config = format!(
        "workers = 2\nreadiness = \"none\"\nchannel = \"node-ipc\"\nready_delay = \"500ms\"\nbackoff_initial = \"100ms\"\n\
         [heartbeat]\ninterval = \"200ms\"\ntimeout = \"1s\"\nping = {ping:?}\n[env]\nPING_SHAPE = {shape:?}\n"
    );
    let (sheepdog, notify, _) = launch(&["node", &fixture("cluster-worker.js")], &config);
    notify.messages.wait_for("READY=1", 10 * SECOND);
    let addr = sheepdog.bound_address();
    let requests = RequestLoop::start(addr);
    // Five timeouts' worth of healthy heartbeats: nobody is killed.
    let (ready_at, _) = sheepdog.logs.wait_for("ready: 2/2 workers", SECOND);
    wait_until(10 * SECOND, "five heartbeat timeouts", || {
        ready_at.elapsed() > 5 * SECOND
    });
    assert_eq!(
        sheepdog.logs.count("missed heartbeats"),
        0,
        "{:#?}",
        sheepdog.logs.lines()
    );
    // A hung one (SIGSTOP) is still found and replaced.
    let victim = sheepdog.worker_pids()[0];
    unsafe { libc::kill(victim, libc::SIGSTOP) };
    sheepdog
        .logs
        .wait_for(&format!("(pid {victim}) missed heartbeats"), 10 * SECOND);
    let result = requests.stop();
    assert!(result.ok > 0);
}

#[test]
fn plain_ping_pong_workers_that_never_say_ready_are_kept() {
    heartbeats_without_ready("plain", "ping");
}

#[test]
fn pid_tagged_ping_pong_workers_are_kept_when_the_ping_carries_the_pid() {
    heartbeats_without_ready("pid", "ping#{pid}");
}

#[test]
fn app_listen_as_written_serves_the_passed_socket_by_default() {
    let port = free_port();
    let config = format!(
        "workers = 2\nready_delay = \"300ms\"\n[env]\nPORT = \"{}\"\n",
        port.port()
    );
    let (sheepdog, _, _) = launch(&["node", &fixture("app-listen.js")], &config);
    sheepdog.logs.wait_for("ready: 2/2 workers", 10 * SECOND);
    let addr = sheepdog.bound_address();
    let mut pids = std::collections::HashSet::new();
    for _ in 0..100 {
        pids.insert(get(addr, 5 * SECOND).expect("served on sheepdog's socket").worker().1);
    }
    assert_eq!(pids.len(), 2, "both workers serve the passed socket");
    assert!(
        std::net::TcpStream::connect(port).is_err(),
        "nothing bound port {} itself",
        port.port()
    );
    assert_eq!(sheepdog.logs.count("itself, not on the socket"), 0);
}

#[test]
fn app_listen_as_written_without_the_preload_is_noticed_said_and_not_ready() {
    let port = free_port();
    let config = format!(
        "workers = 1\nnode = \"off\"\n[memory]\ninterval = \"500ms\"\n[env]\nPORT = \"{}\"\n",
        port.port()
    );
    let (sheepdog, _, file) = launch(&["node", &fixture("app-listen.js")], &config);
    wait_until(10 * SECOND, "the worker", || sheepdog.worker_pids().len() == 1);
    let pid = sheepdog.worker_pids()[0];
    sheepdog.logs.wait_for(
        &format!(
            "(pid {pid}) listens on 127.0.0.1:{} itself, not on the socket sheepdog passed",
            port.port()
        ),
        10 * SECOND,
    );
    let output = sheepdog_client(&["status", "--config", file.to_str().unwrap()], 10 * SECOND);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(&format!("listens on 127.0.0.1:{} itself", port.port())),
        "{text}"
    );
    assert!(
        text.contains("sheepdog's preload does it unless node = \"off\""),
        "{text}"
    );
    // Nothing serves the flock's socket: it is not said to be ready.
    assert!(text.contains("0/1 ready"), "{text}");
    assert_eq!(sheepdog.logs.count("ready: 1/1 workers"), 0);
}

#[test]
fn a_stable_worker_killed_once_is_replaced_at_once_and_a_waiting_slot_is_shown() {
    let config = "workers = 1\nreadiness = \"node-ipc\"\nbackoff_initial = \"3s\"\nbackoff_max = \"3s\"\n";
    let (sheepdog, _, file) = launch(&["node", &fixture("ipc-worker.js")], config);
    sheepdog.logs.wait_for("ready: 1/1 workers", 10 * SECOND);
    let first = sheepdog.worker_pids()[0];
    unsafe { libc::kill(first, libc::SIGKILL) };
    let (_, line) = sheepdog
        .logs
        .wait_for(&format!("(pid {first}) was killed by SIGKILL"), 5 * SECOND);
    assert!(line.ends_with("; restarting it now"), "{line}");
    wait_until(5 * SECOND, "the replacement", || {
        sheepdog.worker_pids().iter().any(|p| *p != first)
    });
    // Killed again: a second failure in a row waits out backoff_initial, and
    // status shows the slot waiting meanwhile.
    let second = sheepdog.worker_pids()[0];
    unsafe { libc::kill(second, libc::SIGKILL) };
    let (_, line) = sheepdog
        .logs
        .wait_for(&format!("(pid {second}) was killed by SIGKILL"), 5 * SECOND);
    assert!(line.ends_with("; restarting in 3s"), "{line}");
    let output = sheepdog_client(&["status", "--json", "--config", file.to_str().unwrap()], 10 * SECOND);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let waiting = status["waiting"].as_array().unwrap();
    assert_eq!(waiting.len(), 1, "{status}");
    assert_eq!(waiting[0]["slot"], 0);
    assert_eq!(waiting[0]["restarts"], 2);
    let due = waiting[0]["restart_in_s"].as_f64().unwrap();
    assert!(due > 1.0 && due <= 3.0, "{status}");
    let output = sheepdog_client(&["status", "--config", file.to_str().unwrap()], 10 * SECOND);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("waiting, restart in"), "{text}");
}

#[test]
fn recycling_by_age_replaces_every_worker_one_at_a_time_losing_nothing() {
    let config =
        "workers = 4\nreadiness = \"node-ipc\"\nmax_age = \"3s\"\nmax_age_jitter = \"1s\"\nstop_timeout = \"5s\"\n";
    let (sheepdog, _, _) = launch(&["node", &fixture("ipc-worker.js")], config);
    sheepdog.logs.wait_for("ready: 4/4 workers", 10 * SECOND);
    let first: Vec<i32> = sheepdog.worker_pids();
    let addr = sheepdog.bound_address();
    let fresh = RequestLoop::start(addr);
    let kept = RequestLoop::keep_alive(addr);
    let started = Instant::now();
    wait_until(30 * SECOND, "20 s of requests", || started.elapsed() > 20 * SECOND);
    let (fresh, kept) = (fresh.stop(), kept.stop());
    assert_eq!(fresh.failed, 0, "{:?}", fresh.errors);
    assert_eq!(kept.failed, 0, "{:?}", kept.errors);
    let lines = sheepdog.logs.lines();
    for pid in &first {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("(pid {pid}) reached its max age"))),
            "worker {pid} was never recycled: {lines:#?}"
        );
    }
    // max_surge = 1: a replacement starts only once the previous one took over.
    let mut in_progress = 0;
    for line in &lines {
        if line.contains("starting its replacement (max age)") {
            in_progress += 1;
            assert_eq!(in_progress, 1, "two recycles at once: {lines:#?}");
        } else if line.contains("(max age); sending SIGTERM") {
            in_progress -= 1;
        }
    }
    assert_eq!(sheepdog.logs.count("; restarting"), 0, "no recycle counted as a crash");
}
