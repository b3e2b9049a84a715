//! Round two, findings 7, 7a, 7b and 7c: the smaller ones, each on the
//! real binary.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::common::*;
use super::{SECOND, fixture, launch, run};

/// `workers` sleepers under a control socket of their own, once ready:
/// sheepdog and its config's path.
fn sleepers(launch: Launch, workers: u32) -> (Sheepdog, std::path::PathBuf) {
    let path = launch.file(
        "app.toml",
        &format!(
            "command = [\"sleep\", \"100000\"]\nlisten = [\"127.0.0.1:0\"]\nworkers = {workers}\n\
             ready_delay = \"100ms\"\ncontrol_socket = \"control.sock\"\n"
        ),
    );
    let sheepdog = run(launch, &path);
    sheepdog
        .logs
        .wait_for(&format!("ready: {workers}/{workers} workers"), 10 * SECOND);
    (sheepdog, path)
}

#[test]
fn an_unreachable_notify_socket_is_said_once_not_eleven_times_a_second() {
    let launch = Launch::new(&[])
        .env("NOTIFY_SOCKET", "/nonexistent/notify.sock")
        .env("WATCHDOG_USEC", "200000");
    let path = launch.file(
        "app.toml",
        "command = [\"sleep\", \"100000\"]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nready_delay = \"100ms\"\n",
    );
    let sheepdog = run(launch, &path);
    sheepdog.logs.wait_for("ready: 1/1 workers", 10 * SECOND);
    // Pings every 100 ms and a STATUS= or two: about 30 messages refused.
    let started = Instant::now();
    wait_until(10 * SECOND, "3 s of refused pings", || started.elapsed() >= 3 * SECOND);
    let lines = sheepdog.logs.count("cannot notify systemd");
    assert!((1..=2).contains(&lines), "{lines} lines: {:#?}", sheepdog.logs.lines());
}

#[test]
fn a_command_too_long_for_execve_is_a_bad_config() {
    let long = "x".repeat(200 * 1024);
    let launch = Launch::new(&[]);
    let path = launch.file(
        "app.toml",
        &format!("command = [\"echo\", \"{long}\"]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n"),
    );
    let check = sheepdog_client(&["check", "--config", path.to_str().unwrap()], 10 * SECOND);
    let said = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(78), "{said}");
    assert!(
        said.contains("app.toml:1:") && said.contains("command: argument 1 is 204800 bytes long"),
        "{said}"
    );
    // Arguments short enough each, too long together: under a stack limit
    // of 1 MiB, execve(2) takes 256 KiB of them (ARG_MAX is a quarter).
    let many: Vec<String> = (0..3).map(|_| format!("{:?}", "y".repeat(100 * 1024))).collect();
    std::fs::write(
        &path,
        format!(
            "command = [\"echo\", {}]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n",
            many.join(", ")
        ),
    )
    .unwrap();
    let mut sheepdog = run(launch.shell_prefix("ulimit -s 1024"), &path);
    assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(78));
    sheepdog.logs.wait_for("execve(2) takes (ARG_MAX", SECOND);
}

