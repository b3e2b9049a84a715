//! Spreading connections on the real binary: each worker accepts from a
//! queue of its own and sheepdog's steering sends every new connection to
//! the next worker that may take it. Keep-alive pools reach every worker,
//! a dead worker's queue is answered by its replacement, a hung one gets
//! nothing new once found out, and a worker that drops what it accepts
//! while it stops loses nothing because nothing reaches it by then.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

const SECOND: Duration = Duration::from_secs(1);

struct App {
    sheepdog: Sheepdog,
    config: PathBuf,
    addr: SocketAddr,
}

/// `workers` classic Node workers (ipc-worker.js: ready over IPC, pongs
/// for pings), with `extra` config lines and `env` for the workers.
fn start(workers: usize, extra: &str, env: &str) -> App {
    let launch = Launch::new(&[]);
    let config = launch.file(
        "app.toml",
        &format!(
            "command = [\"node\", {:?}]\nworkers = {workers}\nlisten = [\"127.0.0.1:0\"]\nreadiness = \"node-ipc\"\n\
             ready_timeout = \"20s\"\nstop_timeout = \"5s\"\ncontrol_socket = \"control.sock\"\n{extra}\n[env]\n{env}\n",
            repo_path("tests/fixtures/ipc-worker.js").display().to_string()
        ),
    );
    let mut launch = launch;
    launch.args = vec![
        "run".into(),
        "--log-level".into(),
        "debug".into(),
        "--config".into(),
        config.display().to_string(),
    ];
    let sheepdog = launch.spawn();
    let addr = sheepdog.bound_address();
    sheepdog
        .logs
        .wait_for(&format!("ready: {workers}/{workers} workers"), 30 * SECOND);
    // The pass that logged it steers new connections to the last one ready
    // when it ends, and a busy machine can pause sheepdog in between: an
    // answer from a later pass says the steering is in place.
    status_of(&config);
    App { sheepdog, config, addr }
}

impl App {
    fn client(&self, args: &[&str]) -> std::process::Output {
        client_of(&self.config, args)
    }

    fn stop(mut self) {
        self.sheepdog.signal(libc::SIGTERM);
        assert_eq!(self.sheepdog.wait_exit(20 * SECOND).code(), Some(0));
    }
}

/// A kept-alive HTTP/1.1 connection.
struct KeptAlive(BufReader<TcpStream>);

impl KeptAlive {
    fn open(addr: SocketAddr) -> KeptAlive {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(10 * SECOND)).unwrap();
        KeptAlive(BufReader::new(stream))
    }

    fn send(&mut self) {
        self.0
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap();
    }

    /// The answering worker's pid.
    fn receive(&mut self) -> i32 {
        let mut length = 0;
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line:?}");
        loop {
            line.clear();
            self.0.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.0.read_exact(&mut body).unwrap();
        let body = String::from_utf8(body).unwrap();
        let words: Vec<&str> = body.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "pid").unwrap();
        words[at + 1].parse().unwrap()
    }

    fn request(&mut self) -> i32 {
        self.send();
        self.receive()
    }
}

/// `count` requests sent on new connections, their answers not read yet.
fn sent(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(20 * SECOND)).unwrap();
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                .unwrap();
            stream
        })
        .collect()
}

/// Per worker pid, how many of `pool` connections it holds (asked 3 times each).
fn holders(pool: &mut [KeptAlive]) -> HashMap<i32, usize> {
    let mut held = HashMap::new();
    for connection in pool.iter_mut() {
        let pid = connection.request();
        for _ in 0..2 {
            assert_eq!(
                connection.request(),
                pid,
                "a kept-alive connection stays with its worker"
            );
        }
        *held.entry(pid).or_default() += 1;
    }
    held
}

