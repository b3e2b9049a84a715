//! Coming from pm2: apps written the pm2 way (`app.listen(PORT || 3000)`,
//! `process.send('ready')`, a graceful stop on SIGINT alone or on SIGTERM
//! alone, a cron in `NODE_APP_INSTANCE` 0) and a seed-style cluster master
//! run with the one-line command and nothing else: every worker serves the
//! app's own port, and stop, reload and a memory recycle run the app's own
//! graceful handler.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::*;

const SECOND: Duration = Duration::from_secs(1);

struct App {
    sheepdog: Sheepdog,
    addr: SocketAddr,
    socket: String,
}

/// `sheepdog run ARGS -- node FIXTURE`, the app's port given as pm2 users
/// do (PORT in its environment), nothing else.
fn run(args: &[&str], fixture: &str, env: &[(&str, &str)]) -> App {
    let script = repo_path(&format!("tests/fixtures/pm2/{fixture}"))
        .display()
        .to_string();
    let mut all = args.to_vec();
    all.extend(["--", "node", &script]);
    run_with(&all, env)
}

/// `sheepdog run ARGS`, with PORT set to a free port.
fn run_with(args: &[&str], env: &[(&str, &str)]) -> App {
    let port = free_port().port();
    let mut all = vec!["run"];
    all.extend(args);
    let mut launch = Launch::new(&all).env("PORT", &port.to_string());
    for (key, value) in env {
        launch = launch.env(key, value);
    }
    let sheepdog = launch.spawn();
    let socket = control_socket_of(&sheepdog);
    App {
        sheepdog,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        socket,
    }
}

impl App {
    fn client(&self, args: &[&str]) -> std::process::Output {
        let mut all = args.to_vec();
        all.extend(["--socket", &self.socket]);
        sheepdog_client(&all, 60 * SECOND)
    }

    /// The JSON the app answers: its pid, NODE_APP_INSTANCE and port.
    fn ask(&self) -> Option<serde_json::Value> {
        let response = get(self.addr, 5 * SECOND).ok()?;
        serde_json::from_str(response.body.trim()).ok()
    }

    /// Asks until `n` different pids answered (bounded); pid → answer.
    fn serving(&self, n: usize) -> HashMap<i64, serde_json::Value> {
        let mut seen = HashMap::new();
        wait_until(30 * SECOND, &format!("{n} workers answering"), || {
            if let Some(answer) = self.ask() {
                seen.insert(answer["pid"].as_i64().unwrap(), answer);
            }
            seen.len() >= n
        });
        seen
    }

    fn stop(mut self) -> Recorder {
        self.sheepdog.signal(libc::SIGTERM);
        assert_eq!(self.sheepdog.wait_exit(30 * SECOND).code(), Some(0));
        self.sheepdog.logs.clone()
    }
}

/// The control socket sheepdog said it took, on its first line.
fn control_socket_of(sheepdog: &Sheepdog) -> String {
    let (_, line) = sheepdog.logs.wait_for("; control socket ", 30 * SECOND);
    line.rsplit("; control socket ").next().unwrap().trim().to_string()
}

fn pids_of(answers: &HashMap<i64, serde_json::Value>) -> HashSet<i64> {
    answers.keys().copied().collect()
}

/// What the app printed when its handler for `signal` ran to the end in `pid`.
fn drained(logs: &Recorder, signal: &str, pid: i64) -> bool {
    logs.count(&format!("{signal}: closing the server (pid {pid})")) == 1
        && logs.count(&format!("graceful stop done (pid {pid})")) == 1
}

