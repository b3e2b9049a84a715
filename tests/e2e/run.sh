#!/usr/bin/env bash
# End-to-end tests on a real systemd booted in a container (../shared/sandbox):
# the .deb installed with dpkg -i, the example Node app deployed as `myapp`,
# driven with systemctl and read with journalctl, as a user would. Debian 12
# (systemd 252, Type=notify + ExecReload=sheepdog reload) and Debian 13
# (systemd 257, Type=notify-reload). Ends with an "N passed, N failed" line.
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
# Host-side files of this run, apart from any other run's.
scratch=$(mktemp -d)
sandbox=${SANDBOX_SH:-$repo/../shared/sandbox/sandbox.sh}
[ -x "$sandbox" ] || { echo "e2e: no sandbox at $sandbox" >&2; exit 1; }
passed=0; failed=0

check() { # check NAME COMMAND...: one test
    local name=$1; shift
    if "$@"; then passed=$((passed + 1)); echo "ok - $name"
    else
        failed=$((failed + 1)); echo "not ok - $name"
        # What the journal said, for whoever reads the CI log.
        x journalctl -u myapp --no-pager -n 15 2>/dev/null | sed 's/^/#   /'
    fi
}
S() { "$sandbox" "$@"; }
x() { "$sandbox" exec "$@"; }
# until DEADLINE_SECONDS COMMAND...: poll for an event, bounded.
until_ok() { local end=$((SECONDS + $1)); shift; until "$@" >/dev/null 2>&1; do ((SECONDS >= end)) && return 1; sleep 0.2; done; }
get() { x curl -sS --max-time 20 http://127.0.0.1:8080/; }
answers() { get | grep -F -- "$1" >/dev/null; }
active() { [ "$(x systemctl is-active "$1")" = "$2" ]; }
# grep reads all its input (no -q): with pipefail, journalctl killed by
# SIGPIPE after an early match would fail the check.
journal_has() { local pattern=$1; shift; x journalctl --no-pager "$@" | grep -F -- "$pattern" >/dev/null; }
config() { # config VERSION [COMMAND] [MORE TOML]; WORKERS=N for another count
    local command=${2:-'"node", "/srv/myapp/server.js"'}
    printf 'command = [%s]\nworkers = %s\nreadiness = "node-ipc"\nready_timeout = "3s"\nstop_timeout = "5s"\nmax_restarts = 100\n[heartbeat]\ninterval = "500ms"\n[env]\nAPP_VERSION = "%s"\n%b' "$command" "${WORKERS:-2}" "$1" "${3:-}" > $scratch/e2e-myapp.toml
    S copy-in $scratch/e2e-myapp.toml /etc/sheepdog/myapp.toml
}
hammer_start() { x rm -f /tmp/hammer.stop; S exec /usr/local/bin/hammer 120 /tmp/hammer.stop > $scratch/e2e-hammer.out & hammer_pid=$!; until_ok 20 answers "hello"; }
hammer_stop() { x touch /tmp/hammer.stop; wait "$hammer_pid"; cat $scratch/e2e-hammer.out; }
zero_failed() { grep -q " failed=0 " $scratch/e2e-hammer.out; }
zero_refused() { grep -q " refused=0 " $scratch/e2e-hammer.out; }
slot0_pid() { x sheepdog status --config /etc/sheepdog/myapp.toml | awk '$1 == "0" && $4 == "ready" { print $2 }'; }
worker_pids() { x sheepdog status --config /etc/sheepdog/myapp.toml | awk '$4 == "ready" { print $2 }' | sort -n | tr '\n' ' '; }

spread() { # spread LABEL: 8 workers on the shipped socket unit's queues
    local label=$1
    check "$label sheepdog loaded the round robin and dropped CAP_BPF" bash -c \
        "'$sandbox' exec journalctl --no-pager -u myapp | grep -F 'new connections: round-robin over 17 queues' >/dev/null && '$sandbox' exec journalctl --no-pager -u myapp | grep -F 'dropped the capabilities' >/dev/null"
    check "$label no capability is left to sheepdog or a worker" bash -c \
        "for p in \$('$sandbox' exec pgrep -f -- 'sheepdog run|/srv/myapp/server.js'); do '$sandbox' exec grep -q '^CapEff:[[:space:]]*0*\$' /proc/\$p/status || exit 1; done"
    WORKERS=8 config 4
    check "$label systemctl reload onto 8 workers" x systemctl reload myapp
    check "$label 8 workers ready" until_ok 30 bash -c "'$sandbox' exec sheepdog status --config /etc/sheepdog/myapp.toml | grep -q ' 8/8 ready'"
    x /usr/local/bin/pool 16 > $scratch/e2e-pool.out; cat $scratch/e2e-pool.out | sed 's/^/# /'
    check "$label a keep-alive pool of 16 reaches all 8 workers" grep -q '^workers=8 holds=2,2,2,2,2,2,2,2$' $scratch/e2e-pool.out
    hammer_start
    WORKERS=8 config 5
    check "$label systemctl reload of 8 workers under load exits 0" x systemctl reload myapp
    check "$label the new code answers" answers "version 5"
    hammer_stop
    check "$label no request failed during the reload of 8" zero_failed
    check "$label status shows each worker's share" bash -c "'$sandbox' exec sheepdog status --config /etc/sheepdog/myapp.toml | grep -q 'new connections: round-robin over 17 queues'"
    config 2
    x systemctl reload myapp
}

upgrade_in_place() { # upgrade_in_place LABEL: dpkg -i a higher version under load
    local label=$1 main_pid workers from rc watch
    main_pid=$(x systemctl show -p MainPID --value myapp)
    workers=$(worker_pids)
    from=$(x sheepdog --version | awk '{ print $2 }')
    echo "# $label sheepdog $from, pid $main_pid, workers $workers"
    hammer_start
    # The unit's state, every 50 ms, for as long as dpkg runs.
    x rm -f /tmp/watch.stop /tmp/states
    S exec bash -c 'while [ ! -e /tmp/watch.stop ]; do systemctl is-active myapp >> /tmp/states; sleep 0.05; done' & watch=$!
    S copy-in "$repo/target/e2e-upgrade.deb" /root/sheepdog-upgrade.deb
    x dpkg -i /root/sheepdog-upgrade.deb > $scratch/e2e-dpkg.out 2>&1; rc=$?
    x touch /tmp/watch.stop; wait "$watch"
    hammer_stop
    sed 's/^/#   dpkg: /' $scratch/e2e-dpkg.out
    check "$label dpkg -i of a higher version succeeds" test "$rc" -eq 0
    check "$label the postinst upgraded myapp in place" grep -qF "myapp (pid $main_pid): upgraded from $from to $from+next in place" $scratch/e2e-dpkg.out
    local pid_after workers_after
    pid_after=$(x systemctl show -p MainPID --value myapp)
    workers_after=$(worker_pids)
    check "$label MainPID is unchanged ($main_pid)" test "$pid_after" = "$main_pid"
    check "$label the worker pids are unchanged ($workers)" test "$workers_after" = "$workers"
    check "$label the unit never left active" bash -c "s=\$('$sandbox' exec cat /tmp/states); [ -n \"\$s\" ] && ! grep -qv '^active\$' <<<\"\$s\""
    check "$label no request failed during the upgrade" zero_failed
    check "$label the journal says upgraded from $from to $from+next" journal_has "upgraded from $from to $from+next" -u myapp
    check "$label /proc/MainPID/exe is the new /usr/bin/sheepdog" bash -c "[ \"\$('$sandbox' exec readlink /proc/$main_pid/exe)\" = /usr/bin/sheepdog ]"
    check "$label sheepdog status reports the new version" bash -c "'$sandbox' exec sheepdog status --config /etc/sheepdog/myapp.toml | grep -q '^sheepdog $from+next · pid $main_pid '"
    check "$label systemctl status shows the upgrade" until_ok 10 bash -c "'$sandbox' exec systemctl status myapp --no-pager | grep -qF 'sheepdog $from+next, upgraded from $from at'"
}

pm2_install() { # pm2_install LABEL: a pm2 app made a service with one command, as the README says
    local label=$1 worker
    x mkdir -p /srv/shop
    S copy-in "$repo/tests/fixtures/pm2/app.js" /srv/shop/app.js
    x useradd --system --home-dir /srv/shop --shell /usr/sbin/nologin shop
    x chown -R shop: /srv/shop
    x bash -c 'cd /srv/shop && sheepdog install shop --workers 2 -- node app.js' > $scratch/e2e-install.out 2>&1
    sed 's/^/#   install: /' $scratch/e2e-install.out
    check "$label sheepdog install shop -- node app.js waits until it serves" grep -q '^shop serves on \[::\]:3000$' $scratch/e2e-install.out
    check "$label it says how to undo it" grep -q 'undo: sheepdog uninstall shop' $scratch/e2e-install.out
    check "$label the app answers on its own port, 3000" bash -c "'$sandbox' exec curl -sS --max-time 10 http://127.0.0.1:3000/ | grep -q '\"port\":3000'"
    check "$label sheepdog@shop.socket is enabled for boot" bash -c "[ \"\$('$sandbox' exec systemctl is-enabled sheepdog@shop.socket)\" = enabled ]"
    worker=$(x sheepdog status --config /etc/sheepdog/shop.toml | awk '$1 == "0" && $4 == "ready" { print $2 }')
    check "$label the workers run as the app's owner" bash -c "[ \"\$('$sandbox' exec ps -o user= -p '$worker')\" = shop ]"
    check "$label systemctl reload sheepdog@shop rolls the workers" bash -c "'$sandbox' exec systemctl reload sheepdog@shop && '$sandbox' exec sheepdog status --config /etc/sheepdog/shop.toml | grep -q 'generation 2 · 2/2 ready'"
    check "$label the app's SIGINT handler ran in the old workers" journal_has "SIGINT: closing the server (pid $worker)" -u sheepdog@shop
    check "$label sheepdog logs shop shows the workers' lines from the journal" bash -c "'$sandbox' exec sheepdog logs shop -n 100 | grep -q 'shop-worker-0\[.*app listening on port 3000'"
    check "$label sheepdog uninstall shop removes it" x sheepdog uninstall shop
    check "$label nothing of it is left" bash -c "! '$sandbox' exec test -e /etc/sheepdog/shop.toml && ! '$sandbox' exec test -e /etc/systemd/system/sheepdog@shop.socket.d/sheepdog-install.conf && [ \"\$('$sandbox' exec systemctl is-active sheepdog@shop.socket)\" != active ] && ! '$sandbox' exec curl -sS --max-time 3 http://127.0.0.1:3000/"
}

deploy() { # deploy SERVICE_UNIT: install the .deb and the example app as myapp
    S copy-in "$deb" /root/sheepdog.deb
    check "dpkg -i installs the package" x dpkg -i /root/sheepdog.deb
    S copy-in "$repo/tests/e2e/hammer" /usr/local/bin/hammer
    S copy-in "$repo/tests/e2e/pool" /usr/local/bin/pool
    x mkdir -p /srv/myapp /etc/systemd/system/myapp.service.d
    x cp /usr/share/doc/sheepdog/examples/hello/server.js /srv/myapp/server.js
    x cp /usr/share/doc/sheepdog/examples/systemd/myapp.socket /etc/systemd/system/myapp.socket
    x cp "/usr/share/doc/sheepdog/examples/systemd/$1" /etc/systemd/system/myapp.service
    # Shorter watchdog and stop timeouts, to keep the run short.
    printf '[Service]\nWatchdogSec=4s\nTimeoutStopSec=15s\nStartLimitBurst=50\n' > $scratch/e2e-dropin.conf
    S copy-in $scratch/e2e-dropin.conf /etc/systemd/system/myapp.service.d/e2e.conf
    config 1
    x systemctl daemon-reload
}

boot() { # boot SUITE
    # CAP_BPF (and bpf(2) past nspawn's filter), as a host has it to give:
    # the shipped units hand it to sheepdog for the round robin.
    export SANDBOX_NAME=${E2E_PREFIX:-sheepdog-e2e}-$1 SANDBOX_SUITE=$1 SANDBOX_PACKAGES=nodejs,curl \
        SANDBOX_CAPABILITY=CAP_BPF SANDBOX_SYSCALLS=bpf
    S boot || { echo "e2e: the $1 sandbox did not boot" >&2; S logs | tail -20 >&2; exit 1; }
    trap 'S stop >/dev/null 2>&1' EXIT
}

S host-deps >/dev/null
command -v lintian >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lintian >/dev/null
packaging/build-deb >/dev/null || { echo "e2e: cannot build the .deb" >&2; exit 1; }
# cargo-deb empties target/debian/ on every build: keep this one aside.
deb=$repo/target/e2e.deb
cp "$(ls -t "$repo"/target/debian/sheepdog_*_amd64.deb | head -1)" "$deb"
# A higher version to upgrade to, as a new release would come: the same
# package around the test build sheepdog-next (this code under the version
# VERSION+next), as version 99.0.0-1.
build_upgrade_deb() {
    local root=$repo/target/e2e-upgrade
    cargo build --release --locked --quiet --example sheepdog-next || return 1
    rm -rf "$root" && dpkg-deb -R "$deb" "$root" || return 1
    install -m 755 "$repo/target/release/examples/sheepdog-next" "$root/usr/bin/sheepdog"
    strip "$root/usr/bin/sheepdog"
    sed -i 's/^Version: .*/Version: 99.0.0-1/' "$root/DEBIAN/control"
    if [ -f "$root/DEBIAN/md5sums" ]; then
        local sum; sum=$(cd "$root" && md5sum usr/bin/sheepdog)
        sed -i "s#^[0-9a-f]*  usr/bin/sheepdog\$#$sum#" "$root/DEBIAN/md5sums"
    fi
    dpkg-deb --build --root-owner-group "$root" "$repo/target/e2e-upgrade.deb" >/dev/null
}
build_upgrade_deb || { echo "e2e: cannot build the upgrade .deb" >&2; exit 1; }

# lintian checks the manual pages too (it runs man --warnings on them).
lintian --tag-display-limit 0 "$deb" > $scratch/e2e-lintian.out 2>&1
check "lintian finds nothing wrong with the manual pages" bash -c "! grep -E 'manpage|groff|man-page' $scratch/e2e-lintian.out"

echo "# Debian 12 (systemd 252): Type=notify, ExecReload=sheepdog reload"
boot bookworm
deploy myapp.service

check "the Node preload is installed" x test -s /usr/share/sheepdog/node/listen.js
check "bash completes sheepdog's commands" bash -c "'$sandbox' exec bash -c 'source /usr/share/bash-completion/completions/sheepdog; COMP_WORDS=(sheepdog sc); COMP_CWORD=1; _sheepdog sheepdog sc sheepdog; echo \${COMPREPLY[@]}' | grep -qx scale"
check "zsh and fish completions are installed" x test -s /usr/share/zsh/vendor-completions/_sheepdog -a -s /usr/share/fish/vendor_completions.d/sheepdog.fish
check "the manual pages are installed" bash -c "'$sandbox' exec zcat /usr/share/man/man1/sheepdog.1.gz | grep -q '^.TH SHEEPDOG 1' && '$sandbox' exec zcat /usr/share/man/man5/sheepdog.toml.5.gz | grep -q '^.SH KEYS'"
x systemctl start myapp.socket
check "myapp is not running before the first connection" bash -c "[ \"\$('$sandbox' exec systemctl is-active myapp.socket)\" = active ] && [ \"\$('$sandbox' exec systemctl is-active myapp.service)\" = inactive ]"
check "the first request starts it and gets 200" answers "hello from worker"
# A worker may answer before the whole flock is ready (and systemd told).
check "the service is active" until_ok 10 active myapp.service active
check "systemctl status shows sheepdog's STATUS line" until_ok 10 bash -c "'$sandbox' exec systemctl status myapp --no-pager | grep -q 'Status: \"2/2 ready'"

spread "bookworm:"

hammer_start
config 2
check "systemctl reload onto new code exits 0" x systemctl reload myapp
check "the new code answers" answers "version 2"
hammer_stop
check "no request failed during the reload" zero_failed

hammer_start
config 3 '"node", "-e", "process.exit(1)"'
check "systemctl reload onto broken code fails" bash -c "! '$sandbox' exec systemctl reload myapp"
check "the service stays active after a failed reload" active myapp.service active
check "the old code keeps answering" answers "version 2"
hammer_stop
check "no request failed during the failed reload" zero_failed
config 2

victim=$(slot0_pid)
x kill -9 "$victim"
check "a killed worker is replaced" until_ok 15 bash -c "p=\$('$sandbox' exec sheepdog status --config /etc/sheepdog/myapp.toml | awk '\$1 == \"0\" && \$4 == \"ready\" { print \$2 }'); [ -n \"\$p\" ] && [ \"\$p\" != '$victim' ]"
check "journalctl -u myapp shows sheepdog's lines" journal_has "ready: 2/2 workers" -u myapp
check "journalctl -u myapp -p warning shows the replacement" journal_has "(pid $victim) was killed by SIGKILL" -u myapp -p warning
check "each worker's output is attributed to its slot" journal_has "worker 0 (pid" -u myapp -t myapp-worker-0
check "an OOM-killed worker does not stop the unit (OOMPolicy=continue)" bash -c "[ \"\$('$sandbox' exec systemctl show -p OOMPolicy --value myapp)\" = continue ]"

# Least privilege: the shipped unit runs sheepdog and its workers as a user
# made for the service, and systemd itself rates it 2.0 or better.
main_uid=$(x ps -o uid= -p "$(x systemctl show -p MainPID --value myapp)" | tr -d ' ')
worker_uid=$(x ps -o uid= -p "$(slot0_pid)" | tr -d ' ')
echo "# sheepdog runs as uid $main_uid, worker 0 as uid $worker_uid"
check "sheepdog runs as the service's own dynamic user, not root" bash -c "[ -n '$main_uid' ] && [ '$main_uid' != 0 ]"
check "so do its workers" bash -c "[ '$worker_uid' = '$main_uid' ]"
check "systemd-analyze security rates myapp.service 2.0 or better" bash -c \
    "'$sandbox' exec systemd-analyze security --no-pager myapp.service | awk '/Overall exposure level/ { found = 1; ok = (\$(NF-2) + 0 <= 2.0) } END { exit !(found && ok) }'"
# Memory recycling reads the workers' /proc (ProtectProc=invisible hides
# only other users'): a limit below a Node worker's size replaces them.
printf 'command = ["node", "/srv/myapp/server.js"]\nworkers = 2\nreadiness = "node-ipc"\nready_timeout = "3s"\nstop_timeout = "5s"\nmax_restarts = 100\n[heartbeat]\ninterval = "500ms"\n[memory]\nlimit = "8MiB"\ninterval = "500ms"\n[env]\nAPP_VERSION = "2"\n' > $scratch/e2e-myapp.toml
S copy-in $scratch/e2e-myapp.toml /etc/sheepdog/myapp.toml
x systemctl reload myapp
check "memory recycling works under the hardened unit" until_ok 15 journal_has "over the memory limit" -u myapp
config 2
check "and a reload brings the limit back off" until_ok 30 x systemctl reload myapp

# The health and metrics endpoint under the hardened unit (on from here on;
# [http] listen takes a restart).
readyz_says() { # readyz_says BODY_PREFIX STATUS
    local out; out=$(x curl -s -w ' %{http_code}' --max-time 5 http://127.0.0.1:9101/readyz)
    [[ $out == "$1"*" $2" ]]
}
config 2 "" '[http]\nlisten = "127.0.0.1:9101"\n'
x systemctl restart myapp.service
check "/healthz answers 200 under the hardened unit" until_ok 15 x curl -sSf --max-time 5 http://127.0.0.1:9101/healthz
check "/readyz answers 200 once the flock is ready" until_ok 15 readyz_says "" 200
check "/metrics shows 2 ready workers" until_ok 15 bash -c "'$sandbox' exec curl -sS --max-time 5 http://127.0.0.1:9101/metrics | grep -qx 'sheepdog_workers_ready 2'"
check "/metrics reads the supervisor's own open fds" bash -c "'$sandbox' exec curl -sS --max-time 5 http://127.0.0.1:9101/metrics | grep -Eq '^process_open_fds [1-9]'"
check "/metrics reads the workers' memory" bash -c "'$sandbox' exec curl -sS --max-time 5 http://127.0.0.1:9101/metrics | grep -Eq '^sheepdog_worker_resident_memory_bytes\{.*\} [1-9]'"

# Hang every worker, and make replacements unable to become ready: sheepdog
# kills and replaces the hung ones, stops pinging the watchdog, and systemd
# restarts the service.
restarts_before=$(x systemctl show -p NRestarts --value myapp)
x bash -c 'mv /usr/bin/node /usr/bin/node.real && printf "#!/bin/sh\nexec sleep 600\n" > /usr/bin/node && chmod 755 /usr/bin/node'
x pkill -STOP -f /srv/myapp/server.js
check "hung workers are killed for missed heartbeats" until_ok 20 journal_has "missed heartbeats for" -u myapp
check "an unhealthy flock stops the watchdog pings" until_ok 20 journal_has "withholding watchdog pings" -u myapp
check "and /readyz answers 503 with the reason" until_ok 20 readyz_says "0/2 ready" 503
check "systemd's watchdog restarts the service" until_ok 30 journal_has "Watchdog timeout" -u myapp
x bash -c 'mv -f /usr/bin/node.real /usr/bin/node'
check "the service was restarted" until_ok 30 bash -c "[ \"\$('$sandbox' exec systemctl show -p NRestarts --value myapp)\" -gt '$restarts_before' ]"
x systemctl reset-failed myapp >/dev/null 2>&1
x systemctl restart myapp.service
check "it serves again once workers can start" until_ok 30 answers "hello from worker"

pm2_install "bookworm:"
upgrade_in_place "bookworm:"

hammer_start
check "systemctl restart under load exits 0" x systemctl restart myapp.service
until_ok 20 answers "hello from worker"
hammer_stop
check "no connection was refused during the restart" zero_refused
check "no request failed during the restart" zero_failed

check "systemctl stop stops cleanly" x systemctl stop myapp.socket myapp.service
check "nothing is left in the service's cgroup" bash -c "! '$sandbox' exec pgrep -f /srv/myapp/server.js"
check "the stop was logged as requested" until_ok 10 journal_has "stopped on request; exiting" -u myapp

# The shipped template, as its example config says, hardened too.
x systemctl start sheepdog@example.socket
check "sheepdog@example serves the bundled example" until_ok 20 answers "hello from worker"
check "sheepdog@example is active" until_ok 10 active sheepdog@example.service active
check "sheepdog@example runs as its own dynamic user" bash -c \
    "u=\$('$sandbox' exec ps -o user=,uid= -p \$('$sandbox' exec systemctl show -p MainPID --value sheepdog@example)); echo \"# \$u\"; [ -n \"\$u\" ] && [ \"\${u##* }\" != 0 ]"
x systemctl stop sheepdog@example.socket sheepdog@example.service

# The notify parser against systemd's own: the same datagram, once from a
# service to systemd, once from a worker to sheepdog (itself run as a
# Type=notify service: ready only once its worker is).
S copy-in "$repo/tests/e2e/notify-send" /usr/local/bin/notify-send
ready_for() { # ready_for systemd|sheepdog PAYLOAD: did the datagram make it ready?
    local unit=probe-$1 rc
    if [ "$1" = systemd ]; then
        x timeout 30 systemd-run --quiet --unit="$unit" -p Type=notify -p TimeoutStartSec=3s \
            /usr/local/bin/notify-send "$2" >/dev/null 2>&1
    else
        printf "command = [\"/usr/local/bin/notify-send\", '%s']\nworkers = 1\nlisten = [\"127.0.0.1:0\"]\nreadiness = \"notify\"\nready_timeout = \"3s\"\n" \
            "$2" > $scratch/e2e-probe.toml
        S copy-in $scratch/e2e-probe.toml /etc/sheepdog/probe.toml
        x timeout 30 systemd-run --quiet --unit="$unit" -p Type=notify -p TimeoutStartSec=6s \
            /usr/bin/sheepdog run --config /etc/sheepdog/probe.toml >/dev/null 2>&1
    fi
    rc=$?
    x systemctl stop "$unit" >/dev/null 2>&1
    x systemctl reset-failed "$unit" >/dev/null 2>&1
    return "$rc"
}
agree() { # agree EXPECTED PAYLOAD: systemd and sheepdog both (not) ready
    local verdicts=""
    for reader in systemd sheepdog; do
        if ready_for "$reader" "$2"; then verdicts="$verdicts ready"; else verdicts="$verdicts not-ready"; fi
    done
    [ "$verdicts" = " $1 $1" ] || { echo "#   systemd, sheepdog:$verdicts (expected $1)"; return 1; }
}
check "a bad ERRNO= beside READY=1: ready, for systemd and for sheepdog" agree ready 'ERRNO=x\nREADY=1'
check "a negative ERRNO= beside READY=1: ready, for both" agree ready 'ERRNO=-5\nREADY=1'
check "a line without = beside READY=1: ready, for both" agree ready 'hello\nREADY=1'
check "READY=1 ending in a carriage return: ready, for both" agree ready 'READY=1\r\n'
check "READY=1 with a trailing space: not ready, for both" agree not-ready 'READY=1 '
check "sheepdog said why it ignored the trailing space" journal_has 'ignored "READY=1 ": trailing whitespace' -u probe-sheepdog

check "dpkg -r removes the package" x dpkg -r sheepdog
check "the units are gone" bash -c "! '$sandbox' exec test -e /lib/systemd/system/sheepdog@.service"
S stop >/dev/null

echo "# Debian 13 (systemd 257): Type=notify-reload"
boot trixie
deploy myapp-notify-reload.service
x systemctl start myapp.socket
check "trixie: the first request starts the service" answers "hello from worker"
check "trixie: active with sheepdog's STATUS" until_ok 10 bash -c "'$sandbox' exec systemctl status myapp --no-pager | grep -q 'Status: \"2/2 ready'"
hammer_start
config 2
check "trixie: systemctl reload (SIGHUP by systemd) exits 0" x systemctl reload myapp
# notify-reload waits for RELOADING=1 + MONOTONIC_USEC then READY=1: when
# systemctl returns, the roll is done.
check "trixie: reload returned only once the roll was done" bash -c "'$sandbox' exec sheepdog status --config /etc/sheepdog/myapp.toml | grep -q 'generation 2 · 2/2 ready'"
check "trixie: the new code answers" answers "version 2"
hammer_stop
check "trixie: no request failed during the reload" zero_failed
check "trixie: journalctl -u myapp shows the reload" journal_has "reloaded to generation 2" -u myapp
check "trixie: each worker's output is attributed to its slot" journal_has "worker 1 (pid" -u myapp -t myapp-worker-1
spread "trixie:"
pm2_install "trixie:"
upgrade_in_place "trixie:"
S stop >/dev/null
trap - EXIT

echo "e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
