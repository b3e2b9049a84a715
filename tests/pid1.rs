//! sheepdog as PID 1 of a PID namespace of its own (`unshare --pid --fork
//! --mount-proc`), as in a container with no init: no systemd, no journald,
//! no NOTIFY_SOCKET. It reaps the orphans a worker leaves behind and stops
//! cleanly, exit 0, on SIGTERM from outside (podman, the kubelet) or inside
//! (`kill 1`, which the kernel drops for a PID 1 without a handler).

mod common;

use std::time::{Duration, Instant};

use common::{Launch, Sheepdog, get, repo_path, wait_until};

const SECOND: Duration = Duration::from_secs(1);

/// sheepdog under `unshare`, in a fresh PID and mount namespace; returns it
/// with sheepdog's pid as this test sees it (unshare's child).
fn as_pid1(command: &str, readiness: &str) -> (Sheepdog, i32) {
    let launch = Launch::new(&["run", "--config", "app.toml"])
        .shell_prefix("exec unshare --pid --fork --mount-proc --kill-child \"$0\" \"$@\"");
    launch.file(
        "app.toml",
        &format!(
            "command = {command}\nworkers = 2\nlisten = [\"127.0.0.1:0\"]\nreadiness = \"{readiness}\"\n\
             ready_delay = \"200ms\"\nstop_timeout = \"5s\"\n"
        ),
    );
    let sheepdog = launch.spawn();
    let mut inner = 0;
    wait_until(10 * SECOND, "sheepdog forked by unshare", || {
        inner = common::children(sheepdog.pid()).first().copied().unwrap_or(0);
        inner > 0 && std::fs::read_to_string(format!("/proc/{inner}/comm")).is_ok_and(|c| c.trim() == "sheepdog")
    });
    (sheepdog, inner)
}

/// sheepdog's pid inside its namespace (the last NSpid field): 1.
fn pid_inside(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// The zombies among `parent`'s children.
fn zombie_children(parent: i32) -> usize {
    common::children(parent)
        .into_iter()
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit_once(')')
                        .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(false)
        })
        .count()
}

/// Processes anywhere whose command line mentions `needle`.
fn processes_running(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(needle)
        {
            found.push(pid);
        }
    }
    found
}

#[test]
fn as_pid1_the_orphans_of_a_worker_are_reaped_and_sigterm_exits_0_leaving_nothing() {
    let maker = repo_path("tests/fixtures/orphan-maker.py").display().to_string();
    let (mut sheepdog, inner) = as_pid1(&format!("[\"python3\", \"{maker}\"]"), "none");
    assert_eq!(pid_inside(inner), Some(1), "sheepdog is PID 1 of its namespace");
    sheepdog.logs.wait_for("ready: 2/2", 10 * SECOND);

    // 5 s of two workers each leaving an orphan every 100 ms: ~100 orphans,
    // each re-parented to PID 1. Unreaped, they would pile up as zombies.
    let (start, mut most) = (Instant::now(), 0);
    while start.elapsed() < 5 * SECOND {
        most = most.max(zombie_children(inner));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(most <= 3, "{most} zombies at once: the orphans are not reaped");
    assert!(
        sheepdog.logs.lines().iter().all(|l| !l.contains("panicked")),
        "{:#?}",
        sheepdog.logs.lines()
    );

    // SIGTERM from outside, as podman or the kubelet's runtime sends it.
    assert_eq!(unsafe { libc::kill(inner, libc::SIGTERM) }, 0);
    let status = sheepdog.wait_exit(20 * SECOND);
    assert_eq!(status.code(), Some(0), "{:#?}", sheepdog.logs.lines());
    sheepdog.logs.wait_for("stopped on request; exiting", 2 * SECOND);
    wait_until(5 * SECOND, "nothing of the namespace left", || {
        processes_running(&maker).is_empty()
    });
}

#[test]
fn as_pid1_kill_1_from_inside_the_namespace_stops_it_cleanly_while_it_serves() {
    let server = repo_path("examples/hello/server.js").display().to_string();
    let (mut sheepdog, inner) = as_pid1(&format!("[\"node\", \"{server}\"]"), "node-ipc");
    let app = sheepdog.bound_address();
    sheepdog.logs.wait_for("ready: 2/2", 20 * SECOND);
    assert!(get(app, 5 * SECOND).unwrap().body.contains("hello from worker"));
    // No systemd around: nothing asked for NOTIFY_SOCKET, the log is plain
    // lines on stderr with a time and a level.
    let line = sheepdog
        .logs
        .lines()
        .into_iter()
        .find(|l| l.contains("ready: 2/2"))
        .unwrap();
    assert!(line.contains(" sheepdog[1] info "), "{line}");

    // `kill 1` inside the namespace: for PID 1 the kernel delivers only the
    // signals it has a handler for.
    let kill = std::process::Command::new("nsenter")
        .args(["--target", &inner.to_string(), "--pid", "--mount", "kill", "-TERM", "1"])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = sheepdog.wait_exit(20 * SECOND);
    assert_eq!(status.code(), Some(0), "{:#?}", sheepdog.logs.lines());
    wait_until(5 * SECOND, "no worker left", || processes_running(&server).is_empty());
}
