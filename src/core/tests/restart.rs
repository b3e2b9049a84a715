//! Crashes: backoff, the crash-loop breaker, the spawn budget.

use super::*;

#[test]
fn a_crashed_worker_is_replaced_in_its_slot_at_once_the_first_time() {
    let mut h = Harness::serving(policy(2));
    let old = h.pid_of(1);
    assert_eq!(spawns(&h.exit(old, ExitStatus::Signaled(Signal::SIGKILL))), vec![1]);
    assert_ne!(h.pid_of(1), old);
    assert_eq!(statuses(&h.log).last().unwrap(), "1/2 ready · 1 restarts");
    // A second crash in a row waits out backoff_initial.
    let again = h.pid_of(1);
    assert!(spawns(&h.exit(again, ExitStatus::Code(1))).is_empty());
    assert_eq!(h.flock.next_deadline(), Some(h.now + 100 * MS));
    assert_eq!(spawns(&h.at(2100 * MS)), vec![1]);
}

/// Crashes the worker `victim` names, `n` times in a row, in slot 0; the
/// delay before each respawn in ms (0: at once), the clock moved to it.
fn respawn_delays(h: &mut Harness, n: usize, victim: impl Fn(&Harness) -> Pid) -> Vec<u128> {
    let mut delays = Vec::new();
    for _ in 0..n {
        let crashed_at = h.now;
        if spawns(&h.exit(victim(h), ExitStatus::Code(1))).is_empty() {
            let respawn = h.flock.next_deadline().unwrap();
            delays.push((respawn - crashed_at).as_millis());
            h.now = respawn;
            assert_eq!(spawns(&h.feed(Event::Tick)), vec![0]);
        } else {
            delays.push(0);
        }
    }
    delays
}

#[test]
fn backoff_doubles_per_failure_up_to_the_cap_then_resets_after_a_stable_run() {
    let mut p = policy(1);
    p.restart.max_restarts = 100;
    let mut h = Harness::new(p);
    h.start();
    let delays = respawn_delays(&mut h, 7, |h| h.pid_of(0));
    assert_eq!(delays, vec![0, 100, 200, 400, 800, 1000, 1000]);

    // Ready for backoff_reset (10 s): the next crash starts from the bottom again.
    let start = h.now - h.t0;
    h.run_until(start + 1000 * MS + Duration::from_secs(10));
    let again = h.exit(h.pid_of(0), ExitStatus::Code(1));
    assert_eq!(spawns(&again), vec![0], "at once, as a first failure");
}

#[test]
fn a_crash_loop_stops_the_flock_and_exits_non_zero() {
    let mut h = Harness::new(policy(2));
    h.start();
    let mut exits = 0;
    // Every worker crashes the moment it starts, until the breaker trips.
    for _ in 0..MAX_PASSES {
        if h.flock.is_shutting_down() {
            break;
        }
        let starting = h.flock.workers().iter().find(|w| w.is_starting()).map(|w| w.pid);
        match starting {
            Some(pid) => {
                exits += 1;
                h.exit(pid, ExitStatus::Code(3));
            }
            None => {
                let deadline = h.flock.next_deadline().expect("a respawn is due");
                h.now = deadline;
                h.feed(Event::Tick);
            }
        }
    }
    // max_restarts = 5: the 6th unrequested exit in the window is the verdict.
    assert_eq!(exits, 6);
    assert!(h.log.contains(&Action::Notify(Upward::Stopping)));
    // The surviving worker is stopped gracefully, then the supervisor exits 1.
    let survivors: Vec<Pid> = h.flock.workers().iter().map(|w| w.pid).collect();
    let mut outcome = None;
    for pid in survivors {
        assert!(signals(&h.log).contains(&(pid, Signal::SIGTERM)));
        let actions = h.exit(pid, ExitStatus::Code(0));
        outcome = outcome.or(actions.iter().find_map(|a| match a {
            Action::Exit { code, reason } => Some((*code, reason.clone())),
            _ => None,
        }));
    }
    let outcome = outcome.or(h.log.iter().find_map(|a| match a {
        Action::Exit { code, reason } => Some((*code, reason.clone())),
        _ => None,
    }));
    let (code, reason) = outcome.expect("the supervisor exits");
    assert_eq!(code, 1);
    assert!(
        reason.starts_with("crash loop: 6 unrequested worker exits within 1m (max_restarts = 5)"),
        "{reason}"
    );
    // Two initial spawns, then restarts: the first of each slot at once, the
    // next after their backoff; the 5th exit's restart was still in backoff
    // when the 6th broke the loop.
    assert_eq!(spawns(&h.log).len(), 2 + 4);
}

