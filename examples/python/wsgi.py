"""A small WSGI app for gunicorn under sheepdog (examples/python/gunicorn.toml).

gunicorn finds the socket sheepdog passed by itself (LISTEN_FDS, with
LISTEN_PID its own pid), and says READY=1 by itself once its master is up;
with `--preload` that is after this module was imported, so a release that
cannot even import fails its start and a reload onto it is aborted.
"""
import os


def app(environ, start_response):
    body = "hello from worker {} pid {} version {}\n".format(
        os.environ.get("SHEEPDOG_WORKER_ID", "-"), os.getpid(), os.environ.get("APP_VERSION", "1")
    ).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
