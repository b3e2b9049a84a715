//! Test harness for the real `sheepdog` binary: launches it (by hand or through
//! `systemd-socket-activate`), records its log lines and what it tells a
//! test-owned NOTIFY_SOCKET, and talks HTTP to its workers. Every wait is on a
//! real event with a deadline; nothing sleeps and hopes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sheepdog");

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Lines appended by a background reader, and a condvar to wait on them.
type TimedLines = Mutex<Vec<(Instant, String)>>;

#[derive(Clone, Default)]
pub struct Recorder {
    inner: Arc<(TimedLines, Condvar)>,
}

impl Recorder {
    fn push(&self, line: String) {
        let (lines, changed) = &*self.inner;
        lines.lock().unwrap().push((Instant::now(), line));
        changed.notify_all();
    }

    pub fn lines(&self) -> Vec<String> {
        self.inner.0.lock().unwrap().iter().map(|(_, l)| l.clone()).collect()
    }

    pub fn timed(&self) -> Vec<(Instant, String)> {
        self.inner.0.lock().unwrap().clone()
    }

    /// Waits until a line contains `needle`; returns it with its arrival time.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> (Instant, String) {
        self.wait_for_nth(needle, 1, timeout)
    }

    /// Waits until `n` lines contain `needle`; returns the n-th.
    pub fn wait_for_nth(&self, needle: &str, n: usize, timeout: Duration) -> (Instant, String) {
        let deadline = Instant::now() + timeout;
        let (lines, changed) = &*self.inner;
        let mut guard = lines.lock().unwrap();
        loop {
            if let Some(found) = guard.iter().filter(|(_, l)| l.contains(needle)).nth(n - 1) {
                return found.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                let seen: Vec<&String> = guard.iter().map(|(_, l)| l).collect();
                panic!("no {n}th line containing {needle:?} within {timeout:?}; seen: {seen:#?}");
            }
            guard = changed.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }
}

/// A unix datagram socket standing in for systemd's NOTIFY_SOCKET.
pub struct NotifySocket {
    pub path: PathBuf,
    pub messages: Recorder,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let (notify, resume) = NotifySocket::stalled(dir);
        resume();
        notify
    }

    /// A receiver that reads nothing until `resume` is called, as a stuck
    /// systemd would: the kernel queue fills and sheepdog must not block.
    pub fn stalled(dir: &Path) -> (NotifySocket, impl FnOnce() + use<>) {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        let messages = Recorder::default();
        let sink = messages.clone();
        let (resume, resumed) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let _ = resumed.recv();
            let mut buffer = vec![0u8; 65536];
            while let Ok(n) = socket.recv(&mut buffer) {
                // One datagram may carry several newline-separated assignments.
                for line in String::from_utf8_lossy(&buffer[..n]).lines() {
                    sink.push(line.to_string());
                }
            }
        });
        (NotifySocket { path, messages }, move || {
            let _ = resume.send(());
        })
    }
}

pub struct Sheepdog {
    pub child: Child,
    /// Its log lines (and, when socket-activated, the activator's own).
    pub logs: Recorder,
    /// The test's directory: config, RUNTIME_DIRECTORY, sockets.
    pub dir: tempfile::TempDir,
}

pub struct Launch {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `systemd-socket-activate -l ADDR` as the launcher.
    pub activate: Option<SocketAddr>,
    /// A shell prefix run before exec'ing sheepdog (e.g. to leak an fd into
    /// it); with `activate`, sh gets the sockets and forks sheepdog.
    pub shell_prefix: Option<String>,
    pub dir: tempfile::TempDir,
    /// Leave RUNTIME_DIRECTORY unset, so the control socket takes its default
    /// path (under /run/sheepdog for root).
    pub default_paths: bool,
    /// The sheepdog binary to run (a copy of BIN elsewhere, to upgrade in place).
    pub program: PathBuf,
}

impl Launch {
    pub fn new(args: &[&str]) -> Launch {
        Launch {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            activate: None,
            shell_prefix: None,
            dir: tempfile::tempdir().expect("tempdir"),
            default_paths: false,
            program: PathBuf::from(BIN),
        }
    }

    /// Runs the sheepdog binary at `path` rather than the one cargo built.
    pub fn program(mut self, path: &Path) -> Launch {
        self.program = path.to_path_buf();
        self
    }

