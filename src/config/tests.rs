//! The config file: defaults, every key, errors with their place, limits.

use super::*;

fn parse(text: &str) -> Result<Settings, Error> {
    Settings::from_toml(text, Some(Path::new("app.toml")), &Overrides::default())
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn a_minimal_file_gets_the_defaults() {
    let s = parse("command = [\"node\", \"server.js\"]\nworkers = 3\n").unwrap();
    assert_eq!(s.command, vec!["node", "server.js"]);
    assert_eq!(s.workers, 3);
    assert_eq!(s.min_ready, 3);
    assert_eq!(s.listen, vec![ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap())]);
    assert_eq!(s.stop_signal, Signal::SIGTERM);
    assert_eq!(s.stop_timeout, Duration::from_secs(30));
    assert_eq!(s.restart.max_restarts, 10);
}

#[test]
fn every_key_is_read() {
    let s = parse(
        r#"
command = ["python3", "app.py"]
workers = 2
min_ready = 1
listen = ["[::1]:9000", "unix:/run/app.sock", "/run/other.sock"]
working_directory = "srv"
readiness = "none"
ready_delay = "250ms"
stop_signal = "QUIT"
stop_timeout = "5s"
max_restarts = 3
restart_window = "10s"
backoff_initial = "100ms"
backoff_max = "2s"
backoff_reset = "1m"
max_spawn_rate = 5
log_level = "debug"
[env]
NODE_ENV = "production"
"#,
    )
    .unwrap();
    assert_eq!(s.min_ready, 1);
    assert_eq!(s.listen[0], ListenAddr::Tcp("[::1]:9000".parse().unwrap()));
    assert_eq!(s.listen[1], ListenAddr::Unix("/run/app.sock".into()));
    assert_eq!(s.listen[2], ListenAddr::Unix("/run/other.sock".into()));
    assert_eq!(s.working_directory, Some(PathBuf::from("srv")));
    assert_eq!(s.ready_delay, Duration::from_millis(250));
    assert_eq!(s.stop_signal, Signal::SIGQUIT);
    assert_eq!(s.restart.backoff_reset, Duration::from_secs(60));
    assert_eq!(s.restart.max_spawn_rate, 5);
    assert_eq!(s.log_level, Some(LogLevel::Debug));
    assert_eq!(s.env["NODE_ENV"], "production");
}

#[test]
fn relative_working_directory_is_relative_to_the_file() {
    let s = Settings::from_toml(
        "command = [\"x\"]\nworking_directory = \"app\"\n",
        Some(Path::new("/etc/sheepdog/my.toml")),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.working_directory, Some(PathBuf::from("/etc/sheepdog/app")));
}

#[test]
fn overrides_beat_the_file() {
    let overrides = Overrides {
        workers: Some(WorkerCount::Fixed(7)),
        listen: vec!["127.0.0.1:1".parse().unwrap()],
        command: vec!["other".into()],
        log_level: Some(LogLevel::Warn),
        spread: None,
        stop_signal: Some(Signal::SIGINT),
    };
    let s = Settings::from_toml(
        "command = [\"x\"]\nworkers = 2\nstop_signal = \"SIGQUIT\"\n",
        None,
        &overrides,
    )
    .unwrap();
    assert_eq!((s.workers, s.min_ready), (7, 7));
    assert_eq!(s.stop_signal, Signal::SIGINT);
    assert_eq!(s.command, vec!["other"]);
    assert_eq!(s.listen, vec![ListenAddr::Tcp("127.0.0.1:1".parse().unwrap())]);
}

#[test]
fn node_commands_get_the_node_kit_and_an_ipc_channel_unless_told_otherwise() {
    let s = parse("command = [\"node\", \"app.js\"]\n").unwrap();
    assert!(s.node);
    assert_eq!(s.channel, Channel::NodeIpc, "process.send is there, as under pm2");
    assert!(!s.listen_explicit);
    let s = parse("command = [\"node\", \"app.js\"]\nreadiness = \"notify\"\n").unwrap();
    assert_eq!(s.channel, Channel::Notify, "the readiness protocol's channel");
    let s = parse("command = [\"node\", \"app.js\"]\nnode = \"off\"\nlisten = [\"127.0.0.1:1\"]\n").unwrap();
    assert!(!s.node);
    assert_eq!(s.channel, Channel::None);
    assert!(s.listen_explicit);
    let s = parse("command = [\"sh\", \"-c\", \"exec node app.js\"]\nnode = \"on\"\n").unwrap();
    assert!(s.node);
    let s = parse("command = [\"python3\", \"app.py\"]\n").unwrap();
    assert!(!s.node);
    assert_eq!(s.channel, Channel::None);
    let e = error("command = [\"x\"]\nnode = \"yes\"\n");
    assert!(e.starts_with("app.toml:2:8: node:"), "{e}");
}

