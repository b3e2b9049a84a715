//! Every signal sheepdog can be sent has a meaning, or is ignored with a log
//! line: none takes the flock down by its default action.
//!
//! | signal | meaning |
//! |---|---|
//! | SIGTERM, SIGINT, SIGQUIT | stop gracefully (SIGQUIT as nginx and unicorn) |
//! | SIGHUP, SIGUSR2 | reload (SIGUSR2 as Node masters and unicorn) |
//! | SIGUSR1 | write the flock's status to the log |
//! | SIGTTIN, SIGTTOU | one worker more, one less |
//! | SIGCHLD | reap |
//! | SIGSEGV, SIGBUS, SIGILL, SIGFPE | raised by the CPU: a real fault, fatal (core dump); sent by someone: ignored |
//! | SIGPIPE | ignored (a write to a closed pipe or socket fails with EPIPE instead) |
//! | SIGWINCH, SIGURG, SIGCONT | their default: nothing |
//! | SIGKILL, SIGSTOP | cannot be caught (a stopped sheepdog is noticed by the stall guard) |
//! | any other (SIGALRM, SIGXFSZ, SIGABRT, SIGTSTP, real-time signals…) | ignored, with a log line |

use std::os::fd::RawFd;

use nix::sys::signal::Signal;
use signal_hook::consts::*;

use crate::error::Error;

/// Signals delivered through signal-hook's self-pipe.
pub fn handled() -> Vec<i32> {
    let mut signals = vec![
        SIGCHLD,
        SIGTERM,
        SIGINT,
        SIGQUIT,
        SIGHUP,
        SIGUSR1,
        SIGUSR2,
        SIGTTIN,
        SIGTTOU,
        // Fatal by default, meaningless to sheepdog: ignored, with a log line.
        SIGALRM,
        SIGVTALRM,
        SIGPROF,
        SIGIO,
        libc::SIGPWR,
        libc::SIGSTKFLT,
        SIGXCPU,
        SIGXFSZ,
        SIGTRAP,
        SIGABRT,
        SIGSYS,
        // Would stop the supervisor (^Z): ignored, with a log line.
        SIGTSTP,
    ];
    signals.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    signals
}

/// The signals a CPU fault raises.
pub const FAULTS: [i32; 4] = [SIGSEGV, SIGBUS, SIGILL, SIGFPE];

/// Handles the fault signals: one raised by the CPU (a real fault) keeps its
/// default action and ends the process with a core dump; one sent by
/// someone (`kill -SEGV`) is written to `pipe` as its number, for the loop
/// to log and ignore.
pub fn watch_faults(pipe: RawFd) -> Result<(), Error> {
    for signal in FAULTS {
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

    #[test]
    fn every_signal_from_1_to_31_is_decided() {
        let handled = handled();
        let defaults_harmless = [SIGWINCH, SIGURG, SIGCONT, SIGPIPE];
        let uncatchable = [SIGKILL, SIGSTOP];
        for signal in 1..=31 {
            let decided = handled.contains(&signal)
                || FAULTS.contains(&signal)
                || defaults_harmless.contains(&signal)
                || uncatchable.contains(&signal);
            assert!(decided, "{} has no decision", name(signal));
        }
        assert!(handled.contains(&libc::SIGRTMAX()), "real-time signals too");
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
