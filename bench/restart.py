#!/usr/bin/env python3
"""First-restart latency: a stable worker is SIGKILLed; how long until its
replacement answers a request? One worker, so every request in between waits
for the replacement (in the shared socket's queue under sheepdog, in the
master under Node cluster and pm2). Node's own boot, from exec to its first
answer, is the floor; what a supervisor adds is the rest.

Setups, interleaved round by round: sheepdog (readiness none), Node cluster
(a master that forks again on exit, bench/cluster-restart.js), pm2 (cluster
mode, one instance), and a bare `node server.js` started cold (the floor).

Usage: bench/restart.py [--rounds 10]
Needs: node, npm install --prefix bench pm2, cargo build --release.
"""
import argparse, os, signal, statistics, subprocess, sys, tempfile, time

from common import PM2, ROOT, SERVER, SHEEPDOG, free_port, get


def answered_by_other(port, old, deadline):
    """Until a request is answered by a pid other than `old`: when it was,
    and how many attempts were stranded (connected, never answered: Node
    cluster's master hands a connection to a worker that just died) or
    refused (nothing listening) on the way. An attempt waits 200 ms at most."""
    stranded = refused = 0
    while time.monotonic() < deadline:
        started = time.monotonic()
        pid = get(port, timeout=0.2)
        if pid is not None and pid != old:
            return time.monotonic(), pid, stranded, refused
        if time.monotonic() - started >= 0.19:
            stranded += 1
        else:
            refused += 1
    raise SystemExit("no replacement answered")


def wait_serving(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = get(port, timeout=1)
        if pid:
            return pid
        time.sleep(0.05)
    raise SystemExit(f"nothing serves port {port}")


class Sheepdog:
    name = "sheepdog"

    def start(self, port, tmp):
        config = os.path.join(tmp, "restart.toml")
        with open(config, "w") as f:
            # backoff_reset 1s: each round's kill is the first failure of a
            # stable worker, as the bench means it.
            f.write(f'command = ["node", "{SERVER}"]\nworkers = 1\nlisten = ["127.0.0.1:{port}"]\n'
                    f'backoff_reset = "1s"\nmax_restarts = 1000\ncontrol_socket = "{tmp}/control.sock"\n'
                    f'log_level = "warn"\n')
        self.proc = subprocess.Popen([SHEEPDOG, "run", "--config", config], stderr=subprocess.DEVNULL)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


class Cluster:
    name = "node cluster"

    def start(self, port, tmp):
        self.proc = subprocess.Popen(["node", os.path.join(ROOT, "bench", "cluster-restart.js")],
                                     env={**os.environ, "PORT": str(port), "WORKERS": "1"})

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


class Pm2:
    name = "pm2"

    def start(self, port, tmp):
        self.env = {**os.environ, "PM2_HOME": os.path.join(tmp, "pm2"), "PORT": str(port)}
        subprocess.run([PM2, "start", SERVER, "--name", "hello", "-i", "1"], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)

    def stop(self):
        subprocess.run([PM2, "kill"], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def restart_latency(setup, rounds):
    """Per round: SIGKILL the serving worker, time until another answers."""
    latencies, stranded = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        setup.start(port, tmp)
        try:
            pid = wait_serving(port)
            time.sleep(1.5)
            for _ in range(rounds):
                t0 = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                t1, pid, lost, _ = answered_by_other(port, pid, t0 + 20)
                latencies.append((t1 - t0) * 1000)
                stranded += lost
                time.sleep(1.5)
        finally:
            setup.stop()
    return latencies, stranded


def node_boot(rounds):
    """The floor: `node server.js` from exec to its first answer."""
    latencies = []
    for _ in range(rounds):
        port = free_port()
        t0 = time.monotonic()
        proc = subprocess.Popen(["node", SERVER], env={**os.environ, "PORT": str(port)}, stdout=subprocess.DEVNULL)
        try:
            while get(port, timeout=1) is None:
                time.sleep(0.001)
            latencies.append((time.monotonic() - t0) * 1000)
        finally:
            proc.kill()
            proc.wait()
        time.sleep(0.5)
    return latencies


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    for need in (SHEEPDOG, PM2):
        if not os.path.exists(need):
            raise SystemExit(f"missing {need}: cargo build --release; npm install --prefix bench pm2")
    results = {"node boot (floor)": [], "sheepdog": [], "node cluster": [], "pm2": []}
    stranded = {name: 0 for name in results}
    # Interleaved: a round of each, then again, so that noise hits all alike.
    for round in range(args.rounds):
        results["node boot (floor)"] += node_boot(1)
        for setup in (Sheepdog(), Cluster(), Pm2()):
            latencies, lost = restart_latency(setup, 1)
            results[setup.name] += latencies
            stranded[setup.name] += lost
        print(f"round {round + 1}/{args.rounds} done", file=sys.stderr)
    floor = statistics.median(results["node boot (floor)"])
    print("| setup | median ms | min | max | over Node's boot | stranded connections |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, values in results.items():
        median = statistics.median(values)
        over = "-" if name.startswith("node boot") else f"{median - floor:+.1f} ms"
        lost = "-" if name.startswith("node boot") else str(stranded[name])
        print(f"| {name} | {median:.1f} | {min(values):.1f} | {max(values):.1f} | {over} | {lost} |")


if __name__ == "__main__":
    main()
