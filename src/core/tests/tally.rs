//! What the flock counts: why workers ended, reloads, the listen queues,
//! and why it is not ready.

use super::*;

fn ended(h: &Harness, cause: Cause) -> u64 {
    h.flock.tally().ended(cause)
}

/// Reaps every worker that was told to stop (as their exits would come).
fn reap_stopping(h: &mut Harness, status: ExitStatus) {
    let stopping: Vec<Pid> = h
        .flock
        .workers()
        .iter()
        .filter(|w| w.is_stopping())
        .map(|w| w.pid)
        .collect();
    for pid in stopping {
        h.exit(pid, status);
    }
}

#[test]
fn each_end_of_a_worker_is_counted_under_its_cause_and_a_shutdown_under_none() {
    let mut h = Harness::ready(notify_policy(3));
    assert!(h.flock.tally().ended_by_cause().all(|(_, n)| n == 0));
    assert_eq!(
        h.flock.tally().ended_by_cause().count(),
        Cause::ALL.len(),
        "zeros are listed"
    );

    let a = h.pid_of(0);
    h.exit(a, ExitStatus::Code(3));
    assert_eq!(ended(&h, Cause::Crash), 1);
    let b = h.pid_of(1);
    h.exit(b, ExitStatus::Signaled(Signal::SIGKILL));
    assert_eq!(ended(&h, Cause::Signal), 1);
    h.make_ready();

    // Silent past the heartbeat timeout: killed, and counted as hung once reaped.
    let hung = h.pid_of(2);
    for t in [1000u32, 2000, 3000] {
        h.at(t * MS);
        for pid in h.serving_pids(2) {
            h.say(pid, WorkerMessage::Heartbeat);
        }
    }
    assert!(signals(&h.log).contains(&(hung, Signal::SIGKILL)));
    assert_eq!(ended(&h, Cause::Hung), 0, "counted when it is gone");
    h.exit(hung, ExitStatus::Signaled(Signal::SIGKILL));
    assert_eq!(ended(&h, Cause::Hung), 1);
    assert_eq!(ended(&h, Cause::Signal), 1, "sheepdog's own SIGKILL is not 'signal'");
    h.make_ready();

    // A worker that says it is leaving, once it served a while.
    h.at(10_000 * MS);
    for pid in h.serving_pids(3) {
        h.say(pid, WorkerMessage::Heartbeat);
    }
    let leaving = h.pid_of(0);
    h.say(leaving, WorkerMessage::Stopping);
    h.exit(leaving, ExitStatus::Code(0));
    assert_eq!(ended(&h, Cause::Stopping), 1);
    h.make_ready();

    h.feed(Event::Request(Request::Scale(2)));
    reap_stopping(&mut h, ExitStatus::Code(0));
    assert_eq!(ended(&h, Cause::Scale), 1);

    h.feed(Event::Request(Request::Stop));
    reap_stopping(&mut h, ExitStatus::Code(0));
    assert_eq!(ended(&h, Cause::Crash), 1, "a clean stop is no crash");
    let total: u64 = h.flock.tally().ended_by_cause().map(|(_, n)| n).sum();
    assert_eq!(total, 5, "the shutdown's exits are not counted");
}

#[test]
fn reloads_are_counted_by_outcome_with_their_durations() {
    let mut h = Harness::ready(reload_policy(2));
    reload(&mut h, 1, reload_policy(2));
    h.at(1500 * MS);
    ready_one_by_one(&mut h, 2);
    reap_stopping(&mut h, ExitStatus::Code(0));
    let tally = h.flock.tally();
    assert_eq!(
        (tally.reloads_ok, tally.reloads_failed, tally.reloads_refused),
        (1, 0, 0)
    );
    assert_eq!(
        ended(&h, Cause::Reload),
        2,
        "both old workers were replaced by the reload"
    );
    let histogram = &h.flock.tally().reload_seconds;
    assert_eq!(histogram.count, 1);
    assert!((histogram.sum - 1.5).abs() < 1e-9, "{}", histogram.sum);
    // 1.5 s falls in the buckets from 2.5 s up, not in those under it.
    let bucket = |bound: f64| {
        histogram.buckets[crate::core::tally::RELOAD_BUCKETS
            .iter()
            .position(|b| *b == bound)
            .unwrap()]
    };
    assert_eq!((bucket(1.0), bucket(2.5), bucket(300.0)), (0, 1, 1));

    // A new generation that crashes at boot: failed.
    reload(&mut h, 2, reload_policy(2));
    let new = h.newest();
    h.exit(new, ExitStatus::Code(1));
    // One refused during a roll, one refused for its config.
    reload(&mut h, 3, reload_policy(2));
    ready_one_by_one(&mut h, 1);
    h.feed(Event::Request(Request::ReloadRefused {
        ticket: 4,
        reason: "bad config".into(),
    }));
    let tally = h.flock.tally();
    assert_eq!(
        (tally.reloads_ok, tally.reloads_failed, tally.reloads_refused),
        (2, 1, 1)
    );
    assert_eq!(tally.reload_seconds.count, 3, "refused reloads took no time to measure");
}

