//! `sheepdog upgrade` through the loop: what is probed, handed over and
//! answered, and a supervisor restored from what was handed over carrying
//! on where the first left off (a reload's waiter answered, a backoff kept).

use super::*;
use crate::upgrade::state::SupervisorState;

const REQUESTER: ClientId = 8;
const RELOAD_WAITER: ClientId = 7;

fn ask(command: Command, client: ClientId) -> Input {
    Input::Control { client, command }
}

fn reply_to(effects: &[Effect], client: ClientId) -> Option<Reply> {
    effects.iter().find_map(|e| match e {
        Effect::Reply(c, reply) if *c == client => Some(reply.clone()),
        _ => None,
    })
}

fn failure_to(effects: &[Effect], client: ClientId) -> String {
    match reply_to(effects, client) {
        Some(Reply::Failed(why)) => why,
        other => panic!("no failure for client {client}: {other:?} in {effects:?}"),
    }
}

/// The state the last hand-over was given, and its moment.
fn handed(h: &mut Harness) -> (SupervisorState, Moment) {
    h.supervisor.system_mut().handed.take().expect("a hand-over")
}

/// The supervisor a new binary makes of `state`, its clock `gap` later.
fn take_over(h: &Harness, (state, now): (SupervisorState, Moment), gap: Duration) -> Supervisor<Fake> {
    let mut fake = Fake::new(h.t0);
    fake.now = now + gap;
    fake.next_pid = 500;
    let prepared = Supervisor::<Fake>::prepare(state, "0.0.1".into(), now.as_nanos(), None);
    prepared.expect("the state is taken")(fake)
}

fn notified_status(effects: &[Effect]) -> Option<String> {
    effects.iter().find_map(|e| match e {
        Effect::Notify(Upward::Status(status)) => Some(status.clone()),
        _ => None,
    })
}

