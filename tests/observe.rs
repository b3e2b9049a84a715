//! Observability as a user meets it: the HTTP endpoints with real clients
//! (and hostile ones), the listen queue under stopped workers, Prometheus's
//! own `promtool` on the output, and a real Prometheus server scraping a
//! flock through kills, hangs and a reload.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SECOND: Duration = Duration::from_secs(1);

fn fixture(name: &str) -> String {
    repo_path(&format!("tests/fixtures/{name}")).display().to_string()
}

struct Observed {
    sheepdog: Sheepdog,
    config: std::path::PathBuf,
    http: SocketAddr,
    notify: NotifySocket,
}

impl Observed {
    /// A flock of `workers` of `command` on 127.0.0.1:0, its endpoints on a
    /// free port; `config` adds TOML lines (before any table).
    fn start(command: &[&str], workers: u32, config: &str, env: &[(&str, &str)]) -> Observed {
        let http = free_port();
        let launch = Launch::new(&[]);
        let notify = NotifySocket::bind(launch.dir.path());
        let command: Vec<String> = command.iter().map(|c| format!("{c:?}")).collect();
        let env: String = env.iter().map(|(k, v)| format!("{k} = {v:?}\n")).collect();
        let config = launch.file(
            "app.toml",
            &format!(
                "command = [{}]\nlisten = [\"127.0.0.1:0\"]\nworkers = {workers}\ncontrol_socket = \"control.sock\"\n{config}\n\
                 [http]\nlisten = \"{http}\"\n[env]\n{env}",
                command.join(", ")
            ),
        );
        let mut launch = launch.env("NOTIFY_SOCKET", notify.path.to_str().unwrap());
        launch.args = vec!["run".into(), "--config".into(), config.display().to_string()];
        let sheepdog = launch.spawn();
        Observed {
            sheepdog,
            config,
            http,
            notify,
        }
    }

    fn get(&self, path: &str) -> Response {
        get_path(self.http, path, 5 * SECOND).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    fn metrics(&self) -> String {
        let response = self.get("/metrics");
        assert_eq!(response.status, 200, "{}", response.body);
        response.body
    }

    fn try_status(&self) -> Option<serde_json::Value> {
        let output = sheepdog_client(
            &["status", "--json", "--config", self.config.to_str().unwrap()],
            10 * SECOND,
        );
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).expect("status --json is JSON"))
    }

    fn status_json(&self) -> serde_json::Value {
        self.try_status().expect("sheepdog status --json")
    }

    fn wait_ready(&self, workers: usize, timeout: Duration) {
        wait_until(timeout, &format!("{workers} workers ready"), || {
            self.try_status().is_some_and(|s| s["supervisor"]["ready"] == workers)
        });
    }
}

