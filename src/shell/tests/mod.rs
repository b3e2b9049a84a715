//! The supervisor's loop against a recording fake of the system: what it
//! forks, signals, tells systemd and answers, pass by pass, on a fake clock.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::clock::Moment;

use nix::sys::signal::Signal;
use signal_hook::consts::{SIGHUP, SIGTERM};

use super::supervisor::{ReloadSource, Supervisor};
use super::system::{ClientId, Input, ListenerFault, OwnUsage, System, WorkerUsage};
use crate::config::{MemoryMeasure, Overrides, Settings};
use crate::control::protocol::{Command, Reply, StatusReport};
use crate::core::Inspection;
use crate::core::{ExitStatus, ListenQueue, Pid, SpawnOrder, Upward};
use crate::observe::http::{HttpRequest, HttpResponse};
use crate::upgrade::probe::Successor;
use crate::upgrade::state::SupervisorState;
use crate::worker::channel::WorkerMessage;
use crate::worker::spawn::{CommandContext, WorkerCommand};

#[derive(Debug, Clone, PartialEq)]
enum Effect {
    Spawn {
        order: SpawnOrder,
        command: String,
        pid: Pid,
    },
    Signal {
        pid: Pid,
        signal: Signal,
    },
    Ping(Pid, String),
    Notify(Upward),
    Reply(ClientId, Reply),
    Respond(ClientId, HttpResponse),
    Finish,
    Probe,
    HandOver,
}

/// A system that records every effect and forks nothing.
struct Fake {
    now: Moment,
    next_pid: Pid,
    effects: Vec<Effect>,
    memory: HashMap<Pid, u64>,
    measurements: u32,
    own_ports: HashMap<Pid, Vec<String>>,
    /// What the next listener check finds.
    listener_faults: Vec<ListenerFault>,
    /// What the listen queues hold.
    queues: Vec<ListenQueue>,
    /// Tasks runnable on the machine, as `runnable()` says.
    runnable: usize,
    /// What the binary at sheepdog's path says it is, when probed.
    successor: Result<Successor, String>,
    /// What the last hand-over was given (it never execs: it fails, saying so).
    handed: Option<(SupervisorState, Moment)>,
}

impl Fake {
    fn new(t0: Moment) -> Fake {
        Fake {
            now: t0,
            next_pid: 100,
            effects: Vec::new(),
            memory: HashMap::new(),
            measurements: 0,
            own_ports: HashMap::new(),
            listener_faults: Vec::new(),
            queues: Vec::new(),
            runnable: 1,
            successor: Ok(Successor {
                path: "/usr/bin/sheepdog".into(),
                version: "9.9.9".into(),
                state_format: crate::build::STATE_FORMAT,
            }),
            handed: None,
        }
    }
}

impl System for Fake {
    fn now(&self) -> Moment {
        self.now
    }

    fn wait(&mut self, _deadline: Option<Moment>) -> Result<Vec<Input>, String> {
        Err("the fake does not wait: tests drive the passes".into())
    }

    fn spawn(&mut self, order: &SpawnOrder, command: &WorkerCommand) -> Result<Pid, String> {
        self.next_pid += 1;
        self.effects.push(Effect::Spawn {
            order: *order,
            command: command.describe(),
            pid: self.next_pid,
        });
        Ok(self.next_pid)
    }

    fn signal(&mut self, pid: Pid, signal: Signal) {
        self.effects.push(Effect::Signal { pid, signal });
    }

    fn ping(&mut self, pid: Pid, message: &str) {
        self.effects.push(Effect::Ping(pid, message.to_string()));
    }

    fn measure(&mut self, pids: &[Pid], _how: MemoryMeasure, _limit: Option<u64>) -> Vec<(Pid, u64)> {
        self.measurements += 1;
        assert!(
            self.measurements < 10_000,
            "measured without end: a pass that never finishes"
        );
        pids.iter()
            .filter_map(|pid| self.memory.get(pid).map(|bytes| (*pid, *bytes)))
            .collect()
    }

    fn workers_usage(&self, pids: &[Pid]) -> Vec<WorkerUsage> {
        pids.iter()
            .map(|pid| WorkerUsage {
                cpu_seconds: Some(2.5),
                cpu_percent: Some(1.5),
                rss_bytes: self.memory.get(pid).copied(),
                pss_bytes: None,
                queue: None,
                connections: None,
                heap: None,
                lag_ms: None,
            })
            .collect()
    }