#[test]
fn localhost_is_an_address_and_a_host_name_is_refused_with_what_to_write() {
    assert_eq!(
        "localhost:3000".parse::<ListenAddr>(),
        Ok(ListenAddr::Tcp("127.0.0.1:3000".parse().unwrap()))
    );
    let e = "example.com:80".parse::<ListenAddr>().unwrap_err();
    assert!(e.contains("give an IP address, not a host name"), "{e}");
    let e = "nonsense".parse::<ListenAddr>().unwrap_err();
    assert!(e.contains("is not an address"), "{e}");
}

#[test]
fn auto_workers_is_the_cpu_count() {
    let s = parse("command = [\"x\"]\nworkers = \"auto\"\n").unwrap();
    assert!(s.workers >= 1);
}

#[test]
fn malformed_toml_names_file_and_line() {
    let e = error("command = [\"x\"]\nworkers = = 2\n");
    assert!(e.starts_with("app.toml:2:"), "{e}");
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let e = error("command = [\"x\"]\n\nwokers = 2\n");
    assert_eq!(e, "app.toml:3:1: wokers: unknown key; did you mean `workers`?");
    let e = error("command = [\"x\"]\nzzz = 2\n");
    assert!(
        e.starts_with("app.toml:2:1: zzz: unknown key; expected one of command, workers,"),
        "{e}"
    );
}

#[test]
fn zero_workers_is_refused() {
    let e = error("command = [\"x\"]\nworkers = 0\n");
    assert!(e.starts_with("app.toml:2:11: workers: must be at least 1"), "{e}");
}

#[test]
fn bad_durations_name_their_key_and_line() {
    let e = error("command = [\"x\"]\nstop_timeout = \"-5s\"\n");
    assert!(e.starts_with("app.toml:2:16: stop_timeout: "), "{e}");
    assert!(e.contains("negative"), "{e}");
    let e = error("command = [\"x\"]\nready_delay = \"soon\"\n");
    assert!(e.starts_with("app.toml:2:15: ready_delay: "), "{e}");
    let e = error("command = [\"x\"]\nrestart_window = 60\n");
    assert!(e.contains("restart_window: 60 needs a unit"), "{e}");
}

#[test]
fn missing_or_empty_command_is_refused() {
    assert!(error("workers = 2\n").contains("no command to run"));
    assert!(error("command = []\n").starts_with("app.toml:1:11: command: is empty"));
}

#[test]
fn cross_checks_point_at_the_right_key() {
    let e = error("command = [\"x\"]\nworkers = 2\nmin_ready = 3\n");
    assert!(
        e.starts_with("app.toml:3:13: min_ready: is 3 but there are only 2 workers"),
        "{e}"
    );
    let e = error("command = [\"x\"]\nbackoff_initial = \"5s\"\nbackoff_max = \"1s\"\n");
    assert!(e.starts_with("app.toml:3:15: backoff_max:"), "{e}");
    let e = error("command = [\"x\"]\nbackoff_initial = \"1ms\"\n");
    assert!(e.contains("fork storm"), "{e}");
}

#[test]
fn bad_signals_and_addresses_are_refused() {
    assert!(error("command = [\"x\"]\nstop_signal = \"SIGKILL\"\n").contains("stop_signal: SIGKILL cannot be caught"));
    assert!(error("command = [\"x\"]\nstop_signal = \"SIGBOGUS\"\n").contains("not a signal name"));
    let e = error("command = [\"x\"]\nlisten = [\"localhost\"]\n");
    assert!(e.contains("listen[0]: \"localhost\" is not an address"), "{e}");
}

