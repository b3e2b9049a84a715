//! `sheepdog install NAME`: pm2's `startup` and `save` in one step. The
//! app's config goes to `/etc/sheepdog/NAME.toml`, its address into a
//! drop-in of `sheepdog@NAME.socket`, what it needs of the service (its
//! user, its home directory) into a drop-in of `sheepdog@NAME.service`;
//! the socket is enabled and started, and the command waits until the app
//! serves. `sheepdog uninstall NAME` undoes all of it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::config::{ListenAddr, Settings};

pub const CONFIG_DIR: &str = "/etc/sheepdog";
const UNIT_DIR: &str = "/etc/systemd/system";

/// What `install` writes, where.
pub struct Plan {
    pub name: String,
    pub config: PathBuf,
    pub config_text: String,
    pub socket_dropin: PathBuf,
    pub socket_text: String,
    pub service_dropin: PathBuf,
    pub service_text: String,
    pub address: ListenAddr,
}

/// A name that can name a config file and a unit instance.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} cannot name a service: letters, digits, '-', '_' and '.' only",
            crate::text::printable(name)
        ))
    }
}

/// The config text for a command given on the command line: the command,
/// run in `dir`, as many workers as asked.
pub fn config_for_command(command: &[String], dir: &Path, workers: Option<&str>) -> String {
    let quoted = |s: &str| toml::Value::String(s.to_string()).to_string();
    let words: Vec<String> = command.iter().map(|w| quoted(w)).collect();
    let mut text = format!(
        "# Written by `sheepdog install`.\ncommand = [{}]\nworking_directory = {}\n",
        words.join(", "),
        quoted(&dir.display().to_string())
    );
    if let Some(workers) = workers {
        let workers = if workers.parse::<u32>().is_ok() {
            workers.to_string()
        } else {
            quoted(workers)
        };
        text += &format!("workers = {workers}\n");
    }
    text
}

/// Plans the install of `settings` (read from `config_text`) as `name`, on
/// `address`.
pub fn plan(name: &str, settings: &Settings, config_text: &str, address: ListenAddr) -> Result<Plan, String> {
    check_name(name)?;
    let queues = (settings.workers + settings.max_surge.max(1)).clamp(2, 64);
    let mut socket_text = String::from(
        "# Written by `sheepdog install`: the app's address, a queue per worker and one more.\n[Socket]\nListenStream=\n",
    );
    for _ in 0..queues {
        socket_text += &format!("ListenStream={}\n", listen_stream(&address));
    }
    let mut service_text = String::from("# Written by `sheepdog install`.\n[Service]\n");
    if let Some(dir) = &settings.working_directory {
        let meta = std::fs::metadata(dir).map_err(|e| format!("working_directory {}: {e}", dir.display()))?;
        // The app's files are its owner's: run it as that user, as pm2 did.
        if meta.uid() != 0 {
            let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid()))
                .ok()
                .flatten()
                .ok_or_else(|| format!("{} belongs to uid {}, which has no name", dir.display(), meta.uid()))?;
            service_text += &format!("DynamicUser=no\nUser={}\n", user.name);
        }
        if dir.starts_with("/home") || dir.starts_with("/root") {
            service_text += "ProtectHome=read-only\n";
        }
        // Its own files may be written (uploads, caches), as under pm2.
        service_text += &format!("ReadWritePaths={}\n", dir.display());
    }
    Ok(Plan {
        name: name.to_string(),
        config: Path::new(CONFIG_DIR).join(format!("{name}.toml")),
        config_text: config_text.to_string(),
        socket_dropin: Path::new(UNIT_DIR).join(format!("sheepdog@{name}.socket.d/sheepdog-install.conf")),
        socket_text,
        service_dropin: Path::new(UNIT_DIR).join(format!("sheepdog@{name}.service.d/sheepdog-install.conf")),
        service_text,
        address,
    })
}

/// `ListenStream=` takes `[::]:3000` as `[::]:3000`, a unix path as it is.
fn listen_stream(address: &ListenAddr) -> String {
    match address {
        ListenAddr::Tcp(addr) => addr.to_string(),
        ListenAddr::Unix(path) => path.display().to_string(),
    }
}

