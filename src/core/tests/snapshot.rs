//! The flock as data: a flock restored from its state (through JSON, as
//! the upgrade hands it over) behaves as the original would have, with every
//! time point shifted by the hand-over.

use super::*;
use crate::clock::relative_to;
use serde_json::Value;

/// The flock's state as the hand-over writes it, time points relative to `now`.
pub(super) fn state_of(flock: &Flock, now: Moment) -> Result<Value, String> {
    let flock = flock.to_hand_over()?;
    Ok(relative_to(now, || serde_json::to_value(&flock)).unwrap())
}

/// The flock `state` describes, its time points read relative to `now`.
pub(super) fn restore(state: Value, now: Moment) -> Result<Flock, String> {
    let flock: Flock = relative_to(now, || serde_json::from_value(state)).map_err(|e| e.to_string())?;
    flock.validate()
}

/// The hand-over's gap: the restored flock's clock reads this much later.
const GAP: Duration = Duration::from_millis(37);

/// A flock with something of everything in flight: backoffs, a crash in the
/// restart window, a worker over its memory limit, a reload half done.
fn busy() -> Harness {
    let mut p = ipc_policy(3, 500 * MS, 1500 * MS);
    p.readiness = Readiness::NodeIpc;
    p.memory_limit = Some(100 << 20);
    p.memory_interval = 700 * MS;
    p.recycle = RecyclePolicy {
        max_age: Some(Duration::from_secs(12)),
        jitter: Duration::from_secs(2),
    };
    p.watchdog = Some(Duration::from_secs(4));
    let mut h = Harness::ready(p.clone());
    // Slot 2's worker is over the memory limit: it retires, replacement first.
    let fat = h.pid_of(2);
    h.feed(Event::Measured {
        pid: fat,
        bytes: 300 << 20,
    });
    // A reload begins, and the new worker of slot 0 is ready…
    reload(&mut h, 7, p);
    let first_new = h.worker(0, 2);
    h.say(first_new, WorkerMessage::Ready);
    // …then crashes twice: its next one waits out a longer backoff.
    for _ in 0..2 {
        let pid = h.worker_of(0, 2);
        h.exit(pid, ExitStatus::Code(3));
        h.run_until(h.now.saturating_duration_since(h.t0) + 150 * MS);
        let again = h.worker_of(0, 2);
        h.say(again, WorkerMessage::Ready);
    }
    h
}

/// The twin of `h` restored from its snapshot, its clock `GAP` later.
fn twin(h: &Harness) -> Harness {
    let state = state_of(&h.flock, h.now).expect("a running flock has a state");
    let json = serde_json::to_string(&state).unwrap();
    let read: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(read, state, "the state survives JSON unchanged");
    let now = h.now + GAP;
    Harness {
        flock: restore(read, now).expect("the state restores"),
        t0: h.t0 + GAP,
        now,
        next_pid: h.next_pid,
        log: Vec::new(),
        runnable: h.runnable,
        astray: h.astray.clone(),
        drains_at_once: h.drains_at_once,
    }
}

/// One step of a world both flocks live in: time passes, every worker but
/// `silent` heartbeats, starting ones get ready every other step, and what
/// was signalled in the step before exits.
fn step(h: &mut Harness, index: usize, signalled: &[Pid], silent: Pid) -> Vec<Action> {
    h.now += 250 * MS;
    let mut actions = h.feed(Event::Tick);
    for pid in signalled {
        actions.extend(h.exit(*pid, ExitStatus::Signaled(Signal::SIGTERM)));
    }
    let pids: Vec<(Pid, bool)> = h.flock.workers().iter().map(|w| (w.pid, w.is_starting())).collect();
    for (pid, starting) in pids {
        if starting && index.is_multiple_of(2) {
            actions.extend(h.say(pid, WorkerMessage::Ready));
        } else if pid != silent {
            actions.extend(h.say(pid, WorkerMessage::Heartbeat));
        }
    }
    actions
}

impl Harness {
    /// The live (not stopping) worker of `slot` in `generation`.
    fn worker_of(&self, slot: usize, generation: u32) -> Pid {
        self.flock
            .workers()
            .iter()
            .find(|w| w.slot == slot && w.generation == generation && !w.is_stopping())
            .map(|w| w.pid)
            .expect("a live worker in that slot and generation")
    }
}

fn signalled(actions: &[Action]) -> Vec<Pid> {
    signals(actions).into_iter().map(|(pid, _)| pid).collect()
}