#[test]
fn failures_outside_the_window_do_not_count() {
    let mut h = Harness::new(crash_limit(2, Duration::from_secs(10)));
    h.start();
    for round in 0..5u64 {
        h.run_until(Duration::from_secs(20 * round + 19));
        h.exit(h.pid_of(0), ExitStatus::Code(1));
        assert!(!h.flock.is_shutting_down(), "round {round}");
    }
}

#[test]
fn spawns_per_second_are_bounded_whatever_happens() {
    let mut p = policy(2);
    p.restart.max_spawn_rate = 5;
    p.restart.max_restarts = 10_000;
    p.restart.backoff_initial = 10 * MS;
    p.restart.backoff_max = 10 * MS;
    let mut h = Harness::new(p);
    h.start();
    // Crash every worker the moment it starts, and scale up 20 times, for 10 s.
    for _ in 0..20 {
        h.feed(Event::Request(Request::ScaleUp));
    }
    for _ in 0..MAX_PASSES {
        if h.now >= h.t0 + Duration::from_secs(10) {
            break;
        }
        let starting: Vec<Pid> = h.flock.workers().iter().map(|w| w.pid).collect();
        for pid in starting {
            h.exit(pid, ExitStatus::Code(1));
        }
        match h.flock.next_deadline() {
            Some(deadline) => {
                h.now = deadline;
                h.feed(Event::Tick);
            }
            None => break,
        }
    }
    // Burst capacity (max(workers, rate) = 5) plus 5 per second for 10 s.
    let total = spawns(&h.log).len();
    assert!(total <= 5 + 5 * 10 + 1, "{total} spawns");
    assert!(total >= 40, "the budget refills ({total} spawns)");
}

#[test]
fn a_failed_fork_backs_off_like_a_crash() {
    let mut h = Harness::new(policy(1));
    let actions = h.flock.handle(h.now, Event::Tick);
    assert_eq!(spawns(&actions), vec![0]);
    let Some(Action::Spawn(order)) = actions.first().cloned() else {
        panic!("{actions:?}")
    };
    // The first failure is retried at once, the next after the backoff.
    let retried = h.flock.handle(
        h.now,
        Event::SpawnFailed {
            order,
            reason: "EAGAIN".into(),
        },
    );
    let Some(Action::Spawn(order)) = retried.first().cloned() else {
        panic!("{retried:?}")
    };
    h.flock.handle(
        h.now,
        Event::SpawnFailed {
            order,
            reason: "EAGAIN".into(),
        },
    );
    assert_eq!(h.flock.next_deadline(), Some(h.now + 100 * MS));
}

#[test]
fn backoff_sequence() {
    let p = policy(1).restart;
    let seq: Vec<u128> = (0..7).map(|n| backoff(&p, n).as_millis()).collect();
    assert_eq!(seq, vec![0, 100, 200, 400, 800, 1000, 1000]);
    assert_eq!(backoff(&p, 1000), 1000 * MS);
}

#[test]
fn a_crash_soon_after_a_ready_restart_backs_off_further() {
    let mut h = Harness::serving(policy(1));
    assert_eq!(spawns(&h.exit(h.pid_of(0), ExitStatus::Code(1))), vec![0]);
    h.at(3000 * MS);
    assert!(h.flock.workers()[0].is_ready());
    // Ready for 1 s only, well short of backoff_reset (10 s): the slot's
    // failures still count, so this one waits out backoff_initial.
    h.at(4000 * MS);
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    assert_eq!(h.flock.next_deadline(), Some(h.t0 + 4100 * MS));
    assert_eq!(h.flock.slot_restarts(0), 2);
    assert_eq!(h.flock.total_restarts(), 2);
}

