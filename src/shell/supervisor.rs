//! The supervisor's loop, over any [`System`]: each pass turns what happened
//! into events for the [`Flock`], then performs every action it returns, in
//! order; then it waits until something happens or the core's next deadline.
//!
//! The shell keeps what the core does not: the worker commands (one per
//! generation, named by the core's [`CommandId`]s and forgotten at its
//! word), the control clients waiting for a reload's outcome, and how to
//! read the config again.

use std::collections::HashMap;
use std::time::Duration;

use crate::clock::Moment;

use log::{error, info, warn};

use super::signals::{self, Meaning};
use super::system::{ClientId, Input, ListenerFault, System};
use crate::config::{ListenAddr, LogLevel, Overrides, Settings, WorkerCount};
use crate::control::protocol::{
    Command, HistogramStatus, LastReload, QueueStatus, ReloadCounts, Reply, StatusReport, SupervisorStatus,
    UpgradeStatus, WaitingSlot, WorkerPhase, WorkerStatus,
};
use crate::control::view;
use crate::core::tally::RELOAD_BUCKETS;
use crate::core::{Action, CommandId, Event, Flock, Pid, Policy, Request, Worker, WorkerState};
use crate::error::ExitClass;
use crate::limits::FdLimit;
use crate::logging::RateLimit;
use crate::observe::http::HttpResponse;
use crate::observe::metrics;
use crate::upgrade::state::{Bytes, CommandState, ContextState, SourceState, SupervisorState, UpgradesState};
use crate::worker::spawn::{CommandContext, WorkerCommand};

/// The command the flock starts with.
const FIRST_COMMAND: CommandId = 1;

/// How to read the config again on reload, as it was read at start.
pub struct ReloadSource {
    pub config_file: Option<std::path::PathBuf>,
    pub overrides: Overrides,
    /// The listen addresses at start: they cannot change without a restart.
    pub listen: Vec<ListenAddr>,
    /// systemd passed the sockets (the config's `listen` is not used).
    pub inherited: bool,
    /// systemd's watchdog for sheepdog itself.
    pub watchdog: Option<Duration>,
    /// The control socket the config named at start: clients that read the
    /// config must keep finding this sheepdog, so it cannot change in a reload.
    pub control_socket: std::path::PathBuf,
    /// `[http] listen` at start: bound once, like the listeners.
    pub http: Option<ListenAddr>,
}

pub struct Supervisor<S: System> {
    flock: Flock,
    system: S,
    /// The worker commands that may still be spawned, by the core's id.
    commands: HashMap<CommandId, WorkerCommand>,
    next_command: CommandId,
    context: CommandContext,
    source: ReloadSource,
    /// The app's name and its config's absolute path, for `sheepdog status`.
    name: String,
    config_path: Option<String>,
    started: Moment,
    next_ticket: u64,
    /// Control clients waiting for the outcome of the reload with this ticket.
    reload_waiters: HashMap<u64, ClientId>,
    /// Signals of no meaning, logged at most 20 per 10 s.
    ignored_signals: RateLimit,
    /// The core's next deadline, as of the last full pass.
    deadline: Option<Moment>,
    /// `log_level` at start (what a binary taking over logs at).
    log_level: Option<LogLevel>,
    /// A control client asked for an in-place upgrade: done once the pass
    /// that read the request has done everything else.
    upgrade_requested: Option<ClientId>,
    /// In-place upgrades so far.
    upgrades: UpgradesState,
    /// Just taken over from another binary: said and answered after the
    /// first pass.
    took_over: Option<TookOver>,
}

/// How this binary came to run the flock, when it took it over.
struct TookOver {
    /// The client that asked for the upgrade.
    requester: Option<ClientId>,
    from_version: String,
    /// When the binary before handled its last event (CLOCK_MONOTONIC, ns).
    taken_at_ns: u64,
    /// Set when this is the old binary, handed the state back: why.
    refused: Option<String>,
}

