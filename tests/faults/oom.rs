//! Round two, finding 5: a worker killed by the kernel's OOM killer is
//! named so (log, STATUS, the `cause` of the replacement), and replaced
//! like any crash. The test runs sheepdog in a memory cgroup of its own
//! with a limit a worker then goes over (cgroup v1 here, as on this
//! project's machines; v2 where the v1 memory controller is not mounted).

use std::path::PathBuf;

use super::common::*;
use super::{SECOND, run};

/// A memory cgroup made for one test, removed when dropped.
struct MemoryCgroup {
    dir: PathBuf,
    /// The file that takes a pid into it.
    procs: PathBuf,
}

impl MemoryCgroup {
    fn new(limit: u64) -> Option<MemoryCgroup> {
        let name = format!("sheepdog-oom-test-{}", std::process::id());
        let v1 = PathBuf::from("/sys/fs/cgroup/memory");
        if v1.join("memory.limit_in_bytes").exists() {
            let dir = v1.join(&name);
            std::fs::create_dir(&dir).ok()?;
            std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).ok()?;
            return Some(MemoryCgroup {
                procs: dir.join("cgroup.procs"),
                dir,
            });
        }
        let v2 = PathBuf::from("/sys/fs/cgroup");
        let controllers = std::fs::read_to_string(v2.join("cgroup.subtree_control")).ok()?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return None;
        }
        let dir = v2.join(&name);
        std::fs::create_dir(&dir).ok()?;
        std::fs::write(dir.join("memory.max"), limit.to_string()).ok()?;
        std::fs::write(dir.join("memory.swap.max"), "0").ok();
        Some(MemoryCgroup {
            procs: dir.join("cgroup.procs"),
            dir,
        })
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Whatever is left in it first, then the cgroup.
        if let Ok(pids) = std::fs::read_to_string(&self.procs) {
            for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let deadline = std::time::Instant::now() + 10 * SECOND;
        while std::fs::remove_dir(&self.dir).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Worker 0, the first time only, grows past the cgroup's limit.
const HOG: &str = r#"
import os, sys, time
marker = sys.argv[1]
if os.environ["SHEEPDOG_WORKER_ID"] == "0" and not os.path.exists(marker):
    open(marker, "w").close()
    time.sleep(0.5)
    hog = b"x" * (600 << 20)
time.sleep(100000)
"#;

#[test]
fn a_worker_killed_by_the_oom_killer_is_named_so_and_replaced() {
    let Some(cgroup) = MemoryCgroup::new(300 << 20) else {
        panic!("this test needs root and a memory cgroup it can make (v1 /sys/fs/cgroup/memory or v2 with +memory)");
    };
    let launch = Launch::new(&[]).shell_prefix(&format!("echo $$ > {}", cgroup.procs.display()));
    let hog = launch.file("hog.py", HOG);
    let marker = launch.dir.path().join("hogged");
    let path = launch.file(
        "app.toml",
        &format!(
            "command = [\"python3\", {:?}, {:?}]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\nready_delay = \"200ms\"\n\
             control_socket = \"control.sock\"\n",
            hog.display().to_string(),
            marker.display().to_string()
        ),
    );
    let notify = NotifySocket::bind(launch.dir.path());
    let launch = launch.env("NOTIFY_SOCKET", notify.path.to_str().unwrap());
    let mut sheepdog = run(launch, &path);
    let (_, line) = sheepdog
        .logs
        .wait_for("was killed by the kernel's OOM killer", 60 * SECOND);
    assert!(line.contains("worker 0 (pid"), "{line}");
    sheepdog
        .logs
        .wait_for("OOM killer killed 1 process of sheepdog's memory cgroup", SECOND);
    notify.messages.wait_for("1 OOM kill", 10 * SECOND);
    // Replaced as any crash is, and counted under its own cause.
    wait_until(20 * SECOND, "worker 0's replacement", || {
        let status = status_of(&path);
        status["supervisor"]["ready"] == 2 && status["supervisor"]["replacements"]["oom"] == 1
    });
    let status = status_of(&path);
    assert_eq!(status["supervisor"]["replacements"]["signal"], 0, "{status}");
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(20 * SECOND).code(), Some(0));
    drop(cgroup);
}
