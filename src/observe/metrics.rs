//! `/metrics`: the status report in Prometheus's text exposition format
//! (version 0.0.4). Every family has its HELP and TYPE; counters end in
//! `_total`, sizes are `_bytes`, times `_seconds`; counters of every cause
//! and outcome are there from the start, at 0, so that `rate()` and
//! `increase()` see their first increment.

use std::fmt::Write;

use crate::control::protocol::{QueueStatus, StatusReport, WorkerPhase};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"{}\"", escape(val));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", number(value));
    }
}

/// A label value as the format quotes it.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Rust prints floats in full, never as NaN here (no division makes one).
fn number(value: f64) -> String {
    if value.is_finite() {
        value.to_string()
    } else {
        "NaN".into()
    }
}

pub fn render(report: &StatusReport) -> String {
    let sup = &report.supervisor;
    let mut out = Out(String::with_capacity(4096 + report.workers.len() * 1024));

    out.family(
        "sheepdog_build_info",
        "gauge",
        "Always 1; the sheepdog version in its label.",
    );
    out.sample("sheepdog_build_info", &[("version", &sup.version)], 1.0);

    out.family("sheepdog_workers_desired", "gauge", "Workers the flock should have.");
    out.sample("sheepdog_workers_desired", &[], sup.desired as f64);
    out.family(
        "sheepdog_workers_ready",
        "gauge",
        "Workers ready (serving), retiring ones included.",
    );
    out.sample("sheepdog_workers_ready", &[], sup.ready as f64);
    out.family(
        "sheepdog_ready",
        "gauge",
        "1 when the flock is healthy by the watchdog relay's rule (what /readyz answers 200 for), else 0.",
    );
    out.sample("sheepdog_ready", &[], if sup.unready.is_none() { 1.0 } else { 0.0 });
    out.family(
        "sheepdog_generation",
        "gauge",
        "The generation new workers start in (1, then +1 per reload).",
    );
    out.sample("sheepdog_generation", &[], f64::from(sup.generation));

    out.family(
        "sheepdog_worker_replacements_total",
        "counter",
        "Workers that ended, by cause: crash, signal, hung, ready_timeout, watchdog, stopping, memory, max_age, reload, scale.",
    );
    for (cause, count) in &sup.replacements {
        out.sample("sheepdog_worker_replacements_total", &[("cause", cause)], *count as f64);
    }
    out.family(
        "sheepdog_worker_restarts_total",
        "counter",
        "Unrequested worker exits, over the whole flock.",
    );
    out.sample("sheepdog_worker_restarts_total", &[], f64::from(sup.restarts));

    out.family(
        "sheepdog_reloads_total",
        "counter",
        "Reload requests, by outcome: ok, failed (rolled back) or refused.",
    );
    for (outcome, count) in [
        ("ok", sup.reloads.ok),
        ("failed", sup.reloads.failed),
        ("refused", sup.reloads.refused),
    ] {
        out.sample("sheepdog_reloads_total", &[("outcome", outcome)], count as f64);
    }
    let histogram = &sup.reload_seconds;
    out.family(
        "sheepdog_reload_duration_seconds",
        "histogram",
        "How long reloads that began took, to done or rolled back.",
    );
    for (bound, count) in histogram.le.iter().zip(&histogram.counts) {
        let le = number(*bound);
        out.sample("sheepdog_reload_duration_seconds_bucket", &[("le", &le)], *count as f64);
    }
    out.sample(
        "sheepdog_reload_duration_seconds_bucket",
        &[("le", "+Inf")],
        histogram.count as f64,
    );
    out.sample("sheepdog_reload_duration_seconds_sum", &[], histogram.sum);
    out.sample("sheepdog_reload_duration_seconds_count", &[], histogram.count as f64);

    out.family(
        "sheepdog_crash_loop_exits_total",
        "counter",
        "Times the crash-loop breaker tripped (sheepdog then exits 1 and systemd decides).",
    );
    out.sample("sheepdog_crash_loop_exits_total", &[], sup.crash_loops as f64);

    out.family(
        "sheepdog_upgrades_total",
        "counter",
        "In-place upgrades of the supervisor (sheepdog upgrade) since it started.",
    );
    let upgrades = sup.upgraded.as_ref().map_or(0, |u| u.count);
    out.sample("sheepdog_upgrades_total", &[], f64::from(upgrades));
    if let Some(blind) = sup.upgraded.as_ref().and_then(|u| u.blind_ms) {
        out.family(
            "sheepdog_upgrade_blind_seconds",
            "gauge",
            "How long the last in-place upgrade left events unhandled.",
        );
        out.sample("sheepdog_upgrade_blind_seconds", &[], blind / 1000.0);
    }

    type Value = fn(&QueueStatus) -> u32;
    let queue_families: [(&str, &str, Value); 2] = [
        (
            "sheepdog_listen_queue_length",
            "Connections in a listening socket's accept queue, waiting for a worker to accept them.",
            |q| q.queued,
        ),
        (
            "sheepdog_listen_queue_limit",
            "A listening socket's backlog: at this queue length new connections are refused or dropped.",
            |q| q.backlog,
        ),
    ];
    for (name, help, value) in queue_families {
        out.family(name, "gauge", help);
        for queue in &sup.listen_queues {
            let number = queue.queue.map(|q| q.to_string());
            out.sample(
                name,
                &queue_labels(&queue.address, number.as_deref()),
                f64::from(value(queue)),
            );
        }
    }

    worker_families(&mut out, report);

    out.family(
        "process_cpu_seconds_total",
        "counter",
        "CPU time the supervisor process used, user and system.",
    );
    if let Some(cpu) = sup.cpu_seconds {
        out.sample("process_cpu_seconds_total", &[], cpu);
    }
    out.family(
        "process_resident_memory_bytes",
        "gauge",
        "The supervisor process's resident memory.",
    );
    if let Some(rss) = sup.rss_bytes {
        out.sample("process_resident_memory_bytes", &[], rss as f64);
    }
    out.family(
        "process_open_fds",
        "gauge",
        "File descriptors the supervisor process holds open.",
    );
    if let Some(fds) = sup.open_fds {
        out.sample("process_open_fds", &[], fds as f64);
    }
    out.0
}