    pub fn with_default_paths(mut self) -> Launch {
        self.default_paths = true;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn activated(mut self, addr: SocketAddr) -> Launch {
        self.activate = Some(addr);
        self
    }

    pub fn shell_prefix(mut self, prefix: &str) -> Launch {
        self.shell_prefix = Some(prefix.into());
        self
    }

    /// Writes `name` into the test's directory and returns its path.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    pub fn spawn(mut self) -> Sheepdog {
        // As systemd's RuntimeDirectory=: the control socket and the notify
        // sockets of this sheepdog live in the test's own directory.
        if !self.default_paths && !self.env.iter().any(|(k, _)| k == "RUNTIME_DIRECTORY") {
            let dir = self.dir.path().display().to_string();
            self.env.push(("RUNTIME_DIRECTORY".into(), dir));
        }
        let mut command = match (self.activate, &self.shell_prefix) {
            (Some(addr), wrapper) => {
                let mut c = Command::new("systemd-socket-activate");
                c.arg("-l").arg(addr.to_string()).arg("--fdname=web");
                for (key, value) in &self.env {
                    c.arg("-E").arg(format!("{key}={value}"));
                }
                match wrapper {
                    // The usual shape of an ExecStart= wrapper script: sh
                    // gets the sockets, and forks sheepdog rather than exec it.
                    Some(prefix) => {
                        c.arg("sh")
                            .arg("-c")
                            .arg(format!("{prefix}; \"$0\" \"$@\"; echo done"))
                            .arg(&self.program)
                            .args(&self.args);
                    }
                    None => {
                        c.arg(&self.program).args(&self.args);
                    }
                }
                c
            }
            (None, Some(prefix)) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("{prefix}; exec \"$0\" \"$@\""))
                    .arg(&self.program)
                    .args(&self.args);
                c
            }
            (None, None) => {
                let mut c = Command::new(&self.program);
                c.args(&self.args);
                c
            }
        };
        // Nothing of the test runner's own systemd context leaks in; only
        // what the test set.
        for inherited in ["NOTIFY_SOCKET", "LISTEN_FDS", "JOURNAL_STREAM", "RUNTIME_DIRECTORY"] {
            command.env_remove(inherited);
        }
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start sheepdog");
        let logs = Recorder::default();
        for stream in [
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let sink = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    match line {
                        Ok(line) => sink.push(line),
                        Err(_) => break,
                    }
                }
            });
        }
        Sheepdog {
            child,
            logs,
            dir: self.dir,
        }
    }
}

impl Sheepdog {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0, "kill sheepdog");
    }

    /// Waits for sheepdog to exit within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the log readers catch the last lines.
                let _ = self
                    .logs
                    .inner
                    .1
                    .wait_timeout(self.logs.inner.0.lock().unwrap(), Duration::from_millis(50));
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "sheepdog did not exit within {timeout:?}; logs: {:#?}",
                    self.logs.lines()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The TCP address sheepdog logged it bound (for `--listen 127.0.0.1:0`).
    pub fn bound_address(&self) -> SocketAddr {
        let (_, line) = self.logs.wait_for(" on 127.0.0.1:", Duration::from_secs(10));
        let after = line.split(" on ").nth(1).unwrap();
        after
            .split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches(',')
            .parse()
            .unwrap()
    }

    /// Current children of sheepdog (its workers).
    pub fn worker_pids(&self) -> Vec<i32> {
        children(self.pid())
    }
}

