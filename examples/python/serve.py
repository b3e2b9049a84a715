"""uvicorn on the socket sheepdog passed (fd 3), with a drain that loses
nothing: what `uvicorn --fd 3 asgi:app` does, plus one second between "stop
accepting" and "close the idle connections" on SIGTERM.

Why: on SIGTERM uvicorn stops accepting and at once closes every connection
that has no request in progress. A connection it accepted a moment before,
whose request has not been read yet, counts as idle: the client gets a reset
instead of an answer. Under a rolling reload that lost a request in about
one run of two here (tests/runtimes.rs). Waiting a second after closing the
listener lets those requests arrive; they are answered with
`Connection: close`.
"""
import asyncio

import uvicorn

DRAIN_GRACE = 1.0


class DrainingServer(uvicorn.Server):
    async def shutdown(self, sockets=None):
        for server in self.servers:
            server.close()  # stop accepting; uvicorn closes it again, harmlessly
        await asyncio.sleep(DRAIN_GRACE)
        await super().shutdown(sockets)


if __name__ == "__main__":
    DrainingServer(uvicorn.Config("asgi:app", fd=3, access_log=False)).run()
