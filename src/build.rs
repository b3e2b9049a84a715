//! What this build of sheepdog is: its version string, and the format of
//! the state it hands over to the binary that replaces it in place
//! (`sheepdog upgrade`, see [`crate::upgrade`]).
//!
//! The binary sets it once, first thing ([`set`]); everything that says
//! which sheepdog this is (`--version`, `status`, the metrics' build info,
//! the log) reads it here. Test builds (`tests/builds/`) are the same code
//! under another version string or state format, so that an upgrade from
//! one build to another can be tested for real.

use std::sync::OnceLock;

/// The hand-over state format this code writes and reads.
///
/// The state is the supervisor's own records, as serde writes them: the
/// core's (`core::Flock` and everything it holds) and the shell's parts
/// named in `upgrade::state`. The rule for a change of any of them: a field
/// added gets `#[serde(default)]` and a default that means "as a build
/// before it did" (or `#[serde(skip)]` when it is not state at all); a
/// field removed is left readable (unknown fields are ignored, serde's
/// default, so a field a newer build wrote and this one lacks costs
/// nothing); a field renamed keeps its old name (`#[serde(rename)]`);
/// anything else (a type or a meaning changed) raises this number, and an
/// older state is then refused and handed back. Time points are written
/// relative to the moment the state was taken (`clock::relative_to`).
/// The states 0.1.0 wrote (tests/fixtures/state, made by its capture.sh)
/// must decode: `the_states_written_by_release_0_1_0_are_taken_whole` fails
/// for a field added without a default.
pub const STATE_FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Build {
    pub version: &'static str,
    /// The one hand-over state format this build writes and reads.
    pub state_format: u32,
}

impl Build {
    /// The build as released: the crate's version, the code's state format.
    pub const RELEASE: Build = Build {
        version: env!("CARGO_PKG_VERSION"),
        state_format: STATE_FORMAT,
    };
}

static CURRENT: OnceLock<Build> = OnceLock::new();

/// Names this build; the first call wins.
pub fn set(build: Build) {
    let _ = CURRENT.set(build);
}

pub fn current() -> Build {
    CURRENT.get().copied().unwrap_or(Build::RELEASE)
}

/// "0.1.0", or a test build's own.
pub fn version() -> &'static str {
    current().version
}