    fn own_usage(&self) -> OwnUsage {
        OwnUsage {
            cpu_seconds: Some(0.5),
            rss_bytes: Some(4 << 20),
            open_fds: Some(12),
        }
    }

    fn runnable(&self, _pids: &[Pid]) -> usize {
        self.runnable
    }

    fn listen_queues(&self) -> Vec<ListenQueue> {
        self.queues.clone()
    }

    fn check_listeners(&mut self) -> Vec<ListenerFault> {
        std::mem::take(&mut self.listener_faults)
    }

    fn inspect(&self, pids: &[Pid]) -> Vec<(Pid, Inspection)> {
        pids.iter()
            .map(|pid| match self.own_ports.get(pid) {
                Some(own) => (*pid, Inspection::Astray(own.clone())),
                None => (*pid, Inspection::Serves),
            })
            .collect()
    }

    fn notify(&mut self, message: &Upward) {
        self.effects.push(Effect::Notify(message.clone()));
    }

    fn reply(&mut self, client: ClientId, reply: &Reply) {
        self.effects.push(Effect::Reply(client, reply.clone()));
    }

    fn respond(&mut self, client: ClientId, response: &HttpResponse) {
        self.effects.push(Effect::Respond(client, response.clone()));
    }

    fn finish(&mut self) {
        self.effects.push(Effect::Finish);
    }

    fn upgrade_path(&self) -> Option<PathBuf> {
        Some("/usr/bin/sheepdog".into())
    }

    fn probe_successor(&mut self) -> Result<Successor, String> {
        self.effects.push(Effect::Probe);
        self.successor.clone()
    }

    fn hand_over(&mut self, state: SupervisorState, _successor: &Successor, taken_at: Moment) -> String {
        self.effects.push(Effect::HandOver);
        self.handed = Some((state, taken_at));
        "the fake does not exec".into()
    }
}

struct Harness {
    supervisor: Supervisor<Fake>,
    config: PathBuf,
    t0: Moment,
    _dir: tempfile::TempDir,
}

const BASE: &str = "workers = 2\nready_delay = \"1s\"\nbackoff_initial = \"100ms\"\nstop_timeout = \"5s\"\n";

impl Harness {
    /// A supervisor of `command` (e.g. `["true", "one"]`) with `extra` config.
    fn new(command: &str, extra: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("app.toml");
        std::fs::write(&config, format!("command = {command}\n{BASE}{extra}")).unwrap();
        let settings = Settings::load(Some(&config), &Overrides::default()).unwrap();
        let context = CommandContext::default();
        let command = WorkerCommand::from_settings(&settings, &context).unwrap();
        let source = ReloadSource {
            config_file: Some(config.clone()),
            overrides: Overrides::default(),
            listen: settings.listen.clone(),
            inherited: false,
            watchdog: None,
            control_socket: settings.control_socket.clone(),
            http: settings.http.clone(),
        };
        let t0 = crate::core::tests::T0;
        let fake = Fake::new(t0);
        Harness {
            supervisor: Supervisor::new(&settings, source, context, command, fake),
            config,
            t0,
            _dir: dir,
        }
    }

    fn rewrite(&self, command: &str, extra: &str) {
        std::fs::write(&self.config, format!("command = {command}\n{BASE}{extra}")).unwrap();
    }

    /// One pass at `at` (since the start) with these inputs; the effects it had.
    fn pass_at(&mut self, at: Duration, inputs: Vec<Input>) -> (Option<i32>, Vec<Effect>) {
        let before = self.supervisor.system().effects.len();
        self.supervisor.system_mut().now = self.t0 + at;
        let code = self.supervisor.pass(inputs);
        (code, self.supervisor.system().effects[before..].to_vec())
    }

    fn pid_of(&self, slot: usize, generation: u32) -> Pid {
        self.supervisor
            .flock()
            .workers()
            .iter()
            .find(|w| w.slot == slot && w.generation == generation && !w.is_stopping())
            .map(|w| w.pid)
            .expect("a worker in that slot and generation")
    }

    /// A flock of two started and ready by delay (at 0 s and 1 s).
    fn serving(command: &str, extra: &str) -> Harness {
        let mut h = Harness::new(command, extra);
        h.pass_at(Duration::ZERO, vec![]);
        h.pass_at(1000 * MS, vec![]);
        h
    }

