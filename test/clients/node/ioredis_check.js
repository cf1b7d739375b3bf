// ioredis against Kraken's RESP side: subscribe, publish from another client, get the
// message. argv: port. Prints OK and exits 0 when every step held.
const Redis = require("ioredis");
const port = Number(process.argv[2]);
const opts = { host: "127.0.0.1", port, lazyConnect: false, maxRetriesPerRequest: 1, enableReadyCheck: false };
const sub = new Redis(opts);
const pub = new Redis(opts);
const fail = (msg) => { console.log("FAIL " + msg); process.exit(1); };
setTimeout(() => fail("timed out"), 10000).unref();
(async () => {
  if ((await pub.ping()) !== "PONG") fail("ping");
  const n = await sub.subscribe("nodet");
  if (n !== 1) fail("subscribe count " + n);
  const got = new Promise((resolve) => sub.on("message", (ch, msg) => resolve([ch, msg])));
  const r = await pub.publish("nodet", "from-node");
  if (r !== 1) fail("publish reply " + r);
  const [ch, msg] = await got;
  if (ch !== "nodet" || msg !== "from-node") fail("message " + ch + " " + msg);
  // the receivers, as Redis counts them; shard channels apart; the limits named
  if ((await pub.publish("node-nobody", "x")) !== 0) fail("publish to nobody");
  if ((await pub.call("SPUBLISH", "nodet", "s")) !== 0) fail("spublish reached a plain subscriber");
  let refused = null;
  try {
    await pub.publish("nodet", "x".repeat(1024 * 1024 + 1));
  } catch (e) {
    refused = String(e);
  }
  if (!refused || !refused.includes("max_message_bytes")) fail("large publish: " + refused);
  if ((await pub.ping()) !== "PONG") fail("ping after the refusal");
  await sub.unsubscribe("nodet");
  sub.disconnect();
  pub.disconnect();
  console.log("OK");
  process.exit(0);
})().catch((e) => fail(String(e)));
