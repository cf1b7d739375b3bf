"""redis-py against Kraken's RESP side: subscribe, publish from another client, get the
message; argv: port, protocol (2 or 3). Prints OK and exits 0 when every step held."""
import sys
import time

import redis

port = int(sys.argv[1])
proto = int(sys.argv[2]) if len(sys.argv) > 2 else 2
kw = {"protocol": proto} if proto == 3 else {}
try:
    sub = redis.Redis(host="127.0.0.1", port=port, **kw)
except TypeError:  # redis-py without RESP3 support (before redis-py 5)
    print("FAIL this redis-py (%s) has no RESP3" % redis.__version__)
    sys.exit(1)
pub = redis.Redis(host="127.0.0.1", port=port)
assert pub.ping() is True
assert pub.echo("x") == b"x"
ps = sub.pubsub()
ps.subscribe("pyt")
m = None
for _ in range(100):
    m = ps.get_message(timeout=0.1)
    if m:
        break
assert m and m["type"] == "subscribe" and m["channel"] == b"pyt" and m["data"] == 1, m
assert pub.publish("pyt", "hello") == 1
got = None
for _ in range(100):
    got = ps.get_message(timeout=0.1)
    if got:
        break
assert got and got["type"] == "message" and got["data"] == b"hello", got
assert pub.pubsub_numsub("pyt") == [(b"pyt", 1)], pub.pubsub_numsub("pyt")
# PUBLISH answers the receivers (0 with none, 2 with two), as Redis does
assert pub.publish("py-nobody", "x") == 0
sub2 = redis.Redis(host="127.0.0.1", port=port)
ps2 = sub2.pubsub()
ps2.subscribe("pyt")
m = None
for _ in range(100):
    m = ps2.get_message(timeout=0.1)
    if m:
        break
assert m and m["type"] == "subscribe", m
assert pub.publish("pyt", "two") == 2
# shard channels are their own namespace: nobody holds the shard channel "pyt"
assert pub.execute_command("SPUBLISH", "pyt", "s") == 0
assert pub.execute_command("PUBSUB", "SHARDNUMSUB", "pyt") == [b"pyt", 0]
# the limits of the memcached protocol hold here too: refused, named, the connection open
try:
    pub.publish("pyt", "x" * (1024 * 1024 + 1))
    raise AssertionError("a publish over max_message_bytes was accepted")
except redis.exceptions.ResponseError as e:
    assert "max_message_bytes" in str(e), str(e)
assert pub.ping() is True
ps2.close()
ps.unsubscribe("pyt")
ps.close()
print("OK")