    /// Slot 0 of generation 1 crashes twice in a row at `at`: its refill
    /// then waits out backoff_initial.
    fn crash_twice(&mut self, at: Duration) {
        for _ in 0..2 {
            let exited = Input::Exited {
                pid: self.pid_of(0, 1),
                status: ExitStatus::Code(1),
            };
            self.pass_at(at, vec![exited]);
        }
    }

    /// `sheepdog status` at `at`, as its client would get it.
    fn status(&mut self, at: Duration) -> StatusReport {
        let (_, effects) = self.pass_at(
            at,
            vec![Input::Control {
                client: 99,
                command: Command::Status,
            }],
        );
        match effects.into_iter().find(|e| matches!(e, Effect::Reply(99, _))) {
            Some(Effect::Reply(_, Reply::Status(report))) => *report,
            other => panic!("no status reply: {other:?}"),
        }
    }

    fn commands(&self) -> Vec<String> {
        let mut commands: Vec<String> = self.supervisor.commands().map(|(_, c)| c.describe()).collect();
        commands.sort();
        commands
    }
}

fn spawned(effects: &[Effect]) -> Vec<(usize, u32, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Spawn { order, command, .. } => Some((order.slot, order.generation, command.clone())),
            _ => None,
        })
        .collect()
}

const MS: Duration = Duration::from_millis(1);

mod upgrade;

#[test]
fn the_first_pass_forks_the_flock_with_the_first_command() {
    let mut h = Harness::new("[\"true\", \"one\"]", "");
    let (code, effects) = h.pass_at(Duration::ZERO, vec![]);
    assert_eq!(code, None);
    assert_eq!(
        spawned(&effects),
        vec![(0, 1, "true one".into()), (1, 1, "true one".into())]
    );
    let (_, effects) = h.pass_at(1000 * MS, vec![]);
    assert!(effects.contains(&Effect::Notify(Upward::Ready)));
}

#[test]
fn a_pass_applies_every_input_before_it_orders_a_spawn() {
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    h.crash_twice(2000 * MS);
    h.rewrite("[\"true\", \"two\"]", "");
    // In one pass: an event after which slot 0's backoff is over, then
    // SIGHUP (generation 2 begins). The pass reads both before it decides
    // anything: nothing is forked in generation 1 only to be stopped.
    let stray = Input::Exited {
        pid: 99_999,
        status: ExitStatus::Code(0),
    };
    let (_, effects) = h.pass_at(2100 * MS, vec![stray, Input::Signal(SIGHUP)]);
    let spawns = spawned(&effects);
    assert!(!spawns.is_empty(), "{effects:?}");
    assert!(
        spawns
            .iter()
            .all(|(_, generation, command)| *generation == 2 && command == "true two"),
        "{spawns:?}"
    );
    assert!(
        spawns.iter().any(|(slot, ..)| *slot == 0),
        "slot 0 refilled in generation 2"
    );
    assert!(
        !effects.iter().any(|e| matches!(
            e,
            Effect::Signal {
                signal: Signal::SIGTERM,
                ..
            }
        )),
        "{effects:?}"
    );
}

#[test]
fn commands_are_forgotten_when_the_core_says_so() {
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    // A successful roll: generation 1's command goes, once nothing can use it.
    h.rewrite("[\"true\", \"two\"]", "");
    h.pass_at(2000 * MS, vec![Input::Signal(SIGHUP)]);
    assert_eq!(h.commands(), ["true one", "true two"]);
    for at in [3000, 4000] {
        h.pass_at(at * MS, vec![]);
    }
    assert_eq!(h.supervisor.flock().reloading_to(), None);
    assert_eq!(h.commands(), ["true two"]);
    // An aborted roll: the new command goes, the old stays.
    h.rewrite("[\"true\", \"three\"]", "");
    h.pass_at(5000 * MS, vec![Input::Signal(SIGHUP)]);
    let new = h.pid_of(0, 3);
    let crash = Input::Exited {
        pid: new,
        status: ExitStatus::Code(1),
    };
    h.pass_at(5100 * MS, vec![crash]);
    assert_eq!(h.commands(), ["true two"]);
    // A refused one (readiness cannot change): nothing is kept of it.
    h.rewrite("[\"true\", \"four\"]", "readiness = \"notify\"\n");
    h.pass_at(6000 * MS, vec![Input::Signal(SIGHUP)]);
    assert_eq!(h.commands(), ["true two"]);
}

