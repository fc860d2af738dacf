// Preloaded (node --require) for amqplib's tests: the broker's AMQP port.
//
// amqplib's tests connect to `amqp://localhost` (connect() with no URL,
// 'amqp://localhost?...', {hostname: 'localhost'}, 'amqp://[::1]'), that is
// on port 5672 always; CI's brokers listen on free ports. This gives
// amqplib's connect the port in AMQP_PORT wherever a test names no port (a
// test that names a port, e.g. a closed one, keeps it). The tests themselves
// run unmodified.
'use strict';
const path = require('node:path');

const port = Number.parseInt(process.env.AMQP_PORT, 10);
if (!Number.isInteger(port)) throw new Error('AMQP_PORT is not set');

const mod = require(path.join(process.env.AMQPLIB_DIR, 'lib', 'connect'));
const connect = mod.connect;

function withPort(url) {
  if (!url) return `amqp://localhost:${port}`;
  if (typeof url === 'object') {
    if (url.port || (url.protocol && url.protocol !== 'amqp')) return url;
    return { ...url, port };
  }
  let parsed;
  try {
    parsed = new URL(url);
  } catch (_e) {
    return url;
  }
  if (parsed.protocol !== 'amqp:' || parsed.port) return url;
  parsed.port = String(port);
  return parsed.toString();
}

mod.connect = (url, socketOptions, openCallback) => connect(withPort(url), socketOptions, openCallback);
