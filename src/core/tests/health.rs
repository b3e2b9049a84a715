//! Readiness, heartbeats, memory, the stall guard and the watchdog relay.

use super::*;

#[test]
fn with_a_readiness_protocol_only_the_worker_says_when_it_is_ready() {
    let mut h = Harness::new(notify_policy(2));
    h.start();
    assert!(!ready_sent(&h.at(2500 * MS)), "no ready_delay promotion under notify");
    let (a, b) = (h.pid_of(0), h.pid_of(1));
    assert!(!ready_sent(&h.say(a, WorkerMessage::Ready)));
    assert!(ready_sent(&h.say(b, WorkerMessage::Ready)));
}

#[test]
fn a_worker_not_ready_within_ready_timeout_is_killed_and_counted() {
    let mut h = Harness::new(notify_policy(1));
    h.start();
    let pid = h.pid_of(0);
    assert!(signals(&h.at(2999 * MS)).is_empty());
    let actions = h.at(3000 * MS);
    assert_eq!(signals(&actions), vec![(pid, Signal::SIGKILL)]);
    assert_eq!(h.flock.total_restarts(), 1);
    // Its replacement comes at once (a first failure), before the old one is reaped.
    assert_eq!(spawns(&actions), vec![0]);
    h.exit(pid, ExitStatus::Signaled(Signal::SIGKILL));
    assert_eq!(h.flock.total_restarts(), 1, "the reaped exit is not counted twice");
}

#[test]
fn a_hung_worker_is_killed_after_the_heartbeat_timeout_and_replaced() {
    let mut h = Harness::ready(notify_policy(2));
    let (a, b) = (h.pid_of(0), h.pid_of(1));
    // `a` keeps heartbeating; `b` goes silent after t = 0.
    for t in [900u32, 1800, 2700, 3600] {
        h.at(t * MS);
        h.say(a, WorkerMessage::Heartbeat);
        if t < 3000 {
            assert!(signals(&h.log).is_empty(), "nobody is killed before the timeout");
        }
    }
    assert_eq!(
        signals(&h.log),
        vec![(b, Signal::SIGKILL)],
        "killed when the 3 s timeout passed"
    );
    // The loop wakes exactly at the expiry deadline.
    let mut h2 = Harness::new(notify_policy(1));
    h2.start();
    h2.make_ready();
    assert_eq!(
        h2.flock.next_deadline(),
        Some(h2.t0 + 1000 * MS),
        "the stall-guard tick comes first"
    );
    let actions = h2.run_until(3000 * MS);
    assert_eq!(signals(&actions).len(), 1);
    assert_eq!(h.flock.total_restarts(), 1);
    assert_eq!(spawns(&h.log), vec![0, 1, 1], "replaced at once");
}

#[test]
fn heartbeats_alone_before_any_deadline_are_recorded_without_a_pass_and_decide_the_same() {
    let mut h = Harness::ready(notify_policy(2));
    let (a, b) = (h.pid_of(0), h.pid_of(1));
    let mut quiet = 0;
    for t in (300u32..=4800).step_by(300) {
        // Ticks only at the deadlines, as the loop would wake for them.
        h.run_until(t * MS);
        let quiet_before = h.flock.next_deadline().is_some_and(|due| h.now < due);
        // As the shell feeds a pass: what it read, and the tick.
        let heartbeat = Event::Message {
            pid: a,
            message: WorkerMessage::Heartbeat,
        };
        h.feed_pass(vec![heartbeat, Event::Tick]);
        assert_eq!(h.flock.was_quiet(), quiet_before, "at {t} ms");
        quiet += usize::from(quiet_before);
        let worker = h.flock.workers().iter().find(|w| w.pid == a).unwrap();
        assert_eq!(worker.last_heartbeat, h.now, "recorded either way");
        if t < 3000 {
            assert!(signals(&h.log).is_empty(), "nobody is killed before the timeout");
        }
    }
    assert_eq!(
        signals(&h.log),
        vec![(b, Signal::SIGKILL)],
        "only the silent one is hung"
    );
    assert!(quiet > 5, "{quiet} quiet passes of 16");
    // At the deadline itself the pass is a full one.
    h.now = h.flock.next_deadline().unwrap();
    let heartbeat = Event::Message {
        pid: a,
        message: WorkerMessage::Heartbeat,
    };
    h.feed_pass(vec![heartbeat, Event::Tick]);
    assert!(!h.flock.was_quiet(), "due now");
    // Anything but a heartbeat of a serving worker is a full pass.
    h.now += MS;
    h.say(99_999, WorkerMessage::Heartbeat);
    assert!(!h.flock.was_quiet(), "no such worker");
    h.feed(Event::Request(Request::ScaleUp));
    assert!(!h.flock.was_quiet());
}

