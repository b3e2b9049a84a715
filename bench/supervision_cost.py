#!/usr/bin/env python3
"""The cost of supervision as the flock grows: sheepdog's own CPU (% of one
core) and memory with 16, 64 and 256 idle workers, heartbeats over sd_notify
every second (interval 1s, timeout 3s) and memory checks (PSS of each
worker's tree) every second. Median over rounds. With --scrape, each size
runs twice: as above, and with `[http]` on and /metrics scraped every second
(as Prometheus would), timing each scrape from connect to the last byte.

The window starts --settle seconds after the flock is ready (3 by default;
65 leaves out the first minute, when each new worker is also looked at for
ports of its own: the steady cost).

Usage: bench/supervision_cost.py [--rounds 3] [--seconds 20] [--sizes 16,64,256] [--scrape] [--settle 3]
Needs a release build (cargo build --release) and python3.
"""
import argparse, http.client, os, signal, socket, statistics, subprocess, sys, tempfile, threading, time

from common import ROOT, SHEEPDOG, free_port
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_kib(pid):
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    rss = int(status["VmRSS"].split()[0])
    pss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/smaps_rollup") if l.startswith("Pss:"))
    return rss, pss


def scrape(port, stop, times, sizes):
    """GET /metrics every second until `stop`; each one's milliseconds and bytes."""
    while not stop.wait(1.0):
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
        times.append(1000 * (time.perf_counter() - started))
        sizes.append(len(body))
        conn.close()
        assert response.status == 200, response.status


def run(workers, seconds, scraped=False, settle=3):
    with tempfile.TemporaryDirectory() as tmp:
        notify_path = os.path.join(tmp, "notify.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(120)
        config = os.path.join(tmp, "cost.toml")
        with open(config, "w") as f:
            f.write(f'command = ["{sys.executable}", "{os.path.join(ROOT, "bench", "idle-worker.py")}"]\n'
                    f'workers = {workers}\nlisten = ["127.0.0.1:0"]\nreadiness = "notify"\nready_timeout = "120s"\n'
                    f'log_level = "warn"\n[heartbeat]\ninterval = "1s"\ntimeout = "3s"\n'
                    f'[memory]\nlimit = "1GiB"\ninterval = "1s"\n')
            port = free_port()
            if scraped:
                f.write(f'[http]\nlisten = "127.0.0.1:{port}"\n')
        log = open(os.path.join(tmp, "stderr"), "w+")
        proc = subprocess.Popen([SHEEPDOG, "run", "--config", config], env={**os.environ, "NOTIFY_SOCKET": notify_path},
                                stderr=log)
        try:
            while b"READY=1" not in notify.recv(4096):
                pass
            # Drain it from now on, as systemd would.
            notify.settimeout(None)
            threading.Thread(target=lambda: [notify.recv(4096) for _ in iter(int, 1)], daemon=True).start()
            time.sleep(settle)  # let the spawn burst's own cost settle out of the window
            stop, times, sizes = threading.Event(), [], []
            scraper = threading.Thread(target=scrape, args=(port, stop, times, sizes), daemon=True)
            if scraped:
                scraper.start()
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(seconds)
            cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
            stop.set()
            if scraped:
                scraper.join()
            rss, pss = memory_kib(proc.pid)
            alive = len(open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split())
            scrapes = (statistics.median(times), max(times), statistics.median(sizes)) if times else None
            return 100 * (cpu1 - cpu0) / (t1 - t0), rss, pss, alive, scrapes
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            log.seek(0)
            if "missed heartbeats" in log.read():
                print(f"  warning: {workers} workers: heartbeats were missed during the run", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--sizes", default="16,64,256")
    ap.add_argument("--scrape", action="store_true", help="also run each size with /metrics scraped every second")
    ap.add_argument("--settle", type=int, default=3, help="seconds between ready and the window")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = [False, True] if args.scrape else [False]
    results = {(n, m): [] for n in sizes for m in modes}
    for rnd in range(args.rounds):
        for n in sizes:
            for m in modes:
                results[(n, m)].append(run(n, args.seconds, m, args.settle))
                print(f"round {rnd + 1}: {n} workers, scraped={m}: {results[(n, m)][-1]}", file=sys.stderr)
    print(f"sheepdog with N idle Python workers, heartbeats (sd_notify WATCHDOG=1 every ~1 s) and PSS memory "
          f"checks every 1 s; CPU over {args.seconds} s from {args.settle} s after ready, median of {args.rounds} rounds\n")
    print("| workers | /metrics scraped every 1 s | supervisor CPU (% of one core) | per worker | supervisor RSS "
          "| supervisor PSS | scrape, median / max | scrape size | workers alive at the end |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        for m in modes:
            rows = results[(n, m)]
            cpu = statistics.median(r[0] for r in rows)
            rss = statistics.median(r[1] for r in rows)
            pss = statistics.median(r[2] for r in rows)
            alive = min(r[3] for r in rows)
            if m:
                median = statistics.median(r[4][0] for r in rows)
                worst = max(r[4][1] for r in rows)
                size = statistics.median(r[4][2] for r in rows)
                scrape_cells = f"{median:.1f} ms / {worst:.1f} ms | {size / 1024:.0f} KiB"
            else:
                scrape_cells = "- | -"
            print(f"| {n} | {'yes' if m else 'no'} | {cpu:.2f}% | {cpu / n:.4f}% | {rss / 1024:.1f} MiB "
                  f"| {pss / 1024:.1f} MiB | {scrape_cells} | {alive} |")


if __name__ == "__main__":
    main()
