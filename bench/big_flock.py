#!/usr/bin/env python3
"""A large flock started behind a shell shim: how long until every worker
is ready, how many were killed on the way, and how long `status` took to
answer meanwhile (asked over the control socket every 100 ms, timed from
connect to the reply's end, so no client process start is timed).

The workers are idle Python notify workers (bench/idle-worker.py, READY=1
then heartbeats), run through a shim the way `command = ["python3", …]`
runs on a machine where python3 is pyenv's (a bash script that takes
~100 ms of CPU before it execs Python): --shim names it, pyenv's by
default where it is installed, else tests/fixtures/shim.sh in front of
python3. Defaults: 1,000 workers, ready_timeout 60 s (the default).

Usage: bench/big_flock.py [--workers 1000] [--rounds 3] [--binary PATH] [--shim PATH]
Needs a release build (cargo build --release).
"""
import argparse, os, shutil, socket, statistics, subprocess, sys, tempfile, time

from common import ROOT, SHEEPDOG

PYENV_SHIM = os.path.expanduser("~/.pyenv/shims/python3")


def status_ms(path):
    """One status over the control socket: milliseconds, or None."""
    started = time.perf_counter()
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(120)
            s.connect(path)
            s.sendall(b'{"v":1,"cmd":"status"}\n')
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    return 1000 * (time.perf_counter() - started)


def run(binary, workers, command):
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "big.toml")
        control = os.path.join(tmp, "control.sock")
        quoted = ", ".join(f'"{part}"' for part in command)
        with open(config, "w") as f:
            f.write(f'command = [{quoted}]\nworkers = {workers}\nlisten = ["127.0.0.1:0"]\n'
                    f'readiness = "notify"\ncontrol_socket = "{control}"\n'
                    f'[heartbeat]\ninterval = "5s"\n')
        log = open(os.path.join(tmp, "log"), "w+")
        started = time.monotonic()
        proc = subprocess.Popen([binary, "run", "--config", config], stdout=log, stderr=log)
        latencies, ready_at = [], None
        try:
            deadline = started + 600
            while time.monotonic() < deadline and proc.poll() is None:
                took = status_ms(control)
                if took is not None:
                    latencies.append(took)
                log.seek(0)
                text = log.read()
                if f"ready: {workers}/{workers} workers" in text:
                    ready_at = time.monotonic() - started
                    break
                time.sleep(0.1)
        finally:
            proc.terminate()
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.seek(0)
        text = log.read()
        return {
            "ready_s": ready_at,
            "killed": text.count("killed it"),
            "crash_loop": "crash loop" in text,
            "latencies": latencies,
        }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--binary", default=SHEEPDOG)
    parser.add_argument("--shim", default=None)
    args = parser.parse_args()
    worker = os.path.join(ROOT, "bench", "idle-worker.py")
    if args.shim:
        command = [args.shim, worker]
    elif os.path.exists(PYENV_SHIM):
        command = [PYENV_SHIM, worker]
    else:
        command = [os.path.join(ROOT, "tests", "fixtures", "shim.sh"), shutil.which("python3"), worker]
    print(f"{args.workers} workers of {' '.join(command)}; {args.binary}")
    print(f"{'round':>5} {'all ready':>10} {'killed':>7} {'status asked':>13} {'median ms':>10} {'p99 ms':>8} {'max ms':>8} {'> 1 s':>6}")
    for round in range(1, args.rounds + 1):
        r = run(args.binary, args.workers, command)
        lat = sorted(r["latencies"])
        p99 = lat[int(0.99 * (len(lat) - 1))] if lat else float("nan")
        ready = f"{r['ready_s']:.1f} s" if r["ready_s"] is not None else ("crash loop" if r["crash_loop"] else "never")
        print(f"{round:>5} {ready:>10} {r['killed']:>7} {len(lat):>13} "
              f"{statistics.median(lat) if lat else float('nan'):>10.1f} {p99:>8.1f} "
              f"{max(lat) if lat else float('nan'):>8.1f} {sum(1 for x in lat if x > 1000):>6}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