#[test]
fn the_state_handed_over_is_what_the_next_binary_carries_on_with() {
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    h.crash_twice(2000 * MS);
    h.rewrite("[\"true\", \"two\"]", "");
    // A reload begins, and in the same pass an upgrade is asked for: it is
    // probed and handed over at the end of that pass, the reload under way.
    let (_, effects) = h.pass_at(
        2050 * MS,
        vec![ask(Command::Reload, RELOAD_WAITER), ask(Command::Upgrade, REQUESTER)],
    );
    let probe = effects.iter().position(|e| *e == Effect::Probe).expect("probed");
    let hand_over = effects
        .iter()
        .position(|e| *e == Effect::HandOver)
        .expect("handed over");
    assert!(probe < hand_over);
    assert!(
        effects[..probe].iter().any(|e| matches!(e, Effect::Spawn { .. })),
        "the pass's own work came first: {effects:?}"
    );
    // The fake never execs: the old binary says so and goes on.
    assert!(failure_to(&effects, REQUESTER).contains("the fake does not exec"));
    let state = handed(&mut h);
    assert_eq!(state.0.requester, Some(REQUESTER));
    assert_eq!(state.0.reload_waiters.len(), 1);
    let commands_before = h.commands();

    let mut next = take_over(&h, state, 5 * MS);
    assert_eq!(next.flock().workers().len(), h.supervisor.flock().workers().len());
    let mut commands: Vec<String> = next.commands().map(|(_, c)| c.describe()).collect();
    commands.sort();
    assert_eq!(commands, commands_before, "both generations' commands");
    // Its first pass answers the client that asked, and STATUS says so.
    next.system_mut().now += MS;
    assert_eq!(next.pass(vec![]), None);
    let effects = next.system().effects.clone();
    match reply_to(&effects, REQUESTER) {
        Some(Reply::Done(message)) => {
            assert!(message.starts_with("upgraded from 0.0.1 to "), "{message}");
            assert!(message.contains("workers kept"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let status = notified_status(&effects).expect("a STATUS");
    assert!(status.contains("upgraded from 0.0.1 at "), "{status}");
    // The reload goes on under the new binary: its workers are ready by
    // delay a second after they started, and its waiter is answered.
    let started = h.t0 + 2050 * MS;
    next.system_mut().now = started + 1100 * MS;
    next.pass(vec![]);
    match reply_to(&next.system().effects, RELOAD_WAITER) {
        Some(Reply::Done(message)) => assert!(message.contains("reloaded to generation 2"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(next.flock().generation(), 2);
    let upgraded = next.status_report().supervisor.upgraded.expect("upgraded");
    assert_eq!((upgraded.count, upgraded.from.as_str()), (1, "0.0.1"));
}

#[test]
fn a_backoff_under_way_is_kept_across_the_hand_over() {
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    h.crash_twice(2000 * MS);
    // Slot 0 waits out backoff_initial (100ms) from 2000 ms.
    let (_, effects) = h.pass_at(2010 * MS, vec![ask(Command::Upgrade, REQUESTER)]);
    assert!(spawned(&effects).is_empty());
    let state = handed(&mut h);
    let mut next = take_over(&h, state, 30 * MS);
    next.system_mut().now = h.t0 + 2090 * MS;
    next.pass(vec![]);
    assert!(
        spawned(&next.system().effects).is_empty(),
        "not before the backoff ends"
    );
    next.system_mut().now = h.t0 + 2100 * MS;
    next.pass(vec![]);
    assert_eq!(spawned(&next.system().effects), vec![(0, 1, "true one".into())]);
}

#[test]
fn a_binary_that_cannot_take_over_is_refused_before_anything_changes() {
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    h.supervisor.system_mut().successor = Err("cannot execute /usr/bin/sheepdog: Permission denied".into());
    let (_, effects) = h.pass_at(2000 * MS, vec![ask(Command::Upgrade, REQUESTER)]);
    let why = failure_to(&effects, REQUESTER);
    assert!(
        why.contains("Permission denied") && why.contains("nothing changed"),
        "{why}"
    );
    assert!(!effects.contains(&Effect::HandOver));

    h.supervisor.system_mut().successor = Ok(Successor {
        path: "/usr/bin/sheepdog".into(),
        version: "2.0.0".into(),
        state_format: crate::build::STATE_FORMAT + 1,
    });
    let (_, effects) = h.pass_at(2100 * MS, vec![ask(Command::Upgrade, REQUESTER)]);
    let why = failure_to(&effects, REQUESTER);
    assert!(
        why.contains("sheepdog 2.0.0, which reads state format") && why.contains("systemctl restart"),
        "{why}"
    );
    assert!(!effects.contains(&Effect::HandOver));
    assert!(h.supervisor.system().handed.is_none());
}

#[test]
fn an_upgrade_while_stopping_is_refused() {
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    let (_, effects) = h.pass_at(
        2000 * MS,
        vec![Input::Signal(SIGTERM), ask(Command::Upgrade, REQUESTER)],
    );
    assert!(failure_to(&effects, REQUESTER).contains("stopping"));
    assert!(!effects.contains(&Effect::Probe));
}

#[test]
fn one_upgrade_at_a_time() {
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    let (_, effects) = h.pass_at(
        2000 * MS,
        vec![ask(Command::Upgrade, REQUESTER), ask(Command::Upgrade, 9)],
    );
    assert!(failure_to(&effects, 9).contains("already"));
    assert_eq!(effects.iter().filter(|e| **e == Effect::HandOver).count(), 1);
}

#[test]
fn a_state_handed_back_is_carried_on_and_the_client_told_why() {
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    h.pass_at(2000 * MS, vec![ask(Command::Upgrade, REQUESTER)]);
    let (state, now) = handed(&mut h);
    let mut fake = Fake::new(h.t0);
    fake.now = now + 20 * MS;
    let why = Some("sheepdog 9.9.9 cannot take the flock over: an fd is not what the state says".into());
    let prepared = Supervisor::<Fake>::prepare(state, "0.1.0".into(), now.as_nanos(), why);
    let mut back = prepared.unwrap()(fake);
    back.pass(vec![]);
    let why = failure_to(&back.system().effects, REQUESTER);
    assert!(
        why.contains("an fd is not what the state says") && why.contains("took the flock back"),
        "{why}"
    );
    assert!(
        back.status_report().supervisor.upgraded.is_none(),
        "no upgrade happened"
    );
    assert_eq!(back.flock().workers().len(), 2);
}

/// A whole hand-over as the system would frame it, with an empty system part.
fn framed(state: SupervisorState) -> crate::upgrade::state::HandOver {
    use crate::upgrade::state::*;
    let fd = FdRecord { fd: 3, inode: 42 };
    HandOver {
        format: crate::build::STATE_FORMAT,
        from_version: "0.0.1".into(),
        taken_at_ns: 7,
        pid: Some(4417),
        supervisor: state,
        os: OsState {
            exe: Bytes::new(b"/usr/bin/sheepdog"),
            listeners: vec![],
            inherited: true,
            control: ControlState {
                listener: fd,
                path: Bytes::new(b"/run/sheepdog/app/control.sock"),
                identity: (1, 42),
                clients: vec![],
                next_client: 9,
                made_dir: None,
            },
            http: None,
            links: LinksState {
                channel: "none".into(),
                dir: None,
                channel_fd: 4,
                sequence: 3,
                links: vec![],
            },
            exec_reports: vec![],
            workers: vec![101, 102],
            swept: vec![],
            notify_outbox: vec!["STATUS=x".into()],
            log_pending: Bytes::new(&[0xff, b'\n']),
            log_dropped: 0,
            pending_signals: vec![17],
            signal_mask: vec![],
            spread: None,
            outputs: None,
        },
    }
}

#[test]
fn the_state_reads_back_whole_and_anything_less_is_refused() {
    use crate::upgrade::state::HandOver;
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    h.pass_at(2000 * MS, vec![ask(Command::Upgrade, REQUESTER)]);
    let (state, _) = handed(&mut h);
    let whole = framed(state);
    let bytes = whole.encode();
    let format = crate::build::STATE_FORMAT;
    assert_eq!(HandOver::decode(&bytes, format), Ok(whole.clone()));
    // Bytes that are not UTF-8 (a log line cut in two) survive.
    assert_eq!(whole.os.log_pending.as_bytes(), [0xff, b'\n']);
    assert!(
        HandOver::decode(&bytes, format + 1)
            .unwrap_err()
            .contains(&format!("this build reads format {}", format + 1))
    );
    assert!(
        HandOver::decode(b"\x00garbage", format)
            .unwrap_err()
            .contains("no readable header")
    );
    for cut in (0..bytes.len()).step_by(97) {
        assert!(HandOver::decode(&bytes[..cut], format).is_err(), "cut at {cut}");
    }
}

/// The states sheepdog 0.1.0 (b93ba8c, the release installed today) hands
/// over, captured by tests/fixtures/state/capture.sh: this build must take
/// them, whole. A field added to the state without `#[serde(default)]`
/// (or a type changed under an old name) fails here.
#[test]
fn the_states_written_by_release_0_1_0_are_taken_whole() {
    use crate::upgrade::state::HandOver;
    for (name, bytes) in [
        (
            "node-ipc",
            &include_bytes!("../../../tests/fixtures/state/node-ipc.json")[..],
        ),
        (
            "notify",
            &include_bytes!("../../../tests/fixtures/state/notify.json")[..],
        ),
    ] {
        let handover =
            HandOver::decode(bytes, crate::build::STATE_FORMAT).unwrap_or_else(|why| panic!("{name}: {why}"));
        assert_eq!(handover.from_version, "0.1.0", "{name}");
        assert_eq!(handover.os.links.channel, name, "{name}");
        assert_eq!(handover.os.workers.len(), 2, "{name}");
        assert!(handover.os.outputs.is_none(), "0.1.0 had no output pipes: {name}");
        let t0 = crate::core::tests::T0;
        let prepared = Supervisor::<Fake>::prepare(handover.supervisor, "0.1.0".into(), handover.taken_at_ns, None)
            .unwrap_or_else(|why| panic!("{name}: {why}"));
        let supervisor = prepared(Fake::new(t0));
        let flock = supervisor.flock();
        assert_eq!(flock.desired(), 2, "{name}");
        assert_eq!(flock.workers().len(), 2, "{name}");
        assert!(flock.workers().iter().all(|w| w.is_ready()), "{name}");
        assert_eq!(
            flock.policy().heartbeat.map(|h| h.interval),
            Some(if name == "notify" { 1000 * MS } else { 500 * MS }),
            "{name}"
        );
    }
}
