//! `workers = "auto"` counts the CPUs this process may use, a container's
//! CPU quota included (cgroup v1 `cpu.cfs_quota_us`, v2 `cpu.max`; read by
//! Rust's `available_parallelism`), not the machine's cores: under a pod's
//! `limits.cpu: "1"` on a 2-core node it starts 1 worker, not 2.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Launch, repo_path, wait_until};

const SECOND: Duration = Duration::from_secs(1);

/// A cgroup of its own with a CPU quota of one CPU, removed on drop.
struct QuotaGroup {
    dir: PathBuf,
}

impl QuotaGroup {
    /// Under the cgroup v1 cpu controller, or else cgroup v2 with the cpu
    /// controller on; None when neither can be written (not root, or no
    /// cpu controller to use).
    fn one_cpu() -> Option<QuotaGroup> {
        let name = format!("sheepdog-test-{}", std::process::id());
        let v1 = PathBuf::from("/sys/fs/cgroup/cpu");
        let v2 = PathBuf::from("/sys/fs/cgroup");
        if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(name);
            std::fs::create_dir(&dir).ok()?;
            let group = QuotaGroup { dir };
            std::fs::write(group.dir.join("cpu.cfs_period_us"), "100000").ok()?;
            std::fs::write(group.dir.join("cpu.cfs_quota_us"), "100000").ok()?;
            return Some(group);
        }
        let controllers = std::fs::read_to_string(v2.join("cgroup.subtree_control")).ok()?;
        if !controllers.split_whitespace().any(|c| c == "cpu") {
            return None;
        }
        let dir = v2.join(name);
        std::fs::create_dir(&dir).ok()?;
        let group = QuotaGroup { dir };
        std::fs::write(group.dir.join("cpu.max"), "100000 100000").ok()?;
        Some(group)
    }

    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for QuotaGroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Starts sheepdog with `workers = "auto"` (after `prefix` in its shell) and
/// returns how many workers it started once they are ready.
fn auto_workers(prefix: &str) -> usize {
    let server = repo_path("examples/hello/server.js").display().to_string();
    let launch = Launch::new(&["run", "--config", "app.toml"]).shell_prefix(prefix);
    launch.file(
        "app.toml",
        &format!(
            "command = [\"node\", \"{server}\"]\nworkers = \"auto\"\nlisten = [\"127.0.0.1:0\"]\n\
             readiness = \"node-ipc\"\n"
        ),
    );
    let mut sheepdog = launch.spawn();
    let (_, line) = sheepdog.logs.wait_for("ready: ", 20 * SECOND);
    let workers = sheepdog.worker_pids().len();
    assert!(line.contains(&format!("ready: {workers}/{workers}")), "{line}");
    sheepdog.signal(libc::SIGTERM);
    assert_eq!(sheepdog.wait_exit(20 * SECOND).code(), Some(0));
    workers
}

#[test]
fn auto_workers_follow_a_cpu_quota_of_one_cpu_not_the_cores() {
    let cores = std::thread::available_parallelism().unwrap().get();
    if cores < 2 {
        eprintln!("skipped: 1 CPU here, so a quota of 1 changes nothing to see");
        return;
    }
    let Some(group) = QuotaGroup::one_cpu() else {
        eprintln!("skipped: no cgroup cpu controller this test may write (it needs root)");
        return;
    };
    assert_eq!(auto_workers(":"), cores, "without a quota: one worker per core");
    let procs = group.procs().display().to_string();
    assert_eq!(auto_workers(&format!("echo $$ > {procs}")), 1, "under a quota of 1 CPU");
    wait_until(5 * SECOND, "the group empty", || {
        std::fs::read_to_string(group.procs()).is_ok_and(|p| p.trim().is_empty())
    });
}
