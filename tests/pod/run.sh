#!/usr/bin/env bash
# The container image (deploy/Containerfile) and the Kubernetes manifests
# (deploy/kubernetes/) with a real consumer of Kubernetes YAML and no cluster:
# Debian's podman, `podman kube play`. The image's base is a debootstrap'ed
# Debian (the systemd sandbox's cached rootfs, with nodejs and curl) imported
# with `podman import`: no registry. Every request goes to 127.0.0.1 inside
# the pod's network namespace (nsenter -n), the way the kubelet's probes and
# a Service reach the pod, but on loopback. Needs root. Ends with a
# "pod: N passed, N failed" line.
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
sandbox=${SANDBOX_SH:-$repo/../shared/sandbox/sandbox.sh}
passed=0; failed=0
check() { # check NAME COMMAND...: one test
    local name=$1; shift
    if "$@"; then passed=$((passed + 1)); echo "ok - $name"
    else failed=$((failed + 1)); echo "not ok - $name"; fi
}
until_ok() { local end=$((SECONDS + $1)); shift; until "$@" >/dev/null 2>&1; do ((SECONDS >= end)) && return 1; sleep 0.2; done; }
finish() { echo "pod: $passed passed, $failed failed"; exit $((failed > 0)); }

# podman with runc and cgroupfs (this host's hybrid cgroup layout defeats
# crun and the systemd cgroup manager), and explicit ulimits.
if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null
fi
work=$(mktemp -d)
cat > "$work/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=1000:1000"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$work/containers.conf
pod=sheepdog-example-pod-0 app=sheepdog-example-pod-0-app
cleanup() {
    podman kube down "$work/deployment.yaml" >/dev/null 2>&1
    podman rm -f sheepdog-pid1 >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

# The base image: the sandbox's debootstrap'ed bookworm (cached by the e2e tests).
SANDBOX_NAME=sheepdog-pod-base SANDBOX_PACKAGES=nodejs,curl "$sandbox" create >/dev/null \
    || { echo "pod: no rootfs from $sandbox" >&2; finish; }
tarball=$(ls -t /var/cache/systemd-sandbox/rootfs-bookworm-*.tar.zst | head -1)
zstd -dc "$tarball" | podman import --quiet - localhost/sheepdog-base:bookworm >/dev/null
check "the image builds from deploy/Containerfile on a local base" \
    bash -c "deploy/build-image --base localhost/sheepdog-base:bookworm > '$work/build.log' 2>&1"
[ "$failed" -eq 0 ] || { tail -20 "$work/build.log"; finish; }

in_netns() { # in_netns CONTAINER COMMAND...: run a host command in its network namespace
    local pid; pid=$(podman inspect --format '{{.State.Pid}}' "$1") || return 1
    shift; nsenter --target "$pid" --net "$@"
}
answers() { in_netns "$1" curl -sS --max-time 5 "http://127.0.0.1:$2" | grep -F -- "$3" >/dev/null; }
gone() { ! pgrep -f /srv/app/server.js >/dev/null; }

# PID 1: the image's entrypoint is sheepdog itself; podman stop sends SIGTERM.
podman run --detach --name sheepdog-pid1 localhost/sheepdog-example:latest >/dev/null
check "the image's entrypoint serves" until_ok 30 answers sheepdog-pid1 8080/ "hello from worker"
check "sheepdog is PID 1 in the container" bash -c "podman exec sheepdog-pid1 cat /proc/1/comm | grep -qx sheepdog"
check "its control socket works with no /run/sheepdog, as a non-root user" \
    bash -c "podman exec sheepdog-pid1 sheepdog status --config /etc/sheepdog/app.toml | grep -q ' ready '"
podman stop --time 30 sheepdog-pid1 >/dev/null
check "podman stop: sheepdog exits 0" bash -c "[ \"\$(podman inspect --format '{{.State.ExitCode}}' sheepdog-pid1)\" = 0 ]"
check "and leaves no process behind" until_ok 10 gone
check "its log went to stderr, plain lines" bash -c "podman logs sheepdog-pid1 2>&1 | grep -q 'sheepdog\[1\] info  stopped on request; exiting'"
podman rm -f sheepdog-pid1 >/dev/null

# The Deployment, played by podman: one replica (podman publishes each
# container port on the host, so two replicas on one machine would clash).
# The Service beside it is read too (podman makes nothing of that kind).
{ sed 's/^\(  replicas:\) 2 /\1 1 /' deploy/kubernetes/deployment.yaml; echo ---; cat deploy/kubernetes/service.yaml; } \
    > "$work/deployment.yaml"
check "podman kube play accepts the Deployment and the Service" bash -c "podman kube play '$work/deployment.yaml' > '$work/play.log' 2>&1"
check "the pod serves" until_ok 30 answers "$app" 8080/ "hello from worker"
check "/readyz answers 200 once the workers are ready" until_ok 30 answers "$app" 9101/readyz "ready: 2/2"
check "/healthz answers 200" answers "$app" 9101/healthz "ok"
check "the livenessProbe, as podman's healthcheck (curl /healthz inside), passes" podman healthcheck run "$app"
check "workers = \"auto\" follows the 2 CPUs of the limit" bash -c "podman exec '$app' sheepdog status --config /etc/sheepdog/app.toml | grep -q '2/2 ready'"
check "the CPU limit is the container's quota" bash -c "[ \"\$(podman inspect --format '{{.HostConfig.CpuQuota}}/{{.HostConfig.CpuPeriod}}' '$app')\" = 200000/100000 ]"

slot0() { podman exec "$app" sheepdog status --config /etc/sheepdog/app.toml | awk '$1 == "0" && $4 == "ready" { print $2 }'; }
victim=$(slot0)
podman exec "$app" kill -9 "$victim"
check "a worker killed inside the pod is replaced" until_ok 20 bash -c "p=\$(podman exec '$app' sheepdog status --config /etc/sheepdog/app.toml | awk '\$1 == \"0\" && \$4 == \"ready\" { print \$2 }'); [ -n \"\$p\" ] && [ \"\$p\" != '$victim' ]"
check "and the pod's log says so" bash -c "podman logs '$app' 2>&1 | grep -q '(pid $victim) was killed by SIGKILL'"

# Stop the pod under a request loop: requests in flight finish, nothing lost.
in_netns "$app" python3 "$repo/tests/pod/drain.py" 8080 60 > "$work/drain.out" 2>&1 &
client=$!
# "running": the loop has 20 answers, so requests are on their way.
until_ok 20 grep -q running "$work/drain.out"
# The loop's own pid, under the subshell and nsenter.
pkill -USR1 -f "tests/pod/drain.py 8080"
podman pod stop --time 30 "$pod" >/dev/null
wait "$client"; drained=$?
sed 's/^/# /' "$work/drain.out"
check "stopped under load: nothing in flight is lost" [ "$drained" -eq 0 ]
check "sheepdog exits 0 in the pod" bash -c "[ \"\$(podman inspect --format '{{.State.ExitCode}}' '$app')\" = 0 ]"
check "its log ends with a clean stop" bash -c "podman logs '$app' 2>&1 | grep -q 'stopped on request; exiting'"
check "no process is left" until_ok 10 gone
check "podman kube down removes the pod" bash -c "podman kube down '$work/deployment.yaml' >/dev/null && ! podman pod exists '$pod'"
finish