#[test]
fn the_last_pass_performs_every_action_then_says_its_last_words() {
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    let (a, b) = (h.pid_of(0, 1), h.pid_of(1, 1));
    let (code, effects) = h.pass_at(2000 * MS, vec![Input::Signal(SIGTERM)]);
    assert_eq!(code, None);
    assert!(effects.contains(&Effect::Notify(Upward::Stopping)));
    let exits = [a, b].map(|pid| Input::Exited {
        pid,
        status: ExitStatus::Code(0),
    });
    let (code, effects) = h.pass_at(2500 * MS, exits.to_vec());
    assert_eq!(code, Some(0));
    assert_eq!(
        effects[effects.len() - 2..],
        [
            Effect::Notify(Upward::Status("stopping · 0 workers left".into())),
            Effect::Finish
        ]
    );
}

#[test]
fn control_requests_are_answered_from_the_flock() {
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    let report = h.status(1500 * MS);
    assert_eq!((report.supervisor.ready, report.supervisor.desired), (2, 2));
    assert_eq!(report.supervisor.name, "app", "the config file's name");
    assert!(report.supervisor.config.as_deref().unwrap().ends_with("app.toml"));
    let slots: Vec<usize> = report.workers.iter().map(|w| w.slot).collect();
    assert_eq!(slots, [0, 1]);
    assert!(
        report
            .workers
            .iter()
            .all(|w| w.state == crate::control::protocol::WorkerPhase::Ready && w.cpu_percent == Some(1.5))
    );
    assert_eq!(report.workers[0].uptime_s, 1.5);

    let scale = Input::Control {
        client: 8,
        command: Command::Scale { workers: 3 },
    };
    let (_, effects) = h.pass_at(1600 * MS, vec![scale]);
    assert_eq!(
        effects[0],
        Effect::Reply(8, Reply::Done("scaling to 3 workers (from 2)".into()))
    );
    assert_eq!(spawned(&effects), vec![(2, 1, "true one".into())]);

    // A reload's client hears the outcome when the roll is done, not before.
    let reload = Input::Control {
        client: 9,
        command: Command::Reload,
    };
    let (_, effects) = h.pass_at(3000 * MS, vec![reload]);
    assert!(!effects.iter().any(|e| matches!(e, Effect::Reply(9, _))));
    let mut replies = Vec::new();
    for at in (4000..=8000).step_by(1000) {
        let (_, effects) = h.pass_at(at * MS, vec![]);
        replies.extend(effects.into_iter().filter(|e| matches!(e, Effect::Reply(9, _))));
    }
    match replies.as_slice() {
        [Effect::Reply(9, Reply::Done(message))] => {
            assert!(message.starts_with("reloaded to generation 2 (2 workers)"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_invalid_config_at_sighup_is_refused_and_systemd_sees_the_reload_end() {
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    std::fs::write(&h.config, "workers = = 2\n").unwrap();
    let (_, effects) = h.pass_at(2000 * MS, vec![Input::Signal(SIGHUP)]);
    let upward: Vec<&Effect> = effects.iter().filter(|e| matches!(e, Effect::Notify(_))).collect();
    assert_eq!(
        upward[..2],
        [&Effect::Notify(Upward::Reloading), &Effect::Notify(Upward::Ready)]
    );
    assert!(spawned(&effects).is_empty());
    assert_eq!(h.commands(), ["true one"]);
}

#[test]
fn memory_is_measured_through_the_system_and_acted_on() {
    let mut h = Harness::new("[\"true\", \"one\"]", "[memory]\nlimit = \"1MiB\"\ninterval = \"1s\"\n");
    h.pass_at(Duration::ZERO, vec![]);
    let pid = h.pid_of(0, 1);
    h.supervisor.system_mut().memory.insert(pid, 2 << 20);
    let (_, effects) = h.pass_at(1000 * MS, vec![]);
    assert_eq!(spawned(&effects), vec![(0, 1, "true one".into())], "replacement first");
    let worker = h.supervisor.flock().workers().iter().find(|w| w.pid == pid).unwrap();
    assert_eq!(worker.memory, Some(2 << 20));
}

#[test]
fn one_pass_sends_one_status_with_the_whole_flocks_memory() {
    let mut h = Harness::new("[\"true\", \"one\"]", "[memory]\ninterval = \"1s\"\n");
    h.pass_at(Duration::ZERO, vec![]);
    let pids = [h.pid_of(0, 1), h.pid_of(1, 1)];
    for pid in pids {
        h.supervisor.system_mut().memory.insert(pid, 8 << 20);
    }
    let (_, effects) = h.pass_at(1000 * MS, vec![]);
    let statuses: Vec<&Effect> = effects
        .iter()
        .filter(|e| matches!(e, Effect::Notify(Upward::Status(_))))
        .collect();
    assert_eq!(
        statuses,
        [&Effect::Notify(Upward::Status(
            "2/2 ready · 0 restarts · 16 MiB".into()
        ))],
        "one STATUS, with both measurements"
    );
}

#[test]
fn status_lists_the_workers_in_slot_order() {
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    let crashed = h.pid_of(0, 1);
    h.pass_at(
        2000 * MS,
        vec![Input::Exited {
            pid: crashed,
            status: ExitStatus::Code(1),
        }],
    );
    h.pass_at(2100 * MS, vec![]);
    let report = h.status(2200 * MS);
    let slots: Vec<usize> = report.workers.iter().map(|w| w.slot).collect();
    assert_eq!(slots, [0, 1], "the replacement of slot 0 comes first");
}

#[test]
fn status_shows_a_slot_waiting_to_restart() {
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    h.crash_twice(2000 * MS);
    let report = h.status(2040 * MS);
    assert_eq!(report.workers.len(), 1);
    assert_eq!(report.waiting.len(), 1);
    let waiting = &report.waiting[0];
    assert_eq!((waiting.slot, waiting.restarts), (0, 2));
    assert!((waiting.restart_in_s - 0.06).abs() < 1e-6, "{}", waiting.restart_in_s);
}

#[test]
fn a_young_worker_listening_on_a_port_of_its_own_is_noticed() {
    let mut h = Harness::new("[\"true\", \"one\"]", "[memory]\ninterval = \"1s\"\n");
    h.pass_at(Duration::ZERO, vec![]);
    h.pass_at(1000 * MS, vec![]);
    let pid = h.pid_of(0, 1);
    h.supervisor
        .system_mut()
        .own_ports
        .insert(pid, vec!["0.0.0.0:3000".into()]);
    h.pass_at(2000 * MS, vec![]);
    let report = h.status(2100 * MS);
    let worker = report.workers.iter().find(|w| w.pid == pid).unwrap();
    assert_eq!(worker.listens_itself, ["0.0.0.0:3000"]);
    assert!(
        report
            .workers
            .iter()
            .filter(|w| w.pid != pid)
            .all(|w| w.listens_itself.is_empty())
    );
}

#[test]
fn a_listener_shut_down_and_listening_again_is_said_and_nothing_else_changes() {
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    let pids = (h.pid_of(0, 1), h.pid_of(1, 1));
    h.supervisor.system_mut().listener_faults.push(ListenerFault::Recovered(
        "127.0.0.1:8080 was shut down; listening on it again".into(),
    ));
    // The check is due one second in, and once a second after that.
    let (code, effects) = h.pass_at(2000 * MS, vec![]);
    assert_eq!(code, None);
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Signal { .. })),
        "{effects:?}"
    );
    assert_eq!((h.pid_of(0, 1), h.pid_of(1, 1)), pids);
    assert!(h.supervisor.system().listener_faults.is_empty(), "the check ran");
}

#[test]
fn a_listener_that_cannot_listen_again_stops_the_flock_with_1() {
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    let pids = [h.pid_of(0, 1), h.pid_of(1, 1)];
    h.supervisor
        .system_mut()
        .listener_faults
        .push(ListenerFault::Lost("unix:/run/app.sock was shut down".into()));
    let (code, effects) = h.pass_at(2000 * MS, vec![]);
    assert_eq!(code, None, "the workers are stopped first");
    assert!(effects.contains(&Effect::Notify(Upward::Stopping)), "{effects:?}");
    for pid in pids {
        assert!(
            effects.contains(&Effect::Signal {
                pid,
                signal: Signal::SIGTERM
            }),
            "{effects:?}"
        );
    }
    let exits = pids.map(|pid| Input::Exited {
        pid,
        status: ExitStatus::Code(0),
    });
    let (code, _) = h.pass_at(2100 * MS, exits.to_vec());
    assert_eq!(code, Some(1));
}

#[test]
fn a_reload_that_moves_the_control_socket_is_refused_and_changes_nothing() {
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    let pids = (h.pid_of(0, 1), h.pid_of(1, 1));
    h.rewrite("[\"true\", \"two\"]", "control_socket = \"elsewhere.sock\"\n");
    let (_, effects) = h.pass_at(
        2000 * MS,
        vec![Input::Control {
            client: 7,
            command: Command::Reload,
        }],
    );
    let refusal = effects.iter().find_map(|e| match e {
        Effect::Reply(7, Reply::Failed(why)) => Some(why.clone()),
        _ => None,
    });
    assert!(
        refusal
            .as_deref()
            .is_some_and(|why| why.contains("control_socket cannot change in a reload")),
        "{effects:?}"
    );
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Spawn { .. })),
        "{effects:?}"
    );
    assert_eq!((h.pid_of(0, 1), h.pid_of(1, 1)), pids);
}

