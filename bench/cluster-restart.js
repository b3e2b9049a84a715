// The classic Node cluster master that keeps its workers up: a worker that
// dies unasked is forked again at once (round-robin scheduling: the master
// accepts connections and hands them over). Usage: PORT=8080 WORKERS=1 node cluster-restart.js
'use strict';
const cluster = require('cluster');
const path = require('path');
if (cluster.isPrimary) {
  const n = parseInt(process.env.WORKERS ?? '1', 10);
  let stopping = false;
  for (let i = 0; i < n; i++) cluster.fork({ SHEEPDOG_WORKER_ID: String(i) });
  cluster.on('exit', (worker) => { if (!stopping) cluster.fork({ SHEEPDOG_WORKER_ID: '0' }); });
  process.on('SIGTERM', () => {
    stopping = true;
    for (const w of Object.values(cluster.workers)) w.process.kill('SIGTERM');
    process.exit(0);
  });
} else {
  require(path.join(__dirname, '..', 'examples', 'hello', 'server.js'));
}
