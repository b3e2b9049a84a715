//! `sheepdog top`: a live view of one flock in the terminal, like `pm2
//! monit` or uwsgitop. It asks for the status every interval and redraws in
//! place (the alternate screen, so the terminal's own text comes back on
//! exit), uses the terminal it has (80×24 by default: a wider one shows
//! each Node worker's heap and event-loop lag, a taller one more workers and
//! a pane of the selected worker's last lines), takes keys (↑/↓ select, `x`
//! replaces the selected worker, `r` reloads, `+`/`-` scale), and quits on
//! `q` or Ctrl-C, leaving the terminal as it found it: its mode restored,
//! the cursor shown, the screen it had.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::termios::{self, LocalFlags, SetArg, Termios};

use super::client::{self, NoReply};
use super::protocol::{Command, Reply, StatusReport};
use crate::units::format_size;

/// CPU time per worker pid at the previous refresh, and when.
#[derive(Default)]
pub struct Sample {
    at: Option<Instant>,
    cpu: HashMap<i32, f64>,
}

impl Sample {
    /// A worker's CPU % of one core since the last refresh, if it was there.
    fn cpu_percent(&self, pid: i32, cpu_seconds: Option<f64>, now: Instant) -> Option<f64> {
        let elapsed = now.saturating_duration_since(self.at?).as_secs_f64();
        let (before, now_cpu) = (self.cpu.get(&pid)?, cpu_seconds?);
        (elapsed > 0.0).then(|| (100.0 * (now_cpu - before) / elapsed).max(0.0))
    }
}

/// One frame of the view: lines no wider than `width`.
pub fn frame(report: &StatusReport, previous: &Sample, now: Instant, width: usize) -> Vec<String> {
    let sup = &report.supervisor;
    let mut lines = vec![
        format!(
            "sheepdog top · {} · pid {} · up {} · v{}",
            sup.name,
            sup.pid,
            super::view::age(Some(sup.uptime_s)),
            sup.version
        ),
        {
            let queue: u32 = sup.listen_queues.iter().map(|q| q.queued).sum();
            let backlog: u32 = sup.listen_queues.iter().map(|q| q.backlog).sum();
            let reloading = sup
                .reloading_to
                .map_or(String::new(), |g| format!(" · reloading to {g}"));
            format!(
                "workers {}/{} ready · generation {}{reloading} · {} restarts · queue {queue}/{backlog}",
                sup.ready, sup.desired, sup.generation, sup.restarts
            )
        },
        match &sup.last_reload {
            Some(last) => format!(
                "last reload: {}: {}",
                if last.ok { "ok" } else { "FAILED" },
                last.message
            ),
            None => "last reload: none".into(),
        },
    ];
    let ended: Vec<String> = sup
        .replacements
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(cause, n)| format!("{n} {cause}"))
        .collect();
    lines.push(match &sup.unready {
        Some(why) => format!("NOT READY: {why}"),
        None if ended.is_empty() => "replaced: none".into(),
        None => format!("replaced: {}", ended.join(" · ")),
    });
    lines.push(String::new());
    let wide = width >= WIDE;
    let mut header = format!(
        "{:<4} {:>7} {:>4} {:<9} {:>6} {:>9} {:>4} {:>6} {:>6} {:>6} {:>7}",
        "SLOT", "PID", "GEN", "STATE", "CPU%", "MEMORY", "RST", "BEAT", "CONN%", "QUEUED", "UPTIME"
    );
    if wide {
        header += &format!(" {:>9} {:>8}", "HEAP", "LAG");
    }
    lines.push(header);
    let connections: u64 = report.workers.iter().filter_map(|w| w.connections).sum();
    let mut rows: Vec<(usize, String)> = report
        .workers
        .iter()
        .map(|w| {
            let memory = w.rss_bytes.or(w.memory_bytes).map_or("-".into(), format_size);
            let cpu = previous
                .cpu_percent(w.pid, w.cpu_seconds, now)
                .map_or("-".into(), |c| format!("{c:.1}"));
            let heartbeat = w.heartbeat_age_s.map_or("-".into(), |a| format!("{a:.1}s"));
            let share = match w.connections {
                Some(n) if connections > 0 => format!("{:.0}", 100.0 * n as f64 / connections as f64),
                _ => "-".into(),
            };
            let queued = w.queue.map_or("-".into(), |queue| {
                let waiting: u32 = sup
                    .listen_queues
                    .iter()
                    .filter(|q| q.queue == Some(queue))
                    .map(|q| q.queued)
                    .sum();
                waiting.to_string()
            });
            let mut row = format!(
                "{:<4} {:>7} {:>4} {:<9} {:>6} {:>9} {:>4} {:>6} {:>6} {:>6} {:>7}",
                w.slot,
                w.pid,
                w.generation,
                w.state,
                cpu,
                memory,
                w.restarts,
                heartbeat,
                share,
                queued,
                super::view::age(Some(w.uptime_s))
            );
            if wide {
                let heap = w.heap_used_bytes.map_or("-".into(), format_size);
                let lag = w.event_loop_lag_ms.map_or("-".into(), |ms| format!("{ms:.1}ms"));
                row += &format!(" {heap:>9} {lag:>8}");
            }
            (w.slot, row)
        })
        .collect();
    for waiting in &report.waiting {
        let row = format!(
            "{:<4} {:>7} {:>4} waiting, restart in {:.1}s ({} restarts)",
            waiting.slot, "-", "-", waiting.restart_in_s, waiting.restarts
        );
        rows.push((waiting.slot, row));
    }
    rows.sort_by_key(|(slot, _)| *slot);
    lines.extend(rows.into_iter().map(|(_, row)| row));
    lines.push(String::new());
    lines.push("q or Ctrl-C quits".into());
    lines.into_iter().map(|l| fit(&l, width)).collect()
}