#[test]
fn exits_during_a_shutdown_are_not_failures() {
    let mut h = Harness::serving(policy(2));
    let (a, b) = (h.pid_of(0), h.pid_of(1));
    h.feed(Event::Request(Request::Stop));
    h.exit(a, ExitStatus::Code(1));
    h.exit(b, ExitStatus::Signaled(Signal::SIGSEGV));
    assert_eq!(h.flock.total_restarts(), 0);
    assert!(spawns(&h.log).len() == 2, "nothing restarted");
}

#[test]
fn a_worker_of_a_retired_slot_that_crashes_is_not_restarted() {
    let mut h = Harness::serving(policy(2));
    let top = h.pid_of(1);
    h.feed(Event::Request(Request::ScaleDown));
    // It was told to stop, so its exit is no crash either way.
    h.exit(top, ExitStatus::Code(1));
    assert!(spawns(&h.run_until(Duration::from_secs(30))).is_empty());
    assert_eq!(h.flock.total_restarts(), 0);
}

#[test]
fn the_crash_loop_window_counts_only_recent_failures() {
    let mut p = policy(1);
    p.restart.max_restarts = 1;
    p.restart.window = Duration::from_secs(5);
    let mut h = Harness::serving(p);
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    h.run_until(Duration::from_secs(7));
    // Exactly one window later plus a bit: the first failure has aged out.
    h.at(Duration::from_millis(7001));
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    assert!(!h.flock.is_shutting_down());
    h.run_until(Duration::from_secs(9));
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    assert!(
        h.flock.is_shutting_down(),
        "two failures within 5 s with max_restarts = 1"
    );
}

#[test]
fn a_crash_loop_through_ready_timeouts_forks_nothing_after_giving_up() {
    let mut p = notify_policy(2);
    p.heartbeat = None;
    p.restart.max_restarts = 3;
    let mut h = Harness::new(p);
    h.start();
    // Nobody ever says ready: every worker is killed at its ready_timeout.
    h.run_until(Duration::from_secs(60));
    let gave_up = h
        .log
        .iter()
        .position(|a| *a == Action::Notify(Upward::Stopping))
        .expect("the breaker tripped");
    assert!(
        spawns(&h.log[gave_up..]).is_empty(),
        "forked after giving up: {:?}",
        &h.log[gave_up..]
    );
}

#[test]
fn the_log_says_when_a_slot_is_refilled() {
    let mut h = Harness::serving(policy(2));
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    assert_eq!(logged("; restarting it now").len(), 1);
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    assert_eq!(logged("; restarting in 100ms").len(), 1);
    // A spawn ordered in the pass a scale-down retired its slot, and failed.
    let mut h = Harness::serving(policy(2));
    h.exit(h.pid_of(1), ExitStatus::Code(1));
    h.exit(h.pid_of(1), ExitStatus::Code(1));
    h.now += 100 * MS;
    let tick = h.flock.handle(h.now, Event::Tick);
    let Some(Action::Spawn(order)) = tick.first().cloned() else {
        panic!("{tick:?}")
    };
    h.flock.handle(h.now, Event::Request(Request::ScaleDown));
    let reason = "EAGAIN".to_string();
    h.flock.handle(h.now, Event::SpawnFailed { order, reason });
    assert_eq!(logged("not restarted (slot retired)").len(), 1);
    assert!(
        h.flock.next_deadline().is_none_or(|d| d > h.now),
        "nothing waits for slot 1"
    );
}

#[test]
fn failures_exactly_a_window_apart_both_count() {
    let mut h = Harness::serving(crash_limit(1, Duration::from_secs(5)));
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    h.at(7000 * MS);
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    assert!(
        h.flock.is_shutting_down(),
        "2 exits within 5 s (to the nanosecond) with max_restarts = 1"
    );
}

#[test]
fn a_crash_is_logged_with_its_uptime_and_status() {
    let mut h = Harness::serving(policy(1));
    let pid = h.pid_of(0);
    h.at(2500 * MS);
    h.exit(pid, ExitStatus::Signaled(Signal::SIGSEGV));
    let lines = logged(&format!("worker 0 (pid {pid}) was killed by SIGSEGV after 2.5s"));
    assert_eq!(lines.len(), 1, "{:?}", captured::lines());
}

