//! The examples for other runtimes, each run from its own config file under
//! the real binary: the Rust worker (listenfd, sd-notify), uvicorn (ASGI)
//! and gunicorn (WSGI). A request loop runs across a worker killed by hand
//! and a rolling reload, and loses nothing; a hung Rust worker is replaced.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;

const SECOND: Duration = Duration::from_secs(1);

/// Builds examples/rust once for this test binary.
fn rust_example() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = repo_path("examples/rust/Cargo.toml");
        let status = Command::new(cargo)
            .args(["build", "--release", "--locked", "--manifest-path"])
            .arg(&manifest)
            .status()
            .expect("run cargo");
        assert!(status.success(), "building examples/rust failed");
    });
    repo_path("examples/rust/sheepdog.toml")
}

/// Creates examples/python/.venv once for this test binary.
fn python_example(server: &str) -> PathBuf {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let status = Command::new(repo_path("examples/python/setup.sh"))
            .status()
            .expect("run examples/python/setup.sh");
        assert!(status.success(), "examples/python/setup.sh failed");
    });
    repo_path(&format!("examples/python/{server}.toml"))
}

/// sheepdog on `config` as shipped, on a port of its own, once 2/2 ready.
fn start(config: &Path) -> Sheepdog {
    let config = config.display().to_string();
    let sheepdog = Launch::new(&["run", "--config", &config, "--listen", "127.0.0.1:0"]).spawn();
    sheepdog.logs.wait_for("ready: 2/2 workers", 30 * SECOND);
    sheepdog
}

