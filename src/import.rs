//! `sheepdog import ecosystem.config.js --out DIR`: a pm2 ecosystem file
//! becomes one sheepdog config per app (`DIR/NAME.toml`). What maps is
//! written as sheepdog's keys; what does not is listed, in the file and on
//! the terminal, never dropped silently.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::units::{format_duration, format_size_exact};

/// One app of the ecosystem file, as sheepdog config text.
#[derive(Debug, PartialEq, Eq)]
pub struct Imported {
    pub name: String,
    pub toml: String,
    /// What did not map, a line each.
    pub unmapped: Vec<String>,
}

/// Reads the ecosystem file: `.json` as it is, `.js`/`.cjs`/`.mjs` by
/// evaluating it with node (it is a module: `module.exports = {apps: [...]}`).
pub fn read_ecosystem(path: &Path) -> Result<Value, String> {
    let shown = path.display();
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let text = match extension {
        "json" => std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?,
        "js" | "cjs" | "mjs" => {
            let absolute = std::fs::canonicalize(path).map_err(|e| format!("{shown}: {e}"))?;
            let script = "import(require('url').pathToFileURL(process.argv[1]).href).then((m) => { \
                          const c = m.default ?? m; process.stdout.write(JSON.stringify(c)); })";
            let output = Command::new("node")
                .arg("-e")
                .arg(script)
                .arg(&absolute)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("{shown}: cannot run node to read it: {e}"))?;
            if !output.status.success() {
                let error = String::from_utf8_lossy(&output.stderr);
                let first = error.lines().find(|l| l.contains("Error")).unwrap_or("node failed");
                return Err(format!(
                    "{shown}: node cannot load it: {}",
                    crate::text::printable(first)
                ));
            }
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
        _ => {
            return Err(format!(
                "{shown}: an ecosystem file is .js, .cjs, .mjs or .json (for YAML, convert it to JSON first)"
            ));
        }
    };
    serde_json::from_str(&text).map_err(|e| format!("{shown}: not an ecosystem file: {e}"))
}

/// The apps of an ecosystem (`{apps: [...]}`, an array, or one app), each
/// as config text, with `env_NAME` merged over `env` when `env_set` names it.
/// `base` is the ecosystem file's directory: pm2 runs an app there unless
/// its `cwd` says otherwise (a relative `cwd` is relative to it).
pub fn import(ecosystem: &Value, env_set: Option<&str>, base: Option<&Path>) -> Result<Vec<Imported>, String> {
    let apps = match ecosystem {
        Value::Object(map) if map.contains_key("apps") => match &map["apps"] {
            Value::Array(apps) => apps.clone(),
            Value::Object(_) => vec![map["apps"].clone()],
            _ => return Err("\"apps\" is not a list of apps".into()),
        },
        Value::Array(apps) => apps.clone(),
        Value::Object(_) => vec![ecosystem.clone()],
        _ => return Err("no apps in it".into()),
    };
    if apps.is_empty() {
        return Err("no apps in it".into());
    }
    let mut names = std::collections::HashSet::new();
    let mut imported = Vec::new();
    for (index, app) in apps.iter().enumerate() {
        let Value::Object(app) = app else {
            return Err(format!("app {index} is not an object"));
        };
        let one = import_app(app, index, env_set, base)?;
        if !names.insert(one.name.clone()) {
            return Err(format!("two apps are named {:?}", one.name));
        }
        imported.push(one);
    }
    Ok(imported)
}

/// TOML's own quoting of a string.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// pm2's milliseconds: a number, or a string of digits, or a duration
/// sheepdog reads ("5s").
fn millis(value: &Value) -> Option<Duration> {
    match value {
        Value::Number(n) => n.as_u64().map(Duration::from_millis),
        Value::String(s) if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() => {
            s.parse().ok().map(Duration::from_millis)
        }
        Value::String(s) => crate::config::units::parse_duration(s).ok(),
        _ => None,
    }
}

