//! Starting, readiness upward, stopping and scaling.

use super::*;

#[test]
fn starts_every_slot_at_once() {
    let mut h = Harness::new(policy(4));
    assert_eq!(spawns(&h.start()), vec![0, 1, 2, 3]);
    assert_eq!(h.flock.workers().len(), 4);
    assert_eq!(h.flock.next_deadline(), Some(h.t0 + 1000 * MS));
}

#[test]
fn ready_is_announced_only_once_min_ready_workers_are_ready() {
    let mut h = Harness::new(policy(2));
    assert!(!ready_sent(&h.start()));
    assert!(!ready_sent(&h.at(999 * MS)));
    let actions = h.at(1000 * MS);
    assert!(ready_sent(&actions));
    assert_eq!(statuses(&actions), vec!["2/2 ready · 0 restarts"]);
    assert!(!ready_sent(&h.at(2000 * MS)), "READY=1 is sent once");
}

#[test]
fn min_ready_below_workers_announces_earlier() {
    let mut p = policy(2);
    p.min_ready = 1;
    let mut h = Harness::new(p);
    h.start();
    let late = h.pid_of(1);
    h.exit(late, ExitStatus::Code(1));
    assert!(ready_sent(&h.at(1000 * MS)));
}

#[test]
fn stop_sends_the_stop_signal_then_sigkill_after_the_timeout_then_exits_zero() {
    let mut h = Harness::serving(policy(2));
    let (a, b) = (h.pid_of(0), h.pid_of(1));
    let actions = h.feed(Event::Request(Request::Stop));
    assert!(actions.contains(&Action::Notify(Upward::Stopping)));
    assert_eq!(signals(&actions), vec![(a, Signal::SIGTERM), (b, Signal::SIGTERM)]);
    assert_eq!(statuses(&actions), vec!["stopping · 2 workers left"]);

    // `a` drains and exits; `b` ignores SIGTERM.
    assert!(
        h.exit(a, ExitStatus::Code(0))
            .iter()
            .all(|a| !matches!(a, Action::Exit { .. }))
    );
    assert!(signals(&h.at(6999 * MS)).is_empty());
    assert_eq!(signals(&h.at(7000 * MS)), vec![(b, Signal::SIGKILL)]);
    let actions = h.exit(b, ExitStatus::Signaled(Signal::SIGKILL));
    assert!(actions.contains(&Action::Exit {
        code: 0,
        reason: "stopped on request".into()
    }));
    assert!(spawns(&h.log).len() == 2, "nothing is respawned during a stop");
    // Events handled later in the same pass do not give the exit again.
    let later = [h.feed(Event::Tick), h.feed(Event::Request(Request::Stop))].concat();
    assert!(!later.iter().any(|a| matches!(a, Action::Exit { .. })), "{later:?}");
}

#[test]
fn a_second_stop_request_kills_at_once() {
    let mut h = Harness::new(policy(1));
    h.start();
    let pid = h.pid_of(0);
    h.feed(Event::Request(Request::Stop));
    h.now += 2000 * MS;
    assert_eq!(
        signals(&h.feed(Event::Request(Request::Stop))),
        vec![(pid, Signal::SIGKILL)]
    );
    // Its drain is counted from the first request.
    h.now += 500 * MS;
    h.exit(pid, ExitStatus::Signaled(Signal::SIGKILL));
    assert_eq!(logged("after 2.5s of draining").len(), 1);
}

#[test]
fn stop_with_no_worker_alive_exits_at_once() {
    let mut h = Harness::new(policy(1));
    h.start();
    // Twice in a row: the second waits out its backoff, with no worker alive.
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    assert!(h.flock.workers().is_empty());
    let actions = h.feed(Event::Request(Request::Stop));
    assert!(actions.contains(&Action::Exit {
        code: 0,
        reason: "stopped on request".into()
    }));
}

#[test]
fn scale_up_adds_a_slot_and_scale_down_retires_the_highest() {
    let mut h = Harness::new(policy(2));
    h.start();
    assert_eq!(spawns(&h.feed(Event::Request(Request::ScaleUp))), vec![2]);
    assert_eq!(h.flock.desired(), 3);
    h.at(2000 * MS);
    assert_eq!(statuses(&h.log).last().unwrap(), "3/3 ready · 0 restarts");

    let top = h.pid_of(2);
    let actions = h.feed(Event::Request(Request::ScaleDown));
    assert_eq!(signals(&actions), vec![(top, Signal::SIGTERM)]);
    // A retired worker's exit is not a failure and is not replaced.
    let actions = h.exit(top, ExitStatus::Code(0));
    assert!(spawns(&actions).is_empty());
    assert_eq!(statuses(&h.log).last().unwrap(), "2/2 ready · 0 restarts");
    // Nothing is pending but the (hourly, in this policy) memory check.
    assert!(h.flock.next_deadline().unwrap() > h.now + Duration::from_secs(60));
}

