#!/usr/bin/env python3
"""Quick end-to-end checks of a broker with pika (the blocking API).

Usage: pika_smoke.py [AMQP_URL]   (default: $AMQP_URL, else the local guest URL)

Each check is a function below; every check runs on fresh, uniquely named
queues and exchanges, so checks are independent and the script can be pointed
at a shared broker.  Prints one line per check, then a final line of the form
"N passed, N failed"; exits 1 if any check failed.
"""

import os
import sys
import time
import traceback
import uuid

import pika
from pika.exceptions import ChannelClosedByBroker, UnroutableError

URL = (sys.argv[1] if len(sys.argv) > 1 else None) or os.environ.get(
    "AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"
)
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def connect():
    params = pika.URLParameters(URL)
    params.blocked_connection_timeout = 30
    params.socket_timeout = 10
    return pika.BlockingConnection(params)


def uniq(prefix):
    return f"pika-smoke.{prefix}.{uuid.uuid4().hex[:12]}"


def props(**kw):
    return pika.BasicProperties(**kw)


def drain(conn, seconds):
    """Let the connection process I/O for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)


def wait_for(conn, pred, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not pred():
        if time.monotonic() > deadline:
            return False
        conn.process_data_events(time_limit=0.05)
    return True


def assert_count(ch, queue, n, seconds=5.0):
    """The queue holds n ready messages, allowing for acks, nacks and
    publishes still on their way (AMQP does not order them with queue.declare
    on every broker)."""
    deadline = time.monotonic() + seconds
    while True:
        count = ch.queue_declare(queue=queue, passive=True).method.message_count
        if count == n or time.monotonic() > deadline:
            break
        ch.connection.process_data_events(time_limit=0.1)
    assert count == n, f"queue {queue}: {count} messages, expected {n}"


def expect_channel_error(code, fn):
    """Run fn(); it must close the channel with the given reply code."""
    try:
        fn()
    except ChannelClosedByBroker as e:
        assert e.reply_code == code, f"expected {code}, got {e.reply_code} {e.reply_text}"
        return e
    raise AssertionError(f"expected channel.close {code}, nothing raised")


@check
def server_handshake():
    conn = connect()
    try:
        # The public capability helpers read connection.start's server properties.
        assert conn.publisher_confirms_supported, "publisher_confirms capability missing"
        assert conn.basic_nack_supported, "basic.nack capability missing"
        assert conn.consumer_cancel_notify_supported, "consumer_cancel_notify capability missing"
        assert conn.exchange_exchange_bindings_supported, "exchange_exchange_bindings missing"
        assert conn.is_open
    finally:
        conn.close()
    assert conn.is_closed


@check
def publish_consume_ack():
    conn = connect()
    ch = conn.channel()
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    bodies = [f"msg-{i}".encode() for i in range(5)]
    for b in bodies:
        ch.basic_publish("", q, b, props(content_type="text/plain", headers={"i": b.decode()}))
    got = []

    def on_msg(c, method, properties, body):
        assert properties.content_type == "text/plain"
        assert properties.headers["i"] == body.decode()
        assert method.routing_key == q and not method.redelivered
        got.append(body)
        c.basic_ack(method.delivery_tag)

    tag = ch.basic_consume(q, on_msg)
    assert wait_for(conn, lambda: len(got) == 5), f"got {got}"
    assert got == bodies, f"out of order: {got}"
    ch.basic_cancel(tag)
    # Everything was acked: the queue is empty.
    assert_count(ch, q, 0)
    conn.close()


@check
def nack_requeue_and_discard():
    conn = connect()
    ch = conn.channel()
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.basic_publish("", q, b"again")
    seen = []

    def on_msg(c, method, _p, body):
        seen.append(method.redelivered)
        if len(seen) == 1:
            c.basic_nack(method.delivery_tag, requeue=True)
        else:
            c.basic_nack(method.delivery_tag, requeue=False)

    ch.basic_consume(q, on_msg)
    assert wait_for(conn, lambda: len(seen) >= 2), f"seen {seen}"
    drain(conn, 0.3)
    assert seen == [False, True], f"redelivered flags {seen}"
    ch.close()
    ch = conn.channel()
    # Nacked without requeue: dropped (no DLX configured).
    assert_count(ch, q, 0)
    # basic.reject requeue then multiple-nack.
    for i in range(3):
        ch.basic_publish("", q, str(i).encode())
    ch.basic_qos(prefetch_count=10)
    tags = []
    ch.basic_consume(q, lambda c, m, p, b: tags.append(m.delivery_tag))
    assert wait_for(conn, lambda: len(tags) == 3)
    ch.basic_nack(tags[-1], multiple=True, requeue=True)
    assert wait_for(conn, lambda: len(tags) == 6), f"requeued deliveries: {tags}"
    ch.basic_ack(tags[-1], multiple=True)
    ch.close()
    ch = conn.channel()
    assert_count(ch, q, 0)
    conn.close()


@check
def publisher_confirms():
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    for i in range(20):
        ch.basic_publish("", q, f"c{i}".encode(), props(delivery_mode=2))  # raises if nacked
    assert_count(ch, q, 20)
    conn.close()


@check
def mandatory_return():
    conn = connect()
    ch = conn.channel()
    ex = uniq("direct")
    ch.exchange_declare(ex, "direct", auto_delete=True)
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(q, ex, routing_key="bound")
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m.reply_code, m.routing_key, b)))
    ch.basic_publish(ex, "nowhere", b"lost", mandatory=True)
    ch.basic_publish(ex, "bound", b"kept", mandatory=True)
    assert wait_for(conn, lambda: returned), "no basic.return"
    drain(conn, 0.3)
    assert returned == [(312, "nowhere", b"lost")], returned
    assert_count(ch, q, 1)
    # With confirms, pika raises UnroutableError for a returned mandatory message.
    ch2 = conn.channel()
    ch2.confirm_delivery()
    try:
        ch2.basic_publish(ex, "nowhere", b"lost", mandatory=True)
    except UnroutableError as e:
        assert len(e.messages) == 1 and e.messages[0].body == b"lost"
    else:
        raise AssertionError("mandatory unroutable publish with confirms did not raise")
    ch2.basic_publish(ex, "bound", b"kept", mandatory=True)
    ch.exchange_delete(ex)
    conn.close()


@check
def basic_get():
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()  # each publish returns once the message is enqueued
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    assert ch.basic_get(q) == (None, None, None)
    for i in range(3):
        ch.basic_publish("", q, f"g{i}".encode(), props(priority=1, correlation_id=str(i)))
    method, p, body = ch.basic_get(q, auto_ack=False)
    assert body == b"g0" and p.correlation_id == "0", (body, p)
    assert method.message_count == 2, method
    ch.basic_ack(method.delivery_tag)
    method, p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"g1" and method.message_count == 1, (body, method)
    method, _p, body = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, _p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"g2" and method.redelivered, (body, method)
    assert ch.basic_get(q) == (None, None, None)
    conn.close()


@check
def qos_prefetch():
    conn = connect()
    ch = conn.channel()
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    for i in range(10):
        ch.basic_publish("", q, str(i).encode())
    ch.basic_qos(prefetch_count=3)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((m.delivery_tag, b)))
    assert wait_for(conn, lambda: len(got) >= 3)
    drain(conn, 0.5)
    assert len(got) == 3, f"prefetch 3 but {len(got)} unacked deliveries"
    ch.basic_ack(got[0][0])
    assert wait_for(conn, lambda: len(got) >= 4)
    drain(conn, 0.5)
    assert len(got) == 4, f"one ack should free one slot, got {len(got)}"
    ch.basic_ack(got[-1][0], multiple=True)
    assert wait_for(conn, lambda: len(got) >= 7)
    drain(conn, 0.3)
    assert len(got) == 7, len(got)
    assert [b for _, b in got] == [str(i).encode() for i in range(7)]
    conn.close()


@check
def exclusive_queue_locked():
    owner = connect()
    och = owner.channel()
    q = uniq("exclusive")
    och.queue_declare(queue=q, exclusive=True)
    other = connect()
    try:
        e = expect_channel_error(405, lambda: other.channel().queue_declare(queue=q, passive=True))
        assert "RESOURCE_LOCKED" in e.reply_text, e.reply_text
        expect_channel_error(405, lambda: other.channel().basic_consume(q, lambda *a: None))
        expect_channel_error(405, lambda: other.channel().queue_delete(q))
        # The owner is unaffected.
        och.basic_publish("", q, b"mine")
        assert_count(och, q, 1)
    finally:
        owner.close()
    # Exclusive queues go away with their connection.
    e = expect_channel_error(404, lambda: other.channel().queue_declare(queue=q, passive=True))
    assert "NOT_FOUND" in e.reply_text, e.reply_text
    other.close()


@check
def channel_errors():
    conn = connect()
    e = expect_channel_error(404, lambda: conn.channel().queue_declare(queue=uniq("missing"), passive=True))
    assert "NOT_FOUND" in e.reply_text
    ex = uniq("ex")
    ch = conn.channel()
    ch.exchange_declare(ex, "fanout", auto_delete=True)
    # Redeclare with a different type: 406 PRECONDITION_FAILED.
    e = expect_channel_error(406, lambda: conn.channel().exchange_declare(ex, "direct", auto_delete=True))
    assert "PRECONDITION_FAILED" in e.reply_text
    # Publishing to a missing exchange closes the channel with 404.
    ch2 = conn.channel()
    ch2.basic_publish(uniq("nope"), "rk", b"x")
    e = expect_channel_error(404, lambda: ch2.queue_declare(queue="", exclusive=True))
    assert ch.is_open and conn.is_open, "other channel or connection was closed"
    ch.exchange_delete(ex)
    conn.close()


@check
def routing_topic_fanout():
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()  # each publish returns once the message is routed
    topic, fan = uniq("topic"), uniq("fanout")
    ch.exchange_declare(topic, "topic", auto_delete=True)
    ch.exchange_declare(fan, "fanout", auto_delete=True)
    qa = ch.queue_declare(queue="", exclusive=True).method.queue
    qb = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(qa, topic, "a.*")
    ch.queue_bind(qb, topic, "#.z")
    ch.queue_bind(qa, fan)
    ch.queue_bind(qb, fan)
    ch.basic_publish(topic, "a.z", b"both")
    ch.basic_publish(topic, "a.b", b"a-only")
    ch.basic_publish(topic, "x.y.z", b"b-only")
    ch.basic_publish(topic, "q", b"none")
    ch.basic_publish(fan, "ignored", b"fan")

    def bodies(q):
        out = []
        while True:
            _m, _p, b = ch.basic_get(q, auto_ack=True)
            if b is None:
                return out
            out.append(b)

    assert bodies(qa) == [b"both", b"a-only", b"fan"], bodies
    assert bodies(qb) == [b"both", b"b-only", b"fan"]
    ch.exchange_delete(topic)
    ch.exchange_delete(fan)
    conn.close()


def main():
    passed = failed = 0
    print(f"pika {pika.__version__} against {URL.split('@')[-1]}")
    for fn in CHECKS:
        t0 = time.monotonic()
        try:
            fn()
        except Exception:  # noqa: BLE001 - report every failure and go on
            failed += 1
            print(f"FAIL {fn.__name__} ({time.monotonic() - t0:.2f}s)")
            traceback.print_exc(file=sys.stdout)
        else:
            passed += 1
            print(f"ok   {fn.__name__} ({time.monotonic() - t0:.2f}s)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
