#!/usr/bin/env python3
"""Crash test: confirmed persistent messages survive `kill -9`.

Starts the WarrenMQ binary on a free port with its own data dir, then for
several rounds: producers (threads, one connection each) publish persistent
messages with publisher confirms to a durable queue bound to a durable
exchange, a consumer takes some messages without acking them, and the broker
is killed with SIGKILL at a random moment. Before one of the restarts, garbage
is appended to a segment file (a torn tail). After the last restart the test
checks:

  - every confirmed message is in the queue exactly once (unconfirmed ones
    may or may not be there: they were never promised);
  - per producer, messages come out in publish order;
  - the messages the consumer held unacked at a crash come back redelivered;
  - the durable exchange, queue and binding are intact;
  - recovery survived the torn tail.

Usage: crash_test.py WARRENMQ_BINARY
Prints "PASS name" / "FAIL name" lines and a closing "N passed, N failed".
"""
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pika

ROUNDS = 4
PRODUCERS = 4
QUEUE = "crash-test-q"
EXCHANGE = "crash-test-x"
BODY_PAD = b"." * 200

results = []


def check(name, ok, detail=""):
    results.append((name, ok))
    print(("PASS " if ok else "FAIL ") + name + (f"  ({detail})" if detail and not ok else ""), flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, binary, data_dir):
        self.binary, self.data_dir, self.port, self.proc = binary, data_dir, free_port(), None
        self.log = open(os.path.join(data_dir, "..", "broker.log"), "ab")

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--data-dir", self.data_dir],
            stdout=self.log, stderr=self.log)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("broker did not start listening")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)

    def url(self):
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2f"


def connect(broker):
    params = pika.URLParameters(broker.url())
    params.socket_timeout = 5
    params.blocked_connection_timeout = 5
    return pika.BlockingConnection(params)


def declare(ch):
    ch.exchange_declare(EXCHANGE, "direct", durable=True)
    ch.queue_declare(QUEUE, durable=True)
    ch.queue_bind(QUEUE, EXCHANGE, "k")


def producer(broker, pid, start_seq, confirmed, stop):
    """Publishes until stopped or the broker dies; records confirmed seqs."""
    seq = start_seq
    try:
        conn = connect(broker)
        ch = conn.channel()
        ch.confirm_delivery()
        while not stop.is_set():
            body = f"{pid}:{seq}:".encode() + BODY_PAD
            ch.basic_publish(EXCHANGE, "k", body, pika.BasicProperties(delivery_mode=2), mandatory=True)
            confirmed[pid].append(seq)  # basic_publish returned: the broker acked it
            seq += 1
    except Exception:
        pass  # the broker was killed under us


def hold_unacked(broker, n, held):
    """Consumes n messages without acking them; records their ids."""
    try:
        conn = connect(broker)
        ch = conn.channel()
        ch.basic_qos(prefetch_count=n)
        for method, _props, body in ch.consume(QUEUE, inactivity_timeout=2):
            if method is None:
                break
            held.append(body.split(b":")[0] + b":" + body.split(b":")[1])
            if len(held) >= n:
                break
        threading.Event().wait()  # keep the connection (and the unacked messages) until the kill
    except Exception:
        pass


def tear_tail(data_dir):
    """Appends a partial record to the newest segment file, as a crash mid-write would."""
    segments = []
    for root, _dirs, files in os.walk(os.path.join(data_dir, "store")):
        segments += [os.path.join(root, f) for f in files if f.endswith(".seg")]
    if not segments:
        return False
    newest = max(segments, key=os.path.getmtime)
    with open(newest, "ab") as f:
        f.write(b"\x00\x00\x10\x00" + os.urandom(37))  # a length prefix promising more than follows
    return True