impl<S: System> Supervisor<S> {
    pub fn new(
        settings: &Settings,
        source: ReloadSource,
        context: CommandContext,
        command: WorkerCommand,
        system: S,
    ) -> Supervisor<S> {
        let started = system.now();
        let policy = Policy::from_settings(settings, source.watchdog);
        Supervisor {
            flock: Flock::new(policy, FIRST_COMMAND, started),
            system,
            commands: HashMap::from([(FIRST_COMMAND, command)]),
            next_command: FIRST_COMMAND + 1,
            context,
            config_path: source
                .config_file
                .as_deref()
                .map(|p| crate::config::canonical(p).display().to_string()),
            source,
            name: settings.name.clone(),
            started,
            next_ticket: 1,
            reload_waiters: HashMap::new(),
            ignored_signals: RateLimit::new(20, Duration::from_secs(10)),
            deadline: None,
            log_level: settings.log_level,
            upgrade_requested: None,
            upgrades: UpgradesState::default(),
            took_over: None,
        }
    }

    /// The supervisor `state` describes, restored but for its system: its
    /// time points taken from `then`, the instant that is the moment the
    /// binary before (`from_version`) wrote it, at `taken_at_ns`. `refused`
    /// says why the new binary handed it back, when this is the old one
    /// again. Fails, with nothing taken, for a state this build cannot run;
    /// else gives what makes the supervisor once its system is there.
    pub fn prepare(
        state: SupervisorState,
        from_version: String,
        taken_at_ns: u64,
        refused: Option<String>,
    ) -> Result<impl FnOnce(S) -> Supervisor<S>, String> {
        let flock = state.flock.validate()?;
        let mut commands = HashMap::new();
        for (id, command) in state.commands {
            commands.insert(id, WorkerCommand::adopt(command).map_err(|e| e.to_string())?);
        }
        let source = restore_source(state.source)?;
        let log_level = match state.log_level.as_deref() {
            None => None,
            Some(name) => Some(LogLevel::named(name).ok_or(format!("log level {name:?} is not one this build knows"))?),
        };
        let mut upgrades = state.upgrades;
        if refused.is_none() {
            upgrades.count += 1;
            upgrades.from = Some(from_version.clone());
            upgrades.at_unix_ms = Some(crate::clock::unix_ms());
        }
        Ok(move |system: S| {
            let mut supervisor = Supervisor {
                flock,
                system,
                commands,
                next_command: state.next_command,
                context: CommandContext {
                    listeners: state.context.listeners,
                    fdnames: state.context.fdnames,
                    journal: state.context.journal,
                    fd_limit: state.context.fd_limit.map(|(soft, hard)| FdLimit { soft, hard }),
                },
                source,
                name: state.name,
                config_path: state.config_path,
                started: state.started,
                next_ticket: state.next_ticket,
                reload_waiters: state.reload_waiters.into_iter().collect(),
                ignored_signals: RateLimit::new(20, Duration::from_secs(10)),
                deadline: None,
                log_level,
                upgrade_requested: None,
                upgrades,
                took_over: Some(TookOver {
                    requester: state.requester,
                    from_version,
                    taken_at_ns,
                    refused,
                }),
            };
            supervisor.note_upgrades();
            supervisor
        })
    }

    /// STATUS says which sheepdog runs once it is not the one that started.
    fn note_upgrades(&mut self) {
        let note = match (&self.upgrades.from, self.upgrades.at_unix_ms) {
            (Some(from), Some(at)) => Some(format!(
                "sheepdog {}, upgraded from {from} at {}",
                crate::build::version(),
                crate::text::format_utc(at)
            )),
            _ => None,
        };
        self.flock.set_note(note);
    }

    pub fn flock(&self) -> &Flock {
        &self.flock
    }

    pub fn system(&self) -> &S {
        &self.system
    }

    pub fn system_mut(&mut self) -> &mut S {
        &mut self.system
    }

    /// The worker commands the shell still keeps.
    pub fn commands(&self) -> impl Iterator<Item = (&CommandId, &WorkerCommand)> {
        self.commands.iter()
    }

