//! Worker health with real workers: readiness and heartbeats over Node IPC and
//! sd_notify (the real `sdnotify` package and `systemd-notify`), hung workers
//! (busy loop, SIGSTOP), memory replacement, spoofed and malformed messages,
//! and the systemd watchdog relay.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;

const SECOND: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn fixture(name: &str) -> String {
    repo_path(&format!("tests/fixtures/{name}")).display().to_string()
}

/// Launches sheepdog on 127.0.0.1:0 with `config` (TOML lines after `command`).
fn launch(command: &[&str], config: &str, setup: impl FnOnce(&Launch)) -> (Sheepdog, NotifySocket) {
    let launch = Launch::new(&[]);
    let notify = NotifySocket::bind(launch.dir.path());
    let command: Vec<String> = command.iter().map(|c| format!("{c:?}")).collect();
    let path = launch.file(
        "app.toml",
        &format!(
            "command = [{}]\nlisten = [\"127.0.0.1:0\"]\n{config}",
            command.join(", ")
        ),
    );
    setup(&launch);
    let mut launch = launch.env("NOTIFY_SOCKET", notify.path.to_str().unwrap());
    launch.args = vec![
        "run".into(),
        "--log-level".into(),
        "debug".into(),
        "--config".into(),
        path.display().to_string(),
    ];
    (launch.spawn(), notify)
}

const IPC: &str = "readiness = \"node-ipc\"\nworkers = 2\nready_timeout = \"10s\"\nstop_timeout = \"5s\"\nbackoff_initial = \"100ms\"\n[heartbeat]\ninterval = \"250ms\"\ntimeout = \"1s\"\n";