#[test]
fn scale_during_a_shutdown_is_refused_not_promised() {
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    h.pass_at(2000 * MS, vec![Input::Signal(SIGTERM)]);
    let (_, effects) = h.pass_at(
        2100 * MS,
        vec![Input::Control {
            client: 5,
            command: Command::Scale { workers: 5 },
        }],
    );
    assert!(
        effects.contains(&Effect::Reply(
            5,
            Reply::Failed("sheepdog is stopping: nothing is scaled".into())
        )),
        "{effects:?}"
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::Spawn { .. })));
}

#[test]
fn scale_by_is_relative_to_the_workers_wanted_now() {
    let mut h = Harness::serving("[\"true\", \"one\"]", "");
    let scale = |client, by| Input::Control {
        client,
        command: Command::ScaleBy { by },
    };
    let (_, effects) = h.pass_at(2000 * MS, vec![scale(5, 1)]);
    assert_eq!(
        effects[0],
        Effect::Reply(5, Reply::Done("scaling to 3 workers (from 2)".into()))
    );
    assert_eq!(h.supervisor.flock().desired(), 3);
    let (_, effects) = h.pass_at(2100 * MS, vec![scale(6, -3)]);
    assert!(
        matches!(&effects[0], Effect::Reply(6, Reply::Failed(why)) if why.contains("scale -3: 3 workers are wanted now, and at least 1 must run")),
        "{effects:?}"
    );
    assert_eq!(h.supervisor.flock().desired(), 3, "a refused scale changes nothing");
    let (_, effects) = h.pass_at(2200 * MS, vec![scale(7, -2)]);
    assert_eq!(
        effects[0],
        Effect::Reply(7, Reply::Done("scaling to 1 worker (from 3)".into()))
    );
    assert_eq!(h.supervisor.flock().desired(), 1);
}

