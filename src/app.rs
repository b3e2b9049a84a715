//! The command line's entry point: `run` and the clients of a running
//! sheepdog. `src/main.rs` calls [`main`] with the release build; test
//! builds (`tests/builds/`) with another version or state format.

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};

use crate::build::Build;
use crate::cli::{Cli, ClientArgs, Command, ReloadArgs, RunArgs, ScaleArgs, StatusArgs, TopArgs, UpgradeArgs};
use crate::config::{ClientTarget, Overrides, Settings, Spread, client_target, default_socket_dir};
use crate::control::client::{self, NoReply};
use crate::control::protocol::{Command as Request, Reply};
use crate::control::server::ControlServer;
use crate::control::view;
use crate::error::{Error, ExitClass};
use crate::observe::http::HttpServer;
use crate::shell::os::Os;
use crate::shell::supervisor::{ReloadSource, Supervisor};
use crate::spread::queues::Queues;
use crate::systemd::{notify, sockets};
use crate::upgrade::handover::Inherited;
use crate::upgrade::state::HandOver;
use crate::worker::spawn::{CommandContext, WorkerCommand};
use crate::{limits, logging, manual, units};

/// Runs the command line of `build`.
pub fn main(build: Build) -> ExitCode {
    crate::build::set(build);
    if let Some(word) = std::env::args().nth(1)
        && let Some(instead) = pm2_word(&word)
    {
        eprintln!("sheepdog has no `{word}` (pm2's): {instead}");
        return ExitCode::from(2);
    }
    let matches = Cli::command().version(build.version).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if !matches!(cli.command, Command::Run(_)) {
        // A client whose output is cut short (`sheepdog status | head -1`)
        // ends quietly, as any Unix tool does, rather than panicking on
        // EPIPE (Rust ignores SIGPIPE by default). The supervisor keeps it
        // ignored: a write to a closed pipe fails there instead.
        // SAFETY: setting a signal's disposition to its default.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Run(args) => run(args),
        Command::Check(args) => check(args),
        Command::Status(args) => status(args),
        Command::Reload(args) => reload(args),
        Command::Scale(args) => scale(args),
        Command::Top(args) => top(args),
        Command::Upgrade(args) => upgrade(args),
        Command::UpgradeProbe => crate::upgrade::probe::answer(),
        Command::Man { page } => man(&page),
        Command::Import(args) => import(args),
        Command::Logs(args) => logs(args),
        Command::Replace(args) => {
            let request = Request::Replace { slot: args.slot };
            answered(ask(&args.client, request, Duration::from_secs(10)), done)
        }
        Command::Install(args) => install(args),
        Command::Uninstall { name } => match crate::install::uninstall(&name) {
            Ok(()) => ExitCode::SUCCESS,
            Err(why) => {
                eprintln!("sheepdog: {why}");
                ExitCode::FAILURE
            }
        },
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "sheepdog", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    let journal = notify::stderr_is_journal();
    match Inherited::from_env() {
        // A fresh start begins from a known signal mask: whatever the parent
        // blocked (a wrapper can block SIGTERM) would stay blocked, and
        // SIGTERM would never stop the flock. (A binary taking over keeps
        // the mask it was handed, and restores it once it can.)
        Ok(None) => crate::upgrade::handover::restore_signals(&nix::sys::signal::SigSet::empty()),
        Ok(Some(inherited)) => return take_over(inherited, journal),
        Err(why) => {
            // Exec'd for a hand-over whose state cannot be found: nothing
            // to take over with, nor to hand back to.
            logging::init(None, journal);
            log::error!("cannot take over the flock: {why}");
            return give_up();
        }
    }
    let overrides = args.overrides();
    let settings = match Settings::load(args.config.as_deref(), &overrides) {
        Ok(settings) => settings,
        Err(e) => {
            logging::init(None, journal);
            let code = cannot_run(e);
            logging::drain(Duration::from_secs(1));
            return code;
        }
    };
    logging::init(settings.log_level.map(|l| l.filter()), journal);
    let code = match set_up(&settings, overrides, journal) {
        Ok(supervisor) => ExitCode::from(supervisor.run() as u8),
        Err(e) => cannot_run(e),
    };
    // The last lines, the reason for the exit among them, for a slow reader.
    logging::drain(Duration::from_secs(1));
    code
}

/// What a pm2 user's first words are in sheepdog's.
fn pm2_word(word: &str) -> Option<&'static str> {
    Some(match word {
        "start" => {
            "`sheepdog run --workers 2 -- node app.js` runs the app in the foreground; \
             `sudo sheepdog install app -- node app.js` makes it a service that starts at boot"
        }
        "stop" | "kill" => {
            "Ctrl-C (or SIGTERM) stops a flock run in the foreground; `systemctl stop sheepdog@app` a service"
        }
        "restart" => "`sheepdog reload` rolls the workers without dropping a request; `systemctl restart sheepdog@app`",
        "delete" | "unstartup" => "`sudo sheepdog uninstall app` removes a service",
        "list" | "ls" | "show" | "describe" => "`sheepdog status` lists the running flocks (`--config FILE` for one)",
        "monit" => "`sheepdog top`",
        "startup" | "save" => "`sudo sheepdog install app -- node app.js` does both",
        _ => return None,
    })
}

