//! Each policy's own deadline, exactly: when the loop must wake for it. A
//! lost deadline would otherwise only show as a late wake (the shell caps
//! its sleep), or, in the other direction, as a loop that never sleeps.

use super::*;

/// A policy whose only periodic duty (memory, hourly) stays out of the way.
fn quiet(workers: usize) -> Policy {
    policy(workers)
}

#[test]
fn a_starting_worker_is_due_at_its_ready_delay_or_its_ready_timeout() {
    let mut h = Harness::new(quiet(1));
    h.start();
    assert_eq!(h.flock.readiness_deadline(), Some(h.t0 + 1000 * MS));
    assert_eq!(h.flock.next_deadline(), Some(h.t0 + 1000 * MS));
    let mut h = Harness::new(reload_policy(1));
    h.start();
    // First the hint, at half of ready_timeout (under 10 s), then the timeout.
    assert_eq!(h.flock.readiness_deadline(), Some(h.t0 + 2500 * MS), "the hint");
    h.at(2500 * MS);
    let hint = logged("is not ready after 2500ms: readiness = \"notify\" waits for READY=1");
    assert_eq!(hint.len(), 1, "{hint:?}");
    assert!(hint[0].contains("kills it at 5s (ready_timeout)"), "{hint:?}");
    assert_eq!(h.flock.readiness_deadline(), Some(h.t0 + 5000 * MS), "ready_timeout");
    h.make_ready();
    assert_eq!(h.flock.readiness_deadline(), None);
}

#[test]
fn a_stopping_worker_is_due_for_sigkill_at_the_stop_timeout() {
    let mut h = Harness::serving(quiet(2));
    h.at(2500 * MS);
    h.feed(Event::Request(Request::Stop));
    let stop = h.t0 + 2500 * MS + 5000 * MS;
    assert_eq!(h.flock.stop_deadline(), Some(stop));
    assert_eq!(
        h.flock.next_deadline(),
        Some(stop),
        "the stop is all there is left to wake for"
    );
    h.at(7500 * MS);
    assert_eq!(h.flock.stop_deadline(), None, "SIGKILL sent: nothing more to escalate");
}

#[test]
fn a_ready_worker_is_due_when_its_heartbeats_run_out() {
    let mut h = Harness::new(notify_policy(1));
    h.start();
    h.now = h.t0 + 400 * MS;
    h.make_ready();
    assert_eq!(h.flock.heartbeat_deadline(), Some(h.t0 + 400 * MS + 3000 * MS));
    h.now = h.t0 + 900 * MS;
    h.say(h.pid_of(0), WorkerMessage::Heartbeat);
    assert_eq!(h.flock.heartbeat_deadline(), Some(h.t0 + 900 * MS + 3000 * MS));
    // The stall guard wakes the loop every interval meanwhile.
    assert_eq!(h.flock.stall_guard_deadline(), Some(h.t0 + 900 * MS + 1000 * MS));
    assert_eq!(h.flock.next_deadline(), Some(h.t0 + 1900 * MS));
}

#[test]
fn a_backed_off_slot_is_due_when_its_backoff_ends() {
    let mut h = Harness::serving(quiet(1));
    // The first failure is refilled at once; the second in a row waits.
    let first = h.exit(h.pid_of(0), ExitStatus::Code(1));
    assert_eq!(spawns(&first), vec![0]);
    assert_eq!(h.flock.spawn_deadline(), None, "nothing waits");
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    assert_eq!(h.flock.spawn_deadline(), Some(h.t0 + 2100 * MS));
    assert_eq!(h.flock.next_deadline(), Some(h.t0 + 2100 * MS));
    assert_eq!(h.flock.waiting_slots(), vec![(0, h.t0 + 2100 * MS)]);
}

#[test]
fn a_ready_worker_after_a_crash_is_due_to_clear_its_slots_backoff() {
    let mut h = Harness::serving(quiet(1));
    assert_eq!(h.flock.backoff_reset_deadline(), None, "no backoff to clear");
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    h.at(2100 * MS);
    h.at(3100 * MS);
    assert_eq!(h.flock.backoff_reset_deadline(), Some(h.t0 + 3100 * MS + 10_000 * MS));
    h.at(13_100 * MS);
    assert_eq!(h.flock.backoff_reset_deadline(), None, "cleared");
}