/// pm2's `max_memory_restart`: "300M", "1G", "512K" (powers of 1024) or bytes.
fn memory(value: &Value) -> Option<u64> {
    let text = text_of(value)?;
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = digits.parse().ok()?;
    let factor = match unit.trim().to_ascii_uppercase().as_str() {
        "" => 1,
        "K" | "KB" => 1 << 10,
        "M" | "MB" => 1 << 20,
        "G" | "GB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// Shell-like words: spaces split, quotes group.
fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quote = None;
    let mut any = false;
    for c in text.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    words.push(std::mem::take(&mut current));
                    any = false;
                }
            }
            (_, c) => {
                current.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(current);
    }
    words
}

fn list(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().filter_map(text_of).collect(),
        Value::String(s) => words(s),
        _ => Vec::new(),
    }
}

/// A pm2 `cron_restart` that is a plain period, as a `max_age`.
fn cron_period(cron: &str) -> Option<Duration> {
    let fields: Vec<&str> = cron.split_whitespace().collect();
    let every = |f: &str| {
        f.strip_prefix("*/")
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n > 0)
    };
    match fields.as_slice() {
        [minute, "*", "*", "*", "*"] => every(minute).map(|n| Duration::from_secs(n * 60)),
        [minute, hour, "*", "*", "*"] if minute.parse::<u32>().is_ok() => match every(hour) {
            Some(n) => Some(Duration::from_secs(n * 3600)),
            None if hour.parse::<u32>().is_ok() => Some(Duration::from_secs(86_400)),
            None => None,
        },
        _ => None,
    }
}

/// Keys with no sheepdog equivalent, and what to do instead.
fn unmapped_why(key: &str) -> Option<&'static str> {
    Some(match key {
        "watch" | "ignore_watch" | "watch_delay" | "watch_options" => {
            "sheepdog does not watch files: deploy, then `systemctl reload NAME` (or `sheepdog reload`)"
        }
        "autorestart" => "sheepdog always replaces a worker that ends; stop the service to stop them",
        "out_file" | "error_file" | "log_file" | "log" | "output" | "error" | "merge_logs" | "combine_logs"
        | "log_date_format" | "log_type" | "time" | "pid_file" | "pid" | "disable_logs" => {
            "logs go to the journal (or sheepdog's output): `sheepdog logs NAME`, `journalctl -u sheepdog@NAME`"
        }
        "exec_mode" => "every sheepdog flock is a cluster: workers share the socket",
        "shutdown_with_message" => "sheepdog stops workers with a signal (`stop_signal`)",
        "vizion" | "automation" | "pmx" | "treekill" | "instance_var" | "increment_var" | "filter_env"
        | "append_env_to_name" | "force" | "post_update" | "source_map_support" | "namespace" | "version"
        | "windowsHide" | "kill_retry_time" | "deep_monitoring" | "trace" | "disable_trace" | "io" => {
            "pm2-specific; nothing to do under sheepdog"
        }
        "uid" | "gid" | "user" => "set User= in a drop-in of sheepdog@NAME.service (systemctl edit sheepdog@NAME)",
        "listen_timeout" => "without wait_ready, a worker is ready once it has run for ready_delay",
        _ => return None,
    })
}

