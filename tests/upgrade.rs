//! Upgrading sheepdog itself in place, on the real binary: a copy of it is
//! installed in the test's directory and run from there; a test build under
//! another version (`tests/builds/next.rs`) is then installed over it, as a
//! package would, and `sheepdog upgrade` asked for. Under a request loop
//! (new connections and keep-alive): the same supervisor pid, the same
//! workers, the new executable, heartbeats still acted on, nothing failed.
//! And the ways it must not happen: a binary that exits at once, one of
//! another state format, one that is not executable, one that cannot take
//! the state (it hands it back).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const SECOND: Duration = Duration::from_secs(1);

/// A test build of sheepdog (an example target), built now if it is not
/// up to date: `cargo test` builds them, a `cargo test --test upgrade` may not.
fn test_build(name: &str) -> PathBuf {
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--locked", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo");
    assert!(status.success(), "cannot build the test build {name}");
    Path::new(BIN).parent().unwrap().join("examples").join(name)
}

/// Puts `from` at `path` as a package manager does: a new file renamed over
/// the old one (the running binary's file cannot be written to). The copy
/// is made by `cp`, not in this process: a file this multi-threaded process
/// had open for writing could still be open in a child another test thread
/// forks meanwhile, and executing it would fail with ETXTBSY.
fn install(from: &Path, path: &Path) {
    let fresh = path.with_extension("new");
    let copied = std::process::Command::new("cp").arg(from).arg(&fresh).status().unwrap();
    assert!(copied.success());
    std::fs::rename(&fresh, path).unwrap();
}

/// Installs a shell script at `path`, as `install` does.
fn write_script(path: &Path, text: &str) {
    let source = path.with_extension("script");
    std::fs::write(&source, text).unwrap();
    install(&source, path);
    let made = std::process::Command::new("chmod")
        .arg("755")
        .arg(path)
        .status()
        .unwrap();
    assert!(made.success());
}

/// What `/proc/PID/exe` points at, " (deleted)" and all.
fn exe_of(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .unwrap()
        .display()
        .to_string()
}

fn sorted(mut pids: Vec<i32>) -> Vec<i32> {
    pids.sort_unstable();
    pids
}

struct Flock {
    sheepdog: Sheepdog,
    notify: NotifySocket,
    config: PathBuf,
    /// Where the running binary was installed.
    binary: PathBuf,
    addr: std::net::SocketAddr,
}

/// sheepdog from a copy of its binary in the test's directory, with `workers`
/// of `command` (TOML) on a port of its own, heartbeats every 500 ms.
fn start(command: &str, readiness: &str, extra: &str, env: &[(&str, &str)]) -> Flock {
    let launch = Launch::new(&[]);
    let bin = launch.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let binary = bin.join("sheepdog");
    install(Path::new(BIN), &binary);
    start_from(launch, binary, command, readiness, extra, env)
}

/// As `start`, run as `binary` (already there).
fn start_from(
    launch: Launch,
    binary: PathBuf,
    command: &str,
    readiness: &str,
    extra: &str,
    env: &[(&str, &str)],
) -> Flock {
    let notify = NotifySocket::bind(launch.dir.path());
    let config = launch.file(
        "app.toml",
        &format!(
            "command = {command}\nworkers = 2\nlisten = [\"127.0.0.1:0\"]\nreadiness = \"{readiness}\"\n\
             ready_timeout = \"10s\"\nstop_timeout = \"5s\"\ncontrol_socket = \"control.sock\"\n{extra}\n\
             [heartbeat]\ninterval = \"500ms\"\n"
        ),
    );
    let mut launch = launch
        .program(&binary)
        .env("NOTIFY_SOCKET", notify.path.to_str().unwrap())
        .env("WATCHDOG_USEC", "2000000");
    for (key, value) in env {
        launch = launch.env(key, value);
    }
    launch.args = vec!["run".into(), "--config".into(), config.display().to_string()];
    let sheepdog = launch.spawn();
    let addr = sheepdog.bound_address();
    notify.messages.wait_for("READY=1", 20 * SECOND);
    Flock {
        sheepdog,
        notify,
        config,
        binary,
        addr,
    }
}

fn ipc_worker() -> String {
    format!(
        "[\"node\", {:?}]",
        repo_path("tests/fixtures/ipc-worker.js").display().to_string()
    )
}

