//! The functional core: the worker table and every supervision decision.
//!
//! [`Flock`] performs no syscalls and reads no clock. The shell feeds it
//! events (a worker exited or spoke, a request arrived, a spawn succeeded,
//! memory was measured, time passed) together with the current time, a
//! [`Moment`](crate::clock::Moment) (nanoseconds of CLOCK_MONOTONIC), and
//! performs the actions it returns, in order. Time is a number, so every
//! policy is tested with a fake clock, instantly and without processes.
//!
//! - [`model`]: events, actions, the policy, the worker records.
//! - `flock`: the table, the dispatch of events, stopping.
//! - `restart`: backoff, the crash-loop breaker, the spawn budget, filling slots.
//! - `health`: readiness, heartbeats, memory, the stall guard, the watchdog relay.
//! - `reload`: rolling reloads and their abort.
//! - `recycle`: replacing workers by age (`max_age`).
//! - `status`: the STATUS= line.
//! - `tally`: what the flock went through, counted (for status and metrics).
//! - `validate`: the flock is its own state (serde), handed to the next
//!   binary on an in-place upgrade; what that binary reads is checked there.
//!
//! Each policy keeps its own deadline; [`Flock::next_deadline`] is the
//! nearest of them, and the shell sleeps until then.

mod flock;
mod health;
pub mod model;
mod recycle;
mod reload;
mod restart;
mod status;
pub mod tally;
#[cfg(test)]
pub(crate) mod tests;
mod validate;

pub use flock::Flock;
pub use model::*;
pub use reload::ReloadOutcome;
pub use tally::{Cause, ListenQueue, Tally};
