//! Round two, finding 6: a worker that calls listen(2) again on the shared
//! socket with a smaller backlog (`listen(3, 1)`, or Node's 511) does not
//! shrink everyone's accept queue for good: sheepdog gives it back, and says so.

use super::common::*;
use super::{SECOND, run};

fn somaxconn() -> u64 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn backlog(config: &std::path::Path) -> u64 {
    status_of(config)["supervisor"]["listen_queues"][0]["backlog"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_worker_that_shrinks_the_backlog_to_1_gets_it_given_back() {
    let launch = Launch::new(&[]);
    let path = launch.file(
        "app.toml",
        "command = [\"python3\", \"-c\", \"import socket, time; socket.socket(fileno=3).listen(1); time.sleep(100000)\"]\n\
         listen = [\"127.0.0.1:0\"]\nworkers = 1\nready_delay = \"200ms\"\ncontrol_socket = \"control.sock\"\n",
    );
    let sheepdog = run(launch, &path);
    let addr = sheepdog.bound_address();
    let wanted = somaxconn().min(4096);
    let (_, line) = sheepdog.logs.wait_for(
        &format!("the listen backlog of {addr} was 1, not {wanted}"),
        20 * SECOND,
    );
    assert!(line.contains("gave it back"), "{line}");
    wait_until(10 * SECOND, "the backlog given back", || backlog(&path) == wanted);
}

#[test]
fn a_node_worker_does_not_leave_a_systemd_socket_at_511() {
    // systemd-socket-activate listens with SOMAXCONN, as systemd's Backlog=
    // does by default; Node listens on the inherited fd again with 511
    // (without sheepdog's Node kit, whose preload passes the full backlog).
    let addr = free_port();
    let launch = Launch::new(&[]).activated(addr);
    let path = launch.file(
        "app.toml",
        &format!(
            "command = [\"node\", {:?}]\nworkers = 2\nready_delay = \"200ms\"\ncontrol_socket = \"control.sock\"\n\
             node = \"off\"\n",
            repo_path("examples/hello/server.js").display()
        ),
    );
    let sheepdog = run_activated(launch, &path);
    sheepdog.logs.wait_for("Listening on", 10 * SECOND);
    // The first connection starts it.
    assert!(get(addr, 20 * SECOND).is_ok());
    sheepdog.logs.wait_for("ready: 2/2 workers", 20 * SECOND);
    let wanted = somaxconn().min(4096);
    sheepdog.logs.wait_for(&format!("was 511, not {wanted}"), 20 * SECOND);
    wait_until(10 * SECOND, "the backlog given back", || backlog(&path) == wanted);
    assert!(get(addr, 10 * SECOND).is_ok());
}

/// `sheepdog run --config PATH` under systemd-socket-activate.
fn run_activated(mut launch: Launch, path: &std::path::Path) -> Sheepdog {
    launch.args = vec!["run".into(), "--config".into(), path.display().to_string()];
    launch.spawn()
}

#[test]
fn a_node_worker_with_the_node_kit_keeps_the_sockets_backlog() {
    let addr = free_port();
    let launch = Launch::new(&[]).activated(addr);
    let path = launch.file(
        "app.toml",
        &format!(
            "command = [\"node\", {:?}]\nworkers = 2\nready_delay = \"200ms\"\ncontrol_socket = \"control.sock\"\n",
            repo_path("examples/hello/server.js").display()
        ),
    );
    let sheepdog = run_activated(launch, &path);
    sheepdog.logs.wait_for("Listening on", 10 * SECOND);
    assert!(get(addr, 20 * SECOND).is_ok());
    sheepdog.logs.wait_for("ready: 2/2 workers", 20 * SECOND);
    let wanted = somaxconn().min(4096);
    // Each worker has listened on its fd by the time it answered: the
    // backlog read after two answers from each is what stays.
    for _ in 0..8 {
        assert!(get(addr, 10 * SECOND).is_ok());
    }
    assert_eq!(backlog(&path), wanted);
    assert_eq!(sheepdog.logs.count("was 511"), 0, "{:#?}", sheepdog.logs.lines());
}
