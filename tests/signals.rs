//! No signal takes the flock down by its default action: every one an
//! operator can send has a meaning, or is ignored with a log line, while the
//! workers go on serving.

mod common;

use std::time::Duration;

use common::*;

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn every_signal_without_a_stop_meaning_leaves_the_flock_serving() {
    let launch = Launch::new(&[]);
    let worker = repo_path("tests/fixtures/ipc-worker.js");
    let config = launch.file(
        "app.toml",
        &format!(
            "command = [\"node\", {worker:?}]\nworkers = 2\nlisten = [\"127.0.0.1:0\"]\nreadiness = \"node-ipc\"\n\
             stop_timeout = \"5s\"\n"
        ),
    );
    let mut launch = launch;
    launch.args = vec!["run".into(), "--config".into(), config.display().to_string()];
    let mut sheepdog = launch.spawn();
    let addr = sheepdog.bound_address();
    sheepdog.logs.wait_for("ready: 2/2 workers", 10 * SECOND);
    let requests = RequestLoop::start(addr);
    requests.wait_successes(50, 10 * SECOND);

    let rt_min = libc::SIGRTMIN();
    let rt_max = libc::SIGRTMAX();
    // (signal, what sheepdog logs for it, if anything)
    let mut cases: Vec<(i32, String)> = vec![
        (libc::SIGHUP, "reloaded to generation 2".into()),
        (libc::SIGUSR2, "reloaded to generation 3".into()),
        (libc::SIGUSR1, "received SIGUSR1: the flock now".into()),
        (libc::SIGTTIN, "scaling up to 3 workers".into()),
        (libc::SIGTTOU, "scaling down to 2 workers".into()),
    ];
    for signal in [
        libc::SIGALRM,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGIO,
        libc::SIGPWR,
        libc::SIGSTKFLT,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGTRAP,
        libc::SIGABRT,
        libc::SIGSYS,
        libc::SIGTSTP,
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
    ] {
        let name = nix::sys::signal::Signal::try_from(signal).unwrap().as_str();
        cases.push((signal, format!("received {name}: ignored")));
    }
    for signal in [rt_min, rt_min + 5, rt_max] {
        cases.push((signal, format!("received SIGRTMIN+{}: ignored", signal - rt_min)));
    }
    // Their defaults do nothing to a process: left as they are.
    for signal in [
        libc::SIGWINCH,
        libc::SIGURG,
        libc::SIGCONT,
        libc::SIGPIPE,
        libc::SIGCHLD,
    ] {
        cases.push((signal, String::new()));
    }
    for (signal, logged) in &cases {
        sheepdog.signal(*signal);
        if !logged.is_empty() {
            sheepdog.logs.wait_for(logged, 30 * SECOND);
        }
        assert!(
            sheepdog.child.try_wait().unwrap().is_none(),
            "signal {signal} ended sheepdog"
        );
    }
    requests.wait_successes(100, 10 * SECOND);
    let result = requests.stop();
    assert_eq!(result.failed, 0, "{:?}", result.errors);
    // The worker scaled away is drained (its queue closed and emptied)
    // before it gets its stop signal: it goes, not at once.
    wait_until(20 * SECOND, "the flock back to 2 workers", || {
        sheepdog.worker_pids().len() == 2
    });

    // SIGQUIT is a graceful stop, as in nginx and unicorn.
    sheepdog.signal(libc::SIGQUIT);
    assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(0));
    sheepdog.logs.wait_for("stopped on request", SECOND);
}
