//! sheepdog: a pre-fork process supervisor for network services under systemd.
//!
//! # Theory of operation
//!
//! systemd (or sheepdog itself) owns the listening sockets. sheepdog forks N
//! workers that each find the sockets at fds 3.. and `accept()` on them
//! directly; sheepdog never touches a connection. It watches the workers and
//! tells systemd the truth about the flock.
//!
//! The code is a functional core in an imperative shell:
//! - [`flock`] is the core: the worker table and every decision (backoff,
//!   crash loop, stop escalation, scaling), a pure state machine fed with
//!   events and the current time, returning actions.
//! - [`supervisor`] is the shell: one `poll(2)` loop that turns signals and
//!   child exits into events and performs the actions ([`spawn`] forks,
//!   [`systemd`] notifies).
//! - [`config`], [`units`] and [`sockets`] do everything that can fail before
//!   the first fork, so a bad setup exits 78 with nothing started.

pub mod cli;
pub mod config;
pub mod control;
pub mod core;
pub mod error;
pub mod logging;
pub mod shell;
pub mod systemd;
pub mod worker;

/// Human units ("500ms", "700MiB"), used across the crate.
pub use config::units;
