//! Round two, finding 1: `sheepdog upgrade --all` (which the package's
//! postinst runs as root) asks only supervisors that really run its binary,
//! reaches only their own sockets, ends in bounded time, and prints nothing
//! a server sent with control characters in it (nor does any client).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::SECOND;
use super::common::*;

const NOBODY: u32 = 65534;

/// `path` opened to everyone (the test's directories are 0700 root).
fn open_to_all(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn chown_nobody(path: &Path) {
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

fn copy(from: &Path, to: &Path) {
    assert!(Command::new("cp").arg(from).arg(to).status().unwrap().success());
}

/// `program args…` run as nobody, in `dir`.
fn as_nobody(program: &Path, args: &[&str], dir: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(program)
        .args(args)
        .current_dir(dir)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .stdin(Stdio::null());
    command
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `binary ARGS`, bounded: (exit code, stdout, stderr, how long it took).
fn run_bounded(binary: &Path, args: &[&str], bound: Duration) -> (Option<i32>, String, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > bound {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "`{} {}` still ran after {bound:?}: {}{}",
                binary.display(),
                args.join(" "),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = started.elapsed();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        took,
    )
}

/// Control characters a terminal would obey (BEL, ESC, C1).
fn has_escapes(text: &str) -> bool {
    text.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' || ('\u{80}'..='\u{9f}').contains(&c))
}

/// A flock run by root from a copy of the binary at `dir/bin/sheepdog`.
fn flock_from_copy(launch: Launch) -> (Sheepdog, PathBuf, PathBuf) {
    flock_from_copy_through(launch, &[])
}

/// The same, started through `wrapper` (a program that execs the rest).
fn flock_from_copy_through(launch: Launch, wrapper: &[&str]) -> (Sheepdog, PathBuf, PathBuf) {
    let dir = launch.dir.path().to_path_buf();
    open_to_all(&dir);
    std::fs::create_dir(dir.join("bin")).unwrap();
    open_to_all(&dir.join("bin"));
    let binary = dir.join("bin/sheepdog");
    copy(Path::new(BIN), &binary);
    let config = launch.file(
        "app.toml",
        "command = [\"sleep\", \"1000\"]\nworkers = 1\nready_delay = \"100ms\"\nlisten = [\"127.0.0.1:0\"]\n\
         control_socket = \"control.sock\"\n",
    );
    let mut args: Vec<String> = wrapper.iter().map(|a| a.to_string()).collect();
    let program = match args.is_empty() {
        true => binary.clone(),
        false => PathBuf::from(args.remove(0)),
    };
    args.extend(
        [binary.display().to_string()]
            .into_iter()
            .filter(|_| !wrapper.is_empty()),
    );
    args.extend(["run".into(), "--config".into(), config.display().to_string()]);
    let mut launch = launch.program(&program);
    launch.args = args;
    let sheepdog = launch.spawn();
    sheepdog.logs.wait_for("ready: 1/1 workers", 10 * SECOND);
    (sheepdog, binary, config)
}

/// An impostor: a copy of python3 named `sheepdog`, owned and run by
/// nobody as `sheepdog run …` (python runs its script `run`), serving a
/// control socket that answers `status` as root's supervisor would (its
/// own pid, root's binary as the path it upgrades from, a name full of
/// escape sequences) and never answers anything else. It says "asked"
/// for each connection.
const IMPOSTOR: &str = r#"
import json, os, socket, sys, threading, time
path, exe, template = sys.argv[1], sys.argv[2], sys.argv[3]
status = json.load(open(template))
status["supervisor"]["pid"] = os.getpid()
status["supervisor"]["exe"] = exe
status["supervisor"]["name"] = "\x1b]0;owned\x07\x1b[2J\x1b[31mroot's app"
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen(64)
print("listening", flush=True)
def serve(client):
    data = b""
    while b"\n" not in data:
        chunk = client.recv(65536)
        if not chunk:
            return
        data += chunk
    if json.loads(data.split(b"\n")[0]).get("cmd") == "status":
        client.sendall(json.dumps(status).encode() + b"\n")
    time.sleep(3600)
while True:
    client, _ = server.accept()
    print("asked", flush=True)
    threading.Thread(target=serve, args=(client,), daemon=True).start()
"#;

fn start_impostor(dir: &Path, exe: &Path, template: &Path) -> (Reaped, Arc<Mutex<Vec<String>>>) {
    std::fs::create_dir(dir).unwrap();
    chown_nobody(dir);
    let fake = dir.join("sheepdog");
    copy(Path::new("/usr/bin/python3.11"), &fake);
    chown_nobody(&fake);
    std::fs::write(dir.join("run"), IMPOSTOR).unwrap();
    let socket = dir.join("control.sock");
    let mut child = as_nobody(
        &fake,
        &[
            "run",
            socket.to_str().unwrap(),
            exe.to_str().unwrap(),
            template.to_str().unwrap(),
        ],
        dir,
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let said = Arc::new(Mutex::new(Vec::new()));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "listening");
    let sink = said.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    (Reaped(child), said)
}

#[test]
fn upgrade_all_asks_no_impostor_prints_no_escape_and_takes_bounded_time() {
    let launch = Launch::new(&[]);
    let dir = launch.dir.path().to_path_buf();
    let (sheepdog, binary, config) = flock_from_copy(launch);
    let template = dir.join("status.json");
    let status = client_of(&config, &["status", "--json"]);
    assert!(status.status.success());
    std::fs::write(&template, &status.stdout).unwrap();
    open_to_all(&template);
    let impostors: Vec<_> = (0..5)
        .map(|i| start_impostor(&dir.join(format!("fake{i}")), &binary, &template))
        .collect();
    // Each impostor would have held root's client for its whole --timeout
    // (60 s by default), one after another: 5 minutes.
    let (code, stdout, stderr, took) = run_bounded(&binary, &["upgrade", "--all"], 40 * SECOND);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("(pid {}): upgraded from ", sheepdog.pid())),
        "{stdout}{stderr}"
    );
    for (fake, said) in &impostors {
        assert!(!stdout.contains(&format!("pid {}", fake.0.id())), "{stdout}");
        assert!(
            said.lock().unwrap().is_empty(),
            "impostor pid {} was asked",
            fake.0.id()
        );
    }
    assert!(!has_escapes(&stdout) && !has_escapes(&stderr), "{stdout:?}{stderr:?}");
    assert!(took < 15 * SECOND, "upgrade --all took {took:?}");
}

/// A listener only root may reach, counting the connections it gets and
/// the bytes sent on them.
fn root_only_listener(dir: &Path) -> (PathBuf, Arc<Mutex<(usize, usize)>>) {
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.join("control.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let seen = Arc::new(Mutex::new((0, 0)));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            sink.lock().unwrap().0 += 1;
            let sink = sink.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buffer = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buffer) {
                    sink.lock().unwrap().1 += n;
                }
            });
        }
    });
    (path, seen)
}

