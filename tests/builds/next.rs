//! A test build: this code under the version "VERSION+next", to upgrade a
//! running sheepdog to (tests/upgrade.rs, and the .deb of the end-to-end
//! upgrade, tests/e2e/run.sh).

fn main() -> std::process::ExitCode {
    sheepdog::app::main(sheepdog::build::Build {
        version: concat!(env!("CARGO_PKG_VERSION"), "+next"),
        state_format: sheepdog::build::STATE_FORMAT,
    })
}
