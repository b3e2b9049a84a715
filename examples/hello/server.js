// A hello-world HTTP worker for sheepdog. It serves on fd 3 when sheepdog (or
// systemd) passed a socket (LISTEN_FDS), else on $PORT, and answers with its
// worker id and pid, so you can watch the requests spread over the flock.
//
// On SIGTERM it drains: it stops accepting, answers each request that is
// still arriving on a kept-alive connection with `Connection: close`, closes
// the connections that stay idle, and exits once none is left.
'use strict';
const http = require('http');
const net = require('net');

const id = process.env.SHEEPDOG_WORKER_ID ?? '-';
const version = process.env.APP_VERSION ?? '1';
let draining = false;

const server = http.createServer((req, res) => {
  if (draining) res.setHeader('Connection', 'close');
  const body = `hello from worker ${id} pid ${process.pid} version ${version}\n`;
  res.setHeader('Content-Type', 'text/plain');
  // GET /sleep/MS (up to 10 s): the status line at once, the body MS later:
  // a request in flight, to watch a drain finish it.
  const sleep = /^\/sleep\/(\d+)$/.exec(req.url);
  if (sleep) {
    res.writeHead(200);
    res.write('started\n');
    setTimeout(() => res.end(body), Math.min(parseInt(sleep[1], 10), 10000));
    return;
  }
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(body);
});
server.keepAliveTimeout = 5000;

const listenFds = parseInt(process.env.LISTEN_FDS ?? '0', 10);
const listenPid = parseInt(process.env.LISTEN_PID ?? '0', 10);
// With an IPC channel (sheepdog's readiness = "node-ipc", pm2, cluster):
// say 'ready' once listening, and answer heartbeat pings.
const ready = () => {
  console.log(`worker ${id} (pid ${process.pid}) serving version ${version}`);
  if (process.send) process.send('ready');
};
process.on('message', (m) => { if (m === 'ping') process.send('pong'); });
if (listenFds >= 1 && listenPid === process.pid) {
  server.listen({ fd: 3 }, ready);
} else {
  server.listen(parseInt(process.env.PORT ?? '8080', 10), '127.0.0.1', ready);
}

process.on('SIGTERM', () => {
  draining = true;
  // Stop accepting, but leave open connections alone: http.Server#close()
  // (Node >= 19) would also destroy idle keep-alive sockets at once, losing
  // requests already on their way. The callback runs once all have closed.
  net.Server.prototype.close.call(server, () => process.exit(0));
  // Each connection closes after its next response (Connection: close);
  // those that stay idle get a short grace, then are closed.
  setTimeout(() => server.closeIdleConnections(), 1000).unref();
});