#[test]
fn a_stalled_supervisor_spares_its_workers_once() {
    let mut h = Harness::ready(notify_policy(1));
    // The loop itself did not run for 10 s (SIGSTOPped): no mass murder.
    assert!(signals(&h.at(10_000 * MS)).is_empty());
    // But a worker still silent one timeout later is hung after all.
    assert_eq!(signals(&h.run_until(13_000 * MS)).len(), 1);
}

#[test]
fn watchdog_trigger_replaces_at_once() {
    let mut h = Harness::ready(notify_policy(1));
    let pid = h.pid_of(0);
    assert_eq!(
        signals(&h.say(pid, WorkerMessage::WatchdogTrigger)),
        vec![(pid, Signal::SIGKILL)]
    );
    assert_eq!(h.flock.total_restarts(), 1);
}

#[test]
fn a_worker_that_says_it_is_stopping_gets_its_replacement_before_it_exits() {
    let mut h = Harness::ready(notify_policy(1));
    let old = h.pid_of(0);
    h.run_until(600 * MS);
    h.say(old, WorkerMessage::Heartbeat);
    let actions = h.say(old, WorkerMessage::Stopping);
    assert_eq!(spawns(&actions), vec![0], "replacement forked at once");
    assert!(signals(&actions).is_empty(), "the leaving worker is not signalled");
    assert!(h.flock.workers().iter().any(|w| w.pid == old), "old one still draining");
    h.exit(old, ExitStatus::Code(0));
    assert_eq!(h.flock.total_restarts(), 0, "leaving on its own is not a failure");
    // One that never exits is killed after the stop timeout.
    let mut p = notify_policy(1);
    p.heartbeat = None;
    let mut h = Harness::ready(p);
    let old = h.pid_of(0);
    h.run_until(600 * MS);
    h.say(old, WorkerMessage::Stopping);
    h.make_ready();
    assert_eq!(signals(&h.run_until(5600 * MS)), vec![(old, Signal::SIGKILL)]);
}

#[test]
fn memory_over_the_limit_is_replaced_replacement_first_within_the_surge_bound() {
    let mut p = notify_policy(3);
    p.heartbeat = None;
    p.memory_limit = Some(700 << 20);
    p.memory_interval = 1000 * MS;
    let mut h = Harness::ready(p);
    let measured = h.at(1000 * MS);
    assert!(
        measured
            .iter()
            .any(|a| matches!(a, Action::Measure { pids, limit: Some(_), .. } if pids.len() == 3))
    );
    let old = h.serving_pids(3);
    h.feed(Event::Measured {
        pid: old[0],
        bytes: 100 << 20,
    });
    assert_eq!(statuses(&h.log).last().unwrap(), "3/3 ready · 0 restarts · 100 MiB");
    // Two workers bloat at once; max_surge = 1: one replacement at a time.
    let mut actions = h.feed(Event::Measured {
        pid: old[1],
        bytes: 800 << 20,
    });
    actions.extend(h.feed(Event::Measured {
        pid: old[2],
        bytes: 900 << 20,
    }));
    assert_eq!(spawns(&actions), vec![1]);
    assert!(
        signals(&actions).is_empty(),
        "the bloated worker keeps serving until replaced"
    );
    let first_new = h.newest();
    let actions = h.say(first_new, WorkerMessage::Ready);
    assert_eq!(
        signals(&actions),
        vec![(old[1], Signal::SIGTERM)],
        "stopped once its replacement is ready"
    );
    assert_eq!(spawns(&actions), vec![2], "the surge slot is free again");
    assert_eq!(h.ready_pids().len(), 3, "never fewer ready workers than desired");
    let second_new = h.newest();
    assert_eq!(
        signals(&h.say(second_new, WorkerMessage::Ready)),
        vec![(old[2], Signal::SIGTERM)]
    );
    assert_eq!(h.flock.total_restarts(), 0);
}

#[test]
fn a_worker_replaced_on_request_is_replaced_replacement_first_and_counted_as_requested() {
    let mut p = notify_policy(2);
    p.heartbeat = None;
    let mut h = Harness::ready(p);
    let old = h.serving_pids(2);
    assert_eq!(h.flock.replaceable(1), Ok(old[1]));
    assert_eq!(h.flock.replaceable(7), Err("there is no worker 7".into()));
    let actions = h.feed(Event::Request(Request::Replace(1)));
    assert_eq!(spawns(&actions), vec![1], "replacement first");
    assert!(signals(&actions).is_empty(), "the old one serves until then");
    assert!(
        h.flock
            .replaceable(1)
            .unwrap_err()
            .contains("is being replaced already")
    );
    let new = h.newest();
    let actions = h.say(new, WorkerMessage::Ready);
    assert_eq!(signals(&actions), vec![(old[1], Signal::SIGTERM)]);
    h.exit(old[1], ExitStatus::Code(0));
    assert_eq!(h.flock.tally().ended(Cause::Requested), 1);
    assert_eq!(h.flock.total_restarts(), 0, "not a failure");
}