#[test]
fn upgrade_all_follows_no_symlink_of_a_user_to_a_socket_only_root_may_reach() {
    let launch = Launch::new(&[]);
    let dir = launch.dir.path().to_path_buf();
    let (_root_flock, binary, _) = flock_from_copy(launch);
    // A user runs the same binary, its control socket in a directory of its own.
    let home = dir.join("home");
    for made in [&home, &home.join("d"), &home.join("rt")] {
        std::fs::create_dir(made).unwrap();
        chown_nobody(made);
    }
    let config = home.join("app.toml");
    std::fs::write(
        &config,
        format!(
            "command = [\"sleep\", \"1000\"]\nworkers = 1\nready_delay = \"100ms\"\nlisten = [\"127.0.0.1:0\"]\n\
             control_socket = {:?}\n",
            home.join("d/control.sock")
        ),
    )
    .unwrap();
    let user = Reaped(
        as_nobody(&binary, &["run", "--config", config.to_str().unwrap()], &home)
            .env("RUNTIME_DIRECTORY", home.join("rt"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let socket = home.join("d/control.sock");
    wait_until(10 * SECOND, "the user's control socket", || {
        sheepdog_client(&["status", "--socket", socket.to_str().unwrap()], 10 * SECOND)
            .status
            .success()
    });
    // Then swaps its directory for a symlink to root's.
    let (_, seen) = root_only_listener(&dir.join("rootonly"));
    let swapped = as_nobody(
        Path::new("/bin/sh"),
        &[
            "-c",
            &format!("mv d d.old && ln -s {} d", dir.join("rootonly").display()),
        ],
        &home,
    )
    .status()
    .unwrap();
    assert!(swapped.success());
    let (code, stdout, stderr, _) = run_bounded(&binary, &["upgrade", "--all"], 40 * SECOND);
    assert_eq!(
        *seen.lock().unwrap(),
        (0, 0),
        "root's socket was reached: {stdout}{stderr}"
    );
    assert_eq!(
        code,
        Some(1),
        "the user's supervisor could not be asked: {stdout}{stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {} runs", user.0.id())) && stderr.contains("symlink of uid 65534"),
        "{stderr}"
    );
}

#[test]
fn upgrade_all_sends_nothing_to_a_socket_another_process_serves() {
    let launch = Launch::new(&[]);
    let dir = launch.dir.path().to_path_buf();
    // A supervisor of this binary in a mount namespace of its own, where
    // its control socket's path leads to another process's socket.
    let wrapper = ["/usr/bin/unshare", "--mount", "--propagation", "private"];
    let (sheepdog, binary, _) = flock_from_copy_through(launch, &wrapper);
    let (other, seen) = root_only_listener(&dir.join("other"));
    let mounted = Command::new("nsenter")
        .args(["-t", &sheepdog.pid().to_string(), "-m", "mount", "--bind"])
        .arg(&other)
        .arg(dir.join("control.sock"))
        .status()
        .unwrap();
    assert!(mounted.success());
    let (code, stdout, stderr, _) = run_bounded(&binary, &["upgrade", "--all"], 40 * SECOND);
    assert_eq!(
        seen.lock().unwrap().1,
        0,
        "a request went to another socket: {stdout}{stderr}"
    );
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains(&format!("not by pid {}", sheepdog.pid())), "{stderr}");
}