/// One series per worker process, labelled by slot, generation and pid (a
/// slot may have two workers of one generation while one replaces the other).
/// A listener's labels: its address, and which of its queues when it has several.
fn queue_labels<'a>(address: &'a str, queue: Option<&'a str>) -> Vec<(&'static str, &'a str)> {
    let mut labels = vec![("listener", address)];
    labels.extend(queue.map(|q| ("queue", q)));
    labels
}

fn worker_families(out: &mut Out, report: &StatusReport) {
    let labels: Vec<[String; 3]> = report
        .workers
        .iter()
        .map(|w| [w.slot.to_string(), w.generation.to_string(), w.pid.to_string()])
        .collect();
    let with = |l: &[String; 3]| -> Vec<(&'static str, String)> {
        vec![
            ("slot", l[0].clone()),
            ("generation", l[1].clone()),
            ("pid", l[2].clone()),
        ]
    };
    type Field = fn(&crate::control::protocol::WorkerStatus) -> Option<f64>;
    let families: [(&str, &str, &str, Field); 9] = [
        (
            "sheepdog_worker_connections_total",
            "counter",
            "New connections sent to a worker's own queue since it started (round robin only).",
            |w| w.connections.map(|n| n as f64),
        ),
        (
            "sheepdog_worker_resident_memory_bytes",
            "gauge",
            "A worker's process tree's resident memory, as last measured.",
            |w| w.rss_bytes.map(|b| b as f64),
        ),
        (
            "sheepdog_worker_pss_bytes",
            "gauge",
            "A worker's process tree's proportional set size, as last measured (memory.measure = \"pss\").",
            |w| w.pss_bytes.map(|b| b as f64),
        ),
        (
            "sheepdog_worker_cpu_seconds_total",
            "counter",
            "CPU time a worker process used, user and system.",
            |w| w.cpu_seconds,
        ),
        (
            "sheepdog_worker_slot_restarts_total",
            "counter",
            "Unrequested exits of the workers of this slot so far.",
            |w| Some(f64::from(w.restarts)),
        ),
        (
            "sheepdog_worker_heartbeat_age_seconds",
            "gauge",
            "Seconds since a worker's last heartbeat (with heartbeats on).",
            |w| w.heartbeat_age_s,
        ),
        (
            "sheepdog_worker_heap_used_bytes",
            "gauge",
            "A Node worker's V8 heap in use, as sheepdog's preload last reported it.",
            |w| w.heap_used_bytes.map(|b| b as f64),
        ),
        (
            "sheepdog_worker_event_loop_lag_seconds",
            "gauge",
            "A Node worker's longest event-loop delay over the last 2 s, as sheepdog's preload reported it.",
            |w| w.event_loop_lag_ms.map(|ms| ms / 1000.0),
        ),
        (
            "sheepdog_worker_uptime_seconds",
            "gauge",
            "Seconds since a worker was started.",
            |w| Some(w.uptime_s),
        ),
    ];
    for (name, kind, help, field) in families {
        out.family(name, kind, help);
        for (worker, l) in report.workers.iter().zip(&labels) {
            if let Some(value) = field(worker) {
                let labels = with(l);
                let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                out.sample(name, &labels, value);
            }
        }
    }
    out.family(
        "sheepdog_worker_state",
        "gauge",
        "1 for a worker's state (starting, ready, retiring, stopping), 0 for the others.",
    );
    for (worker, l) in report.workers.iter().zip(&labels) {
        for state in WorkerPhase::ALL {
            let mut labels = with(l);
            labels.push(("state", state.as_str().to_string()));
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            out.sample(
                "sheepdog_worker_state",
                &labels,
                if worker.state == state { 1.0 } else { 0.0 },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::Reply;

    fn report() -> StatusReport {
        let json = serde_json::json!({"v": 1, "ok": true,
            "supervisor": {"version": "0.1.0", "pid": 42, "uptime_s": 5.0, "name": "app", "config": null,
                "generation": 1, "ready": 1, "desired": 1, "restarts": 0, "reloading_to": null, "last_reload": null,
                "replacements": {"crash": 1}, "reload_seconds": {"le": [0.5, 1.0], "counts": [1, 2], "count": 2, "sum": 1.25},
                "listen_queues": [{"address": "unix:/run/a \"b\".sock", "queued": 1, "backlog": 8}],
                "cpu_seconds": 0.5, "rss_bytes": 1024, "open_fds": 9,
                "upgraded": {"count": 2, "from": "0.0.9", "at_unix_s": 1.5e9, "blind_ms": 3.5}},
            "workers": [{"slot": 0, "pid": 7, "generation": 1, "state": "retiring", "uptime_s": 2.0, "restarts": 0,
                "memory_bytes": null, "cpu_percent": null, "heartbeat_age_s": 0.25, "status": null,
                "cpu_seconds": 1.5, "rss_bytes": 4096}]});
        match Reply::decode(json.to_string().as_bytes()).unwrap() {
            Reply::Status(report) => *report,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn families_come_whole_with_help_and_type_and_labels_are_escaped() {
        let text = render(&report());
        let mut seen = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_string();
                assert!(!seen.contains(&current), "{current} twice");
                seen.push(current.clone());
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&current), "{line} outside its family {current}");
            }
        }
        assert!(
            text.contains("sheepdog_listen_queue_length{listener=\"unix:/run/a \\\"b\\\".sock\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("sheepdog_reload_duration_seconds_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("sheepdog_reload_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("sheepdog_reload_duration_seconds_sum 1.25\n"));
        assert!(text.contains("sheepdog_upgrades_total 2\n"));
        assert!(text.contains("sheepdog_upgrade_blind_seconds 0.0035\n"));
        assert!(text.contains("sheepdog_worker_state{slot=\"0\",generation=\"1\",pid=\"7\",state=\"retiring\"} 1\n"));
        assert!(text.contains("sheepdog_worker_state{slot=\"0\",generation=\"1\",pid=\"7\",state=\"ready\"} 0\n"));
        assert!(text.contains("sheepdog_worker_heartbeat_age_seconds{slot=\"0\",generation=\"1\",pid=\"7\"} 0.25\n"));
        assert!(
            !text.contains("sheepdog_worker_pss_bytes{"),
            "no PSS measured, no sample"
        );
    }

    #[test]
    fn the_readme_explains_every_metric() {
        let readme = include_str!("../../docs/operations.md");
        for line in render(&report()).lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
                let row = format!("| `{name}` | {kind} | ");
                assert!(readme.contains(&row), "docs/operations.md has no row {row:?}");
            }
        }
    }
}