#[test]
fn a_socket_directory_another_user_made_first_does_not_stop_the_flock() {
    // nobody's default control socket directory, made first by root (as
    // any other local user could), open to all.
    let squatted = Path::new("/tmp/sheepdog-65534");
    let _ = std::fs::remove_dir_all(squatted);
    std::fs::create_dir(squatted).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = dir.path().join("app.toml");
    std::fs::write(
        &config,
        "command = [\"sleep\", \"100000\"]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nready_delay = \"100ms\"\n",
    )
    .unwrap();
    let nobody = |args: &[&str]| {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args(args)
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .current_dir(dir.path());
        command
    };
    let mut flock = nobody(&["run", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = flock.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = || {
        nobody(&["status", "--config", config.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let started = Instant::now();
    let mut answer = status();
    while !String::from_utf8_lossy(&answer.stdout).contains("1/1 ready") && started.elapsed() < 20 * SECOND {
        assert!(flock.try_wait().unwrap().is_none(), "the flock did not start");
        std::thread::sleep(Duration::from_millis(100));
        answer = status();
    }
    assert!(
        String::from_utf8_lossy(&answer.stdout).contains("1/1 ready"),
        "{}{}",
        String::from_utf8_lossy(&answer.stdout),
        String::from_utf8_lossy(&answer.stderr)
    );
    unsafe { libc::kill(flock.id() as i32, libc::SIGTERM) };
    assert_eq!(flock.wait().unwrap().code(), Some(0));
    let logs = logs.join().unwrap();
    assert!(logs.contains("/tmp/sheepdog-65534 belongs to uid 0"), "{logs}");
    std::fs::remove_dir_all(squatted).unwrap();
}

#[test]
fn a_client_whose_output_is_cut_short_does_not_panic() {
    let (_sheepdog, path) = sleepers(Launch::new(&[]), 3);
    for args in [vec!["status"], vec!["status", "--json"], vec!["--help"]] {
        // Its stdout is a pipe whose reader is gone before it writes.
        let mut child = Command::new(BIN)
            .args(&args)
            .args(if args[0] == "status" {
                vec!["--config", path.to_str().unwrap()]
            } else {
                vec![]
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_ne!(output.status.code(), Some(101), "{args:?}: {stderr}");
    }
}

#[test]
fn an_http_head_over_8_kib_is_refused_even_when_it_comes_in_one_piece() {
    let port = free_port();
    let launch = Launch::new(&[]);
    let path = launch.file(
        "app.toml",
        &format!(
            "command = [\"sleep\", \"100000\"]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nready_delay = \"100ms\"\n\
             [http]\nlisten = \"{port}\"\n"
        ),
    );
    let sheepdog = run(launch, &path);
    sheepdog.logs.wait_for("ready: 1/1 workers", 10 * SECOND);
    // 10 KiB: over the limit, yet complete by the third read of 4 KiB, where
    // only an incomplete head was held to the limit.
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(10 * 1024)
    );
    let mut stream = std::net::TcpStream::connect(port).unwrap();
    stream.set_read_timeout(Some(10 * SECOND)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:.200}");
}

#[test]
fn a_reload_refused_for_another_uid_says_why_not_broken_pipe() {
    let launch = Launch::new(&[]);
    std::fs::set_permissions(launch.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (sheepdog, _) = sleepers(launch, 1);
    let socket = sheepdog.dir.path().join("control.sock");
    // nobody, allowed past the socket file's mode 0600 (as a user with
    // CAP_DAC_OVERRIDE would be), is refused by sheepdog itself.
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+dac_override",
            "--ambient-caps=+dac_override",
            BIN,
            "reload",
            "--socket",
        ])
        .arg(&socket)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("only root or uid 0 may control sheepdog"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}

#[test]
fn a_worker_saying_errno_in_a_loop_does_not_flood_the_log() {
    let (sheepdog, _notify) = launch(
        &[
            "python3",
            "-c",
            "import os, socket, time\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
             s.connect(os.environ['NOTIFY_SOCKET'])\ns.send(b'READY=1')\n\
             for _ in range(20000):\n    s.send(b'ERRNO=5')\ntime.sleep(100000)\n",
        ],
        "readiness = \"notify\"\nworkers = 1\n",
        &[],
    );
    sheepdog.logs.wait_for("ready: 1/1 workers", 20 * SECOND);
    sheepdog.logs.wait_for("reports errno 5", 10 * SECOND);
    let started = Instant::now();
    wait_until(10 * SECOND, "2 s of ERRNO=5", || started.elapsed() >= 2 * SECOND);
    let lines = sheepdog.logs.count("reports errno 5");
    assert!(lines <= 5, "{lines} lines for 20,000 ERRNO=5");
}

#[test]
fn sigterm_stops_a_sheepdog_whose_parent_blocked_it() {
    // A wrapper that blocks SIGTERM, SIGHUP and SIGUSR1, then execs sheepdog.
    let launch = Launch::new(&[]);
    let path = launch.file(
        "app.toml",
        "command = [\"sleep\", \"100000\"]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nready_delay = \"100ms\"\n",
    );
    let mut launch = launch.program(Path::new("python3"));
    launch.args = vec![
        "-c".into(),
        "import os, signal, sys\nsignal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP, \
         signal.SIGUSR1})\nos.execv(sys.argv[1], sys.argv[1:])\n"
            .into(),
        BIN.into(),
        "run".into(),
        "--config".into(),
        path.display().to_string(),
    ];
    let mut sheepdog = launch.spawn();
    sheepdog.logs.wait_for("ready: 1/1 workers", 20 * SECOND);
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(0));
}

#[test]
fn a_one_worker_flock_whose_script_is_missing_ends_as_a_crash_loop() {
    let launch = Launch::new(&[]);
    let path = launch.file(
        "app.toml",
        "command = [\"sh\", \"missing-script.sh\"]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nrestart_window = \"1s\"\n",
    );
    let mut sheepdog = run(launch, &path);
    // Backed off to 30 s, it never passes max_restarts in a window of 1 s;
    // below min_ready for 5 windows with failures, it is a crash loop.
    assert_eq!(sheepdog.wait_exit(30 * SECOND).code(), Some(1));
    sheepdog.logs.wait_for("(5 × restart_window), with", SECOND);
}

#[test]
fn a_child_killed_with_its_workers_group_is_not_said_to_have_left_it() {
    let (sheepdog, _notify) = launch(
        &["sh", "-c", "sleep 100000 & exec sleep 100001"],
        "workers = 2\nready_delay = \"100ms\"\ncontrol_socket = \"control.sock\"\n",
        &[],
    );
    sheepdog.logs.wait_for("ready: 2/2 workers", 10 * SECOND);
    let config = sheepdog.dir.path().join("app.toml");
    let slot0 = || {
        let status = status_of(&config);
        let workers = status["workers"].as_array().cloned().unwrap_or_default();
        workers
            .iter()
            .find(|w| w["slot"] == 0 && w["state"] == "ready")
            .and_then(|w| w["pid"].as_i64())
    };
    for _ in 0..4 {
        let victim = slot0().expect("slot 0 serving");
        unsafe { libc::kill(victim as i32, libc::SIGKILL) };
        sheepdog
            .logs
            .wait_for(&format!("(pid {victim}) was killed by SIGKILL"), 10 * SECOND);
        wait_until(20 * SECOND, "slot 0's replacement", || {
            slot0().is_some_and(|pid| pid != victim)
        });
    }
    // The background sleep of each killed worker went with its group.
    assert_eq!(
        sheepdog.logs.count("left its process group") + sheepdog.logs.count("no worker started it"),
        0,
        "{:#?}",
        sheepdog.logs.lines()
    );
}

#[test]
fn a_flock_that_listens_on_ports_of_its_own_is_not_said_ready() {
    // readiness = "none": the classic app.listen(3000) without the preload
    // (node = "off"; with it, listen(3000) takes the passed socket).
    let port = free_port();
    let http = free_port();
    let (sheepdog, notify) = launch(
        &["node", &fixture("app-listen.js")],
        &format!("workers = 1\nnode = \"off\"\n[http]\nlisten = \"{http}\"\n"),
        &[("PORT", &port.port().to_string())],
    );
    sheepdog
        .logs
        .wait_for(&format!("listens on {port} itself, not on the socket"), 20 * SECOND);
    let readyz = get_path(http, "/readyz", 5 * SECOND).unwrap();
    assert_eq!(readyz.status, 503, "{readyz:?}");
    assert!(
        readyz.body.contains(&format!("worker 0 listens on {port} itself")),
        "{readyz:?}"
    );
    assert_eq!(notify.messages.count("READY=1"), 0);
    assert!(
        notify
            .messages
            .lines()
            .iter()
            .any(|l| l.starts_with("STATUS=0/1 ready"))
    );
}

#[test]
fn an_inspector_port_beside_the_passed_socket_is_no_cause_for_alarm() {
    let (sheepdog, notify) = launch(
        &[
            "node",
            "--inspect=127.0.0.1:0",
            &repo_path("examples/hello/server.js").display().to_string(),
        ],
        "workers = 1\nready_delay = \"200ms\"\ncontrol_socket = \"control.sock\"\n[memory]\ninterval = \"200ms\"\n",
        &[],
    );
    notify.messages.wait_for("READY=1", 20 * SECOND);
    let addr = sheepdog.bound_address();
    assert!(get(addr, 10 * SECOND).is_ok());
    // Its ports were looked at: once ready, and at the memory checks past
    // the ages of 1 and 2 s.
    let config = sheepdog.dir.path().join("app.toml");
    wait_until(20 * SECOND, "the worker to be 2.5 s old", || {
        status_of(&config)["workers"][0]["uptime_s"].as_f64().unwrap_or(0.0) > 2.5
    });
    assert_eq!(
        sheepdog.logs.count("itself, not on the socket"),
        0,
        "{:#?}",
        sheepdog.logs.lines()
    );
}
