//! The imperative shell: the loop that feeds the core and performs its
//! actions.
//!
//! - [`system`]: the seam, a small trait for every effect (fork/exec,
//!   signals, /proc, sd_notify, control replies, the clock, waiting).
//! - [`os`]: the real one, over epoll.
//! - [`supervisor`]: the loop's logic, over any `System`; tested against a
//!   recording fake.

pub mod os;
pub mod signals;
pub mod supervisor;
pub mod system;
#[cfg(test)]
mod tests;