    /// Runs until the flock is stopped; returns the process exit code.
    pub fn run(mut self) -> i32 {
        let mut inputs = Vec::new();
        loop {
            if let Some(code) = self.pass(inputs) {
                return code;
            }
            inputs = match self.system.wait(self.deadline) {
                Ok(inputs) => inputs,
                Err(e) => {
                    error!("{e}");
                    return ExitClass::Os.code().into();
                }
            };
        }
    }

    /// One pass: feeds what happened (and the passing of time) to the core,
    /// then performs every action in order, even those after `Exit` (the
    /// final STATUS= comes after it). Returns the exit code once the flock
    /// is gone, with the system's last words said.
    pub fn pass(&mut self, inputs: Vec<Input>) -> Option<i32> {
        let now = self.system.waited_at();
        let mut events: Vec<Event> = inputs.into_iter().filter_map(|input| self.translate(input)).collect();
        events.push(Event::Tick);
        let mut actions = self.flock.handle_pass(now, events);
        // A quiet pass changed nothing the workers' steering or STATUS= show.
        if self.flock.was_quiet() && self.upgrade_requested.is_none() && self.took_over.is_none() {
            return None;
        }
        let mut exit = None;
        // Each action's outcome (a fork's pid, the memory measured) goes
        // back to the core at once; it reconciles once for the whole round.
        while !actions.is_empty() {
            let mut next = Vec::new();
            let mut settle = false;
            for action in actions {
                let mut outcomes = Vec::new();
                exit = exit.or(self.perform(now, action, &mut outcomes));
                for event in outcomes {
                    settle = true;
                    next.extend(self.flock.outcome(now, event));
                }
            }
            if settle {
                next.extend(self.flock.settle(now));
            }
            actions = next;
        }
        self.steer();
        // One STATUS= for the whole pass, the last word before an exit too.
        if let Some(Action::Notify(status)) = self.flock.status_update() {
            self.system.notify(&status);
        }
        if exit.is_some() {
            self.system.reserve_queues(self.flock.desired());
            self.system.finish();
        }
        if let Some(took_over) = self.took_over.take() {
            self.system.settled();
            self.say_took_over(took_over);
        }
        if let Some(client) = self.upgrade_requested.take() {
            if exit.is_some() || self.flock.is_shutting_down() {
                let why = "sheepdog is stopping: there is nothing to upgrade".to_string();
                self.system.reply(client, &Reply::Failed(why));
            } else {
                self.upgrade(client);
            }
        }
        self.deadline = self.flock.next_deadline();
        exit
    }

    /// New connections go to the workers that may take them now.
    fn steer(&mut self) {
        let workers = self.flock.workers();
        let open: Vec<Pid> = workers
            .iter()
            .filter(|w| w.takes_connections())
            .map(|w| w.pid)
            .collect();
        let live: Vec<Pid> = workers.iter().filter(|w| !w.is_stopping()).map(|w| w.pid).collect();
        self.system.steer(&open, &live);
    }

    /// Hands the flock over to the binary now installed at sheepdog's path,
    /// if it says it can take it; returns only if it did not happen, having
    /// told `client` why (the new binary tells it when it happens).
    fn upgrade(&mut self, client: ClientId) {
        let version = crate::build::version();
        let refuse = |this: &mut Self, why: String| {
            error!("upgrade refused: {why}; sheepdog {version} goes on");
            let reply = Reply::Failed(format!("{why}; sheepdog {version} goes on, nothing changed"));
            this.system.reply(client, &reply);
        };
        let successor = match self.system.probe_successor() {
            Ok(successor) => successor,
            Err(why) => return refuse(self, why),
        };
        let format = crate::build::current().state_format;
        if successor.state_format != format {
            let why = format!(
                "{} is sheepdog {}, which reads state format {}; this one writes format {format}: \
                 restart the service to run it (systemctl restart)",
                successor.path.display(),
                successor.version,
                successor.state_format
            );
            return refuse(self, why);
        }
        let now = self.system.now();
        let state = match self.export(client) {
            Ok(state) => state,
            Err(why) => return refuse(self, why),
        };
        info!(
            "upgrading in place: handing the flock ({} workers) over to sheepdog {} at {}",
            self.flock.workers().len(),
            successor.version,
            successor.path.display()
        );
        let why = self.system.hand_over(state, &successor, now);
        refuse(
            self,
            format!("the hand-over to {} failed: {why}", successor.path.display()),
        );
    }

