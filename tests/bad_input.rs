//! Bad input: a clear one-line error and exit 78 (EX_CONFIG), before any worker
//! is forked. Every case runs a worker command that would leave a marker file.

mod common;

use std::process::{Command, Output, Stdio};

use common::*;

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn marker(&self) -> std::path::PathBuf {
        self.dir.path().join("forked")
    }

    /// A config whose worker would prove a fork happened, plus `extra` lines.
    fn config(&self, extra: &str) -> String {
        let path = self.dir.path().join("app.toml");
        let text = format!(
            "command = [\"sh\", \"-c\", \"touch {}; sleep 600\"]\n{extra}",
            self.marker().display()
        );
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(Command::new(BIN).args(args))
    }

    fn run_with(&self, command: &mut Command) -> Output {
        let mut child = command
            .current_dir(self.dir.path())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("JOURNAL_STREAM")
            .env("RUNTIME_DIRECTORY", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded: a sheepdog that wrongly started would run forever.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("sheepdog did not exit on bad input");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait_with_output().unwrap()
    }

    /// Asserts exit 78, nothing forked, and one stderr line containing `expected`.
    fn refused(&self, output: &Output, expected: &str) {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "stderr: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "expected {expected:?} in {stderr:?}");
        assert!(!self.marker().exists(), "a worker was forked");
    }
}

#[test]
fn malformed_toml_names_the_file_and_line() {
    let case = Case::new();
    let config = case.config("workers = 2\nready_delay = \"1s\nstop_timeout = \"5s\"\n");
    let output = case.run(&["run", "--config", &config]);
    case.refused(&output, &format!("{config}:3:18: invalid basic string"));
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let case = Case::new();
    let config = case.config("wrokers = 2\n");
    case.refused(
        &case.run(&["run", "--config", &config]),
        &format!("{config}:2:1: wrokers: unknown key; did you mean `workers`?"),
    );
}

#[test]
fn zero_workers_is_refused() {
    let case = Case::new();
    let config = case.config("workers = 0\n");
    case.refused(
        &case.run(&["run", "--config", &config]),
        &format!("{config}:2:11: workers: must be at least 1"),
    );
    // The same on the command line is a usage error (exit 2, clap's convention).
    let output = case.run(&["run", "--workers", "0", "--", "true"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("must be at least 1"));
}

#[test]
fn negative_and_unparsable_durations_are_refused() {
    let case = Case::new();
    let config = case.config("stop_timeout = \"-5s\"\n");
    case.refused(
        &case.run(&["run", "--config", &config]),
        &format!("{config}:2:16: stop_timeout: \"-5s\" is negative"),
    );
    let config = case.config("ready_delay = \"soonish\"\n");
    case.refused(
        &case.run(&["run", "--config", &config]),
        "ready_delay: \"soonish\" does not start with a number",
    );
    let config = case.config("restart_window = \"10 fortnights\"\n");
    case.refused(
        &case.run(&["run", "--config", &config]),
        "restart_window: unknown duration unit \"fortnights\"",
    );
}

#[test]
fn a_missing_command_is_refused() {
    let case = Case::new();
    let path = case.dir.path().join("empty.toml");
    std::fs::write(&path, "workers = 2\n").unwrap();
    case.refused(
        &case.run(&["run", "--config", path.to_str().unwrap()]),
        "no command to run",
    );
    case.refused(&case.run(&["run"]), "no command to run");
    case.refused(
        &case.run(&["run", "--", "no-such-program-for-sheepdog"]),
        "the command line: command: `no-such-program-for-sheepdog` not found in PATH",
    );
}

#[test]
fn an_unreadable_config_file_is_refused() {
    let case = Case::new();
    case.refused(
        &case.run(&["run", "--config", "missing.toml"]),
        "missing.toml: cannot read the config: No such file or directory",
    );
}

#[test]
fn listen_fds_pointing_at_a_non_socket_is_refused_naming_the_fd() {
    let case = Case::new();
    let config = case.config("workers = 1\n");
    // LISTEN_PID must be sheepdog's own pid: sh exec's it in place, keeping $$.
    let output = case.run_with(
        Command::new("sh")
            .arg("-c")
            .arg("exec 3</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" run --config \"$1\"")
            .arg(BIN)
            .arg(&config),
    );
    case.refused(&output, "fd 3 from LISTEN_FDS is not a socket");
}

#[test]
fn a_bind_address_in_use_is_refused() {
    let case = Case::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let config = case.config("workers = 1\n");
    // Who holds it is named: this test process.
    case.refused(
        &case.run(&["run", "--config", &config, "--listen", &addr]),
        &format!("cannot bind {addr}, held by pid {} (", std::process::id()),
    );
}

#[test]
fn check_prints_the_effective_settings_or_refuses() {
    let case = Case::new();
    let config = case.config("workers = 3\nstop_timeout = \"90s\"\n");
    let output = case.run(&["check", "--config", &config]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("workers = 3\n"), "{stdout}");
    assert!(stdout.contains("min_ready = 3\n"), "{stdout}");
    assert!(stdout.contains("stop_timeout = \"90s\"\n"), "{stdout}");
    assert!(
        stdout.contains("# listen = [\"127.0.0.1:8080\"] (the default; under systemd, its sockets)\n"),
        "{stdout}"
    );
    assert!(!case.marker().exists());

    let config = case.config("workers = -1\n");
    case.refused(
        &case.run(&["check", "--config", &config]),
        "workers: must be at least 1 (got -1)",
    );
}

#[test]
fn a_system_out_of_file_descriptors_at_start_exits_71_not_78() {
    use std::os::unix::process::CommandExt;
    let case = Case::new();
    let config = case.config("listen = [\"127.0.0.1:0\"]\n");
    // A hard limit of 64 (enough for the flock: sheepdog refuses one that
    // cannot fit with 78, before this), all but `free` fds taken by fds
    // leaked into sheepdog: whichever of its own fds it cannot get first
    // (the listening socket, /dev/null, the control socket…), it is the
    // system's shortage (EX_OSERR), not a bad config.
    let mut failing = std::collections::BTreeSet::new();
    for free in [1, 2, 3] {
        let mut command = Command::new(BIN);
        command.args(["run", "--config", &config]);
        // SAFETY: setrlimit, open, fcntl and dup2 are async-signal-safe;
        // nothing else runs in the child.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: 64,
                    rlim_max: 64,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Exactly `free` fds free at exec, whatever this process had
                // open (other tests' close-on-exec fds would leave holes;
                // std's exec-error pipe goes too: its parent then reads EOF).
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                for fd in 3..64 - free {
                    if fd != null {
                        libc::dup2(null, fd);
                    }
                }
                libc::fcntl(null, libc::F_SETFD, 0);
                for fd in 64 - free..64 {
                    if fd != null {
                        libc::close(fd);
                    }
                }
                Ok(())
            });
        }
        let output = case.run_with(&mut command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(71), "{free} fds free: {stderr}");
        assert!(stderr.contains("Too many open files"), "{stderr}");
        assert!(!case.marker().exists(), "a worker was forked");
        failing.insert(
            stderr
                .split(": Too many open files")
                .next()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert!(
        failing.len() >= 2,
        "the shortage was met in different places: {failing:?}"
    );
}