def main():
    binary = sys.argv[1]
    work = tempfile.mkdtemp(prefix="warrenmq-crash-")
    data_dir = os.path.join(work, "data")
    os.makedirs(data_dir)
    broker = Broker(binary, data_dir)
    confirmed = {p: [] for p in range(PRODUCERS)}
    next_seq = {p: 0 for p in range(PRODUCERS)}
    held_at_crash = []
    torn = False
    rng = random.Random(int(os.environ.get("CRASH_SEED", time.time())))

    broker.start()
    conn = connect(broker)
    declare(conn.channel())
    conn.close()

    for rnd in range(ROUNDS):
        stop = threading.Event()
        threads = [threading.Thread(target=producer, args=(broker, p, next_seq[p], confirmed, stop), daemon=True)
                   for p in range(PRODUCERS)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.3, 1.5))
        held = []
        if rnd == 1:
            holder = threading.Thread(target=hold_unacked, args=(broker, 5, held), daemon=True)
            holder.start()
            deadline = time.time() + 5
            while len(held) < 5 and time.time() < deadline:
                time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        broker.kill9()
        stop.set()
        for t in threads:
            t.join(timeout=10)
        held_at_crash += held
        for p in range(PRODUCERS):
            next_seq[p] = (confirmed[p][-1] + 1 if confirmed[p] else next_seq[p]) + 1_000_000
        if rnd == 2:
            torn = tear_tail(data_dir)
        broker.start()

    total_confirmed = sum(len(v) for v in confirmed.values())
    check("published and confirmed messages across the crashes", total_confirmed > 0, "nothing was confirmed")
    check("a torn segment tail was written before a restart", torn)

    conn = connect(broker)
    ch = conn.channel()
    try:
        ch.exchange_declare(EXCHANGE, "direct", durable=True, passive=True)
        ch.queue_declare(QUEUE, durable=True, passive=True)
        check("durable exchange and queue survive", True)
    except Exception as e:
        check("durable exchange and queue survive", False, repr(e))
        ch = conn.channel()

    seen = {}
    redelivered = set()
    order_ok = True
    last = {}
    while True:
        method, props, body = ch.basic_get(QUEUE, auto_ack=True)
        if method is None:
            break
        pid, seq = body.split(b":")[:2]
        key = (int(pid), int(seq))
        seen[key] = seen.get(key, 0) + 1
        if method.redelivered:
            redelivered.add(pid + b":" + seq)
        if key[1] < last.get(key[0], -1):
            order_ok = False
        last[key[0]] = key[1]

    missing = [(p, s) for p, seqs in confirmed.items() for s in seqs if seen.get((p, s), 0) == 0]
    duplicated = [k for k, n in seen.items() if n > 1]
    check("every confirmed message survived", not missing, f"{len(missing)} of {total_confirmed} missing, e.g. {missing[:3]}")
    check("no message is duplicated", not duplicated, f"{len(duplicated)} duplicated, e.g. {duplicated[:3]}")
    check("per-producer order is kept", order_ok)
    not_redelivered = [h for h in held_at_crash if h not in redelivered]
    check("messages unacked at a crash come back redelivered", held_at_crash and not not_redelivered,
          f"held {len(held_at_crash)}, not redelivered {not_redelivered[:3]}")

    # The binding survived too: a new publish through the exchange lands in the queue.
    ch.confirm_delivery()
    ch.basic_publish(EXCHANGE, "k", b"after", pika.BasicProperties(delivery_mode=2), mandatory=True)
    method, _p, body = ch.basic_get(QUEUE, auto_ack=True)
    check("durable binding survives", method is not None and body == b"after")
    conn.close()
    broker.stop()
    broker.log.flush()
    log_text = open(os.path.join(work, "broker.log"), encoding="utf-8", errors="replace").read()
    check("recovery truncated the torn tail and logged the bytes dropped",
          "truncated=1" in log_text and "bytes_dropped=0" in log_text.replace("truncated=1 bytes_dropped=0", ""),
          "no 'truncated=1' recovery line in the broker log")
    print(f"confirmed {total_confirmed} messages over {ROUNDS} kill -9 rounds; data in {work}")
    passed = sum(1 for _, ok in results if ok)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