#[test]
fn a_failed_memory_replacement_leaves_the_old_worker_serving() {
    let mut p = notify_policy(1);
    p.heartbeat = None;
    p.memory_limit = Some(1 << 20);
    let mut h = Harness::ready(p);
    let old = h.pid_of(0);
    let spawned = spawns(&h.feed(Event::Measured {
        pid: old,
        bytes: 2 << 20,
    }));
    assert_eq!(spawned, vec![0]);
    let new = h.newest();
    h.exit(new, ExitStatus::Code(1));
    assert!(h.ready_pids().contains(&old));
    assert!(signals(&h.log).is_empty());
}

#[test]
fn node_ipc_workers_are_pinged_every_interval() {
    let mut p = ipc_policy(2, 1000 * MS, 10_000 * MS);
    p.readiness = Readiness::NodeIpc;
    p.ready_timeout = 60_000 * MS;
    let mut h = Harness::new(p);
    let pings = |actions: &[Action]| actions.iter().filter(|a| matches!(a, Action::Ping { .. })).count();
    assert_eq!(pings(&h.start()), 0);
    assert_eq!(pings(&h.at(999 * MS)), 0);
    assert_eq!(pings(&h.at(1000 * MS)), 2);
    assert_eq!(pings(&h.run_until(3500 * MS)), 4);
}

#[test]
fn the_watchdog_relay_pings_only_a_healthy_flock() {
    let mut p = notify_policy(2);
    p.watchdog = Some(2000 * MS);
    p.restart.max_restarts = 100;
    let mut h = Harness::new(p);
    let watchdogs = |actions: &[Action]| {
        actions
            .iter()
            .filter(|a| **a == Action::Notify(Upward::Watchdog))
            .count()
    };
    assert_eq!(watchdogs(&h.start()), 1, "pinged while starting");
    assert_eq!(h.flock.next_deadline(), Some(h.t0 + 1000 * MS));
    h.make_ready();
    let mut total = 0;
    for t in (1000..=6000u32).step_by(500) {
        let actions = h.at(t * MS);
        total += watchdogs(&actions);
        for pid in h.ready_pids() {
            h.say(pid, WorkerMessage::Heartbeat);
        }
    }
    assert_eq!(total, 6, "every half interval (1 s) while healthy");
    // Every worker hangs; their replacements never become ready.
    let (mut first_kill, mut pings_after, mut kills) = (None, Vec::new(), 0);
    for t in (6100..=20_000u32).step_by(100) {
        let actions = h.at(t * MS);
        kills += signals(&actions).len();
        first_kill = first_kill.or((!signals(&actions).is_empty()).then_some(t));
        if first_kill.is_some() && watchdogs(&actions) > 0 {
            pings_after.push(t);
        }
    }
    let first_kill = first_kill.expect("the hung workers are killed");
    assert!(first_kill >= 9000, "killed at {first_kill} ms");
    // Their replacements are given ready_timeout (3 s) to heal the flock;
    // then the pings stop, and systemd's watchdog takes over.
    assert!(
        pings_after.iter().all(|t| *t < first_kill + 3000),
        "pinged at {pings_after:?} ms, the hung killed at {first_kill} ms"
    );
    assert!(kills >= 4, "hung workers and unready replacements killed");
    // Healthy again: the pings resume.
    h.make_ready();
    assert_eq!(watchdogs(&h.run_until(22_000 * MS)), 2);
    // Said once each way, not at every withheld ping.
    assert_eq!(logged("withholding watchdog pings from systemd").len(), 1);
    assert_eq!(logged("healthy again; resuming watchdog pings").len(), 1);
}

#[test]
fn a_draining_worker_asking_again_changes_nothing() {
    let mut h = Harness::ready(notify_policy(1));
    let pid = h.pid_of(0);
    h.run_until(600 * MS);
    h.say(pid, WorkerMessage::Heartbeat);
    h.say(pid, WorkerMessage::Stopping);
    let again = h.say(pid, WorkerMessage::Stopping);
    let trigger = h.say(pid, WorkerMessage::WatchdogTrigger);
    assert!(signals(&again).is_empty() && signals(&trigger).is_empty());
    assert!(spawns(&again).is_empty() && spawns(&trigger).is_empty());
    assert_eq!(h.flock.total_restarts(), 0);
    let worker = h.flock.workers().iter().find(|w| w.pid == pid).unwrap();
    assert!(matches!(
        worker.state,
        WorkerState::Stopping {
            cause: StopCause::Leaving,
            killed: false,
            ..
        }
    ));
}