impl Harness {
    /// An HTTP GET of `path` at `at`, as the server would pass it on.
    fn get(&mut self, at: Duration, path: &str) -> HttpResponse {
        let request = HttpRequest { path: path.into() };
        let (_, effects) = self.pass_at(at, vec![Input::Http { client: 7, request }]);
        match effects.into_iter().find(|e| matches!(e, Effect::Respond(7, _))) {
            Some(Effect::Respond(_, response)) => response,
            other => panic!("no http response: {other:?}"),
        }
    }
}

#[test]
fn the_probes_answer_by_the_watchdog_rule_and_say_why_not_ready() {
    let mut h = Harness::new(r#"["true"]"#, "");
    h.pass_at(Duration::ZERO, vec![]);
    let starting = h.get(10 * MS, "/readyz");
    assert_eq!(starting.status, 503);
    assert_eq!(
        starting.body,
        "0/2 ready (2 needed): worker 0 starting, worker 1 starting\n"
    );
    assert_eq!(h.get(10 * MS, "/healthz").status, 200, "alive while not ready");
    h.pass_at(1000 * MS, vec![]);
    let ready = h.get(1001 * MS, "/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready: 2/2\n"));
    let crashed = Input::Exited {
        pid: h.pid_of(1, 1),
        status: ExitStatus::Signaled(Signal::SIGKILL),
    };
    h.pass_at(1500 * MS, vec![crashed]);
    let unready = h.get(1501 * MS, "/readyz");
    assert_eq!(unready.status, 503);
    assert_eq!(unready.body, "1/2 ready (2 needed): worker 1 was killed by a signal\n");
    assert_eq!(h.get(1501 * MS, "/nope").status, 404);
}

