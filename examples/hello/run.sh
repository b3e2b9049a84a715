#!/usr/bin/env bash
# Builds sheepdog and runs the bundled hello-world Node worker under it, two
# workers on 127.0.0.1:8080. Try `curl http://127.0.0.1:8080/`; Ctrl-C stops.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v node >/dev/null; then
    echo "examples/hello/run.sh: installing nodejs" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null
fi
cargo build --release --locked
exec target/release/sheepdog run --config examples/hello/sheepdog.toml "$@"
