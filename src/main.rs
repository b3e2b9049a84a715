use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};

use sheepdog::cli::{Cli, ClientArgs, Command, ReloadArgs, RunArgs, ScaleArgs, StatusArgs};
use sheepdog::config::{ClientTarget, Settings, client_target, default_socket_dir};
use sheepdog::control::{self, ControlServer, PROTOCOL_VERSION};
use sheepdog::spawn::{JournalStreams, WorkerCommand};
use sheepdog::supervisor::Supervisor;
use sheepdog::{logging, sockets, status_view, systemd};

/// EX_CONFIG from sysexits.h: the configuration (or environment) is unusable.
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Check(args) => check(args),
        Command::Status(args) => status(args),
        Command::Reload(args) => reload(args),
        Command::Scale(args) => scale(args),
        Command::Man => man(),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let journal = systemd::stderr_is_journal();
    let overrides = args.overrides();
    let settings = match Settings::load(args.config.as_deref(), &overrides) {
        Ok(settings) => settings,
        Err(e) => {
            logging::init(None, journal);
            log::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(settings.log_level.map(|l| l.filter()), journal);

    // Everything that can fail for a bad setup fails here, before any fork.
    let listeners = match sockets::open(&settings.listen) {
        Ok(listeners) => listeners,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let command = match WorkerCommand::new(
        &settings.command,
        &settings.env,
        settings.working_directory.as_deref(),
        listeners.raw_fds(),
        listeners.fdnames(),
    ) {
        Ok(command) => command.with_journal(journal.then(|| JournalStreams::new(&settings.name)).flatten()),
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let control = match ControlServer::bind(&settings.control_socket, settings.control_socket_explicit) {
        Ok(control) => control,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    log::info!(
        "sheepdog {}: {} workers of `{}` on {} ({}); control socket {}",
        env!("CARGO_PKG_VERSION"),
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
    let watchdog = systemd::watchdog_interval();
    if let Some(interval) = watchdog {
        log::info!(
            "systemd watchdog: {}; pinging at half of it while the flock is healthy",
            sheepdog::units::format_duration(interval)
        );
    }
    let supervisor = match Supervisor::new(&settings, overrides, watchdog, journal, command, listeners, control) {
        Ok(supervisor) => supervisor,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(sheepdog::supervisor::EXIT_OS_ERROR as u8);
        }
    };
    ExitCode::from(supervisor.run() as u8)
}

fn man() -> ExitCode {
    let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
    match page.render(&mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sheepdog: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(args: RunArgs) -> ExitCode {
    let settings = match Settings::load(args.config.as_deref(), &args.overrides()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("sheepdog: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = WorkerCommand::new(
        &settings.command,
        &settings.env,
        settings.working_directory.as_deref(),
        vec![],
        None,
    ) {
        eprintln!("sheepdog: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    print!("{}", settings.describe());
    ExitCode::SUCCESS
}

/// Sends one request to the running sheepdog; prints errors; None on failure.
fn ask(client: &ClientArgs, request: Value, timeout: Duration) -> Option<Value> {
    let socket = client_target(client.config.as_deref(), client.socket.as_deref())
        .map_err(|e| e.to_string())
        .and_then(|target| control::resolve(&target));
    let socket = match socket {
        Ok(socket) => socket,
        Err(e) => {
            eprintln!("sheepdog: {e}");
            return None;
        }
    };
    match control::request(&socket, &request, Some(timeout)) {
        Ok(reply) => Some(reply),
        Err(e) => {
            eprintln!("sheepdog: {e}");
            None
        }
    }
}

fn status(args: StatusArgs) -> ExitCode {
    if let Ok(ClientTarget::Any) = client_target(args.client.config.as_deref(), args.client.socket.as_deref()) {
        return list(args.json);
    }
    let Some(reply) = ask(
        &args.client,
        json!({"v": PROTOCOL_VERSION, "cmd": "status"}),
        Duration::from_secs(10),
    ) else {
        return ExitCode::FAILURE;
    };
    if reply["ok"] != json!(true) {
        eprintln!("sheepdog: {}", reply["error"].as_str().unwrap_or("status failed"));
        return ExitCode::FAILURE;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply).unwrap_or_default());
    } else {
        print!("{}", status_view::render(&reply));
    }
    ExitCode::SUCCESS
}

/// `sheepdog status` naming no sheepdog: every running one of this user.
fn list(json: bool) -> ExitCode {
    let dir = default_socket_dir();
    let found = control::running(&control::discover(&dir));
    if found.is_empty() {
        eprintln!("sheepdog: no running sheepdog found in {}", dir.display());
        return ExitCode::FAILURE;
    }
    if json {
        let entries: Vec<Value> = found
            .iter()
            .map(|f| json!({"socket": f.socket.display().to_string(), "status": f.status}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&entries).unwrap_or_default());
    } else {
        let entries: Vec<(String, &Value)> = found
            .iter()
            .map(|f| (f.socket.display().to_string(), &f.status))
            .collect();
        print!("{}", status_view::render_list(&entries));
    }
    ExitCode::SUCCESS
}

fn reload(args: ReloadArgs) -> ExitCode {
    let request = json!({"v": PROTOCOL_VERSION, "cmd": "reload"});
    outcome(ask(&args.client, request, args.timeout), "reload failed")
}

fn scale(args: ScaleArgs) -> ExitCode {
    let request = json!({"v": PROTOCOL_VERSION, "cmd": "scale", "workers": args.workers});
    outcome(ask(&args.client, request, Duration::from_secs(10)), "scale failed")
}

/// Prints a reply's message: on stdout with exit 0 when it went well, else
/// on stderr with exit 1.
fn outcome(reply: Option<Value>, failure: &str) -> ExitCode {
    let Some(reply) = reply else {
        return ExitCode::FAILURE;
    };
    match (
        reply["ok"].as_bool(),
        reply["message"].as_str().or(reply["error"].as_str()),
    ) {
        (Some(true), Some(message)) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        (_, message) => {
            eprintln!("sheepdog: {}", message.unwrap_or(failure));
            ExitCode::FAILURE
        }
    }
}