#[test]
fn classic_node_ipc_workers_stay_up_and_a_busy_looping_one_is_replaced() {
    let (sheepdog, notify) = launch(&["node", &fixture("ipc-worker.js")], IPC, |_| {});
    let addr = sheepdog.bound_address();
    notify.messages.wait_for("READY=1", 10 * SECOND);
    let pids: HashSet<i32> = sheepdog.worker_pids().into_iter().collect();
    assert_eq!(pids.len(), 2);

    // Twelve heartbeat intervals (3 s) under load: the ping/pong keeps both alive.
    let requests = RequestLoop::start(addr);
    requests.wait_successes(200, 10 * SECOND);
    wait_until(10 * SECOND, "12 heartbeat intervals", || {
        started_for(&sheepdog) >= 3 * SECOND
    });
    assert_eq!(sheepdog.logs.count("missed heartbeats"), 0);
    assert_eq!(
        sheepdog.worker_pids().into_iter().collect::<HashSet<_>>(),
        pids,
        "nobody was replaced"
    );

    // One request makes one worker busy-loop forever.
    let hung_at = Instant::now();
    std::thread::spawn(move || get_path(addr, "/hang", 30 * SECOND));
    let (killed_at, line) = sheepdog.logs.wait_for("missed heartbeats for", 10 * SECOND);
    let took = killed_at - hung_at;
    assert!(
        took <= 1250 * MS + 750 * MS,
        "killed {took:?} after the hang (timeout 1s + interval 250ms, with scheduling slack)"
    );
    assert!(took >= SECOND - 250 * MS, "killed too early: {took:?}");
    let hung: i32 = line
        .split("(pid ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(pids.contains(&hung));
    sheepdog.logs.wait_for("ready after", 10 * SECOND);
    requests.wait_successes(100, 10 * SECOND);
    let result = requests.stop();
    // Only requests the hung worker had accepted can fail; the other worker
    // kept serving throughout.
    assert!(result.failed <= 2, "{} failed: {:?}", result.failed, result.errors);
    let survivor = pids.iter().find(|p| **p != hung).unwrap();
    assert!(result.answers.iter().any(|(_, pid)| pid == survivor));
    assert!(!alive(hung));
}

fn started_for(sheepdog: &Sheepdog) -> Duration {
    sheepdog
        .logs
        .timed()
        .first()
        .map(|(t, _)| t.elapsed())
        .unwrap_or_default()
}

#[test]
fn a_sigstopped_worker_is_detected_as_hung() {
    let (sheepdog, notify) = launch(&["node", &fixture("ipc-worker.js")], IPC, |_| {});
    notify.messages.wait_for("READY=1", 10 * SECOND);
    let victim = sheepdog.worker_pids()[0];
    let stopped_at = Instant::now();
    unsafe { libc::kill(victim, libc::SIGSTOP) };
    let (at, _) = sheepdog
        .logs
        .wait_for(&format!("(pid {victim}) missed heartbeats for"), 10 * SECOND);
    assert!(at - stopped_at >= 750 * MS);
    wait_until(5 * SECOND, "the stopped worker to be gone", || !alive(victim));
    notify
        .messages
        .wait_for_nth("STATUS=2/2 ready · 1 restarts", 1, 10 * SECOND);
}

#[test]
fn ready_upward_waits_for_the_workers_to_say_they_are_ready() {
    // The workers send 'ready' 2 s after they start listening.
    let launch_at = Instant::now();
    let config = format!("{IPC}[env]\nREADY_AFTER_MS = \"2000\"\n");
    let (sheepdog, notify) = launch(&["node", &fixture("ipc-worker.js")], &config, |_| {});
    let (ready_at, _) = notify.messages.wait_for("READY=1", 15 * SECOND);
    // On sheepdog's own clock: from the spawn to the pass that sent READY=1.
    let (_, started) = sheepdog.logs.wait_for("2 workers of", SECOND);
    let (_, ready) = sheepdog.logs.wait_for("ready: 2/2 workers", SECOND);
    let waited = logged_at(&ready).saturating_sub(logged_at(&started));
    assert!(waited >= 2 * SECOND, "READY=1 {waited:?} after the spawn");
    assert!(ready_at - launch_at >= 2 * SECOND);
    let messages = notify.messages.lines();
    let waiting = messages
        .iter()
        .position(|l| l.starts_with("STATUS=0/2 ready"))
        .expect("a 0/2 status");
    assert!(waiting < messages.iter().position(|l| l == "READY=1").unwrap());
}

#[test]
fn python_sdnotify_and_shell_systemd_notify_workers_become_ready_and_heartbeat() {
    let config = "readiness = \"notify\"\nworkers = 2\nready_timeout = \"10s\"\n[heartbeat]\ninterval = \"500ms\"\ntimeout = \"1500ms\"\n";
    for command in [
        vec!["python3", &fixture("sdnotify-worker.py")],
        vec!["sh", &fixture("systemd-notify-worker.sh")],
    ] {
        let (sheepdog, notify) = launch(&command, config, |_| {});
        notify.messages.wait_for("READY=1", 10 * SECOND);
        let pids = sheepdog.worker_pids();
        // Heartbeats keep them alive for more than three timeouts.
        wait_until(15 * SECOND, "5 s of heartbeats", || {
            started_for(&sheepdog) >= 5 * SECOND
        });
        assert_eq!(
            sheepdog.logs.count("missed heartbeats"),
            0,
            "{:#?}",
            sheepdog.logs.lines()
        );
        assert_eq!(
            sheepdog.logs.count("dropped a message"),
            0,
            "{:#?}",
            sheepdog.logs.lines()
        );
        assert_eq!(sheepdog.worker_pids(), pids, "{command:?}: nobody replaced");
        assert!(sheepdog.logs.count("status: ") >= 2, "STATUS= from the workers is read");
    }
}

#[test]
fn a_process_that_is_not_a_worker_cannot_speak_for_one() {
    let config = "readiness = \"notify\"\nworkers = 1\nready_timeout = \"30s\"\n";
    let (mut sheepdog, notify) = launch(&["sleep", "600"], config, |_| {});
    wait_until(10 * SECOND, "the worker", || sheepdog.worker_pids().len() == 1);
    let worker = sheepdog.worker_pids()[0];
    // Read its environment once it has exec'd, not the forked copy of ours.
    wait_until(5 * SECOND, "the worker to exec", || {
        std::fs::read_to_string(format!("/proc/{worker}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });
    let environ = std::fs::read(format!("/proc/{worker}/environ")).unwrap();
    let socket = environ
        .split(|b| *b == 0)
        .find_map(|v| {
            std::str::from_utf8(v)
                .ok()?
                .strip_prefix("NOTIFY_SOCKET=")
                .map(String::from)
        })
        .expect("the worker has a NOTIFY_SOCKET");
    assert!(
        socket.starts_with('/') && !socket.contains("notify.sock"),
        "its own socket, not systemd's: {socket}"
    );
    let mode = std::fs::metadata(std::path::Path::new(&socket).parent().unwrap()).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o700
    );

    // This test process is alive and not the worker's descendant.
    let spoof = std::os::unix::net::UnixDatagram::unbound().unwrap();
    spoof.send_to(b"READY=1", &socket).unwrap();
    spoof.send_to(b"WATCHDOG=1", &socket).unwrap();
    sheepdog
        .logs
        .wait_for("which is neither the worker nor its descendant", 5 * SECOND);
    // Datagrams to the test's NOTIFY_SOCKET are ordered: a status change we
    // cause now would come after any READY=1 the spoof had triggered.
    sheepdog.signal(libc::SIGTTIN);
    notify.messages.wait_for("STATUS=0/2 ready", 5 * SECOND);
    assert_eq!(notify.messages.count("READY=1"), 0, "the spoofed READY=1 was ignored");
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(0));
}

#[test]
fn malformed_datagrams_and_ipc_lines_are_dropped_and_logged() {
    for readiness in ["notify", "node-ipc"] {
        let config =
            format!("readiness = \"{readiness}\"\nworkers = 1\n[heartbeat]\ninterval = \"200ms\"\ntimeout = \"2s\"\n");
        let (mut sheepdog, notify) = launch(&["python3", &fixture("garbage-worker.py")], &config, |_| {});
        notify.messages.wait_for("READY=1", 10 * SECOND);
        // Log lines travel by another pipe than READY=1: wait for each.
        let expected: &[&str] = if readiness == "notify" {
            &["not KEY=VALUE", "not UTF-8", "larger than 4096 bytes"]
        } else {
            &["not JSON", "line longer than 65536 bytes", "not JSON (expected value"]
        };
        for reason in expected {
            let (_, line) = sheepdog.logs.wait_for(reason, 5 * SECOND);
            assert!(line.contains("dropped a message for worker 0"), "{line}");
        }
        // Unaffected: still supervising and answering signals.
        sheepdog.signal(libc::SIGTERM);
        assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(0), "{readiness}");
    }
}

#[test]
fn a_leaking_worker_is_replaced_replacement_first_with_zero_failed_requests() {
    let config = "readiness = \"node-ipc\"\nworkers = 2\nready_timeout = \"10s\"\nstop_timeout = \"5s\"\n[memory]\nlimit = \"160MiB\"\ninterval = \"250ms\"\n";
    let (sheepdog, notify) = launch(&["node", &fixture("ipc-worker.js")], config, |_| {});
    let addr = sheepdog.bound_address();
    notify.messages.wait_for("READY=1", 10 * SECOND);
    let before: HashSet<i32> = sheepdog.worker_pids().into_iter().collect();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    // Every request leaks 8 MiB in whichever worker serves it.
    let leaker = std::thread::spawn(move || {
        let (mut ok, mut failed, mut errors) = (0, 0, Vec::new());
        let deadline = Instant::now() + 60 * SECOND;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            match get_path(addr, "/leak", 5 * SECOND) {
                Ok(r) if r.status == 200 => ok += 1,
                Ok(r) => {
                    failed += 1;
                    errors.push(format!("status {}", r.status))
                }
                Err(e) => {
                    failed += 1;
                    errors.push(e.to_string())
                }
            }
        }
        (ok, failed, errors)
    });
    let (_, over) = sheepdog.logs.wait_for("over the memory limit of 160 MiB", 30 * SECOND);
    let old: i32 = over
        .split("(pid ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (replaced_at, replaced) = sheepdog
        .logs
        .wait_for(&format!("(pid {old}) replaced by pid"), 30 * SECOND);
    let new: i32 = replaced
        .split("replaced by pid ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (new_ready_at, _) = sheepdog.logs.wait_for(&format!("(pid {new}) is ready"), SECOND);
    assert!(
        new_ready_at <= replaced_at,
        "the replacement was ready before the old worker was stopped"
    );
    sheepdog
        .logs
        .wait_for(&format!("(pid {old}) stopped: exited with code 0"), 10 * SECOND);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, errors) = leaker.join().unwrap();
    assert!(before.contains(&old));
    assert!(ok > 10);
    assert_eq!(failed, 0, "{errors:?}");
    notify.messages.wait_for(" MiB", SECOND);
    // The log says what happens when it happens: a replacement is said to
    // start when it is forked, and within max_surge = 1 only one at a time.
    let lines = sheepdog.logs.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("(pid {old}): starting its replacement (memory limit)"))),
        "{lines:#?}"
    );
    let mut in_progress = 0;
    for line in &lines {
        if line.contains("starting its replacement") {
            in_progress += 1;
            assert_eq!(in_progress, 1, "two replacements at once: {lines:#?}");
        } else if line.contains(") replaced by pid") {
            in_progress -= 1;
        }
    }
}