/// Found by the simulator (seed 15): with `min_ready` all the workers (the
/// default), a ping due while one crashed worker's replacement boots was
/// withheld; the next came a whole watchdog interval after the last, and
/// systemd's watchdog fired on a flock that healed itself in 300 ms.
#[test]
fn a_crash_replaced_in_time_does_not_cost_a_watchdog_ping() {
    let mut p = notify_policy(2);
    p.heartbeat = None;
    p.watchdog = Some(2000 * MS);
    let mut h = Harness::new(p);
    h.start();
    h.make_ready();
    let pinged = |actions: &[Action]| actions.contains(&Action::Notify(Upward::Watchdog));
    assert!(pinged(&h.at(1000 * MS)));
    // A worker crashes just before the next ping is due, at 2 s.
    h.now = h.t0 + 1900 * MS;
    h.exit(h.pid_of(0), ExitStatus::Code(1));
    assert!(pinged(&h.at(2000 * MS)), "pinged while its replacement boots");
    h.now = h.t0 + 2300 * MS;
    h.make_ready();
    assert!(pinged(&h.at(3000 * MS)));
    assert!(logged("withholding watchdog pings").is_empty());
}

#[test]
fn watchdog_pings_go_on_while_stopping() {
    let mut p = notify_policy(1);
    p.heartbeat = None;
    p.watchdog = Some(2000 * MS);
    p.stop_timeout = 10_000 * MS;
    let mut h = Harness::ready(p);
    h.feed(Event::Request(Request::Stop));
    let pings = h
        .run_until(6000 * MS)
        .into_iter()
        .filter(|a| *a == Action::Notify(Upward::Watchdog))
        .count();
    assert_eq!(pings, 6, "every second, though no worker is ready");
}

#[test]
fn memory_is_measured_once_per_interval_and_only_for_live_workers() {
    let mut p = notify_policy(2);
    p.heartbeat = None;
    p.memory_interval = 1000 * MS;
    let mut h = Harness::ready(p);
    let measures = |actions: &[Action]| -> Vec<Vec<Pid>> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Measure { pids, .. } => Some(pids.clone()),
                _ => None,
            })
            .collect()
    };
    assert!(measures(&h.at(999 * MS)).is_empty());
    assert_eq!(measures(&h.at(1000 * MS)).len(), 1);
    assert!(measures(&h.at(1500 * MS)).is_empty(), "not every pass");
    let leaving = h.pid_of(1);
    h.say(leaving, WorkerMessage::Stopping);
    let at_2s = measures(&h.at(2000 * MS));
    assert_eq!(at_2s.len(), 1);
    assert!(!at_2s[0].contains(&leaving), "a stopping worker is not measured");
    assert_eq!(measures(&h.run_until(10_000 * MS)).len(), 8);
}

#[test]
fn what_a_worker_says_is_kept_for_status() {
    let mut h = Harness::new(notify_policy(1));
    h.start();
    let pid = h.pid_of(0);
    h.say(pid, WorkerMessage::Status("warming caches".into()));
    h.say(pid, WorkerMessage::Errno(5));
    h.feed(Event::Measured { pid, bytes: 42 << 20 });
    let worker = &h.flock.workers()[0];
    assert_eq!(worker.status.as_deref(), Some("warming caches"));
    assert_eq!(worker.memory, Some(42 << 20));
    assert!(worker.is_starting(), "neither is readiness");
    assert_eq!(
        statuses(&h.log).last().unwrap(),
        "0/1 ready · 0 restarts · 42 MiB",
        "the flock's memory in STATUS"
    );
}

#[test]
fn ready_without_a_protocol_comes_from_the_delay_alone() {
    let mut h = Harness::new(policy(1));
    h.start();
    let pid = h.pid_of(0);
    h.say(pid, WorkerMessage::Ready);
    assert!(
        h.flock.workers()[0].is_starting(),
        "readiness = none: a READY=1 means nothing"
    );
    h.at(1000 * MS);
    assert!(h.flock.workers()[0].is_ready());
}

#[test]
fn memory_exactly_at_the_limit_is_within_it() {
    let mut p = notify_policy(1);
    p.heartbeat = None;
    p.memory_limit = Some(1 << 20);
    let mut h = Harness::ready(p);
    let pid = h.pid_of(0);
    assert!(spawns(&h.feed(Event::Measured { pid, bytes: 1 << 20 })).is_empty());
    assert_eq!(
        spawns(&h.feed(Event::Measured {
            pid,
            bytes: (1 << 20) + 1
        })),
        vec![0]
    );
    assert_eq!(logged("it will be replaced, replacement first").len(), 1);
    assert_eq!(logged("starting its replacement (memory limit)").len(), 1);
}