impl Drop for Sheepdog {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let pids = children(self.pid());
            let _ = self.child.kill();
            let _ = self.child.wait();
            for pid in pids {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

pub fn alive(pid: i32) -> bool {
    // A zombie is dead for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The time sheepdog wrote on a log line ("2026-11-21T09:18:26.555Z …"), as
/// time of day: its own clock, free of the delays of the pipe that brought it.
pub fn logged_at(line: &str) -> Duration {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    let time = stamp.split('T').nth(1).unwrap_or_default().trim_end_matches('Z');
    let mut parts = time.split(':');
    let hours: u64 = parts
        .next()
        .and_then(|h| h.parse().ok())
        .expect("a timestamped log line");
    let minutes: u64 = parts
        .next()
        .and_then(|m| m.parse().ok())
        .expect("a timestamped log line");
    let seconds: f64 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .expect("a timestamped log line");
    Duration::from_secs(hours * 3600 + minutes * 60) + Duration::from_secs_f64(seconds)
}

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An HTTP/1.1 response: status code and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    /// "hello from worker 1 pid 123 version 1" → ("1", 123).
    pub fn worker(&self) -> (String, i32) {
        let words: Vec<&str> = self.body.split_whitespace().collect();
        let id = words
            .iter()
            .position(|w| *w == "worker")
            .map(|i| words[i + 1].to_string())
            .unwrap_or_default();
        let pid = words
            .iter()
            .position(|w| *w == "pid")
            .and_then(|i| words[i + 1].parse().ok())
            .unwrap_or(0);
        (id, pid)
    }
}

/// One GET on a new connection (`Connection: close`), with a deadline.
pub fn get(addr: SocketAddr, timeout: Duration) -> std::io::Result<Response> {
    get_path(addr, "/", timeout)
}

pub fn get_path(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

pub fn get_unix(path: &Path, timeout: Duration) -> std::io::Result<Response> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    request_close(stream)
}

fn request_close<S: Read + Write>(mut stream: S) -> std::io::Result<Response> {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad response: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok(Response {
        status,
        body: body.to_string(),
    })
}

/// A client loop on its own thread, counting successes and failures until
/// stopped (and for 90 s at most, if a test forgets to stop it).
pub struct RequestLoop {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<LoopResult>>,
    pub progress: Arc<Mutex<LoopResult>>,
}

#[derive(Debug, Default, Clone)]
pub struct LoopResult {
    pub ok: usize,
    pub failed: usize,
    pub errors: Vec<String>,
    /// (worker id, pid) of every successful answer, in order.
    pub answers: Vec<(String, i32)>,
    /// The app version of every successful answer, in order.
    pub versions: Vec<String>,
    /// Requests sent again on a new connection because the kept-alive one
    /// was closed before any answer (`keep_alive_retrying` only).
    pub retried: usize,
}

impl RequestLoop {
    /// A new connection per request (`Connection: close`).
    pub fn start(addr: SocketAddr) -> RequestLoop {
        RequestLoop::run(move |_| get(addr, Duration::from_secs(5)))
    }

    /// One HTTP/1.1 connection kept alive for as long as the server lets it
    /// (reconnecting after `Connection: close` or an error), as a browser or
    /// proxy would see the server.
    pub fn keep_alive(addr: SocketAddr) -> RequestLoop {
        let mut connection: Option<BufReader<TcpStream>> = None;
        RequestLoop::run(move |_| {
            let outcome = keep_alive_request(addr, &mut connection);
            if outcome.is_err() {
                connection = None;
            }
            outcome
        })
    }

    /// As `keep_alive`, but as browsers and most HTTP client libraries do: a
    /// request whose reused connection was closed before any byte of an
    /// answer is sent once more on a new connection (counted in `retried`).
    pub fn keep_alive_retrying(addr: SocketAddr) -> RequestLoop {
        let mut connection: Option<BufReader<TcpStream>> = None;
        RequestLoop::run(move |retried| {
            let reused = connection.is_some();
            let mut outcome = keep_alive_request(addr, &mut connection);
            if reused
                && outcome
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::UnexpectedEof)
            {
                *retried += 1;
                connection = None;
                outcome = keep_alive_request(addr, &mut connection);
            }
            if outcome.is_err() {
                connection = None;
            }
            outcome
        })
    }

    fn run(mut request: impl FnMut(&mut usize) -> std::io::Result<Response> + Send + 'static) -> RequestLoop {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let progress = Arc::new(Mutex::new(LoopResult::default()));
        let (flag, shared) = (stop.clone(), progress.clone());
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(90);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let mut retried = 0;
                let outcome = request(&mut retried);
                let mut p = shared.lock().unwrap();
                p.retried += retried;
                match outcome {
                    Ok(r) if r.status == 200 => {
                        p.ok += 1;
                        p.answers.push(r.worker());
                        p.versions.push(r.version());
                    }
                    Ok(r) => {
                        p.failed += 1;
                        p.errors.push(format!("status {}", r.status));
                    }
                    Err(e) => {
                        p.failed += 1;
                        p.errors.push(e.to_string());
                    }
                }
            }
            shared.lock().unwrap().clone()
        });
        RequestLoop {
            stop,
            handle: Some(handle),
            progress,
        }
    }

    pub fn snapshot(&self) -> LoopResult {
        self.progress.lock().unwrap().clone()
    }

    /// Waits until the loop has `n` more successes than now.
    pub fn wait_successes(&self, n: usize, timeout: Duration) {
        let start = self.snapshot().ok;
        wait_until(timeout, &format!("{n} successful requests"), || {
            self.snapshot().ok >= start + n
        });
    }

    pub fn stop(mut self) -> LoopResult {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

fn keep_alive_request(addr: SocketAddr, connection: &mut Option<BufReader<TcpStream>>) -> std::io::Result<Response> {
    if connection.is_none() {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        *connection = Some(BufReader::new(stream));
    }
    let reader = connection.as_mut().unwrap();
    // The server closed the connection before any byte of an answer: an end
    // of stream, or, when the request reached the closed socket first, a
    // reset (or a broken pipe on the write). Which one is a matter of timing
    // (a loaded machine makes the reset likelier); it is the same close.
    let closed = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("connection closed before a response ({e})"),
        ),
        _ => e,
    };
    reader
        .get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .map_err(closed)?;
    let mut status_line = String::new();
    if reader.read_line(&mut status_line).map_err(closed)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut length, mut close) = (0usize, false);
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let lower = header.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        if lower == "connection: close" {
            close = true;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    if close {
        *connection = None;
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

impl Response {
    /// "… version 2" → "2".
    pub fn version(&self) -> String {
        self.body.split_whitespace().last().unwrap_or("").to_string()
    }
}

/// Runs `sheepdog ARGS…` as a client to completion (bounded), returning its output.
pub fn sheepdog_client(args: &[&str], timeout: Duration) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the sheepdog client");
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`sheepdog {}` did not finish within {timeout:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// `sheepdog ARGS… --config CONFIG` as a client (bounded to a minute).
pub fn client_of(config: &Path, args: &[&str]) -> std::process::Output {
    let config = config.display().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", &config]);
    sheepdog_client(&all, Duration::from_secs(60))
}

/// `sheepdog status --json --config CONFIG`, which must answer.
pub fn status_of(config: &Path) -> serde_json::Value {
    let output = client_of(config, &["status", "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}