    /// After the first pass of a binary that took over: the log line, and
    /// the answer to the client that asked.
    fn say_took_over(&mut self, took_over: TookOver) {
        let blind = self
            .system
            .now()
            .saturating_duration_since(Moment::from_nanos(took_over.taken_at_ns));
        let version = crate::build::version();
        let workers = self.flock.workers().len();
        let reply = match &took_over.refused {
            None => {
                self.upgrades.blind = Some(blind);
                let message = format!(
                    "upgraded from {} to {version} in place: pid {}, {workers} workers kept, events unhandled for {:.1} ms",
                    took_over.from_version,
                    std::process::id(),
                    blind.as_secs_f64() * 1000.0
                );
                info!("{message}");
                Reply::Done(message)
            }
            Some(why) => {
                let message = format!(
                    "upgrade to the new binary failed: {why}; sheepdog {version} took the flock back \
                     ({workers} workers, nothing changed)"
                );
                error!("{message}");
                Reply::Failed(message)
            }
        };
        if let Some(client) = took_over.requester {
            self.system.reply(client, &reply);
        }
    }

    /// Everything the shell and the core hold, as data, relative to `now`.
    fn export(&self, requester: ClientId) -> Result<SupervisorState, String> {
        let mut commands: Vec<(CommandId, CommandState)> = self
            .commands
            .iter()
            .map(|(id, command)| (*id, command.export()))
            .collect();
        commands.sort_by_key(|(id, _)| *id);
        let mut reload_waiters: Vec<(u64, ClientId)> = self.reload_waiters.iter().map(|(t, c)| (*t, *c)).collect();
        reload_waiters.sort_unstable();
        Ok(SupervisorState {
            flock: self.flock.to_hand_over()?,
            commands,
            next_command: self.next_command,
            context: ContextState {
                listeners: self.context.listeners.clone(),
                fdnames: self.context.fdnames.clone(),
                journal: self.context.journal,
                fd_limit: self.context.fd_limit.map(|l| (l.soft, l.hard)),
            },
            source: export_source(&self.source),
            name: self.name.clone(),
            config_path: self.config_path.clone(),
            started: self.started,
            next_ticket: self.next_ticket,
            reload_waiters,
            log_level: self.log_level.map(|l| l.to_string()),
            upgrades: self.upgrades.clone(),
            requester: Some(requester),
        })
    }

    /// What a signal received means (`signals::TABLE`).
    fn on_signal(&mut self, signal: i32) -> Option<Event> {
        let name = signals::name(signal);
        match signals::meaning(signal) {
            Meaning::Stop => {
                info!("received {name}");
                Some(Event::Request(Request::Stop))
            }
            Meaning::OneMore => Some(Event::Request(Request::ScaleUp)),
            Meaning::OneLess => Some(Event::Request(Request::ScaleDown)),
            Meaning::Reload => {
                info!("received {name}: reloading");
                Some(self.reload_request(0))
            }
            Meaning::LogStatus => {
                info!("received {name}: the flock now");
                for line in view::render(&self.status_report()).lines().filter(|l| !l.is_empty()) {
                    info!("  {line}");
                }
                None
            }
            Meaning::Reap | Meaning::Fault | Meaning::Ignored | Meaning::Harmless | Meaning::Uncatchable => {
                let now = self.system.now();
                if self.ignored_signals.allow(now) {
                    warn!("received {name}: ignored (it means nothing to sheepdog; see `man sheepdog`)");
                }
                None
            }
        }
    }

