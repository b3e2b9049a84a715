// The classic Node cluster master (default round-robin scheduling on Linux):
// the primary accepts every connection and hands it to a worker.
// On SIGHUP, the classic one-by-one rolling restart: fork a new worker, wait
// until it listens, then SIGTERM an old one and wait for it to exit; prints
// "reloaded" when done. Usage: PORT=8080 WORKERS=2 node cluster.js
'use strict';
const cluster = require('cluster');
const path = require('path');
if (cluster.isPrimary) {
  const n = parseInt(process.env.WORKERS ?? '2', 10);
  for (let i = 0; i < n; i++) cluster.fork({ SHEEPDOG_WORKER_ID: String(i) });
  let rolling = false;
  process.on('SIGHUP', async () => {
    if (rolling) return;
    rolling = true;
    for (const old of Object.values(cluster.workers)) {
      const fresh = cluster.fork({ SHEEPDOG_WORKER_ID: old.process.env?.SHEEPDOG_WORKER_ID ?? '0' });
      await new Promise((resolve) => fresh.once('listening', resolve));
      const gone = new Promise((resolve) => old.once('exit', resolve));
      old.process.kill('SIGTERM');
      await gone;
    }
    rolling = false;
    process.stdout.write('reloaded\n');
  });
  process.on('SIGTERM', () => { for (const w of Object.values(cluster.workers)) w.process.kill('SIGTERM'); process.exit(0); });
} else {
  require(path.join(__dirname, '..', 'examples', 'hello', 'server.js'));
}
