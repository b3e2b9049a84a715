#!/usr/bin/env python3
"""How requests spread over the workers under sheepdog: the kernel's accept
race on one shared socket, not a round-robin. For 2 workers (as many as
cores) and 4 (twice as many), at saturation (wrk, 64 connections, new
connection per request) and under light load (one client, one request at a
time): each worker's share of the requests, and busiest/idlest.

Usage: bench/spread.py [--rounds 3] [--requests 2000]
Needs: wrk, node, a release build (cargo build --release).
"""
import argparse, os, signal, statistics, subprocess, sys, time
from collections import Counter

from common import ROOT, SERVER, SHEEPDOG, free_port, get


def start(workers, port):
    proc = subprocess.Popen([SHEEPDOG, "run", "--workers", str(workers), "--listen", f"127.0.0.1:{port}",
                             "--log-level", "warn", "--", "node", SERVER],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, seen = time.time() + 20, set()
    while len(seen) < workers and time.time() < deadline:
        pid = get(port)
        if pid:
            seen.add(pid)
        else:
            time.sleep(0.05)
    time.sleep(1)
    return proc


def shares(counts, workers):
    values = sorted(counts.values(), reverse=True) + [0] * (workers - len(counts))
    total = sum(values)
    return [100 * v / total for v in values]


def saturated(port, workers):
    out = subprocess.run(["wrk", "-t2", "-c64", "-d5s", "-H", "Connection: close", "-s",
                          os.path.join(ROOT, "bench", "share.lua"), f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("SHARE "))
    values = [float(p.rstrip("%")) for p in line.split()[1].split("/")]
    return values + [0.0] * (workers - len(values))


def light(port, workers, requests):
    answers = (get(port) for _ in range(requests))
    return shares(Counter(pid for pid in answers if pid), workers)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    rows = []
    for workers in (2, 4):
        for load in ("saturated", "light"):
            ratios, seen = [], []
            for _ in range(args.rounds):
                port = free_port()
                proc = start(workers, port)
                try:
                    values = saturated(port, workers) if load == "saturated" else light(port, workers, args.requests)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
                seen.append("/".join(f"{v:.0f}" for v in values))
                ratios.append(values[0] / values[-1] if values[-1] else float("inf"))
            rows.append((workers, load, statistics.median(ratios), " ".join(seen)))
            print(f"  {workers} workers, {load}: {seen}", file=sys.stderr)
    print("| workers (2 cores) | load | busiest / idlest (median) | shares % per round |")
    print("|---:|---|---:|---|")
    for workers, load, ratio, seen in rows:
        print(f"| {workers} | {load} | {ratio:.2f}x | {seen} |")


if __name__ == "__main__":
    main()
