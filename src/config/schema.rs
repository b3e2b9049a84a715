//! Every key of the config file, its default and its meaning, written once:
//! docs/configuration.md's table and `sheepdog.toml(5)` show this, and tests hold both
//! (and the defaults in `defaults`) to it.

/// One key of the config file. Texts are Markdown (code in backticks).
pub struct Key {
    /// `workers`, or `heartbeat.interval` for a key of a section.
    pub key: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

pub const KEYS: &[Key] = &[
    Key {
        key: "command",
        default: "—",
        meaning: "the worker program and its arguments, e.g. `[\"node\", \"server.js\"]`; the program is looked up in the workers' `PATH`",
    },
    Key {
        key: "workers",
        default: "`\"auto\"`",
        meaning: "number of workers (1–4096), or `\"auto\"` for one per CPU this process may use (its affinity and its cgroup CPU quota, as in a container, rounded down)",
    },
    Key {
        key: "min_ready",
        default: "`workers`",
        meaning: "how many workers must be ready before sheepdog reports `READY=1`",
    },
    Key {
        key: "listen",
        default: "`[\"127.0.0.1:8080\"]`",
        meaning: "addresses to bind when systemd passes no socket: `\"IP:PORT\"`, `\"[IPv6]:PORT\"`, `\"unix:/path\"` (a relative path is relative to the config file; no abstract `@` names); at least one",
    },
    Key {
        key: "spread",
        default: "`\"round-robin\"`",
        meaning: "how new connections reach the workers: `\"round-robin\"` (each worker accepts from a queue of its own and each new connection goes to the next worker that may take it; needs `CAP_BPF` or root at start, else `\"random\"`), `\"random\"` (a queue each, a worker that may take it picked at random; no privilege) or `\"shared\"` (one queue for all: the kernel's accept race picks), see [Spreading connections](#spreading-connections)",
    },
    Key {
        key: "node",
        default: "`\"auto\"`",
        meaning: "the Node kit, for a command whose program is `node` (or `npm`, `npx`, `yarn`, `pnpm`, `tsx`, `ts-node`) with `\"auto\"`, for any with `\"on\"`, for none with `\"off\"`: sheepdog's preload in `NODE_OPTIONS` (`listen(3000)` takes the passed socket, SIGTERM runs an app's SIGINT handler when it has no other), an IPC channel with `readiness = \"none\"` (`process.send` is there) and `NODE_UNIQUE_ID` (a cluster master runs its worker branch); without `listen` and outside systemd, the app's own port, found by starting it once; see [Coming from pm2](../README.md#coming-from-pm2)",
    },
    Key {
        key: "working_directory",
        default: "sheepdog's",
        meaning: "the workers' working directory, which must exist; relative to the config file's directory",
    },
    Key {
        key: "readiness",
        default: "`\"none\"`",
        meaning: "how a worker says it is ready (and alive): `\"notify\"`, `\"node-ipc\"` or `\"none\"`, see [Readiness and heartbeats](#readiness-and-heartbeats)",
    },
    Key {
        key: "channel",
        default: "`readiness`'s",
        meaning: "the channel a worker gets to sheepdog: `\"notify\"`, `\"node-ipc\"` or `\"none\"`; only with `readiness = \"none\"` may it differ, for heartbeats from workers that never say they are ready (classic cluster workers); a Node worker (see `node`) with `readiness = \"none\"` gets `\"node-ipc\"`",
    },
    Key {
        key: "ready_delay",
        default: "`\"1s\"`",
        meaning: "with `readiness = \"none\"`, how long a worker must stay up to count as ready",
    },
    Key {
        key: "ready_timeout",
        default: "`\"60s\"`",
        meaning: "with `notify` / `node-ipc`, a worker not ready this long after it started is killed and counts as a failed start (at least 100ms)",
    },
    Key {
        key: "max_surge",
        default: "`1`",
        meaning: "how many replacement workers may run beside the ones they replace (reloads, memory replacement)",
    },
    Key {
        key: "stop_signal",
        default: "`\"SIGTERM\"`",
        meaning: "the signal that asks a worker to stop accepting, finish in-flight requests and exit; not SIGKILL or SIGSTOP, nor one a process ignores or is suspended by unless it handles it (SIGCHLD, SIGCONT, SIGWINCH, SIGURG, SIGTSTP, SIGTTIN, SIGTTOU)",
    },
    Key {
        key: "stop_timeout",
        default: "`\"30s\"`",
        meaning: "how long a stopping worker may drain before it gets SIGKILL",
    },
    Key {
        key: "max_restarts",
        default: "`10`",
        meaning: "more unrequested worker exits than this within `restart_window` is a crash loop",
    },
    Key {
        key: "restart_window",
        default: "`\"60s\"`",
        meaning: "the window for `max_restarts`, across the whole flock",
    },
    Key {
        key: "backoff_initial",
        default: "`\"500ms\"`",
        meaning: "delay before refilling a slot after its second crash in a row (the first is refilled at once); doubles per crash in a row (≥ 10ms)",
    },
    Key {
        key: "backoff_max",
        default: "`\"30s\"`",
        meaning: "the cap on that delay",
    },
    Key {
        key: "backoff_reset",
        default: "`\"30s\"`",
        meaning: "a worker ready this long resets its slot's backoff",
    },
    Key {
        key: "max_spawn_rate",
        default: "`20`",
        meaning: "spawns per second, whatever the workers do, 1–1000 (the first start is not rationed by it, but paced by the machine's load: see [What sheepdog does](operations.md#what-sheepdog-does))",
    },
    Key {
        key: "min_uptime",
        default: "`\"5s\"`",
        meaning: "a worker that says it is leaving (`STOPPING=1`, `'stopping'`, `{act: 'suicide'}`) before it was ready, or sooner than this after it started, failed to start: it counts as a restart, is backed off, and aborts a reload",
    },
    Key {
        key: "max_age",
        default: "none",
        meaning: "recycle each worker once it has run this long (plus its jitter), replacement first within `max_surge`, one at a time at least `max_age / workers` apart, e.g. `\"6h\"` (at least 1s)",
    },
    Key {
        key: "max_age_jitter",
        default: "`\"0s\"`",
        meaning: "each worker adds a share of this to its `max_age`, drawn once when it starts, so that recycles spread out",
    },
    Key {
        key: "control_socket",
        default: "see [Control socket](operations.md#the-control-socket)",
        meaning: "where `sheepdog status`, `reload` and `scale` reach this sheepdog; relative to the config file",
    },
    Key {
        key: "name",
        default: "the config file's name",
        meaning: "names the app: workers' journal identifiers are `NAME-worker-SLOT`, and `sheepdog status` lists it so; without a config file, the program's name (at most 64 bytes, no control characters)",
    },
    Key {
        key: "log_level",
        default: "`\"info\"`",
        meaning: "`error`, `warn`, `info`, `debug`, `trace`; `--log-level` and `RUST_LOG` also work",
    },
    Key {
        key: "env",
        default: "—",
        meaning: "extra environment variables for the workers, e.g. `NODE_ENV = \"production\"`; not those sheepdog sets for each worker (`LISTEN_*`, `NOTIFY_SOCKET`, `WATCHDOG_*`, `NODE_CHANNEL_*`, `NODE_APP_INSTANCE`, `SHEEPDOG_*`, `JOURNAL_STREAM`); each `NAME=value` under the 128 KiB execve(2) takes for one, 512 KiB in all",
    },
    Key {
        key: "heartbeat.interval",
        default: "`\"5s\"` (when the section is present)",
        meaning: "how often sheepdog pings node-ipc workers; heartbeats need a channel (`notify` or `node-ipc`); at least 100ms, and without a `timeout` at most a third of a year",
    },
    Key {
        key: "heartbeat.ping",
        default: "`\"ping\"`",
        meaning: "what node-ipc workers are pinged with, a JSON string; `{pid}` is the worker's pid, e.g. `\"ping#{pid}\"` for workers that answer only their own; any message back counts as a heartbeat",
    },
    Key {
        key: "heartbeat.timeout",
        default: "3 × `interval`",
        meaning: "a ready worker silent this long is hung: SIGKILLed and replaced",
    },
    Key {
        key: "memory.limit",
        default: "none",
        meaning: "a worker whose process tree uses more is replaced gracefully, replacement first, e.g. `\"700MiB\"` (at least 1MiB)",
    },
    Key {
        key: "memory.interval",
        default: "`\"5s\"`",
        meaning: "how often each worker's tree is measured (also for the total in STATUS)",
    },
    Key {
        key: "memory.measure",
        default: "`\"pss\"`",
        meaning: "`\"pss\"` or `\"rss\"`, see [Memory](#memory)",
    },
    Key {
        key: "http.listen",
        default: "none (off)",
        meaning: "serve `/healthz`, `/readyz` and `/metrics` here, from the supervisor itself: `\"127.0.0.1:9101\"` or `\"unix:/path\"`; see [Health and metrics over HTTP](operations.md#health-and-metrics-over-http)",
    },
];

/// How the table of docs/configuration.md names a key: `` `workers` ``, `` `[env]` ``,
/// `` `[heartbeat]` `interval` ``.
pub fn readme_key(key: &str) -> String {
    match key.split_once('.') {
        Some((section, key)) => format!("`[{section}]` `{key}`"),
        None if key == "env" => "`[env]`".to_string(),
        None => format!("`{key}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::{format_duration, parse_duration};
    use crate::config::{Overrides, Settings, defaults};

    fn default_of(key: &str) -> &'static str {
        KEYS.iter().find(|k| k.key == key).map(|k| k.default).unwrap()
    }

    /// The quoted value of a default: `` `"500ms"` `` → `500ms`.
    fn quoted(key: &str) -> String {
        default_of(key).trim_matches('`').trim_matches('"').to_string()
    }

    #[test]
    fn the_readme_table_is_the_schema() {
        let readme = include_str!("../../docs/configuration.md");
        let rows: Vec<Vec<String>> = readme
            .lines()
            .skip_while(|l| !l.starts_with("| key | default | meaning |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| l.trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect())
            .collect();
        let schema: Vec<Vec<String>> = KEYS
            .iter()
            .map(|k| vec![readme_key(k.key), k.default.to_string(), k.meaning.to_string()])
            .collect();
        assert_eq!(
            rows, schema,
            "docs/configuration.md's table and config::schema::KEYS differ"
        );
    }

    #[test]
    fn the_documented_defaults_are_the_codes() {
        for (key, value) in [
            ("ready_delay", defaults::READY_DELAY),
            ("ready_timeout", defaults::READY_TIMEOUT),
            ("stop_timeout", defaults::STOP_TIMEOUT),
            ("restart_window", defaults::RESTART_WINDOW),
            ("backoff_initial", defaults::BACKOFF_INITIAL),
            ("backoff_max", defaults::BACKOFF_MAX),
            ("backoff_reset", defaults::BACKOFF_RESET),
            ("memory.interval", defaults::MEMORY_INTERVAL),
            ("min_uptime", defaults::MIN_UPTIME),
            ("max_age_jitter", defaults::MAX_AGE_JITTER),
        ] {
            assert_eq!(parse_duration(&quoted(key)), Ok(value), "{key}");
        }
        let heartbeat = default_of("heartbeat.interval").split(' ').next().unwrap();
        let heartbeat = heartbeat.trim_matches('`').trim_matches('"');
        assert_eq!(format_duration(defaults::HEARTBEAT_INTERVAL), heartbeat);
        assert_eq!(
            default_of("heartbeat.timeout"),
            format!("{} × `interval`", defaults::HEARTBEAT_TIMEOUTS)
        );
        assert_eq!(quoted("max_surge"), defaults::MAX_SURGE.to_string());
        assert_eq!(quoted("max_restarts"), defaults::MAX_RESTARTS.to_string());
        assert_eq!(quoted("max_spawn_rate"), defaults::MAX_SPAWN_RATE.to_string());
        assert_eq!(quoted("stop_signal"), defaults::STOP_SIGNAL.as_str());
        assert_eq!(quoted("readiness"), defaults::READINESS.to_string());
        assert_eq!(quoted("memory.measure"), defaults::MEMORY_MEASURE.to_string());
        assert_eq!(default_of("listen"), format!("`[\"{}\"]`", defaults::LISTEN));
        let settings = Settings::from_toml("command = [\"x\"]\n", None, &Overrides::default()).unwrap();
        assert_eq!(settings.log_level, None, "info unless RUST_LOG says otherwise");
        assert_eq!(settings.memory.limit, None);
    }

    #[test]
    fn every_key_the_parser_knows_is_in_the_schema() {
        // The parser names every key it knows when it meets one it does not.
        for (section, prefix) in [
            ("", ""),
            ("[heartbeat]\n", "heartbeat."),
            ("[memory]\n", "memory."),
            ("[http]\n", "http."),
        ] {
            let text = format!("command = [\"x\"]\n{section}zzzzzzzz = 1\n");
            let error = Settings::from_toml(&text, None, &Overrides::default())
                .unwrap_err()
                .to_string();
            let known = error.split("expected one of ").nth(1).unwrap();
            for key in known.split(", ") {
                let key = format!("{prefix}{key}");
                let in_schema = KEYS
                    .iter()
                    .any(|k| k.key == key || k.key.starts_with(&format!("{key}.")));
                assert!(in_schema, "{key} is not documented in config::schema::KEYS");
            }
        }
    }
}
