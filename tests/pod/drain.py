#!/usr/bin/env python3
"""A request loop to judge a drain by: python3 drain.py PORT MAX_SECONDS.

Two threads send GET /sleep/400 on a new connection each (the status line
comes at once, the body 400 ms later: requests in flight), two send GET / on
kept-alive connections; "running" is printed once 20 requests were answered.
SIGUSR1 says "the stop is being issued now". The
loops go on until nothing has been answered for 2 s after that, or for
MAX_SECONDS in all; then one line:

  ok=N lost=N in_flight_at_stop=N refused_after_stop=N

lost: a request that got its status line but not its whole body, or one sent
before the stop that got no answer. in_flight_at_stop: slow requests sent
before the stop and finished after it. refused_after_stop: requests sent
after the stop that found no listener (expected: the pod is going away).
Exits 0 when lost = 0 and in_flight_at_stop > 0."""
import http.client
import signal
import socket
import sys
import threading
import time

port, max_seconds = int(sys.argv[1]), float(sys.argv[2])
stop_at = None
last_answer = time.monotonic()
lock = threading.Lock()
counts = {"ok": 0, "lost": 0, "in_flight_at_stop": 0, "refused_after_stop": 0}
details = []


def on_usr1(_signum, _frame):
    global stop_at
    stop_at = time.monotonic()


def count(key, what=None):
    with lock:
        counts[key] += 1
        if what and len(details) < 10:
            details.append(what)


def done():
    now = time.monotonic()
    return now > deadline or (stop_at is not None and now - max(stop_at, last_answer) > 2)


started = threading.Event()


def answered():
    global last_answer
    last_answer = time.monotonic()
    if counts["ok"] >= 20:
        started.set()


def judge_failure(sent, got_status, error):
    if got_status:
        count("lost", f"status line, then {error!r}")
    elif stop_at is None or sent < stop_at:
        count("lost", f"sent before the stop, no answer: {error!r}")
    else:
        count("refused_after_stop")
    time.sleep(0.05)


def slow_loop():
    while not done():
        sent, got_status = time.monotonic(), False
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/sleep/400", headers={"Connection": "close"})
            response = conn.getresponse()
            got_status = response.status == 200
            body = response.read()
            conn.close()
            if not got_status or b"hello from worker" not in body:
                raise OSError(f"status {response.status}, body {body[:60]!r}")
            answered()
            count("ok")
            if stop_at is not None and sent < stop_at:
                count("in_flight_at_stop")
        except (OSError, http.client.HTTPException) as error:
            judge_failure(sent, got_status, error)


def keep_alive_loop():
    conn, reused = None, False
    while not done():
        sent, got_status = time.monotonic(), False
        try:
            if conn is None:
                conn, reused = http.client.HTTPConnection("127.0.0.1", port, timeout=10), False
            conn.request("GET", "/")
            response = conn.getresponse()
            got_status = response.status == 200
            body = response.read()
            if not got_status or b"hello from worker" not in body:
                raise OSError(f"status {response.status}, body {body[:60]!r}")
            answered()
            count("ok")
            reused = True
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as error:
            conn.close()
            conn = None
            # A kept-alive connection the server closed while idle fails the
            # next request on it before any byte of an answer; like any HTTP
            # client, send it again on a new connection: no loss.
            if reused and not got_status:
                continue
            judge_failure(sent, got_status, error)
        time.sleep(0.005)


signal.signal(signal.SIGUSR1, on_usr1)
deadline = time.monotonic() + max_seconds
threads = [threading.Thread(target=f) for f in (slow_loop, slow_loop, keep_alive_loop, keep_alive_loop)]
for thread in threads:
    thread.start()
if started.wait(max_seconds):
    print("running", flush=True)
for thread in threads:
    thread.join()
print(" ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
for line in details:
    print(f"# {line}", flush=True)
sys.exit(0 if counts["lost"] == 0 and counts["in_flight_at_stop"] > 0 else 1)
