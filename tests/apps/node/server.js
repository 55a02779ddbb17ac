#!/usr/bin/env node
// The Node app of the matrix (docs/apps.md). A release is this file,
// executable, run by baton as `app.VERSION -c cfg.VERSION` with the listening
// socket at fd 3; cfg.VERSION is JSON: {"release": "1.0"}.
//
// GET / answers "release VERSION pid PID"; GET /slow?ms=N answers the same
// after N ms. On SIGTERM it stops accepting and exits once the requests in
// flight are answered (server.close()).
'use strict';
const fs = require('fs');
const http = require('http');

const args = process.argv.slice(2);
if (args.length !== 2 || args[0] !== '-c') {
  console.error('usage: server.js -c CONFIG');
  process.exit(2);
}
const release = JSON.parse(fs.readFileSync(args[1], 'utf8')).release;
if (typeof release !== 'string') {
  console.error(`${args[1]}: no "release" string`);
  process.exit(1);
}
// The socket is ours only if LISTEN_PID names this process (sd_listen_fds(3)).
if (process.env.LISTEN_PID !== String(process.pid) || !(Number(process.env.LISTEN_FDS) >= 1)) {
  console.error('no inherited socket (LISTEN_PID/LISTEN_FDS); run me under baton');
  process.exit(1);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  const reply = (status, body) => {
    res.writeHead(status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  };
  if (url.pathname === '/') {
    reply(200, `release ${release} pid ${process.pid}\n`);
  } else if (url.pathname === '/slow') {
    const ms = Number(url.searchParams.get('ms') || 1000);
    setTimeout(() => reply(200, `release ${release} pid ${process.pid} slept ${ms} ms\n`),
      Math.min(ms, 600000));
  } else {
    reply(404, 'not found\n');
  }
});
// Node calls listen(2) again on the inherited socket, with its default backlog
// of 511 unless told: keep systemd's (Backlog=4096 in app.socket). For an fd,
// Node 20 ignores the `backlog` option and takes only the positional one.
server.listen({ fd: 3 }, 4096, () => {
  console.error(`node[${process.pid}] release ${release}: accepting on fd 3`);
});
process.on('SIGTERM', () => {
  console.error(`node[${process.pid}] release ${release}: SIGTERM, draining`);
  server.close(() => process.exit(0));
});
