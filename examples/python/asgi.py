"""A small ASGI app for uvicorn under sheepdog (examples/python/uvicorn.toml).

uvicorn serves on the socket sheepdog passed (`--fd 3`). The app speaks
sd_notify itself, in the few lines below, from its lifespan hooks:
- READY=1 once its startup is done (open your database pools first), so a
  reload waits for the new code to be really ready, not for a delay;
- WATCHDOG=1 every half of WATCHDOG_USEC from a task on the event loop, so a
  loop blocked by a runaway request stops the heartbeats and the worker is
  replaced.
"""
import asyncio
import os
import socket


def sd_notify(message):
    """One datagram to $NOTIFY_SOCKET: all sd_notify(3) is (no-op without it)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)


def heartbeat_interval():
    """Half of WATCHDOG_USEC, if heartbeats are asked of this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return None
    return int(usec) / 2e6


async def heartbeat(interval):
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)


async def lifespan(receive, send):
    tasks = []
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            # Connect to databases, warm caches… here; then say ready.
            interval = heartbeat_interval()
            if interval:
                tasks.append(asyncio.create_task(heartbeat(interval)))
            sd_notify("READY=1")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            for task in tasks:
                task.cancel()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    body = "hello from worker {} pid {} version {}\n".format(
        os.environ.get("SHEEPDOG_WORKER_ID", "-"), os.getpid(), os.environ.get("APP_VERSION", "1")
    ).encode()
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
