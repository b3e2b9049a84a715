//! Rolling reloads and the control plane on the real binary: new code under
//! load with zero failed requests (keep-alive and not), broken new code and
//! invalid configs that change nothing, resizing, `status`, and clients that
//! misbehave.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

const SECOND: Duration = Duration::from_secs(1);

struct App {
    sheepdog: Sheepdog,
    notify: NotifySocket,
    config: PathBuf,
    addr: std::net::SocketAddr,
}

fn config_text(workers: usize, env: &str, extra: &str) -> String {
    format!(
        "command = [\"node\", {:?}]\nworkers = {workers}\nlisten = [\"127.0.0.1:0\"]\nreadiness = \"node-ipc\"\n\
         ready_timeout = \"10s\"\nstop_timeout = \"5s\"\ncontrol_socket = \"control.sock\"\n{extra}\n\
         [heartbeat]\ninterval = \"500ms\"\n[env]\n{env}\n",
        repo_path("tests/fixtures/ipc-worker.js").display().to_string()
    )
}

fn start(workers: usize, env: &str) -> App {
    let launch = Launch::new(&[]);
    let notify = NotifySocket::bind(launch.dir.path());
    let config = launch.file("app.toml", &config_text(workers, env, ""));
    let mut launch = launch.env("NOTIFY_SOCKET", notify.path.to_str().unwrap());
    launch.args = vec![
        "run".into(),
        "--log-level".into(),
        "debug".into(),
        "--config".into(),
        config.display().to_string(),
    ];
    let sheepdog = launch.spawn();
    let addr = sheepdog.bound_address();
    notify.messages.wait_for("READY=1", 15 * SECOND);
    App {
        sheepdog,
        notify,
        config,
        addr,
    }
}