#[test]
fn the_stall_guard_waits_for_two_intervals_when_the_timeout_is_shorter() {
    let mut p = notify_policy(1);
    p.heartbeat = Some(HeartbeatPolicy {
        interval: 1000 * MS,
        timeout: 1500 * MS,
    });
    let mut h = Harness::ready(p);
    let pid = h.pid_of(0);
    // The loop is silent for 1.8 s: less than two intervals, so not a stall
    // of the supervisor's; the worker, silent as long, is hung.
    assert_eq!(signals(&h.at(1800 * MS)), vec![(pid, Signal::SIGKILL)]);
    assert!(logged("the supervisor itself was stalled").is_empty());
}

#[test]
fn a_loop_silent_exactly_as_long_as_the_guard_allows_is_not_a_stall() {
    let mut h = Harness::ready(notify_policy(1));
    let pid = h.pid_of(0);
    // 3 s is the heartbeat timeout itself: the worker is hung, the loop is not.
    assert_eq!(signals(&h.at(3000 * MS)), vec![(pid, Signal::SIGKILL)]);
    assert!(logged("the supervisor itself was stalled").is_empty());
}

#[test]
fn a_failed_worker_killed_is_not_said_to_have_drained() {
    let mut h = Harness::ready(notify_policy(1));
    let pid = h.pid_of(0);
    assert_eq!(signals(&h.at(3000 * MS)), vec![(pid, Signal::SIGKILL)]);
    h.exit(pid, ExitStatus::Signaled(Signal::SIGKILL));
    assert!(logged("of draining").is_empty(), "a hung worker does not drain");
}

#[test]
fn a_worker_saying_it_is_stopping_before_it_is_ready_is_a_failed_start() {
    let mut h = Harness::new(notify_policy(1));
    h.start();
    let pid = h.pid_of(0);
    let actions = h.say(pid, WorkerMessage::Stopping);
    assert_eq!(h.flock.total_restarts(), 1, "counted");
    assert_eq!(spawns(&actions), vec![0], "a first failure is refilled at once");
    assert_eq!(logged("before it was ready: a failed start").len(), 1);
    // Its exit is not counted twice; a second young suicide waits out a backoff.
    h.exit(pid, ExitStatus::Code(1));
    assert_eq!(h.flock.total_restarts(), 1);
    let again = h.pid_of(0);
    let actions = h.say(again, WorkerMessage::Stopping);
    assert!(spawns(&actions).is_empty(), "backed off, not replaced at once");
    assert_eq!(h.flock.next_deadline(), Some(h.now + 100 * MS));
}

#[test]
fn a_ready_worker_leaving_sooner_than_min_uptime_is_a_failed_start_too() {
    let mut h = Harness::ready(notify_policy(1));
    let pid = h.pid_of(0);
    h.now += 400 * MS;
    h.say(pid, WorkerMessage::Stopping);
    assert_eq!(h.flock.total_restarts(), 1);
    assert_eq!(
        logged("0.4s after it started (min_uptime 500ms): a failed start").len(),
        1
    );
    // At min_uptime it is a polite drain: not counted.
    let mut h = Harness::ready(notify_policy(1));
    let pid = h.pid_of(0);
    h.now += 500 * MS;
    h.say(pid, WorkerMessage::Stopping);
    assert_eq!(h.flock.total_restarts(), 0);
}

#[test]
fn suicides_at_boot_trip_the_crash_loop_breaker() {
    let mut h = Harness::new(notify_policy(2));
    h.start();
    for _ in 0..MAX_PASSES {
        if h.flock.is_shutting_down() {
            break;
        }
        match h.flock.workers().iter().find(|w| w.is_starting()).map(|w| w.pid) {
            Some(pid) => {
                h.say(pid, WorkerMessage::Stopping);
                h.exit(pid, ExitStatus::Code(1));
            }
            None => {
                h.now = h.flock.next_deadline().expect("a respawn is due");
                h.feed(Event::Tick);
            }
        }
    }
    assert!(h.flock.is_shutting_down(), "a crash loop, however politely announced");
    assert!(
        spawns(&h.log).len() <= 2 + 5,
        "spawns bounded by the breaker: {}",
        spawns(&h.log).len()
    );
}

