#!/usr/bin/env node
// A Kraken subscriber that survives connection loss without losing or reloading anything,
// on stock ioredis (5.x) and no Kraken library. See "Client examples" in docs/protocol.md.
//
//   npm install ioredis        (or NODE_PATH=test/clients/node/node_modules after `npm ci` there)
//   node ioredis-resume.js 10.0.0.1:12355,10.0.0.2:12355 topic1 topic2
//   (or KRAKEN_NODES=... KRAKEN_TOPICS="topic1 topic2" node ioredis-resume.js)
//
// How it works:
// - It subscribes to its topics, to __kraken__:resync (loss is then told per topic, and the
//   connection stays open) and to __kraken__:position (the server sends a position token
//   after the messages it pushes, and about once a second while it is idle).
// - It keeps the last token. When the connection drops it reconnects, with jittered
//   exponential backoff, to any of the nodes, and sends KRAKEN.RESUME <token> <topics>: the
//   server replays every message published on those topics after the token, oldest first,
//   then live traffic. A topic it cannot replay exactly gets a resync notice instead.
// - onMessage(topic, payload) is called once per message; onResync(topics) per notice, with
//   a list of topics to reload, or "*" for all of them.
//
// Not yet: resuming on ANOTHER node. A token names the node that issued it; today any other
// node answers with a resync notice for every topic (nothing is lost, but the application
// reloads everything). Resuming on the same node (a dropped connection, a network blip) is
// exact. To see a resume by hand: `kill -USR2 <pid>` drops the connection.
"use strict";
const Redis = require("ioredis");

const nodes = (process.argv[2] || process.env.KRAKEN_NODES || "127.0.0.1:12355").split(",");
const topics = process.argv.length > 3 ? process.argv.slice(3)
  : (process.env.KRAKEN_TOPICS || "").split(" ").filter(Boolean);
if (topics.length === 0) {
  console.error("usage: ioredis-resume.js host:port[,host:port...] topic [topic...]");
  process.exit(2);
}

// ---- the application's hooks (here they only log, one line each)
function onMessage(topic, payload) {
  console.log(`message ${topic} ${payload}`);
}
function onResync(topics) {
  console.log(`resync ${topics === "*" ? "*" : topics.join(" ")}`);
}

// ---- state that outlives connections
let token = null;        // the last position token
let since = new Map();   // topic -> messages handed to onMessage after that token
let skip = new Map();    // topic -> replayed messages still to drop (already handed over)
let attempt = 0;         // failed attempts in a row (the backoff's exponent)
let conn = null;         // the current connection, if any

// ioredis refuses commands it does not know once a connection is subscribed. KRAKEN.RESUME
// is answered like SUBSCRIBE (a confirmation per topic, plus one for __kraken__:resync, i.e.
// one per argument: ioredis counts them right), so it is let through in subscriber mode.
Redis.Command.getFlagMap().VALID_IN_SUBSCRIBER_MODE["kraken.resume"] = true;

// Full jitter: a random wait up to 100 ms * 2^attempt, at most 10 s.
function backoff() {
  return Math.random() * Math.min(10000, 100 * 2 ** attempt++);
}

function connect() {
  const node = nodes[Math.floor(Math.random() * nodes.length)];
  const [host, port] = node.split(":");
  // Reconnecting and resubscribing are done here, not by ioredis: after a loss a plain
  // SUBSCRIBE would silently skip what was published meanwhile.
  const r = new Redis({
    host, port: Number(port), lazyConnect: true, enableReadyCheck: false,
    autoResubscribe: false, retryStrategy: () => null, enableOfflineQueue: false,
  });
  conn = r;
  let live = false;   // tokens count only once our topics are in force on this connection
  let gone = false;
  const lost = (why) => {
    if (gone) return;
    gone = true;
    conn = null;
    r.disconnect();
    const wait = Math.round(backoff());
    console.log(`lost ${node} (${why}), reconnecting in ${wait} ms`);
    setTimeout(connect, wait);
  };
  r.on("error", (e) => console.log(`error ${node}: ${e.message}`));
  r.on("close", () => lost("closed"));
  r.on("message", (channel, payload) => {
    if (channel === "__kraken__:position") {
      if (!live) return;   // a token from before the resume covers none of our topics
      token = payload;
      since = new Map();
      skip = new Map();
    } else if (channel === "__kraken__:resync") {
      onResync(payload === "*" ? "*" : payload.split(" "));
    } else if (skip.get(channel) > 0) {
      // Replayed, but already handed over before the connection dropped (after the token,
      // before the next one arrived): a topic's replay is in the order it was delivered in.
      skip.set(channel, skip.get(channel) - 1);
    } else {
      since.set(channel, (since.get(channel) || 0) + 1);
      onMessage(channel, payload);
    }
  });
  (async () => {
    await r.connect();
    console.log(`connected ${node}, ${token ? "resuming" : "subscribing"}`);
    await r.subscribe("__kraken__:position");   // enters ioredis' subscriber mode
    if (token) {
      skip = new Map(since);
      try {
        await r.call("kraken.resume", token, ...topics);
      } catch (e) {
        // -ERR bad position: not a token this server made; start over, reload everything
        if (!/bad position/.test(e.message)) throw e;
        token = null;
        since = new Map();
        skip = new Map();
        onResync("*");
        await r.subscribe(...topics, "__kraken__:resync");
      }
    } else {
      await r.subscribe(...topics, "__kraken__:resync");
    }
    live = true;
    attempt = 0;
  })().catch((e) => lost(e.message));
}

process.on("SIGUSR2", () => {
  if (conn && conn.stream) {
    console.log("dropping the connection (SIGUSR2)");
    conn.stream.destroy();
  }
});
connect();