/// Logs why sheepdog cannot run; the error's class is the exit code.
fn cannot_run(error: Error) -> ExitCode {
    log::error!("{error}");
    ExitCode::from(error.exit_code())
}

/// Everything that can fail for a bad setup fails here, before any fork.
fn set_up(settings: &Settings, overrides: Overrides, journal: bool) -> Result<Supervisor<Os>, Error> {
    let fd_limit = limits::raise();
    if let Some(why) = limits::too_many(u64::from(settings.workers), settings.channel) {
        return Err(Error::config(format!("workers: {why}")));
    }
    // A queue per worker and one for a replacement beside it; more are
    // opened as workers are added.
    let queues = match settings.spread {
        Spread::Shared => 1,
        _ => settings.workers as usize + settings.max_surge.max(1) as usize,
    };
    let listen = addresses(settings);
    let listeners = sockets::open(&listen, queues)?;
    let mut queues = Queues::new(&listeners, settings.spread, listeners.inherited);
    queues.reserve(&listeners, settings.workers as usize);
    crate::spread::drop_capabilities();
    let context = CommandContext {
        listeners: queues.fds(&listeners, 0),
        fdnames: listeners.group_fdnames(),
        journal,
        fd_limit,
    };
    let command = WorkerCommand::from_settings(settings, &context)?;
    let control = ControlServer::bind(&settings.control_socket, settings.control_socket_explicit)?;
    let http = settings.http.as_ref().map(HttpServer::bind).transpose()?;
    log::info!(
        "sheepdog {}: {} workers of `{}` on {} ({}); control socket {}",
        crate::build::version(),
        settings.workers,
        settings.command.join(" "),
        listeners.describe(),
        if listeners.inherited {
            "passed by systemd"
        } else {
            "bound by sheepdog"
        },
        control.path().display()
    );
    log::info!("new connections: {}", queues.describe());
    if let Some(http) = &http {
        // Not "on ADDRESS": that phrase names the flock's own listeners.
        log::info!(
            "health and metrics at http://{}/ (/healthz, /readyz, /metrics)",
            http.address
        );
    }
    let watchdog = notify::watchdog_interval();
    if let Some(interval) = watchdog {
        log::info!(
            "systemd watchdog: {}; pinging at half of it while the flock is healthy",
            units::format_duration(interval)
        );
    }
    let source = ReloadSource {
        config_file: settings.config_file.clone(),
        overrides,
        listen,
        inherited: listeners.inherited,
        watchdog,
        control_socket: settings.control_socket.clone(),
        http: settings.http.clone(),
    };
    // Outside the journal, workers' lines come through sheepdog, attributed.
    let outputs = (!journal).then(|| crate::worker::output::Outputs::new(&settings.name));
    let os = Os::new(
        settings.channel,
        listeners,
        queues,
        control,
        http,
        outputs,
        crate::upgrade::own_path(),
    )?;
    Ok(Supervisor::new(settings, source, context, command, os))
}