#[test]
fn a_pm2_app_runs_unchanged_on_its_own_port_and_drains_on_its_sigint_handler() {
    let app = run(&["--workers", "2"], "app.js", &[]);
    app.sheepdog.logs.wait_for(
        &format!(
            "`node {}` listens on [::]:{}",
            repo_path("tests/fixtures/pm2/app.js").display(),
            app.addr.port()
        ),
        30 * SECOND,
    );
    let first = app.serving(2);
    for answer in first.values() {
        assert_eq!(
            answer["port"],
            app.addr.port(),
            "served on the app's own port: {answer}"
        );
    }
    let instances: HashSet<String> = first
        .values()
        .map(|a| a["instance"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        instances,
        HashSet::from(["0".to_string(), "1".to_string()]),
        "NODE_APP_INSTANCE"
    );
    // The cron of instance 0 runs once: the port probe's run is not a worker.
    app.sheepdog.logs.wait_for("cron runs in instance 0", 5 * SECOND);
    assert_eq!(app.sheepdog.logs.count("cron runs in instance 0"), 1);
    assert!(
        !app.sheepdog.logs.lines().iter().any(|l| l.contains("EADDRINUSE")),
        "{:#?}",
        app.sheepdog.logs.lines()
    );

    // Each worker's lines come out attributed (not under journald), and
    // `logs` shows them: all, one worker's, by the app's name.
    let worker0 = first
        .iter()
        .find(|(_, a)| a["instance"] == "0")
        .map(|(pid, _)| *pid)
        .unwrap();
    app.sheepdog.logs.wait_for(
        &format!("app-worker-0[{worker0}]: app listening on port {}", app.addr.port()),
        10 * SECOND,
    );
    let output = app.client(&["logs", "-n", "20"]);
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        said.contains(&format!("Z app-worker-0[{worker0}]: cron runs in instance 0")),
        "{said}"
    );
    assert!(said.lines().any(|l| l.contains("app-worker-1[")), "{said}");
    let output = app.client(&["logs", "--worker", "1"]);
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        !said.is_empty() && said.lines().all(|l| l.contains(" app-worker-1[")),
        "{said}"
    );

    // scale +1 adds one: a third worker, instance 2.
    let output = app.client(&["scale", "+1"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "scaling to 3 workers (from 2)"
    );
    let three = app.serving(3);
    assert!(three.values().any(|a| a["instance"] == "2"), "{three:?}");
    let output = app.client(&["scale", "-1"]);
    assert!(output.status.success());
    wait_until(30 * SECOND, "2 workers again", || app.sheepdog.worker_pids().len() == 2);

    // A reload stops the old workers with sheepdog's SIGTERM; the app's
    // SIGINT handler runs, to the end, in each.
    let before = pids_of(&app.serving(2));
    let output = app.client(&["reload"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for pid in &before {
        wait_until(30 * SECOND, "the old worker's graceful stop", || {
            drained(&app.sheepdog.logs, "SIGINT", *pid)
        });
    }
    let after = pids_of(&app.serving(2));
    assert!(after.is_disjoint(&before), "new workers after the reload");

    let logs = app.stop();
    for pid in after {
        assert!(drained(&logs, "SIGINT", pid), "{:#?}", logs.lines());
    }
    assert_eq!(logs.count("was killed by SIGKILL"), 0, "{:#?}", logs.lines());
}

/// A memory recycle, a reload and a stop of an app that handles only
/// `signal`: each worker that goes runs the app's own handler to the end.
fn recycle_reload_and_stop(signal: &str) {
    let launch_dir = tempfile::tempdir().unwrap();
    let config = launch_dir.path().join("app.toml");
    std::fs::write(
        &config,
        format!(
            "command = [\"node\", {:?}]\nworkers = 2\n[memory]\nlimit = \"60MiB\"\ninterval = \"200ms\"\n",
            repo_path("tests/fixtures/pm2/app.js").display().to_string()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let app = run(&["--config", &config], "app.js", &[("STOP_ON", signal)]);
    app.serving(2);
    // One worker grows past the limit (Node at rest is some 26 MiB of PSS;
    // 64 MiB more is well over): it is replaced, replacement first, and
    // stopped with the signal it handles.
    let grown = get_path(app.addr, "/grow", 10 * SECOND).unwrap();
    let grown: serde_json::Value = serde_json::from_str(grown.body.trim()).unwrap();
    let grown = grown["pid"].as_i64().unwrap();
    // Its last lines reach the log after it is gone (sheepdog reads its
    // output pipe to the end): wait for them, not for its death.
    let deadline = std::time::Instant::now() + 30 * SECOND;
    while !drained(&app.sheepdog.logs, signal, grown) {
        assert!(
            std::time::Instant::now() < deadline,
            "the grown worker (pid {grown}, alive: {}) did not drain on {signal}: {:#?}",
            alive(grown as i32),
            app.sheepdog.logs.lines()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A reload: every worker of before drains on its handler.
    wait_until(30 * SECOND, "two workers serving", || {
        app.sheepdog.worker_pids().len() == 2
    });
    let before: Vec<i64> = app.sheepdog.worker_pids().into_iter().map(i64::from).collect();
    let output = app.client(&["reload"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for pid in &before {
        wait_until(30 * SECOND, "the old worker's graceful stop", || {
            drained(&app.sheepdog.logs, signal, *pid)
        });
    }
    // A stop: the new ones too.
    let after = pids_of(&app.serving(2));
    let logs = app.stop();
    for pid in after {
        assert!(drained(&logs, signal, pid), "{:#?}", logs.lines());
    }
    assert_eq!(logs.count("was killed by SIGKILL"), 0, "{:#?}", logs.lines());
}

#[test]
fn an_app_that_handles_only_sigterm_drains_on_it_through_a_recycle_a_reload_and_a_stop() {
    recycle_reload_and_stop("SIGTERM");
}

#[test]
fn an_app_that_handles_only_sigint_drains_on_it_through_a_recycle_a_reload_and_a_stop() {
    recycle_reload_and_stop("SIGINT");
}

#[test]
fn a_seed_style_cluster_master_runs_its_worker_branch_in_each_worker() {
    let app = run(&["--workers", "2"], "seed-cluster.js", &[]);
    let answers = app.serving(2);
    let ids: HashSet<i64> = answers.values().map(|a| a["worker"].as_i64().unwrap()).collect();
    assert_eq!(ids, HashSet::from([1, 2]), "cluster.worker.id is the slot + 1");
    // No worker forked children of its own: sheepdog is the primary.
    for pid in app.sheepdog.worker_pids() {
        assert_eq!(children(pid), Vec::<i32>::new(), "worker {pid} forked");
    }
    assert!(!app.sheepdog.logs.lines().iter().any(|l| l.contains("EADDRINUSE")));
    let logs = app.stop();
    assert_eq!(logs.count("primary "), 0, "no primary ran: {:#?}", logs.lines());
}

#[test]
fn under_socket_activation_the_app_serves_the_passed_socket_whatever_its_port() {
    let addr = free_port();
    let script = repo_path("tests/fixtures/pm2/app.js").display().to_string();
    let sheepdog = Launch::new(&["run", "--workers", "2", "--", "node", &script])
        .activated(addr)
        .spawn();
    // systemd-socket-activate starts sheepdog at the first connection.
    let mut pids = HashSet::new();
    wait_until(30 * SECOND, "both workers on the passed socket", || {
        if let Ok(response) = get(addr, 5 * SECOND) {
            let answer: serde_json::Value = serde_json::from_str(response.body.trim()).unwrap();
            assert_eq!(answer["port"], addr.port());
            pids.insert(answer["pid"].as_i64().unwrap());
        }
        pids.len() == 2
    });
    sheepdog.logs.wait_for("passed by systemd", 5 * SECOND);
    assert_eq!(
        sheepdog.logs.count("found by starting it once"),
        0,
        "no probe under systemd"
    );
}

#[test]
fn an_ecosystem_file_imports_to_configs_that_check_and_run() {
    let out = tempfile::tempdir().unwrap();
    let (api_port, admin_port) = (free_port().port(), free_port().port());
    let ecosystem = repo_path("tests/fixtures/pm2/ecosystem.config.js")
        .display()
        .to_string();
    let out_dir = out.path().display().to_string();
    let output = std::process::Command::new(BIN)
        .args(["import", &ecosystem, "--out", &out_dir, "--env", "production"])
        .env("API_PORT", api_port.to_string())
        .env("ADMIN_PORT", admin_port.to_string())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for name in ["api", "admin"] {
        assert!(
            said.contains(&format!("wrote {out_dir}/{name}.toml (sheepdog check: ok)")),
            "{said}"
        );
    }
    assert!(said.contains("not mapped: out_file = "), "listed, not dropped: {said}");
    assert!(said.contains("env sets not applied: staging"), "{said}");
    let api = std::fs::read_to_string(out.path().join("api.toml")).unwrap();
    assert!(api.contains("NODE_ENV = \"production\""), "{api}");
    assert!(api.contains("readiness = \"node-ipc\""), "{api}");
    assert!(api.contains("limit = \"300MiB\""), "{api}");
    // `sheepdog check` takes each as it is.
    for name in ["api", "admin"] {
        let path = out.path().join(format!("{name}.toml")).display().to_string();
        let check = sheepdog_client(&["check", "--config", &path], 30 * SECOND);
        assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    }
    // And the api runs: 2 workers on its port, ready by process.send('ready').
    let config = out.path().join("api.toml").display().to_string();
    let app = run_with(&["--config", &config], &[]);
    let app = App {
        addr: SocketAddr::from(([127, 0, 0, 1], api_port)),
        ..app
    };
    let answers = app.serving(2);
    assert!(answers.values().all(|a| a["port"] == api_port), "{answers:?}");
    app.sheepdog.logs.wait_for("ready: 2/2 workers", 30 * SECOND);
    let logs = app.stop();
    assert_eq!(logs.count("graceful stop done"), 2, "{:#?}", logs.lines());
}

#[test]
fn logs_by_the_apps_name_as_pm2_logs_app_and_follow_new_lines() {
    // A name of its own: the script's, as pm2 names an app.
    let dir = tempfile::tempdir().unwrap();
    let name = format!("shop{}", std::process::id());
    let script = dir.path().join(format!("{name}.js"));
    std::fs::copy(repo_path("tests/fixtures/pm2/app.js"), &script).unwrap();
    let port = free_port().port();
    let mut sheepdog = Launch::new(&["run", "--workers", "1", "--", "node", script.to_str().unwrap()])
        .with_default_paths()
        .env("PORT", &port.to_string())
        .spawn();
    sheepdog.logs.wait_for(&format!("{name}-worker-0["), 30 * SECOND);
    let output = sheepdog_client(&["logs", &name, "-n", "1"], 10 * SECOND);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(said.contains(&format!(" {name}-worker-0[")), "{said}");
    // -f prints what comes next: the lines of a worker added meanwhile.
    let mut follow = std::process::Command::new(BIN)
        .args(["logs", &name, "-f", "-n", "5"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let reader = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(reader).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let socket = control_socket_of(&sheepdog);
    let scaled = sheepdog_client(&["scale", "+1", "--socket", &socket], 10 * SECOND);
    assert!(scaled.status.success(), "{}", String::from_utf8_lossy(&scaled.stderr));
    let deadline = std::time::Instant::now() + 20 * SECOND;
    let mut seen = Vec::new();
    let wanted = format!(" {name}-worker-1[");
    while !seen
        .iter()
        .any(|l: &String| l.contains(&wanted) && l.contains("app listening on port"))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("the new worker's line was not followed: {seen:?}"),
        }
    }
    sheepdog.signal(libc::SIGTERM);
    assert!(seen.iter().all(|l| l.contains(&format!(" {name}-worker-"))), "{seen:?}");
    assert_eq!(sheepdog.wait_exit(20 * SECOND).code(), Some(0));
    let _ = follow.kill();
    let _ = follow.wait();
}

/// The first code span of each row's sheepdog column in the README's
/// "Coming from pm2" table.
fn pm2_table_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let section = readme.split("## Coming from pm2").nth(1).unwrap();
    section
        .lines()
        .skip_while(|l| !l.starts_with("| pm2 | sheepdog |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let sheepdog = row.trim_matches('|').split(" | ").nth(1).unwrap();
            let command = sheepdog.split('`').nth(1).unwrap();
            command.strip_prefix("sudo ").unwrap_or(command).to_string()
        })
        .collect()
}

#[test]
fn every_command_of_the_coming_from_pm2_table_runs() {
    let commands = pm2_table_commands();
    assert!(commands.len() >= 12, "{commands:?}");
    let fixtures = repo_path("tests/fixtures/pm2");
    let port = free_port().port().to_string();
    let runs: Vec<&String> = commands.iter().filter(|c| c.starts_with("sheepdog run ")).collect();
    assert_eq!(runs.len(), 2, "{commands:?}");
    let mut checked = 0;
    for run in runs {
        let words: Vec<&str> = run.split_whitespace().skip(1).collect();
        let mut launch = Launch::new(&words).with_default_paths().env("PORT", &port);
        launch.args.iter_mut().for_each(|a| {
            if a == "app.js" {
                *a = fixtures.join("app.js").display().to_string();
            }
        });
        let sheepdog = launch.spawn();
        let socket = control_socket_of(&sheepdog);
        let (_, ready) = sheepdog.logs.wait_for("ready: ", 30 * SECOND);
        assert!(ready.contains("ready: "), "{ready}");
        let addr = SocketAddr::from(([127, 0, 0, 1], port.parse().unwrap()));
        wait_until(30 * SECOND, "an answer on the app's port", || {
            get(addr, 5 * SECOND).is_ok()
        });
        checked += 1;
        if checked > 1 {
            continue;
        }
        // Every client row, against this flock. The socket is named: other
        // flocks of this suite run beside it.
        for command in commands.iter().filter(|c| c.starts_with("sheepdog ")) {
            let mut words: Vec<String> = command.split_whitespace().skip(1).map(str::to_string).collect();
            let out = tempfile::tempdir().unwrap();
            match words[0].as_str() {
                "run" | "install" | "uninstall" | "top" => continue,
                "import" => {
                    words.iter_mut().for_each(|w| {
                        if w == "DIR" {
                            *w = out.path().display().to_string();
                        } else if w == "ecosystem.config.js" {
                            *w = fixtures.join(&*w).display().to_string();
                        }
                    });
                }
                "logs" => {
                    // By the app's name: it must be found among those running.
                }
                _ => {
                    words.retain(|w| w != "--socket" && w != "PATH");
                    words.extend(["--socket".to_string(), socket.clone()]);
                }
            }
            let args: Vec<&str> = words.iter().map(String::as_str).collect();
            let output = sheepdog_client(&args, 60 * SECOND);
            assert!(
                output.status.success(),
                "`sheepdog {}`: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            checked += 1;
        }
        drop(sheepdog);
    }
    let clients = commands
        .iter()
        .filter(|c| c.starts_with("sheepdog "))
        .filter(|c| !["run", "install", "uninstall", "top"].contains(&c.split_whitespace().nth(1).unwrap()))
        .count();
    assert!(clients >= 7, "{commands:?}");
    assert_eq!(checked, 2 + clients, "every run and client row ran");
}