#[test]
fn the_start_may_spend_the_whole_budget() {
    let mut p = policy(3);
    p.restart.max_spawn_rate = 1;
    let mut h = Harness::new(p);
    assert_eq!(spawns(&h.start()), vec![0, 1, 2], "a burst of max(workers, rate)");
    // The bucket is empty now: a crash waits for the next token, 1 s on.
    assert!(spawns(&h.exit(h.pid_of(2), ExitStatus::Code(1))).is_empty());
    assert_eq!(h.flock.next_deadline(), Some(h.t0 + 1000 * MS));
    assert_eq!(spawns(&h.at(1000 * MS)), vec![2]);
}

#[test]
fn with_no_surge_allowed_a_crashed_slot_still_comes_due() {
    let mut p = policy(2);
    p.max_surge = 0;
    let mut h = Harness::serving(p);
    assert_eq!(spawns(&h.exit(h.pid_of(1), ExitStatus::Code(1))), vec![1]);
    assert!(spawns(&h.exit(h.pid_of(1), ExitStatus::Code(1))).is_empty());
    assert_eq!(h.flock.next_deadline(), Some(h.now + 100 * MS), "its backoff");
    assert_eq!(spawns(&h.at(2100 * MS)), vec![1]);
}

#[test]
fn a_replacement_waiting_for_the_budget_is_due_at_the_next_token() {
    let mut p = policy(2);
    p.recycle = RecyclePolicy {
        max_age: Some(60_000 * MS),
        jitter: Duration::ZERO,
    };
    p.restart.max_spawn_rate = 1;
    let mut h = Harness::serving(p);
    // Slot 1 fails twice just before worker 0 is due: its refill, at 60 s,
    // takes the last token.
    h.now = h.t0 + 59_900 * MS;
    assert_eq!(spawns(&h.exit(h.pid_of(1), ExitStatus::Code(1))), vec![1]);
    assert!(spawns(&h.exit(h.pid_of(1), ExitStatus::Code(1))).is_empty());
    assert_eq!(spawns(&h.at(60_000 * MS)), vec![1], "the empty slot first");
    // Worker 0's replacement waits for a token, not for slot 1's ready_delay.
    let due = h.flock.next_deadline().unwrap();
    assert!(due < h.t0 + 61_000 * MS, "{:?}", due - h.t0);
    assert_eq!(spawns(&h.at(due - h.t0)), vec![0]);
    assert_eq!(logged("starting its replacement (max age)").len(), 1);
    assert!(
        logged("worker 1 (pid")
            .iter()
            .all(|l| !l.contains("starting its replacement"))
    );
}

/// A worker that dies at once, every time (its program is missing).
fn failing_forever(h: &mut Harness, until: Duration) -> Option<Duration> {
    while h.now < h.t0 + until {
        // Every worker it has dies at once: started, or told to stop.
        while let Some(pid) = h.flock.workers().first().map(|w| w.pid) {
            h.exit(pid, ExitStatus::Code(127));
        }
        if h.log.iter().any(|a| matches!(a, Action::Exit { code: 1, .. })) {
            return Some(h.now - h.t0);
        }
        let next = h.flock.next_deadline().unwrap_or(h.now + 100 * MS);
        h.now = next.min(h.t0 + until).max(h.now + MS);
        h.feed(Event::Tick);
    }
    h.log
        .iter()
        .any(|a| matches!(a, Action::Exit { code: 1, .. }))
        .then(|| h.now - h.t0)
}

#[test]
fn a_flock_below_min_ready_for_five_restart_windows_with_failures_is_a_crash_loop() {
    // One worker whose program is missing, backed off to 1 s: never more
    // than 2 exits in a 2 s window, far from max_restarts.
    let mut p = notify_policy(1);
    p.heartbeat = None;
    p.ready_timeout = Duration::from_secs(60);
    p.restart.max_restarts = 100;
    p.restart.window = Duration::from_secs(2);
    let mut h = Harness::new(p);
    h.start();
    let ended = failing_forever(&mut h, Duration::from_secs(30));
    let ended = ended.unwrap_or_else(|| panic!("no crash-loop exit: {:#?}", captured::lines()));
    assert!(
        ended >= Duration::from_secs(10) && ended < Duration::from_secs(12),
        "{ended:?}"
    );
    let reason = logged("fewer than 1 of 1 workers ready for 10s (5 × restart_window)");
    assert_eq!(reason.len(), 1, "{:?}", captured::lines());
}