fn node_flock(extra: &str, env: &[(&str, &str)]) -> Flock {
    let command = format!(
        "[\"node\", {:?}]",
        repo_path("tests/fixtures/ipc-worker.js").display().to_string()
    );
    start(&command, "node-ipc", extra, env)
}

impl Flock {
    /// `sheepdog ARGS --config …`.
    fn client(&self, args: &[&str]) -> std::process::Output {
        client_of(&self.config, args)
    }

    fn status(&self) -> serde_json::Value {
        status_of(&self.config)
    }

    fn upgrade(&self) -> (bool, String, String) {
        let output = self.client(&["upgrade"]);
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Its children: the workers, once a hand-over's guard (a child that
    /// watches the exec, released at the end of the new binary's first
    /// pass) is gone.
    fn workers(&self) -> Vec<i32> {
        let guards = || {
            self.sheepdog
                .worker_pids()
                .into_iter()
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sheepdog-guard")
                })
                .count()
        };
        wait_until(10 * SECOND, "the hand-over guard to go", || guards() == 0);
        sorted(self.sheepdog.worker_pids())
    }
}

/// Clients in loops, for as long as the test runs them: a new connection
/// per request, and one kept alive (for servers that keep connections).
struct Load {
    loops: Vec<RequestLoop>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Load {
        Load::of(vec![RequestLoop::start(addr), RequestLoop::keep_alive(addr)])
    }

    /// New connections only (Python's http.server speaks HTTP/1.0).
    fn fresh(addr: std::net::SocketAddr) -> Load {
        Load::of(vec![RequestLoop::start(addr)])
    }

    fn of(loops: Vec<RequestLoop>) -> Load {
        for one in &loops {
            one.wait_successes(20, 20 * SECOND);
        }
        Load { loops }
    }

    /// Some more successes of each, then all stopped: (ok, failed, errors).
    fn finish(self) -> (usize, usize, Vec<String>) {
        let mut totals = (0, 0, Vec::new());
        for one in self.loops {
            one.wait_successes(20, 20 * SECOND);
            let result = one.stop();
            totals.0 += result.ok;
            totals.1 += result.failed;
            totals.2.extend(result.errors);
        }
        totals
    }
}

#[test]
fn an_upgrade_under_load_keeps_the_pid_the_workers_and_every_request() {
    let next = test_build("sheepdog-next");
    let flock = node_flock("", &[]);
    let pid = flock.sheepdog.pid();
    let workers = flock.workers();
    assert_eq!(workers.len(), 2);
    let old_version = flock.status()["supervisor"]["version"].as_str().unwrap().to_string();
    let load = Load::start(flock.addr);
    let pings_before = flock.notify.messages.count("WATCHDOG=1");

    install(&next, &flock.binary);
    assert!(exe_of(pid).ends_with(" (deleted)"), "{}", exe_of(pid));
    let (ok, stdout, stderr) = flock.upgrade();
    assert!(ok, "{stdout}{stderr}");
    let new_version = format!("{old_version}+next");
    assert!(
        stdout.starts_with(&format!(
            "upgraded from {old_version} to {new_version} in place: pid {pid}"
        )),
        "{stdout}"
    );

    let (served, failed, errors) = load.finish();
    assert_eq!(failed, 0, "{errors:?}");
    assert!(served >= 80);
    // The same process, now running the binary installed at its path.
    assert!(alive(pid));
    assert_eq!(exe_of(pid), flock.binary.display().to_string());
    assert_eq!(flock.workers(), workers, "the same workers");
    let status = flock.status();
    assert_eq!(status["supervisor"]["pid"], pid);
    assert_eq!(status["supervisor"]["version"], new_version.as_str());
    assert_eq!(status["supervisor"]["upgraded"]["from"], old_version.as_str());
    assert_eq!(status["supervisor"]["upgraded"]["count"], 1);
    flock
        .sheepdog
        .logs
        .wait_for(&format!("upgraded from {old_version} to {new_version}"), 5 * SECOND);
    flock.notify.messages.wait_for(
        &format!("sheepdog {new_version}, upgraded from {old_version} at "),
        5 * SECOND,
    );
    // systemd's watchdog still hears from it.
    flock
        .notify
        .messages
        .wait_for_nth("WATCHDOG=1", pings_before + 2, 10 * SECOND);

    // Heartbeats are still read and acted on: a hung worker is killed.
    let hung = workers[0];
    unsafe { libc::kill(hung, libc::SIGSTOP) };
    flock
        .sheepdog
        .logs
        .wait_for(&format!("(pid {hung}) missed heartbeats"), 10 * SECOND);
    wait_until(10 * SECOND, "the hung worker's replacement", || {
        let now = flock.workers();
        now.len() == 2 && !now.contains(&hung)
    });
    // Its signal handlers are in place and the signal mask restored: SIGTERM
    // stops the flock gracefully, as before the upgrade.
    let mut flock = flock;
    let last = flock.workers();
    flock.sheepdog.signal(libc::SIGTERM);
    let status = flock.sheepdog.wait_exit(20 * SECOND);
    assert_eq!(status.code(), Some(0), "{:#?}", flock.sheepdog.logs.lines());
    assert!(last.iter().all(|pid| !alive(*pid)), "no worker outlives it");
}

