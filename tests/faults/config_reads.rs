//! Round two, finding 3: a config path that is a FIFO, a device or a huge
//! file neither blocks the loop nor takes the machine's memory, at start
//! or at a reload: it is refused at once, and supervision goes on.

use std::path::Path;
use std::process::Command;

use super::common::*;
use super::{SECOND, run};

/// `sheepdog reload` through the socket (the client reads no config), bounded.
fn reload(socket: &Path) -> (Option<i32>, String) {
    let output = sheepdog_client(&["reload", "--socket", socket.to_str().unwrap()], 10 * SECOND);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Puts a bad config at a path.
type Make = dyn Fn(&Path);

#[test]
fn a_reload_onto_a_fifo_a_device_or_a_huge_file_is_refused_at_once_and_supervision_goes_on() {
    let launch = Launch::new(&[]);
    let config = launch.file(
        "app.toml",
        &format!(
            "command = [\"node\", {:?}]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\nready_delay = \"300ms\"\n\
             control_socket = \"control.sock\"\n",
            repo_path("examples/hello/server.js").display()
        ),
    );
    let good = std::fs::read_to_string(&config).unwrap();
    let sheepdog = run(launch, &config);
    sheepdog.logs.wait_for("ready: 2/2 workers", 10 * SECOND);
    let socket = sheepdog.dir.path().join("control.sock");
    let fifo = |path: &Path| {
        assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
    };
    let cases: [(&str, &Make, &str); 3] = [
        ("a FIFO", &fifo, "it is a FIFO, not a regular file"),
        (
            "/dev/zero",
            &|path: &Path| std::os::unix::fs::symlink("/dev/zero", path).unwrap(),
            "it is a device, not a regular file",
        ),
        (
            "1 GB",
            &|path: &Path| {
                let file = std::fs::File::create(path).unwrap();
                file.set_len(1 << 30).unwrap();
            },
            "1073741824 bytes, over the 1024 KiB",
        ),
    ];
    for (what, make, said) in cases {
        std::fs::remove_file(&config).unwrap();
        make(&config);
        let (code, stderr) = reload(&socket);
        assert_eq!(code, Some(1), "{what}: {stderr}");
        assert!(stderr.contains(said), "{what}: {stderr}");
        // Supervision went on: a killed worker is replaced.
        let victim = sheepdog.worker_pids()[0];
        unsafe { libc::kill(victim, libc::SIGKILL) };
        wait_until(10 * SECOND, "the killed worker's replacement", || {
            let pids = sheepdog.worker_pids();
            pids.len() == 2 && !pids.contains(&victim)
        });
        assert!(
            rss_kib(sheepdog.pid()) < 64 * 1024,
            "{what}: RSS {} KiB",
            rss_kib(sheepdog.pid())
        );
    }
    std::fs::remove_file(&config).unwrap();
    std::fs::write(&config, good).unwrap();
    let (code, stderr) = reload(&socket);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_config_that_is_a_fifo_stops_the_start_with_78() {
    let launch = Launch::new(&[]);
    let config = launch.dir.path().join("app.toml");
    assert!(Command::new("mkfifo").arg(&config).status().unwrap().success());
    let mut sheepdog = run(launch, &config);
    assert_eq!(sheepdog.wait_exit(10 * SECOND).code(), Some(78));
    sheepdog.logs.wait_for("it is a FIFO, not a regular file", SECOND);
    // And `check` says the same at once.
    let output = sheepdog_client(&["check", "--config", config.to_str().unwrap()], 10 * SECOND);
    assert_eq!(output.status.code(), Some(78));
}
