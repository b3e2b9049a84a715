#!/usr/bin/env bash
# Mutation testing of the core and its parsers: cargo-mutants changes the code
# one small way at a time (a `>` for a `>=`, a function that returns a
# default) and runs the library's tests; a mutant that no test notices is
# "missed". Prints the score: caught / (caught + missed + timeouts).
#
#   tests/mutants.sh              # about half an hour on 2 cores
#   tests/mutants.sh -f src/core/health.rs   # one file
#
# Not part of tests/run.sh (too slow for CI); the README gives the last figure.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants
files=(-f 'src/core/*.rs' -f src/worker/channel.rs -f 'src/config/*.rs' -f src/control/protocol.rs)
if [ $# -gt 0 ]; then files=("$@"); fi
out=${MUTANTS_OUT:-target/mutants}
mkdir -p "$out"
# The library's tests only (--lib): building every integration test for
# each mutant would triple the time, and they are not what is measured.
status=0
cargo mutants --no-shuffle --jobs 2 --timeout 30 --output "$out" \
    --cargo-arg=--lib "${files[@]}" -e 'src/core/tests/*' || status=$?
# 2: some mutants were missed, 3: some timed out; the score says how many.
case $status in 0 | 2 | 3) ;; *) echo "cargo mutants failed ($status)" >&2; exit "$status" ;; esac
dir=$out/mutants.out
count() { [ -f "$dir/$1" ] && wc -l < "$dir/$1" || echo 0; }
caught=$(count caught.txt) missed=$(count missed.txt) timeout=$(count timeout.txt) unviable=$(count unviable.txt)
awk -v c="$caught" -v m="$missed" -v t="$timeout" -v u="$unviable" 'BEGIN {
    printf "mutants: %d caught, %d missed, %d timeouts (%d unviable): score %.1f%%\n", c, m, t, u, 100 * c / (c + m + t) }'