#[test]
fn health_sections_are_read_with_defaults() {
    let s = parse(
        "command = [\"x\"]\nreadiness = \"node-ipc\"\n[heartbeat]\ninterval = \"2s\"\n[memory]\nlimit = \"700MiB\"\n",
    )
    .unwrap();
    assert_eq!(s.readiness, Readiness::NodeIpc);
    let heartbeat = s.heartbeat.unwrap();
    assert_eq!(
        (heartbeat.interval, heartbeat.timeout),
        (Duration::from_secs(2), Duration::from_secs(6))
    );
    assert_eq!(s.memory.limit, Some(700 * 1024 * 1024));
    assert_eq!(s.memory.measure, MemoryMeasure::Pss);
    assert_eq!(s.memory.interval, Duration::from_secs(5));
    assert_eq!(s.max_surge, 1);
    let s = parse("command = [\"x\"]\nreadiness = \"notify\"\nready_timeout = \"5s\"\n[memory]\nmeasure = \"rss\"\n")
        .unwrap();
    assert_eq!(s.readiness, Readiness::Notify);
    assert_eq!(s.ready_timeout, Duration::from_secs(5));
    assert_eq!(s.memory.measure, MemoryMeasure::Rss);
    assert!(s.heartbeat.is_none());
}

#[test]
fn health_sections_are_validated() {
    let e = error("command = [\"x\"]\n[heartbeat]\ninterval = \"1s\"\n");
    assert!(
        e.starts_with("app.toml:2:1: heartbeat: needs a channel to send them over"),
        "{e}"
    );
    let e = error("command = [\"x\"]\nreadiness = \"notify\"\n[heartbeat]\ninterval = \"2s\"\ntimeout = \"1s\"\n");
    assert!(
        e.starts_with("app.toml:5:11: heartbeat.timeout: 1s must be longer than the interval 2s"),
        "{e}"
    );
    let e = error("command = [\"x\"]\n[memory]\nlimit = \"lots\"\n");
    assert!(e.starts_with("app.toml:3:9: memory.limit: "), "{e}");
    let e = error("command = [\"x\"]\n[memory]\nlimit = \"-1MiB\"\n");
    assert!(e.contains("memory.limit: \"-1MiB\" is negative"), "{e}");
    let e = error("command = [\"x\"]\nreadiness = \"carrier-pigeon\"\n");
    assert!(
        e.starts_with("app.toml:2:13: readiness: unknown variant `carrier-pigeon`"),
        "{e}"
    );
    let e = error("command = [\"x\"]\n[memory]\nlimmit = \"1GiB\"\n");
    assert_eq!(e, "app.toml:3:1: memory.limmit: unknown key; did you mean `limit`?");
    // A misspelt section, and a key of a section written as a dotted key.
    let e = error("command = [\"x\"]\n[hartbeat]\ninterval = \"1s\"\n");
    assert_eq!(e, "app.toml:2:2: hartbeat: unknown key; did you mean `heartbeat`?");
    let e = error("command = [\"x\"]\nhttp.lisen = \"127.0.0.1:9\"\n");
    assert_eq!(e, "app.toml:2:6: http.lisen: unknown key; did you mean `listen`?");
    // Below `env` every name is the user's.
    assert!(parse("command = [\"x\"]\n[env]\nwokers = \"2\"\n").is_ok());
    assert!(error("command = [\"x\"]\nmax_surge = 0\n").contains("max_surge: must be at least 1"));
}

#[test]
fn the_control_socket_is_found_from_the_config_file() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_path_buf();
    let file = dir.join("myapp.toml");
    std::fs::write(&file, "control_socket = \"run/ctl.sock\"\n").unwrap();
    assert_eq!(
        client_target(Some(&file), None).unwrap(),
        ClientTarget::Socket(dir.join("run/ctl.sock"))
    );
    std::fs::write(&file, "workers = 2\n").unwrap();
    let default = client_target(Some(&file), None).unwrap();
    assert_eq!(
        default,
        ClientTarget::Default {
            path: default_control_socket(Some(&file)),
            config: std::fs::canonicalize(&file).unwrap()
        }
    );
    assert!(default_control_socket(Some(&file)).ends_with("myapp/control.sock"));
    assert!(
        default_control_socket(Some(&file)).starts_with(default_socket_dir())
            || std::env::var_os("RUNTIME_DIRECTORY").is_some()
    );
    assert_eq!(
        client_target(Some(&file), Some(Path::new("/x.sock"))).unwrap(),
        ClientTarget::Socket(PathBuf::from("/x.sock"))
    );
    assert_eq!(client_target(None, None).unwrap(), ClientTarget::Any);
    let s = Settings::from_toml(
        "command = [\"x\"]\ncontrol_socket = \"c.sock\"\n",
        Some(&file),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.control_socket, dir.join("c.sock"));
}

