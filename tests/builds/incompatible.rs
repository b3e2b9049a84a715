//! A test build whose hand-over state format no other build reads or
//! writes: an upgrade to it must be refused, and the flock keep serving.

fn main() -> std::process::ExitCode {
    sheepdog::app::main(sheepdog::build::Build {
        version: concat!(env!("CARGO_PKG_VERSION"), "+incompatible"),
        state_format: sheepdog::build::STATE_FORMAT + 1000,
    })
}