impl App {
    fn rewrite(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    fn client(&self, args: &[&str]) -> std::process::Output {
        client_of(&self.config, args)
    }

    fn status(&self) -> serde_json::Value {
        status_of(&self.config)
    }

    fn serving_pids(&self) -> HashSet<i64> {
        self.status()["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "ready")
            .map(|w| w["pid"].as_i64().unwrap())
            .collect()
    }

    /// Every STATUS= after the first READY=1 had at least `min` ready workers.
    fn never_below(&self, min: usize) {
        let messages = self.notify.messages.lines();
        let first_ready = messages.iter().position(|m| m == "READY=1").unwrap();
        for status in messages[first_ready..].iter().filter_map(|m| m.strip_prefix("STATUS=")) {
            let ready: usize = status.split('/').next().unwrap().parse().unwrap_or(0);
            assert!(ready >= min, "a moment with {ready} ready workers: {status}");
        }
    }
}

#[test]
fn a_reload_onto_new_code_under_load_loses_no_request() {
    let app = start(2, "APP_VERSION = \"1\"");
    let fresh = RequestLoop::start(app.addr);
    let kept = RequestLoop::keep_alive(app.addr);
    fresh.wait_successes(100, 10 * SECOND);
    kept.wait_successes(100, 10 * SECOND);

    app.rewrite(&config_text(2, "APP_VERSION = \"2\"", ""));
    let output = app.client(&["reload"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        stdout.starts_with("reloaded to generation 2 (2 workers) in"),
        "{stdout}"
    );
    let (reloading_at, _) = app.notify.messages.wait_for("RELOADING=1", SECOND);
    let monotonic = app
        .notify
        .messages
        .lines()
        .into_iter()
        .find(|m| m.starts_with("MONOTONIC_USEC="))
        .unwrap();
    assert!(monotonic["MONOTONIC_USEC=".len()..].parse::<u64>().unwrap() > 0);
    let (ready_again, _) = app.notify.messages.wait_for_nth("READY=1", 2, SECOND);
    assert!(ready_again > reloading_at);

    // And once more through SIGHUP, as systemd's notify-reload does.
    app.rewrite(&config_text(2, "APP_VERSION = \"3\"", ""));
    app.sheepdog.signal(libc::SIGHUP);
    app.notify.messages.wait_for_nth("READY=1", 3, 30 * SECOND);
    fresh.wait_successes(50, 10 * SECOND);
    // The kept-alive connection is answered by its version-2 worker until
    // that worker, drained of new connections first, gets its stop signal
    // and closes it after its next answer: then the client reconnects to
    // version 3. On a busy machine that can take more than 50 answers.
    wait_until(30 * SECOND, "the kept-alive client on version 3", || {
        kept.snapshot().versions.last().map(String::as_str) == Some("3")
    });
    let (fresh, kept) = (fresh.stop(), kept.stop());
    for (name, result) in [("new connection per request", &fresh), ("keep-alive", &kept)] {
        assert_eq!(result.failed, 0, "{name}: {:?}", result.errors);
        assert_eq!(result.versions.first().map(String::as_str), Some("1"), "{name}");
        assert_eq!(result.versions.last().map(String::as_str), Some("3"), "{name}");
        assert!(
            result.versions.iter().any(|v| v == "2"),
            "{name}: version 2 answered in between"
        );
    }
    app.never_below(2);
    assert_eq!(app.status()["supervisor"]["generation"], 3);
}

#[test]
fn a_reload_onto_code_that_crashes_at_boot_fails_and_the_old_workers_keep_serving() {
    let app = start(2, "APP_VERSION = \"1\"");
    let before = app.serving_pids();
    let fresh = RequestLoop::start(app.addr);
    fresh.wait_successes(50, 10 * SECOND);
    app.rewrite(&config_text(2, "APP_VERSION = \"2\"\nCRASH_AT_BOOT = \"1\"", ""));
    let output = app.client(&["reload"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("reload to generation 2 failed: worker 0"), "{stderr}");
    assert!(stderr.contains("exited with code 1"), "{stderr}");
    assert!(stderr.contains("generation 1 keeps serving"), "{stderr}");
    fresh.wait_successes(50, 10 * SECOND);
    let result = fresh.stop();
    assert_eq!(result.failed, 0, "{:?}", result.errors);
    assert!(result.versions.iter().all(|v| v == "1"));
    assert_eq!(app.serving_pids(), before);
    let status = app.status();
    assert_eq!(status["supervisor"]["last_reload"]["ok"], false);
    assert_eq!(status["supervisor"]["generation"], 1);
    let text = String::from_utf8_lossy(&app.client(&["status"]).stdout).into_owned();
    assert!(
        text.contains("last reload: FAILED: reload to generation 2 failed"),
        "{text}"
    );
    app.notify.messages.wait_for("reload to 2 failed", SECOND);
}

#[test]
fn a_reload_onto_code_that_never_becomes_ready_fails_at_ready_timeout() {
    let app = start(2, "APP_VERSION = \"1\"");
    let before = app.serving_pids();
    let kept = RequestLoop::keep_alive(app.addr);
    kept.wait_successes(50, 10 * SECOND);
    app.rewrite(
        &config_text(2, "NEVER_READY = \"1\"", "").replace("ready_timeout = \"10s\"", "ready_timeout = \"2s\""),
    );
    let started = Instant::now();
    let output = app.client(&["reload"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was not ready within 2s"), "{stderr}");
    assert!(started.elapsed() >= 2 * SECOND);
    kept.wait_successes(50, 10 * SECOND);
    let result = kept.stop();
    assert_eq!(result.failed, 0, "{:?}", result.errors);
    assert_eq!(app.serving_pids(), before);
    app.never_below(2);
}

#[test]
fn a_reload_with_an_invalid_config_is_refused_and_restarts_nothing() {
    let app = start(2, "");
    let before = app.serving_pids();
    let spawned = app.sheepdog.logs.count(") started, generation");
    app.rewrite("command = [\"node\"]\nworkers = 2\nstop_timeout = \"forever\"\ncontrol_socket = \"control.sock\"\n");
    let output = app.client(&["reload"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("app.toml:3:16: stop_timeout: \"forever\" does not start with a number"),
        "{stderr}"
    );
    assert_eq!(app.serving_pids(), before);
    assert_eq!(app.sheepdog.logs.count(") started, generation"), spawned);
    app.notify.messages.wait_for("RELOADING=1", SECOND);
    app.notify.messages.wait_for_nth("READY=1", 2, SECOND);
}

#[test]
fn a_reload_changes_the_worker_count_from_2_to_4_and_back() {
    let app = start(2, "");
    let fresh = RequestLoop::start(app.addr);
    for workers in [4, 2] {
        app.rewrite(&config_text(workers, "", ""));
        let output = app.client(&["reload"]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("({workers} workers)")));
        wait_until(10 * SECOND, "the retired workers to exit", || {
            app.sheepdog.worker_pids().len() == workers
        });
        assert_eq!(app.serving_pids().len(), workers);
    }
    fresh.wait_successes(20, 10 * SECOND);
    let result = fresh.stop();
    assert_eq!(result.failed, 0, "{:?}", result.errors);
    app.never_below(2);
}

#[test]
fn status_shows_every_worker_and_misbehaving_clients_change_nothing() {
    let app = start(2, "");
    // A client that connects and says nothing, and one that sends 10 MB.
    let socket = app.config.parent().unwrap().join("control.sock");
    let silent = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let flood = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            let chunk = vec![b'x'; 1 << 20];
            let mut sent = 0;
            for _ in 0..10 {
                match std::io::Write::write_all(&mut stream, &chunk) {
                    Ok(()) => sent += chunk.len(),
                    Err(_) => break,
                }
            }
            sent
        })
    };
    let status = app.status();
    let workers = status["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    let me = std::process::id() as i64;
    for worker in workers {
        assert_eq!(worker["state"], "ready");
        assert!(worker["pid"].as_i64().unwrap() > 0 && worker["pid"] != me);
        assert_eq!(worker["generation"], 1);
        assert!(worker["uptime_s"].as_f64().unwrap() > 0.0);
        assert!(worker["heartbeat_age_s"].as_f64().unwrap() < 5.0);
        assert!(worker["cpu_percent"].as_f64().unwrap() >= 0.0);
    }
    let slots: HashSet<i64> = workers.iter().map(|w| w["slot"].as_i64().unwrap()).collect();
    assert_eq!(slots, HashSet::from([0, 1]));
    assert_eq!(status["supervisor"]["pid"].as_i64().unwrap(), app.sheepdog.pid() as i64);

    let table = String::from_utf8_lossy(&app.client(&["status"]).stdout).into_owned();
    // Below the summary lines (the listen queue among them) comes the table.
    assert!(table.lines().any(|l| l.starts_with("slot  pid")), "{table}");
    let rows = table.lines().filter(|l| l.starts_with(|c: char| c.is_ascii_digit()));
    assert_eq!(rows.filter(|l| l.contains(" ready ")).count(), 2, "{table}");

    // The flood is cut off, and supervision goes on: a killed worker is replaced.
    flood.join().unwrap();
    app.sheepdog
        .logs
        .wait_for("request longer than 65536 bytes", 5 * SECOND);
    let victim = workers[0]["pid"].as_i64().unwrap() as i32;
    unsafe { libc::kill(victim, libc::SIGKILL) };
    app.sheepdog
        .logs
        .wait_for(&format!("(pid {victim}) was killed by SIGKILL"), 5 * SECOND);
    wait_until(10 * SECOND, "the replacement", || app.serving_pids().len() == 2);
    app.sheepdog.logs.wait_for("sent no request within 5s", 10 * SECOND);
    drop(silent);

    let output = app.client(&["scale", "3"]);
    assert!(output.status.success());
    wait_until(10 * SECOND, "3 workers", || app.serving_pids().len() == 3);
}

#[test]
fn clients_without_a_running_sheepdog_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let output = sheepdog_client(&["status", "--socket", socket.to_str().unwrap()], 10 * SECOND);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is sheepdog running with this config?"));
}

#[test]
fn an_invalid_config_during_a_roll_is_refused_and_systemd_hears_of_the_roll_alone() {
    let app = start(2, "APP_VERSION = \"1\"");
    // Workers that take 2.5 s to boot: the roll lasts about 5 s.
    app.rewrite(&config_text(2, "APP_VERSION = \"2\"\nREADY_AFTER_MS = \"2500\"", ""));
    app.sheepdog.signal(libc::SIGHUP);
    app.sheepdog.logs.wait_for("reloading: generation 1 to 2", 5 * SECOND);
    app.rewrite(&config_text(0, "", ""));
    app.sheepdog.signal(libc::SIGHUP);
    app.sheepdog.logs.wait_for(
        "reload refused: a reload to generation 2 is already in progress",
        5 * SECOND,
    );
    app.sheepdog.logs.wait_for("reloaded to generation 2", 30 * SECOND);
    // Datagrams arrive in order: once the roll's READY=1 is here, so is
    // anything sent before it.
    app.notify.messages.wait_for_nth("READY=1", 2, 5 * SECOND);
    // The STATUS= of the pass that sent READY=1 follows it.
    wait_until(5 * SECOND, "a STATUS= after the second READY=1", || {
        let messages = app.notify.messages.lines();
        let second_ready = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| *m == "READY=1")
            .nth(1)
            .map(|(i, _)| i);
        second_ready.is_some_and(|i| messages[i..].iter().any(|m| m.starts_with("STATUS=")))
    });
    let messages = app.notify.messages.lines();
    assert_eq!(
        messages.iter().filter(|m| *m == "RELOADING=1").count(),
        1,
        "one RELOADING=1, for the roll: {messages:#?}"
    );
    let reloading = messages.iter().position(|m| m == "RELOADING=1").unwrap();
    let ready_again = reloading + messages[reloading..].iter().position(|m| m == "READY=1").unwrap();
    let next_status = messages[ready_again..].iter().find(|m| m.starts_with("STATUS="));
    assert!(
        next_status.is_some_and(|s| s.contains("generation 2") && !s.contains("reloading")),
        "READY=1 came before the roll was done: {messages:#?}"
    );
    let status = app.status();
    assert_eq!(status["supervisor"]["last_reload"]["ok"], true, "{status}");
    assert_eq!(status["supervisor"]["generation"], 2);
}

#[test]
fn a_reload_client_that_stops_waiting_says_so_apart_from_a_failure() {
    let app = start(2, "APP_VERSION = \"1\"");
    app.rewrite(&config_text(2, "APP_VERSION = \"2\"\nREADY_AFTER_MS = \"1500\"", ""));
    let output = app.client(&["reload", "--timeout", "500ms"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("no reply within 500ms"), "{stderr}");
    assert!(stderr.contains("the reload goes on"), "{stderr}");
    app.sheepdog.logs.wait_for("reloaded to generation 2", 30 * SECOND);
    assert_eq!(app.status()["supervisor"]["last_reload"]["ok"], true);
}
