// The classic Node cluster master (default round-robin scheduling on Linux):
// the primary accepts every connection and hands it to a worker.
// Usage: PORT=8080 WORKERS=2 node cluster.js
'use strict';
const cluster = require('cluster');
const path = require('path');
if (cluster.isPrimary) {
  const n = parseInt(process.env.WORKERS ?? '2', 10);
  for (let i = 0; i < n; i++) cluster.fork({ SHEEPDOG_WORKER_ID: String(i) });
  process.on('SIGTERM', () => { for (const w of Object.values(cluster.workers)) w.kill(); process.exit(0); });
} else {
  require(path.join(__dirname, '..', 'examples', 'hello', 'server.js'));
}
