//! `sheepdog top` as a person sees it: run in a real terminal (a tmux pane
//! of 80 × 24), its screen read with `capture-pane`, keys sent with
//! `send-keys`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const SECOND: Duration = Duration::from_secs(1);

/// A tmux server of the test's own (its own socket), with one 80 × 24 pane running bash.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str, dir: &std::path::Path) -> Tmux {
        Tmux::sized(name, dir, 80, 24)
    }

    fn sized(name: &str, dir: &std::path::Path, width: u16, height: u16) -> Tmux {
        let tmux = Tmux {
            socket: format!("sheepdog-{name}-{}", std::process::id()),
        };
        let output = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "-c",
            dir.to_str().unwrap(),
            "bash --norc --noprofile",
        ]);
        assert!(
            output.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        tmux
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .env("TERM", "xterm-256color")
            .output()
            .expect("tmux is installed")
    }

    /// What the pane shows now.
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }

    /// Waits until the screen shows what `condition` looks for; returns it.
    fn wait_for(&self, what: &str, timeout: Duration, condition: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            last = self.screen();
            if condition(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the screen never showed {what}; it shows:\n{last}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The row of `slot` in top's table: (pid, restarts).
fn row(screen: &str, slot: usize) -> Option<(i32, u32)> {
    let line = screen.lines().find(|l| {
        let mut cells = l.split_whitespace();
        cells.next() == Some(&slot.to_string()) && cells.nth(2).is_some_and(|s| s == "ready" || s == "starting")
    })?;
    // Counted from the end: MEMORY is one cell ("-") or two ("42.5 MiB").
    let cells: Vec<&str> = line.split_whitespace().collect();
    // RST, BEAT, CONN%, QUEUED, UPTIME end the row.
    Some((cells[1].parse().ok()?, cells[cells.len() - 5].parse().ok()?))
}

/// "top exited 0", then the two lines of stty's verdict on the mode.
fn exited_and_stty_said(screen: &str) -> bool {
    let after: Vec<&str> = screen
        .lines()
        .skip_while(|l| !l.contains("top exited 0"))
        .skip(1)
        .take(2)
        .collect();
    after.len() == 2 && after.iter().all(|l| l.contains("icanon") || l.contains("echo"))
}

#[test]
fn top_redraws_in_place_shows_a_killed_worker_replaced_and_quits_leaving_the_terminal_as_it_was() {
    let launch = Launch::new(&[]);
    let config = launch.file(
        "app.toml",
        &format!(
            "command = [\"node\", {:?}]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\nready_delay = \"300ms\"\n\
             control_socket = \"control.sock\"\n",
            repo_path("examples/hello/server.js").display().to_string()
        ),
    );
    let mut launch = launch;
    launch.args = vec!["run".into(), "--config".into(), config.display().to_string()];
    let dir = launch.dir.path().to_path_buf();
    let mut sheepdog = launch.spawn();
    sheepdog.logs.wait_for("ready: 2/2 workers", 20 * SECOND);

    let tmux = Tmux::start("top", &dir);
    tmux.keys(&["clear; echo before-top", "Enter"]);
    tmux.wait_for("the shell", 10 * SECOND, |s| s.contains("before-top"));
    let command = format!(
        "{BIN} top --config app.toml; echo \"top exited $?\"; stty -a | tr ' ;' '\\n\\n' | grep -x -e '-*icanon' -e '-*echo'"
    );
    tmux.keys(&[&command, "Enter"]);
    let screen = tmux.wait_for("both workers", 10 * SECOND, |s| {
        row(s, 0).is_some() && row(s, 1).is_some()
    });
    assert!(screen.contains("workers 2/2 ready · generation 1"), "{screen}");
    assert!(screen.contains("SLOT     PID  GEN STATE"), "{screen}");
    assert!(
        !screen.contains("before-top"),
        "top draws on a screen of its own:\n{screen}"
    );
    // It redraws in place: after a refresh (the uptime moved on), the
    // header is there once, at the top.
    let first = screen.lines().next().unwrap().to_string();
    let screen = tmux.wait_for("a refresh", 10 * SECOND, |s| s.lines().next() != Some(first.as_str()));
    assert_eq!(screen.matches("SLOT     PID").count(), 1, "{screen}");
    assert!(
        screen.lines().next().unwrap().starts_with("sheepdog top · app · pid "),
        "{screen}"
    );
    let (victim, restarts) = row(&screen, 0).unwrap();
    assert_eq!(restarts, 0);
    // Its CPU column fills in from the second refresh on.
    assert!(
        !screen
            .lines()
            .any(|l| l.starts_with("0 ") && l.split_whitespace().nth(4) == Some("-")),
        "{screen}"
    );

    unsafe { libc::kill(victim, libc::SIGKILL) };
    let screen = tmux.wait_for("slot 0 with a new pid and 1 restart", 10 * SECOND, |s| {
        row(s, 0).is_some_and(|(pid, restarts)| pid != victim && restarts == 1)
    });
    assert!(screen.contains("replaced: 1 signal"), "{screen}");

    tmux.keys(&["q"]);
    let screen = tmux.wait_for("top's exit", 10 * SECOND, exited_and_stty_said);
    assert!(screen.contains("before-top"), "the shell's screen is back:\n{screen}");
    assert!(!screen.contains("SLOT     PID"), "top's screen is gone:\n{screen}");
    let after: Vec<&str> = screen
        .lines()
        .skip_while(|l| !l.contains("top exited 0"))
        .skip(1)
        .take(2)
        .collect();
    assert_eq!(after, ["icanon", "echo"], "the terminal's mode is restored:\n{screen}");

    // Ctrl-C quits as well.
    tmux.keys(&["clear", "Enter"]);
    tmux.keys(&[&command, "Enter"]);
    tmux.wait_for("top again", 10 * SECOND, |s| row(s, 0).is_some());
    tmux.keys(&["C-c"]);
    let screen = tmux.wait_for("top's exit on Ctrl-C", 10 * SECOND, exited_and_stty_said);
    let after: Vec<&str> = screen
        .lines()
        .skip_while(|l| !l.contains("top exited 0"))
        .skip(1)
        .take(2)
        .collect();
    assert_eq!(after, ["icanon", "echo"], "{screen}");

    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(20 * SECOND).code(), Some(0));
}

/// A cell of slot `slot`'s row, counted from the row's end (1 = the last).
fn cell_from_end(screen: &str, slot: usize, from_end: usize) -> Option<String> {
    let line = screen.lines().find(|l| {
        let mut cells = l.split_whitespace();
        cells.next() == Some(&slot.to_string()) && cells.nth(2).is_some_and(|s| s == "ready")
    })?;
    let cells: Vec<&str> = line.split_whitespace().collect();
    cells.get(cells.len().checked_sub(from_end)?).map(|c| c.to_string())
}

#[test]
fn top_on_a_big_terminal_shows_node_heap_and_lag_a_log_pane_and_replaces_a_worker_on_a_key() {
    // A pm2-style Node app, run as a pm2 user would: the Node kit reports
    // each worker's heap and event-loop lag over its IPC channel.
    let port = free_port().port();
    let launch = Launch::new(&[]);
    let config = launch.file(
        "app.toml",
        &format!(
            "command = [\"node\", {:?}]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 2\nready_delay = \"300ms\"\n\
             control_socket = \"control.sock\"\n",
            repo_path("tests/fixtures/pm2/app.js").display().to_string()
        ),
    );
    let mut launch = launch;
    launch.args = vec!["run".into(), "--config".into(), config.display().to_string()];
    let dir = launch.dir.path().to_path_buf();
    let mut sheepdog = launch.spawn();
    sheepdog.logs.wait_for("ready: 2/2 workers", 20 * SECOND);

    for (width, height) in [(80u16, 24u16), (200, 50)] {
        let tmux = Tmux::sized(&format!("top{width}"), &dir, width, height);
        tmux.keys(&[&format!("{BIN} top --config app.toml --interval 300ms"), "Enter"]);
        let screen = tmux.wait_for("both workers", 10 * SECOND, |s| {
            row(s, 0).is_some() && row(s, 1).is_some()
        });
        if width == 80 {
            assert!(
                !screen.contains("HEAP"),
                "no room for the heap at 80 columns:\n{screen}"
            );
            tmux.keys(&["q"]);
            continue;
        }
        // The heap (MiB) and the lag (ms) of each Node worker, and they move.
        let screen = tmux.wait_for("heap and lag figures", 10 * SECOND, |s| {
            cell_from_end(s, 0, 1).is_some_and(|lag| lag.ends_with("ms")) && s.contains("HEAP      LAG")
        });
        let lag = cell_from_end(&screen, 0, 1).unwrap();
        tmux.wait_for("the lag figure moving", 15 * SECOND, |s| {
            cell_from_end(s, 0, 1).is_some_and(|now| now.ends_with("ms") && now != lag)
        });
        // The pane of the selected worker (slot 0): its own last lines.
        let screen = tmux.wait_for("worker 0's lines", 10 * SECOND, |s| {
            s.contains("── worker 0: its last lines") && s.contains("app listening on port")
        });
        assert!(screen.contains("cron runs in instance 0"), "{screen}");
        // ↓ selects worker 1; x replaces it, replacement first.
        let (victim, _) = row(&screen, 1).unwrap();
        tmux.keys(&["Down"]);
        tmux.wait_for("worker 1 selected", 10 * SECOND, |s| {
            s.contains("── worker 1: its last lines")
        });
        tmux.keys(&["x"]);
        let screen = tmux.wait_for("worker 1 replaced", 20 * SECOND, |s| {
            row(s, 1).is_some_and(|(pid, restarts)| pid != victim && restarts == 0)
        });
        assert!(
            screen.contains(&format!("replacing worker 1 (pid {victim}), replacement first")),
            "{screen}"
        );
        sheepdog
            .logs
            .wait_for(&format!("SIGINT: closing the server (pid {victim})"), 10 * SECOND);
        // + adds a worker.
        tmux.keys(&["+"]);
        tmux.wait_for("a third worker", 20 * SECOND, |s| row(s, 2).is_some());
        tmux.keys(&["q"]);
    }
    let status = status_of(&config);
    assert_eq!(status["supervisor"]["replacements"]["requested"], 1, "{status}");
    let worker = &status["workers"][0];
    assert!(worker["heap_used_bytes"].as_u64().unwrap() > 1 << 20, "{worker}");
    assert!(worker["event_loop_lag_ms"].as_f64().is_some(), "{worker}");
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(20 * SECOND).code(), Some(0));
}