/// The addresses to bind when systemd passes none: the config's, or for a
/// Node app given none, the one it listens on itself (found by starting it
/// once), so that `sheepdog run -- node app.js` serves where `node app.js`
/// would.
fn addresses(settings: &Settings) -> Vec<crate::config::ListenAddr> {
    if !settings.node || settings.listen_explicit || sockets::passed_by_systemd() {
        return settings.listen.clone();
    }
    let command = settings.command.join(" ");
    let probed = crate::node::probe_port(
        &settings.command,
        &probe_env(settings),
        settings.working_directory.as_deref(),
        crate::node::PROBE_TIMEOUT,
        None,
    );
    match probed {
        Ok(crate::node::Probed::Listens(address)) => {
            log::info!(
                "`{command}` listens on {address} itself: binding it for the workers (found by starting it once; \
                 --listen or `listen` chooses another)"
            );
            vec![address]
        }
        Ok(crate::node::Probed::Nothing(why)) => {
            log::warn!(
                "`{command}` was started once to find the port it listens on, but {why}; serving on {} \
                 (--listen or `listen` chooses the address)",
                settings
                    .listen
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            settings.listen.clone()
        }
        Err(why) => {
            log::warn!("cannot find the port `{command}` listens on ({why}); serving on the default address");
            settings.listen.clone()
        }
    }
}

/// The environment the port probe runs in: the workers' own (the app reads
/// PORT from it), with the preload.
fn probe_env(settings: &Settings) -> std::collections::BTreeMap<String, String> {
    let mut env = settings.env.clone();
    if let Ok(preload) = crate::node::preload_path() {
        crate::node::add_preload(&mut env, std::env::var("NODE_OPTIONS").ok(), &preload);
    }
    env
}

/// Takes over the flock the binary before this one handed over (same pid,
/// same workers), or hands it back to that binary when it cannot.
fn take_over(inherited: Inherited, journal: bool) -> ExitCode {
    let build = crate::build::current();
    let decoded = inherited.read_state().and_then(|bytes| {
        capture_state(&bytes);
        HandOver::decode(&bytes, build.state_format)
    });
    let handover = match decoded {
        Ok(handover) => handover,
        Err(why) => {
            logging::init(None, journal);
            return hand_back(&inherited, &why);
        }
    };
    let level = handover
        .supervisor
        .log_level
        .as_deref()
        .and_then(crate::config::LogLevel::named);
    logging::init(level.map(|l| l.filter()), journal);
    logging::resume(handover.os.log_pending.as_bytes(), handover.os.log_dropped);
    // A wrapper that forks the new binary instead of exec'ing it would run
    // it in another process: it is not the workers' parent, and may not
    // take them over.
    let own = std::process::id();
    if let Some(pid) = handover.pid.filter(|pid| *pid != own) {
        let why =
            format!("the flock is pid {pid}'s, and this is pid {own} (a wrapper that forks instead of exec'ing?)");
        return hand_back(&inherited, &why);
    }
    let HandOver {
        from_version,
        taken_at_ns,
        supervisor,
        os,
        ..
    } = handover;
    let refused = inherited.refused.clone();
    // Whatever goes wrong while the state is read is a hand-back, a panic too.
    let prepared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        failpoint(&inherited)?;
        Supervisor::<Os>::prepare(supervisor, from_version, taken_at_ns, refused)
    }))
    .unwrap_or_else(|_| Err("it panicked while reading the state".into()));
    let prepared = match prepared {
        Ok(prepared) => prepared,
        Err(why) => return hand_back(&inherited, &why),
    };
    let mut os = match Os::adopt(os) {
        Ok(os) => os,
        Err(why) => return hand_back(&inherited, &why),
    };
    let mut inherited = inherited;
    os.keep_guard(inherited.guard.take());
    drop(inherited);
    let code = ExitCode::from(prepared(os).run() as u8);
    logging::drain(Duration::from_secs(1));
    code
}

