#!/usr/bin/env node
// A Kraken subscriber that survives connection loss without losing or reloading anything,
// on stock ioredis (5.x) and no Kraken library. See "Client examples" in docs/protocol.md.
//
//   npm install ioredis        (or NODE_PATH=test/clients/node/node_modules after `npm ci` there)
//   node ioredis-resume.js 10.0.0.1:12355,10.0.0.2:12355 topic1 topic2
//   (or KRAKEN_NODES=10.0.0.1:12355,10.0.0.2:12355 KRAKEN_TOPICS="topic1 topic2" node ioredis-resume.js)
//
// The nodes: the first argument (or KRAKEN_NODES), host:port separated by commas, any nodes
// of one Kraken cluster (or one single node). It connects to the first one; when a
// connection is lost or refused it moves on to the next one of the list (round the list),
// after a jittered backoff. Give each instance the list in its own order to spread them.
//
// How it works:
// - It subscribes to its topics, to __kraken__:resync (loss is then told per topic, and the
//   connection stays open) and to __kraken__:position (the server sends a position token
//   after the messages it pushes, and about once a second while it is idle; a draining
//   node sends a last one before it closes the connection).
// - It keeps the last token. When the connection drops it reconnects, with jittered
//   exponential backoff, to the next node of the list, and sends KRAKEN.RESUME <token>
//   <topics>: the server replays every message published on those topics after the token,
//   oldest first, then live traffic. The token may be another node's: the new node asks
//   that one for what came after it (a drained node keeps answering for
//   drain_resume_window_ms). A topic it cannot replay exactly gets a resync notice instead.
// - onMessage(topic, payload) is called once per message; onResync(topics) per notice, with
//   a list of topics to reload, or "*" for all of them.
//
// Resuming is exact on the same node (a dropped connection, a network blip) and on another
// node of the cluster while the token's node runs or drains (a deploy moves its clients this
// way and nothing is reloaded); a token of a node that was killed, or that left more than
// drain_resume_window_ms ago, gets a resync notice for every topic. To see a resume by
// hand: `kill -USR2 <pid>` drops the connection (it then moves to the next node).
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
let next = 0;            // the index in nodes of the node to connect to next

// ioredis refuses commands it does not know once a connection is subscribed. KRAKEN.RESUME
// is answered like SUBSCRIBE (a confirmation per topic, plus one for __kraken__:resync, i.e.
// one per argument: ioredis counts them right), so it is let through in subscriber mode.
Redis.Command.getFlagMap().VALID_IN_SUBSCRIBER_MODE["kraken.resume"] = true;

// Full jitter: a random wait up to 100 ms * 2^attempt, at most 10 s.
function backoff() {
  return Math.random() * Math.min(10000, 100 * 2 ** attempt++);
}

function connect() {
  // The first node first; after a loss or a refusal the next one, round the list.
  const node = nodes[next];
  next = (next + 1) % nodes.length;
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
    console.log(`lost ${node} (${why}), reconnecting to ${nodes[next]} in ${wait} ms`);
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