#[test]
fn env_cannot_shadow_what_sheepdog_sets_nor_hold_impossible_names() {
    for (name, why) in [
        ("LISTEN_FDS", "the sockets it passes"),
        ("LISTEN_PID", "the sockets it passes"),
        ("NOTIFY_SOCKET", "readiness and heartbeats over notify"),
        ("WATCHDOG_USEC", "readiness and heartbeats over notify"),
        ("WATCHDOG_PID", "readiness and heartbeats over notify"),
        ("NODE_CHANNEL_FD", "the node-ipc channel"),
        ("NODE_CHANNEL_SERIALIZATION_MODE", "the node-ipc channel"),
        ("JOURNAL_STREAM", "the worker's own journal stream"),
        ("SHEEPDOG_WORKER_ID", "the worker's slot and generation"),
        ("SHEEPDOG_GENERATION", "the worker's slot and generation"),
        ("NODE_APP_INSTANCE", "the worker's slot, as pm2 names it"),
    ] {
        let e = error(&format!("command = [\"x\"]\n[env]\n{name} = \"7\"\n"));
        assert_eq!(
            e,
            format!("app.toml:3:1: env.{name}: is set by sheepdog for each worker ({why}); it cannot be set here")
        );
    }
    // A number or a boolean, as a pm2 user writes PORT: the key and the fix.
    let e = error("command = [\"x\"]\n[env]\nPORT = 3000\n");
    assert_eq!(
        e,
        "app.toml:3:8: env.PORT: must be a string (an environment holds text): write PORT = \"3000\""
    );
    let e = error("command = [\"x\"]\n[env]\nDEBUG = true\n");
    assert!(
        e.ends_with("env.DEBUG: must be a string (an environment holds text): write DEBUG = \"true\""),
        "{e}"
    );
    let e = error("command = [\"x\"]\n[env]\nLIST = [1]\n");
    assert!(
        e.ends_with("env.LIST: must be a string (an environment holds text)"),
        "{e}"
    );
    let e = error("command = [\"x\"]\n[env]\n\"A=B\" = \"1\"\n");
    assert_eq!(e, "app.toml:3:1: env.A=B: a variable name cannot hold '=' or NUL");
    let e = error("command = [\"x\"]\n[env]\n\"\" = \"1\"\n");
    assert_eq!(e, "app.toml:3:1: env: an empty variable name");
    let e = error("command = [\"x\"]\n[env]\nA = \"x\\u0000y\"\n");
    assert_eq!(e, "app.toml:3:5: env.A: a value cannot hold NUL");
    let s = parse("command = [\"x\"]\n[env]\nLISTEN_ADDR = \"ok\"\nPATH = \"/bin\"\n").unwrap();
    assert_eq!(s.env["LISTEN_ADDR"], "ok", "only the exact names are sheepdog's");
}

#[test]
fn configs_that_cannot_work_are_refused() {
    let cases = [
        (
            "readiness = \"notify\"\nready_timeout = \"0s\"\n",
            "app.toml:3:17: ready_timeout: must be at least 100ms: no worker can say it is ready sooner",
        ),
        (
            "[memory]\nlimit = \"0B\"\n",
            "app.toml:3:9: memory.limit: must be at least 1MiB: under it every worker is over",
        ),
        (
            "[memory]\nlimit = \"512KiB\"\n",
            "app.toml:3:9: memory.limit: must be at least 1MiB",
        ),
        (
            "stop_signal = \"SIGCHLD\"\n",
            "stop_signal: SIGCHLD is ignored by a process that does not handle it",
        ),
        ("stop_signal = \"winch\"\n", "stop_signal: SIGWINCH is ignored"),
        ("stop_signal = \"SIGCONT\"\n", "stop_signal: SIGCONT is ignored"),
        ("stop_signal = \"SIGURG\"\n", "stop_signal: SIGURG is ignored"),
        ("stop_signal = \"SIGTSTP\"\n", "stop_signal: SIGTSTP suspends a process"),
        (
            "max_spawn_rate = 100000\n",
            "app.toml:2:18: max_spawn_rate: must be at most 1000 spawns per second",
        ),
        (
            "readiness = \"notify\"\n[heartbeat]\ninterval = \"8760h\"\n",
            "app.toml:4:12: heartbeat.interval: gives a timeout of 1576800m (3 intervals), longer than a year",
        ),
        (
            "name = \"my\\napp\"\n",
            "app.toml:2:8: name: cannot hold control characters",
        ),
        ("name = \"\"\n", "app.toml:2:8: name: is empty"),
        (
            "name = \"0123456789012345678901234567890123456789012345678901234567890123456789\"\n",
            "name: is longer than 64 bytes",
        ),
    ];
    for (text, says) in cases {
        let e = error(&format!("command = [\"x\"]\n{text}"));
        assert!(e.contains(says), "{text:?}: {e}");
    }
    // At the limits, accepted.
    let s = parse(
        "command = [\"x\"]\nreadiness = \"notify\"\nready_timeout = \"100ms\"\nmax_spawn_rate = 1000\n\
         stop_signal = \"SIGINT\"\nname = \"my-app_2\"\n[memory]\nlimit = \"1MiB\"\n[heartbeat]\ninterval = \"2920h\"\n",
    )
    .unwrap();
    assert_eq!(s.ready_timeout, Duration::from_millis(100));
    assert_eq!(s.heartbeat.unwrap().timeout, Duration::from_secs(365 * 86400));
    assert_eq!(s.name, "my-app_2");
    // Without a readiness protocol ready_timeout is not used: 0 is fine.
    assert!(parse("command = [\"x\"]\nready_timeout = \"0s\"\n").is_ok());
}

