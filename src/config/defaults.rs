//! Every default of the config, and its bounds, named once. The README's
//! table and `sheepdog check` show these.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::values::{MemoryMeasure, Readiness, Spread};

pub const LISTEN: &str = "127.0.0.1:8080";
pub const READINESS: Readiness = Readiness::None;
pub const SPREAD: Spread = Spread::RoundRobin;
pub const READY_DELAY: Duration = Duration::from_secs(1);
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_SURGE: u32 = 1;
pub const STOP_SIGNAL: Signal = Signal::SIGTERM;
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_RESTARTS: u32 = 10;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
pub const BACKOFF_RESET: Duration = Duration::from_secs(30);
pub const MAX_SPAWN_RATE: u32 = 20;
pub const MIN_UPTIME: Duration = Duration::from_secs(5);
pub const MAX_AGE_JITTER: Duration = Duration::ZERO;
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// The message sheepdog pings node-ipc workers with (`{pid}`: the worker's pid).
pub const HEARTBEAT_PING: &str = "ping";
/// The heartbeat timeout, in intervals: the classic three missed pongs.
pub const HEARTBEAT_TIMEOUTS: u32 = 3;
pub const MEMORY_INTERVAL: Duration = Duration::from_secs(5);
pub const MEMORY_MEASURE: MemoryMeasure = MemoryMeasure::Pss;

/// The shortest heartbeat or memory interval: anything shorter is a busy loop.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The shortest first backoff: anything shorter is a fork storm.
pub const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// The shortest max_age: recycling more often is churn, not hygiene.
pub const MIN_MAX_AGE: Duration = Duration::from_secs(1);
/// The shortest ready_timeout for a worker that must say it is ready.
pub const MIN_READY_TIMEOUT: Duration = Duration::from_millis(100);
/// The smallest memory limit: under it every process is over, and every
/// worker would be replaced at every measurement.
pub const MIN_MEMORY_LIMIT: u64 = 1 << 20;
/// The most spawns per second: more and the guard against fork storms is
/// no guard (the first start is not rationed by it, only paced by the load).
pub const MAX_SPAWN_RATE_LIMIT: u32 = 1000;
/// The longest `name`: it becomes journal identifiers.
pub const MAX_NAME: usize = 64;