#[test]
fn an_exhausted_spawn_budget_makes_a_slot_due_at_the_next_token() {
    let mut p = quiet(1);
    p.restart.max_spawn_rate = 1;
    p.restart.backoff_initial = 10 * MS;
    p.restart.max_restarts = 100;
    let mut h = Harness::new(p);
    h.start();
    // The one token of the burst went to the first start.
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    assert_eq!(h.flock.spawn_deadline(), Some(h.t0 + 1000 * MS), "a token a second");
    assert!(spawns(&h.at(999 * MS)).is_empty());
    assert_eq!(spawns(&h.at(1000 * MS)), vec![0]);
}

#[test]
fn a_replacement_held_back_by_the_surge_is_no_deadline_so_the_loop_sleeps() {
    let mut h = Harness::ready(reload_policy(3));
    reload(&mut h, 1, reload_policy(3));
    // Slot 0's replacement is starting; slots 1 and 2 wait for the surge,
    // which only an event (a worker ready, or gone) can free.
    assert_eq!(h.flock.spawn_deadline(), None);
    let next = h.flock.next_deadline().unwrap();
    assert!(
        next > h.now,
        "the loop would spin: next deadline {next:?} is not in the future"
    );
}

#[test]
fn periodic_duties_are_due_every_interval() {
    let mut p = notify_policy(1);
    p.readiness = Readiness::NodeIpc;
    p.channel = Channel::NodeIpc;
    p.memory_interval = 2000 * MS;
    p.watchdog = Some(4000 * MS);
    let mut h = Harness::new(p);
    h.start();
    assert_eq!(h.flock.ping_deadline(), Some(h.t0 + 1000 * MS));
    assert_eq!(h.flock.measure_deadline(), Some(h.t0 + 2000 * MS));
    assert_eq!(h.flock.watchdog_deadline(), Some(h.t0 + 2000 * MS), "half the interval");
    h.make_ready();
    h.at(1000 * MS);
    assert_eq!(h.flock.ping_deadline(), Some(h.t0 + 2000 * MS));
    h.at(2000 * MS);
    assert_eq!(h.flock.measure_deadline(), Some(h.t0 + 4000 * MS));
    assert_eq!(h.flock.watchdog_deadline(), Some(h.t0 + 4000 * MS));
    // Without heartbeats over IPC there is nothing to ping; without workers
    // nothing to measure; without systemd's watchdog nothing to relay.
    let h = Harness::new(quiet(1));
    assert_eq!(h.flock.ping_deadline(), None);
    assert_eq!(h.flock.measure_deadline(), None);
    assert_eq!(h.flock.watchdog_deadline(), None);
    assert_eq!(h.flock.stall_guard_deadline(), None);
}

#[test]
fn while_stopping_only_the_stop_and_the_watchdog_are_due() {
    let mut p = notify_policy(1);
    p.watchdog = Some(4000 * MS);
    let mut h = Harness::ready(p);
    h.at(500 * MS);
    h.feed(Event::Request(Request::Stop));
    // Heartbeats, readiness and spawns no longer matter.
    let expected = [h.flock.stop_deadline(), h.flock.watchdog_deadline()]
        .into_iter()
        .flatten()
        .min();
    assert_eq!(h.flock.next_deadline(), expected);
    assert_eq!(
        expected,
        Some(h.t0 + 2000 * MS),
        "the watchdog, before the stop timeout"
    );
}

#[test]
fn workers_that_never_say_ready_are_pinged_on_time() {
    let mut p = ipc_policy(1, 200 * MS, 1000 * MS);
    p.ready_delay = 500 * MS;
    let mut h = Harness::new(p);
    h.start();
    h.run_until(600 * MS);
    assert!(h.flock.workers()[0].is_ready());
    let next = h.flock.next_deadline().unwrap();
    assert!(next <= h.now + 200 * MS, "{:?} after now", next - h.now);
}