#[test]
fn errors_of_the_file_itself_name_no_key() {
    assert_eq!(error("workers = 2\nworkers = 3\n"), "app.toml:2:1: duplicate key");
}

#[test]
fn max_age_below_a_second_is_churn() {
    let e = error("command = [\"x\"]\nmax_age = \"500ms\"\n");
    assert_eq!(
        e,
        "app.toml:2:11: max_age: must be at least 1s: recycling more often is churn"
    );
    assert!(parse("command = [\"x\"]\nmax_age = \"1s\"\n").is_ok());
    let e = error("command = [\"x\"]\nmax_age_jitter = \"5s\"\n");
    assert!(e.contains("max_age_jitter: needs max_age"), "{e}");
}

#[test]
fn every_log_level_is_printed_as_written() {
    for level in ["error", "warn", "info", "debug", "trace"] {
        let printed = parse(&format!("command = [\"x\"]\nlog_level = \"{level}\"\n"))
            .unwrap()
            .describe();
        assert!(printed.contains(&format!("log_level = \"{level}\"")), "{printed}");
    }
}

#[test]
fn unix_socket_paths_are_files_relative_to_the_config() {
    let s = Settings::from_toml(
        "command = [\"x\"]\nlisten = [\"unix:run/app.sock\", \"unix:/abs.sock\", \"/other.sock\"]\n",
        Some(Path::new("/etc/sheepdog/app.toml")),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        s.listen,
        vec![
            ListenAddr::Unix("/etc/sheepdog/run/app.sock".into()),
            ListenAddr::Unix("/abs.sock".into()),
            ListenAddr::Unix("/other.sock".into()),
        ]
    );
    let e = error("command = [\"x\"]\nlisten = [\"unix:@myapp\"]\n");
    assert!(e.contains("\"unix:@myapp\": abstract sockets are not supported"), "{e}");
    let long = format!("unix:/{}", "x".repeat(110));
    let e = error(&format!("command = [\"x\"]\nlisten = [\"{long}\"]\n"));
    assert!(e.contains("longer than the 107 bytes the kernel takes"), "{e}");
    let deep = format!("unix:{}", "d".repeat(100));
    let e = Settings::from_toml(
        &format!("command = [\"x\"]\nlisten = [\"{deep}\"]\n"),
        Some(Path::new("/etc/sheepdog/app.toml")),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("longer than the 107 bytes"), "{e}");
}

#[test]
fn describe_round_trips_awkward_values() {
    let text = r#"command = ["sh", "-c", "echo \"a\\b\" 'c'\n\t€ \u0001"]
name = "app \"ünï\""
log_level = "trace"
stop_signal = "SIGQUIT"
ready_delay = "1500us"
max_age = "90061s"
max_age_jitter = "7ns"
[env]
"KEY WITH SPACES" = "v=1;x"
"dotted.key" = "\\"
"ÜNI" = "line\nbreak"
[memory]
limit = "700MB"
interval = "2500ms"
measure = "rss"
"#;
    let s = parse(text).unwrap();
    let printed = s.describe();
    let again = parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(
        again,
        Settings {
            config_file: s.config_file.clone(),
            ..s.clone()
        },
        "{printed}"
    );
    assert_eq!(s.memory.limit, Some(700_000_000));
    assert!(printed.contains("limit = \"700MB\""), "{printed}");
}