    /// The core's view of an input, if it has one; control requests that
    /// need no decision are answered here.
    fn translate(&mut self, input: Input) -> Option<Event> {
        match input {
            Input::Signal(signal) => self.on_signal(signal),
            Input::Http { client, request } => {
                let response = self.answer_http(&request.path);
                self.system.respond(client, &response);
                None
            }
            Input::Exited { pid, status } => Some(Event::Exited { pid, status }),
            Input::Drained(pid) => Some(Event::Drained { pid }),
            Input::Message { pid, message } => Some(Event::Message { pid, message }),
            Input::Control { client, command } => match command {
                Command::Status => {
                    let reply = Reply::Status(Box::new(self.status_report()));
                    self.system.reply(client, &reply);
                    None
                }
                Command::Scale { .. } | Command::ScaleBy { .. } | Command::ScaleAuto { .. } => {
                    let workers = match self.scale_target(&command) {
                        Ok(workers) => workers,
                        Err(why) => {
                            self.system.reply(client, &Reply::Failed(why));
                            return None;
                        }
                    };
                    if self.flock.is_shutting_down() {
                        let why = "sheepdog is stopping: nothing is scaled".to_string();
                        self.system.reply(client, &Reply::Failed(why));
                        return None;
                    }
                    if let Some(why) = crate::limits::too_many(workers as u64, self.flock.policy().channel) {
                        self.system.reply(client, &Reply::Failed(why));
                        return None;
                    }
                    let now = self.flock.desired();
                    let reply = Reply::Done(format!(
                        "scaling to {workers} worker{} (from {now})",
                        if workers == 1 { "" } else { "s" }
                    ));
                    self.system.reply(client, &reply);
                    Some(Event::Request(Request::Scale(workers)))
                }
                Command::Upgrade => {
                    if self.upgrade_requested.is_some() {
                        let why = "an upgrade was asked for already; it is on its way".to_string();
                        self.system.reply(client, &Reply::Failed(why));
                    } else {
                        self.upgrade_requested = Some(client);
                    }
                    None
                }
                Command::Replace { slot } => {
                    if self.flock.is_shutting_down() {
                        let why = "sheepdog is stopping: nothing is replaced".to_string();
                        self.system.reply(client, &Reply::Failed(why));
                        return None;
                    }
                    match self.flock.replaceable(slot) {
                        Ok(pid) => {
                            let said = format!("replacing worker {slot} (pid {pid}), replacement first");
                            self.system.reply(client, &Reply::Done(said));
                            Some(Event::Request(Request::Replace(slot)))
                        }
                        Err(why) => {
                            self.system.reply(client, &Reply::Failed(why));
                            None
                        }
                    }
                }
                Command::Logs { lines, slot, after } => {
                    let mut logs = self.system.logs(lines, slot, after);
                    logs.name = self.name.clone();
                    self.system.reply(client, &Reply::Logs(logs));
                    None
                }
                Command::Reload => {
                    let ticket = self.next_ticket;
                    self.next_ticket += 1;
                    self.reload_waiters.insert(ticket, client);
                    Some(self.reload_request(ticket))
                }
            },
        }
    }

    /// Re-reads the config and asks the core to roll onto it; an invalid
    /// config refuses the reload and changes nothing.
    fn reload_request(&mut self, ticket: u64) -> Event {
        let refused = |reason: String| Event::Request(Request::ReloadRefused { ticket, reason });
        let settings = match Settings::load(self.source.config_file.as_deref(), &self.source.overrides) {
            Ok(settings) => settings,
            Err(e) => return refused(e.to_string()),
        };
        // Without an address of its own a Node app's was found at start,
        // once: the default is not a change.
        let found = !settings.listen_explicit && settings.node;
        if settings.listen != self.source.listen && !self.source.inherited && !found {
            warn!("the listen addresses cannot change in a reload; restart sheepdog to bind others");
        }
        if settings.http != self.source.http {
            warn!("[http] listen cannot change in a reload; restart sheepdog to serve elsewhere");
        }
        if settings.control_socket != self.source.control_socket {
            return refused(format!(
                "control_socket cannot change in a reload (it is {}; a client reading the new config would \
                 not find this sheepdog): restart sheepdog to move it",
                self.source.control_socket.display()
            ));
        }
        if let Some(why) = crate::limits::too_many(u64::from(settings.workers), settings.channel) {
            return refused(format!("workers: {why}"));
        }
        let command = match WorkerCommand::from_settings(&settings, &self.context) {
            Ok(command) => command,
            Err(e) => return refused(e.to_string()),
        };
        let id = self.next_command;
        self.next_command += 1;
        self.commands.insert(id, command);
        Event::Request(Request::Reload {
            ticket,
            policy: Box::new(Policy::from_settings(&settings, self.source.watchdog)),
            command: id,
        })
    }

