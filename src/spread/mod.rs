//! Spreading connections over the workers: each worker accepts from a queue
//! of its own (a listening socket of a `SO_REUSEPORT` group that sheepdog
//! holds, so no queue is ever reset), and a program in the kernel picks the
//! queue of each new connection among those whose worker may take it.

pub mod bpf;
pub mod queues;

/// Drops every capability sheepdog was given (`CAP_BPF` for the round
/// robin, which is set up by now), so that neither it nor any worker holds
/// one; root keeps what root has (its workers run as root anyway).
pub fn drop_capabilities() {
    if nix::unistd::geteuid().is_root() || !has_capabilities() {
        return;
    }
    // SAFETY: prctl with integer arguments only.
    let ambient = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let none = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset(2) with a version 3 header and its two data words.
    let set = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, none.as_ptr()) };
    if ambient != 0 || set != 0 {
        log::warn!(
            "cannot drop the capabilities sheepdog was given: {}",
            std::io::Error::last_os_error()
        );
    } else {
        log::info!("dropped the capabilities sheepdog was given (they served only to set up the round robin)");
    }
}

/// Whether this process holds any capability (CapEff or CapPrm not zero).
fn has_capabilities() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .filter(|l| l.starts_with("CapEff:") || l.starts_with("CapPrm:"))
        .any(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|v| !v.trim_start_matches('0').is_empty())
        })
}
