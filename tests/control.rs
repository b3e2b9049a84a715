//! The control socket as a side channel: it never fails the flock, never
//! shuts an operator out, and never removes a file that is not its own.

mod common;

use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use common::*;

const SECOND: Duration = Duration::from_secs(1);

fn start(launch: Launch, config: &str) -> Sheepdog {
    let file = launch.file("app.toml", config);
    let mut launch = launch;
    launch.args = vec!["run".into(), "--config".into(), file.display().to_string()];
    let sheepdog = launch.spawn();
    sheepdog.logs.wait_for("ready: 1/1 workers", 10 * SECOND);
    sheepdog
}

const SLEEPER: &str =
    "command = [\"sleep\", \"600\"]\nworkers = 1\nlisten = [\"127.0.0.1:0\"]\nready_delay = \"100ms\"\n";

#[test]
fn a_control_socket_file_replaced_by_another_is_left_in_place_on_exit() {
    let mut sheepdog = start(
        Launch::new(&[]),
        &format!("{SLEEPER}control_socket = \"control.sock\"\n"),
    );
    let path = sheepdog.dir.path().join("control.sock");
    assert!(path.exists());
    // Someone else (another sheepdog, an operator) takes the path over.
    std::fs::remove_file(&path).unwrap();
    let _other = UnixListener::bind(&path).unwrap();
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(0));
    assert!(path.exists(), "sheepdog removed a socket file that was not its own");
}

#[test]
fn idle_clients_never_shut_out_an_operators_status() {
    let sheepdog = start(
        Launch::new(&[]),
        &format!("{SLEEPER}control_socket = \"control.sock\"\n"),
    );
    let path = sheepdog.dir.path().join("control.sock");
    let idle: Vec<UnixStream> = (0..64).map(|_| UnixStream::connect(&path).unwrap()).collect();
    // Every one of them is accepted before the operator comes.
    wait_until(5 * SECOND, "64 idle clients accepted", || {
        sheepdog.logs.count("disconnecting idle client") == 0 && {
            let fds = std::fs::read_dir(format!("/proc/{}/fd", sheepdog.pid()))
                .unwrap()
                .count();
            fds >= 64
        }
    });
    let started = Instant::now();
    let output = sheepdog_client(&["status", "--socket", path.to_str().unwrap()], 10 * SECOND);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        started.elapsed() < 4 * SECOND,
        "answered only after the idle clients timed out ({:?})",
        started.elapsed()
    );
    sheepdog.logs.wait_for("disconnecting idle client", SECOND);
    drop(idle);
}

#[test]
fn two_flocks_with_the_same_default_control_socket_both_run_and_are_both_listed() {
    // Two configs of the same name in two folders default to the same
    // control socket path.
    let name = format!("collide-{}", std::process::id());
    let config = format!("{SLEEPER}name = \"{name}\"\n");
    let launch = |config: &str| {
        let launch = Launch::new(&[]).with_default_paths();
        let file = launch.file(&format!("{name}.toml"), config);
        (launch, file)
    };
    let (first, first_file) = launch(&config);
    let (second, second_file) = launch(&config);
    let run = |mut launch: Launch, file: &std::path::Path| {
        launch.args = vec!["run".into(), "--config".into(), file.display().to_string()];
        let sheepdog = launch.spawn();
        sheepdog.logs.wait_for("ready: 1/1 workers", 10 * SECOND);
        sheepdog
    };
    let mut first = run(first, &first_file);
    let mut second = run(second, &second_file);
    second
        .logs
        .wait_for("is taken by another running sheepdog; using", SECOND);

    // Each config's client finds its own flock.
    for (sheepdog, file) in [(&first, &first_file), (&second, &second_file)] {
        let output = sheepdog_client(&["status", "--json", "--config", file.to_str().unwrap()], 10 * SECOND);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(reply["supervisor"]["pid"], sheepdog.pid());
    }
    // With no arguments, `status` lists both instead of guessing one.
    let output = sheepdog_client(&["status"], 10 * SECOND);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for sheepdog in [&first, &second] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&name) && l.contains(&format!(" {} ", sheepdog.pid()))),
            "{text}"
        );
    }
    let output = sheepdog_client(&["reload"], 10 * SECOND);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("sheepdogs are running"));

    for sheepdog in [&mut first, &mut second] {
        sheepdog.signal(libc::SIGTERM);
        assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(0));
    }
    let dir = sheepdog_socket_dir().join(&name);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    let _ = std::fs::remove_dir(dir);
}

