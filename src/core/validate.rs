//! The flock as data, for the in-place upgrade. [`Flock`] and its records
//! are themselves the state (serde): the old binary writes the flock as it
//! is, the next one reads it back and validates it here. A new field needs
//! a `#[serde(default)]` and nothing else (the rule is at
//! `build::STATE_FORMAT`); time points are written relative to the moment
//! the state was taken (`clock::relative_to`), and one out of range is
//! refused as the state is read.
//!
//! Validation bounds what a config could never give, so that a state this
//! build cannot take makes the new binary hand back rather than crash or
//! spin: an error names what is wrong, nothing panics.

use std::time::Duration;

use super::flock::{Flock, Phase};
use super::model::Policy;
use crate::clock::MAX_OFFSET;
use crate::config::MAX_WORKERS;

impl Flock {
    /// The flock as it is handed over: what a pass keeps only for itself
    /// is left at its start. A stopping flock has nothing to hand over, it
    /// is on its way out.
    pub fn to_hand_over(&self) -> Result<Flock, String> {
        if self.phase != Phase::Running {
            return Err("the supervisor is stopping".into());
        }
        Ok(Flock {
            note: None,
            spawned_this_pass: 0,
            load: Default::default(),
            worker_lines: super::flock::worker_lines(),
            last_look: None,
            due: None,
            quiet: false,
            ..self.clone()
        })
    }

    /// The flock a hand-over's state describes, checked and bounded.
    pub fn validate(mut self) -> Result<Flock, String> {
        let most = MAX_WORKERS as usize;
        if self.generation == 0 || self.newest_generation < self.generation {
            return Err(format!(
                "generation {} (newest {}) cannot be",
                self.generation, self.newest_generation
            ));
        }
        if !(1..=most).contains(&self.desired) || self.slots.len() > 2 * most {
            return Err(format!(
                "{} workers desired in {} slots is out of range",
                self.desired,
                self.slots.len()
            ));
        }
        if self.workers.len() > 4 * most {
            return Err(format!("{} workers is more than one sheepdog runs", self.workers.len()));
        }
        let mut pids = std::collections::HashSet::new();
        for worker in &self.workers {
            if worker.pid <= 1 || !pids.insert(worker.pid) || worker.slot >= 2 * most {
                return Err(format!(
                    "worker {} (pid {}) cannot be: a pid of 0 or 1, twice, or a slot out of range",
                    worker.slot, worker.pid
                ));
            }
        }
        validate_policy(&mut self.policy)?;
        if let Some(rollout) = &mut self.rollout {
            validate_policy(&mut rollout.previous)?;
            rollout.previous_desired = rollout.previous_desired.clamp(1, most);
        }
        let budget = &mut self.budget;
        let finite = [budget.tokens, budget.capacity, budget.per_second];
        if finite.iter().any(|v| !v.is_finite() || *v < 0.0) || budget.per_second < 1.0 {
            return Err(format!("spawn budget {finite:?} cannot be"));
        }
        budget.tokens = budget.tokens.min(budget.capacity);
        Ok(self)
    }
}

/// Every duration of a policy, named, and whether the loop waits on it as
/// an interval (then it is never zero: the loop would spin).
fn durations(policy: &Policy) -> Vec<(&'static str, Duration, bool)> {
    let restart = &policy.restart;
    let mut all = vec![
        ("ready_delay", policy.ready_delay, false),
        ("ready_timeout", policy.ready_timeout, false),
        ("memory interval", policy.memory_interval, true),
        ("stop_timeout", policy.stop_timeout, false),
        ("restart_window", restart.window, false),
        ("backoff_initial", restart.backoff_initial, false),
        ("backoff_max", restart.backoff_max, false),
        ("backoff_reset", restart.backoff_reset, false),
        ("min_uptime", restart.min_uptime, false),
        ("max_age_jitter", policy.recycle.jitter, false),
    ];
    all.extend(policy.heartbeat.iter().flat_map(|h| {
        [
            ("heartbeat interval", h.interval, true),
            ("heartbeat timeout", h.timeout, true),
        ]
    }));
    all.extend(policy.recycle.max_age.map(|a| ("max_age", a, true)));
    all.extend(policy.watchdog.map(|w| ("watchdog", w, true)));
    all.extend(policy.listener_check.map(|c| ("listener check", c, true)));
    all
}

fn validate_policy(policy: &mut Policy) -> Result<(), String> {
    for (what, duration, interval) in durations(policy) {
        // No config gives a duration this long (a year at most, a heartbeat
        // timeout three): one that is could only overflow the clock later.
        if duration > MAX_OFFSET {
            return Err(format!("{what} of {}s cannot be", duration.as_secs()));
        }
        if interval && duration.is_zero() {
            return Err(format!("a {what} of zero cannot be"));
        }
    }
    let most = MAX_WORKERS as usize;
    policy.workers = policy.workers.clamp(1, most);
    policy.min_ready = policy.min_ready.clamp(1, most);
    policy.max_surge = policy.max_surge.min(most);
    policy.cpus = policy.cpus.clamp(1, 1 << 16);
    policy.restart.max_spawn_rate = policy.restart.max_spawn_rate.max(1);
    Ok(())
}