/// From this width on, each Node worker's heap and lag have columns.
const WIDE: usize = 100;

/// What the screen shows besides the flock: the selected worker, its last
/// lines, and the outcome of the last key.
#[derive(Default)]
pub struct Pane {
    pub selected: Option<usize>,
    /// The selected worker's last lines (or why there are none).
    pub lines: Vec<String>,
    pub message: String,
}

/// The whole screen at `width`×`height`: the flock's frame (its worker rows
/// cut to fit, the selected one marked), then the pane of the selected
/// worker's last lines in what height is left, then the keys.
pub fn screen(
    report: &StatusReport,
    previous: &Sample,
    now: Instant,
    width: usize,
    height: usize,
    pane: &Pane,
) -> Vec<String> {
    let mut lines = frame(report, previous, now, width);
    lines.pop(); // "q or Ctrl-C quits": the keys come last, below.
    lines.pop();
    let first_row = 6;
    if let Some(slot) = pane.selected {
        let prefix = format!("{slot:<4} ");
        if let Some(row) = lines.iter_mut().skip(first_row).find(|l| l.starts_with(&prefix)) {
            // Reverse video for the selected worker.
            *row = format!("\x1b[7m{row}\x1b[0m");
        }
    }
    let keys = "↑/↓ select · x replace it · r reload · +/- scale · q quit";
    // Room for the pane: what the worker rows leave of the height.
    let used = lines.len() + 2;
    let pane_height = height.saturating_sub(used + 2);
    if pane_height >= 3 {
        lines.push(String::new());
        let title = match pane.selected {
            Some(slot) => format!("── worker {slot}: its last lines "),
            None => "── no worker selected ".to_string(),
        };
        lines.push(fit(
            &format!("{title}{}", "─".repeat(width.saturating_sub(title.chars().count()))),
            width,
        ));
        let shown = pane.lines.len().saturating_sub(pane_height - 1);
        lines.extend(pane.lines[shown..].iter().map(|l| fit(l, width)));
    } else {
        lines.truncate(height.saturating_sub(2).max(first_row + 1));
    }
    lines.push(fit(&pane.message, width));
    lines.push(fit(keys, width));
    lines
}

/// A line cut to `width` characters.
fn fit(line: &str, width: usize) -> String {
    line.chars().take(width).collect()
}