/// A control server that answers every request with the reply `for_cmd`
/// gives for its command.
fn hostile_server(path: &Path, for_cmd: fn(&str) -> String) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let request: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                let reply = for_cmd(request["cmd"].as_str().unwrap_or(""));
                let _ = reader.get_mut().write_all(format!("{reply}\n").as_bytes());
            });
        }
    });
}

static HOSTILE_STATUS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[test]
fn no_client_prints_a_servers_escape_sequences() {
    // A status reply taken from a real sheepdog, its strings made hostile.
    let launch = Launch::new(&[]);
    let (_flock, _, config) = flock_from_copy(launch);
    let real = client_of(&config, &["status", "--json"]);
    let mut status: serde_json::Value = serde_json::from_slice(&real.stdout).unwrap();
    let evil = "\x1b]0;owned\x07\x1b[2J\u{9b}31m\u{202e}evil";
    status["supervisor"]["name"] = evil.into();
    status["supervisor"]["version"] = evil.into();
    status["supervisor"]["config"] = evil.into();
    status["supervisor"]["last_reload"] = serde_json::json!({"generation": 2, "ok": false, "message": evil});
    status["workers"][0]["status"] = evil.into();
    status["workers"][0]["listens_itself"] = serde_json::json!([evil]);
    HOSTILE_STATUS.set(status.to_string()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    hostile_server(&socket, |cmd| {
        let evil = "\x1b]0;owned\x07\x1b[2J\u{9b}31m\u{202e}evil";
        match cmd {
            "status" => HOSTILE_STATUS.get().unwrap().clone(),
            "reload" | "upgrade" => serde_json::json!({"v": 1, "ok": false, "error": evil}).to_string(),
            _ => serde_json::json!({"v": 1, "ok": true, "message": evil}).to_string(),
        }
    });
    let socket = socket.to_str().unwrap();
    for args in [
        vec!["status", "--socket", socket],
        vec!["status", "--json", "--socket", socket],
        vec!["reload", "--socket", socket],
        vec!["scale", "3", "--socket", socket],
        vec!["upgrade", "--socket", socket],
    ] {
        let output = sheepdog_client(&args, 10 * SECOND);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stdout.contains("evil") || stderr.contains("evil"),
            "{args:?}: {stdout}{stderr}"
        );
        assert!(
            !has_escapes(&stdout) && !has_escapes(&stderr),
            "{args:?}: {stdout:?} {stderr:?}"
        );
    }
}
