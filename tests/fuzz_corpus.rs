//! The fuzzers' committed inputs, replayed on stable through the same
//! harness (`sheepdog::fuzzing`): the seed corpora (`fuzz/seeds/TARGET/`)
//! and every minimized reproducer of a finding (`fuzz/regressions/TARGET/`).
//! A regression of anything the fuzzers once found fails here, in CI.

mod common;

use common::repo_path;
use sheepdog::fuzzing::{TARGETS, run};

fn inputs(folder: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = repo_path(&format!("fuzz/{folder}/{target}"));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut inputs: Vec<(String, Vec<u8>)> = entries
        .flatten()
        .map(|e| (e.path().display().to_string(), std::fs::read(e.path()).unwrap()))
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn every_seed_and_reproducer_passes_its_harness() {
    for target in TARGETS {
        let seeds = inputs("seeds", target);
        assert!(!seeds.is_empty(), "no seeds for {target}");
        for (path, data) in seeds.iter().chain(&inputs("regressions", target)) {
            let outcome = std::panic::catch_unwind(|| run(target, data));
            assert!(outcome.is_ok(), "{target}: {path} fails its harness");
        }
    }
}
