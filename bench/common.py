"""What the benchmark scripts share: paths, a free port, one GET."""
import os, re, socket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "examples", "hello", "server.js")
SHEEPDOG = os.path.join(ROOT, "target", "release", "sheepdog")
PM2 = os.path.join(ROOT, "bench", "node_modules", ".bin", "pm2")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, timeout=5.0):
    """One GET on a new connection: the answering worker's pid, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        match = re.search(rb"pid (\d+)", data)
        return int(match.group(1)) if match else None
    except OSError:
        return None
