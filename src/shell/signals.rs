//! Every signal sheepdog can be sent has a meaning, or is ignored with a log
//! line: none takes the flock down by its default action. [`TABLE`] is the
//! one place that says which: the loop's handlers, the dispatch of a signal
//! received, `docs/operations.md`'s table and `sheepdog(1)`'s SIGNALS are
//! all made from it (tests hold the last two to it).

use std::os::fd::RawFd;
use std::str::FromStr;

use nix::sys::signal::Signal;

use crate::error::Error;

/// What a signal means to sheepdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// Stop gracefully (a second one kills what is left).
    Stop,
    /// Read the config again and roll onto it.
    Reload,
    /// Write the flock's status to the log.
    LogStatus,
    /// One worker more.
    OneMore,
    /// One worker less.
    OneLess,
    /// A worker changed state: reap it.
    Reap,
    /// Raised by the CPU: fatal (core dump); sent by someone: ignored.
    Fault,
    /// Caught, and ignored with a log line (their default would end or
    /// stop the supervisor).
    Ignored,
    /// Left to a default that does nothing to a running process (SIGPIPE
    /// is ignored: a write fails with EPIPE instead).
    Harmless,
    /// Cannot be caught.
    Uncatchable,
}

impl Meaning {
    /// Delivered to the loop through the self-pipe.
    fn reaches_the_loop(self) -> bool {
        !matches!(self, Meaning::Fault | Meaning::Harmless | Meaning::Uncatchable)
    }
}

/// A row of the signal table: signals of one meaning, and what an operator
/// reads of them (Markdown, with `code`).
pub struct Row {
    pub signals: &'static [&'static str],
    /// The real-time signals (SIGRTMIN…SIGRTMAX) belong to this row too.
    pub real_time: bool,
    pub meaning: Meaning,
    pub effect: &'static str,
}

pub const TABLE: &[Row] = &[
    Row {
        signals: &["SIGTERM", "SIGINT", "SIGQUIT"],
        real_time: false,
        meaning: Meaning::Stop,
        effect: "`STOPPING=1`; the stop signal to every worker (those already leaving on their own too; not those \
                 sheepdog already stopped); SIGKILL to those still there after `stop_timeout`; exit 0. A second one \
                 kills the rest at once. `SIGQUIT` stops gracefully, as in nginx and unicorn.",
    },
    Row {
        signals: &["SIGHUP", "SIGUSR2"],
        real_time: false,
        meaning: Meaning::Reload,
        effect: "re-read the config and roll onto it, like `sheepdog reload`; `SIGUSR2` is the hot restart that \
                 operators of Node masters and unicorn reach for.",
    },
    Row {
        signals: &["SIGUSR1"],
        real_time: false,
        meaning: Meaning::LogStatus,
        effect: "write the flock's status (the `sheepdog status` table) to the log.",
    },
    Row {
        signals: &["SIGTTIN"],
        real_time: false,
        meaning: Meaning::OneMore,
        effect: "one worker more (never past the maximum).",
    },
    Row {
        signals: &["SIGTTOU"],
        real_time: false,
        meaning: Meaning::OneLess,
        effect: "one worker less (the highest slot is retired gracefully; never below 1).",
    },
    Row {
        signals: &["SIGCHLD"],
        real_time: false,
        meaning: Meaning::Reap,
        effect: "reaps workers.",
    },
    Row {
        signals: &["SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE"],
        real_time: false,
        meaning: Meaning::Fault,
        effect: "raised by the CPU, a real fault: fatal, with a core dump (the workers die with sheepdog); sent by \
                 someone (`kill -SEGV`): ignored with a log line.",
    },
    Row {
        signals: &[
            "SIGALRM",
            "SIGVTALRM",
            "SIGPROF",
            "SIGIO",
            "SIGPWR",
            "SIGSTKFLT",
            "SIGXCPU",
            "SIGXFSZ",
            "SIGTRAP",
            "SIGABRT",
            "SIGSYS",
            "SIGTSTP",
        ],
        real_time: true,
        meaning: Meaning::Ignored,
        effect: "ignored, with a log line (`SIGTSTP`, ^Z, would freeze supervision; `SIGXFSZ` would kill sheepdog \
                 when a log file reaches its size limit).",
    },
    Row {
        signals: &["SIGPIPE"],
        real_time: false,
        meaning: Meaning::Harmless,
        effect: "ignored: a write to a closed pipe or socket fails instead.",
    },
    Row {
        signals: &["SIGWINCH", "SIGURG", "SIGCONT"],
        real_time: false,
        meaning: Meaning::Harmless,
        effect: "their defaults, which do nothing to a running process.",
    },
    Row {
        signals: &["SIGKILL", "SIGSTOP"],
        real_time: false,
        meaning: Meaning::Uncatchable,
        effect: "cannot be caught. A SIGKILLed sheepdog takes its workers with it (`PR_SET_PDEATHSIG`); a stopped \
                 one, once continued, spares the workers' heartbeats for one timeout rather than killing them all.",
    },
];

fn number(name: &str) -> i32 {
    match name {
        // Linux-only signals nix names differently or not at all.
        "SIGPWR" => libc::SIGPWR,
        "SIGSTKFLT" => libc::SIGSTKFLT,
        _ => Signal::from_str(name).map_or(0, |s| s as i32),
    }
}

/// What `signal` means to sheepdog.
pub fn meaning(signal: i32) -> Meaning {
    let real_time = (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal);
    TABLE
        .iter()
        .find(|row| (real_time && row.real_time) || row.signals.iter().any(|name| number(name) == signal))
        .map_or(Meaning::Ignored, |row| row.meaning)
}

