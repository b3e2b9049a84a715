//! `sheepdog status` for a terminal: a summary line and an aligned table of
//! workers, like `pm2 list`; and the list of every running sheepdog.

use super::client::Found;
use super::protocol::StatusReport;
use crate::units::format_size;

pub fn render(report: &StatusReport) -> String {
    let sup = &report.supervisor;
    let mut out = format!(
        "sheepdog {} · pid {} · up {} · generation {} · {}/{} ready · {} restarts\n",
        sup.version,
        sup.pid,
        age(Some(sup.uptime_s)),
        sup.generation,
        sup.ready,
        sup.desired,
        sup.restarts,
    );
    if let Some(upgraded) = &sup.upgraded {
        let ago = (crate::clock::unix_ms() as f64 / 1000.0 - upgraded.at_unix_s).max(0.0);
        let blind = upgraded
            .blind_ms
            .map_or(String::new(), |ms| format!(", events unhandled for {ms:.1} ms"));
        out += &format!(
            "upgraded in place from {} at {} ({} ago{blind}); {} upgrade{} since start\n",
            upgraded.from,
            crate::text::format_utc((upgraded.at_unix_s * 1000.0) as u64),
            age(Some(ago)),
            upgraded.count,
            if upgraded.count == 1 { "" } else { "s" }
        );
    }
    if let Some(generation) = sup.reloading_to {
        out += &format!("reloading to generation {generation}\n");
    }
    if let Some(last) = &sup.last_reload {
        let verdict = if last.ok { "ok" } else { "FAILED" };
        out += &format!("last reload: {verdict}: {}\n", last.message);
    }
    if let Some(why) = &sup.unready {
        out += &format!("not ready: {why}\n");
    }
    if let Some(spread) = &sup.spread {
        out += &format!("new connections: {spread}\n");
    }
    let mut sharded: Vec<&str> = Vec::new();
    for queue in sup.listen_queues.iter().filter(|q| q.queue.is_some()) {
        if sharded.contains(&queue.address.as_str()) {
            continue;
        }
        sharded.push(&queue.address);
        let queues: Vec<_> = sup
            .listen_queues
            .iter()
            .filter(|q| q.address == queue.address)
            .collect();
        let waiting: u32 = queues.iter().map(|q| q.queued).sum();
        let deepest = queues.iter().map(|q| q.queued).max().unwrap_or(0);
        let full: Vec<String> = queues
            .iter()
            .filter(|q| q.backlog > 0 && q.queued >= q.backlog)
            .filter_map(|q| q.queue.map(|n| n.to_string()))
            .collect();
        out += &format!(
            "listen queues {}: {} queues, {waiting} waiting (deepest {deepest}) of {} each{}\n",
            queue.address,
            queues.len(),
            queue.backlog,
            if full.is_empty() {
                String::new()
            } else {
                format!(" (FULL: queue {}: connections are refused)", full.join(", "))
            }
        );
    }
    for queue in sup.listen_queues.iter().filter(|q| q.queue.is_none()) {
        out += &format!(
            "listen queue {}: {} waiting of {}{}\n",
            queue.address,
            queue.queued,
            queue.backlog,
            if queue.backlog > 0 && queue.queued >= queue.backlog {
                " (FULL: connections are refused)"
            } else {
                ""
            }
        );
    }
    let ended: Vec<String> = sup
        .replacements
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(cause, n)| format!("{n} {cause}"))
        .collect();
    if !ended.is_empty() {
        out += &format!("workers replaced: {}\n", ended.join(" · "));
    }
    let reloads = &sup.reloads;
    if reloads.ok + reloads.failed + reloads.refused > 0 {
        out += &format!(
            "reloads: {} ok · {} failed · {} refused\n",
            reloads.ok, reloads.failed, reloads.refused
        );
    }
    out += "\n";
    let header = [
        "slot",
        "pid",
        "gen",
        "state",
        "uptime",
        "restarts",
        "memory",
        "cpu",
        "heartbeat",
        "connections",
    ];
    let connections: u64 = report.workers.iter().filter_map(|w| w.connections).sum();
    let share = |n: u64| {
        if connections == 0 {
            n.to_string()
        } else {
            format!("{n} ({:.0}%)", 100.0 * n as f64 / connections as f64)
        }
    };
    let mut rows: Vec<(usize, Vec<String>)> = vec![];
    for waiting in &report.waiting {
        let dash = || "-".to_string();
        rows.push((
            waiting.slot,
            vec![
                waiting.slot.to_string(),
                dash(),
                dash(),
                format!("waiting, restart in {:.1}s", waiting.restart_in_s),
                dash(),
                waiting.restarts.to_string(),
                dash(),
                dash(),
                dash(),
                dash(),
            ],
        ));
    }
    for worker in &report.workers {
        rows.push((
            worker.slot,
            vec![
                worker.slot.to_string(),
                worker.pid.to_string(),
                worker.generation.to_string(),
                worker.state.to_string(),
                age(Some(worker.uptime_s)),
                worker.restarts.to_string(),
                worker.memory_bytes.map_or("-".into(), format_size),
                worker.cpu_percent.map_or("-".into(), |c| format!("{c:.1}%")),
                worker.heartbeat_age_s.map_or("-".into(), |a| format!("{a:.1}s ago")),
                worker.connections.map_or("-".into(), share),
            ],
        ));
    }
    // In slot order, the waiting slots among the workers (a stable sort).
    rows.sort_by_key(|(slot, _)| *slot);
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    lines.extend(rows.into_iter().map(|(_, row)| row));
    out += &table(&lines);
    for worker in report.workers.iter().filter(|w| !w.listens_itself.is_empty()) {
        out += &format!(
            "\nnote: worker {} (pid {}) listens on {} itself, not on the socket sheepdog passed: \
             listen on fd 3 (LISTEN_FDS; Node: sheepdog's preload does it unless node = \"off\"; \
             node = \"on\" for a wrapper that starts node)\n",
            worker.slot,
            worker.pid,
            worker.listens_itself.join(", ")
        );
    }
    out
}