    /// Performs one action; what it led to joins `outcomes`, for the core.
    fn perform(&mut self, now: Moment, action: Action, outcomes: &mut Vec<Event>) -> Option<i32> {
        match action {
            Action::Spawn(order) => {
                // The queues know who is on the way out before the new
                // worker's queue is chosen (a worker leaving on its own
                // leaves its queue to its replacement).
                self.steer();
                let outcome = match self.commands.get(&order.command) {
                    Some(command) => self.system.spawn(&order, command),
                    None => Err(format!(
                        "no command {} (a bug: it was released too early)",
                        order.command
                    )),
                };
                // A worker's clock starts when it was forked, not when the
                // pass began (forks can take long on a busy machine); the
                // pass still judges at its own time, having read nothing since.
                let event = match outcome {
                    Ok(pid) => Event::Spawned {
                        order,
                        pid,
                        at: self.system.now().max(now),
                    },
                    Err(reason) => Event::SpawnFailed { order, reason },
                };
                outcomes.push(event);
            }
            Action::Signal { pid, signal } => self.system.signal(pid, signal),
            Action::Drain { pid } => {
                if self.system.drain(pid) {
                    outcomes.push(Event::Drained { pid });
                }
            }
            Action::Ping { pid, message } => self.system.ping(pid, &message),
            Action::Measure { pids, how, limit } => {
                let measured = self.system.measure(&pids, how, limit);
                outcomes.extend(measured.into_iter().map(|(pid, bytes)| Event::Measured { pid, bytes }));
            }
            Action::Inspect { pids } => {
                let found = self.system.inspect(&pids);
                outcomes.push(Event::Inspected(found));
            }
            Action::SampleLoad => {
                let starting: Vec<Pid> = self
                    .flock
                    .workers()
                    .iter()
                    .filter(|w| w.is_starting())
                    .map(|w| w.pid)
                    .collect();
                let runnable = self.system.runnable(&starting);
                outcomes.push(Event::LoadSampled { runnable });
            }
            Action::CheckListeners => {
                let (mut recovered, mut lost) = (Vec::new(), Vec::new());
                let queues = self.system.listen_queues();
                outcomes.push(Event::QueuesSampled(queues));
                for fault in self.system.check_listeners() {
                    match fault {
                        ListenerFault::Recovered(what) => recovered.push(what),
                        ListenerFault::Lost(what) => lost.push(what),
                    }
                }
                if !recovered.is_empty() || !lost.is_empty() {
                    outcomes.push(Event::ListenersChecked { recovered, lost });
                }
            }
            Action::Notify(message) => self.system.notify(&message),
            Action::ReloadFinished { ticket, ok, message } => {
                if let Some(client) = self.reload_waiters.remove(&ticket) {
                    let reply = if ok {
                        Reply::Done(message)
                    } else {
                        Reply::Failed(message)
                    };
                    self.system.reply(client, &reply);
                }
            }
            Action::ReleaseCommand(id) => {
                self.commands.remove(&id);
            }
            Action::Exit { code, reason } => {
                if code == 0 {
                    info!("{reason}; exiting");
                } else {
                    error!("{reason}");
                }
                return Some(code);
            }
        }
        None
    }

