//! Crashes: backoff, the crash-loop breaker, the spawn budget.

use super::*;

#[test]
fn crashed_worker_is_replaced_in_the_same_slot_after_backoff() {
    let mut h = Harness::serving(policy(2));
    let old = h.pid_of(1);
    assert!(spawns(&h.exit(old, ExitStatus::Signaled(Signal::SIGKILL))).is_empty());
    assert_eq!(h.flock.next_deadline(), Some(h.now + 100 * MS));
    assert_eq!(spawns(&h.at(2100 * MS)), vec![1]);
    assert_ne!(h.pid_of(1), old);
    assert_eq!(statuses(&h.log).last().unwrap(), "1/2 ready · 1 restarts");
}

#[test]
fn backoff_doubles_per_failure_up_to_the_cap_then_resets_after_a_stable_run() {
    let mut p = policy(1);
    p.restart.max_restarts = 100;
    let mut h = Harness::new(p);
    h.start();
    let mut delays = Vec::new();
    for _ in 0..6 {
        let crashed_at = h.now;
        h.exit(h.pid_of(0), ExitStatus::Code(1));
        let respawn = h.flock.next_deadline().unwrap();
        delays.push((respawn - crashed_at).as_millis());
        h.now = respawn;
        assert_eq!(spawns(&h.feed(Event::Tick)), vec![0]);
    }
    assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);

    // Ready for backoff_reset (10 s): the next crash starts from the bottom again.
    let start = h.now - h.t0;
    h.run_until(start + 1000 * MS + Duration::from_secs(10));
    let crashed_at = h.now;
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    assert_eq!(h.flock.next_deadline().unwrap() - crashed_at, 100 * MS);
}

#[test]
fn a_crash_loop_stops_the_flock_and_exits_non_zero() {
    let mut h = Harness::new(policy(2));
    h.start();
    let mut exits = 0;
    let mut outcome = None;
    for _ in 0..50 {
        for slot in 0..2 {
            if let Some(w) = h
                .flock
                .workers()
                .iter()
                .find(|w| w.slot == slot && w.state == WorkerState::Starting)
            {
                let pid = w.pid;
                exits += 1;
                h.exit(pid, ExitStatus::Code(3));
            }
        }
        let next = h.flock.next_deadline();
        let actions = match next {
            Some(deadline) => {
                h.now = deadline;
                h.feed(Event::Tick)
            }
            None => Vec::new(),
        };
        outcome = actions.iter().chain(h.log.iter()).find_map(|a| match a {
            Action::Exit { code, reason } => Some((*code, reason.clone())),
            _ => None,
        });
        if outcome.is_some() || h.flock.workers().is_empty() && h.flock.is_shutting_down() {
            break;
        }
    }
    // max_restarts = 5: the 6th unrequested exit in the window is the verdict.
    assert_eq!(exits, 6);
    let stopping = h.log.contains(&Action::Notify(Upward::Stopping));
    assert!(stopping);
    // The surviving worker is stopped gracefully, then the supervisor exits 1.
    let survivor = h.flock.workers().first().map(|w| w.pid);
    if let Some(pid) = survivor {
        assert!(signals(&h.log).contains(&(pid, Signal::SIGTERM)));
        let actions = h.exit(pid, ExitStatus::Code(0));
        outcome = actions.iter().find_map(|a| match a {
            Action::Exit { code, reason } => Some((*code, reason.clone())),
            _ => None,
        });
    }
    let (code, reason) = outcome.expect("the supervisor exits");
    assert_eq!(code, 1);
    assert!(
        reason.starts_with("crash loop: 6 unrequested worker exits within 1m (max_restarts = 5)"),
        "{reason}"
    );
    // Two initial spawns and two rounds of restarts; the 5th tolerated exit's
    // restart was still in backoff when the 6th exit broke the loop.
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
    let seq: Vec<u128> = (0..6).map(|n| backoff(&p, n).as_millis()).collect();
    assert_eq!(seq, vec![100, 200, 400, 800, 1000, 1000]);
    assert_eq!(backoff(&p, 1000), 1000 * MS);
}

#[test]
fn a_crash_soon_after_a_ready_restart_backs_off_further() {
    let mut h = Harness::serving(policy(1));
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    assert_eq!(h.flock.next_deadline(), Some(h.t0 + 2100 * MS));
    h.at(2100 * MS);
    h.at(3100 * MS);
    assert!(h.flock.workers()[0].is_ready());
    // Ready for 1 s only, well short of backoff_reset (10 s): the slot's
    // failures still count, so the next delay doubles.
    h.at(4100 * MS);
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    assert_eq!(h.flock.next_deadline(), Some(h.t0 + 4300 * MS));
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