#[test]
fn describe_round_trips_through_the_parser() {
    let s = parse("command = [\"node\", \"a b.js\"]\nworkers = 2\nstop_timeout = \"90s\"\nreadiness = \"notify\"\nlog_level = \"warn\"\nmax_age = \"1h\"\n[heartbeat]\ninterval = \"1s\"\n[memory]\nlimit = \"1.5GiB\"\n[env]\nA = \"1\"\n").unwrap();
    let again = parse(&s.describe()).unwrap();
    assert_eq!(
        again,
        Settings {
            config_file: s.config_file.clone(),
            ..s
        }
    );
}

#[test]
fn worker_counts_within_one_and_the_maximum() {
    assert_eq!(parse("command = [\"x\"]\nworkers = 1\n").unwrap().workers, 1);
    assert_eq!(parse("command = [\"x\"]\nworkers = 4096\n").unwrap().workers, 4096);
    assert!(error("command = [\"x\"]\nworkers = 4097\n").contains("workers: must be at most 4096"));
    assert!(error("command = [\"x\"]\nworkers = \"many\"\n").contains("is not a number or \"auto\""));
    assert!(error("command = [\"x\"]\nworkers = 2\nmin_ready = 0\n").contains("min_ready: must be at least 1"));
    let s = parse("command = [\"x\"]\nworkers = 3\nmin_ready = 3\nmax_surge = 2\n").unwrap();
    assert_eq!((s.min_ready, s.max_surge), (3, 2));
}

#[test]
fn intervals_and_backoffs_have_a_floor() {
    let with = |section: &str| format!("command = [\"x\"]\nreadiness = \"notify\"\n{section}");
    assert!(error(&with("[heartbeat]\ninterval = \"99ms\"\n")).contains("heartbeat.interval: must be at least 100ms"));
    assert!(parse(&with("[heartbeat]\ninterval = \"100ms\"\n")).is_ok());
    assert!(error(&with("[memory]\ninterval = \"99ms\"\n")).contains("memory.interval: must be at least 100ms"));
    assert_eq!(
        parse(&with("[memory]\ninterval = \"100ms\"\n"))
            .unwrap()
            .memory
            .interval,
        Duration::from_millis(100)
    );
    assert!(error(&with("[heartbeat]\ninterval = \"1s\"\ntimeout = \"1s\"\n")).contains("must be longer"));
    let s = parse(&with("[heartbeat]\ninterval = \"1s\"\ntimeout = \"1001ms\"\n")).unwrap();
    assert_eq!(s.heartbeat.unwrap().timeout, Duration::from_millis(1001));
    assert!(parse("command = [\"x\"]\nbackoff_initial = \"10ms\"\n").is_ok());
    assert!(error("command = [\"x\"]\nbackoff_initial = \"9ms\"\n").contains("at least 10ms"));
    assert!(error("command = [\"x\"]\nmax_spawn_rate = 0\n").contains("max_spawn_rate: must be at least 1"));
    let s = parse("command = [\"x\"]\nbackoff_initial = \"1s\"\nbackoff_max = \"1s\"\n").unwrap();
    assert_eq!(s.restart.backoff_max, Duration::from_secs(1), "equal bounds are fine");
}

#[test]
fn every_default_is_the_named_one() {
    let s = parse("command = [\"x\"]\n").unwrap();
    assert_eq!(s.readiness, defaults::READINESS);
    assert_eq!(s.ready_delay, defaults::READY_DELAY);
    assert_eq!(s.ready_timeout, defaults::READY_TIMEOUT);
    assert_eq!(s.max_surge, defaults::MAX_SURGE);
    assert_eq!(s.stop_timeout, defaults::STOP_TIMEOUT);
    assert_eq!(s.restart.window, defaults::RESTART_WINDOW);
    assert_eq!(s.restart.backoff_initial, defaults::BACKOFF_INITIAL);
    assert_eq!(s.restart.backoff_max, defaults::BACKOFF_MAX);
    assert_eq!(s.restart.backoff_reset, defaults::BACKOFF_RESET);
    assert_eq!(s.restart.max_spawn_rate, defaults::MAX_SPAWN_RATE);
    assert_eq!(s.memory.interval, defaults::MEMORY_INTERVAL);
    assert_eq!(s.memory.limit, None);
    assert_eq!(s.name, "app", "the config file's name");
    assert!(!s.control_socket_explicit);
    let s = Settings::from_toml(
        "",
        None,
        &Overrides {
            command: vec!["/usr/bin/node".into(), "x.js".into()],
            ..Overrides::default()
        },
    )
    .unwrap();
    assert_eq!(
        s.name, "x",
        "without a config file, a Node script's name, as pm2 names it"
    );
    let s = Settings::from_toml(
        "",
        None,
        &Overrides {
            command: vec!["python3".into(), "-m".into(), "app".into()],
            ..Overrides::default()
        },
    )
    .unwrap();
    assert_eq!(s.name, "python3", "else the program's name");
}

