//! The systemd side: the listening sockets (inherited with LISTEN_FDS, or
//! bound), and what sheepdog tells systemd (sd_notify, the watchdog, the
//! journal's log format).

pub mod holder;
pub mod notify;
pub mod sockets;
