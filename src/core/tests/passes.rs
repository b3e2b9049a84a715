//! A pass of the loop: what was pending is applied before any deadline is
//! judged, and a large flock starts over several passes, a window of
//! workers at a time.

use super::*;

#[test]
fn ready_messages_read_after_a_stall_count_before_the_ready_timeout_is_judged() {
    let mut p = notify_policy(10);
    p.heartbeat = None;
    p.ready_timeout = 3000 * MS;
    let mut h = Harness::new(p);
    h.start();
    let pids: Vec<Pid> = h.flock.workers().iter().map(|w| w.pid).collect();
    assert_eq!(pids.len(), 10);
    // The loop ran again only 9 s later (SIGSTOP, a starved machine): every
    // worker's READY=1 waited in its socket, and the pass reads them all.
    h.now = h.t0 + 9000 * MS;
    let mut events: Vec<Event> = pids
        .iter()
        .map(|&pid| Event::Message {
            pid,
            message: WorkerMessage::Ready,
        })
        .collect();
    events.push(Event::Tick);
    let actions = h.feed_pass(events);
    assert!(signals(&actions).is_empty(), "{actions:?}");
    assert_eq!(h.ready_pids().len(), 10);
    assert!(logged("was not ready within").is_empty());
    assert!(ready_sent(&actions));
}

#[test]
fn a_worker_that_did_not_say_it_is_ready_is_still_late_after_a_stall() {
    let mut p = notify_policy(2);
    p.heartbeat = None;
    p.ready_timeout = 3000 * MS;
    let mut h = Harness::new(p);
    h.start();
    let (quiet, ready) = (h.pid_of(0), h.pid_of(1));
    h.now = h.t0 + 9000 * MS;
    let actions = h.feed_pass(vec![
        Event::Message {
            pid: ready,
            message: WorkerMessage::Ready,
        },
        Event::Tick,
    ]);
    assert_eq!(signals(&actions), vec![(quiet, Signal::SIGKILL)]);
}

#[test]
fn a_large_flock_starts_over_several_passes() {
    let mut h = Harness::new(policy(100));
    let first = h.start();
    assert_eq!(spawns(&first).len(), super::super::restart::SPAWNS_PER_PASS);
    // The rest is due at once: the loop only serves what waits, then goes on.
    assert_eq!(h.flock.next_deadline(), Some(h.now));
    let mut passes = 1;
    while h.flock.workers().len() < 100 {
        assert!(!spawns(&h.feed(Event::Tick)).is_empty());
        passes += 1;
    }
    assert_eq!(passes, 4, "32 + 32 + 32 + 4");
}

#[test]
fn past_a_cpus_worth_of_starting_workers_more_start_while_they_leave_cpus_idle() {
    let mut p = notify_policy(10);
    p.heartbeat = None;
    p.cpus = 2;
    let mut h = Harness::new(p);
    // None of them on a CPU: two start whatever they do, then two more per look.
    assert_eq!(spawns(&h.start()), (0..10).collect::<Vec<_>>());
    let looks = h.log.iter().filter(|a| **a == Action::SampleLoad).count();
    assert_eq!(looks, 4, "2 + 2 per look: {:?}", h.log);
}

#[test]
fn starting_workers_busy_on_every_cpu_hold_back_the_next_until_one_leaves_a_cpu() {
    let mut p = notify_policy(10);
    p.heartbeat = None;
    p.cpus = 2;
    let mut h = Harness::new(p);
    // The two starting workers run on both CPUs (shell shims burning CPU).
    h.runnable = 2;
    assert_eq!(spawns(&h.start()), vec![0, 1]);
    // The load is looked at again after LOAD_RETRY, not in a spin.
    let retry = h.t0 + super::super::restart::LOAD_RETRY;
    assert_eq!(h.flock.next_deadline(), Some(retry));
    assert!(spawns(&h.at(50 * MS)).is_empty());
    assert!(spawns(&h.at(100 * MS)).is_empty(), "still busy");
    // One is ready: a slot below the floor starts at once, busy or not.
    let ready = h.pid_of(0);
    assert_eq!(spawns(&h.say(ready, WorkerMessage::Ready)), vec![2]);
    // They leave the CPUs (waiting on I/O, or listening): the rest start, two per look.
    h.runnable = 1;
    assert_eq!(spawns(&h.at(300 * MS)), (3..10).collect::<Vec<_>>());
    h.make_ready();
    assert_eq!(h.ready_pids().len(), 10);
    assert!(logged("was not ready within").is_empty());
}
