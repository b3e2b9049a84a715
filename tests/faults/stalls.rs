//! Round two, finding 2: a loop that ran late (stopped, starved, busy
//! forking a large flock) judges no deadline before it has read what
//! waited for it, and a large flock starts over several passes, a window
//! of workers at a time, with the control socket served throughout.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::common::*;
use super::{SECOND, fixture, run};

/// `count` notify workers that wait `delay` seconds, say READY=1 with the
/// real `systemd-notify` (`--no-block`: by default it waits for its reader,
/// here a stopped one), leave a mark in `marks`, and sleep.
fn notify_flock(launch: Launch, count: usize, ready_timeout: &str, prefix: &[&str], delay: &str) -> Sheepdog {
    let marks = launch.dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let script = format!(
        "sleep {delay}; systemd-notify --no-block --ready && touch \"{}/$SHEEPDOG_WORKER_ID\"; exec sleep 100000",
        marks.display()
    );
    let mut command: Vec<String> = prefix.iter().map(|p| format!("{p:?}")).collect();
    command.extend(["\"sh\"".into(), "\"-c\"".into(), format!("{script:?}")]);
    let path = launch.file(
        "app.toml",
        &format!(
            "command = [{}]\nworkers = {count}\nreadiness = \"notify\"\nready_timeout = \"{ready_timeout}\"\n\
             listen = [\"127.0.0.1:0\"]\ncontrol_socket = \"control.sock\"\n",
            command.join(", ")
        ),
    );
    run(launch, &path)
}

fn marks(sheepdog: &Sheepdog) -> usize {
    std::fs::read_dir(sheepdog.dir.path().join("marks")).map_or(0, |d| d.count())
}

#[test]
fn workers_that_said_ready_while_the_supervisor_was_stopped_are_not_killed() {
    let mut sheepdog = notify_flock(Launch::new(&[]), 10, "3s", &[], "1");
    wait_until(10 * SECOND, "10 workers", || sheepdog.worker_pids().len() == 10);
    let stopped = Instant::now();
    sheepdog.signal(libc::SIGSTOP);
    // Every worker says READY=1 while sheepdog cannot read it, and the
    // ready timeout passes before it runs again.
    wait_until(20 * SECOND, "every worker's READY=1", || marks(&sheepdog) == 10);
    wait_until(10 * SECOND, "the ready timeout to pass", || {
        stopped.elapsed() > 4 * SECOND
    });
    sheepdog.signal(libc::SIGCONT);
    sheepdog.logs.wait_for("ready: 10/10 workers", 10 * SECOND);
    assert_eq!(
        sheepdog.logs.count("was not ready within"),
        0,
        "{:#?}",
        sheepdog.logs.lines()
    );
    assert_eq!(sheepdog.logs.count("killed it"), 0);
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(20 * SECOND).code(), Some(0));
}

/// Asks for the status over the control socket (no client process to
/// start, which on a loaded machine would time the client): how long the
/// reply took.
fn status_latency(socket: &Path) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(60 * SECOND)).ok()?;
    stream.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n").ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.contains("\"ok\":true").then(|| started.elapsed())
}

#[test]
fn a_large_flock_behind_a_shell_shim_starts_whole_and_status_answers_throughout() {
    let shim = fixture("shim.sh");
    let mut sheepdog = notify_flock(Launch::new(&[]), 300, "15s", &[&shim], "0");
    let socket = sheepdog.dir.path().join("control.sock");
    wait_until(10 * SECOND, "the control socket", || socket.exists());
    // Status asked every 100 ms while the flock starts.
    let done = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let asker = {
        let (done, latencies, socket) = (done.clone(), latencies.clone(), socket.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let took = status_latency(&socket).expect("status answers");
                latencies.lock().unwrap().push(took);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    sheepdog.logs.wait_for("ready: 300/300 workers", 180 * SECOND);
    done.store(true, Ordering::Relaxed);
    asker.join().unwrap();
    let latencies = latencies.lock().unwrap().clone();
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    // The 1 s target is measured in bench/big_flock.py; on a loaded test
    // machine, an answer within 5 s shows the loop was not held by the start.
    assert!(slowest < 5 * SECOND, "status took {slowest:?} while the flock started");
    assert!(latencies.len() >= 5, "{latencies:?}");
    assert_eq!(sheepdog.logs.count("was not ready within"), 0);
    assert_eq!(sheepdog.logs.count("killed it"), 0);
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(60 * SECOND).code(), Some(0));
}
