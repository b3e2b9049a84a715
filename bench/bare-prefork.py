#!/usr/bin/env python3
"""The upper bound: bind the socket, fork N workers with it as fd 3 (LISTEN_FDS,
LISTEN_PID), wait. No supervision at all. Usage: bare-prefork.py PORT N CMD..."""
import os, signal, socket, sys

port, count, command = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(4096)
children = []
for slot in range(count):
    pid = os.fork()
    if pid == 0:
        if listener.fileno() != 3:
            os.dup2(listener.fileno(), 3)
        os.set_inheritable(3, True)  # dup2(3, 3) alone would leave it close-on-exec
        os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), SHEEPDOG_WORKER_ID=str(slot))
        os.execvp(command[0], command)
    children.append(pid)
signal.signal(signal.SIGTERM, lambda *_: [os.kill(p, signal.SIGTERM) for p in children])
for _ in children:
    os.wait()
