#!/usr/bin/env bash
# Creates examples/python/.venv with the pinned uvicorn and gunicorn (once;
# again only when requirements.txt changes). Installs Debian's python3-venv
# first when it is missing (as root).
set -euo pipefail
cd "$(dirname "$0")"

if ! python3 -c 'import ensurepip' 2>/dev/null; then
    echo "examples/python/setup.sh: installing python3-venv" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
stamp=.venv/requirements.txt
if [ -x .venv/bin/python ] && cmp -s requirements.txt "$stamp"; then
    exit 0
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
cp requirements.txt "$stamp"
