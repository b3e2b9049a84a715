//! Where things are when the config does not say: the app's name, the
//! default control socket, and how a client finds a running sheepdog.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// The config file's name without `.toml`, else the program's name.
pub(super) fn default_name(config: Option<&Path>, command: &[String]) -> String {
    // `node app.js` is "app", as pm2 names it.
    let script = || {
        crate::node::is_node_command(command)
            .then(|| command.iter().skip(1).find(|arg| !arg.starts_with('-')))
            .flatten()
            .filter(|arg| [".js", ".cjs", ".mjs", ".ts"].iter().any(|e| arg.ends_with(e)))
            .and_then(|arg| Path::new(arg).file_stem())
            .map(|s| s.to_string_lossy().into_owned())
    };
    config
        .and_then(Path::file_stem)
        .map(|s| s.to_string_lossy().into_owned())
        .or_else(script)
        .or_else(|| {
            command
                .first()
                .and_then(|c| Path::new(c).file_name())
                .map(|s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "sheepdog".into())
}

/// Where the control socket is when the config does not say:
/// `$RUNTIME_DIRECTORY/control.sock` under systemd's RuntimeDirectory= (the
/// shipped units set `RuntimeDirectory=sheepdog/NAME`), else
/// `/run/sheepdog/NAME/control.sock` for root, the same path, so that
/// `sheepdog status --config /etc/sheepdog/NAME.toml` typed in a root shell
/// finds it; for other users `$XDG_RUNTIME_DIR/sheepdog/NAME/control.sock` (or
/// `/tmp/sheepdog-UID/NAME/control.sock`). NAME is the config file's name
/// without `.toml` (`sheepdog` without a config file).
pub fn default_control_socket(config: Option<&Path>) -> PathBuf {
    if let Some(dir) = env_dir("RUNTIME_DIRECTORY") {
        return dir.join("control.sock");
    }
    let name = config
        .and_then(Path::file_stem)
        .map_or("sheepdog".into(), |s| s.to_string_lossy().into_owned());
    default_socket_dir().join(name).join("control.sock")
}

/// Where the default control sockets of this user's sheepdogs live, one
/// folder per name: `/run/sheepdog` for root, `$XDG_RUNTIME_DIR/sheepdog`
/// (or `/tmp/sheepdog-UID`) for other users. `sheepdog status` looks here.
/// A container may have no writable /run (a minimal image, a read-only root
/// file system): root's then go to `/tmp/sheepdog-0`, like other users'.
pub fn default_socket_dir() -> PathBuf {
    let run_writable = nix::unistd::access("/run", nix::unistd::AccessFlags::W_OK).is_ok();
    socket_dir_for(
        nix::unistd::getuid().as_raw(),
        env_dir("XDG_RUNTIME_DIR").map(Into::into),
        run_writable,
    )
}

/// A directory named by the environment (`RUNTIME_DIRECTORY`, whose first
/// entry counts when systemd lists several, or `XDG_RUNTIME_DIR`), if it
/// can be one: absolute. Anything else is ignored, with a warning, as if
/// it were not set (read at start and at each reload: a few lines at most).
pub fn env_dir(var: &str) -> Option<PathBuf> {
    let value = std::env::var_os(var)?;
    let dir = std::env::split_paths(&value).next().filter(|d| d.is_absolute());
    if dir.is_none() {
        log::warn!("ignoring {var}={:?}: not an absolute path", value.to_string_lossy());
    }
    dir
}

/// Makes `dir` (and its missing parents) mode 0700, or checks the one
/// there: it must belong to `uid`, and grant nothing in `closed` (0o077 for
/// a directory in /tmp, as ssh-agent and tmux require of theirs: anyone
/// could have made it first, to put a socket of their own in it and answer
/// `reload` with a fake "ok"; 0o022 under /run or $XDG_RUNTIME_DIR, where
/// systemd's RuntimeDirectory= makes them 0755).
pub fn private_dir(dir: &Path, uid: u32, closed: u32) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if meta.uid() != uid {
        return Err(format!(
            "{} belongs to uid {}, not to this sheepdog's uid {uid}: remove it, or set control_socket",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & closed != 0 {
        return Err(format!(
            "{} is open to others (mode {:o}): make it 0700 (chmod 700), or remove it",
            dir.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// A private directory of this user's for control sockets, when the
/// default one is someone else's: `/tmp/sheepdog-UID.XXXXXX`, made 0700
/// with a name nobody could guess to make it first.
pub fn fallback_socket_dir() -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let uid = nix::unistd::geteuid().as_raw();
    for _ in 0..16 {
        let mut random = [0u8; 6];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
            .map_err(|e| format!("cannot make a private directory in /tmp: /dev/urandom: {e}"))?;
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let dir = PathBuf::from(format!("/tmp/sheepdog-{uid}.{suffix}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot make {}: {e}", dir.display())),
        }
    }
    Err("cannot make a private directory in /tmp".into())
}

/// The private directories [`fallback_socket_dir`] made for this user:
/// ours, and closed to everyone else.
pub fn fallback_socket_dirs() -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let uid = nix::unistd::geteuid().as_raw();
    let prefix = format!("sheepdog-{uid}.");
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)))
        .filter(|e| {
            std::fs::symlink_metadata(e.path()).is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0)
        })
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

fn socket_dir_for(uid: u32, runtime_dir: Option<std::ffi::OsString>, run_writable: bool) -> PathBuf {
    match (uid, runtime_dir) {
        (0, _) if run_writable => PathBuf::from("/run/sheepdog"),
        (_, Some(runtime)) => PathBuf::from(runtime).join("sheepdog"),
        (uid, None) => PathBuf::from(format!("/tmp/sheepdog-{uid}")),
    }
}

/// Where a client looks for a running sheepdog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientTarget {
    /// `--socket`, or `control_socket` in the config file: exactly this one.
    Socket(PathBuf),
    /// The default path for this config file, or a sibling with a pid in its
    /// name (a clash at the default path makes a second sheepdog take one);
    /// the one that runs `config` is meant.
    Default { path: PathBuf, config: PathBuf },
    /// Nothing named: every sheepdog of this user.
    Any,
}

/// The control socket a client should use: `--socket`, else the config
/// file's `control_socket`, else the default for that config file. Only that
/// key is read, so a client works even while the rest of the file is being edited.
pub fn client_target(config: Option<&Path>, socket: Option<&Path>) -> Result<ClientTarget, Error> {
    if let Some(socket) = socket {
        return Ok(ClientTarget::Socket(socket.to_path_buf()));
    }
    let Some(path) = config else {
        return Ok(ClientTarget::Any);
    };
    let text = read_config(path)?;
    // A file being edited may not parse as a whole: the client still finds
    // its sheepdog from the one line it needs.
    let control_socket = match toml::from_str::<toml::Table>(&text) {
        Ok(table) => table.get("control_socket").and_then(|v| v.as_str()).map(str::to_string),
        Err(_) => control_socket_line(&text),
    };
    match control_socket.as_deref() {
        Some(socket) => {
            let socket = PathBuf::from(socket);
            let base = path.parent().filter(|p| !p.as_os_str().is_empty());
            Ok(ClientTarget::Socket(
                base.map_or_else(|| socket.clone(), |base| base.join(&socket)),
            ))
        }
        None => Ok(ClientTarget::Default {
            path: default_control_socket(Some(path)),
            config: canonical(path),
        }),
    }
}

/// `control_socket = "…"` read from its own line, before any `[section]`,
/// in a file that does not parse as a whole.
fn control_socket_line(text: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            return None;
        }
        let Some(rest) = line.strip_prefix("control_socket") else {
            continue;
        };
        let Some(value) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        let table: toml::Table = toml::from_str(&format!("v = {}", value.trim())).ok()?;
        return table.get("v")?.as_str().map(str::to_string);
    }
    None
}

