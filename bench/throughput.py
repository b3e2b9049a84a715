#!/usr/bin/env python3
"""Throughput of the example app with 2 workers, four ways, in interleaved rounds:
under sheepdog, under a bare pre-fork launcher (no supervision: the upper
bound), under Node's cluster module (round-robin master), and as one process.
Each is loaded with wrk on loopback, keep-alive and `Connection: close`.
Prints median req/s, p99 latency, each worker's share of requests, the ratios,
and sheepdog's own CPU time as a share of its workers'.

Usage: bench/throughput.py [--rounds 5] [--duration 5] [--connections 64]
Needs: wrk (apt-get install wrk), node, a release build (cargo build --release).
"""
import argparse, os, re, signal, socket, statistics, subprocess, sys, time, urllib.request

from common import ROOT, SERVER, SHEEPDOG, free_port

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def setups(port):
    return {
        "sheepdog": ([SHEEPDOG, "run", "--workers", "2", "--listen", f"127.0.0.1:{port}", "--log-level", "warn",
                      "--", "node", SERVER], {}),
        "sheepdog, shared queue": ([SHEEPDOG, "run", "--workers", "2", "--listen", f"127.0.0.1:{port}", "--log-level",
                                    "warn", "--spread", "shared", "--", "node", SERVER], {}),
        "bare pre-fork": ([sys.executable, os.path.join(ROOT, "bench", "bare-prefork.py"), str(port), "2", "node", SERVER], {}),
        "node cluster": (["node", os.path.join(ROOT, "bench", "cluster.js")], {"PORT": str(port), "WORKERS": "2"}),
        "single process": (["node", SERVER], {"PORT": str(port)}),
    }


def wait_serving(port, workers, timeout=15):
    """Until `workers` distinct pids have answered (or the timeout)."""
    deadline, pids = time.time() + timeout, set()
    while time.time() < deadline:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
            pids.add(re.search(r"pid (\d+)", body).group(1))
            if len(pids) >= workers:
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port}: only {len(pids)} of {workers} workers answered")


def cpu_seconds(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except OSError:
        return 0.0


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(k) for k in open(f"/proc/{p}/task/{p}/children").read().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def wrk(port, seconds, connections, close, lua=None):
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    if lua:
        cmd += ["-s", lua]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    share = re.search(r"SHARE (\S+)", out)
    return rps, p99_ms, (errors.group(1) if errors else ""), int(non2xx.group(1)) if non2xx else 0, share.group(1) if share else ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    if not os.path.exists(SHEEPDOG):
        raise SystemExit("build first: cargo build --release")
    results = {}
    for rnd in range(1, args.rounds + 1):
        # Each round begins with another setup: none always runs first (or
        # right after the one that leaves the most sockets in TIME_WAIT).
        names = list(setups(0))
        shift = (rnd - 1) % len(names)
        for name in names[shift:] + names[:shift]:
            port = free_port()
            cmd, env = setups(port)[name]
            proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_serving(port, 1 if name == "single process" else 2)
                workers = descendants(proc.pid) or [proc.pid]
                cpu_sup, cpu_work = cpu_seconds(proc.pid), sum(cpu_seconds(p) for p in workers)
                for mode, close in (("keep-alive", False), ("close", True)):
                    rps, p99, errors, non2xx, _ = wrk(port, args.duration, args.connections, close)
                    results.setdefault((name, mode), []).append((rps, p99))
                    if errors or non2xx:
                        print(f"  {name} {mode}: socket errors {errors} non-2xx {non2xx}", file=sys.stderr)
                sup = cpu_seconds(proc.pid) - cpu_sup
                work = sum(cpu_seconds(p) for p in workers) - cpu_work
                results.setdefault((name, "cpu"), []).append((sup, work))
                if name != "single process":
                    share = wrk(port, 2, args.connections, False, os.path.join(ROOT, "bench", "share.lua"))[4]
                    results.setdefault((name, "share"), []).append(share)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        print(f"round {rnd}/{args.rounds} done", file=sys.stderr)

    print(f"wrk -t2 -c{args.connections} -d{args.duration}s on 127.0.0.1, 2 workers of examples/hello/server.js, "
          f"median of {args.rounds} interleaved rounds\n")
    print("| setup | keep-alive req/s | p99 ms | close req/s | p99 ms | worker shares (keep-alive) |")
    print("|---|---:|---:|---:|---:|---|")
    med = {}
    for name in setups(0):
        row = []
        for mode in ("keep-alive", "close"):
            runs = results[(name, mode)]
            med[(name, mode)] = statistics.median(r[0] for r in runs)
            row += [f"{med[(name, mode)]:.0f}", f"{statistics.median(r[1] for r in runs):.2f}"]
        shares = " ".join(results.get((name, "share"), [])) or "-"
        print(f"| {name} | {' | '.join(row)} | {shares} |")
    print()
    for mode in ("keep-alive", "close"):
        base = med[("bare pre-fork", mode)]
        ratios = ", ".join(f"{name} {med[(name, mode)] / base:.3f}x" for name in setups(0) if name != "bare pre-fork")
        print(f"- {mode}, relative to the bare pre-fork launcher: {ratios}")
    sup = [s for s, w in results[("sheepdog", "cpu")]]
    work = [w for s, w in results[("sheepdog", "cpu")]]
    share = statistics.median(s / w * 100 if w else 0 for s, w in results[("sheepdog", "cpu")])
    print(f"- sheepdog's own CPU during the load: median {statistics.median(sup):.3f} s against "
          f"{statistics.median(work):.1f} s of its workers' ({share:.3f}%)")


if __name__ == "__main__":
    main()
