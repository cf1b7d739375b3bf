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
  await sub.unsubscribe("nodet");
  sub.disconnect();
  pub.disconnect();
  console.log("OK");
  process.exit(0);
})().catch((e) => fail(String(e)));