/// Until a request loop has been answered by a process that had not
/// answered it by `before` (what it had seen before the reload began: for
/// gunicorn the answering pid is its worker under the master sheepdog
/// started). What it saw before the wait began counts: a reload can be done,
/// and answered by the new workers, before the log line that says so is read.
fn wait_answered_by_new(requests: &RequestLoop, before: usize, sheepdog: &Sheepdog) {
    let old: Vec<i32> = requests.snapshot().answers[..before]
        .iter()
        .map(|(_, pid)| *pid)
        .collect();
    let deadline = std::time::Instant::now() + 30 * SECOND;
    while !requests.snapshot().answers[before..]
        .iter()
        .any(|(_, pid)| !old.contains(pid))
    {
        let seen = requests.snapshot();
        assert!(
            std::time::Instant::now() < deadline,
            "no answer from a new worker within 30 s: {} answers since the reload, by {:?}; errors {:?}; logs {:#?}",
            seen.answers.len() - before,
            seen.answers[before..]
                .iter()
                .map(|(_, pid)| *pid)
                .collect::<std::collections::BTreeSet<_>>(),
            seen.errors,
            sheepdog.logs.lines()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A request loop (a new connection per request, and one kept alive) across a
/// worker killed by hand (SIGTERM: it drains, sheepdog replaces it) and a
/// rolling reload (SIGHUP): what each loop saw.
fn across_a_kill_and_a_reload(
    sheepdog: &Sheepdog,
    kept: impl FnOnce(std::net::SocketAddr) -> RequestLoop,
) -> (LoopResult, LoopResult) {
    let addr = sheepdog.bound_address();
    let fresh = RequestLoop::start(addr);
    let kept = kept(addr);
    fresh.wait_successes(50, 10 * SECOND);
    kept.wait_successes(50, 10 * SECOND);

    let first = sheepdog.worker_pids();
    assert_eq!(first.len(), 2, "{:#?}", sheepdog.logs.lines());
    let victim = first[0];
    let ready = sheepdog.logs.count("is ready after");
    assert_eq!(unsafe { libc::kill(victim, libc::SIGTERM) }, 0);
    sheepdog.logs.wait_for_nth("is ready after", ready + 1, 30 * SECOND);
    wait_until(30 * SECOND, "the killed worker gone", || !alive(victim));
    fresh.wait_successes(50, 10 * SECOND);

    // After the reload no old process is left: the answers come from new ones.
    let before = fresh.snapshot().answers.len();
    sheepdog.signal(libc::SIGHUP);
    sheepdog.logs.wait_for("reloaded to generation 2", 60 * SECOND);
    wait_answered_by_new(&fresh, before, sheepdog);
    fresh.wait_successes(50, 10 * SECOND);
    kept.wait_successes(50, 10 * SECOND);
    (fresh.stop(), kept.stop())
}

#[test]
fn the_rust_worker_loses_nothing_across_a_kill_and_a_reload() {
    let sheepdog = start(&rust_example());
    let (fresh, kept) = across_a_kill_and_a_reload(&sheepdog, RequestLoop::keep_alive);
    assert_eq!(fresh.failed, 0, "{:?}", fresh.errors);
    assert_eq!(kept.failed, 0, "{:?}", kept.errors);
    // The worker says what it is doing, over sd_notify.
    let lines = sheepdog.logs.lines();
    assert!(lines.iter().any(|l| l.contains("is ready after")), "{lines:#?}");
}

#[test]
fn a_hung_rust_worker_stops_its_heartbeats_and_is_replaced() {
    let sheepdog = start(&rust_example());
    let addr = sheepdog.bound_address();
    let pids = sheepdog.worker_pids();
    let hung = pids[0];
    // Stopped, it neither accepts nor pings: a hang as sheepdog sees one.
    assert_eq!(unsafe { libc::kill(hung, libc::SIGSTOP) }, 0);
    let (_, line) = sheepdog
        .logs
        .wait_for(&format!("(pid {hung}) missed heartbeats"), 10 * SECOND);
    assert!(line.contains("killed it"), "{line}");
    wait_until(10 * SECOND, "the hung worker replaced", || {
        let now = sheepdog.worker_pids();
        !alive(hung) && now.len() == 2 && !now.contains(&hung)
    });
    sheepdog.logs.wait_for_nth("is ready after", 3, 10 * SECOND);
    // Both slots serve again.
    let mut seen = std::collections::BTreeSet::new();
    wait_until(10 * SECOND, "answers from both workers", || {
        if let Ok(response) = get(addr, 5 * SECOND) {
            seen.insert(response.worker().1);
        }
        seen.len() == 2
    });
    assert!(!seen.contains(&hung));
}

#[test]
fn uvicorn_loses_nothing_across_a_kill_and_a_reload() {
    let sheepdog = start(&python_example("uvicorn"));
    // uvicorn closes idle kept-alive connections at once when it drains: a
    // request sent on one at that moment finds it closed with no answer, and
    // is sent again on a new connection, as HTTP clients do.
    let (fresh, kept) = across_a_kill_and_a_reload(&sheepdog, RequestLoop::keep_alive_retrying);
    assert_eq!(fresh.failed, 0, "{:?}", fresh.errors);
    assert_eq!(kept.failed, 0, "{:?}", kept.errors);
    assert!(
        kept.retried <= 3,
        "at most one retry per drained worker: {}",
        kept.retried
    );
    // Ready means the app's startup hook ran: READY=1 comes from asgi.py.
    let lines = sheepdog.logs.lines();
    let ready = lines.iter().position(|l| l.contains("is ready after")).unwrap();
    assert!(
        lines[..ready]
            .iter()
            .any(|l| l.contains("Waiting for application startup")),
        "{lines:#?}"
    );
}

#[test]
fn gunicorn_loses_nothing_across_a_kill_and_a_reload() {
    let sheepdog = start(&python_example("gunicorn"));
    let (fresh, kept) = across_a_kill_and_a_reload(&sheepdog, RequestLoop::keep_alive);
    assert_eq!(fresh.failed, 0, "{:?}", fresh.errors);
    assert_eq!(kept.failed, 0, "{:?}", kept.errors);
    // READY=1 came from gunicorn's master, once it listened on the socket.
    let lines = sheepdog.logs.lines();
    let ready = lines.iter().position(|l| l.contains("is ready after")).unwrap();
    assert!(
        lines[..ready]
            .iter()
            .any(|l| l.contains("Listening at: http://127.0.0.1:")),
        "{lines:#?}"
    );
}