#[test]
fn a_closed_channel_is_a_warning_only_for_a_worker_still_serving() {
    let mut p = notify_policy(2);
    p.readiness = Readiness::NodeIpc;
    p.channel = Channel::NodeIpc;
    let mut h = Harness::ready(p);
    let (serving, leaving) = (h.pid_of(0), h.pid_of(1));
    h.now += 600 * MS;
    h.say(leaving, WorkerMessage::Stopping);
    h.say(leaving, WorkerMessage::ChannelClosed);
    assert!(logged("closed its IPC channel").iter().all(|l| l.starts_with("DEBUG")));
    h.say(serving, WorkerMessage::ChannelClosed);
    let warned = logged(&format!(
        "(pid {serving}) closed its IPC channel; it can no longer send heartbeats"
    ));
    assert_eq!(warned.len(), 1);
    assert!(warned[0].starts_with("WARN"), "{warned:?}");
}

#[test]
fn pings_carry_the_configured_message_with_the_workers_pid() {
    let mut p = ipc_policy(2, 1000 * MS, 3000 * MS);
    p.heartbeat_ping = "ping#{pid}".into();
    let mut h = Harness::new(p);
    h.start();
    let pings: Vec<(Pid, String)> = h
        .at(1000 * MS)
        .into_iter()
        .filter_map(|a| match a {
            Action::Ping { pid, message } => Some((pid, message)),
            _ => None,
        })
        .collect();
    assert_eq!(pings.len(), 2);
    for (pid, message) in pings {
        assert_eq!(message, format!("ping#{pid}"));
    }
    // Ready by delay (it never says so), then alive as long as it answers.
    assert!(h.flock.workers().iter().all(|w| w.is_ready()));
    let (a, b) = (h.pid_of(0), h.pid_of(1));
    for at in [2000, 3000, 4000] {
        h.now = h.t0 + at * MS;
        h.say(a, WorkerMessage::Heartbeat);
        h.feed(Event::Tick);
    }
    assert_eq!(signals(&h.log), vec![(b, Signal::SIGKILL)], "the silent one is hung");
}

#[test]
fn young_ready_workers_are_inspected_ever_more_sparsely_for_a_minute() {
    let mut p = policy(1);
    p.memory_interval = 5000 * MS;
    let mut h = Harness::new(p);
    h.start();
    let inspected =
        |actions: &[Action]| -> usize { actions.iter().filter(|a| matches!(a, Action::Inspect { .. })).count() };
    let pid = h.pid_of(0);
    let first_minute = inspected(&h.run_until(Duration::from_secs(59)));
    assert_eq!(
        first_minute, 6,
        "once ready (1 s), then at 5, 10, 15, 20 and 35 s: ages past 2, 4, 8, 16, 32 s"
    );
    let mut every_second = policy(1);
    every_second.memory_interval = 1000 * MS;
    let mut h1 = Harness::new(every_second);
    h1.start();
    assert_eq!(inspected(&h1.run_until(Duration::from_secs(59))), 6, "not 59 looks");
    assert_eq!(inspected(&h.run_until(Duration::from_secs(120))), 0, "not after");
    let astray = || Event::Inspected(vec![(pid, Inspection::Astray(vec!["0.0.0.0:3000".into()]))]);
    h.feed(astray());
    assert_eq!(logged("listens on 0.0.0.0:3000 itself").len(), 1, "warned at once");
    h.feed(astray());
    assert_eq!(h.flock.workers()[0].listens_itself, ["0.0.0.0:3000"]);
    assert_eq!(logged("listens on 0.0.0.0:3000 itself").len(), 1, "warned once");
}

#[test]
fn a_worker_failing_while_another_holds_a_port_of_its_own_is_told_why_on_its_failure_line() {
    let mut h = Harness::new(policy(2));
    h.start();
    h.run_until(Duration::from_secs(2));
    let pids = h.serving_pids(2);
    h.exit(pids[1], ExitStatus::Code(1));
    let line = logged(&format!("(pid {}) exited with code 1", pids[1])).pop().unwrap();
    assert!(!line.contains("EADDRINUSE"), "nobody holds a port yet: {line}");
    h.feed(Event::Inspected(vec![(
        pids[0],
        Inspection::Astray(vec!["[::]:3000".into()]),
    )]));
    let replacement = h.pid_of(1);
    h.exit(replacement, ExitStatus::Code(1));
    let line = logged(&format!("(pid {replacement}) exited with code 1"))
        .pop()
        .unwrap();
    assert!(
        line.contains(&format!(
            "(worker 0 (pid {}) listens on [::]:3000 itself, so a worker binding that port fails with EADDRINUSE",
            pids[0]
        )),
        "{line}"
    );
}