#[test]
fn a_keep_alive_pool_of_sixteen_reaches_all_eight_workers_opened_one_by_one_or_at_once() {
    let app = start(8, "", "");
    let workers = app.sheepdog.worker_pids();
    assert_eq!(workers.len(), 8);
    // One after another, as a proxy's pool grows: each opened, used, kept.
    let mut pool: Vec<KeptAlive> = Vec::new();
    let mut held: HashMap<i32, usize> = HashMap::new();
    for _ in 0..16 {
        let mut connection = KeptAlive::open(app.addr);
        *held.entry(connection.request()).or_default() += 1;
        pool.push(connection);
    }
    assert_eq!(held.len(), 8, "every worker holds some of the pool: {held:?}");
    assert!(held.values().all(|n| *n == 2), "16 over 8 in turn: {held:?}");
    assert_eq!(holders(&mut pool), held);
    drop(pool);
    // In a burst: all 16 connect before any sends a request.
    let mut burst: Vec<KeptAlive> = (0..16).map(|_| KeptAlive::open(app.addr)).collect();
    let held = holders(&mut burst);
    assert_eq!(held.len(), 8, "{held:?}");
    assert!(held.values().all(|n| *n == 2), "{held:?}");
    // Each worker's share is in status: 4 new connections each so far.
    let status = status_of(&app.config);
    let shares: Vec<u64> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["connections"].as_u64().expect("connections per worker"))
        .collect();
    assert_eq!(shares, vec![4; 8], "{status}");
    assert!(
        status["supervisor"]["spread"]
            .as_str()
            .unwrap()
            .starts_with("round-robin over "),
        "{status}"
    );
    let metrics_text = String::from_utf8_lossy(&app.client(&["status"]).stdout).into_owned();
    assert!(metrics_text.contains("4 (12%)"), "{metrics_text}");
    drop(burst);
    app.stop();
}

#[test]
fn what_waits_in_a_killed_workers_queue_is_answered_by_its_replacement() {
    let app = start(4, "", "");
    let victim = app.sheepdog.worker_pids()[1];
    // Stopped, it takes nothing from its queue: a quarter of what comes
    // next waits there.
    unsafe { libc::kill(victim, libc::SIGSTOP) };
    let mut waiting: Vec<TcpStream> = sent(app.addr, 12);
    let status = status_of(&app.config);
    let own = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["pid"] == victim)
        .map(|w| w["queue"].clone())
        .unwrap();
    let queued = status["supervisor"]["listen_queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == own)
        .map(|q| q["queued"].clone())
        .unwrap();
    assert_eq!(queued, 3, "its turn of 12 waits in its queue: {status}");
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let mut answered_by = Vec::new();
    for stream in &mut waiting {
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("an answer, not a reset");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        let pid: i32 = answer
            .split("pid ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        answered_by.push(pid);
    }
    assert!(!answered_by.contains(&victim));
    let newcomers: Vec<&i32> = answered_by
        .iter()
        .filter(|pid| !status_pids(&status).contains(pid))
        .collect();
    assert_eq!(
        newcomers.len(),
        3,
        "the replacement answered what its queue held: {answered_by:?}"
    );
    app.stop();
}

fn status_pids(status: &serde_json::Value) -> Vec<i32> {
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_i64().unwrap() as i32)
        .collect()
}