/// The value of the sample `line_start` (the name and labels) in `metrics`.
fn sample(metrics: &str, line_start: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start) && l[line_start.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Every sample of `family` whose labels include `label`: (labels, value).
fn samples(metrics: &str, family: &str, label: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            Some((labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn hello(workers: u32) -> Observed {
    let server = repo_path("examples/hello/server.js").display().to_string();
    Observed::start(&["node", &server], workers, "ready_delay = \"300ms\"", &[])
}

#[test]
fn the_probes_answer_and_the_listen_queue_of_stopped_workers_fills_and_drains() {
    let mut flock = hello(2);
    flock.wait_ready(2, 20 * SECOND);
    let app = flock.sheepdog.bound_address();
    let healthz = flock.get("/healthz");
    assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok\n"));
    let readyz = flock.get("/readyz");
    assert_eq!((readyz.status, readyz.body.as_str()), (200, "ready: 2/2\n"));
    assert_eq!(flock.get("/nothing-here").status, 404);

    let workers = flock.sheepdog.worker_pids();
    for pid in &workers {
        unsafe { libc::kill(*pid, libc::SIGSTOP) };
    }
    // 50 connections the kernel completes and nobody accepts: each of the
    // two workers' queues gets its turn (round robin), none lands in the
    // spare queue kept for a replacement.
    let waiting: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(app).unwrap()).collect();
    let listener = format!("listener=\"{app}\"");
    let lengths = || samples(&flock.metrics(), "sheepdog_listen_queue_length", &listener);
    wait_until(10 * SECOND, "50 queued in /metrics", || {
        lengths().iter().map(|(_, n)| n).sum::<f64>() == 50.0
    });
    let mut depths: Vec<f64> = lengths().iter().map(|(_, n)| *n).collect();
    depths.sort_by(|a, b| b.total_cmp(a));
    assert_eq!(depths, vec![25.0, 25.0, 0.0], "{:?}", lengths());
    let status = flock.status_json();
    let queues = status["supervisor"]["listen_queues"].as_array().unwrap().clone();
    assert_eq!(queues.len(), 3, "a queue per worker and a spare: {status}");
    for queue in &queues {
        assert_eq!(queue["address"], app.to_string());
        assert!(queue["backlog"].as_u64().unwrap() >= 128, "{queue}");
    }
    assert_eq!(queues.iter().map(|q| q["queued"].as_u64().unwrap()).sum::<u64>(), 50);
    for worker in status["workers"].as_array().unwrap() {
        let queue = worker["queue"].as_u64().expect("each worker has a queue");
        let own = queues.iter().find(|q| q["queue"] == queue).unwrap();
        assert_eq!(own["queued"], 25, "{status}");
    }
    let limits = samples(&flock.metrics(), "sheepdog_listen_queue_limit", &listener);
    assert_eq!(limits.len(), 3);
    assert!(limits.iter().all(|(_, n)| *n >= 128.0), "{limits:?}");
    let output = sheepdog_client(&["status", "--config", flock.config.to_str().unwrap()], 10 * SECOND);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(&format!("listen queues {app}: 3 queues, 50 waiting (deepest 25) of")),
        "{text}"
    );
    // And in systemd's STATUS=, sampled every second.
    flock.notify.messages.wait_for("· 50 queued", 5 * SECOND);

    for pid in &workers {
        unsafe { libc::kill(*pid, libc::SIGCONT) };
    }
    wait_until(10 * SECOND, "the queues drained", || {
        lengths().iter().all(|(_, n)| *n == 0.0)
    });
    let status = flock.status_json();
    assert!(
        status["supervisor"]["listen_queues"]
            .as_array()
            .unwrap()
            .iter()
            .all(|q| q["queued"] == 0),
        "{status}"
    );
    drop(waiting);
    flock.sheepdog.signal(libc::SIGTERM);
    assert_eq!(flock.sheepdog.wait_exit(20 * SECOND).code(), Some(0));
}

/// Raises this test process's fd limit to its hard limit (1,000 clients).
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// Sends `request` and reads the answer until the server closes (bounded).
fn exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_write_timeout(Some(timeout)).unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
}

#[test]
fn hostile_http_clients_get_a_clear_status_or_are_cut_off_and_supervision_goes_on() {
    raise_fd_limit();
    let mut flock = hello(2);
    flock.wait_ready(2, 20 * SECOND);

    // A request head of 10 MB: refused after 8 KiB, not read to its end.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.resize(10 << 20, b'a');
    let (answer, _) = exchange(flock.http, &huge, 10 * SECOND);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:.200}");
    // Garbage, a POST, a HEAD.
    let (answer, _) = exchange(flock.http, b"\x16\x03\x01 hello\r\n\r\n", 5 * SECOND);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:.200}");
    let (answer, _) = exchange(
        flock.http,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        5 * SECOND,
    );
    assert!(
        answer.starts_with("HTTP/1.1 405 ") && answer.contains("Allow: GET, HEAD"),
        "{answer:.200}"
    );
    let (answer, _) = exchange(flock.http, b"HEAD /readyz HTTP/1.1\r\n\r\n", 5 * SECOND);
    assert!(
        answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("\r\n\r\n"),
        "{answer:.300}"
    );

    // 1,000 connections that send nothing, and one that sends half a request.
    let silent: Vec<TcpStream> = (0..1000).map(|_| TcpStream::connect(flock.http).unwrap()).collect();
    let (answer, took) = exchange(flock.http, b"GET /healthz HTTP/1.1\r\nHo", 10 * SECOND);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408 "),
        "{answer:.200}"
    );
    assert!(took < 8 * SECOND, "a silent client is cut off after 5 s, not {took:?}");
    // A probe among them is still answered.
    wait_until(10 * SECOND, "a probe answered during the flood", || {
        get_path(flock.http, "/healthz", SECOND).is_ok_and(|r| r.status == 200)
    });
    // And a worker killed during the flood is replaced at once.
    let victim = flock.sheepdog.worker_pids()[0];
    let killed = Instant::now();
    unsafe { libc::kill(victim, libc::SIGKILL) };
    wait_until(5 * SECOND, "the killed worker replaced", || {
        let pids = flock.sheepdog.worker_pids();
        pids.len() == 2 && !pids.contains(&victim)
    });
    flock.sheepdog.logs.wait_for("restarting it now", SECOND);
    assert!(killed.elapsed() < 5 * SECOND);
    let fds = std::fs::read_dir(format!("/proc/{}/fd", flock.sheepdog.pid()))
        .unwrap()
        .count();
    assert!(fds < 200, "the http server holds {fds} fds: at most 128 clients");
    drop(silent);
    wait_until(10 * SECOND, "the flock whole again", || {
        flock.get("/readyz").status == 200
    });
    assert!(flock.sheepdog.child.try_wait().unwrap().is_none(), "sheepdog is alive");
    flock.sheepdog.signal(libc::SIGTERM);
    assert_eq!(flock.sheepdog.wait_exit(20 * SECOND).code(), Some(0));
}