#[test]
fn the_listeners_are_checked_every_second_and_one_shut_down_is_said_loudly() {
    let mut p = policy(2);
    p.listener_check = Some(1000 * MS);
    let mut h = Harness::new(p);
    h.start();
    assert_eq!(h.flock.listener_check_deadline(), Some(h.t0 + 1000 * MS));
    let checks = |actions: &[Action]| actions.iter().filter(|a| **a == Action::CheckListeners).count();
    assert_eq!(checks(&h.at(999 * MS)), 0);
    assert_eq!(checks(&h.at(1000 * MS)), 1);
    assert_eq!(checks(&h.at(1500 * MS)), 0);
    assert_eq!(h.flock.next_deadline(), Some(h.t0 + 2000 * MS));
    assert_eq!(checks(&h.run_until(10_000 * MS)), 9);

    // One that listens again: said at error level, nothing else changes.
    let pids = h.serving_pids(2);
    let actions = h.feed(Event::ListenersChecked {
        recovered: vec!["127.0.0.1:8080 was shut down; listening on it again".into()],
        lost: vec![],
    });
    assert!(signals(&actions).is_empty() && spawns(&actions).is_empty());
    assert_eq!(h.serving_pids(2), pids);
    assert_eq!(
        logged("ERROR 127.0.0.1:8080 was shut down; listening on it again").len(),
        1
    );
}

#[test]
fn a_listener_that_cannot_listen_again_stops_the_flock_and_exits_1() {
    let mut h = Harness::serving(policy(2));
    let pids = h.serving_pids(2);
    let actions = h.feed(Event::ListenersChecked {
        recovered: vec![],
        lost: vec!["unix:/run/app.sock was shut down".into()],
    });
    assert!(actions.contains(&Action::Notify(Upward::Stopping)));
    assert_eq!(
        signals(&actions),
        pids.iter().map(|p| (*p, Signal::SIGTERM)).collect::<Vec<_>>()
    );
    h.exit(pids[0], ExitStatus::Code(0));
    let last = h.exit(pids[1], ExitStatus::Code(0));
    let exit = last.iter().find_map(|a| match a {
        Action::Exit { code, reason } => Some((*code, reason.clone())),
        _ => None,
    });
    let (code, reason) = exit.expect("the supervisor exits");
    assert_eq!(code, 1);
    assert!(
        reason.contains("no connection can reach the flock: unix:/run/app.sock was shut down"),
        "{reason}"
    );
    assert_eq!(logged("ERROR unix:/run/app.sock was shut down").len(), 1);
}

#[test]
fn a_worker_listening_on_a_port_of_its_own_does_not_count_as_ready() {
    // readiness = "none": ready by delay, but a look finds it listening on
    // :3000 itself (app.listen(3000) without the preload).
    let mut h = Harness::new(policy(2));
    h.start();
    let astray = h.pid_of(0);
    h.astray.insert(astray, vec!["0.0.0.0:3000".into()]);
    let actions = h.at(1000 * MS);
    assert!(!ready_sent(&actions), "READY=1 said while one worker serves elsewhere");
    assert_eq!(h.flock.ready_count(), 1);
    assert!(
        statuses(&actions).last().unwrap().starts_with("1/2 ready"),
        "{actions:?}"
    );
    // Within its grace it may still be setting up (an --inspect port comes
    // before fd 3): it is named once the grace (1 s) is over.
    assert!(logged("itself, not on the socket sheepdog passed").is_empty());
    let actions = h.run_until(Duration::from_millis(2300));
    assert!(!ready_sent(&actions));
    let why = h.flock.unhealthy_reason().unwrap();
    assert!(why.contains("worker 0 listens on 0.0.0.0:3000 itself"), "{why}");
    assert_eq!(
        logged("listens on 0.0.0.0:3000 itself, not on the socket sheepdog passed").len(),
        1
    );
    // Once it no longer does (a look finds nothing), it counts.
    h.astray.clear();
    h.feed(Event::Inspected(vec![(astray, Inspection::Serves)]));
    assert_eq!(h.flock.ready_count(), 2);
    assert!(ready_sent(&h.feed(Event::Tick)) || ready_sent(&h.log));
}

#[test]
fn a_reload_onto_code_that_listens_on_its_own_port_is_aborted() {
    let mut h = Harness::ready(reload_policy(2));
    let old = h.serving_pids(2);
    let actions = reload(&mut h, 1, reload_policy(2));
    assert_eq!(spawned_generations(&actions), vec![(0, 2)]);
    let new = h.newest();
    h.astray.insert(new, vec!["0.0.0.0:3000".into()]);
    let actions = h.say(new, WorkerMessage::Ready);
    let (_, ok, message) = finished(&actions).expect("the reload ended");
    assert!(!ok);
    assert!(message.contains("listens on 0.0.0.0:3000 itself"), "{message}");
    // The old generation serves on, every worker of it.
    assert_eq!(h.serving_pids(2), old);
    assert!(!signals(&actions).iter().any(|(pid, _)| old.contains(pid)));
}