fn import_app(
    app: &Map<String, Value>,
    index: usize,
    env_set: Option<&str>,
    base: Option<&Path>,
) -> Result<Imported, String> {
    let script = app
        .get("script")
        .and_then(text_of)
        .ok_or_else(|| format!("app {index} has no \"script\""))?;
    let name = match app.get("name").and_then(text_of) {
        Some(name) => name,
        None => Path::new(&script)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("app")
            .to_string(),
    };
    let file_name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if !file_name_ok {
        return Err(format!(
            "app {index}: the name {:?} cannot name a file and a unit: letters, digits, '-', '_' and '.' only",
            crate::text::printable(&name)
        ));
    }
    let mut unmapped = Vec::new();
    let mut keys = String::new();
    let mut sections = String::new();

    // The command: the interpreter pm2 would pick for the script.
    let interpreter = app.get("interpreter").or(app.get("exec_interpreter")).and_then(text_of);
    let extension = Path::new(&script).extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut command: Vec<String> = match interpreter.as_deref() {
        Some("none") => Vec::new(),
        Some(interpreter) => vec![interpreter.to_string()],
        None => match extension {
            "js" | "cjs" | "mjs" => vec!["node".into()],
            "py" => vec!["python3".into()],
            "sh" => vec!["bash".into()],
            "ts" => vec!["npx".into(), "tsx".into()],
            _ if script == "npm" || script == "yarn" || script == "pnpm" => Vec::new(),
            _ => Vec::new(),
        },
    };
    for key in ["interpreter_args", "node_args", "interpreterArgs"] {
        if let Some(value) = app.get(key) {
            command.extend(list(value));
        }
    }
    command.push(script.clone());
    if let Some(args) = app.get("args") {
        command.extend(list(args));
    }
    let command = command.iter().map(|w| quoted(w)).collect::<Vec<_>>().join(", ");
    writeln!(keys, "command = [{command}]").ok();
    writeln!(keys, "name = {}", quoted(&name)).ok();

    match app.get("instances") {
        None => writeln!(keys, "workers = 1").ok(),
        Some(Value::String(s)) if s == "max" => writeln!(keys, "workers = \"auto\"").ok(),
        Some(value) => match value.as_i64().or_else(|| text_of(value).and_then(|t| t.parse().ok())) {
            Some(0) => writeln!(keys, "workers = \"auto\"").ok(),
            Some(n) if n > 0 => writeln!(keys, "workers = {n}").ok(),
            Some(n) => {
                unmapped.push(format!(
                    "instances = {n} (all CPUs but {}): workers = \"auto\" is one per CPU; set a number",
                    -n
                ));
                writeln!(keys, "workers = \"auto\"").ok()
            }
            None => {
                unmapped.push(format!("instances = {value}: not a number or \"max\""));
                None
            }
        },
    };
    let cwd = match (app.get("cwd").and_then(text_of), base) {
        (Some(cwd), Some(base)) => Some(base.join(cwd)),
        (Some(cwd), None) => Some(PathBuf::from(cwd)),
        (None, base) => base.map(Path::to_path_buf),
    };
    if let Some(cwd) = cwd {
        writeln!(keys, "working_directory = {}", quoted(&cwd.display().to_string())).ok();
    }
    let wait_ready = app.get("wait_ready").and_then(Value::as_bool).unwrap_or(false);
    if wait_ready {
        writeln!(keys, "readiness = \"node-ipc\"").ok();
        if let Some(timeout) = app.get("listen_timeout").and_then(millis) {
            writeln!(keys, "ready_timeout = {}", quoted(&format_duration(timeout))).ok();
        }
    }
    if let Some(timeout) = app.get("kill_timeout").and_then(millis) {
        writeln!(keys, "stop_timeout = {}", quoted(&format_duration(timeout))).ok();
    }
    if let Some(restarts) = app.get("max_restarts").and_then(Value::as_u64) {
        writeln!(keys, "max_restarts = {restarts}").ok();
    }
    if let Some(uptime) = app.get("min_uptime").and_then(millis) {
        writeln!(keys, "min_uptime = {}", quoted(&format_duration(uptime))).ok();
    }
    for key in ["restart_delay", "exp_backoff_restart_delay"] {
        if let Some(delay) = app.get(key).and_then(millis) {
            let delay = delay.max(Duration::from_millis(10));
            writeln!(keys, "backoff_initial = {}", quoted(&format_duration(delay))).ok();
            break;
        }
    }
    if let Some(cron) = app.get("cron_restart").and_then(text_of) {
        match cron_period(&cron) {
            Some(period) => {
                writeln!(keys, "max_age = {}", quoted(&format_duration(period))).ok();
                unmapped.push(format!(
                    "cron_restart = {cron:?}: as max_age = {:?}, each worker recycled at that age, one at a \
                     time, not all at the cron's time",
                    format_duration(period)
                ));
            }
            None => unmapped.push(format!(
                "cron_restart = {cron:?}: not a plain period; a systemd timer running `systemctl reload \
                 sheepdog@{name}` restarts at set times"
            )),
        }
    }
    if let Some(signal) = app.get("kill_signal").and_then(text_of) {
        writeln!(keys, "stop_signal = {}", quoted(&signal)).ok();
    }

    // The environment: env, then the chosen set over it.
    let mut env: Vec<(String, String)> = Vec::new();
    let mut merge = |value: &Value, from: &str, unmapped: &mut Vec<String>| {
        let Value::Object(vars) = value else {
            unmapped.push(format!("{from} is not an object of variables"));
            return;
        };
        for (key, value) in vars {
            match text_of(value) {
                Some(text) => {
                    env.retain(|(k, _)| k != key);
                    env.push((key.clone(), text));
                }
                None => unmapped.push(format!("{from}.{key}: not a string, number or boolean")),
            }
        }
    };
    if let Some(value) = app.get("env") {
        merge(value, "env", &mut unmapped);
    }
    let mut sets = Vec::new();
    for (key, value) in app {
        let Some(set) = key.strip_prefix("env_") else { continue };
        if Some(set) == env_set {
            merge(value, key, &mut unmapped);
        } else {
            sets.push(set.to_string());
        }
    }
    if !sets.is_empty() {
        unmapped.push(format!(
            "env sets not applied: {} (sheepdog import --env NAME merges env_NAME over env)",
            sets.join(", ")
        ));
    }
    if let Some(port) = env
        .iter()
        .find(|(k, _)| k == "PORT")
        .and_then(|(_, p)| p.parse::<u16>().ok())
    {
        // What listen(PORT) binds; under systemd the socket unit decides.
        writeln!(keys, "listen = [\"[::]:{port}\"]").ok();
    }
    // sheepdog sets these itself.
    env.retain(|(key, _)| {
        let reserved = crate::config::RESERVED_ENV.contains(&key.as_str());
        if reserved {
            unmapped.push(format!("env {key}: sheepdog sets it for each worker"));
        }
        !reserved
    });
    if let Some(limit) = app.get("max_memory_restart") {
        match memory(limit) {
            Some(bytes) if bytes >= 1 << 20 => {
                writeln!(sections, "\n[memory]\nlimit = {}", quoted(&format_size_exact(bytes))).ok();
            }
            _ => unmapped.push(format!("max_memory_restart = {limit}: not a size of at least 1M")),
        }
    }
    if !env.is_empty() {
        sections.push_str("\n[env]\n");
        for (key, value) in &env {
            let bare = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            let key = if bare { key.clone() } else { quoted(key) };
            writeln!(sections, "{key} = {}", quoted(value)).ok();
        }
    }
    let known = [
        "name",
        "script",
        "args",
        "interpreter",
        "exec_interpreter",
        "interpreter_args",
        "interpreterArgs",
        "node_args",
        "instances",
        "cwd",
        "wait_ready",
        "kill_timeout",
        "max_restarts",
        "min_uptime",
        "restart_delay",
        "exp_backoff_restart_delay",
        "cron_restart",
        "kill_signal",
        "env",
        "max_memory_restart",
    ];
    for (key, value) in app {
        if known.contains(&key.as_str()) || key.starts_with("env_") {
            continue;
        }
        if key == "listen_timeout" && wait_ready {
            continue;
        }
        let why = unmapped_why(key).unwrap_or("not a pm2 key sheepdog knows");
        unmapped.push(format!("{key} = {}: {why}", crate::text::printable(&value.to_string())));
    }
    let mut toml = format!("# {name}: imported from a pm2 ecosystem file by `sheepdog import`.\n");
    if !unmapped.is_empty() {
        toml.push_str("# Not mapped:\n");
        for line in &unmapped {
            writeln!(toml, "# - {line}").ok();
        }
    }
    toml.push_str(&keys);
    toml.push_str(&sections);
    Ok(Imported { name, toml, unmapped })
}

