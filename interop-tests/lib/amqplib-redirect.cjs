// Preloaded with `node --require` for amqplib's own test suite.
//
// amqplib's tests dial the default AMQP port (amqp://localhost, i.e.
// localhost:5672, also 127.0.0.1 and [::1]).  Rather than editing their
// files, this rewrites every outgoing TCP connection to a loopback address on
// port 5672 so that it goes to the broker under test, named by
// AMQPLIB_TARGET_PORT (and optionally AMQPLIB_TARGET_HOST for a broker that is
// not on this machine).  The host is kept when the target is local, so the
// IPv6 test still dials ::1.  Connections to any other port (the tests'
// deliberately-closed ports, their own in-process servers) are left alone.
'use strict';
const net = require('node:net');

const targetPort = parseInt(process.env.AMQPLIB_TARGET_PORT || '5672', 10);
const targetHost = process.env.AMQPLIB_TARGET_HOST || '';
const LOOPBACK = new Set([undefined, null, '', 'localhost', '127.0.0.1', '::1', '[::1]']);

function redirect(opts) {
  if (!opts || typeof opts !== 'object' || opts.path) return opts;
  if (parseInt(opts.port, 10) !== 5672 || !LOOPBACK.has(opts.host)) return opts;
  const out = Object.assign({}, opts, { port: targetPort });
  if (targetHost) out.host = targetHost;
  return out;
}

const origConnect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function connect(...args) {
  // Socket#connect(options[, cb]) | (port[, host][, cb]) | (path[, cb]); net.connect
  // normalises to the first form, but accept the others too.
  if (Array.isArray(args[0])) {
    // net.connect() passes node's internal normalised [options, cb] array,
    // tagged with a private symbol: rewrite it in place to keep the tag.
    args[0][0] = redirect(args[0][0]);
  } else if (args[0] !== null && typeof args[0] === 'object') {
    args[0] = redirect(args[0]);
  } else if (typeof args[0] === 'number' || (typeof args[0] === 'string' && /^\d+$/.test(args[0]))) {
    const host = typeof args[1] === 'string' ? args[1] : undefined;
    const r = redirect({ port: args[0], host });
    args[0] = r.port;
    if (typeof args[1] === 'string') args[1] = r.host;
    else if (r.host !== host) args.splice(1, 0, r.host);
  }
  return origConnect.apply(this, args);
};
