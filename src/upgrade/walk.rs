//! Opening a path without following anyone else's symlinks.
//!
//! `sheepdog upgrade --all` runs as root (the package's postinst) and
//! reaches control sockets inside other processes' roots, in directories
//! their users may own: a user who swaps a directory on such a path for a
//! symlink must not lead root to a socket elsewhere. So a path is walked
//! one component at a time from a directory fd that stands for its root
//! (`/proc/PID/root`, or `/`), with `O_PATH | O_NOFOLLOW`; a symlink is
//! followed only when its owner is trusted (root, or the caller), and an
//! absolute target is resolved from the same root.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

use nix::fcntl::{OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};

/// The most symlinks one walk follows (the kernel's own limit is 40).
const MAX_HOPS: usize = 40;

/// Where a walk ended: the directory that holds the last component (open
/// with `O_PATH`), the component's name there, and what it is.
pub struct Found {
    pub dir: OwnedFd,
    pub name: OsString,
    pub stat: FileStat,
}

impl Found {
    pub fn kind(&self) -> SFlag {
        SFlag::from_bits_truncate(self.stat.st_mode & SFlag::S_IFMT.bits())
    }

    /// A path this process can use for it (`/proc/self/fd/DIR/NAME`): the
    /// walked directories are not looked up again.
    pub fn through_fd(&self) -> std::path::PathBuf {
        use std::os::fd::AsRawFd;
        Path::new(&format!("/proc/self/fd/{}", self.dir.as_raw_fd())).join(&self.name)
    }
}

/// Walks `path` from `root`, following a symlink only when its owner is one
/// of `trusted`; `path` must not end in `..` or `.`.
pub fn resolve(root: &OwnedFd, path: &Path, trusted: &[u32]) -> Result<Found, String> {
    let shown = crate::text::printable(&path.to_string_lossy()).into_owned();
    let mut pending: Vec<OsString> = Vec::new();
    push_front(&mut pending, path);
    let mut dirs: Vec<OwnedFd> = vec![root.try_clone().map_err(|e| format!("{shown}: {e}"))?];
    let mut hops = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            if dirs.len() > 1 {
                dirs.pop();
            }
            continue;
        }
        if name.is_empty() {
            // An absolute symlink target: from the root again.
            dirs.truncate(1);
            continue;
        }
        let dir = dirs.last().expect("the root is never popped");
        let opened = openat(
            dir.as_fd(),
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("{shown}: {}: {}", name.to_string_lossy(), e.desc()))?;
        let stat = fstat(&opened).map_err(|e| format!("{shown}: {}", e.desc()))?;
        let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
        if kind == SFlag::S_IFLNK {
            if !trusted.contains(&stat.st_uid) {
                return Err(format!(
                    "{shown}: {} is a symlink of uid {}, which is not followed",
                    crate::text::printable(&name.to_string_lossy()),
                    stat.st_uid
                ));
            }
            hops += 1;
            if hops > MAX_HOPS {
                return Err(format!("{shown}: too many symlinks"));
            }
            let target = readlinkat(&opened, "").map_err(|e| format!("{shown}: {}", e.desc()))?;
            push_front(&mut pending, Path::new(&target));
            continue;
        }
        if pending.is_empty() {
            let dir = dir.try_clone().map_err(|e| format!("{shown}: {e}"))?;
            return Ok(Found { dir, name, stat });
        }
        if kind != SFlag::S_IFDIR {
            return Err(format!("{shown}: {} is not a directory", name.to_string_lossy()));
        }
        dirs.push(opened);
    }
    Err(format!("{shown}: names no file"))
}

/// Puts the components of `path` before those pending (a stack: the next
/// one last); an absolute path starts with an empty name, "back to the root".
fn push_front(pending: &mut Vec<OsString>, path: &Path) {
    let mut names: Vec<OsString> = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir => names.push(OsString::new()),
            Component::Normal(name) => names.push(name.to_os_string()),
            Component::ParentDir => names.push("..".into()),
            Component::CurDir | Component::Prefix(_) => {}
        }
    }
    pending.extend(names.into_iter().rev());
}

/// `/` (or a process's root) open as a directory to walk from.
pub fn open_root(path: &Path) -> Result<OwnedFd, String> {
    nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("{}: {}", path.display(), e.desc()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn walk(root: &Path, path: &str, trusted: &[u32]) -> Result<Found, String> {
        resolve(&open_root(root).unwrap(), Path::new(path), trusted)
    }

    #[test]
    fn trusted_symlinks_are_followed_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::create_dir_all(base.join("real/sub")).unwrap();
        std::fs::write(base.join("real/sub/file"), "x").unwrap();
        symlink("/real", base.join("abs")).unwrap();
        symlink("real/sub", base.join("rel")).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        for path in ["/real/sub/file", "/abs/sub/file", "/rel/file", "/real/../rel/file"] {
            let found = walk(base, path, &[me]).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(found.name, "file", "{path}");
            assert_eq!(found.kind(), SFlag::S_IFREG);
            assert_eq!(std::fs::read_to_string(found.through_fd()).unwrap(), "x");
        }
        // ".." never climbs above the root it was given.
        assert!(walk(base, "/../../real/sub/file", &[me]).is_ok());
    }

    #[test]
    fn a_symlink_of_someone_else_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::create_dir(base.join("real")).unwrap();
        std::fs::write(base.join("real/file"), "x").unwrap();
        symlink("real", base.join("link")).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let error = walk(base, "/link/file", &[me + 1]).err().unwrap();
        assert!(error.contains("is a symlink of uid"), "{error}");
        assert!(
            walk(base, "/real/file/more", &[me])
                .err()
                .unwrap()
                .contains("not a directory")
        );
        assert!(walk(base, "/nothing", &[me]).is_err());
    }
}
