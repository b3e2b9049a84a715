//! The `sheepdog` binary: the release build of [`sheepdog::app`].

fn main() -> std::process::ExitCode {
    sheepdog::app::main(sheepdog::build::Build::RELEASE)
}