#[test]
fn metrics_and_status_carry_the_counts_by_cause_and_the_listen_queues() {
    let mut h = Harness::serving(r#"["true"]"#, "");
    h.supervisor.system_mut().queues = vec![ListenQueue {
        queue: None,
        address: "127.0.0.1:8080".into(),
        queued: 7,
        backlog: 4096,
    }];
    let crashed = Input::Exited {
        pid: h.pid_of(0, 1),
        status: ExitStatus::Code(2),
    };
    h.pass_at(1500 * MS, vec![crashed]);
    let report = h.status(1600 * MS);
    assert_eq!(report.supervisor.replacements.get("crash"), Some(&1));
    assert_eq!(
        report.supervisor.replacements.get("hung"),
        Some(&0),
        "zeros are there too"
    );
    assert_eq!(report.supervisor.listen_queues.len(), 1);
    assert_eq!(report.supervisor.listen_queues[0].queued, 7);
    assert_eq!(report.supervisor.open_fds, Some(12));
    let metrics = h.get(1600 * MS, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.content_type.starts_with("text/plain; version=0.0.4"));
    for line in [
        "sheepdog_worker_replacements_total{cause=\"crash\"} 1\n",
        "sheepdog_worker_replacements_total{cause=\"hung\"} 0\n",
        "sheepdog_listen_queue_length{listener=\"127.0.0.1:8080\"} 7\n",
        "sheepdog_listen_queue_limit{listener=\"127.0.0.1:8080\"} 4096\n",
        "sheepdog_workers_desired 2\n",
        "sheepdog_reloads_total{outcome=\"ok\"} 0\n",
        "sheepdog_reload_duration_seconds_bucket{le=\"+Inf\"} 0\n",
        "process_open_fds 12\n",
        "sheepdog_build_info{version=\"",
    ] {
        assert!(metrics.body.contains(line), "{line} not in\n{}", metrics.body);
    }
    let pid = h.pid_of(1, 1);
    let state = format!("sheepdog_worker_state{{slot=\"1\",generation=\"1\",pid=\"{pid}\",state=\"ready\"}} 1\n");
    assert!(metrics.body.contains(&state), "{}", metrics.body);
    // A listen-queue sample rides on each listener check (every second).
    let (_, effects) = h.pass_at(3000 * MS, vec![]);
    let statuses: Vec<&Effect> = effects
        .iter()
        .filter(|e| matches!(e, Effect::Notify(Upward::Status(_))))
        .collect();
    assert!(
        statuses
            .iter()
            .any(|e| matches!(e, Effect::Notify(Upward::Status(s)) if s.ends_with("· 7 queued"))),
        "{effects:?}"
    );
}

#[test]
fn a_wake_up_for_heartbeats_alone_records_them_and_nothing_else() {
    let extra = "channel = \"notify\"\n[heartbeat]\ninterval = \"1s\"\ntimeout = \"3s\"\n";
    let mut h = Harness::serving("[\"true\", \"one\"]", extra);
    let pid = h.pid_of(0, 1);
    let deadline = h.supervisor.flock().next_deadline().unwrap();
    let before = deadline - h.t0 - 10 * MS;
    let heartbeat = |pid| Input::Message {
        pid,
        message: WorkerMessage::Heartbeat,
    };
    let (code, effects) = h.pass_at(before, vec![heartbeat(pid)]);
    assert_eq!((code, effects), (None, vec![]), "no pass over the flock, no STATUS=");
    let worker = h.supervisor.flock().workers().iter().find(|w| w.pid == pid).unwrap();
    assert_eq!(worker.last_heartbeat, h.t0 + before, "but the heartbeat counts");
    // Heartbeats every 500 ms, the loop waking for them and at deadlines:
    // the worker that sends them lives, the silent one is killed as hung.
    let other = h.pid_of(1, 1);
    let mut killed = Vec::new();
    for step in 1..=8 {
        let at = before + step * 500 * MS;
        while let Some(due) = h.supervisor.flock().next_deadline().filter(|d| *d <= h.t0 + at) {
            killed.extend(h.pass_at(due - h.t0, vec![]).1);
        }
        killed.extend(h.pass_at(at, vec![heartbeat(pid)]).1);
    }
    let killed: Vec<Pid> = killed
        .iter()
        .filter_map(|e| match e {
            Effect::Signal { pid, .. } => Some(*pid),
            _ => None,
        })
        .collect();
    assert_eq!(killed, vec![other], "only the silent worker is hung");
}
