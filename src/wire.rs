//! The words a component writes itself down in for the binary that takes
//! over in an in-place upgrade (`crate::upgrade`): bytes that are usually
//! text, and fds with the inode they must still be. Each component owns its
//! state type beside its `export` and `adopt`; `upgrade::state` only
//! composes them.

use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The variable naming the state's fds across the exec (a worker never
/// inherits it).
pub const STATE_ENV: &str = "SHEEPDOG_UPGRADE";

/// Bytes that are usually text (paths, environment entries): a string when
/// they are UTF-8, an array of numbers otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Bytes {
    Text(String),
    Raw(Vec<u8>),
}

impl Bytes {
    pub fn new(bytes: &[u8]) -> Bytes {
        match std::str::from_utf8(bytes) {
            Ok(text) => Bytes::Text(text.to_string()),
            Err(_) => Bytes::Raw(bytes.to_vec()),
        }
    }

    pub fn path(path: &Path) -> Bytes {
        Bytes::new(path.as_os_str().as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Bytes::Text(text) => text.as_bytes(),
            Bytes::Raw(raw) => raw,
        }
    }

    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Bytes::Text(text) => text.into_bytes(),
            Bytes::Raw(raw) => raw,
        }
    }

    pub fn to_path(&self) -> PathBuf {
        PathBuf::from(OsStr::from_bytes(self.as_bytes()))
    }

    pub fn to_os_string(&self) -> OsString {
        OsString::from_vec(self.as_bytes().to_vec())
    }
}

/// An fd handed over, with the inode it must still be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdRecord {
    pub fd: RawFd,
    pub inode: u64,
}

impl FdRecord {
    /// The record of an open fd (its inode read now).
    pub fn of(fd: BorrowedFd<'_>) -> FdRecord {
        use std::os::fd::AsRawFd;
        FdRecord {
            fd: fd.as_raw_fd(),
            inode: nix::sys::stat::fstat(fd).map_or(0, |s| s.st_ino),
        }
    }

    /// The record of an fd this process holds open.
    pub fn of_raw(fd: std::os::fd::RawFd) -> FdRecord {
        // SAFETY: only borrowed for the fstat, by a caller that holds it open.
        FdRecord::of(unsafe { BorrowedFd::borrow_raw(fd) })
    }
}