#[test]
fn a_restored_flock_acts_as_the_original_would_have() {
    let mut original = busy();
    let mut restored = twin(&original);
    assert_eq!(
        state_of(&restored.flock, restored.now),
        state_of(&original.flock, original.now),
        "restoring is the inverse of the snapshot"
    );
    assert_eq!(restored.flock.status_line(), original.flock.status_line());
    assert_eq!(
        restored.flock.next_deadline().map(|d| d - restored.now),
        original.flock.next_deadline().map(|d| d - original.now),
        "every deadline is as far away"
    );
    let (mut kept, mut again) = (Vec::new(), Vec::new());
    let (mut before, mut after) = (Vec::new(), Vec::new());
    // Slot 0 crashed twice: its hung worker is backed off for that.
    let silent = original.worker_of(0, 2);
    // 40 s of the same world: hangs, kills, refills, the reload's end,
    // recycling by age, watchdog pings, memory checks.
    for index in 0..160 {
        let a = step(&mut original, index, &kept, silent);
        let b = step(&mut restored, index, &again, silent);
        assert_eq!(b, a, "step {index}: the restored flock acted otherwise");
        kept = signalled(&a);
        again = signalled(&b);
        before.extend(a);
        after.extend(b);
    }
    assert_eq!(
        state_of(&restored.flock, restored.now),
        state_of(&original.flock, original.now)
    );
    // The world was eventful enough to tell: the hung worker was killed,
    // the reload ended, and workers were recycled by age.
    assert!(
        before
            .iter()
            .any(|a| matches!(a, Action::ReloadFinished { ok: true, .. }))
    );
    assert!(
        logged(&format!("(pid {silent}) missed heartbeats")).len() == 2,
        "{:?}",
        logged("missed")
    );
    assert!(restored.flock.recycled() > 0);
}

#[test]
fn time_points_are_relative_to_the_snapshot() {
    let h = busy();
    let state = state_of(&h.flock, h.now).unwrap();
    let slot0 = &state["slots"][0];
    assert_eq!(
        (&slot0["restarts"], &slot0["failures"]),
        (&Value::from(2), &Value::from(2))
    );
    assert_eq!(slot0["last_end"], "crash");
    assert!(state["rollout"].is_object());
    let at = |v: &Value| v.as_i64().expect("a time point is a signed number");
    assert!(at(&state["timers"]["next_watchdog"]) > 0 && at(&state["timers"]["last_pass"]) <= 0);
    let workers = state["workers"].as_array().unwrap();
    for worker in workers {
        let started_at = at(&worker["started_at"]);
        assert!(started_at <= 0, "started before the snapshot");
        if worker["state"]["is"] == "ready" {
            let since = at(&worker["state"]["since"]);
            assert!(since <= 0 && since >= started_at);
        }
    }
    assert!(
        workers
            .iter()
            .any(|w| w["state"]["is"] == "ready" && !w["state"]["retiring"].is_null()),
        "the fat worker and the reload's old ones are retiring"
    );
}

#[test]
fn a_stopping_flock_has_no_snapshot() {
    let mut h = Harness::ready(policy(2));
    h.feed(Event::Request(Request::Stop));
    assert_eq!(state_of(&h.flock, h.now).unwrap_err(), "the supervisor is stopping");
}

#[test]
fn a_state_that_cannot_be_is_refused_not_restored() {
    let h = busy();
    let good = state_of(&h.flock, h.now).unwrap();
    let duration = |d: Duration| serde_json::to_value(d).unwrap();
    type Breakage = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Breakage)> = vec![
        ("generation 0", Box::new(|s| s["generation"] = 0.into())),
        ("workers desired", Box::new(|s| s["desired"] = 0.into())),
        (
            "out of range",
            Box::new(|s| s["workers"][0]["started_at"] = i64::MIN.into()),
        ),
        ("out of range", Box::new(|s| s["timers"]["next_ping"] = i64::MAX.into())),
        (
            "twice",
            Box::new(|s| s["workers"][1]["pid"] = s["workers"][0]["pid"].clone()),
        ),
        ("pid of 0 or 1", Box::new(|s| s["workers"][0]["pid"] = 1.into())),
        (
            "unknown variant `carrier-pigeon`",
            Box::new(|s| s["policy"]["readiness"] = "carrier-pigeon".into()),
        ),
        (
            "not a signal",
            Box::new(|s| s["policy"]["stop_signal"] = "SIGNOPE".into()),
        ),
        (
            "zero",
            Box::new(move |s| s["policy"]["memory_interval"] = duration(Duration::ZERO)),
        ),
        ("spawn budget", Box::new(|s| s["budget"]["tokens"] = (-1.0).into())),
        // A watchdog of u64::MAX seconds once passed, and the first pass
        // panicked on the overflow of an Instant.
        (
            "watchdog of 18446744073709551615s cannot be",
            Box::new(move |s| s["policy"]["watchdog"] = duration(Duration::from_secs(u64::MAX))),
        ),
        (
            "stop_timeout of",
            Box::new(move |s| s["policy"]["stop_timeout"] = duration(Duration::MAX)),
        ),
        (
            "heartbeat timeout of",
            Box::new(move |s| s["policy"]["heartbeat"]["timeout"] = duration(Duration::from_secs(1 << 40))),
        ),
    ];
    for (says, break_it) in cases {
        let mut state = good.clone();
        break_it(&mut state);
        let error = restore(state, h.now).expect_err("refused");
        assert!(error.contains(says), "{says}: {error}");
    }
    assert!(restore(good, h.now).is_ok());
}

