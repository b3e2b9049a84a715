#!/usr/bin/env python3
"""In-place upgrade of the supervisor: what the flock goes through while the
supervisor's own binary is replaced under load.

sheepdog: a copy of the release build runs from a directory of the bench's;
each round installs the other build over it (the release, or the test build
`sheepdog-next`) and runs `sheepdog upgrade`. Measured per upgrade:
- the blind window, as the new binary reports it: from the last event the
  old binary handled to the end of the new one's first pass (CLOCK_MONOTONIC
  on both sides of the exec);
- the control socket's unavailability: a client asks `status` in a loop; the
  longest any one request took while an upgrade ran;
- the `sheepdog upgrade` command's own wall time (probe, hand-over, answer);
- requests on new connections and on a kept-alive one: failed, and the
  longest gap between two answers.
With 4 Node workers (examples/hello) under load, and with 256 idle Python
workers on sd_notify (a bigger state, no load).

Side by side, what the peers offer for replacing the supervisor itself:
`pm2 update` (saves the process list, kills the pm2 daemon, starts the new
one, which starts every app again) and Node cluster, whose master can only be
restarted with its workers (stop, start).

Usage: bench/upgrade.py [--rounds 10] [--large 256]
Needs: node, python3, npm install --prefix bench pm2,
cargo build --release && cargo build --release --example sheepdog-next.
"""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time

from common import PM2, ROOT, SERVER, SHEEPDOG, free_port

NEXT = os.path.join(ROOT, "target", "release", "examples", "sheepdog-next")
IDLE = os.path.join(ROOT, "bench", "idle-worker.py")


class Load:
    """Clients in threads: one on new connections, one kept alive; every
    answer's time is kept, and every failure."""

    def __init__(self, port):
        self.port = port
        self.stop = threading.Event()
        self.answers = []
        self.failed = 0
        self.threads = [threading.Thread(target=self.fresh), threading.Thread(target=self.kept)]
        for t in self.threads:
            t.start()

    def fresh(self):
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    data = b""
                    while chunk := s.recv(4096):
                        data += chunk
                ok = data.startswith(b"HTTP/1.1 200")
            except OSError:
                ok = False
            self.count(ok)

    def kept(self):
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                    reader = conn.makefile("rb")
                conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                status = reader.readline()
                length, close = 0, False
                while (line := reader.readline().strip()) != b"":
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                    if name.lower() == b"connection" and value.strip().lower() == b"close":
                        close = True
                reader.read(length)
                ok = status.startswith(b"HTTP/1.1 200")
                if close:
                    conn.close()
                    conn = None
            except (OSError, ValueError):
                ok = False
                conn = None
            self.count(ok)

    def count(self, ok):
        if ok:
            self.answers.append(time.monotonic())
        else:
            self.failed += 1

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()
        gaps = [b - a for a, b in zip(self.answers, self.answers[1:])]
        return len(self.answers), self.failed, max(gaps) * 1000 if gaps else float("nan")


class StatusProbe:
    """`status` over the control socket in a loop: (start, seconds) of each."""

    def __init__(self, path):
        self.path = path
        self.stop = threading.Event()
        self.samples = []
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(10)
                    s.connect(self.path)
                    s.sendall(b'{"v":1,"cmd":"status"}\n')
                    data = b""
                    while not data.endswith(b"\n"):
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        data += chunk
            except OSError:
                pass
            self.samples.append((start, time.monotonic() - start))
            time.sleep(0.001)

    def longest_during(self, begin, end):
        during = [took for start, took in self.samples if start + took >= begin and start <= end]
        return max(during) * 1000 if during else float("nan")

    def finish(self):
        self.stop.set()
        self.thread.join()


