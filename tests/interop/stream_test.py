#!/usr/bin/env python3
"""Interop driver: a stream queue over AMQP 0-9-1 with pika.

The reference for every assertion is what RabbitMQ 3.10 does; the same driver must pass
against minimq (started with a data directory).

    AMQP_PORT=5673 python3 tests/interop/stream_test.py

Environment:
    AMQP_HOST  broker host (default 127.0.0.1)
    AMQP_PORT  broker port (default 5672)

Checks, in order:
    a non-durable stream and an `x-max-length` on a stream are refused with RabbitMQ's
    406 texts; a stream with `x-max-age` and `x-max-length-bytes` is declared;
    five publishes, persistent and transient, are confirmed;
    consumers from `first`, from offset 2 and from an interval (`1h`) get the messages
    with their `x-stream-offset` header; one from `next` gets only what is published
    after it; with prefetch 2 a consumer gets two, then more once it acks;
    `basic.get` closes the connection with 540 and RabbitMQ's text.
Every wait is for an event, with a deadline. Exit code 0 when every check passed, 1
otherwise.
"""

import os
import sys
import time
import uuid

import pika

HOST = os.environ.get("AMQP_HOST", "127.0.0.1")
PORT = int(os.environ.get("AMQP_PORT", "5672"))
DEADLINE = 10.0


def connect():
    return pika.BlockingConnection(pika.ConnectionParameters(HOST, PORT))


def until(connection, done, what):
    deadline = time.monotonic() + DEADLINE
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {DEADLINE:.0f} s")
        connection.process_data_events(time_limit=0.1)


def refused(arguments, durable, expected):
    c = connect()
    ch = c.channel()
    name = f"stream-refused-{uuid.uuid4().hex[:8]}"
    try:
        ch.queue_declare(name, durable=durable, arguments=arguments)
    except pika.exceptions.ChannelClosedByBroker as e:
        assert (e.reply_code, e.reply_text) == (406, expected.format(name=name)), (e.reply_code, e.reply_text)
    else:
        raise AssertionError(f"{arguments} declared")
    finally:
        c.close()


def consume(c, queue, offset, prefetch=100):
    ch = c.channel()
    ch.basic_qos(prefetch_count=prefetch)
    got = []
    arguments = {} if offset is None else {"x-stream-offset": offset}
    ch.basic_consume(
        queue,
        lambda _ch, m, p, b: got.append((b.decode(), p.headers["x-stream-offset"], m.delivery_tag)),
        arguments=arguments,
    )
    return ch, got


def main():
    refused({"x-queue-type": "stream"}, False,
            "PRECONDITION_FAILED - invalid property 'non-durable' for queue '{name}' in vhost '/'")
    refused({"x-queue-type": "stream", "x-max-length": 5}, True,
            "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue '{name}' in vhost '/' "
            "of queue type rabbit_stream_queue")
    print("--- PASS refusals")

    queue = f"stream-{uuid.uuid4().hex[:8]}"
    c = connect()
    ch = c.channel()
    ch.queue_declare(queue, durable=True, arguments={
        "x-queue-type": "stream", "x-max-age": "7D", "x-max-length-bytes": 100_000_000})
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", queue, f"m{i}".encode(),
                         pika.BasicProperties(delivery_mode=2 if i % 2 == 0 else 1))
    print("--- PASS declare and confirmed publishes")

    expected = [(f"m{i}", i) for i in range(5)]
    for offset, want in (("first", expected), (2, expected[2:]), ("1h", expected)):
        _, got = consume(c, queue, offset)
        until(c, lambda: len(got) >= len(want), f"{len(want)} deliveries from {offset!r}")
        assert [(b, o) for b, o, _ in got] == want, (offset, got)
    _, fresh = consume(c, queue, None)
    ch.basic_publish("", queue, b"m5")
    until(c, lambda: len(fresh) >= 1, "the delivery after 'next'")
    assert [(b, o) for b, o, _ in fresh] == [("m5", 5)], fresh
    print("--- PASS offsets")

    limited, got = consume(c, queue, "first", prefetch=2)
    until(c, lambda: len(got) >= 2, "two deliveries at prefetch 2")
    c.process_data_events(time_limit=0.3)
    assert len(got) == 2, got
    limited.basic_ack(got[-1][2], multiple=True)
    until(c, lambda: len(got) >= 4, "two more after the ack")
    print("--- PASS prefetch credit")

    g = connect()
    try:
        g.channel().basic_get(queue)
    except pika.exceptions.ConnectionClosedByBroker as e:
        assert (e.reply_code, e.reply_text) == (
            540, f"NOT_IMPLEMENTED - basic.get not supported by stream queues queue '{queue}' in vhost '/'"), e
    else:
        raise AssertionError("basic.get on a stream was answered")
    print("--- PASS basic.get refused")

    ch.queue_delete(queue)
    c.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        print(f"--- FAIL {e}")
        sys.exit(1)
