//! Who holds a TCP port: for "address already in use", the process that
//! listens there, read from /proc (the listening socket's inode in
//! /proc/net/tcp{,6}, then the process with that socket among its fds).

use std::net::SocketAddr;

/// `pid 4419 (node app.js)`, or what can be known of the holder of `addr`'s
/// port; None when no listener is found at all.
pub fn who_listens(addr: &SocketAddr) -> Option<String> {
    let inodes = listening_inodes(addr.port());
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|target| target.to_str().map(str::to_string))
                .and_then(|target| target.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok())
                .is_some_and(|inode| inodes.contains(&inode))
        });
        if holds {
            return Some(format!("pid {pid} ({})", command_line(pid)));
        }
    }
    Some("a process this user cannot look into".into())
}

/// The inodes of the sockets listening on `port`, any address.
fn listening_inodes(port: u16) -> Vec<u64> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if fields.len() < 10 || fields[3] != "0A" {
                continue;
            }
            let local_port = fields[1]
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if local_port == Some(port)
                && let Ok(inode) = fields[9].parse::<u64>()
                && inode != 0
            {
                inodes.push(inode);
            }
        }
    }
    inodes
}

fn command_line(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let words: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .take(6)
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    let line = crate::text::printable(&words.join(" ")).into_owned();
    if line.is_empty() {
        "?".into()
    } else {
        line.chars().take(120).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_of_a_port_is_this_process_when_it_listens_there() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let holder = who_listens(&addr).expect("a listener is found");
        assert!(holder.starts_with(&format!("pid {} (", std::process::id())), "{holder}");
        drop(listener);
        assert_eq!(who_listens(&addr), None);
    }
}
