// sheepdog's Node preload: makes `server.listen(port)` and `app.listen(port)`
// use the socket sheepdog passed (fd 3, then 4, ...) instead of binding a
// port of their own, so that an app written for `node server.js` runs under
// sheepdog unmodified. Load it with
//
//   [env]
//   NODE_OPTIONS = "--require /usr/share/sheepdog/node/listen.js"
//
// Only explicit ports are taken over: listen(3000), listen('3000'),
// listen({port: 3000}), with or without a host, backlog or callback.
// listen({fd}), a handle, a unix socket path and listen() are left as
// written. The first such call gets fd 3, the next fd 4, and so on while
// there are passed sockets; later ones bind as written.
'use strict';
const net = require('net');

const passed = parseInt(process.env.LISTEN_FDS || '0', 10);
const owner = parseInt(process.env.LISTEN_PID || '0', 10);
// The sockets are this process's when LISTEN_PID names it, or its parent
// when a wrapper (npm start, sh -c) forked node rather than exec it.
const ours = passed > 0 && (owner === process.pid || owner === process.ppid);

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

if (ours) {
  const listen = net.Server.prototype.listen;
  let next = 0;
  net.Server.prototype.listen = function sheepdogListen(...args) {
    if (next >= passed || !asksForAPort(args)) return listen.apply(this, args);
    const fd = 3 + next;
    next += 1;
    const callback = args.find((arg) => typeof arg === 'function');
    return callback ? listen.call(this, { fd }, callback) : listen.call(this, { fd });
  };
}