#[test]
fn scale_down_never_goes_below_one() {
    let mut h = Harness::new(policy(1));
    h.start();
    assert!(signals(&h.feed(Event::Request(Request::ScaleDown))).is_empty());
    assert_eq!(h.flock.desired(), 1);
}

#[test]
fn unknown_pids_are_ignored() {
    let mut h = Harness::new(policy(1));
    h.start();
    assert!(h.exit(99_999, ExitStatus::Code(0)).is_empty());
    assert_eq!(h.flock.workers().len(), 1);
}

#[test]
fn scaling_stays_within_one_and_the_maximum() {
    let mut h = Harness::new(policy(1));
    h.start();
    h.feed(Event::Request(Request::Scale(0)));
    assert_eq!(h.flock.desired(), 1);
    h.feed(Event::Request(Request::Scale(MAX_WORKERS as usize + 5)));
    assert_eq!(h.flock.desired(), MAX_WORKERS as usize);
    h.feed(Event::Request(Request::ScaleUp));
    assert_eq!(
        h.flock.desired(),
        MAX_WORKERS as usize,
        "SIGTTIN at the maximum changes nothing"
    );
    h.feed(Event::Request(Request::Scale(2)));
    assert_eq!(h.flock.desired(), 2);
}

#[test]
fn requests_during_a_shutdown_change_nothing() {
    let mut h = Harness::serving(policy(2));
    h.feed(Event::Request(Request::Stop));
    for request in [Request::ScaleUp, Request::ScaleDown, Request::Scale(5)] {
        h.feed(Event::Request(request));
        assert_eq!(h.flock.desired(), 2);
    }
    let actions = h.feed(Event::Request(Request::Reload {
        ticket: 3,
        policy: Box::new(policy(2)),
        command: command_of(3),
    }));
    assert_eq!(
        finished(&actions),
        Some((3, false, "the supervisor is stopping".into()))
    );
    assert!(actions.contains(&Action::ReleaseCommand(command_of(3))));
    assert!(spawns(&h.log).len() == 2);
}

#[test]
fn a_worker_forked_in_the_pass_a_shutdown_began_is_stopped_too() {
    let mut h = Harness::new(policy(1));
    let first = h.flock.handle(h.now, Event::Tick);
    let Some(Action::Spawn(order)) = first.first().cloned() else {
        panic!("{first:?}")
    };
    h.flock.handle(h.now, Event::Request(Request::Stop));
    let actions = h.flock.handle(
        h.now,
        Event::Spawned {
            order,
            pid: 77,
            at: h.now,
        },
    );
    assert_eq!(signals(&actions), vec![(77, Signal::SIGTERM)]);
    let actions = h.exit(77, ExitStatus::Code(0));
    assert!(actions.iter().any(|a| matches!(a, Action::Exit { code: 0, .. })));
}

#[test]
fn a_worker_leaving_on_its_own_gets_the_stop_signal_at_shutdown_too() {
    let mut h = Harness::new(notify_policy(2));
    h.start();
    h.make_ready();
    let (leaving, serving) = (h.pid_of(0), h.pid_of(1));
    h.now += 600 * MS;
    h.say(leaving, WorkerMessage::Stopping);
    let actions = h.feed(Event::Request(Request::Stop));
    let sent = signals(&actions);
    assert!(
        sent.contains(&(leaving, Signal::SIGTERM)),
        "every worker, as the README says: {sent:?}"
    );
    assert!(sent.contains(&(serving, Signal::SIGTERM)));
    // Those sheepdog already stopped are not signalled twice.
    let mut h = Harness::serving(policy(2));
    let top = h.pid_of(1);
    h.feed(Event::Request(Request::ScaleDown));
    let actions = h.feed(Event::Request(Request::Stop));
    assert!(!signals(&actions).contains(&(top, Signal::SIGTERM)));
}

#[test]
fn a_second_stop_request_kills_only_those_not_killed_yet() {
    let mut h = Harness::new(notify_policy(2));
    h.start();
    h.make_ready();
    let (hung, draining) = (h.pid_of(0), h.pid_of(1));
    // Worker 0 hangs and is SIGKILLed; it is not reaped yet.
    let mut killed = Vec::new();
    for at in [1000, 2000, 3000] {
        h.now = h.t0 + at * MS;
        killed.extend(signals(&h.say(draining, WorkerMessage::Heartbeat)));
    }
    assert_eq!(killed, vec![(hung, Signal::SIGKILL)]);
    h.feed(Event::Request(Request::Stop));
    let second = signals(&h.feed(Event::Request(Request::Stop)));
    assert!(
        !second.contains(&(hung, Signal::SIGKILL)),
        "killed once is enough: {second:?}"
    );
    assert!(second.contains(&(draining, Signal::SIGKILL)));
}
