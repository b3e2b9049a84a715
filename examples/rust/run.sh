#!/usr/bin/env bash
# Builds sheepdog and the Rust example worker, and runs two of them on
# 127.0.0.1:8080. Try `curl http://127.0.0.1:8080/`; Ctrl-C stops.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release --locked
cargo build --release --locked --manifest-path examples/rust/Cargo.toml
exec target/release/sheepdog run --config examples/rust/sheepdog.toml "$@"