#[test]
fn notify_workers_keep_heartbeating_through_an_upgrade() {
    let next = test_build("sheepdog-next");
    let command = format!(
        "[\"python3\", {:?}]",
        repo_path("tests/fixtures/http-worker.py").display().to_string()
    );
    let flock = start(&command, "notify", "", &[]);
    let pid = flock.sheepdog.pid();
    let workers = flock.workers();
    let load = Load::fresh(flock.addr);
    install(&next, &flock.binary);
    let (ok, stdout, stderr) = flock.upgrade();
    assert!(ok, "{stdout}{stderr}");
    let (_, failed, errors) = load.finish();
    assert_eq!(failed, 0, "{errors:?}");
    assert_eq!(flock.workers(), workers);
    assert_eq!(exe_of(pid), flock.binary.display().to_string());
    // Their notify sockets came through: heartbeats keep them alive for
    // three timeouts (1.5 s each), and a silenced one is killed.
    let ages = || -> Vec<f64> {
        flock.status()["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["heartbeat_age_s"].as_f64().unwrap())
            .collect()
    };
    wait_until(10 * SECOND, "heartbeats after the upgrade", || {
        ages().iter().all(|age| *age < 1.0)
    });
    let hung = workers[1];
    unsafe { libc::kill(hung, libc::SIGSTOP) };
    flock
        .sheepdog
        .logs
        .wait_for(&format!("(pid {hung}) missed heartbeats"), 10 * SECOND);
    assert!(flock.workers().contains(&workers[0]), "the other one kept beating");
}

#[test]
fn a_binary_that_cannot_take_over_is_refused_and_the_flock_serves_on() {
    let incompatible = test_build("sheepdog-incompatible");
    let next = test_build("sheepdog-next");
    let flock = node_flock("", &[]);
    let pid = flock.sheepdog.pid();
    let workers = flock.workers();
    let load = Load::start(flock.addr);
    let version = flock.status()["supervisor"]["version"].as_str().unwrap().to_string();

    // A script (one that exits at once): only a binary may take over.
    write_script(&flock.binary, "#!/bin/sh\nexit 1\n");
    let (ok, _, stderr) = flock.upgrade();
    assert!(!ok);
    assert!(stderr.contains("is a script (#!)"), "{stderr}");
    assert!(stderr.contains("nothing changed"), "{stderr}");
    // A binary that exits at once without answering its probe.
    install(Path::new("/bin/false"), &flock.binary);
    let (ok, _, stderr) = flock.upgrade();
    assert!(!ok);
    assert!(stderr.contains("is not a sheepdog that can take over"), "{stderr}");
    // One of another state format.
    install(&incompatible, &flock.binary);
    let (ok, _, stderr) = flock.upgrade();
    assert!(!ok);
    assert!(stderr.contains("+incompatible, which reads state format"), "{stderr}");
    assert!(stderr.contains("systemctl restart"), "{stderr}");
    // One that is not executable.
    install(&next, &flock.binary);
    std::fs::set_permissions(&flock.binary, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (ok, _, stderr) = flock.upgrade();
    assert!(!ok);
    assert!(
        stderr.contains("cannot execute") && stderr.contains("Permission denied"),
        "{stderr}"
    );

    let (_, failed, errors) = load.finish();
    assert_eq!(failed, 0, "{errors:?}");
    assert_eq!(flock.workers(), workers);
    assert_eq!(flock.status()["supervisor"]["version"], version.as_str());
    assert!(flock.status()["supervisor"]["upgraded"].is_null());
    assert_eq!(
        flock.sheepdog.logs.count("upgrade refused"),
        4,
        "{:#?}",
        flock.sheepdog.logs.lines()
    );
    // And a good one still takes over afterwards.
    std::fs::set_permissions(&flock.binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (ok, stdout, stderr) = flock.upgrade();
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(flock.sheepdog.pid(), pid);
    assert_eq!(flock.workers(), workers);
}

#[test]
fn a_new_binary_that_cannot_take_the_state_hands_it_back() {
    let next = test_build("sheepdog-next");
    // Fault injection (debug builds only): the new binary refuses the state.
    let flock = node_flock("", &[("SHEEPDOG_FAILPOINT", "adopt")]);
    let pid = flock.sheepdog.pid();
    let workers = flock.workers();
    let version = flock.status()["supervisor"]["version"].as_str().unwrap().to_string();
    let load = Load::start(flock.addr);
    install(&next, &flock.binary);
    let (ok, _, stderr) = flock.upgrade();
    assert!(!ok);
    assert!(
        stderr.contains(&format!("sheepdog {version}+next cannot take the flock over")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("sheepdog {version} took the flock back")),
        "{stderr}"
    );
    let (_, failed, errors) = load.finish();
    assert_eq!(failed, 0, "{errors:?}");
    // The old executable runs again, in the same process, with the same workers.
    assert_eq!(flock.sheepdog.pid(), pid);
    assert!(exe_of(pid).ends_with(" (deleted)"), "{}", exe_of(pid));
    assert_eq!(flock.workers(), workers);
    let status = flock.status();
    assert_eq!(status["supervisor"]["version"], version.as_str());
    assert!(status["supervisor"]["upgraded"].is_null());
    assert_eq!(status["supervisor"]["ready"], 2);
}

#[test]
fn a_reload_under_way_and_clients_half_heard_come_through_an_upgrade() {
    let next = test_build("sheepdog-next");
    let flock = node_flock("[http]\nlisten = \"127.0.0.1:0\"\n", &[]);
    let metrics = {
        let (_, line) = flock
            .sheepdog
            .logs
            .wait_for("health and metrics at http://", 5 * SECOND);
        let address = line.split("http://").nth(1).unwrap().split('/').next().unwrap();
        address.parse::<std::net::SocketAddr>().unwrap()
    };
    // A reload whose new workers take 2 s to be ready.
    let text = std::fs::read_to_string(&flock.config).unwrap();
    std::fs::write(
        &flock.config,
        format!("{text}[env]\nREADY_AFTER_MS = \"2000\"\nAPP_VERSION = \"2\"\n"),
    )
    .unwrap();
    let config = flock.config.display().to_string();
    let reload = std::thread::spawn(move || sheepdog_client(&["reload", "--config", &config], 60 * SECOND));
    wait_until(10 * SECOND, "the reload to begin", || {
        !flock.status()["supervisor"]["reloading_to"].is_null()
    });
    // A control client and an HTTP client, each halfway through its request.
    let mut control = std::os::unix::net::UnixStream::connect(flock.config.with_file_name("control.sock")).unwrap();
    std::io::Write::write_all(&mut control, br#"{"v":1,"cmd":"sta"#).unwrap();
    let mut scrape = std::net::TcpStream::connect(metrics).unwrap();
    std::io::Write::write_all(&mut scrape, b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();

    install(&next, &flock.binary);
    let (ok, stdout, stderr) = flock.upgrade();
    assert!(ok, "{stdout}{stderr}");

    // The reload's client hears the end of its reload from the new binary.
    let reloaded = reload.join().unwrap();
    let said = String::from_utf8_lossy(&reloaded.stdout);
    assert!(
        reloaded.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&reloaded.stderr)
    );
    assert!(said.contains("reloaded to generation 2"), "{said}");
    // The half-heard clients finish their requests and are answered.
    std::io::Write::write_all(&mut control, b"tus\"}\n").unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut control, &mut reply).unwrap();
    assert!(reply.contains("+next"), "{reply}");
    std::io::Write::write_all(&mut scrape, b"\r\n").unwrap();
    let mut page = String::new();
    std::io::Read::read_to_string(&mut scrape, &mut page).unwrap();
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(page.contains("+next\"} 1"), "{page}");
    let status = flock.status();
    assert_eq!(status["supervisor"]["generation"], 2);
    assert_eq!(status["supervisor"]["ready"], 2);
}

/// `BINARY upgrade --all`, which must succeed: what it printed.
fn upgrade_all(binary: &Path) -> String {
    let output = std::process::Command::new(binary)
        .args(["upgrade", "--all"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    said
}

#[test]
fn upgrade_all_finds_every_sheepdog_running_from_its_path() {
    let next = test_build("sheepdog-next");
    let first = node_flock("", &[]);
    let second = node_flock("", &[]);
    // Each runs from a binary of its own: --all from the first's finds it alone.
    let said = upgrade_all(&first.binary);
    assert!(said.contains(&format!("(pid {})", first.sheepdog.pid())), "{said}");
    assert!(
        !said.contains(&format!("(pid {})", second.sheepdog.pid())),
        "another path: {said}"
    );
    // Nothing new was installed: it handed over to the same build. Now a new one.
    assert!(said.contains("upgraded from"), "{said}");
    install(&next, &first.binary);
    install(&next, &second.binary);
    for flock in [&first, &second] {
        let said = upgrade_all(&flock.binary);
        assert!(said.contains("+next in place"), "{said}");
        assert_eq!(exe_of(flock.sheepdog.pid()), flock.binary.display().to_string());
    }
}

#[test]
fn a_symlink_swapped_to_another_release_is_followed() {
    let next = test_build("sheepdog-next");
    let launch = Launch::new(&[]);
    let root = launch.dir.path().to_path_buf();
    for (release, build) in [("a", Path::new(BIN)), ("b", next.as_path())] {
        std::fs::create_dir_all(root.join("releases").join(release)).unwrap();
        install(build, &root.join("releases").join(release).join("sheepdog"));
    }
    std::fs::create_dir(root.join("bin")).unwrap();
    let link = root.join("bin/sheepdog");
    std::os::unix::fs::symlink(root.join("releases/a/sheepdog"), &link).unwrap();
    let flock = start_from(launch, link.clone(), &ipc_worker(), "node-ipc", "", &[]);
    let pid = flock.sheepdog.pid();
    let workers = flock.workers();
    // Deployed as symlink farms do it: a new link renamed over the old one.
    let fresh = root.join("bin/sheepdog.new");
    std::os::unix::fs::symlink(root.join("releases/b/sheepdog"), &fresh).unwrap();
    std::fs::rename(&fresh, &link).unwrap();
    let (ok, stdout, stderr) = flock.upgrade();
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("+next in place"), "{stdout}");
    assert_eq!(exe_of(pid), root.join("releases/b/sheepdog").display().to_string());
    assert_eq!(flock.workers(), workers);
    assert_eq!(
        flock.status()["supervisor"]["exe"],
        link.display().to_string().as_str(),
        "it upgrades from the link, not from where it points"
    );
    // Rolled back the same way, with --all: found by the path it upgrades
    // from, though it runs from the other release.
    std::os::unix::fs::symlink(root.join("releases/a/sheepdog"), &fresh).unwrap();
    std::fs::rename(&fresh, &link).unwrap();
    let output = std::process::Command::new(&link)
        .args(["upgrade", "--all"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.contains(&format!("(pid {pid}): upgraded from ")), "{said}");
    assert_eq!(exe_of(pid), root.join("releases/a/sheepdog").display().to_string());
    assert_eq!(flock.workers(), workers);
}

#[test]
fn a_signal_sent_while_the_binaries_change_is_not_lost() {
    let next = test_build("sheepdog-next");
    // Fault injection (debug builds only): the new binary pauses half a
    // second before it takes over, every signal blocked meanwhile.
    let mut flock = node_flock("", &[("SHEEPDOG_FAILPOINT", "pause")]);
    let workers = flock.workers();
    install(&next, &flock.binary);
    let config = flock.config.clone();
    let upgrade = std::thread::spawn(move || client_of(&config, &["upgrade"]));
    // Once the new binary runs (its executable changed), and before it took over.
    let pid = flock.sheepdog.pid();
    wait_until(10 * SECOND, "the exec", || {
        exe_of(pid) == flock.binary.display().to_string()
    });
    flock.sheepdog.signal(libc::SIGTERM);
    let upgraded = upgrade.join().unwrap();
    let said = String::from_utf8_lossy(&upgraded.stdout);
    assert!(
        upgraded.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&upgraded.stderr)
    );
    // The SIGTERM waited, pending, for the new binary's handlers: a graceful stop.
    let status = flock.sheepdog.wait_exit(20 * SECOND);
    assert_eq!(status.code(), Some(0), "{:#?}", flock.sheepdog.logs.lines());
    flock.sheepdog.logs.wait_for("received SIGTERM", SECOND);
    assert!(workers.iter().all(|pid| !alive(*pid)));
}

#[test]
fn workers_output_is_still_attributed_after_an_upgrade() {
    // A pm2-style app: it says when its SIGINT handler runs, which it gets
    // (as SIGINT, from sheepdog's SIGTERM) only after the upgrade.
    let next = test_build("sheepdog-next");
    let command = format!(
        "[\"node\", {:?}]",
        repo_path("tests/fixtures/pm2/app.js").display().to_string()
    );
    let port = free_port().port().to_string();
    let mut flock = start(&command, "node-ipc", "", &[("PORT", &port)]);
    let workers = flock.workers();
    install(&next, &flock.binary);
    let (ok, stdout, stderr) = flock.upgrade();
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(flock.workers(), workers, "the same workers");
    flock.sheepdog.signal(libc::SIGTERM);
    assert_eq!(flock.sheepdog.wait_exit(20 * SECOND).code(), Some(0));
    // Their pipes were handed over: what they wrote after the exec is
    // passed on with their slot and pid.
    for (slot, pid) in workers.iter().enumerate() {
        let said = flock.sheepdog.logs.count(&format!(
            "-worker-{slot}[{pid}]: SIGINT: closing the server (pid {pid})"
        )) + flock.sheepdog.logs.count(&format!(
            "-worker-{}[{pid}]: SIGINT: closing the server (pid {pid})",
            1 - slot
        ));
        assert_eq!(said, 1, "{:#?}", flock.sheepdog.logs.lines());
    }
}

/// The release installed today (tests/fixtures/release), unpacked at `path`.
fn release_0_1_0(path: &Path) {
    let packed = repo_path("tests/fixtures/release/sheepdog-0.1.0.gz");
    let unpacked = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(&packed)
        .output()
        .expect("gzip");
    assert!(unpacked.status.success());
    let source = path.with_extension("gz-out");
    std::fs::write(&source, &unpacked.stdout).unwrap();
    std::fs::set_permissions(&source, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&source, path).unwrap();
}

#[test]
fn an_upgrade_from_release_0_1_0_keeps_the_pid_the_workers_and_every_request() {
    let launch = Launch::new(&[]);
    let bin = launch.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let binary = bin.join("sheepdog");
    release_0_1_0(&binary);
    let version = std::process::Command::new(&binary).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), "sheepdog 0.1.0");
    let flock = start_from(launch, binary, &ipc_worker(), "node-ipc", "", &[]);
    let pid = flock.sheepdog.pid();
    let workers = flock.workers();
    assert!(flock.status()["supervisor"]["upgraded"].is_null());
    let load = Load::start(flock.addr);
    install(Path::new(BIN), &flock.binary);
    let (ok, stdout, stderr) = flock.upgrade();
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.starts_with("upgraded from 0.1.0 to "), "{stdout}");
    let (served, failed, errors) = load.finish();
    assert_eq!(failed, 0, "{errors:?}");
    assert!(served >= 20, "{served}");
    assert!(alive(pid));
    assert_eq!(exe_of(pid), flock.binary.display().to_string());
    assert_eq!(flock.workers(), workers, "the same workers");
    let status = flock.status();
    assert_eq!(status["supervisor"]["pid"], pid);
    assert_eq!(status["supervisor"]["upgraded"]["from"], "0.1.0");
    assert_eq!(status["supervisor"]["upgraded"]["count"], 1);
    // The process runs the build under test now (a debug build, many times
    // the release's size).
    let running = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap().len();
    assert_eq!(running, std::fs::metadata(BIN).unwrap().len());
    // And it goes on supervising: a killed worker is replaced.
    unsafe { libc::kill(workers[0], libc::SIGKILL) };
    wait_until(10 * SECOND, "the replacement", || {
        let now = flock.workers();
        now.len() == 2 && !now.contains(&workers[0])
    });
}