/// In debug builds, `SHEEPDOG_CAPTURE_STATE=PATH` writes the state a
/// binary is handed, as it came, to PATH: how the golden states of a release
/// are captured (tests/fixtures/state/capture.sh).
fn capture_state(bytes: &[u8]) {
    if !cfg!(debug_assertions) {
        return;
    }
    if let Some(path) = std::env::var_os("SHEEPDOG_CAPTURE_STATE") {
        let _ = std::fs::write(path, bytes);
    }
}

/// Fault injection for the tests of the hand-over, in debug builds only:
/// `SHEEPDOG_FAILPOINT=adopt` makes a new binary refuse the state it is
/// handed (the old one, handed it back, takes it); `SHEEPDOG_FAILPOINT=pause`
/// makes it wait half a second before it takes over, signals still blocked,
/// so that a test can send one into the blind window; `hang` makes it hang
/// there for good (its guard kills it).
fn failpoint(inherited: &Inherited) -> Result<(), String> {
    if !cfg!(debug_assertions) || inherited.refused.is_some() {
        return Ok(());
    }
    match std::env::var_os("SHEEPDOG_FAILPOINT") {
        Some(f) if f == "adopt" => Err("SHEEPDOG_FAILPOINT=adopt says so".into()),
        Some(f) if f == "pause" => {
            std::thread::sleep(Duration::from_millis(500));
            Ok(())
        }
        // A new binary that hangs before it takes over: its guard ends it.
        Some(f) if f == "hang" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        _ => Ok(()),
    }
}

/// Execs the old binary again with the state; if even that fails, stops
/// every worker and exits 1, for systemd to start the service afresh.
fn hand_back(inherited: &Inherited, why: &str) -> ExitCode {
    let why = format!("sheepdog {} cannot take the flock over: {why}", crate::build::version());
    log::error!("{why}; handing it back to the binary before");
    logging::drain(Duration::from_millis(500));
    let failed = inherited.hand_back(&why);
    log::error!("cannot hand the flock back: {failed}");
    give_up()
}

/// The last resort: no binary can run the flock, so nothing of it may
/// outlive this process; systemd's Restart= starts the service afresh.
fn give_up() -> ExitCode {
    let stopped = crate::upgrade::handover::stop_every_child();
    log::error!("stopped {stopped} processes of the flock; exiting for a clean restart");
    logging::drain(Duration::from_secs(1));
    ExitCode::from(ExitClass::Os.code())
}

