#!/usr/bin/env bash
# Runs the fuzz targets (cargo-fuzz, libFuzzer, on the nightly toolchain,
# debug assertions and overflow checks on) for SECONDS each, two at a time,
# and prints how many inputs each ran and what it found. No sanitizer (-s
# none): the parsers are safe Rust, and AddressSanitizer would cost most of
# the inputs per second.
#
#   fuzz/run.sh                 # 60 s per target
#   fuzz/run.sh 900 config      # 15 minutes of one target
#   FUZZ_RUNS=10000000 fuzz/run.sh 3600   # the long pass: 10^7 inputs per
#                               # target, an hour at most for each
#
# Each target starts from its committed seeds (fuzz/seeds/TARGET) and grows
# its own corpus in fuzz/corpus/TARGET (not committed). A finding is written
# to fuzz/artifacts/TARGET/; minimize it (cargo +nightly fuzz tmin TARGET
# FILE), fix the bug, and commit the minimized input to fuzz/regressions/TARGET/:
# tests/fuzz_corpus.rs replays it on stable in every test run.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(notify ipc control_request control_reply config config_structured units values)
fi
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo +nightly fuzz build -a -s none
mkdir -p logs
run_one() {
    local target=$1
    mkdir -p "corpus/$target"
    local start=$SECONDS
    if cargo +nightly fuzz run -a -s none "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" ${FUZZ_RUNS:+-runs="$FUZZ_RUNS"} -timeout=10 \
        -print_final_stats=1 > "logs/$target.log" 2>&1; then
        verdict="no finding"
    else
        verdict="FINDING: see fuzz/logs/$target.log and fuzz/artifacts/$target/"
    fi
    runs=$(awk '/stat::number_of_executed_units/ { print $2 }' "logs/$target.log" | tail -1)
    printf '%-18s %12s inputs in %ss  %s\n' "$target" "${runs:-?}" "$((SECONDS - start))" "$verdict"
}
export -f run_one
export seconds FUZZ_RUNS
printf '%s\n' "${targets[@]}" | xargs -P "${FUZZ_JOBS:-2}" -I{} bash -c 'run_one {}' | tee logs/summary.txt
! grep -q FINDING logs/summary.txt
