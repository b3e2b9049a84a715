#!/usr/bin/env bash
# Runs one of the Python examples under sheepdog, 2 workers on 127.0.0.1:8080:
#   examples/python/run.sh uvicorn     (ASGI, asgi.py)
#   examples/python/run.sh gunicorn    (WSGI, wsgi.py)
# Try `curl http://127.0.0.1:8080/`; Ctrl-C stops.
set -euo pipefail
server=${1:-uvicorn}
case $server in uvicorn | gunicorn) ;; *) echo "usage: $0 uvicorn|gunicorn" >&2; exit 2 ;; esac
cd "$(dirname "$0")/../.."

examples/python/setup.sh
cargo build --release --locked
exec target/release/sheepdog run --config "examples/python/$server.toml" "${@:2}"