/// `sheepdog install NAME`: see [`crate::install`].
fn install(args: crate::cli::InstallArgs) -> ExitCode {
    match install_app(&args) {
        Ok(()) => {
            println!(
                "done. Logs: sheepdog logs {name} (or journalctl -u sheepdog@{name}); reload after a deploy: \
                 systemctl reload sheepdog@{name}; undo: sheepdog uninstall {name}",
                name = args.name
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sheepdog: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn install_app(args: &crate::cli::InstallArgs) -> Result<(), Error> {
    crate::install::check_name(&args.name).map_err(Error::config)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::config(
            "install writes /etc/sheepdog and systemd units: run it as root (sudo sheepdog install …)",
        ));
    }
    let text = match (&args.config, args.command.is_empty()) {
        (Some(file), true) => {
            // Its settings, written out whole: relative paths made absolute.
            let file = std::fs::canonicalize(file).map_err(|e| Error::config(format!("{}: {e}", file.display())))?;
            Settings::load(Some(&file), &Overrides::default())?.describe()
        }
        (None, false) => {
            let here = std::env::current_dir().map_err(|e| Error::config(format!("the current directory: {e}")))?;
            crate::install::config_for_command(&args.command, &here, args.workers.as_deref())
        }
        (Some(_), false) => return Err(Error::config("give --config FILE or a command after --, not both")),
        (None, true) => {
            return Err(Error::config(
                "what to install: sheepdog install NAME -- node app.js (or --config FILE)",
            ));
        }
    };
    let target = std::path::Path::new(crate::install::CONFIG_DIR).join(format!("{}.toml", args.name));
    let settings = Settings::from_toml(&text, Some(&target), &Overrides::default())?;
    let address = match &args.listen {
        Some(address) => address.clone(),
        None if settings.listen_explicit => settings.listen[0].clone(),
        None if settings.node => {
            let owner = settings
                .working_directory
                .as_ref()
                .and_then(|dir| std::fs::metadata(dir).ok())
                .map(|meta| {
                    (
                        std::os::unix::fs::MetadataExt::uid(&meta),
                        std::os::unix::fs::MetadataExt::gid(&meta),
                    )
                });
            match crate::node::probe_port(
                &settings.command,
                &probe_env(&settings),
                settings.working_directory.as_deref(),
                crate::node::PROBE_TIMEOUT,
                owner,
            ) {
                Ok(crate::node::Probed::Listens(address)) => {
                    println!("`{}` listens on {address}", settings.command.join(" "));
                    address
                }
                Ok(crate::node::Probed::Nothing(why)) => {
                    return Err(Error::config(format!(
                        "cannot tell the port `{}` listens on: {why}; give --listen ADDR",
                        settings.command.join(" ")
                    )));
                }
                Err(why) => return Err(Error::config(why)),
            }
        }
        None => settings.listen[0].clone(),
    };
    let plan = crate::install::plan(&args.name, &settings, &text, address).map_err(Error::config)?;
    crate::install::carry_out(&plan, args.timeout).map_err(Error::os)
}

/// `sheepdog logs`: from the journal under systemd (by exec'ing
/// journalctl), otherwise the lines the running sheepdog kept.
fn logs(args: crate::cli::LogsArgs) -> ExitCode {
    let socket = match &args.name {
        Some(name) => {
            let found = client::running(&client::discover_all(&default_socket_dir()));
            match found.iter().find(|f| &f.status.supervisor.name == name) {
                Some(one) => Ok(one.socket.clone()),
                None => Err(format!(
                    "no running sheepdog is named {name:?} (running: {}); the logs of a stopped service: \
                     journalctl -u sheepdog@{name}",
                    found
                        .iter()
                        .map(|f| f.status.supervisor.name.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        None => client_target(args.client.config.as_deref(), args.client.socket.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|target| client::resolve(&target)),
    };
    let socket = match socket {
        Ok(socket) => socket,
        Err(e) => {
            eprintln!("sheepdog: {e}");
            return ExitCode::FAILURE;
        }
    };
    let lines = args.lines.min(crate::control::protocol::MAX_LOG_LINES);
    let ask = |after: Option<u64>| {
        let request = Request::Logs {
            lines,
            slot: args.worker,
            after,
        };
        client::request(&socket, &request, Some(Duration::from_secs(10)))
    };
    let logs = match ask(None) {
        Ok(Reply::Logs(logs)) => logs,
        Ok(Reply::Failed(why)) => {
            eprintln!("sheepdog: {why}");
            return ExitCode::FAILURE;
        }
        Ok(_) => {
            eprintln!("sheepdog: unexpected reply (is that sheepdog older than `logs`?)");
            return ExitCode::FAILURE;
        }
        Err(NoReply::TimedOut(why) | NoReply::Failed(why)) => {
            eprintln!("sheepdog: {why}");
            return ExitCode::FAILURE;
        }
    };
    if logs.journal {
        return journalctl(&logs, &args);
    }
    let name = logs.name.clone();
    let show = |line: &crate::worker::output::LogLine| {
        println!(
            "{} {name}-worker-{}[{}]: {}",
            crate::text::utc(line.time),
            line.slot,
            line.pid,
            line.line
        );
    };
    logs.lines.iter().for_each(show);
    if !args.follow {
        return ExitCode::SUCCESS;
    }
    let mut last = logs.last;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        match ask(Some(last)) {
            Ok(Reply::Logs(logs)) => {
                logs.lines.iter().for_each(show);
                last = logs.last.max(last);
            }
            _ => {
                eprintln!("sheepdog: the sheepdog at {} is gone", socket.display());
                return ExitCode::SUCCESS;
            }
        }
    }
}

/// The workers write to the journal: journalctl shows them, with the
/// same choices (this process becomes journalctl).
fn journalctl(logs: &crate::control::protocol::Logs, args: &crate::cli::LogsArgs) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new("journalctl");
    command.arg("--no-pager").arg("-n").arg(args.lines.to_string());
    if let Some(unit) = &logs.unit {
        command.arg("-u").arg(unit);
    }
    match args.worker {
        Some(slot) => {
            command.arg("-t").arg(format!("{}-worker-{slot}", logs.name));
        }
        None if logs.unit.is_none() => {
            command.arg(format!("SYSLOG_IDENTIFIER={}", logs.name));
        }
        None => {}
    }
    if args.follow {
        command.arg("-f");
    }
    let error = command.exec();
    eprintln!("sheepdog: the workers log to the journal, and journalctl cannot run: {error}");
    ExitCode::FAILURE
}

/// `sheepdog import`: writes a config per app, then checks each as
/// `sheepdog check` would.
fn import(args: crate::cli::ImportArgs) -> ExitCode {
    let imported = crate::import::read_ecosystem(&args.file)
        .and_then(|ecosystem| {
            let base = std::fs::canonicalize(&args.file)
                .ok()
                .and_then(|file| file.parent().map(std::path::Path::to_path_buf));
            crate::import::import(&ecosystem, args.env.as_deref(), base.as_deref())
        })
        .and_then(|apps| crate::import::write(&apps, &args.out, args.force).map(|paths| (apps, paths)));
    let (apps, paths) = match imported {
        Ok(done) => done,
        Err(why) => {
            eprintln!("sheepdog: {why}");
            return ExitCode::from(ExitClass::Config.code());
        }
    };
    let mut failed = false;
    for (app, path) in apps.iter().zip(&paths) {
        let checked = Settings::load(Some(path), &Overrides::default())
            .and_then(|settings| WorkerCommand::from_settings(&settings, &CommandContext::default()).map(|_| ()));
        match checked {
            Ok(()) => println!("wrote {} (sheepdog check: ok)", path.display()),
            Err(e) => {
                failed = true;
                println!("wrote {} (sheepdog check: {e})", path.display());
            }
        }
        for line in &app.unmapped {
            println!("  not mapped: {line}");
        }
    }
    if let Some(first) = paths.first() {
        println!(
            "run one: sheepdog run --config {}; as a service: sheepdog install NAME --config {}",
            first.display(),
            first.display()
        );
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn man(page: &str) -> ExitCode {
    match manual::page(page) {
        Some(text) => {
            // A reader that stops early (`| head`) is no error of ours.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("sheepdog: no page {page}; there are {}", manual::PAGES.join(", "));
            ExitCode::FAILURE
        }
    }
}

fn check(args: RunArgs) -> ExitCode {
    let checked = Settings::load(args.config.as_deref(), &args.overrides()).and_then(|settings| {
        WorkerCommand::from_settings(&settings, &CommandContext::default())?;
        Ok(settings)
    });
    match checked {
        Ok(settings) => {
            print!("{}", settings.describe());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sheepdog: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// How a client's request went, short of a reply to print.
enum Asked {
    Reply(Box<Reply>),
    /// No reply within the client's own timeout; the server may go on.
    TimedOut,
    /// Printed already.
    Failed,
}

/// Exit code of a client that stopped waiting before the outcome came
/// (EX_TEMPFAIL): not a failure of what it asked for.
const EXIT_NO_OUTCOME: u8 = 75;

/// Sends one request to the running sheepdog; prints why it got no reply.
fn ask(client: &ClientArgs, request: Request, timeout: Duration) -> Asked {
    let socket = client_target(client.config.as_deref(), client.socket.as_deref())
        .map_err(|e| e.to_string())
        .and_then(|target| client::resolve(&target));
    let socket = match socket {
        Ok(socket) => socket,
        Err(e) => {
            eprintln!("sheepdog: {e}");
            return Asked::Failed;
        }
    };
    match client::request(&socket, &request, Some(timeout)) {
        Ok(reply) => Asked::Reply(Box::new(reply)),
        Err(NoReply::TimedOut(why)) => {
            eprintln!("sheepdog: {why}");
            Asked::TimedOut
        }
        Err(NoReply::Failed(why)) => {
            eprintln!("sheepdog: {why}");
            Asked::Failed
        }
    }
}

fn status(args: StatusArgs) -> ExitCode {
    if let Ok(ClientTarget::Any) = client_target(args.client.config.as_deref(), args.client.socket.as_deref()) {
        return list(args.json);
    }
    let reply = ask(&args.client, Request::Status, Duration::from_secs(10));
    answered(reply, |reply| match reply {
        Reply::Status(report) if args.json => Some(pretty(&Reply::Status(report))),
        Reply::Status(report) => Some(view::render(&report).trim_end().to_string()),
        _ => None,
    })
}

/// A reply as indented JSON, for `--json`.
fn pretty(reply: &Reply) -> String {
    serde_json::from_str::<serde_json::Value>(&reply.encode())
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_default()
}

/// `sheepdog status` naming no sheepdog: every running one of this user.
fn list(json: bool) -> ExitCode {
    let dir = default_socket_dir();
    let found = client::running(&client::discover_all(&dir));
    if found.is_empty() {
        eprintln!("sheepdog: no running sheepdog found in {}", dir.display());
        return ExitCode::FAILURE;
    }
    if json {
        let entries: Vec<serde_json::Value> = found
            .iter()
            .map(|f| {
                let status = serde_json::to_value(&f.status).unwrap_or_default();
                serde_json::json!({"socket": f.socket.display().to_string(), "status": status})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&entries).unwrap_or_default());
    } else {
        print!("{}", view::render_list(&found));
    }
    ExitCode::SUCCESS
}

fn reload(args: ReloadArgs) -> ExitCode {
    match ask(&args.client, Request::Reload, args.timeout) {
        Asked::TimedOut => {
            eprintln!(
                "sheepdog: stopped waiting; the reload goes on (`sheepdog status` tells how it ends, \
                 `--timeout` waits longer)"
            );
            ExitCode::from(EXIT_NO_OUTCOME)
        }
        asked => answered(asked, done),
    }
}

fn upgrade(args: UpgradeArgs) -> ExitCode {
    if args.all {
        return upgrade_all(args.timeout);
    }
    match ask(&args.client, Request::Upgrade, args.timeout) {
        Asked::TimedOut => {
            eprintln!(
                "sheepdog: stopped waiting for the upgrade's outcome (`sheepdog status` tells the version running)"
            );
            ExitCode::from(EXIT_NO_OUTCOME)
        }
        asked => answered(asked, done),
    }
}

/// Every sheepdog running from this binary's path: what the package's
/// postinst runs after an upgrade. Exit 1 if any of them was not upgraded.
/// Every one is asked at once: looking takes a few seconds at most, and
/// the upgrades together `timeout`, however many there are.
fn upgrade_all(timeout: Duration) -> ExitCode {
    use crate::text::printable;
    use crate::upgrade::find;
    let Some(exe) = crate::upgrade::own_path() else {
        eprintln!("sheepdog: cannot tell this binary's path (/proc/self/exe)");
        return ExitCode::FAILURE;
    };
    let shown = printable(&exe.to_string_lossy()).into_owned();
    let installed = match find::Installed::at(&exe) {
        Ok(installed) => installed,
        Err(why) => {
            eprintln!("sheepdog: cannot tell which binary is installed at {shown}: {why}");
            return ExitCode::FAILURE;
        }
    };
    let (running, unreachable) = find::supervisors(&installed);
    let mut failed = !unreachable.is_empty();
    for (pid, why) in &unreachable {
        eprintln!(
            "sheepdog: pid {pid} runs {shown} but cannot be asked: {}",
            printable(why)
        );
    }
    if running.is_empty() && unreachable.is_empty() {
        println!("no sheepdog is running from {shown}");
    }
    let deadline = std::time::Instant::now() + timeout;
    let outcomes = find::for_each_at_once(running, |one| {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let outcome = find::ask(&one, &Request::Upgrade, left);
        (one, outcome)
    });
    for (one, outcome) in outcomes {
        let who = format!("{} (pid {})", printable(&one.name), one.pid);
        match outcome {
            Ok(Reply::Done(message)) => println!("{who}: {message}"),
            Ok(Reply::Failed(why)) => {
                failed = true;
                eprintln!("sheepdog: {who}: {why}");
            }
            Ok(_) => {
                failed = true;
                eprintln!("sheepdog: {who}: unexpected reply");
            }
            Err(e) => {
                failed = true;
                eprintln!(
                    "sheepdog: {who}, sheepdog {}: {}",
                    printable(&one.version),
                    printable(&e.to_string())
                );
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn scale(args: ScaleArgs) -> ExitCode {
    let request = match args.workers {
        crate::cli::ScaleTo::Exactly(n) => Request::Scale { workers: n as usize },
        crate::cli::ScaleTo::By(by) => Request::ScaleBy { by },
        crate::cli::ScaleTo::Auto => Request::ScaleAuto {
            workers: crate::control::protocol::Auto::Auto,
        },
    };
    answered(ask(&args.client, request, Duration::from_secs(10)), done)
}

/// `sheepdog top`: the live view of the one sheepdog the arguments name.
fn top(args: TopArgs) -> ExitCode {
    let socket = client_target(args.client.config.as_deref(), args.client.socket.as_deref())
        .map_err(|e| e.to_string())
        .and_then(|target| client::resolve(&target));
    let outcome = socket.and_then(|socket| crate::control::top::run(&socket, args.interval));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sheepdog: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What a command that asked for something prints when it went well.
fn done(reply: Reply) -> Option<String> {
    match reply {
        Reply::Done(message) => Some(message),
        _ => None,
    }
}

/// Prints what `expected` makes of the reply on stdout, with exit 0; a
/// failure, or a reply of another kind, on stderr with exit 1.
fn answered(asked: Asked, expected: impl FnOnce(Reply) -> Option<String>) -> ExitCode {
    let Asked::Reply(reply) = asked else {
        return ExitCode::FAILURE;
    };
    let reply = *reply;
    let error = match &reply {
        Reply::Failed(error) => Some(error.clone()),
        _ => None,
    };
    match (expected(reply), error) {
        (Some(text), _) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        (None, Some(error)) => {
            eprintln!("sheepdog: {error}");
            ExitCode::FAILURE
        }
        (None, None) => {
            eprintln!("sheepdog: unexpected reply");
            ExitCode::FAILURE
        }
    }
}
