#!/usr/bin/env python3
"""Requests lost across rolling reloads, side by side, on the same app
(examples/hello/server.js, 2 workers, draining on SIGTERM as the README says)
and the same load: sheepdog reload, `pm2 reload` (pm2 installed locally in
bench/ with npm), and Node cluster's classic one-by-one rolling restart
(bench/cluster.js). For each: the steady p99 under wrk, then 20 reloads in a
row under the same wrk, keep-alive and `Connection: close`; wrk counts every
socket error and non-2xx answer. Also the wall time of each reload.

Then the picture (bench/reload-latency.png, redrawn on every run): each
request's latency over time, reloads marked, for the three side by side,
measured by bench/latency-probe.js (closed loops, keep-alive) through 5 spaced
reloads.

Usage: bench/reload.py [--reloads 20] [--connections 32] [--picture-only]
Needs: wrk, node, npm install --prefix bench pm2, cargo build --release,
matplotlib (installed from PyPI with pip when missing).
"""
import argparse, contextlib, json, os, re, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

from common import PM2, ROOT, SERVER, SHEEPDOG, free_port


def wait_serving(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing serves on port {port}")


def parse_wrk(out):
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)] if p99 else float("nan")
    errors = 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return requests, errors, p99_ms


def wrk_args(port, connections, close):
    args = ["wrk", "-t2", f"-c{connections}", "--latency", "--timeout", "5s"]
    if close:
        args += ["-H", "Connection: close"]
    return args + [f"http://127.0.0.1:{port}/"]


class Sheepdog:
    name = "sheepdog reload"

    def start(self, port, tmp):
        self.config = os.path.join(tmp, "hello.toml")
        with open(self.config, "w") as f:
            f.write(f'command = ["node", "{SERVER}"]\nworkers = 2\nlisten = ["127.0.0.1:{port}"]\n'
                    f'readiness = "node-ipc"\nstop_timeout = "10s"\ncontrol_socket = "{tmp}/control.sock"\n'
                    f'log_level = "warn"\n')
        self.proc = subprocess.Popen([SHEEPDOG, "run", "--config", self.config], stderr=subprocess.DEVNULL)

    def reload(self):
        subprocess.run([SHEEPDOG, "reload", "--config", self.config], check=True, stdout=subprocess.DEVNULL)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


