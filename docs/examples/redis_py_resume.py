#!/usr/bin/env python3
"""A Kraken subscriber that survives connection loss without losing or reloading anything,
on stock redis-py (4.3.4 and later, RESP2) and no Kraken library. See "Client examples" in
docs/protocol.md.

    apt-get install python3-redis          (or: pip install redis)
    python3 redis_py_resume.py 10.0.0.1:12355,10.0.0.2:12355 topic1 topic2
    (or KRAKEN_NODES=10.0.0.1:12355,10.0.0.2:12355 KRAKEN_TOPICS="topic1 topic2" python3 redis_py_resume.py)

The nodes: the first argument (or KRAKEN_NODES), host:port separated by commas, any nodes of
one Kraken cluster (or one single node). It connects to the first one; when a connection is
lost or refused it moves on to the next one of the list (round the list), after a jittered
backoff. Give each instance the list in its own order to spread them.

How it works:
- It subscribes to its topics, to __kraken__:resync (loss is then told per topic, and the
  connection stays open) and to __kraken__:position (the server sends a position token
  after the messages it pushes, and about once a second while it is idle; a draining node
  sends a last one before it closes the connection).
- It keeps the last token. When the connection drops it reconnects, with jittered
  exponential backoff, to the next node of the list, and sends KRAKEN.RESUME <token>
  <topics>: the server replays every message published on those topics after the token,
  oldest first, then live traffic. The token may be another node's: the new node asks that
  one for what came after it (a drained node keeps answering for drain_resume_window_ms).
  A topic it cannot replay exactly gets a resync notice instead.
- on_message(topic, payload) is called once per message; on_resync(topics) per notice,
  with a list of topics to reload, or "*" for all of them.

redis-py's PubSub object resubscribes by itself after a reconnect (a plain SUBSCRIBE, which
would silently skip what was published meanwhile), so this drives one redis-py Connection
directly: send_command, then read_response for each push.

Resuming is exact on the same node (a dropped connection, a network blip) and on another
node of the cluster while the token's node runs or drains (a deploy moves its clients this
way and nothing is reloaded); a token of a node that was killed, or that left more than
drain_resume_window_ms ago, gets a resync notice for every topic. To see a resume by hand:
`kill -USR2 <pid>` drops the connection (it then moves to the next node).
"""
import os
import random
import signal
import sys
import time

import redis
from redis.connection import Connection

NODES = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("KRAKEN_NODES", "127.0.0.1:12355")).split(",")
TOPICS = sys.argv[2:] or os.environ.get("KRAKEN_TOPICS", "").split()
POSITION, RESYNC = "__kraken__:position", "__kraken__:resync"


# ---- the application's hooks (here they only log, one line each)
def on_message(topic, payload):
    print(f"message {topic} {payload.decode(errors='replace')}", flush=True)


def on_resync(topics):
    print(f"resync {topics if topics == '*' else ' '.join(topics)}", flush=True)


# ---- state that outlives connections
token = None  # the last position token
since = {}    # topic -> messages handed to on_message after that token
skip = {}     # topic -> replayed messages still to drop (already handed over)
drop = False  # SIGUSR2 asked to drop the connection


def on_usr2(signum, frame):
    global drop
    drop = True


def session(node):
    """One connection: subscribe or resume, then hand over what arrives until it fails.
    Returns whether it connected at all."""
    global token, since, skip, drop
    host, port = node.split(":")
    conn = Connection(host=host, port=int(port), socket_connect_timeout=5, socket_keepalive=True)
    connected = False
    try:
        conn.connect()
        connected, drop = True, False
        print(f"connected {node}, {'resuming' if token else 'subscribing'}", flush=True)
        if token:
            skip = dict(since)
            conn.send_command("KRAKEN.RESUME", token, *TOPICS)
        else:
            conn.send_command("SUBSCRIBE", *TOPICS, RESYNC)
        # Only now: every token that arrives covers our topics.
        conn.send_command("SUBSCRIBE", POSITION)
        while not drop:
            if not conn.can_read(timeout=1.0):
                continue
            try:
                kind, channel, data = conn.read_response()
            except redis.ResponseError as e:
                # -ERR bad position: not a token this server made; start over, reload all
                if "bad position" not in str(e):
                    raise
                token, since, skip = None, {}, {}
                on_resync("*")
                conn.send_command("SUBSCRIBE", *TOPICS, RESYNC)
                continue
            if kind != b"message":
                continue  # a subscribe confirmation
            channel = channel.decode()
            if channel == POSITION:
                token, since, skip = data.decode(), {}, {}
            elif channel == RESYNC:
                text = data.decode()
                on_resync("*" if text == "*" else text.split(" "))
            elif skip.get(channel, 0) > 0:
                # Replayed, but already handed over before the connection dropped (after the
                # token, before the next one arrived): a topic's replay is in delivery order.
                skip[channel] -= 1
            else:
                since[channel] = since.get(channel, 0) + 1
                on_message(channel, data)
        print("dropping the connection (SIGUSR2)", flush=True)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        print(f"lost {node} ({e})", flush=True)
    finally:
        conn.disconnect()
    return connected


def main():
    if not TOPICS:
        sys.exit("usage: redis_py_resume.py host:port[,host:port...] topic [topic...]")
    signal.signal(signal.SIGUSR2, on_usr2)
    attempt = 0
    i = 0  # the first node first; after a loss or a refusal the next one, round the list
    while True:
        if session(NODES[i]):
            attempt = 0  # it was connected: start the backoff over
        i = (i + 1) % len(NODES)
        # Full jitter: a random wait up to 100 ms * 2^attempt, at most 10 s.
        wait = random.uniform(0, min(10.0, 0.1 * 2 ** attempt))
        attempt += 1
        print(f"reconnecting to {NODES[i]} in {int(wait * 1000)} ms", flush=True)
        time.sleep(wait)


if __name__ == "__main__":
    main()