/// The default control socket folder, as sheepdog picks it for this user.
fn sheepdog_socket_dir() -> std::path::PathBuf {
    let uid = unsafe { libc::getuid() };
    match (uid, std::env::var_os("XDG_RUNTIME_DIR")) {
        (0, _) => "/run/sheepdog".into(),
        (_, Some(runtime)) => std::path::PathBuf::from(runtime).join("sheepdog"),
        _ => format!("/tmp/sheepdog-{uid}").into(),
    }
}

#[test]
fn a_request_may_be_64_kib_and_not_a_byte_more() {
    use std::io::{BufRead, BufReader, Write};
    let sheepdog = start(
        Launch::new(&[]),
        &format!("{SLEEPER}control_socket = \"control.sock\"\n"),
    );
    let path = sheepdog.dir.path().join("control.sock");
    let ask = |length: usize| {
        let mut request = br#"{"v":1,"cmd":"status"}"#.to_vec();
        request.resize(length, b' ');
        request.push(b'\n');
        let mut stream = UnixStream::connect(&path).unwrap();
        stream.set_read_timeout(Some(5 * SECOND)).unwrap();
        // The server may refuse before it has read it all.
        let _ = stream.write_all(&request);
        let mut reply = String::new();
        BufReader::new(&stream).read_line(&mut reply).unwrap();
        reply
    };
    let reply = ask(64 * 1024);
    assert!(reply.contains("\"ok\":true"), "{reply}");
    let reply = ask(64 * 1024 + 1);
    assert!(reply.contains("request longer than 65536 bytes"), "{reply}");
}

/// An unprivileged uid no account on a test machine uses.
const STRANGER: u32 = 64_999;

fn is_root() -> bool {
    (unsafe { libc::geteuid() }) == 0
}

#[test]
fn a_default_socket_dir_in_tmp_made_by_someone_else_is_not_used_and_one_made_here_is_private() {
    if !is_root() {
        eprintln!("skipped: needs root to run sheepdog as another uid");
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let shared = std::path::PathBuf::from(format!("/tmp/sheepdog-{STRANGER}"));
    let _ = std::fs::remove_dir_all(&shared);
    let run_as_stranger = || {
        let mut command = std::process::Command::new("setpriv");
        command
            .args([
                &format!("--reuid={STRANGER}"),
                &format!("--regid={STRANGER}"),
                "--clear-groups",
            ])
            .arg(BIN)
            .args(["run", "--listen", "127.0.0.1:0", "--", "sleep", "600"])
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command.spawn().expect("setpriv")
    };
    // Made first by root, open to all: someone could put a socket in it.
    // It is not used, and the flock starts all the same, its control socket
    // in a private directory of its own.
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut squatted = run_as_stranger();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(squatted.stderr.take().unwrap()));
    let warning = lines
        .find(|l| l.as_ref().is_ok_and(|l| l.contains("control socket directory")))
        .and_then(Result::ok)
        .unwrap_or_default();
    assert!(
        warning.contains(&format!(
            "{} belongs to uid 0, not to this sheepdog's uid {STRANGER}",
            shared.display()
        )) && warning.contains(&format!("using /tmp/sheepdog-{STRANGER}.")),
        "{warning}"
    );
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("ready: "))), "it runs");
    unsafe { libc::kill(squatted.id() as i32, libc::SIGTERM) };
    assert_eq!(squatted.wait().unwrap().code(), Some(0));
    // Its private directory went with it.
    let left: Vec<_> = std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("sheepdog-{STRANGER}."))
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Made by sheepdog itself: 0700, its own.
    std::fs::remove_dir(&shared).unwrap();
    let mut child = run_as_stranger();
    let socket = shared.join("sheepdog/control.sock");
    wait_until(10 * SECOND, "the stranger's control socket", || socket.exists());
    for dir in [shared.clone(), shared.join("sheepdog")] {
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o777),
            (STRANGER, 0o700),
            "{}",
            dir.display()
        );
    }
    // Root's client may ask it; a third user's client does not ask, nor
    // believe, a server that is neither its own uid nor root.
    let output = sheepdog_client(&["status", "--socket", socket.to_str().unwrap()], 10 * SECOND);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let third = STRANGER + 1;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(shared.join("sheepdog"), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let output = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={third}"),
            &format!("--regid={third}"),
            "--clear-groups",
        ])
        .arg(BIN)
        .args(["status", "--socket", socket.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "of uid {STRANGER}, neither root nor this user (uid {third}): not asked"
        )),
        "{stderr}"
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&shared);
}
