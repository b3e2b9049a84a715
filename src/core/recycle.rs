//! Recycling by age (`max_age`): workers are replaced, replacement first,
//! once they have run long enough, so that slow leaks never pile up.
//!
//! Where peers falter, this does not:
//! - the jitter is drawn once per worker, when it starts (not again at every
//!   check, which collapses the spread);
//! - recycles begin one at a time, at least `max_age / workers` apart, the
//!   one due longest first (then the lowest slot): a flock started together
//!   is spread out on its first round and stays spread, and no slot is
//!   passed over;
//! - each replacement is started first and within `max_surge`, on the same
//!   path as memory recycling, and counted as a recycle, not a crash.

use std::time::Duration;

use crate::clock::Moment;
use serde::{Deserialize, Serialize};

use log::info;

use super::flock::{Flock, seconds};
use super::model::*;

/// The last recycle begun, for the spacing between recycles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Recycling {
    pub last_begun: Option<Moment>,
    /// Workers recycled so far.
    pub count: u32,
}

/// A number in [0, 1) drawn from `seed` (splitmix64): the same worker always
/// draws the same, two workers almost never do.
fn draw(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

impl Flock {
    /// When a worker started at `now` is due: `max_age` plus its own share
    /// of the jitter, drawn once, here.
    pub(super) fn recycle_at(&self, pid: Pid, slot: usize, generation: u32, now: Moment) -> Option<Moment> {
        let max_age = self.policy.recycle.max_age?;
        // pid, slot and generation (the low 16 bits of each of the last two)
        // in fields of their own.
        let seed = u64::from(pid as u32) << 32 | u64::from(slot as u16) << 16 | u64::from(generation as u16);
        let jitter = self.policy.recycle.jitter.mul_f64(draw(seed));
        Some(now + max_age + jitter)
    }

    /// The shortest time between two recycles beginning.
    fn recycle_spacing(&self) -> Option<Duration> {
        let max_age = self.policy.recycle.max_age?;
        Some(max_age / self.desired.max(1) as u32)
    }

    /// When the next recycle may begin, and whose: the one due longest,
    /// then the lowest slot. (The lowest slot first among all those the
    /// spacing held back passed a higher slot over, round after round.)
    fn next_recycle(&self) -> Option<(Moment, usize)> {
        let spacing = self.recycle_spacing()?;
        let not_before = self.recycling.last_begun.map(|last| last + spacing);
        self.workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.serves_for_good())
            .filter_map(|(index, w)| {
                let due = w.recycle_at?;
                Some((due.max(not_before.unwrap_or(w.started_at)), due, w.slot, index))
            })
            .min_by_key(|(at, due, slot, _)| (*at, *due, *slot))
            .map(|(at, .., index)| (at, index))
    }

    /// Marks the worker whose time has come for replacement, one per pass.
    pub(super) fn recycle_aged(&mut self, now: Moment) {
        let Some((at, index)) = self.next_recycle() else { return };
        if at > now {
            return;
        }
        let worker = &mut self.workers[index];
        if let WorkerState::Ready { since, .. } = worker.state {
            info!(
                "worker {} (pid {}) reached its max age after {}; replacing it, replacement first",
                worker.slot,
                worker.pid,
                seconds(now.saturating_duration_since(worker.started_at))
            );
            worker.state = WorkerState::Ready {
                since,
                retiring: Some(Retire::MaxAge),
            };
            self.recycling.last_begun = Some(now);
            self.recycling.count += 1;
        }
    }

    pub(super) fn recycle_deadline(&self) -> Option<Moment> {
        self.next_recycle().map(|(at, _)| at)
    }

    /// Workers recycled by age so far.
    pub fn recycled(&self) -> u32 {
        self.recycling.count
    }
}

#[cfg(test)]
mod tests {
    use super::draw;

    #[test]
    fn draws_are_spread_over_the_unit_interval_and_repeatable() {
        let draws: Vec<f64> = (0..1000u64).map(draw).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        assert_eq!(draw(42), draw(42));
        let low = draws.iter().filter(|d| **d < 0.5).count();
        assert!((400..600).contains(&low), "{low} of 1000 below one half");
    }

    #[test]
    fn the_draw_is_splitmix64() {
        // The published first outputs of splitmix64 seeded with 0 and 1234567.
        assert_eq!(draw(0), (0xe220_a839_7b1d_cdaf_u64 >> 11) as f64 / (1u64 << 53) as f64);
        assert_eq!(
            draw(1_234_567),
            (0x599e_d017_fb08_fc85_u64 >> 11) as f64 / (1u64 << 53) as f64
        );
    }
}
