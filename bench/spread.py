#!/usr/bin/env python3
"""How connections spread over the workers, side by side in one run: the old
shared socket (`--spread shared`: every worker in accept() on one queue, the
kernel's race picks), sheepdog's default (`round-robin`: a queue per worker,
eBPF round robin), its unprivileged fallback (`random`), and Node cluster's
round robin in its master. The bundled Node example, on loopback.

For 2, 4 and 8 workers:
- keep-alive pools of 1x, 2x and 8x the workers, opened in a burst (all
  connect, then each sends a request) or one after another (each connects
  and is used before the next opens, as a proxy's pool grows): how many
  connections each worker holds (every request on a kept-alive connection
  goes to its worker);
- a new connection per request (wrk -c64, Connection: close, 3 s): each
  worker's share of the answers.
Each cell: busiest / idlest (median of the rounds), and idle workers (most
in a round); the shares of the last round.

Usage: bench/spread.py [--rounds 3] [--workers 2,4,8]
Needs: wrk, node, a release build (cargo build --release), root (or
CAP_BPF) for the round robin.
"""
import argparse, os, re, signal, socket, statistics, subprocess, sys, time
from collections import Counter

from common import ROOT, SERVER, SHEEPDOG, free_port, get

MODES = ["shared", "random", "round-robin", "cluster"]


def start(mode, workers, port):
    if mode == "cluster":
        env = dict(os.environ, PORT=str(port), WORKERS=str(workers))
        proc = subprocess.Popen(["node", os.path.join(ROOT, "bench", "cluster.js")], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        proc = subprocess.Popen([SHEEPDOG, "run", "--workers", str(workers), "--listen", f"127.0.0.1:{port}",
                                 "--spread", mode, "--log-level", "warn", "--", "node", SERVER],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Ready: every worker answered (cluster and round robin spread fresh
    # connections, the others are asked until all were seen), then a pause.
    deadline, seen = time.time() + 30, set()
    while len(seen) < workers and time.time() < deadline:
        pid = get(port, timeout=2)
        if pid:
            seen.add(pid)
        else:
            time.sleep(0.05)
    time.sleep(1.5)
    return proc


def request(sock):
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("closed")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(4096)
    return int(re.search(rb"pid (\d+)", body).group(1))


def pool(port, size, burst):
    """Connections held per worker pid."""
    conns, holders = [], []
    try:
        if burst:
            conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(size)]
            holders = [request(c) for c in conns]
        else:
            for _ in range(size):
                c = socket.create_connection(("127.0.0.1", port), timeout=10)
                conns.append(c)
                holders.append(request(c))
        # Kept alive: they stay with their worker.
        for c, pid in zip(conns, holders):
            for _ in range(3):
                assert request(c) == pid, "a kept-alive connection moved"
    finally:
        for c in conns:
            c.close()
    return Counter(holders)


def fresh(port):
    out = subprocess.run(["wrk", "-t2", "-c64", "-d3s", "-H", "Connection: close", "-s",
                          os.path.join(ROOT, "bench", "share.lua"), f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("SHARE "))
    return [float(p.rstrip("%")) for p in line.split()[1].split("/")]


def summary(values, workers):
    values = sorted(values, reverse=True) + [0] * (workers - len(values))
    idle = sum(1 for v in values if v == 0)
    ratio = values[0] / values[-1] if values[-1] else float("inf")
    return ratio, idle, "/".join(f"{v:g}" for v in values)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="2,4,8")
    args = parser.parse_args()
    loads = [(f"keep-alive {m}x, {'burst' if b else 'one by one'}", m, b) for m in (1, 2, 8) for b in (True, False)]
    loads.append(("new connection per request", None, None))
    cells = {}
    for workers in [int(w) for w in args.workers.split(",")]:
        for mode in MODES:
            results = {name: [] for name, _, _ in loads}
            for _ in range(args.rounds):
                port = free_port()
                proc = start(mode, workers, port)
                try:
                    for name, multiple, burst in loads:
                        if multiple is None:
                            values = fresh(port)
                        else:
                            values = list(pool(port, multiple * workers, burst).values())
                        results[name].append(summary(values, workers))
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
            for name, rounds in results.items():
                ratios = [r for r, _, _ in rounds]
                cells[(workers, name, mode)] = (statistics.median(ratios), max(i for _, i, _ in rounds), rounds[-1][2])
                print(f"  {workers} workers, {name}, {mode}: {[s for _, _, s in rounds]}", file=sys.stderr)
    print("| workers | load | " + " | ".join(MODES) + " |")
    print("|---:|---|" + "---|" * len(MODES))
    for workers in [int(w) for w in args.workers.split(",")]:
        for name, _, _ in loads:
            row = []
            for mode in MODES:
                ratio, idle, shares = cells[(workers, name, mode)]
                ratio = "∞" if ratio == float("inf") else f"{ratio:.2f}x"
                row.append(f"{ratio}, {idle} idle ({shares})")
            print(f"| {workers} | {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
