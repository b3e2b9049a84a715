#![no_main]
// The checks live in sheepdog::fuzzing, where tests/fuzz_corpus.rs replays them.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sheepdog::fuzzing::units(data));