    /// `/healthz`: the loop runs (it answers). `/readyz`: healthy by the
    /// watchdog relay's rule, or 503 and why. `/metrics`: Prometheus text.
    /// The number of workers a scale request asks for: exact, relative to
    /// the number wanted now, or one per CPU; refused when out of range.
    fn scale_target(&self, command: &Command) -> Result<usize, String> {
        let max = crate::config::MAX_WORKERS as i64;
        let now = self.flock.desired() as i64;
        match *command {
            Command::Scale { workers } => Ok(workers),
            Command::ScaleAuto { .. } => Ok(crate::config::WorkerCount::Auto.resolve() as usize),
            Command::ScaleBy { by } => {
                let target = now + by;
                if target < 1 {
                    Err(format!(
                        "scale {by:+}: {now} worker{} wanted now, and at least 1 must run (to stop them all, stop sheepdog)",
                        if now == 1 { " is" } else { "s are" }
                    ))
                } else if target > max {
                    Err(format!(
                        "scale {by:+} would make {target} workers, over the {max} allowed"
                    ))
                } else {
                    Ok(target as usize)
                }
            }
            _ => Err("not a scale request".into()),
        }
    }

    fn answer_http(&self, path: &str) -> HttpResponse {
        match path {
            "/healthz" | "/livez" => HttpResponse::text(200, "ok\n"),
            "/readyz" => match self.flock.unhealthy_reason() {
                None => HttpResponse::text(
                    200,
                    format!("ready: {}/{}\n", self.flock.ready_count(), self.flock.desired()),
                ),
                Some(why) => HttpResponse::text(503, format!("{why}\n")),
            },
            "/metrics" => HttpResponse {
                status: 200,
                content_type: metrics::CONTENT_TYPE,
                body: metrics::render(&self.status_report()),
            },
            "/" => HttpResponse::text(200, "sheepdog: /healthz, /readyz, /metrics\n"),
            _ => HttpResponse::text(404, "not found: /healthz, /readyz or /metrics\n"),
        }
    }

    pub fn status_report(&self) -> StatusReport {
        let now = self.system.now();
        let flock = &self.flock;
        let heartbeats = flock.policy().heartbeat.is_some();
        let tally = flock.tally();
        let own = self.system.own_usage();
        let mut workers: Vec<&Worker> = flock.workers().iter().collect();
        workers.sort_by_key(|w| (w.slot, w.started_at));
        let pids: Vec<crate::core::Pid> = workers.iter().map(|w| w.pid).collect();
        let workers = workers
            .into_iter()
            .zip(self.system.workers_usage(&pids))
            .map(|(w, usage)| WorkerStatus {
                slot: w.slot,
                pid: w.pid,
                generation: w.generation,
                state: match w.state {
                    WorkerState::Starting => WorkerPhase::Starting,
                    WorkerState::Ready { retiring: Some(_), .. } => WorkerPhase::Retiring,
                    WorkerState::Ready { .. } => WorkerPhase::Ready,
                    WorkerState::Stopping { .. } => WorkerPhase::Stopping,
                },
                uptime_s: now.saturating_duration_since(w.started_at).as_secs_f64(),
                restarts: flock.slot_restarts(w.slot),
                memory_bytes: w.memory,
                cpu_percent: usage.cpu_percent,
                cpu_seconds: usage.cpu_seconds,
                rss_bytes: usage.rss_bytes,
                pss_bytes: usage.pss_bytes,
                heartbeat_age_s: heartbeats.then(|| now.saturating_duration_since(w.last_heartbeat).as_secs_f64()),
                status: w.status.clone(),
                listens_itself: w.listens_itself.clone(),
                queue: usage.queue,
                connections: usage.connections,
                heap_used_bytes: usage.heap.map(|(used, _)| used),
                heap_total_bytes: usage.heap.map(|(_, total)| total),
                event_loop_lag_ms: usage.lag_ms,
            })
            .collect();
        StatusReport {
            supervisor: SupervisorStatus {
                version: crate::build::version().into(),
                pid: std::process::id(),
                uptime_s: now.saturating_duration_since(self.started).as_secs_f64(),
                name: self.name.clone(),
                config: self.config_path.clone(),
                generation: flock.generation(),
                desired: flock.desired(),
                ready: flock.ready_count(),
                restarts: flock.total_restarts(),
                reloading_to: flock.reloading_to(),
                last_reload: flock.last_reload().map(|r| LastReload {
                    generation: r.generation,
                    ok: r.ok,
                    message: r.message.clone(),
                }),
                unready: flock.unhealthy_reason(),
                replacements: tally
                    .ended_by_cause()
                    .map(|(cause, n)| (cause.label().to_string(), n))
                    .collect(),
                reloads: ReloadCounts {
                    ok: tally.reloads_ok,
                    failed: tally.reloads_failed,
                    refused: tally.reloads_refused,
                },
                reload_seconds: HistogramStatus {
                    le: RELOAD_BUCKETS.to_vec(),
                    counts: tally.reload_seconds.buckets.to_vec(),
                    count: tally.reload_seconds.count,
                    sum: tally.reload_seconds.sum,
                },
                crash_loops: tally.crash_loops,
                listen_queues: self
                    .system
                    .listen_queues()
                    .into_iter()
                    .map(|q| QueueStatus {
                        address: q.address,
                        queued: q.queued,
                        backlog: q.backlog,
                        queue: q.queue,
                    })
                    .collect(),
                cpu_seconds: own.cpu_seconds,
                rss_bytes: own.rss_bytes,
                open_fds: own.open_fds,
                upgraded: match (&self.upgrades.from, self.upgrades.at_unix_ms) {
                    (Some(from), Some(at)) => Some(UpgradeStatus {
                        count: self.upgrades.count,
                        from: from.clone(),
                        at_unix_s: at as f64 / 1000.0,
                        blind_ms: self.upgrades.blind.map(|b| b.as_secs_f64() * 1000.0),
                    }),
                    _ => None,
                },
                exe: self.system.upgrade_path().map(|p| p.display().to_string()),
                spread: self.system.spread(),
            },
            workers,
            waiting: flock
                .waiting_slots()
                .into_iter()
                .map(|(slot, at)| WaitingSlot {
                    slot,
                    restarts: flock.slot_restarts(slot),
                    restart_in_s: at.saturating_duration_since(now).as_secs_f64(),
                })
                .collect(),
        }
    }
}