/// The largest config file read: a config is a few KiB; anything past this
/// is not one (a log, an image, `/dev/zero` behind a symlink), and reading
/// it would hold the loop and take the machine's memory.
pub const MAX_CONFIG: u64 = 1 << 20;

/// A config file's text, read without ever blocking on it or reading it
/// without bound (it is read again in the loop, at each reload): opened
/// with `O_NONBLOCK` (a FIFO does not wait for a writer), only a regular
/// file is taken, of at most [`MAX_CONFIG`] bytes.
pub fn read_config(path: &Path) -> Result<String, Error> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| Error::from_io(format!("{shown}: cannot read the config"), e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::from_io(format!("{shown}: cannot read the config"), e))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "not a file"
        };
        return Err(Error::config(format!(
            "{shown}: cannot read the config: it is {what}, not a regular file"
        )));
    }
    if meta.len() > MAX_CONFIG {
        return Err(Error::config(format!(
            "{shown}: cannot read the config: {} bytes, over the {} KiB a config may have",
            meta.len(),
            MAX_CONFIG >> 10
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::from_io(format!("{shown}: cannot read the config"), e))?;
    if bytes.len() as u64 > MAX_CONFIG {
        return Err(Error::config(format!(
            "{shown}: cannot read the config: it grew past {} KiB while read",
            MAX_CONFIG >> 10
        )));
    }
    String::from_utf8(bytes).map_err(|_| Error::config(format!("{shown}: cannot read the config: it is not UTF-8")))
}

/// A config file's absolute path, as a running sheepdog reports it.
pub fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The program a worker command runs: `program` itself if it has a slash
/// (relative to the working directory), else the first executable match in
/// `path_var`, as execvp would find it.
pub fn find_program(program: &OsStr, path_var: &OsStr, working_directory: Option<&Path>) -> Result<PathBuf, String> {
    let program = Path::new(program);
    if program.as_os_str().as_bytes().contains(&b'/') {
        let full = match working_directory {
            // (joined to an absolute path, it is that path)
            Some(dir) => dir.join(program),
            None => program.to_path_buf(),
        };
        return if is_executable(&full) {
            Ok(program.to_path_buf())
        } else {
            Err(format!("{} is not an executable file", full.display()))
        };
    }
    std::env::split_paths(path_var)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| format!("`{}` not found in PATH", program.display()))
}

fn is_executable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok() && path.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_dir_is_made_private_and_a_shared_one_refused() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let uid = nix::unistd::getuid().as_raw();
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sheepdog-1000/app");
        assert_eq!(private_dir(&dir, uid, 0o077), Ok(()));
        for made in [dir.parent().unwrap(), &dir] {
            assert_eq!(
                std::fs::metadata(made).unwrap().mode() & 0o777,
                0o700,
                "{}",
                made.display()
            );
        }
        assert_eq!(private_dir(&dir, uid, 0o077), Ok(()), "ours and private: used as is");
        for mode in [0o777, 0o755, 0o770] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = private_dir(&dir, uid, 0o077).unwrap_err();
            assert!(error.contains("is open to others"), "{error}");
        }
        // Under /run, systemd's 0755 is fine; writable by others is not.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(private_dir(&dir, uid, 0o022), Ok(()));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(private_dir(&dir, uid, 0o022).is_err());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let error = private_dir(&dir, uid + 1, 0o077).unwrap_err();
        assert!(
            error.contains(&format!("belongs to uid {uid}, not to this sheepdog's uid {}", uid + 1)),
            "{error}"
        );
        let file = root.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(private_dir(&file, uid, 0o077).is_err());
    }

    #[test]
    fn a_client_finds_the_control_socket_in_a_file_being_edited() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.toml");
        let broken = "workers = 2\ncontrol_socket = \"run/ctl.sock\" # here\ncommand = [\"node\"\n[memory]\nlimit = \n";
        std::fs::write(&file, broken).unwrap();
        assert_eq!(
            client_target(Some(&file), None).unwrap(),
            ClientTarget::Socket(dir.path().join("run/ctl.sock"))
        );
        // Without the key (or with it only inside a section), the default.
        std::fs::write(&file, "command = [\n[memory]\ncontrol_socket = \"x.sock\"\n").unwrap();
        assert!(matches!(
            client_target(Some(&file), None).unwrap(),
            ClientTarget::Default { .. }
        ));
    }

    #[test]
    fn this_process_has_a_default_socket_dir() {
        let dir = default_socket_dir();
        assert!(dir.is_absolute(), "{}", dir.display());
        assert_eq!(
            dir,
            socket_dir_for(
                nix::unistd::getuid().as_raw(),
                env_dir("XDG_RUNTIME_DIR").map(Into::into),
                nix::unistd::access("/run", nix::unistd::AccessFlags::W_OK).is_ok()
            )
        );
    }

    #[test]
    fn default_sockets_live_under_run_for_root_and_the_runtime_dir_for_others() {
        assert_eq!(
            socket_dir_for(0, Some("/run/user/0".into()), true),
            PathBuf::from("/run/sheepdog")
        );
        assert_eq!(
            socket_dir_for(1000, Some("/run/user/1000".into()), true),
            PathBuf::from("/run/user/1000/sheepdog")
        );
        assert_eq!(socket_dir_for(1000, None, true), PathBuf::from("/tmp/sheepdog-1000"));
        // A container with no writable /run: root's go to /tmp, as others'.
        assert_eq!(socket_dir_for(0, None, false), PathBuf::from("/tmp/sheepdog-0"));
    }

    #[test]
    fn programs_are_found_as_execvp_would() {
        let path = std::ffi::OsStr::new("/nowhere:/usr/bin:/bin");
        let found = find_program(std::ffi::OsStr::new("sh"), path, None).unwrap();
        assert!(found.ends_with("sh") && found.is_absolute(), "{}", found.display());
        assert_eq!(
            find_program(std::ffi::OsStr::new("sh"), std::ffi::OsStr::new("/nowhere"), None),
            Err("`sh` not found in PATH".into())
        );
        assert_eq!(
            find_program(std::ffi::OsStr::new("/bin/sh"), std::ffi::OsStr::new(""), None),
            Ok(PathBuf::from("/bin/sh")),
            "a path with a slash is taken as it is"
        );
        assert_eq!(
            find_program(
                std::ffi::OsStr::new("./sh"),
                std::ffi::OsStr::new(""),
                Some(Path::new("/bin"))
            ),
            Ok(PathBuf::from("./sh")),
            "relative to the working directory"
        );
        assert!(
            find_program(std::ffi::OsStr::new("/etc/passwd"), std::ffi::OsStr::new(""), None)
                .unwrap_err()
                .contains("not an executable file")
        );
    }

    #[test]
    fn a_config_is_a_regular_file_of_at_most_1_mib_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.toml");
        let text = " ".repeat(MAX_CONFIG as usize);
        std::fs::write(&file, &text).unwrap();
        assert_eq!(
            read_config(&file).map(|t| t.len()).ok(),
            Some(text.len()),
            "exactly 1 MiB: read, whole"
        );
        std::fs::write(&file, format!("{text} ")).unwrap();
        let e = read_config(&file).unwrap_err().to_string();
        assert!(e.contains("1048577 bytes, over the 1024 KiB"), "{e}");
        std::fs::write(&file, b"workers = \xff").unwrap();
        assert!(read_config(&file).unwrap_err().to_string().contains("not UTF-8"));
        let e = read_config(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(e.contains("it is a device, not a regular file"), "{e}");
        let e = read_config(dir.path()).unwrap_err().to_string();
        assert!(e.contains("it is a directory"), "{e}");
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("app.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || tx.send(read_config(&path).map_err(|e| e.to_string())));
        let read = rx.recv_timeout(std::time::Duration::from_secs(10));
        if read.is_err() {
            // Let the blocked open go before failing.
            let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
        }
        let e = read.expect("read_config waited on the FIFO").unwrap_err();
        assert!(e.contains("it is a FIFO"), "{e}");
    }

    #[test]
    fn only_private_directories_of_our_own_are_fallback_socket_dirs() {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let uid = nix::unistd::geteuid().as_raw();
        let ours = fallback_socket_dir().unwrap();
        let open = PathBuf::from(format!("{}-open", ours.display()));
        std::fs::DirBuilder::new().mode(0o700).create(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o750)).unwrap();
        let file = PathBuf::from(format!("{}-file", ours.display()));
        std::fs::write(&file, "").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let theirs = PathBuf::from(format!("{}-theirs", ours.display()));
        std::fs::DirBuilder::new().mode(0o700).create(&theirs).unwrap();
        let chowned = uid == 0 && nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(1)), None).is_ok();
        let found = fallback_socket_dirs();
        for path in [&open, &theirs] {
            let _ = std::fs::remove_dir(path);
        }
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_dir(&ours);
        assert!(found.contains(&ours), "{found:?}");
        assert!(!found.contains(&open), "group may read it: {found:?}");
        assert!(!found.contains(&file), "not a directory: {found:?}");
        if chowned {
            assert!(!found.contains(&theirs), "another uid's: {found:?}");
        }
    }
}
