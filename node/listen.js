// sheepdog's Node preload. sheepdog loads it into every Node worker by
// itself (NODE_OPTIONS=--require …), so that an app written for `node app.js`
// or for pm2 runs under sheepdog unchanged:
//
// - `server.listen(port)` and `app.listen(port)` use the socket sheepdog
//   passed (fd 3, then 4, ...) instead of binding a port of their own;
// - a worker told to stop with SIGTERM that handles only SIGINT (pm2's way)
//   gets SIGINT's handlers, and one told SIGINT that handles only SIGTERM
//   gets SIGTERM's: the app's own graceful stop runs either way;
// - in a worker that is a Node cluster worker (sheepdog sets NODE_UNIQUE_ID
//   when it gives the worker an IPC channel: a seed-style cluster master then
//   runs its worker branch), every listen() binds or takes its socket in the
//   worker itself, since sheepdog hands out no handles;
// - every 2 s it reports the worker's V8 heap and its longest event-loop
//   delay over its IPC channel (`sheepdog top`, `status --json`, /metrics);
// - when sheepdog asks which port the app listens on (it was given no
//   address), the first listen(port) tells it, and the process ends there.
//
// Only explicit ports are taken over: listen(3000), listen('3000'),
// listen({port: 3000}), with or without a host, backlog or callback.
// listen({fd}), a handle, a unix socket path and listen() are left as
// written. The first such call gets fd 3, the next fd 4, and so on while
// there are passed sockets; later ones bind as written.
'use strict';
const net = require('net');
const fs = require('fs');

const passed = parseInt(process.env.LISTEN_FDS || '0', 10);
const owner = parseInt(process.env.LISTEN_PID || '0', 10);
// The sockets are this process's when LISTEN_PID names it, or its parent
// when a wrapper (npm start, sh -c) forked node rather than exec it.
const ours = passed > 0 && (owner === process.pid || owner === process.ppid);
const probe = parseInt(process.env.SHEEPDOG_PORT_PROBE || '-1', 10);

function isPort(value) {
  return (typeof value === 'number' && Number.isInteger(value)) ||
    (typeof value === 'string' && /^\d+$/.test(value));
}

function asksForAPort(args) {
  const first = args[0];
  if (isPort(first)) return true;
  return first !== null && typeof first === 'object' && !Array.isArray(first) &&
    isPort(first.port) && first.fd === undefined && first.path === undefined && first.handle === undefined;
}

// The port and host a listen(port[, host]) or listen({port, host}) asks for.
function wanted(args) {
  const first = args[0];
  if (isPort(first)) return { port: Number(first), host: typeof args[1] === 'string' ? args[1] : null };
  return { port: Number(first.port), host: typeof first.host === 'string' ? first.host : null };
}

// Tells sheepdog the address, then ends at once: nothing of the app's runs
// past its listen() (no handler, no timer), and the workers start next.
function report(args) {
  try {
    fs.writeSync(probe, JSON.stringify(wanted(args)) + '\n');
  } finally {
    process.kill(process.pid, 'SIGKILL');
  }
}

const cluster = require('cluster');
const clusterWorker = cluster.isWorker === true;

function plain(value) {
  if (value === null || typeof value !== 'object') return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

// The same call, made `exclusive` where it can say so: a port or a path
// (also when a host name is looked up first, which ends asynchronously).
function exclusive(args) {
  const callback = args.find((arg) => typeof arg === 'function');
  const rest = callback ? [callback] : [];
  const first = args[0];
  if (plain(first)) {
    return first.fd === undefined ? [Object.assign({}, first, { exclusive: true })].concat(rest) : args;
  }
  if (typeof first === 'number' || typeof first === 'string') {
    const options = isPort(first) ? { port: first } : { path: first };
    if (options.port !== undefined && typeof args[1] === 'string') options.host = args[1];
    const backlog = args.slice(1).find((arg) => typeof arg === 'number');
    if (backlog !== undefined) options.backlog = backlog;
    options.exclusive = true;
    return [options].concat(rest);
  }
  return args;
}

const listen = net.Server.prototype.listen;
let next = 0;
net.Server.prototype.listen = function sheepdogListen(...args) {
  if (probe >= 0 && asksForAPort(args)) report(args);
  if (ours && next < passed && asksForAPort(args)) {
    const fd = 3 + next;
    next += 1;
    const callback = args.find((arg) => typeof arg === 'function');
    // Node would listen(2) again with its own 511; the kernel caps this at
    // somaxconn, which is what sheepdog and systemd give the socket.
    // (listen({fd}) takes a backlog only as its second argument.)
    args = callback ? [{ fd }, 65535, callback] : [{ fd }, 65535];
  }
  // listen({fd: 3}) as written (an app made for sheepdog) would listen(2)
  // again with Node's 511: the socket keeps sheepdog's backlog instead.
  const first = args[0];
  if (ours && plain(first) && Number.isInteger(first.fd) && first.fd >= 3 && first.fd < 3 + passed &&
      first.backlog === undefined && !args.slice(1).some((arg) => typeof arg === 'number')) {
    args = [first, 65535].concat(args.slice(1));
  }
  if (!clusterWorker) return listen.apply(this, args);
  // A cluster worker asks its primary for the socket unless the listen is
  // `exclusive`, which listen({fd}), listen() and a handle cannot say: for
  // the length of the call (those decide synchronously) it is a primary.
  cluster.isPrimary = true;
  cluster.isMaster = true;
  try {
    return listen.apply(this, exclusive(args));
  } finally {
    cluster.isPrimary = false;
    cluster.isMaster = false;
  }
};

// SIGTERM (sheepdog's default stop signal) to an app that handles only
// SIGINT, as pm2 apps do, runs the app's SIGINT handlers; and the other way
// round. An app that handles the signal it got, or neither, is left alone:
// with neither, Node's default ends the process, as it would have.
function handlers(signal) {
  return process.listeners(signal).filter((listener) => listener.sheepdogRelay !== true);
}

function relay(got, other) {
  function sheepdogRelay() {
    if (handlers(got).length > 0) return;
    if (handlers(other).length > 0) {
      process.emit(other, other);
      return;
    }
    process.removeListener(got, sheepdogRelay);
    process.kill(process.pid, got);
  }
  sheepdogRelay.sheepdogRelay = true;
  process.on(got, sheepdogRelay);
}

// Only in the worker itself: its children keep Node's own behaviour.
if (ours) {
  relay('SIGTERM', 'SIGINT');
  relay('SIGINT', 'SIGTERM');
}

// The heap and the event loop's lag, for `sheepdog top` and /metrics, over
// the IPC channel sheepdog gave (never keeping the process alive).
if (ours && typeof process.send === 'function') {
  const { monitorEventLoopDelay } = require('perf_hooks');
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  const report = setInterval(() => {
    if (!process.connected) return;
    const memory = process.memoryUsage();
    const lag = Number.isFinite(delay.max) ? delay.max / 1e6 : 0;
    delay.reset();
    try {
      process.send({ sheepdog: 'stats', heap_used: memory.heapUsed, heap_total: memory.heapTotal, lag_ms: lag });
    } catch (_) {
      // The channel is gone: sheepdog is going away.
    }
  }, 2000);
  report.unref();
}
