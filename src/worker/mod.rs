//! Worker plumbing: starting a worker with the fd layout and environment of
//! the worker contract (`spawn`), its channel to sheepdog (`links` on the
//! shell side, `channel` for the pure parsing of what it says), and /proc
//! readers for its process tree (`proc_stats`), and whether it was killed by
//! the kernel's OOM killer (`oom`).

pub mod channel;
pub mod containment;
pub mod links;
pub mod oom;
pub mod output;
pub mod proc_stats;
pub mod sock_diag;
pub mod spawn;