/// Every running sheepdog of this user, a line each, like `pm2 list`.
pub fn render_list(found: &[Found]) -> String {
    let header = [
        "name",
        "pid",
        "up",
        "gen",
        "ready",
        "restarts",
        "config or control socket",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for Found { socket, status } in found {
        let sup = &status.supervisor;
        rows.push(vec![
            sup.name.clone(),
            sup.pid.to_string(),
            age(Some(sup.uptime_s)),
            sup.generation.to_string(),
            format!("{}/{}", sup.ready, sup.desired),
            sup.restarts.to_string(),
            sup.config.clone().unwrap_or_else(|| socket.display().to_string()),
        ]);
    }
    let mut out = table(&rows);
    out += "\n`sheepdog status --config FILE` (or `--socket PATH`) shows one of them in full.\n";
    out
}

/// Rows of cells, left-aligned in columns two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out += line.join("  ").trim_end();
        out += "\n";
    }
    out
}

/// "45s", "12m 3s", "2h 3m", "3d 4h".
pub(super) fn age(seconds: Option<f64>) -> String {
    let Some(seconds) = seconds else { return "-".into() };
    let s = seconds as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::Reply;

    fn report(json: serde_json::Value) -> StatusReport {
        match Reply::decode(json.to_string().as_bytes()).unwrap() {
            Reply::Status(report) => *report,
            other => panic!("{other:?}"),
        }
    }

    fn supervisor(name: &str, pid: u32, uptime: f64, config: Option<&str>) -> serde_json::Value {
        serde_json::json!({"version": "0.1.0", "pid": pid, "uptime_s": uptime, "name": name, "config": config,
            "generation": 3, "ready": 2, "desired": 2, "restarts": 1, "reloading_to": null, "last_reload": null})
    }

    #[test]
    fn the_list_shows_one_line_per_sheepdog() {
        let a = report(
            serde_json::json!({"v": 1, "ok": true, "supervisor": supervisor("myapp", 42, 61.0, Some("/etc/sheepdog/myapp.toml")), "workers": []}),
        );
        let b = report(
            serde_json::json!({"v": 1, "ok": true, "supervisor": supervisor("node", 4242, 5.0, None), "workers": []}),
        );
        let text = render_list(&[
            Found {
                socket: "/run/sheepdog/myapp/control.sock".into(),
                status: a,
            },
            Found {
                socket: "/run/sheepdog/sheepdog/control.sock".into(),
                status: b,
            },
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "name   pid   up     gen  ready  restarts  config or control socket"
        );
        assert_eq!(
            lines[1],
            "myapp  42    1m 1s  3    2/2    1         /etc/sheepdog/myapp.toml"
        );
        assert_eq!(
            lines[2],
            "node   4242  5s     3    2/2    1         /run/sheepdog/sheepdog/control.sock"
        );
    }

    #[test]
    fn the_table_is_aligned() {
        let mut sup = supervisor("myapp", 42, 3725.0, None);
        sup["generation"] = 2.into();
        sup["last_reload"] =
            serde_json::json!({"generation": 2, "ok": true, "message": "reloaded to generation 2 (2 workers) in 1.2s"});
        let report = report(serde_json::json!({
            "v": 1, "ok": true,
            "supervisor": sup,
            "workers": [
                {"slot": 0, "pid": 100, "generation": 2, "state": "ready", "uptime_s": 61.0, "restarts": 0,
                 "memory_bytes": 52428800, "cpu_percent": 0.25, "heartbeat_age_s": 0.4, "status": null,
                 "queue": 0, "connections": 300},
                {"slot": 1, "pid": 12345, "generation": 2, "state": "starting", "uptime_s": 1.0, "restarts": 1,
                 "memory_bytes": null, "cpu_percent": null, "heartbeat_age_s": null, "status": null,
                 "queue": 2, "connections": 100}
            ]
        }));
        let text = render(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "sheepdog 0.1.0 · pid 42 · up 1h 2m · generation 2 · 2/2 ready · 1 restarts"
        );
        assert_eq!(
            lines[1],
            "last reload: ok: reloaded to generation 2 (2 workers) in 1.2s"
        );
        assert_eq!(
            lines[3],
            "slot  pid    gen  state     uptime  restarts  memory  cpu   heartbeat  connections"
        );
        assert_eq!(
            lines[4],
            "0     100    2    ready     1m 1s   0         50 MiB  0.2%  0.4s ago   300 (75%)"
        );
        assert_eq!(
            lines[5],
            "1     12345  2    starting  1s      1         -       -     -          100 (25%)"
        );
    }

    #[test]
    fn a_worker_listening_on_a_port_of_its_own_gets_a_note() {
        let report = report(serde_json::json!({
            "v": 1, "ok": true, "supervisor": supervisor("myapp", 42, 5.0, None),
            "workers": [
                {"slot": 0, "pid": 100, "generation": 1, "state": "ready", "uptime_s": 5.0, "restarts": 0,
                 "memory_bytes": null, "cpu_percent": null, "heartbeat_age_s": null, "status": null,
                 "listens_itself": ["0.0.0.0:3000"]}
            ]
        }));
        let text = render(&report);
        assert!(
            text.contains("note: worker 0 (pid 100) listens on 0.0.0.0:3000 itself, not on the socket sheepdog passed"),
            "{text}"
        );
    }

    #[test]
    fn a_slot_waiting_to_restart_has_its_row() {
        let report = report(serde_json::json!({
            "v": 1, "ok": true, "supervisor": supervisor("myapp", 42, 5.0, None),
            "workers": [
                {"slot": 0, "pid": 100, "generation": 1, "state": "ready", "uptime_s": 5.0, "restarts": 0,
                 "memory_bytes": null, "cpu_percent": null, "heartbeat_age_s": null, "status": null}
            ],
            "waiting": [{"slot": 1, "restarts": 2, "restart_in_s": 0.45}]
        }));
        let text = render(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[2],
            "slot  pid  gen  state                     uptime  restarts  memory  cpu  heartbeat  connections"
        );
        assert_eq!(
            lines[3],
            "0     100  1    ready                     5s      0         -       -    -          -"
        );
        assert_eq!(
            lines[4],
            "1     -    -    waiting, restart in 0.5s  -       2         -       -    -          -"
        );
    }

    #[test]
    fn the_listen_queue_the_counts_by_cause_and_why_not_ready_are_shown() {
        let mut sup = supervisor("myapp", 42, 5.0, None);
        sup["unready"] = "1/2 ready (2 needed): worker 1 missed heartbeats".into();
        sup["listen_queues"] = serde_json::json!([{"address": "127.0.0.1:8080", "queued": 50, "backlog": 4096},
            {"address": "unix:/run/app.sock", "queued": 8, "backlog": 8}]);
        sup["replacements"] = serde_json::json!({"crash": 0, "hung": 1, "reload": 4});
        sup["reloads"] = serde_json::json!({"ok": 2, "failed": 1, "refused": 0});
        let text = render(&report(
            serde_json::json!({"v": 1, "ok": true, "supervisor": sup, "workers": []}),
        ));
        for line in [
            "not ready: 1/2 ready (2 needed): worker 1 missed heartbeats\n",
            "listen queue 127.0.0.1:8080: 50 waiting of 4096\n",
            "listen queue unix:/run/app.sock: 8 waiting of 8 (FULL: connections are refused)\n",
            "workers replaced: 1 hung · 4 reload\n",
            "reloads: 2 ok · 1 failed · 0 refused\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
    }

    #[test]
    fn an_upgraded_supervisor_says_from_what_and_when() {
        let mut sup = supervisor("myapp", 42, 3725.0, None);
        sup["version"] = "0.2.0".into();
        let an_hour_ago = crate::clock::unix_ms() as f64 / 1000.0 - 3600.0;
        sup["upgraded"] = serde_json::json!({"count": 2, "from": "0.1.0", "at_unix_s": an_hour_ago, "blind_ms": 3.42});
        let text = render(&report(
            serde_json::json!({"v": 1, "ok": true, "supervisor": sup, "workers": []}),
        ));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("sheepdog 0.2.0 · pid 42"), "{text}");
        assert!(
            lines[1].starts_with("upgraded in place from 0.1.0 at ")
                && lines[1].ends_with(" (1h 0m ago, events unhandled for 3.4 ms); 2 upgrades since start"),
            "{text}"
        );
    }
}
