//! What sheepdog tells systemd when systemd is slow to listen: nothing that
//! changes systemd's view of the service (READY=1, RELOADING=1, STOPPING=1)
//! is lost to a stalled NOTIFY_SOCKET reader, and the last word before exit
//! gets out.

mod common;

use std::time::Duration;

use common::*;

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn a_stalled_notify_reader_loses_no_state_change_and_hears_the_last_status() {
    let launch = Launch::new(&[]);
    let (notify, resume) = NotifySocket::stalled(launch.dir.path());
    let config = launch.file(
        "app.toml",
        "command = [\"sleep\", \"600\"]\nworkers = 1\nlisten = [\"127.0.0.1:0\"]\nready_delay = \"300ms\"\n",
    );
    let mut launch = launch
        .env("NOTIFY_SOCKET", notify.path.to_str().unwrap())
        // Watchdog pings every 10 ms fill the kernel's queue (10 datagrams)
        // before READY=1 is even due.
        .env("WATCHDOG_USEC", "20000");
    launch.args = vec!["run".into(), "--config".into(), config.display().to_string()];
    let mut sheepdog = launch.spawn();
    sheepdog.logs.wait_for("ready: 1/1 workers", 10 * SECOND);
    // Forty refused reloads, each a RELOADING=1 and a READY=1 for systemd.
    std::fs::write(&config, "command = [\"sleep\", \"600\"]\nworkers = 0\n").unwrap();
    for n in 1..=40 {
        sheepdog.signal(libc::SIGHUP);
        sheepdog.logs.wait_for_nth("reload refused", n, 5 * SECOND);
    }
    resume();
    notify.messages.wait_for_nth("READY=1", 41, 10 * SECOND);
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(0));
    notify.messages.wait_for("STOPPING=1", SECOND);
    notify.messages.wait_for("STATUS=stopping · 0 workers left", SECOND);

    let messages = notify.messages.lines();
    let first_ready = messages.iter().position(|m| m == "READY=1").unwrap();
    let first_reloading = messages.iter().position(|m| m == "RELOADING=1").unwrap();
    assert!(
        first_ready < first_reloading,
        "the start's READY=1 came first: {messages:#?}"
    );
    assert_eq!(messages.iter().filter(|m| *m == "RELOADING=1").count(), 40);
    assert_eq!(messages.iter().filter(|m| *m == "READY=1").count(), 41);
}