#[test]
fn absolute_paths_in_the_file_stay_absolute() {
    let s = Settings::from_toml(
        "command = [\"x\"]\nworking_directory = \"/srv/app\"\ncontrol_socket = \"/run/x.sock\"\n",
        Some(Path::new("/etc/sheepdog/my.toml")),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.working_directory, Some(PathBuf::from("/srv/app")));
    assert_eq!(s.control_socket, PathBuf::from("/run/x.sock"));
    assert!(s.control_socket_explicit);
}

#[test]
fn values_that_cannot_work_are_refused_where_they_are_written() {
    let e = error("command = [\"x\"]\nlisten = []\n");
    assert!(e.starts_with("app.toml:2:10: listen: is empty"), "{e}");
    let e = error("command = [\"x\"]\ncontrol_socket = \"\"\n");
    assert!(e.starts_with("app.toml:2:18: control_socket: is empty"), "{e}");
    let e = error("command = [\"x\"]\n[memory]\nlimit = 1000\n");
    assert_eq!(
        e,
        "app.toml:3:9: memory.limit: 1000 needs a unit and quotes, e.g. \"1000MiB\""
    );
    let e = error("command = [\"x\"]\nstop_timeout = 5\n");
    assert_eq!(e, "app.toml:2:16: stop_timeout: 5 needs a unit and quotes, e.g. \"5s\"");
}

#[test]
fn the_machine_is_asked_at_load_where_the_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.toml");
    let load = |text: &str| {
        std::fs::write(&file, text).unwrap();
        Settings::load(Some(&file), &Overrides::default()).map_err(|e| e.to_string())
    };
    let at = file.display();
    assert_eq!(
        load("command = [\"no-such-program-sheepdog\"]\n").unwrap_err(),
        format!("{at}:1:11: command: `no-such-program-sheepdog` not found in PATH")
    );
    assert_eq!(
        load("command = [\"true\"]\nworking_directory = \"gone\"\n").unwrap_err(),
        format!(
            "{at}:2:21: working_directory: {} does not exist",
            dir.path().join("gone").display()
        )
    );
    assert!(
        load("command = [\"true\"]\n[env]\nPATH = \"/nowhere\"\n")
            .unwrap_err()
            .contains("command: `true` not found in PATH"),
        "the workers' PATH is the one searched"
    );
    assert!(load("command = [\"true\"]\n").is_ok());
    let overrides = Overrides {
        command: vec!["no-such-program-sheepdog".into()],
        ..Overrides::default()
    };
    let e = Settings::load(None, &overrides).unwrap_err().to_string();
    assert_eq!(
        e,
        "the command line: command: `no-such-program-sheepdog` not found in PATH"
    );
    // `--` overrides the file's command: the error is the command line's.
    std::fs::write(&file, "command = [\"true\"]\n").unwrap();
    let e = Settings::load(Some(&file), &overrides).unwrap_err().to_string();
    assert_eq!(
        e,
        "the command line: command: `no-such-program-sheepdog` not found in PATH"
    );
}

#[test]
fn check_shows_a_default_control_socket_as_a_comment_and_a_set_one_as_a_key() {
    let default = parse("command = [\"x\"]\n").unwrap().describe();
    assert!(default.starts_with("# control_socket = "), "{default}");
    assert!(!default.contains("\ncontrol_socket = "), "{default}");
    let set = parse("command = [\"x\"]\ncontrol_socket = \"/run/x.sock\"\n")
        .unwrap()
        .describe();
    assert!(set.contains("\ncontrol_socket = \"/run/x.sock\"\n"), "{set}");
    assert!(!set.contains("# control_socket"), "{set}");
}

#[test]
fn a_value_of_the_wrong_type_says_what_was_expected() {
    let e = error("command = [\"x\"]\nstop_timeout = true\n");
    assert!(e.contains("expected a duration such as \"5s\" or \"500ms\""), "{e}");
    let e = error("command = [\"x\"]\n[memory]\nlimit = [1]\n");
    assert!(e.contains("expected a size such as \"700MiB\""), "{e}");
}