#[test]
fn promtool_passes_the_metrics_of_a_flock_that_crashed_and_reloaded() {
    let mut flock = hello(2);
    flock.wait_ready(2, 20 * SECOND);
    let victim = flock.sheepdog.worker_pids()[0];
    unsafe { libc::kill(victim, libc::SIGKILL) };
    flock.sheepdog.logs.wait_for("restarting it now", 5 * SECOND);
    let output = sheepdog_client(&["reload", "--config", flock.config.to_str().unwrap()], 60 * SECOND);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // The old workers are counted once they are gone.
    wait_until(10 * SECOND, "both old workers counted", || {
        sample(&flock.metrics(), "sheepdog_worker_replacements_total{cause=\"reload\"}") == Some(2.0)
    });
    let metrics = flock.metrics();
    assert_eq!(sample(&metrics, "sheepdog_reloads_total{outcome=\"ok\"}"), Some(1.0));
    assert_eq!(sample(&metrics, "sheepdog_reload_duration_seconds_count"), Some(1.0));
    assert_eq!(
        sample(&metrics, "sheepdog_worker_replacements_total{cause=\"signal\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "sheepdog_worker_replacements_total{cause=\"reload\"}"),
        Some(2.0)
    );
    assert!(sample(&metrics, "process_open_fds").unwrap() > 3.0);
    // Memory is shown with no [memory] checks configured too.
    let resident: Vec<f64> = metrics
        .lines()
        .filter(|l| l.starts_with("sheepdog_worker_resident_memory_bytes{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(resident.len() == 2 && resident.iter().all(|&b| b > 1e6), "{metrics}");
    assert!(
        metrics.contains("sheepdog_worker_cpu_seconds_total{slot=\"0\",generation=\"2\""),
        "{metrics}"
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) is installed");
    promtool.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    flock.sheepdog.signal(libc::SIGTERM);
    assert_eq!(flock.sheepdog.wait_exit(20 * SECOND).code(), Some(0));
}

/// A Prometheus server on loopback scraping `target` every second.
struct Prometheus {
    child: Child,
    web: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: sheepdog\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let web = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's prometheus package) is installed");
        Prometheus { child, web, _dir: dir }
    }

    /// The value of an instant query's first sample, if it has one.
    fn query(&self, query: &str) -> Option<f64> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let response = get_path(self.web, &format!("/api/v1/query?query={encoded}"), 5 * SECOND).ok()?;
        let json: serde_json::Value = serde_json::from_str(&response.body).ok()?;
        json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    fn wait_for(&self, query: &str, what: impl Fn(f64) -> bool, timeout: Duration) {
        wait_until(timeout, &format!("Prometheus: {query}"), || {
            self.query(query).is_some_and(&what)
        });
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_sees_kills_hangs_and_a_reload_counted_and_readyz_fails_while_all_hang() {
    let flock = Observed::start(
        &["python3", &fixture("http-worker.py")],
        2,
        "readiness = \"notify\"\nready_timeout = \"20s\"\n[heartbeat]\ninterval = \"300ms\"\ntimeout = \"1s\"",
        &[("BOOT_DELAY", "2")],
    );
    let prometheus = Prometheus::start(flock.http);
    flock.wait_ready(2, 30 * SECOND);
    prometheus.wait_for("sheepdog_ready", |v| v == 1.0, 30 * SECOND);

    // Killed by someone else's signal.
    let victim = flock.sheepdog.worker_pids()[0];
    unsafe { libc::kill(victim, libc::SIGKILL) };
    flock.sheepdog.logs.wait_for("was killed by SIGKILL", 5 * SECOND);
    flock.wait_ready(2, 20 * SECOND);

    // Hung: stopped, so its heartbeats stop.
    let hung = flock.sheepdog.worker_pids()[0];
    unsafe { libc::kill(hung, libc::SIGSTOP) };
    flock.sheepdog.logs.wait_for("missed heartbeats", 5 * SECOND);
    flock.wait_ready(2, 20 * SECOND);

    // Every worker hung: /readyz says so while their replacements boot.
    for pid in flock.sheepdog.worker_pids() {
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    }
    let mut reasons = Vec::new();
    wait_until(10 * SECOND, "/readyz 503 with no worker ready", || {
        let response = flock.get("/readyz");
        if response.status != 200 {
            assert_eq!(response.status, 503, "{}", response.body);
            reasons.push(response.body.clone());
        }
        response.body.starts_with("0/2 ready")
    });
    let reason = reasons.last().unwrap();
    assert_eq!(
        reason, "0/2 ready (2 needed): worker 0 missed heartbeats, worker 1 missed heartbeats\n",
        "{reasons:?}"
    );
    assert_eq!(flock.get("/healthz").status, 200, "the supervisor itself is fine");
    flock.wait_ready(2, 20 * SECOND);

    let output = sheepdog_client(&["reload", "--config", flock.config.to_str().unwrap()], 60 * SECOND);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let counter = |cause: &str| format!("sheepdog_worker_replacements_total{{cause=\"{cause}\"}}");
    prometheus.wait_for(&counter("signal"), |v| v >= 1.0, 15 * SECOND);
    prometheus.wait_for(&counter("hung"), |v| v >= 3.0, 15 * SECOND);
    prometheus.wait_for(&counter("reload"), |v| v >= 2.0, 15 * SECOND);
    prometheus.wait_for("sheepdog_reloads_total{outcome=\"ok\"}", |v| v == 1.0, 15 * SECOND);
    prometheus.wait_for(
        "increase(sheepdog_worker_replacements_total{cause=\"hung\"}[5m])",
        |v| v >= 3.0,
        15 * SECOND,
    );
    // The scrapes caught the flock unready while every worker was hung.
    prometheus.wait_for("min_over_time(sheepdog_ready[5m])", |v| v == 0.0, 15 * SECOND);
    let mut sheepdog = flock.sheepdog;
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(20 * SECOND).code(), Some(0));
}

#[test]
fn a_unix_socket_endpoint_serves_the_same() {
    let launch = Launch::new(&[]);
    let socket = launch.dir.path().join("metrics.sock");
    let config = launch.file(
        "app.toml",
        &format!(
            "command = [\"sleep\", \"3600\"]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nready_delay = \"100ms\"\n\
             [http]\nlisten = \"unix:{}\"\n",
            socket.display()
        ),
    );
    let mut launch = launch;
    launch.args = vec!["run".into(), "--config".into(), config.display().to_string()];
    let mut sheepdog = launch.spawn();
    sheepdog.logs.wait_for("ready: 1/1", 10 * SECOND);
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream.set_read_timeout(Some(5 * SECOND)).unwrap();
    stream.write_all(b"GET /readyz HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("ready: 1/1\n"),
        "{answer}"
    );
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(0));
    assert!(!socket.exists(), "the socket file is removed on exit");
}
