//! Talking upward to systemd: sd_notify messages, and whether stderr is a
//! journal stream. Silent (and free) when sheepdog is not run by systemd.

use std::os::fd::AsFd;

use sd_notify::NotifyState;

use crate::flock::Upward;

/// Sends one state to `$NOTIFY_SOCKET`, if there is one. A failure is logged,
/// never fatal: systemd going away must not take the flock down with it.
pub fn notify(message: &Upward) {
    let result = match message {
        Upward::Ready => sd_notify::notify(&[NotifyState::Ready]),
        Upward::Stopping => sd_notify::notify(&[NotifyState::Stopping]),
        Upward::Status(status) => sd_notify::notify(&[NotifyState::Status(status)]),
        Upward::Watchdog => sd_notify::notify(&[NotifyState::Watchdog]),
    };
    if let Err(e) = result {
        log::warn!("cannot notify systemd ({message:?}): {e}");
    }
}

/// systemd's watchdog interval for sheepdog (WATCHDOG_USEC, when WATCHDOG_PID
/// is unset or ours).
pub fn watchdog_interval() -> Option<std::time::Duration> {
    sd_notify::watchdog_enabled()
}

/// True when stderr is the journal stream systemd connected (`JOURNAL_STREAM`
/// names its device and inode), so log lines should carry `<N>` priorities.
pub fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_fd()) {
        Ok(stat) => stat.st_dev == dev && stat.st_ino == ino,
        Err(_) => false,
    }
}