/// Writes each app's config to `DIR/NAME.toml`, refusing to overwrite one
/// there unless `force`; the paths written.
pub fn write(apps: &[Imported], dir: &Path, force: bool) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let paths: Vec<PathBuf> = apps.iter().map(|a| dir.join(format!("{}.toml", a.name))).collect();
    if !force && let Some(there) = paths.iter().find(|p| p.exists()) {
        return Err(format!("{} exists already (--force overwrites)", there.display()));
    }
    for (app, path) in apps.iter().zip(&paths) {
        std::fs::write(path, &app.toml).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Overrides, Settings};

    #[test]
    fn an_ecosystem_maps_what_it_can_and_lists_the_rest() {
        let ecosystem = serde_json::json!({"apps": [
            {
                "name": "api", "script": "server.js", "instances": "max", "exec_mode": "cluster",
                "max_memory_restart": "300M", "kill_timeout": 5000, "wait_ready": true,
                "listen_timeout": 10000, "node_args": "--max-old-space-size=512",
                "env": {"NODE_ENV": "development", "PORT": 3000},
                "env_production": {"NODE_ENV": "production"},
                "cron_restart": "0 */6 * * *", "watch": true, "out_file": "/var/log/api.log"
            },
            {"name": "worker", "script": "jobs.py", "args": "--queue 'high prio'", "autorestart": false,
             "cron_restart": "15 3 * * 1"}
        ]});
        let apps = import(&ecosystem, Some("production"), Some(Path::new("/srv/api"))).unwrap();
        let api = &apps[0];
        assert_eq!(api.name, "api");
        for line in [
            "command = [\"node\", \"--max-old-space-size=512\", \"server.js\"]",
            "workers = \"auto\"",
            "working_directory = \"/srv/api\"",
            "readiness = \"node-ipc\"",
            "ready_timeout = \"10s\"",
            "stop_timeout = \"5s\"",
            "max_age = \"360m\"",
            "listen = [\"[::]:3000\"]",
            "limit = \"300MiB\"",
            "NODE_ENV = \"production\"",
            "PORT = \"3000\"",
        ] {
            assert!(api.toml.lines().any(|l| l == line), "{line} in\n{}", api.toml);
        }
        assert!(
            api.unmapped
                .iter()
                .any(|u| u.starts_with("watch = true: sheepdog does not watch"))
        );
        assert!(api.unmapped.iter().any(|u| u.starts_with("out_file = ")));
        let settings = Settings::from_toml(&api.toml, None, &Overrides::default()).unwrap();
        assert_eq!(settings.memory.limit, Some(300 << 20));
        let worker = &apps[1];
        assert!(
            worker
                .toml
                .contains("command = [\"python3\", \"jobs.py\", \"--queue\", \"high prio\"]")
        );
        assert!(
            worker
                .unmapped
                .iter()
                .any(|u| u.contains("15 3 * * 1") && u.contains("systemd timer"))
        );
        assert!(worker.unmapped.iter().any(|u| u.starts_with("autorestart = false")));
        Settings::from_toml(&worker.toml, None, &Overrides::default()).unwrap();
    }

    #[test]
    fn an_env_set_not_chosen_is_said_and_a_bad_name_is_refused() {
        let apps = import(
            &serde_json::json!([{"script": "a.js", "env_staging": {"A": "1"}}]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(apps[0].name, "a");
        assert!(
            apps[0]
                .unmapped
                .iter()
                .any(|u| u.contains("env sets not applied: staging"))
        );
        assert!(!apps[0].toml.contains("[env]"));
        let refused = import(&serde_json::json!([{"name": "../x", "script": "a.js"}]), None, None);
        assert!(refused.unwrap_err().contains("cannot name a file"));
        let refused = import(&serde_json::json!({"apps": [{"name": "a"}]}), None, None);
        assert!(refused.unwrap_err().contains("has no \"script\""));
    }

    #[test]
    fn pm2_sizes_durations_and_crons() {
        assert_eq!(memory(&serde_json::json!("1G")), Some(1 << 30));
        assert_eq!(memory(&serde_json::json!(2_097_152)), Some(2 << 20));
        assert_eq!(memory(&serde_json::json!("lots")), None);
        assert_eq!(millis(&serde_json::json!("1600")), Some(Duration::from_millis(1600)));
        assert_eq!(cron_period("*/30 * * * *"), Some(Duration::from_secs(1800)));
        assert_eq!(cron_period("0 3 * * *"), Some(Duration::from_secs(86_400)));
        assert_eq!(cron_period("0 3 * * 1"), None);
        assert_eq!(words("a 'b c' \"d\""), ["a", "b c", "d"]);
    }
}