class Pm2:
    name = "pm2 reload"

    def start(self, port, tmp):
        self.env = {**os.environ, "PM2_HOME": os.path.join(tmp, "pm2"), "PORT": str(port)}
        subprocess.run([PM2, "start", SERVER, "--name", "hello", "-i", "2", "--wait-ready", "--listen-timeout", "10000",
                        "--kill-timeout", "10000"], env=self.env, check=True, stdout=subprocess.DEVNULL)

    def reload(self):
        subprocess.run([PM2, "reload", "hello"], env=self.env, check=True, stdout=subprocess.DEVNULL)

    def stop(self):
        subprocess.run([PM2, "kill"], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Cluster:
    name = "node cluster rolling restart"

    def start(self, port, tmp):
        self.proc = subprocess.Popen(["node", os.path.join(ROOT, "bench", "cluster.js")],
                                     env={**os.environ, "PORT": str(port), "WORKERS": "2"},
                                     stdout=subprocess.PIPE, text=True)

    def reload(self):
        self.proc.send_signal(signal.SIGHUP)
        # The workers share the master's stdout: skip their lines.
        for line in self.proc.stdout:
            if line.strip() == "reloaded":
                return
        raise SystemExit("cluster master did not reload")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


@contextlib.contextmanager
def serving(setup):
    """`setup` started on a free port and answering; its port. Stopped after."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        setup.start(port, tmp)
        try:
            wait_serving(port)
            time.sleep(1)
            yield port
        finally:
            setup.stop()


def run(setup, reloads, connections, seconds_steady):
    results = {}
    with serving(setup) as port:
        for mode, close in (("keep-alive", False), ("close", True)):
            steady = subprocess.run(wrk_args(port, connections, close)[:1] + [f"-d{seconds_steady}s"]
                                    + wrk_args(port, connections, close)[1:], capture_output=True, text=True).stdout
            _, _, steady_p99 = parse_wrk(steady)
            load = subprocess.Popen(wrk_args(port, connections, close)[:1] + ["-d600s"]
                                    + wrk_args(port, connections, close)[1:], stdout=subprocess.PIPE, text=True)
            time.sleep(1)
            walls = []
            for _ in range(reloads):
                t0 = time.monotonic()
                setup.reload()
                walls.append(time.monotonic() - t0)
            time.sleep(1)
            load.send_signal(signal.SIGINT)
            out = load.communicate(timeout=30)[0]
            requests, errors, p99 = parse_wrk(out)
            results[mode] = dict(requests=requests, errors=errors, steady_p99=steady_p99, p99=p99,
                                 wall=statistics.median(walls))
            print(f"  {setup.name} {mode}: {results[mode]}", file=sys.stderr)
    return results


PICTURE = os.path.join(ROOT, "bench", "reload-latency.png")


def timeline(setup, seconds, reloads, connections):
    """Every request's (start s, latency ms, status) and each reload's (start s, end s)
    over `seconds` of load, with `reloads` reloads spread over it."""
    with serving(setup) as port:
        origin = time.time()
        probe = subprocess.Popen(["node", os.path.join(ROOT, "bench", "latency-probe.js"), str(port), str(seconds),
                                  str(connections), "keep-alive"], stdout=subprocess.PIPE, text=True)
        marks = []
        gap = seconds / (reloads + 1)
        for i in range(reloads):
            time.sleep(max(0.0, origin + gap * (i + 1) - time.time()))
            t0 = time.time()
            setup.reload()
            marks.append((t0 - origin, time.time() - origin))
        out = probe.communicate(timeout=seconds + 60)[0]
    requests = []
    for line in out.splitlines():
        start_ms, latency, status = line.split()
        requests.append((int(start_ms) / 1000 - origin, float(latency), int(status)))
    return requests, marks


def draw(timelines, connections):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = 0.25
    fig, axes = plt.subplots(len(timelines), 1, figsize=(10, 2.6 * len(timelines)), sharex=True, sharey=True)
    for ax, (name, (requests, marks)) in zip(axes, timelines):
        buckets = {}
        for start, latency, status in requests:
            buckets.setdefault(int(start / window), []).append((latency, status))
        xs, p50, p99, top, failed_at = [], [], [], [], []
        for key in sorted(buckets):
            latencies = sorted(latency for latency, _ in buckets[key])
            xs.append(key * window)
            p50.append(latencies[len(latencies) // 2])
            p99.append(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))])
            top.append(latencies[-1])
            failed_at += [key * window] * sum(1 for _, status in buckets[key] if status != 200)
        failed = sum(1 for *_, status in requests if status != 200)
        for start, end in marks:
            ax.axvspan(start, max(end, start + 0.05), color="tab:orange", alpha=0.25, lw=0)
        ax.plot(xs, top, color="0.6", lw=0.8, label="max")
        ax.plot(xs, p99, color="tab:blue", lw=1.5, label="p99")
        ax.plot(xs, p50, color="tab:green", lw=1.0, label="median")
        if failed_at:
            ax.plot(failed_at, [4000] * len(failed_at), "x", color="tab:red", label="failed request")
        ax.set_yscale("log")
        ax.set_title(f"{name}: {len(requests)} requests, {failed} failed, {len(marks)} reloads (shaded)",
                     loc="left", fontsize=10)
        ax.set_ylabel("latency ms")
        ax.grid(True, which="major", alpha=0.3)
    # One legend, on the first panel, with the failure marker whether or not
    # that panel has failures (it would hide the crosses of another).
    from matplotlib.lines import Line2D
    handles, labels = axes[0].get_legend_handles_labels()
    if "failed request" not in labels:
        handles.append(Line2D([], [], ls="", marker="x", color="tab:red"))
        labels.append("failed request")
    axes[0].legend(handles, labels, loc="upper right", fontsize=8, ncol=4)
    axes[-1].set_xlabel(f"seconds; {connections} keep-alive connections in closed loops, "
                        f"per {int(window * 1000)} ms window; 2 workers of examples/hello/server.js on 2 cores")
    fig.tight_layout()
    fig.savefig(PICTURE, dpi=90)
    print(f"drew {os.path.relpath(PICTURE, ROOT)}", file=sys.stderr)


def ensure_matplotlib():
    """matplotlib for this python3, from PyPI when it is missing."""
    try:
        import matplotlib  # noqa: F401
        return
    except ImportError:
        pass
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "matplotlib"]
    if subprocess.run(pip).returncode != 0:
        subprocess.run(pip + ["--break-system-packages"], check=True)


def picture(connections, seconds=30, reloads=5):
    ensure_matplotlib()
    timelines = []
    for setup in (Sheepdog(), Pm2(), Cluster()):
        requests, marks = timeline(setup, seconds, reloads, connections)
        failed = sum(1 for *_, status in requests if status != 200)
        print(f"  {setup.name} timeline: {len(requests)} requests, {failed} failed", file=sys.stderr)
        timelines.append((setup.name, (requests, marks)))
    draw(timelines, connections)
    return timelines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reloads", type=int, default=20)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--steady", type=int, default=5)
    ap.add_argument("--picture-only", action="store_true", help="only redraw bench/reload-latency.png")
    args = ap.parse_args()
    for need in (SHEEPDOG, PM2):
        if not os.path.exists(need):
            raise SystemExit(f"missing {need}: cargo build --release; npm install --prefix bench pm2")
    picture(min(args.connections, 16))
    if args.picture_only:
        return
    rows = []
    for setup in (Sheepdog(), Pm2(), Cluster()):
        rows.append((setup.name, run(setup, args.reloads, args.connections, args.steady)))
    print(f"{args.reloads} reloads in a row under wrk -t2 -c{args.connections} on 127.0.0.1, 2 workers of "
          f"examples/hello/server.js\n")
    print("| setup | load | requests | failed (socket errors + non-2xx) | steady p99 ms | p99 during reloads ms | ratio | median reload wall time |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, result in rows:
        for mode, r in result.items():
            ratio = r["p99"] / r["steady_p99"] if r["steady_p99"] else float("nan")
            print(f"| {name} | {mode} | {r['requests']} | {r['errors']} | {r['steady_p99']:.2f} | {r['p99']:.2f} | "
                  f"{ratio:.2f}x | {r['wall']:.2f} s |")


if __name__ == "__main__":
    main()
