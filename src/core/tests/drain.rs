//! Drains: a worker that took connections gets its stop signal only once
//! its queue is closed and empty (or after `DRAIN_LIMIT`).

use super::*;
use crate::core::flock::DRAIN_LIMIT;

fn drains(actions: &[Action]) -> Vec<Pid> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Drain { pid } => Some(*pid),
            _ => None,
        })
        .collect()
}

/// A flock of `workers` mid-reload: slot 0's replacement is ready, so its
/// old worker (the pid returned) is being drained; the test reports drains.
fn draining_slot_0(workers: usize) -> (Harness, Pid) {
    let mut h = Harness::ready(reload_policy(workers));
    h.drains_at_once = false;
    let old = h.pid_of(0);
    reload(&mut h, 1, reload_policy(workers));
    let new = h.newest();
    h.say(new, WorkerMessage::Ready);
    (h, old)
}

#[test]
fn a_replaced_worker_is_drained_before_its_stop_signal_and_its_stop_timeout_runs_from_the_signal() {
    let mut h = Harness::ready(reload_policy(1));
    h.drains_at_once = false;
    let old = h.pid_of(0);
    reload(&mut h, 1, reload_policy(1));
    let new = h.newest();
    let actions = h.say(new, WorkerMessage::Ready);
    assert_eq!(drains(&actions), vec![old], "the old worker's queue is drained first");
    assert!(signals(&actions).is_empty(), "no stop signal before its queue is empty");
    assert!(
        !h.flock
            .workers()
            .iter()
            .find(|w| w.pid == old)
            .unwrap()
            .takes_connections()
    );

    h.now += 300 * MS;
    let actions = h.feed(Event::Drained { pid: old });
    assert_eq!(signals(&actions), vec![(old, Signal::SIGTERM)]);
    // A second report changes nothing.
    assert!(signals(&h.feed(Event::Drained { pid: old })).is_empty());
    // SIGKILL comes a stop timeout (5 s) after the signal, not after the drain began.
    let signalled_at = h.now - h.t0;
    let kills = h.run_until(signalled_at + 4900 * MS);
    assert!(
        !signals(&kills).contains(&(old, Signal::SIGKILL)),
        "too early: {kills:?}"
    );
    let kills = h.run_until(signalled_at + 5000 * MS);
    assert!(signals(&kills).contains(&(old, Signal::SIGKILL)), "{kills:?}");
}

#[test]
fn a_queue_that_does_not_empty_gets_its_worker_stopped_after_the_drain_limit() {
    let (mut h, old) = draining_slot_0(1);
    let began = h.now - h.t0;
    let limit = DRAIN_LIMIT.min(reload_policy(1).stop_timeout);
    assert!(signals(&h.run_until(began + limit - MS)).is_empty());
    let actions = h.run_until(began + limit);
    assert_eq!(signals(&actions), vec![(old, Signal::SIGTERM)]);
    assert_eq!(logged("was not empty after").len(), 1, "said once");
}

#[test]
fn at_a_shutdown_every_worker_gets_its_signal_at_once_draining_ones_too() {
    let (mut h, old) = draining_slot_0(2);
    assert!(h.flock.workers().iter().any(|w| w.pid == old && w.draining));
    let actions = h.feed(Event::Request(Request::Stop));
    assert!(drains(&actions).is_empty(), "nowhere to send connections at a shutdown");
    let stopped: Vec<Pid> = signals(&actions).iter().map(|(pid, _)| *pid).collect();
    for worker in h.flock.workers() {
        assert!(
            stopped.contains(&worker.pid),
            "worker {} got no signal: {actions:?}",
            worker.pid
        );
    }
}

#[test]
fn a_worker_that_never_took_connections_is_signalled_at_once() {
    let mut h = Harness::ready(reload_policy(2));
    h.drains_at_once = false;
    h.feed(Event::Request(Request::Scale(3)));
    let starting = h.newest();
    assert!(h.flock.workers().iter().any(|w| w.pid == starting && w.is_starting()));
    let actions = h.feed(Event::Request(Request::Scale(2)));
    assert!(signals(&actions).contains(&(starting, Signal::SIGTERM)), "{actions:?}");
    assert!(drains(&actions).is_empty());
    // A ready one scaled away is drained.
    let kept = h.pid_of(1);
    let actions = h.feed(Event::Request(Request::Scale(1)));
    assert_eq!(drains(&actions), vec![kept]);
}

#[test]
fn a_drain_survives_a_hand_over_and_still_ends_in_the_stop_signal() {
    let (h, old) = draining_slot_0(1);
    let state = super::snapshot::state_of(&h.flock, h.now).unwrap();
    let json = serde_json::to_string(&state).unwrap();
    let mut restored = super::snapshot::restore(serde_json::from_str(&json).unwrap(), h.now).unwrap();
    assert!(restored.workers().iter().any(|w| w.pid == old && w.draining));
    let actions = restored.handle(h.now, Event::Drained { pid: old });
    assert!(actions.contains(&Action::Signal {
        pid: old,
        signal: Signal::SIGTERM
    }));
}

#[test]
fn a_draining_worker_is_due_for_its_stop_signal_at_the_drain_limit_not_its_stop_timeout() {
    // A stop timeout longer than the drain's limit, so that the two differ.
    let mut policy = reload_policy(1);
    policy.stop_timeout = 30_000 * MS;
    let mut h = Harness::ready(policy.clone());
    h.drains_at_once = false;
    let old = h.pid_of(0);
    reload(&mut h, 1, policy);
    let new = h.newest();
    h.say(new, WorkerMessage::Ready);
    let since = match h.flock.workers().iter().find(|w| w.pid == old).unwrap().state {
        WorkerState::Stopping { since, .. } => since,
        other => panic!("{other:?}"),
    };
    assert_eq!(h.flock.stop_deadline(), Some(since + crate::core::flock::DRAIN_LIMIT));
}
