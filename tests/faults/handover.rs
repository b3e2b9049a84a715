//! Round two, findings 4 and 7b: a new binary that answers the probe and
//! then hangs, exits 0 or forks can neither leave the flock unsupervised
//! nor end it as a success; a probe that hangs leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::SECOND;
use super::common::*;

/// A flock of two sleepers run from a copy of the binary at `dir/bin/sheepdog`.
fn flock_from_copy(launch: Launch) -> (Sheepdog, PathBuf, PathBuf) {
    std::fs::create_dir(launch.dir.path().join("bin")).unwrap();
    let binary = launch.dir.path().join("bin/sheepdog");
    install(Path::new(BIN), &binary);
    let config = launch.file(
        "app.toml",
        "command = [\"sleep\", \"100000\"]\nworkers = 2\nready_delay = \"100ms\"\nlisten = [\"127.0.0.1:0\"]\n\
         control_socket = \"control.sock\"\n",
    );
    let mut launch = launch.program(&binary);
    launch.args = vec!["run".into(), "--config".into(), config.display().to_string()];
    let sheepdog = launch.spawn();
    sheepdog.logs.wait_for("ready: 2/2 workers", 10 * SECOND);
    (sheepdog, binary, config)
}

/// Puts `from` at `path` as a package manager does: a copy renamed over it.
fn install(from: &Path, path: &Path) {
    let fresh = path.with_extension("new");
    assert!(Command::new("cp").arg(from).arg(&fresh).status().unwrap().success());
    std::fs::rename(&fresh, path).unwrap();
}

fn upgrade(config: &Path, timeout: std::time::Duration) -> (Option<i32>, String) {
    let output = client_of(config, &["upgrade", "--timeout", &format!("{}s", timeout.as_secs())]);
    let said = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), said)
}

/// The flock still supervised: a killed worker is replaced.
fn still_supervised(sheepdog: &Sheepdog) {
    let victim = sheepdog.worker_pids()[0];
    unsafe { libc::kill(victim, libc::SIGKILL) };
    wait_until(10 * SECOND, "the killed worker's replacement", || {
        let pids = sheepdog.worker_pids();
        pids.len() == 2 && !pids.contains(&victim)
    });
}

#[test]
fn a_wrapper_that_answers_the_probe_is_refused_whatever_it_would_do_then() {
    let (sheepdog, binary, config) = flock_from_copy(Launch::new(&[]));
    let real = sheepdog.dir.path().join("real-sheepdog");
    install(Path::new(BIN), &real);
    let workers = sheepdog.worker_pids();
    // Each answers the probe as a sheepdog would (by exec'ing one), then
    // exits 0, hangs, or runs a sheepdog in a process of its own.
    for then in ["exit 0", "exec sleep 100000", "\"$0.real\" \"$@\"; exit 0"] {
        let script = format!(
            "#!/bin/sh\nif [ \"$1\" = upgrade-probe ]; then exec {} upgrade-probe; fi\n{then}\n",
            real.display()
        );
        let source = sheepdog.dir.path().join("wrapper");
        std::fs::write(&source, script).unwrap();
        assert!(
            Command::new("chmod")
                .arg("755")
                .arg(&source)
                .status()
                .unwrap()
                .success()
        );
        install(&source, &binary);
        let (code, said) = upgrade(&config, 30 * SECOND);
        assert_eq!(code, Some(1), "{then}: {said}");
        assert!(said.contains("is a script (#!)"), "{then}: {said}");
        assert!(alive(sheepdog.pid()), "{then}");
    }
    let mut now = sheepdog.worker_pids();
    now.sort_unstable();
    let mut before = workers;
    before.sort_unstable();
    assert_eq!(now, before);
    still_supervised(&sheepdog);
}

#[test]
fn a_new_binary_that_hangs_while_it_takes_over_is_killed_by_its_guard() {
    // Debug builds only: SHEEPDOG_FAILPOINT=hang makes the binary taking
    // over hang before it reads its state, every signal still blocked.
    let launch = Launch::new(&[]).env("SHEEPDOG_FAILPOINT", "hang");
    let (mut sheepdog, _, config) = flock_from_copy(launch);
    let workers = sheepdog.worker_pids();
    let started = std::time::Instant::now();
    let (code, said) = upgrade(&config, 60 * SECOND);
    // The client hears the end of the supervisor it asked.
    assert_eq!(code, Some(1), "{said}");
    let status = sheepdog.wait_exit(30 * SECOND);
    // Ended as a crash is, never as a success: killed, and its workers with it.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(started.elapsed() >= 9 * SECOND, "the guard waits its 10 s");
    wait_until(10 * SECOND, "the workers to go with it", || {
        workers.iter().all(|pid| !alive(*pid))
    });
}

#[test]
fn a_probe_that_hangs_is_killed_with_what_it_started() {
    let (sheepdog, binary, config) = flock_from_copy(Launch::new(&[]));
    // An ELF that does not answer: a shell, which runs `upgrade-probe` from
    // the supervisor's working directory as a script that starts a child
    // and waits.
    install(Path::new("/bin/sh"), &binary);
    let child_file = sheepdog.dir.path().join("probe-child");
    std::fs::write(
        sheepdog.dir.path().join("upgrade-probe"),
        format!("sleep 100000 &\necho $! > {}\nwait\n", child_file.display()),
    )
    .unwrap();
    let (code, said) = upgrade(&config, 30 * SECOND);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("did not answer its probe within 2s"), "{said}");
    let child: i32 = std::fs::read_to_string(&child_file).unwrap().trim().parse().unwrap();
    wait_until(5 * SECOND, "the probe's child to be gone", || !alive(child));
    still_supervised(&sheepdog);
    sheepdog.signal(libc::SIGTERM);
}

#[test]
fn a_new_binary_run_in_another_process_than_the_flocks_does_not_take_it_over() {
    // An ELF that answers the probe and then forks the real binary instead
    // of exec'ing it: a shell, running `upgrade-probe` and `run` from the
    // supervisor's working directory as scripts.
    let (mut sheepdog, binary, config) = flock_from_copy(Launch::new(&[]));
    let real = sheepdog.dir.path().join("real-sheepdog");
    install(Path::new(BIN), &real);
    let dir = sheepdog.dir.path().to_path_buf();
    std::fs::write(
        dir.join("upgrade-probe"),
        format!("exec {} upgrade-probe\n", real.display()),
    )
    .unwrap();
    std::fs::write(dir.join("run"), format!("{} run \"$@\"\n", real.display())).unwrap();
    install(Path::new("/bin/sh"), &binary);
    let workers = sheepdog.worker_pids();
    let (code, said) = upgrade(&config, 30 * SECOND);
    assert_eq!(code, Some(1), "{said}");
    // The copy in the other pid refuses the flock: no second supervisor of
    // it runs, and the supervisor's pid ends with a failure, not 0.
    let status = sheepdog.wait_exit(30 * SECOND);
    assert_eq!(status.code(), Some(71), "{status:?}: {:#?}", sheepdog.logs.lines());
    sheepdog
        .logs
        .wait_for("(a wrapper that forks instead of exec'ing?)", SECOND);
    wait_until(10 * SECOND, "the workers to go with it", || {
        workers.iter().all(|pid| !alive(*pid))
    });
}