fn systemctl(args: &[&str]) -> Result<(), String> {
    let output = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "systemctl {} failed: {}",
            args.join(" "),
            crate::text::printable(String::from_utf8_lossy(&output.stderr).trim())
        ))
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes the plan, enables and starts the socket, then waits (up to
/// `timeout`) until the app answers on its address and every worker is
/// ready. Says each step on stdout.
pub fn carry_out(plan: &Plan, timeout: Duration) -> Result<(), String> {
    write(&plan.config, &plan.config_text)?;
    println!("wrote {}", plan.config.display());
    write(&plan.socket_dropin, &plan.socket_text)?;
    println!("wrote {} (listens on {})", plan.socket_dropin.display(), plan.address);
    write(&plan.service_dropin, &plan.service_text)?;
    println!("wrote {}", plan.service_dropin.display());
    systemctl(&["daemon-reload"])?;
    let socket = format!("sheepdog@{}.socket", plan.name);
    let service = format!("sheepdog@{}.service", plan.name);
    // A service of that name running already takes the new sockets only
    // when restarted.
    let _ = systemctl(&["stop", &service]);
    systemctl(&["enable", "--now", &socket])?;
    println!("enabled and started {socket} (it starts {service} at the first connection, and at boot)");
    wait_serving(plan, timeout)?;
    println!("{} serves on {}", plan.name, plan.address);
    Ok(())
}

/// Connects (which starts the service), then waits for every worker.
fn wait_serving(plan: &Plan, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let connect = || match &plan.address {
        ListenAddr::Tcp(addr) => {
            let target = if addr.ip().is_unspecified() {
                std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
            } else {
                *addr
            };
            std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).is_ok()
        }
        ListenAddr::Unix(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
    };
    // RuntimeDirectory=sheepdog/NAME: where the service's control socket is.
    let socket = Path::new("/run/sheepdog").join(&plan.name).join("control.sock");
    let mut connected = false;
    while Instant::now() < deadline {
        connected = connected || connect();
        if connected {
            let request = crate::control::protocol::Command::Status;
            if let Ok(crate::control::protocol::Reply::Status(status)) =
                crate::control::client::request(&socket, &request, Some(Duration::from_secs(2)))
                && status.supervisor.ready >= status.supervisor.desired
            {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "{} did not serve within {}s: see systemctl status sheepdog@{} and sheepdog logs {}",
        plan.name,
        timeout.as_secs(),
        plan.name,
        plan.name
    ))
}

/// Stops and disables the units, removes the config and the drop-ins.
pub fn uninstall(name: &str) -> Result<(), String> {
    check_name(name)?;
    let socket = format!("sheepdog@{name}.socket");
    let service = format!("sheepdog@{name}.service");
    let _ = systemctl(&["disable", "--now", &socket]);
    let _ = systemctl(&["stop", &service]);
    println!("stopped and disabled {socket} and {service}");
    for path in [
        Path::new(CONFIG_DIR).join(format!("{name}.toml")),
        Path::new(UNIT_DIR).join(format!("sheepdog@{name}.socket.d/sheepdog-install.conf")),
        Path::new(UNIT_DIR).join(format!("sheepdog@{name}.service.d/sheepdog-install.conf")),
    ] {
        match std::fs::remove_file(&path) {
            Ok(()) => println!("removed {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        if let Some(dir) = path.parent().filter(|d| d.starts_with(UNIT_DIR)) {
            let _ = std::fs::remove_dir(dir);
        }
    }
    systemctl(&["daemon-reload"])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    #[test]
    fn the_plan_puts_the_address_in_the_socket_and_the_owner_in_the_service() {
        let dir = tempfile::tempdir().unwrap();
        let text = config_for_command(&["node".into(), "app.js".into()], dir.path(), Some("2"));
        assert!(text.contains("command = [\"node\", \"app.js\"]\n"), "{text}");
        assert!(text.contains("workers = 2\n"), "{text}");
        let settings = Settings::from_toml(&text, None, &Overrides::default()).unwrap();
        let plan = plan("shop", &settings, &text, "[::]:3000".parse().unwrap()).unwrap();
        assert_eq!(plan.config, Path::new("/etc/sheepdog/shop.toml"));
        assert_eq!(plan.socket_text.matches("ListenStream=[::]:3000\n").count(), 3);
        assert!(
            plan.socket_text.contains("ListenStream=\n"),
            "the template's are cleared"
        );
        assert!(
            plan.service_text
                .contains(&format!("ReadWritePaths={}", dir.path().display()))
        );
        assert!(check_name("../x").is_err());
        assert!(check_name("my-app_2").is_ok());
    }
}