#[test]
fn an_unready_flock_says_which_worker_is_missing_and_why() {
    let mut h = Harness::ready(notify_policy(2));
    assert_eq!(h.flock.unhealthy_reason(), None);
    // Both stop heartbeating: both are killed at the timeout.
    h.at(3000 * MS);
    for pid in signals(&h.log).into_iter().map(|(pid, _)| pid).collect::<Vec<_>>() {
        h.exit(pid, ExitStatus::Signaled(Signal::SIGKILL));
    }
    assert_eq!(
        h.flock.unhealthy_reason().as_deref(),
        Some("0/2 ready (2 needed): worker 0 missed heartbeats, worker 1 missed heartbeats")
    );
    let first = h.pid_of(0);
    h.say(first, WorkerMessage::Ready);
    assert_eq!(
        h.flock.unhealthy_reason().as_deref(),
        Some("1/2 ready (2 needed): worker 1 missed heartbeats")
    );
    let fresh = Harness::new(notify_policy(1));
    assert_eq!(
        fresh.flock.unhealthy_reason().as_deref(),
        Some("0/1 ready (1 needed): worker 0 not started")
    );
}

fn queue(queued: u32, backlog: u32) -> ListenQueue {
    ListenQueue {
        queue: None,
        address: "127.0.0.1:8080".into(),
        queued,
        backlog,
    }
}

#[test]
fn a_listen_queue_full_for_three_samples_is_warned_of_once_a_minute() {
    let mut h = Harness::ready(notify_policy(1));
    let warned = || logged("has been full for").len();
    h.feed(Event::QueuesSampled(vec![queue(5, 128)]));
    assert!(
        statuses(&h.log).last().unwrap().ends_with(" · 5 queued"),
        "{:?}",
        statuses(&h.log)
    );
    for _ in 0..2 {
        h.feed(Event::QueuesSampled(vec![queue(128, 128)]));
    }
    assert_eq!(warned(), 0, "two full samples are a burst, not a backlog");
    h.feed(Event::QueuesSampled(vec![queue(128, 128)]));
    assert_eq!(warned(), 1);
    for _ in 0..10 {
        h.feed(Event::QueuesSampled(vec![queue(129, 128)]));
    }
    assert_eq!(warned(), 1, "rate-limited");
    h.feed(Event::QueuesSampled(vec![queue(0, 128)]));
    assert_eq!(logged("no longer full").len(), 1);
    assert!(!statuses(&h.log).last().unwrap().contains("queued"));
    h.at(61_000 * MS);
    for _ in 0..3 {
        h.feed(Event::QueuesSampled(vec![queue(128, 128)]));
    }
    assert_eq!(warned(), 2, "warned again a minute later");
    assert_eq!(h.flock.tally().queued(), 128);
}

#[test]
fn the_crash_loop_breaker_is_counted() {
    let mut h = Harness::new(crash_limit(1, 10_000 * MS));
    h.start();
    for _ in 0..2 {
        let pid = h.newest();
        h.exit(pid, ExitStatus::Code(1));
        h.run_until(h.now.saturating_duration_since(h.t0) + 5000 * MS);
    }
    assert!(h.flock.is_shutting_down());
    assert_eq!(h.flock.tally().crash_loops, 1);
    assert_eq!(ended(&h, Cause::Crash), 2);
}
