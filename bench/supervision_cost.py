#!/usr/bin/env python3
"""The cost of supervision as the flock grows: sheepdog's own CPU (% of one
core) and memory with 16, 64 and 256 idle workers, heartbeats over sd_notify
every second (interval 1s, timeout 3s) and memory checks (PSS of each
worker's tree) every second. Median over rounds.

Usage: bench/supervision_cost.py [--rounds 3] [--seconds 20] [--sizes 16,64,256]
Needs a release build (cargo build --release) and python3.
"""
import argparse, os, signal, socket, statistics, subprocess, sys, tempfile, threading, time

from common import ROOT, SHEEPDOG
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_kib(pid):
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    rss = int(status["VmRSS"].split()[0])
    pss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/smaps_rollup") if l.startswith("Pss:"))
    return rss, pss


def run(workers, seconds):
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
        log = open(os.path.join(tmp, "stderr"), "w+")
        proc = subprocess.Popen([SHEEPDOG, "run", "--config", config], env={**os.environ, "NOTIFY_SOCKET": notify_path},
                                stderr=log)
        try:
            while b"READY=1" not in notify.recv(4096):
                pass
            # Drain it from now on, as systemd would.
            notify.settimeout(None)
            threading.Thread(target=lambda: [notify.recv(4096) for _ in iter(int, 1)], daemon=True).start()
            time.sleep(3)  # let the spawn burst's own cost settle out of the window
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(seconds)
            cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
            rss, pss = memory_kib(proc.pid)
            alive = len(open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split())
            return 100 * (cpu1 - cpu0) / (t1 - t0), rss, pss, alive
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
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {n: [] for n in sizes}
    for rnd in range(args.rounds):
        for n in sizes:
            results[n].append(run(n, args.seconds))
            print(f"round {rnd + 1}: {n} workers: {results[n][-1]}", file=sys.stderr)
    print(f"sheepdog with N idle Python workers, heartbeats (sd_notify WATCHDOG=1 every ~1 s) and PSS memory "
          f"checks every 1 s; CPU over {args.seconds} s, median of {args.rounds} rounds\n")
    print("| workers | supervisor CPU (% of one core) | per worker | supervisor RSS | supervisor PSS | workers alive at the end |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        cpu = statistics.median(r[0] for r in results[n])
        rss = statistics.median(r[1] for r in results[n])
        pss = statistics.median(r[2] for r in results[n])
        alive = min(r[3] for r in results[n])
        print(f"| {n} | {cpu:.2f}% | {cpu / n:.4f}% | {rss / 1024:.1f} MiB | {pss / 1024:.1f} MiB | {alive} |")


if __name__ == "__main__":
    main()
