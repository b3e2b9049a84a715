// Every request's latency over time, for the reload picture: CONNECTIONS
// closed loops of GET / (keep-alive, or a new connection each with MODE=close)
// for SECONDS; then one line per request on stdout: "start_ms latency_ms status"
// (start_ms in wall-clock epoch milliseconds, status 0 for a socket error or
// a 5 s timeout). Usage: node latency-probe.js PORT SECONDS CONNECTIONS MODE
'use strict';
const http = require('http');

const [port, seconds, connections, mode] = process.argv.slice(2);
const keepAlive = mode !== 'close';
const end = Date.now() + Number(seconds) * 1000;
const lines = [];

function loop(agent) {
  if (Date.now() >= end) return Promise.resolve();
  return new Promise((resolve) => {
    const wall = Date.now();
    const t0 = process.hrtime.bigint();
    let done = false;
    const finish = (status) => {
      if (done) return;
      done = true;
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      lines.push(`${wall} ${ms.toFixed(3)} ${status}`);
      // After a failure, a pause: a refused connect must not spin the loop.
      setTimeout(resolve, status === 200 ? 0 : 5);
    };
    const request = http.get(
      { host: '127.0.0.1', port: Number(port), path: '/', agent, headers: keepAlive ? {} : { Connection: 'close' } },
      (response) => {
        response.resume();
        response.on('end', () => finish(response.statusCode));
        response.on('error', () => finish(0));
      },
    );
    request.setTimeout(5000, () => request.destroy(new Error('timeout')));
    request.on('error', () => finish(0));
  }).then(() => loop(agent));
}

const loops = [];
for (let i = 0; i < Number(connections); i++) {
  loops.push(loop(keepAlive ? new http.Agent({ keepAlive: true, maxSockets: 1 }) : false));
}
Promise.all(loops).then(() => {
  process.stdout.write(lines.join('\n') + '\n', () => process.exit(0));
});