/// Signals delivered through signal-hook's self-pipe.
pub fn handled() -> Vec<i32> {
    let mut signals = Vec::new();
    for row in TABLE.iter().filter(|row| row.meaning.reaches_the_loop()) {
        signals.extend(row.signals.iter().map(|name| number(name)));
        if row.real_time {
            signals.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
        }
    }
    signals
}

/// The table as Markdown rows (`| signal | effect |`), for the docs.
pub fn markdown_rows() -> Vec<String> {
    TABLE
        .iter()
        .map(|row| {
            let mut names: Vec<String> = row.signals.iter().map(|n| format!("`{n}`")).collect();
            if row.real_time {
                names.push("real-time signals".into());
            }
            format!("| {} | {} |", names.join(", "), row.effect)
        })
        .collect()
}

/// The signals a CPU fault raises.
fn faults() -> Vec<i32> {
    TABLE
        .iter()
        .filter(|row| row.meaning == Meaning::Fault)
        .flat_map(|row| row.signals.iter().map(|name| number(name)))
        .collect()
}

/// Handles the fault signals: one raised by the CPU (a real fault) keeps its
/// default action and ends the process with a core dump; one sent by
/// someone (`kill -SEGV`) is written to `pipe` as its number, for the loop
/// to log and ignore.
pub fn watch_faults(pipe: RawFd) -> Result<(), Error> {
    for signal in faults() {
        let action = move |info: &libc::siginfo_t| {
            if info.si_code > 0 {
                // si_code > 0: the kernel raised it for a fault.
                let _ = signal_hook::low_level::emulate_default_handler(signal);
            } else {
                let byte = signal as u8;
                // SAFETY: write(2) is async-signal-safe; the pipe lives as
                // long as the supervisor, and a full pipe only drops the byte.
                unsafe { libc::write(pipe, (&byte as *const u8).cast(), 1) };
            }
        };
        // SAFETY: the action makes async-signal-safe calls only; the fault
        // signals are registered on purpose, to tell a sent one from a real one.
        unsafe { signal_hook_registry::register_unchecked(signal, action) }
            .map_err(|e| Error::from_io(format!("cannot handle {}", name(signal)), e))?;
    }
    Ok(())
}

/// "SIGUSR1", or "signal 40" for one without a name.
pub fn name(signal: i32) -> String {
    match Signal::try_from(signal) {
        Ok(signal) => signal.as_str().to_string(),
        Err(_) if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal) => {
            format!("SIGRTMIN+{}", signal - libc::SIGRTMIN())
        }
        Err(_) => format!("signal {signal}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signal_hook::consts::*;

    #[test]
    fn every_signal_from_1_to_31_is_in_the_table_once() {
        for signal in 1..=31 {
            let rows = TABLE
                .iter()
                .filter(|row| row.signals.iter().any(|name| number(name) == signal))
                .count();
            assert_eq!(rows, 1, "{} is in {rows} rows", name(signal));
        }
        let names = TABLE.iter().flat_map(|row| row.signals.iter());
        assert!(names.clone().all(|name| number(name) > 0), "every name is a signal");
        let handled = handled();
        assert!(handled.contains(&libc::SIGRTMAX()), "real-time signals too");
        assert!(handled.contains(&SIGTSTP) && handled.contains(&SIGCHLD));
        assert!(!handled.contains(&SIGSEGV) && !handled.contains(&SIGPIPE) && !handled.contains(&SIGKILL));
        assert_eq!(meaning(SIGUSR2), Meaning::Reload);
        assert_eq!(meaning(libc::SIGRTMIN() + 3), Meaning::Ignored);
        assert_eq!(faults(), [SIGSEGV, SIGBUS, SIGILL, SIGFPE]);
    }

    /// Run in a child process by the test below: a sent SIGSEGV is
    /// survived, a real one is not.
    #[test]
    fn fault_child() {
        if std::env::var_os("SHEEPDOG_FAULT_CHILD").is_none() {
            return;
        }
        let (read, write) = std::os::unix::net::UnixStream::pair().unwrap();
        watch_faults(std::os::fd::AsRawFd::as_raw_fd(&write)).unwrap();
        // SAFETY: signalling ourselves.
        unsafe { libc::kill(libc::getpid(), SIGSEGV) };
        let mut sent = [0u8; 1];
        std::io::Read::read_exact(&mut &read, &mut sent).unwrap();
        println!("survived a sent {}", name(i32::from(sent[0])));
        // SAFETY: not safe at all, on purpose: a real fault.
        let null: *const u8 = std::ptr::null();
        let _ = unsafe { std::ptr::read_volatile(null) };
        println!("survived a real fault");
    }

    #[test]
    fn a_real_fault_still_ends_the_process_and_a_sent_one_does_not() {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .args([
                "--exact",
                "shell::signals::tests::fault_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SHEEPDOG_FAULT_CHILD", "1");
        // No core file for a fault on purpose.
        // SAFETY: setrlimit is async-signal-safe.
        unsafe {
            child.pre_exec(|| {
                let none = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &none);
                Ok(())
            });
        }
        let output = child.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("survived a sent SIGSEGV"), "{stdout}");
        assert!(!stdout.contains("survived a real fault"), "{stdout}");
        assert_eq!(output.status.signal(), Some(SIGSEGV), "{:?}", output.status);
    }

    #[test]
    fn names_read_like_kill_l() {
        assert_eq!(name(SIGUSR2), "SIGUSR2");
        assert_eq!(name(libc::SIGRTMIN() + 3), "SIGRTMIN+3");
    }
}
