use std::process::ExitCode;

use clap::Parser;

use sheepdog::cli::{Cli, Command, RunArgs};
use sheepdog::config::Settings;
use sheepdog::flock::Policy;
use sheepdog::spawn::WorkerCommand;
use sheepdog::supervisor::Supervisor;
use sheepdog::{logging, sockets, systemd};

/// EX_CONFIG from sysexits.h: the configuration (or environment) is unusable.
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Check(args) => check(args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let journal = systemd::stderr_is_journal();
    let settings = match Settings::load(args.config.as_deref(), &args.overrides()) {
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
        Ok(command) => command,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    log::info!(
        "sheepdog {}: {} workers of `{}` on {} ({})",
        env!("CARGO_PKG_VERSION"),
        settings.workers,
        settings.command.join(" "),
        listeners.describe(),
        if listeners.inherited {
            "passed by systemd"
        } else {
            "bound by sheepdog"
        }
    );
    let watchdog = systemd::watchdog_interval();
    if let Some(interval) = watchdog {
        log::info!(
            "systemd watchdog: {}; pinging at half of it while the flock is healthy",
            sheepdog::units::format_duration(interval)
        );
    }
    let policy = Policy::from_settings(&settings, watchdog);
    let supervisor = match Supervisor::new(policy, settings.memory.measure, command, listeners) {
        Ok(supervisor) => supervisor,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(sheepdog::supervisor::EXIT_OS_ERROR as u8);
        }
    };
    ExitCode::from(supervisor.run() as u8)
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