#[test]
fn a_channel_of_its_own_for_workers_that_never_say_ready() {
    let s = parse("command = [\"x\"]\nchannel = \"node-ipc\"\n[heartbeat]\nping = \"ping#{pid}\"\n").unwrap();
    assert_eq!((s.readiness, s.channel), (Readiness::None, Channel::NodeIpc));
    assert_eq!(s.heartbeat_ping, "ping#{pid}");
    assert!(s.heartbeat.is_some());
    let s = parse("command = [\"x\"]\nreadiness = \"notify\"\n").unwrap();
    assert_eq!(s.channel, Channel::Notify, "the protocol's own by default");
    assert_eq!(s.heartbeat_ping, "ping");
    let e = error("command = [\"x\"]\nreadiness = \"notify\"\nchannel = \"node-ipc\"\n");
    assert!(
        e.starts_with("app.toml:3:11: channel: readiness = \"notify\" speaks over channel \"notify\""),
        "{e}"
    );
    let e = error("command = [\"x\"]\nreadiness = \"notify\"\n[heartbeat]\nping = \"hi\"\n");
    assert!(
        e.starts_with("app.toml:4:8: heartbeat.ping: is for node-ipc workers"),
        "{e}"
    );
    let e = error("command = [\"x\"]\nreadiness = \"node-ipc\"\n[heartbeat]\nping = \"\"\n");
    assert!(e.contains("heartbeat.ping: is empty"), "{e}");
    let again = parse(
        &parse("command = [\"x\"]\nchannel = \"node-ipc\"\n[heartbeat]\nping = \"p\\\"q\"\n")
            .unwrap()
            .describe(),
    );
    assert_eq!(again.unwrap().heartbeat_ping, "p\"q", "check's printout keeps it");
}

#[test]
fn a_unix_path_of_107_bytes_is_taken_and_108_refused() {
    // The kernel's sun_path holds 108 bytes with the NUL.
    let absolute = |len: usize| format!("/{}", "a".repeat(len - 1));
    let listen = |path: &str| parse(&format!("command = [\"x\"]\nlisten = [\"unix:{path}\"]\n"));
    assert_eq!(
        listen(&absolute(107)).unwrap().listen,
        [ListenAddr::Unix(absolute(107).into())]
    );
    assert!(listen(&absolute(108)).is_err());
    // Relative to the config file's directory: the joined path counts.
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().display().to_string();
    let file = dir.path().join("app.toml");
    let relative = |len: usize| "r".repeat(len - base.len() - 1);
    let load = |path: String| {
        std::fs::write(&file, format!("command = [\"sh\"]\nlisten = [\"unix:{path}\"]\n")).unwrap();
        Settings::load(Some(&file), &Overrides::default())
    };
    let taken = load(relative(107)).unwrap();
    assert_eq!(taken.listen, [ListenAddr::Unix(dir.path().join(relative(107)))]);
    assert!(
        load(relative(108))
            .unwrap_err()
            .to_string()
            .contains("longer than the 107 bytes")
    );
}

#[test]
fn a_name_of_64_bytes_is_taken_and_65_refused() {
    let name = |len: usize| parse(&format!("command = [\"x\"]\nname = \"{}\"\n", "n".repeat(len)));
    assert_eq!(name(64).unwrap().name, "n".repeat(64));
    assert!(
        name(65)
            .unwrap_err()
            .to_string()
            .contains("name: is longer than 64 bytes")
    );
}

#[test]
fn an_env_too_large_for_execve_is_refused_before_anything_starts() {
    let with = |vars: &[(&str, usize)]| {
        let body: String = vars
            .iter()
            .map(|(k, n)| format!("{k} = \"{}\"\n", "x".repeat(*n)))
            .collect();
        parse(&format!("command = [\"x\"]\n[env]\n{body}"))
    };
    assert!(with(&[("A", 100_000)]).is_ok());
    // One variable: NAME=VALUE and its NUL within 128 KiB.
    assert!(with(&[("A", 128 * 1024 - 3)]).is_ok());
    let e = with(&[("A", 128 * 1024 - 2)]).unwrap_err().to_string();
    assert!(
        e.starts_with("app.toml:3:5: env.A: is longer than the 131072 bytes"),
        "{e}"
    );
    // In all: at most 512 KiB.
    let many: Vec<(String, usize)> = (0..6).map(|i| (format!("V{i}"), 100_000)).collect();
    let many: Vec<(&str, usize)> = many.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    let e = with(&many).unwrap_err().to_string();
    assert!(e.starts_with("app.toml:3:1: env: holds 600024 bytes"), "{e}");
    assert!(with(&many[..5]).is_ok());
}