#[test]
fn a_healthy_flock_with_a_slot_that_keeps_failing_is_no_crash_loop() {
    let mut p = policy(2);
    p.min_ready = 1;
    p.restart.max_restarts = 100;
    p.restart.window = Duration::from_secs(2);
    let mut h = Harness::serving(p);
    let serving = h.pid_of(0);
    // Slot 1 keeps failing; slot 0 serves throughout.
    let mut slot1 = h.pid_of(1);
    for _ in 0..30 {
        h.exit(slot1, ExitStatus::Code(1));
        let deadline = h.flock.next_deadline().unwrap();
        h.now = deadline.max(h.now + MS);
        h.feed(Event::Tick);
        slot1 = h.pid_of(1);
    }
    assert!(h.now - h.t0 > Duration::from_secs(10));
    assert!(!h.log.iter().any(|a| matches!(a, Action::Exit { .. })));
    assert_eq!(h.pid_of(0), serving);
}

/// Found by the simulator (seed 1529): a replacement that gets ready beside
/// the worker it replaces (stopped in the same pass) made the flock look
/// healthy for an instant, and the clock of a long stretch below
/// `min_ready` started again: counted by slot, it does not.
#[test]
fn a_swap_within_a_pass_does_not_end_a_stretch_below_min_ready() {
    let mut p = notify_policy(2);
    p.heartbeat = None;
    p.memory_limit = Some(100 << 20);
    let mut h = Harness::ready(p);
    h.exit(h.pid_of(1), ExitStatus::Code(1));
    let (since, _) = h.flock.unhealthy.expect("below min_ready, with a failure");
    h.at(Duration::from_secs(1));
    let old = h.pid_of(0);
    h.feed(Event::Measured {
        pid: old,
        bytes: 200 << 20,
    });
    let new = h
        .flock
        .workers()
        .iter()
        .find(|w| w.slot == 0 && w.is_starting())
        .map(|w| w.pid)
        .expect("slot 0's replacement starts");
    h.say(new, WorkerMessage::Ready);
    assert!(
        h.flock.workers().iter().any(|w| w.pid == old && w.is_stopping()),
        "the old one goes"
    );
    assert_eq!(h.flock.unhealthy.map(|u| u.0), Some(since), "the stretch goes on");
}

/// Found by the simulator: a scale-down that retires the one serving worker
/// (the highest slot) counted it as serving for an instant, and the clock of
/// a long stretch below `min_ready` started again.
#[test]
fn a_scale_down_does_not_end_a_stretch_below_min_ready() {
    let mut p = notify_policy(2);
    p.heartbeat = None;
    let mut h = Harness::ready(p);
    // Slot 0 fails and is not ready again: one of two serves.
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    let (since, _) = h.flock.unhealthy.expect("below min_ready, with a failure");
    h.at(Duration::from_secs(1));
    // One worker less: slot 1, the serving one, is retired.
    h.feed(Event::Request(Request::ScaleDown));
    assert_eq!(h.flock.ready_count(), 0);
    assert_eq!(h.flock.unhealthy.map(|u| u.0), Some(since), "the stretch goes on");
}

/// Found by the simulator (seed 3650559709271155169): a worker replaced
/// for its memory serves on while its replacements start; that it has been
/// ready for long says nothing of them, and must not clear the slot's
/// backoff. It did, in every pass: replacements that crashed at boot were
/// started again at once, again and again.
#[test]
fn replacements_that_keep_failing_beside_their_predecessor_back_off() {
    let mut p = policy(1);
    p.memory_limit = Some(100 << 20);
    p.restart.max_restarts = 100;
    let mut h = Harness::serving(p);
    // Ready for longer than backoff_reset (10 s), then over its limit.
    h.at(Duration::from_secs(20));
    let old = h.pid_of(0);
    let spawned = spawns(&h.feed(Event::Measured {
        pid: old,
        bytes: 300 << 20,
    }));
    assert_eq!(spawned, vec![0], "its replacement first");
    let delays = respawn_delays(&mut h, 4, |h| h.newest());
    assert_eq!(delays, vec![0, 100, 200, 400]);
    assert_eq!(h.pid_of(0), old, "the old worker serves on meanwhile");
}