def install(source, path):
    shutil.copy(source, path + ".new")
    os.rename(path + ".new", path)


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def status(binary, config):
    out = subprocess.run([binary, "status", "--json", "--config", config], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else None


def sheepdog_upgrades(tmp, rounds, workers, load):
    """Upgrades of a running flock, alternating the two builds: per round
    (blind ms, control socket longest ms, command ms); and the load's totals."""
    bindir = os.path.join(tmp, "bin")
    os.makedirs(bindir)
    binary = os.path.join(bindir, "sheepdog")
    install(SHEEPDOG, binary)
    port = free_port()
    config = os.path.join(tmp, "app.toml")
    control = os.path.join(tmp, "control.sock")
    with open(config, "w") as f:
        if load:
            f.write(f'command = ["node", "{SERVER}"]\nreadiness = "node-ipc"\n')
        else:
            f.write(f'command = ["python3", "{IDLE}"]\nreadiness = "notify"\n')
        f.write(f'workers = {workers}\nlisten = ["127.0.0.1:{port}"]\ncontrol_socket = "{control}"\n'
                f'log_level = "warn"\nready_timeout = "60s"\n[heartbeat]\ninterval = "1s"\n')
    proc = subprocess.Popen([binary, "run", "--config", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = []
    try:
        wait_for(lambda: (status(binary, config) or {}).get("supervisor", {}).get("ready") == workers, 120,
                 f"{workers} ready workers")
        pids = sorted(w["pid"] for w in status(binary, config)["workers"])
        traffic = Load(port) if load else None
        probe = StatusProbe(control)
        time.sleep(1)
        for round in range(rounds):
            install(NEXT if round % 2 == 0 else SHEEPDOG, binary)
            begin = time.monotonic()
            out = subprocess.run([binary, "upgrade", "--config", config], capture_output=True, text=True)
            end = time.monotonic()
            if out.returncode != 0:
                raise SystemExit(f"upgrade failed: {out.stderr}")
            blind = float(out.stdout.split("events unhandled for ")[1].split(" ms")[0])
            time.sleep(0.3)
            results.append((blind, probe.longest_during(begin, end + 0.3), (end - begin) * 1000))
            time.sleep(0.7)
        probe.finish()
        totals = traffic.finish() if traffic else None
        kept = sorted(w["pid"] for w in status(binary, config)["workers"]) == pids
        alive = proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return results, totals, kept and alive


def peer_replaced(kind, tmp, workers):
    """pm2 update, or a Node cluster master restarted: (seconds it took,
    whether the app processes were kept, the load's totals)."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "PM2_HOME": os.path.join(tmp, "pm2"), "WORKERS": str(workers)}

    def serving():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return s.recv(12).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    if kind == "pm2":
        subprocess.run([PM2, "start", SERVER, "--name", "hello", "-i", str(workers)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        pids = lambda: subprocess.run([PM2, "pid", "hello"], env=env, capture_output=True, text=True).stdout.split()
    else:
        cluster = os.path.join(ROOT, "bench", "cluster.js")
        master = subprocess.Popen(["node", cluster], env=env, stdout=subprocess.DEVNULL)
    try:
        wait_for(serving, 30, f"{kind} serving")
        time.sleep(1.5)
        before = pids() if kind == "pm2" else None
        traffic = Load(port)
        time.sleep(1)
        begin = time.monotonic()
        if kind == "pm2":
            subprocess.run([PM2, "update"], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            master.send_signal(signal.SIGTERM)
            master.wait(30)
            master = subprocess.Popen(["node", cluster], env=env, stdout=subprocess.DEVNULL)
        wait_for(serving, 30, f"{kind} serving again")
        took = time.monotonic() - begin
        time.sleep(1)
        totals = traffic.finish()
        kept = kind == "pm2" and pids() == before
    finally:
        if kind == "pm2":
            subprocess.run([PM2, "kill"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            master.send_signal(signal.SIGTERM)
            master.wait(30)
    return took, kept, totals


def median(values):
    return statistics.median(values) if values else float("nan")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--large", type=int, default=256)
    args = parser.parse_args()
    for need in (SHEEPDOG, NEXT, PM2):
        if not os.path.exists(need):
            raise SystemExit(f"missing {need}: cargo build --release && cargo build --release --example "
                             "sheepdog-next; npm install --prefix bench pm2")
    print(f"sheepdog upgrade, {args.rounds} rounds each, alternating the release and sheepdog-next")
    print("| flock | blind window ms (median / max) | control socket longest wait ms (median / max) "
          "| `sheepdog upgrade` ms (median) | workers kept | requests ok / failed | longest gap between answers ms |")
    print("|---|---:|---:|---:|---|---:|---:|")
    for workers, load in ((4, True), (args.large, False)):
        with tempfile.TemporaryDirectory() as tmp:
            results, totals, kept = sheepdog_upgrades(tmp, args.rounds, workers, load)
        blind = [r[0] for r in results]
        control = [r[1] for r in results]
        command = [r[2] for r in results]
        what = f"{workers} Node workers under load" if load else f"{workers} idle Python workers (notify)"
        served = f"{totals[0]} / {totals[1]}" if totals else "-"
        gap = f"{totals[2]:.1f}" if totals else "-"
        print(f"| {what} | {median(blind):.1f} / {max(blind):.1f} | {median(control):.1f} / {max(control):.1f} "
              f"| {median(command):.1f} | {'yes' if kept else 'NO'} | {served} | {gap} |")
    print()
    print("Replacing the supervisor itself, 4 workers under the same load, once each:")
    print("| setup | operation | took s | app processes kept | requests ok / failed | longest gap between answers ms |")
    print("|---|---|---:|---|---:|---:|")
    for kind, operation in (("pm2", "pm2 update"), ("cluster", "master stopped and started")):
        with tempfile.TemporaryDirectory() as tmp:
            took, kept, (ok, failed, gap) = peer_replaced(kind, tmp, 4)
        print(f"| {'pm2' if kind == 'pm2' else 'node cluster'} | {operation} | {took:.2f} | {'yes' if kept else 'no'} "
              f"| {ok} / {failed} | {gap:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