#[test]
fn a_worker_saying_errno_in_a_loop_is_logged_a_few_times_not_each() {
    let mut h = Harness::ready(notify_policy(1));
    let pid = h.pid_of(0);
    for _ in 0..1000 {
        h.say(pid, WorkerMessage::Errno(5));
    }
    let lines = logged("reports errno 5").len();
    assert!((1..=5).contains(&lines), "{lines} lines for 1000 ERRNO=5");
}

#[test]
fn a_worker_ready_by_delay_that_shows_no_sign_yet_counts_only_after_a_grace() {
    // Node still starting at ready_delay: no port of its own yet, and the
    // passed socket in no epoll set either. It is looked at again until it
    // shows which, or the grace (1 s at least) is over.
    let mut p = policy(1);
    p.ready_delay = 300 * MS;
    let mut h = Harness::new(p);
    h.start();
    let pid = h.pid_of(0);
    h.astray.insert(pid, vec![]);
    let actions = h.at(300 * MS);
    assert!(!ready_sent(&actions));
    assert_eq!(h.flock.ready_count(), 0);
    // Then it binds :3000 itself: seen at the next look, 200 ms on, and
    // named once its grace (1 s from ready) is over without a sign it serves.
    h.astray.insert(pid, vec!["127.0.0.1:3000".into()]);
    assert_eq!(h.flock.next_deadline(), Some(h.t0 + 500 * MS));
    h.at(500 * MS);
    assert!(
        h.flock.workers()[0].listens_itself.is_empty(),
        "not yet: it may still set up"
    );
    h.run_until(Duration::from_millis(1500));
    assert_eq!(h.flock.workers()[0].listens_itself, ["127.0.0.1:3000"]);
    assert!(!ready_sent(&h.log));
    // Another that shows nothing for the whole grace counts after it (a
    // poll() loop leaves no trace).
    let mut h = Harness::new(policy(1));
    h.start();
    let quiet = h.pid_of(0);
    h.astray.insert(quiet, vec![]);
    h.at(1000 * MS);
    assert_eq!(h.flock.ready_count(), 0);
    h.run_until(Duration::from_millis(1900));
    assert_eq!(h.flock.ready_count(), 0, "within the grace");
    h.run_until(Duration::from_millis(2300));
    assert_eq!(h.flock.ready_count(), 1, "after it");
    assert!(ready_sent(&h.log));
}

#[test]
fn a_port_of_its_own_seen_before_it_serves_the_socket_is_no_alarm() {
    // Node with --inspect under load: the inspector's port is up before the
    // app listens on fd 3, at the first look after ready_delay.
    let mut p = policy(1);
    p.ready_delay = 200 * MS;
    let mut h = Harness::new(p);
    h.start();
    let pid = h.pid_of(0);
    h.astray.insert(pid, vec!["127.0.0.1:9229".into()]);
    h.at(200 * MS);
    assert_eq!(h.flock.ready_count(), 0);
    // The next look finds it in accept() on the passed socket.
    h.astray.remove(&pid);
    h.run_until(Duration::from_millis(600));
    assert_eq!(h.flock.ready_count(), 1);
    assert!(h.flock.workers()[0].listens_itself.is_empty());
    assert!(logged("itself, not on the socket").is_empty(), "{:?}", logged("itself"));
}

#[test]
fn the_watchdog_relay_pings_on_while_a_flock_grows_and_its_new_workers_boot() {
    let mut p = notify_policy(2);
    p.heartbeat = None;
    p.watchdog = Some(2000 * MS);
    let mut h = Harness::ready(p.clone());
    let watchdogs = |actions: &[Action]| {
        actions
            .iter()
            .filter(|a| **a == Action::Notify(Upward::Watchdog))
            .count()
    };
    // Reloaded onto a config of 8 (min_ready = workers = 8): six new workers
    // boot for 4 s on a busy machine (a failure among them would abort the
    // reload, back to 2).
    let mut grown = p.clone();
    grown.workers = 8;
    grown.min_ready = 8;
    grown.ready_timeout = 10_000 * MS;
    reload(&mut h, 1, grown);
    let t = h.now - h.t0;
    assert_eq!(
        watchdogs(&h.run_until(t + 4000 * MS)),
        4,
        "every second while they boot"
    );
    assert!(logged("withholding watchdog pings").is_empty());
    // They are ready: healthy by the new count.
    h.make_ready();
    assert!(h.flock.is_healthy());
    assert_eq!(h.flock.ready_count(), 8);
}
