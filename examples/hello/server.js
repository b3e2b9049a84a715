// A hello-world HTTP worker for sheepdog. It serves on fd 3 when sheepdog (or
// systemd) passed a socket (LISTEN_FDS), else on $PORT, and answers with its
// worker id and pid, so you can watch the requests spread over the flock.
//
// On SIGTERM it drains: it stops accepting, answers each request that is
// still arriving on a kept-alive connection with `Connection: close`, closes
// the connections that stay idle, and exits once none is left.
'use strict';
const http = require('http');

const id = process.env.SHEEPDOG_WORKER_ID ?? '-';
const version = process.env.APP_VERSION ?? '1';
let draining = false;

const server = http.createServer((req, res) => {
  if (draining) res.setHeader('Connection', 'close');
  res.setHeader('Content-Type', 'text/plain');
  res.end(`hello from worker ${id} pid ${process.pid} version ${version}\n`);
});
server.keepAliveTimeout = 5000;

const listenFds = parseInt(process.env.LISTEN_FDS ?? '0', 10);
const listenPid = parseInt(process.env.LISTEN_PID ?? '0', 10);
if (listenFds >= 1 && listenPid === process.pid) {
  server.listen({ fd: 3 });
} else {
  server.listen(parseInt(process.env.PORT ?? '8080', 10), '127.0.0.1');
}

process.on('SIGTERM', () => {
  draining = true;
  // Stop accepting; the callback runs once every connection has closed.
  server.close(() => process.exit(0));
  // Idle keep-alive connections get a short grace for a request already on
  // its way, then are closed; busy ones close after their response.
  setTimeout(() => server.closeIdleConnections(), 1000).unref();
});