#[test]
fn a_hung_worker_gets_no_new_connection_once_its_heartbeats_are_missed() {
    let app = start(4, "[heartbeat]\ninterval = \"200ms\"\ntimeout = \"1s\"\n", "");
    let victim = app.sheepdog.worker_pids()[2];
    unsafe { libc::kill(victim, libc::SIGSTOP) };
    // Before it is found out, its turn of new connections waits in its queue.
    let mut early: Vec<TcpStream> = sent(app.addr, 8);
    let (found, _) = app.sheepdog.logs.wait_for("missed heartbeats", 10 * SECOND);
    // From here until its replacement is ready, nothing is sent its way:
    // every request is answered at once by the others.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let answer = get(app.addr, 5 * SECOND).expect("answered");
        assert_eq!(answer.status, 200);
        assert_ne!(answer.worker().1, victim);
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < 2 * SECOND,
        "a request waited {slowest:?} (sent to the hung worker's queue?)"
    );
    assert!(found.elapsed() < 30 * SECOND);
    // What waited for it is answered by its replacement, not left behind.
    for stream in &mut early {
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("an answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    }
    app.stop();
}

/// Scales 8 → 2 → 8 and reloads, with `worker_env` for the workers, under
/// new-connection and keep-alive load: what failed.
fn churn_under_load(extra: &str, worker_env: &str) -> (LoopResult, LoopResult) {
    let app = start(8, extra, worker_env);
    let fresh = RequestLoop::start(app.addr);
    let kept = RequestLoop::keep_alive(app.addr);
    fresh.wait_successes(50, 10 * SECOND);
    for workers in ["2", "8"] {
        assert!(app.client(&["scale", workers]).status.success());
        let n: usize = workers.parse().unwrap();
        wait_until(30 * SECOND, &format!("{n} workers"), || {
            let status = status_of(&app.config);
            status["workers"].as_array().unwrap().len() == n && status["supervisor"]["ready"] == n
        });
        fresh.wait_successes(50, 10 * SECOND);
    }
    let reload = app.client(&["reload"]);
    assert!(reload.status.success(), "{}", String::from_utf8_lossy(&reload.stderr));
    fresh.wait_successes(50, 10 * SECOND);
    let results = (fresh.stop(), kept.stop());
    app.stop();
    results
}

#[test]
fn scaling_down_and_up_and_a_reload_under_load_fail_no_request() {
    let (fresh, kept) = churn_under_load("", "");
    assert_eq!(
        (fresh.failed, kept.failed),
        (0, 0),
        "{:?} {:?}",
        first(&fresh.errors),
        first(&kept.errors)
    );
    assert!(fresh.ok > 150 && kept.ok > 150, "{} {}", fresh.ok, kept.ok);
}

#[test]
fn a_worker_that_drops_what_it_accepts_while_stopping_loses_nothing() {
    // It keeps accepting for 200 ms after its stop signal and closes what it
    // accepts unanswered (as uvicorn can): nothing may reach it by then.
    let (fresh, kept) = churn_under_load("", "CARELESS_DRAIN = \"1\"");
    assert_eq!(fresh.failed, 0, "{:?}", first(&fresh.errors));
    assert_eq!(kept.failed, 0, "{:?}", first(&kept.errors));
}

fn first(errors: &[String]) -> &[String] {
    &errors[..errors.len().min(5)]
}

#[test]
fn without_cap_bpf_it_says_so_once_and_spreads_at_random_over_the_queues() {
    // Root without CAP_BPF and CAP_SYS_ADMIN, as a pod or a unit of the
    // user's own that does not grant it: the program cannot be loaded.
    let launch = Launch::new(&[]);
    let config = launch.file(
        "app.toml",
        &format!(
            "command = [\"node\", {:?}]\nworkers = 4\nlisten = [\"127.0.0.1:0\"]\nreadiness = \"node-ipc\"\n\
             control_socket = \"control.sock\"\n",
            repo_path("tests/fixtures/ipc-worker.js").display().to_string()
        ),
    );
    let mut launch = launch.program(std::path::Path::new("/usr/bin/setpriv"));
    launch.args = vec![
        "--bounding-set=-bpf,-sys_admin".into(),
        BIN.into(),
        "run".into(),
        "--config".into(),
        config.display().to_string(),
    ];
    let mut sheepdog = launch.spawn();
    let addr = sheepdog.bound_address();
    sheepdog.logs.wait_for("ready: 4/4 workers", 30 * SECOND);
    assert_eq!(sheepdog.logs.count("round robin is not available"), 1);
    let (_, line) = sheepdog.logs.wait_for("round robin is not available", SECOND);
    assert!(line.contains("CAP_BPF") && line.contains(" warn "), "{line}");
    let status = status_of(&config);
    assert_eq!(status["supervisor"]["spread"], "random over 5 queues", "{status}");
    // Random, yet only over the workers' queues: every request is answered.
    let mut answered: HashMap<i32, usize> = HashMap::new();
    for _ in 0..200 {
        let answer = get(addr, 5 * SECOND).expect("answered");
        *answered.entry(answer.worker().1).or_default() += 1;
    }
    assert_eq!(answered.len(), 4, "{answered:?}");
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(20 * SECOND).code(), Some(0));
}

#[test]
fn one_socket_passed_the_old_way_is_one_shared_queue_and_it_says_how_to_get_more() {
    // systemd-socket-activate passes one listening socket, as a socket unit
    // with a single ListenStream= does.
    let addr = free_port();
    let launch = Launch::new(&[]).activated(addr);
    let config = launch.file(
        "app.toml",
        &format!(
            "command = [\"node\", {:?}]\nworkers = 2\nreadiness = \"node-ipc\"\ncontrol_socket = \"control.sock\"\n",
            repo_path("tests/fixtures/ipc-worker.js").display().to_string()
        ),
    );
    let mut launch = launch;
    launch.args = vec!["run".into(), "--config".into(), config.display().to_string()];
    let mut sheepdog = launch.spawn();
    sheepdog.logs.wait_for("Listening on", 10 * SECOND);
    assert_eq!(get(addr, 20 * SECOND).expect("served").status, 200);
    sheepdog.logs.wait_for("ready: 2/2 workers", 20 * SECOND);
    let (_, line) = sheepdog.logs.wait_for("systemd passed one socket", SECOND);
    assert!(
        line.contains("ReusePort=yes") && line.contains("ListenStream="),
        "{line}"
    );
    assert_eq!(sheepdog.logs.count("systemd passed one socket"), 1);
    let status = status_of(&config);
    assert_eq!(status["supervisor"]["spread"], "shared (one queue)", "{status}");
    assert!(status["workers"][0]["queue"].is_null(), "{status}");
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(20 * SECOND).code(), Some(0));
}
