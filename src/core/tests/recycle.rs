//! Recycling by age: each worker replaced once it has run `max_age` plus its
//! jitter, replacement first, within the surge, one at a time and spread out.

use super::*;

fn aging(workers: usize, max_age: Duration, jitter: Duration) -> Policy {
    let mut p = policy(workers);
    p.recycle = RecyclePolicy {
        max_age: Some(max_age),
        jitter,
    };
    p
}

#[test]
fn every_worker_is_recycled_replacement_first_one_at_a_time() {
    let mut h = Harness::new(aging(4, Duration::from_secs(3), Duration::from_secs(1)));
    h.start();
    let first: Vec<Pid> = h.serving_pids_after(1000 * MS);
    let mut most_live = 0;
    let mut t = 1000;
    while t < 20_000 {
        t += 50;
        h.at(t * MS);
        let live = h.flock.workers().iter().filter(|w| !w.is_stopping()).count();
        most_live = most_live.max(live);
        // Those told to stop drain and exit at once here.
        let stopping: Vec<Pid> = h
            .flock
            .workers()
            .iter()
            .filter(|w| w.is_stopping())
            .map(|w| w.pid)
            .collect();
        for pid in stopping {
            h.exit(pid, ExitStatus::Code(0));
        }
    }
    assert!(most_live <= 4 + 1, "never more than max_surge extra: {most_live}");
    for pid in first {
        assert!(
            !h.flock.workers().iter().any(|w| w.pid == pid),
            "worker {pid} was never recycled"
        );
    }
    assert!(h.flock.recycled() >= 4);
    assert_eq!(h.flock.total_restarts(), 0, "a recycle is not a crash");
    assert_eq!(logged("reached its max age").len(), h.flock.recycled() as usize);
}

#[test]
fn recycles_begin_a_spacing_apart_lowest_slot_first() {
    // No jitter: all four are due at 3 s; they begin 750 ms apart, slot by slot.
    let mut h = Harness::new(aging(4, Duration::from_secs(3), Duration::ZERO));
    h.start();
    let mut begun: Vec<(Pid, usize, u32)> = Vec::new();
    let mut t = 0;
    while t < 6000 {
        t += 10;
        h.at(t * MS);
        for worker in h.flock.workers() {
            if worker.retiring() == Some(Retire::MaxAge) && !begun.iter().any(|(pid, ..)| *pid == worker.pid) {
                begun.push((worker.pid, worker.slot, t));
            }
        }
    }
    let slots: Vec<usize> = begun.iter().map(|(_, slot, _)| *slot).collect();
    let times: Vec<u32> = begun.iter().map(|(.., t)| *t).collect();
    assert_eq!(slots[..4], [0, 1, 2, 3]);
    assert_eq!(times[..4], [3000, 3750, 4500, 5250]);
    assert_eq!(h.flock.recycle_deadline().map(|d| d > h.now), Some(true));
}

#[test]
fn the_jitter_is_drawn_once_per_worker() {
    let mut h = Harness::new(aging(8, Duration::from_secs(60), Duration::from_secs(30)));
    h.start();
    let due: Vec<Moment> = h.flock.workers().iter().map(|w| w.recycle_at.unwrap()).collect();
    for at in &due {
        let offset = at.saturating_duration_since(h.t0);
        assert!(
            offset >= Duration::from_secs(60) && offset < Duration::from_secs(90),
            "{offset:?}"
        );
    }
    let distinct: std::collections::BTreeSet<Moment> = due.iter().copied().collect();
    assert!(distinct.len() >= 7, "eight workers, eight draws: {due:?}");
    h.run_until(Duration::from_secs(30));
    let later: Vec<Moment> = h.flock.workers().iter().map(|w| w.recycle_at.unwrap()).collect();
    assert_eq!(due, later, "drawn when it started, never again");
}

#[test]
fn without_max_age_nothing_is_recycled() {
    let mut h = Harness::serving(policy(2));
    assert!(h.flock.workers().iter().all(|w| w.recycle_at.is_none()));
    h.run_until(Duration::from_secs(600));
    assert_eq!(h.flock.recycled(), 0);
    assert_eq!(h.flock.recycle_deadline(), None);
}

#[test]
fn each_worker_draws_its_own_jitter() {
    let h = Harness::new(aging(2, Duration::from_secs(60), Duration::from_secs(60)));
    let now = h.t0;
    let due = |pid, slot, generation| h.flock.recycle_at(pid, slot, generation, now).unwrap();
    // The same worker always draws the same; any other field drawn differs.
    assert_eq!(due(4000, 1, 1), due(4000, 1, 1));
    assert_ne!(due(4000, 1, 1), due(4001, 1, 1), "pid");
    assert_ne!(due(4000, 1, 1), due(4000, 2, 1), "slot");
    assert_ne!(due(4000, 1, 1), due(4000, 1, 2), "generation");
    for pid in 4000..4100 {
        let at = due(pid, 0, 1);
        assert!(at >= now + Duration::from_secs(60) && at < now + Duration::from_secs(120));
    }
}

/// Found by the simulator (seed 3650559709271155169, 5 workers): when the
/// spacing holds recycles back, several workers are due at the same moment;
/// the lowest slot went first, and each slot's next worker came due again
/// in time to pass the highest slot over, round after round. The one due
/// longest goes first.
#[test]
fn the_worker_due_longest_is_recycled_first() {
    // Three workers, 10 s each, recycles at least 3.33 s apart.
    let mut h = Harness::serving(aging(3, Duration::from_secs(10), Duration::ZERO));
    // Slot 0's worker crashes at 2 s: its replacement is due at 12 s,
    // slots 1 and 2 at 10 s.
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    h.at(3000 * MS);
    let (slot_0, slot_2) = (h.pid_of(0), h.pid_of(2));
    // At 10 s slot 1 is recycled; then slot 2 (due at 10 s) and slot 0
    // (due at 12 s) wait for the spacing, to 13.33 s.
    h.run_until(Duration::from_secs(13) + 400 * MS);
    let retiring: Vec<(usize, Pid)> = h
        .flock
        .workers()
        .iter()
        .filter(|w| {
            matches!(
                w.state,
                WorkerState::Ready {
                    retiring: Some(Retire::MaxAge),
                    ..
                }
            )
        })
        .map(|w| (w.slot, w.pid))
        .collect();
    assert_eq!(retiring, vec![(2, slot_2)], "slot 0 (pid {slot_0}) is due later");
}
