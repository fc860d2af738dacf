#!/usr/bin/env python3
"""Interop driver: pika sees connection.blocked and connection.unblocked.

A resource alarm is raised on a running broker by setting its free disk limit above any
disk's free space with the broker's own tool (`rabbitmqctl set_disk_free_limit` for
RabbitMQ, `minimqctl set_disk_free_limit` for minimq: the command, without the limit,
is this script's arguments), then cleared by setting it back to the default. The
reference for every assertion is what RabbitMQ does; the same driver must pass against
minimq.

    AMQP_PORT=5673 python3 tests/interop/blocked_test.py \\
        target/release/minimqctl --url http://127.0.0.1:15673 set_disk_free_limit

Environment:
    AMQP_HOST  broker host (default 127.0.0.1)
    AMQP_PORT  broker port (default 5672)

Checks, in order:
    a publish while the alarm is on gets the publishing connection `connection.blocked`
    with reason "low on disk" (pika's blocked callback), and the message waits;
    a consumer on another connection keeps receiving meanwhile;
    clearing the alarm sends `connection.unblocked`, and the waiting message arrives.
Every wait is for an event, with a deadline. Exit code 0 when every check passed, 1
otherwise.
"""

import os
import subprocess
import sys
import time
import uuid

import pika

HOST = os.environ.get("AMQP_HOST", "127.0.0.1")
PORT = int(os.environ.get("AMQP_PORT", "5672"))
SET_LIMIT = sys.argv[1:]

# Far above the free space of any disk this runs on; RabbitMQ's CLI takes GB, not TB.
ALARM_LIMIT = "1000GB"
# Both brokers' default.
DEFAULT_LIMIT = "50MB"
# RabbitMQ samples free space at most every 10 s; minimq every 0.5 s.
DEADLINE = 60.0


def set_limit(value):
    r = subprocess.run(SET_LIMIT + [value], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(SET_LIMIT)} {value}: exit {r.returncode}: {r.stderr.strip()}")


def until(connection, done, what):
    deadline = time.monotonic() + DEADLINE
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {DEADLINE:.0f} s")
        connection.process_data_events(time_limit=0.2)


def main():
    if not SET_LIMIT:
        print(__doc__)
        return 2
    params = pika.ConnectionParameters(host=HOST, port=PORT)
    events = []
    publisher = pika.BlockingConnection(params)
    publisher.add_on_connection_blocked_callback(
        lambda _c, frame: events.append(("blocked", frame.method.reason))
    )
    publisher.add_on_connection_unblocked_callback(lambda _c, _f: events.append(("unblocked",)))
    pub = publisher.channel()
    queue = f"blocked-test-{uuid.uuid4().hex[:8]}"
    pub.queue_declare(queue=queue, auto_delete=False)

    consumer = pika.BlockingConnection(params)
    con = consumer.channel()
    failures = []
    try:
        # A message ready before the alarm: the consumer gets it during the alarm.
        pub.basic_publish(exchange="", routing_key=queue, body=b"before")
        until(publisher, lambda: con.queue_declare(queue=queue, passive=True).method.message_count == 1,
              "message before the alarm")

        set_limit(ALARM_LIMIT)
        # The publish that finds the alarm on is not taken; the connection is blocked.
        pub.basic_publish(exchange="", routing_key=queue, body=b"during")
        until(publisher, lambda: events, "connection.blocked")
        if events[0] != ("blocked", "low on disk"):
            failures.append(f"blocked: got {events[0]!r}, want ('blocked', 'low on disk')")
        else:
            print("ok   connection.blocked, reason 'low on disk'")

        method, _props, body = con.basic_get(queue=queue, auto_ack=True)
        if body != b"before":
            failures.append(f"consumer during the alarm: got {body!r}, want b'before'")
        else:
            print("ok   a consumer on another connection receives during the alarm")

        set_limit(DEFAULT_LIMIT)
        until(publisher, lambda: ("unblocked",) in events, "connection.unblocked")
        print("ok   connection.unblocked once the alarm clears")

        got = []
        deadline = time.monotonic() + DEADLINE
        while not got and time.monotonic() < deadline:
            publisher.process_data_events(time_limit=0.2)
            method, _props, body = con.basic_get(queue=queue, auto_ack=True)
            if method is not None:
                got.append(body)
        if got != [b"during"]:
            failures.append(f"the publish made during the alarm: got {got!r}, want [b'during']")
        else:
            print("ok   the publish made during the alarm arrives after it")
    except Exception as e:  # noqa: BLE001 - reported as a failure, the limit is restored
        failures.append(f"{type(e).__name__}: {e}")
    finally:
        try:
            set_limit(DEFAULT_LIMIT)
        except Exception as e:  # noqa: BLE001
            failures.append(f"restoring the limit: {e}")
        for c in (publisher, consumer):
            try:
                if c.is_open:
                    if c is consumer:
                        con.queue_delete(queue=queue)
                    c.close()
            except Exception:  # noqa: BLE001 - cleanup only
                pass
    for f in failures:
        print(f"FAIL {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
