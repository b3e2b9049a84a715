#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what the tests
# use (Debian's systemd for systemd-socket-activate, Node.js, Python 3 and its
# sdnotify package, python3-venv for the uvicorn and gunicorn examples, mandoc
# to lint the manual, Prometheus and promtool for the metrics, tmux for
# `sheepdog top`, zsh and fish for the completions) when it is missing, runs every unit and integration test,
# then the end-to-end tests on a real systemd in a container (tests/e2e/run.sh,
# which needs root and ../shared/sandbox), then the container image and the
# Kubernetes manifests under podman (tests/pod/run.sh, which installs podman).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
bare=()
command -v systemd-socket-activate >/dev/null || missing+=(systemd)
command -v node >/dev/null || missing+=(nodejs)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
command -v mandoc >/dev/null || missing+=(mandoc)
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v tmux >/dev/null || missing+=(tmux)
# The shell completions are loaded by the real shells.
command -v zsh >/dev/null || missing+=(zsh)
command -v fish >/dev/null || missing+=(fish)
# Without its recommends: the tests start their own server, on loopback.
command -v promtool >/dev/null && command -v prometheus >/dev/null || bare=(prometheus)
if ((${#missing[@]})) || ((${#bare[@]})); then
    echo "tests/run.sh: installing ${missing[*]} ${bare[*]}" >&2
    apt-get update -qq
    if ((${#missing[@]})); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ((${#bare[@]})); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${bare[@]}" >/dev/null
    fi
fi
# The Python worker fixture uses the real sdnotify package from PyPI.
if ! python3 -c "import sdnotify" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check sdnotify 2>/dev/null \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages sdnotify
fi
command -v cargo >/dev/null || { echo "tests/run.sh: needs a Rust toolchain (cargo) >= 1.88" >&2; exit 1; }

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# --no-fail-fast: every test binary runs and is counted, whatever fails first.
cargo test --locked --no-fail-fast 2>&1 | tee "$log" || status=$?
if [ "$(id -u)" -eq 0 ] && [ -x ../shared/sandbox/sandbox.sh ]; then
    tests/e2e/run.sh 2>&1 | tee -a "$log" || status=$?
    # The container image and the Kubernetes manifests under podman.
    tests/pod/run.sh 2>&1 | tee -a "$log" || status=$?
else
    echo "tests/run.sh: end-to-end and pod tests skipped: they need root and ../shared/sandbox/sandbox.sh" >&2
fi
# One closing line for the whole suite, summed over the test binaries.
awk '/^test result:|^e2e: |^pod: / { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
