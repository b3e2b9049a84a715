//! The fd limit. systemd's default `LimitNOFILE=` is a soft 1024 under a
//! much higher hard limit, which a flock of a thousand workers would cross
//! (each worker costs sheepdog its channel, and its exec report while it
//! starts). As systemd recommends for programs that need many fds, sheepdog
//! raises its own soft limit to the hard one at start, and gives the
//! workers back the soft limit it was given, for programs that still use
//! `select()`. A flock that cannot fit even so is refused before any fork.

use crate::config::Channel;

/// What sheepdog itself needs besides its workers' fds: stdio and the log,
/// a few listeners, the epoll, signal and notify fds, /dev/null, the
/// control socket and its reserve fd, with room to spare. Control clients
/// are not counted: out of fds, the idle ones make room for new ones.
const OWN_FDS: u64 = 32;

/// The fd limit sheepdog was started with; what workers get back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
}

fn current() -> Option<FdLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit, which `limit` is.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(FdLimit {
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// Raises the soft fd limit to the hard one; returns the limit as it was
/// (for the workers), or None if it cannot be read.
pub fn raise() -> Option<FdLimit> {
    let original = current()?;
    if original.soft < original.hard {
        let raised = libc::rlimit {
            rlim_cur: original.hard,
            rlim_max: original.hard,
        };
        // SAFETY: setrlimit reads one rlimit, which `raised` is.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            log::debug!("fd limit raised from {} to {}", original.soft, original.hard);
        } else {
            log::warn!(
                "cannot raise the fd limit from {} to {}: {}",
                original.soft,
                original.hard,
                nix::errno::Errno::last().desc()
            );
        }
    }
    Some(original)
}

/// How many fds a flock of `workers` may need at once.
pub fn needed(workers: u64, channel: Channel) -> u64 {
    // Its exec report (while it starts), its output pipe (outside the
    // journal), and its channel.
    let per_worker = if channel == Channel::None { 2 } else { 3 };
    OWN_FDS + workers * per_worker
}

/// Why `workers` workers cannot fit under the hard fd limit, if they cannot.
pub fn too_many(workers: u64, channel: Channel) -> Option<String> {
    let hard = current()?.hard;
    let need = needed(workers, channel);
    (need > hard).then(|| {
        format!(
            "{workers} workers need up to {need} file descriptors, more than the hard limit of {hard} \
             (LimitNOFILE=, ulimit -Hn): raise it, or run fewer workers"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_costs_its_channel_and_its_exec_report() {
        assert_eq!(needed(0, Channel::Notify), OWN_FDS);
        assert_eq!(needed(10, Channel::None), OWN_FDS + 20);
        assert_eq!(needed(10, Channel::NodeIpc), OWN_FDS + 30);
        assert_eq!(needed(4096, Channel::Notify), OWN_FDS + 3 * 4096);
    }
}