#[test]
fn every_field_survives_the_round_trip() {
    let mut h = busy();
    // What the busy flock leaves at its defaults, set otherwise.
    h.flock.timers.withholding_watchdog = true;
    h.flock.recycling.count = 3;
    h.flock.recycling.last_begun = Some(h.now - 2 * MS);
    h.flock.tally.crash_loops = 1;
    // A reload of 2.5 s counted: some buckets hold it, the lower ones not.
    h.flock.tally.reload_seconds.observe(2.5);
    h.flock.tally.reloads_refused = 4;
    h.flock.workers[0].status = Some("busy".into());
    h.flock.workers[0].listens_itself = vec!["127.0.0.1:3000".into()];
    h.flock.workers[0].inspections = 5;
    h.flock.last_reload = Some(ReloadOutcome {
        generation: None,
        ok: false,
        message: "refused".into(),
    });
    let copy = twin(&h);
    assert_eq!(state_of(&copy.flock, copy.now), state_of(&h.flock, h.now));
    assert_eq!(copy.flock.recycled(), 3);
    assert_eq!(copy.flock.tally().crash_loops, 1);
}

#[test]
fn a_state_at_the_edge_of_what_can_be_is_taken_and_one_past_it_is_not() {
    let h = busy();
    let good = state_of(&h.flock, h.now).unwrap();
    let most = crate::config::MAX_WORKERS as usize;
    let duration = |d: Duration| serde_json::to_value(d).unwrap();
    let copies = |v: &Value, n: usize| Value::Array(vec![v.clone(); n]);
    // Workers of their own pids, in slots that can be.
    let distinct = move |v: &Value, n: usize| {
        let workers = (0..n).map(|i| {
            let mut worker = v.clone();
            worker["pid"] = (i + 2).into();
            worker["slot"] = (i % (2 * most)).into();
            worker
        });
        Value::Array(workers.collect())
    };
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, bool, Edit)> = vec![
        (
            "a newer generation started",
            true,
            Box::new(|s| s["newest_generation"] = (s["generation"].as_u64().unwrap() + 3).into()),
        ),
        (
            "2 x 4096 slots",
            true,
            Box::new(move |s| s["slots"] = copies(&s["slots"][0], 2 * most)),
        ),
        (
            "one slot more",
            false,
            Box::new(move |s| s["slots"] = copies(&s["slots"][0], 2 * most + 1)),
        ),
        (
            "4 x 4096 workers",
            true,
            Box::new(move |s| s["workers"] = distinct(&s["workers"][0], 4 * most)),
        ),
        (
            "4 x 4096 workers and one",
            false,
            Box::new(move |s| s["workers"] = distinct(&s["workers"][0], 4 * most + 1)),
        ),
        (
            "the highest slot",
            true,
            Box::new(move |s| s["workers"][0]["slot"] = (2 * most - 1).into()),
        ),
        (
            "a slot past it",
            false,
            Box::new(move |s| s["workers"][0]["slot"] = (2 * most).into()),
        ),
        ("no token left", true, Box::new(|s| s["budget"]["tokens"] = 0.0.into())),
        (
            "one spawn a second",
            true,
            Box::new(|s| s["budget"]["per_second"] = 1.0.into()),
        ),
        (
            "less than one a second",
            false,
            Box::new(|s| s["budget"]["per_second"] = 0.5.into()),
        ),
        (
            "a stop timeout of the bound",
            true,
            Box::new(move |s| s["policy"]["stop_timeout"] = duration(crate::clock::MAX_OFFSET)),
        ),
    ];
    for (what, taken, edit) in cases {
        let mut state = good.clone();
        edit(&mut state);
        assert_eq!(restore(state, h.now).is_ok(), taken, "{what}");
    }
}

#[test]
fn a_flock_handed_over_carries_nothing_of_a_pass_of_its_own() {
    let mut h = busy();
    h.flock.set_note(Some("sheepdog 0.2.0".into()));
    h.flock.spawned_this_pass = 3;
    h.flock.quiet = true;
    h.flock.worker_lines.allow(h.now);
    h.flock.load.sampled(h.now, 9, 1);
    h.flock.due = Some(h.now);
    h.flock.last_look = Some(h.now);
    let handed = h.flock.to_hand_over().unwrap();
    assert_eq!(handed.note, None);
    assert_eq!(handed.spawned_this_pass, 0);
    assert!(!handed.quiet);
    assert_eq!(handed.worker_lines, crate::core::flock::worker_lines());
    assert_eq!(handed.load, Default::default());
    assert_eq!((handed.due, handed.last_look), (None, None));
}