/// The terminal's width and height, 80×24 if it does not say.
fn terminal_size() -> (usize, usize) {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct given.
    let done = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    if done == 0 && size.ws_col > 0 && size.ws_row > 0 {
        (usize::from(size.ws_col), usize::from(size.ws_row))
    } else {
        (80, 24)
    }
}

/// The terminal in the mode `top` needs (keys one by one, unechoed, Ctrl-C
/// as a key), given back as it was when dropped, however `top` ends.
struct Screen {
    saved: Option<Termios>,
}

impl Screen {
    fn enter() -> Screen {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok();
        if let Some(saved) = &saved {
            let mut raw = saved.clone();
            raw.local_flags
                .remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG);
            let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        }
        // The alternate screen, the cursor hidden.
        print!("\x1b[?1049h\x1b[?25l");
        let _ = std::io::stdout().flush();
        Screen { saved }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Quit,
    Up,
    Down,
    Replace,
    Reload,
    More,
    Fewer,
}

/// The keys in what was typed: arrows (ESC [ A / B), letters, Ctrl-C.
fn keys_in(typed: &[u8]) -> Vec<Key> {
    let mut keys = Vec::new();
    let mut i = 0;
    while i < typed.len() {
        let key = match &typed[i..] {
            [0x1b, b'[', b'A', ..] => {
                i += 2;
                Some(Key::Up)
            }
            [0x1b, b'[', b'B', ..] => {
                i += 2;
                Some(Key::Down)
            }
            [b'q' | b'Q' | 0x03, ..] => Some(Key::Quit),
            [b'k', ..] => Some(Key::Up),
            [b'j', ..] => Some(Key::Down),
            [b'x', ..] => Some(Key::Replace),
            [b'r', ..] => Some(Key::Reload),
            [b'+', ..] => Some(Key::More),
            [b'-', ..] => Some(Key::Fewer),
            _ => None,
        };
        keys.extend(key);
        i += 1;
    }
    keys
}

/// Waits up to `timeout` for keys, and returns them.
fn read_keys(timeout: Duration) -> Vec<Key> {
    let mut poll = [libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    }];
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one pollfd, alive for the call.
    let ready = unsafe { libc::poll(poll.as_mut_ptr(), 1, ms) };
    if ready <= 0 {
        return Vec::new();
    }
    if poll[0].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 && poll[0].revents & libc::POLLIN == 0 {
        // No keyboard to read (stdin closed): only a signal ends `top`.
        std::thread::sleep(timeout);
        return Vec::new();
    }
    let mut typed = [0u8; 64];
    // SAFETY: reads into our buffer, at most its length.
    let n = unsafe { libc::read(libc::STDIN_FILENO, typed.as_mut_ptr().cast(), typed.len()) };
    if n <= 0 {
        return Vec::new();
    }
    keys_in(&typed[..n as usize])
}

/// What a request the keys made came to, in a word.
fn outcome(asked: Result<Reply, NoReply>) -> String {
    match asked {
        Ok(Reply::Done(message)) => message,
        Ok(Reply::Failed(why)) => format!("refused: {why}"),
        Ok(_) => "unexpected reply".into(),
        Err(NoReply::TimedOut(why) | NoReply::Failed(why)) => why,
    }
}