#[test]
fn a_worker_asking_for_its_replacement_gets_it_before_it_exits() {
    // Up longer than min_uptime: asking to leave is a polite drain, not a failed start.
    let config = format!("min_uptime = \"200ms\"\n{IPC}");
    let (sheepdog, notify) = launch(&["node", &fixture("ipc-worker.js")], &config, |_| {});
    let addr = sheepdog.bound_address();
    notify.messages.wait_for("READY=1", 10 * SECOND);
    let (ready_at, _) = sheepdog.logs.wait_for("ready: 2/2 workers", SECOND);
    wait_until(5 * SECOND, "min_uptime to pass", || {
        ready_at.elapsed() > Duration::from_millis(300)
    });
    let response = get_path(addr, "/suicide", 5 * SECOND).unwrap();
    let (slot, old) = response.worker();
    sheepdog
        .logs
        .wait_for(&format!("(pid {old}) is stopping on its own"), 5 * SECOND);
    let (exited_at, _) = sheepdog
        .logs
        .wait_for(&format!("(pid {old}) stopped: exited with code 0"), 10 * SECOND);
    let started: Vec<(Instant, String)> = sheepdog
        .logs
        .timed()
        .into_iter()
        .filter(|(_, l)| l.contains(&format!("worker {slot} (pid ")) && l.contains(") started"))
        .collect();
    assert_eq!(started.len(), 2, "initial and replacement: {started:?}");
    assert!(
        started[1].0 <= exited_at,
        "the replacement was forked before the old worker exited"
    );
    assert_eq!(sheepdog.logs.count("; restarting"), 0, "not counted as a crash");
}

