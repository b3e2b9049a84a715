//! sheepdog: a pre-fork process supervisor for network services under systemd.
//!
//! # Theory of operation
//!
//! systemd (or sheepdog itself) owns the listening sockets. sheepdog forks N
//! workers that each find the sockets at fds 3.. and `accept()` on them
//! directly; sheepdog never touches a connection. It watches the workers and
//! tells systemd the truth about the flock.
//!
//! The code is a functional core in an imperative shell, and the folders
//! are the map:
//!
//! - [`core`] decides. [`core::Flock`] is the worker table and every policy
//!   (backoff and the crash-loop breaker, readiness, heartbeats, memory,
//!   rolling reloads, the watchdog relay, STATUS): a pure state machine fed
//!   with events and the time, returning actions. Each policy keeps its own
//!   deadline; the core names everything an action needs (a spawn carries its
//!   slot, generation and command), so the shell never guesses its state.
//! - [`shell`] acts. One loop ([`shell::supervisor`]) turns what happened
//!   into events, performs the core's actions in order, and sleeps until the
//!   next deadline. Every effect goes through the [`shell::system::System`]
//!   trait: [`shell::os::Os`] for real (epoll, fork/exec, /proc, sd_notify),
//!   a recording fake in its tests.
//! - [`worker`] is the plumbing to one worker: [`worker::spawn`] (the fd
//!   layout and environment of the worker contract, async-signal-safe child),
//!   [`worker::links`] (its notify socket or Node IPC channel),
//!   [`worker::channel`] (pure parsers of what it says), [`worker::proc_stats`]
//!   (its process tree's memory).
//! - [`systemd`] is the upward side: [`systemd::sockets`] (LISTEN_FDS or
//!   bind) and [`systemd::notify`] (a non-blocking sd_notify outbox, the
//!   watchdog, journald detection).
//! - [`control`] is the control socket: a typed [`control::protocol`]
//!   shared by the [`control::server`] in the loop, the [`control::client`]
//!   and the [`control::view`] of `sheepdog status`.
//! - [`observe`] is the opt-in HTTP side: `/healthz`, `/readyz` and the
//!   Prometheus `/metrics`, served by the same loop ([`observe::http`]).
//! - [`upgrade`] is the in-place upgrade (`sheepdog upgrade`): the state
//!   one binary hands the next under the same pid (the core's
//!   [`core::Flock`] itself, the shell's commands and fds), the probe of the new
//!   binary, the exec and the hand-back.
//! - [`config`] is the config file: its schema, values, named defaults and
//!   default paths, and `sheepdog check`'s printout.
//! - [`error`]: the one error type and its exit-code classes (2, 71, 78).
//!
//! Everything that can fail for a bad setup fails before the first fork, so
//! a bad config exits 78 with nothing started.

pub mod app;
pub mod build;
pub mod cli;
pub mod clients;
pub mod clock;
pub mod config;
pub mod control;
pub mod core;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod import;
pub mod install;
pub mod limits;
pub mod logging;
pub mod manual;
pub mod node;
pub mod observe;
pub mod shell;
pub mod spread;
pub mod systemd;
pub mod text;
pub mod upgrade;
pub mod wire;
pub mod worker;

/// Human units ("500ms", "700MiB"), used across the crate.
pub use config::units;