/// Runs the view until `q`, Ctrl-C, or SIGINT/SIGTERM/SIGHUP.
pub fn run(socket: &Path, interval: Duration) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(|e| format!("cannot handle signals: {e}"))?;
    }
    let _screen = Screen::enter();
    let mut previous = Sample::default();
    let mut out = std::io::stdout();
    let mut pane = Pane::default();
    // A reload waits for its roll: its outcome comes from a thread.
    let reloaded: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let mut slots: Vec<usize> = Vec::new();
    let ask = |command: &Command| client::request(socket, command, Some(Duration::from_secs(5)));
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let (width, height) = terminal_size();
        if let Some(said) = reloaded.lock().ok().and_then(|mut r| r.take()) {
            pane.message = said;
        }
        let lines = match client::request(socket, &Command::Status, Some(Duration::from_secs(2))) {
            Ok(Reply::Status(report)) => {
                slots = report.workers.iter().map(|w| w.slot).collect();
                slots.sort_unstable();
                slots.dedup();
                if pane.selected.is_none_or(|s| !slots.contains(&s)) {
                    pane.selected = slots.first().copied();
                }
                pane.lines = match pane.selected {
                    Some(slot) => {
                        let request = Command::Logs {
                            lines: height.max(10),
                            slot: Some(slot),
                            after: None,
                        };
                        match ask(&request) {
                            Ok(Reply::Logs(logs)) if logs.journal => vec![format!(
                                "(its lines are in the journal: sheepdog logs {} --worker {slot})",
                                logs.name
                            )],
                            Ok(Reply::Logs(logs)) => logs.lines.into_iter().map(|l| l.line).collect(),
                            _ => vec!["(no lines: this sheepdog does not keep them)".into()],
                        }
                    }
                    None => Vec::new(),
                };
                let lines = screen(&report, &previous, now, width, height, &pane);
                previous = Sample {
                    at: Some(now),
                    cpu: report
                        .workers
                        .iter()
                        .filter_map(|w| Some((w.pid, w.cpu_seconds?)))
                        .collect(),
                };
                lines
            }
            Ok(other) => vec![format!("unexpected reply: {other:?}")],
            Err(NoReply::TimedOut(why) | NoReply::Failed(why)) => {
                vec![fit(
                    &format!("sheepdog at {}: {why}; retrying", socket.display()),
                    width,
                )]
            }
        };
        // Home, each line cleared to its end, then the rest of the screen.
        let mut text = String::from("\x1b[H");
        for line in lines {
            text += &line;
            text += "\x1b[K\r\n";
        }
        text += "\x1b[J";
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        for key in read_keys(interval) {
            let position = pane.selected.and_then(|s| slots.iter().position(|x| *x == s));
            match key {
                Key::Quit => return Ok(()),
                Key::Up => {
                    pane.selected = position
                        .and_then(|p| p.checked_sub(1))
                        .map(|p| slots[p])
                        .or(pane.selected)
                }
                Key::Down => pane.selected = position.and_then(|p| slots.get(p + 1).copied()).or(pane.selected),
                Key::Replace => {
                    if let Some(slot) = pane.selected {
                        pane.message = outcome(ask(&Command::Replace { slot }));
                    }
                }
                Key::More => pane.message = outcome(ask(&Command::ScaleBy { by: 1 })),
                Key::Fewer => pane.message = outcome(ask(&Command::ScaleBy { by: -1 })),
                Key::Reload => {
                    pane.message = "reloading…".into();
                    let socket = socket.to_path_buf();
                    let reloaded = Arc::clone(&reloaded);
                    std::thread::spawn(move || {
                        let said = outcome(client::request(
                            &socket,
                            &Command::Reload,
                            Some(Duration::from_secs(600)),
                        ));
                        if let Ok(mut slot) = reloaded.lock() {
                            *slot = Some(format!("reload: {said}"));
                        }
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::Reply;

    fn report() -> StatusReport {
        let json = serde_json::json!({"v": 1, "ok": true,
            "supervisor": {"version": "0.1.0", "pid": 42, "uptime_s": 3725.0, "name": "a-very-long-application-name-for-the-view",
                "config": null, "generation": 2, "ready": 1, "desired": 2, "restarts": 3, "reloading_to": null,
                "last_reload": {"generation": 2, "ok": true, "message": "reloaded to generation 2 (2 workers) in 1.2s"},
                "replacements": {"crash": 2, "hung": 1, "reload": 0},
                "listen_queues": [{"address": "127.0.0.1:8080", "queued": 5, "backlog": 4096, "queue": 0},
                                  {"address": "127.0.0.1:8080", "queued": 0, "backlog": 4096, "queue": 1}]},
            "workers": [
                {"slot": 0, "pid": 4194304, "generation": 2, "state": "ready", "uptime_s": 61.0, "restarts": 3,
                 "memory_bytes": null, "rss_bytes": 52428800, "cpu_percent": 1.0, "cpu_seconds": 3.0,
                 "heartbeat_age_s": 0.4, "status": null, "queue": 0, "connections": 40}],
            "waiting": [{"slot": 1, "restarts": 2, "restart_in_s": 0.45}]});
        match Reply::decode(json.to_string().as_bytes()).unwrap() {
            Reply::Status(report) => *report,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_frame_fits_80_columns_and_shows_each_worker_and_the_flock() {
        let t0 = Instant::now();
        let previous = Sample {
            at: Some(t0),
            cpu: HashMap::from([(4194304, 2.5)]),
        };
        let lines = frame(&report(), &previous, t0 + Duration::from_secs(1), 80);
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{lines:#?}");
        // Two queues of 4096: room for 8192 in all.
        assert!(lines[1].starts_with("workers 1/2 ready · generation 2 · 3 restarts · queue 5/8192"));
        assert_eq!(
            lines[2],
            "last reload: ok: reloaded to generation 2 (2 workers) in 1.2s"
        );
        assert_eq!(lines[3], "replaced: 2 crash · 1 hung");
        assert_eq!(
            lines[5],
            "SLOT     PID  GEN STATE       CPU%    MEMORY  RST   BEAT  CONN% QUEUED  UPTIME"
        );
        // 0.5 s of CPU over 1 s: 50 %; all connections so far; 5 in its queue.
        assert_eq!(
            lines[6],
            "0    4194304    2 ready       50.0    50 MiB    3   0.4s    100      5   1m 1s"
        );
        assert!(
            lines[7].starts_with("1          -    - waiting, restart in 0.5s"),
            "{}",
            lines[7]
        );
        assert_eq!(lines.last().unwrap(), "q or Ctrl-C quits");
        let narrow = frame(&report(), &Sample::default(), t0, 40);
        assert!(narrow.iter().all(|l| l.chars().count() <= 40));
        assert!(
            narrow[6].contains(" -"),
            "no CPU % without a previous sample: {}",
            narrow[6]
        );
    }

    #[test]
    fn keys_are_read_from_what_was_typed() {
        assert_eq!(
            keys_in(b"\x1b[A\x1b[Bjkxr+-q\x03z"),
            [
                Key::Up,
                Key::Down,
                Key::Down,
                Key::Up,
                Key::Replace,
                Key::Reload,
                Key::More,
                Key::Fewer,
                Key::Quit,
                Key::Quit
            ]
        );
    }

    #[test]
    fn a_big_screen_has_the_heap_and_lag_columns_the_selected_row_and_a_pane_of_its_lines() {
        let t0 = Instant::now();
        let mut report = report();
        report.workers[0].heap_used_bytes = Some(24 << 20);
        report.workers[0].event_loop_lag_ms = Some(12.34);
        let pane = Pane {
            selected: Some(0),
            lines: (0..100).map(|i| format!("line {i}")).collect(),
            message: "scaling to 3 workers (from 2)".into(),
        };
        let lines = screen(&report, &Sample::default(), t0, 200, 50, &pane);
        // One row is left for the cursor: a line ending on the last row would scroll.
        assert_eq!(lines.len(), 49, "{lines:#?}");
        assert!(lines[5].ends_with("     HEAP      LAG"), "{}", lines[5]);
        assert!(
            lines[6].starts_with("\x1b[7m0 ") && lines[6].contains("   24 MiB   12.3ms"),
            "{}",
            lines[6]
        );
        assert!(lines.iter().any(|l| l.starts_with("── worker 0: its last lines ──")));
        assert_eq!(lines[46], "line 99", "the newest lines, down to the bottom");
        assert_eq!(lines[47], "scaling to 3 workers (from 2)");
        assert!(lines[48].starts_with("↑/↓ select"));
        let small = screen(&report, &Sample::default(), t0, 80, 24, &pane);
        assert_eq!(small.len(), 23, "{small:#?}");
        assert!(small.iter().all(|l| l.chars().count() <= 80 + 8), "{small:#?}");
        assert!(!small[5].contains("HEAP"));
    }
}