#[test]
fn the_watchdog_relay_pings_while_healthy_and_stops_when_no_worker_can_be() {
    let launch = Launch::new(&[]);
    let notify = NotifySocket::bind(launch.dir.path());
    let path = launch.file(
        "app.toml",
        &format!(
            "command = [\"node\", {:?}]\nlisten = [\"127.0.0.1:0\"]\nreadiness = \"node-ipc\"\nworkers = 2\nready_timeout = \"1s\"\nbackoff_initial = \"100ms\"\nmax_restarts = 100\n[heartbeat]\ninterval = \"200ms\"\ntimeout = \"800ms\"\n",
            fixture("ipc-worker.js")
        ),
    );
    let broken = launch.dir.path().join("broken");
    let mut launch = launch
        .env("NOTIFY_SOCKET", notify.path.to_str().unwrap())
        .env("WATCHDOG_USEC", "1000000");
    launch.args = vec!["run".into(), "--config".into(), path.display().to_string()];
    let sheepdog = launch.spawn();
    notify.messages.wait_for("READY=1", 10 * SECOND);
    let (first, _) = notify.messages.wait_for_nth("WATCHDOG=1", 2, 5 * SECOND);
    let (sixth, _) = notify.messages.wait_for_nth("WATCHDOG=1", 6, 5 * SECOND);
    assert!(
        sixth - first >= 1500 * MS,
        "pings every half interval, not faster: {:?}",
        sixth - first
    );

    // New workers can no longer become ready; then every worker hangs.
    std::fs::write(&broken, "").unwrap();
    for pid in sheepdog.worker_pids() {
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    }
    let (withheld_at, _) = sheepdog.logs.wait_for("withholding watchdog pings", 10 * SECOND);
    // Replacements keep failing readiness, for longer than a watchdog
    // interval after the pings stopped (they stop once the flock has been
    // below min_ready for ready_timeout).
    let mut nth = 1;
    loop {
        let (at, _) = sheepdog.logs.wait_for_nth("was not ready within 1s", nth, 15 * SECOND);
        if at >= withheld_at + SECOND {
            break;
        }
        nth += 1;
        assert!(
            nth < 20,
            "replacements keep failing, and no later than the pings stopped"
        );
    }
    let late_pings = notify
        .messages
        .timed()
        .iter()
        .filter(|(t, l)| l == "WATCHDOG=1" && *t > withheld_at + 100 * MS)
        .count();
    assert_eq!(late_pings, 0, "no WATCHDOG=1 for an unhealthy flock");
}