/// How to read the config again, as data.
fn export_source(source: &ReloadSource) -> SourceState {
    SourceState {
        config_file: source.config_file.as_deref().map(Bytes::path),
        workers: source.overrides.workers.map(|w| match w {
            WorkerCount::Auto => "auto".to_string(),
            WorkerCount::Fixed(n) => n.to_string(),
        }),
        listen_overrides: source.overrides.listen.iter().map(ToString::to_string).collect(),
        command_override: source.overrides.command.clone(),
        log_level_override: source.overrides.log_level.map(|l| l.to_string()),
        spread_override: source.overrides.spread.map(|s| s.to_string()),
        stop_signal_override: source.overrides.stop_signal.map(|s| s.as_str().to_string()),
        listen: source.listen.iter().map(ToString::to_string).collect(),
        inherited: source.inherited,
        watchdog: source.watchdog,
        control_socket: Bytes::path(&source.control_socket),
        http: source.http.as_ref().map(ToString::to_string),
    }
}

fn restore_source(state: SourceState) -> Result<ReloadSource, String> {
    let addresses = |list: &[String]| {
        list.iter()
            .map(|a| a.parse::<ListenAddr>())
            .collect::<Result<Vec<_>, String>>()
    };
    let log_level = match state.log_level_override.as_deref() {
        None => None,
        Some(name) => Some(LogLevel::named(name).ok_or(format!("log level {name:?} is not one this build knows"))?),
    };
    Ok(ReloadSource {
        config_file: state.config_file.map(|f| f.to_path()),
        overrides: Overrides {
            workers: state.workers.as_deref().map(str::parse).transpose()?,
            listen: addresses(&state.listen_overrides)?,
            command: state.command_override,
            log_level,
            spread: state.spread_override.as_deref().map(str::parse).transpose()?,
            stop_signal: state
                .stop_signal_override
                .as_deref()
                .map(|name| name.parse::<crate::config::StopSignal>().map(|s| s.0))
                .transpose()?,
        },
        listen: addresses(&state.listen)?,
        inherited: state.inherited,
        watchdog: state.watchdog,
        control_socket: state.control_socket.to_path(),
        http: state.http.as_deref().map(str::parse).transpose()?,
    })
}
