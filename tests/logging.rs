//! Log format: `<N>` syslog priorities and no timestamps when stderr is the
//! journal stream (JOURNAL_STREAM names stderr's device and inode), a
//! timestamped line otherwise.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn crash_looping_run(journal_stream: impl Fn(&std::fs::File) -> Option<String>) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("app.toml");
    std::fs::write(
        &config,
        "command = [\"sh\", \"-c\", \"exit 3\"]\nworkers = 1\nbackoff_initial = \"20ms\"\nmax_restarts = 1\nlisten = [\"127.0.0.1:0\"]\n",
    )
    .unwrap();
    let log_path = dir.path().join("stderr");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = Command::new(BIN);
    command.env("RUNTIME_DIRECTORY", dir.path());
    command.args(["run", "--config", config.to_str().unwrap()]);
    command
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS");
    if let Some(value) = journal_stream(&log) {
        command.env("JOURNAL_STREAM", value);
    }
    let mut child = command.stdin(Stdio::null()).stderr(log).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "sheepdog did not stop");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(1));
    std::fs::read_to_string(&log_path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn under_journald_each_line_carries_its_priority_and_no_timestamp() {
    let lines = crash_looping_run(|file| {
        let meta = file.metadata().unwrap();
        Some(format!("{}:{}", meta.dev(), meta.ino()))
    });
    assert!(lines.iter().all(|l| l.starts_with('<')), "{lines:#?}");
    let first = &lines[0];
    assert!(first.starts_with("<6>sheepdog "), "{first}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>worker 0 (pid ") && l.contains("exited with code 3")),
        "{lines:#?}"
    );
    let last = lines.last().unwrap();
    assert!(last.starts_with("<3>crash loop: "), "{last}");
}

#[test]
fn a_journal_stream_that_is_not_our_stderr_is_ignored() {
    let lines = crash_looping_run(|_| Some("1:1".into()));
    assert!(lines.iter().all(|l| l.contains(" sheepdog[")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains(" warn  worker 0 ")), "{lines:#?}");
    assert!(lines.last().unwrap().contains(" error crash loop: "));
    let plain = crash_looping_run(|_| None);
    assert!(!plain[0].starts_with('<'));
}
