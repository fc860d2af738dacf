#!/usr/bin/env python3
"""Interop driver: Celery's native delayed delivery (Celery 5.5+, quorum queues, topic
task exchange) against the broker.

The worker (`celery -A delayed_tasks worker`) declares the `celery_delayed_0..27`
exchanges and queues at start-up; the top levels' `x-message-ttl` exceeds 2^31 and py-amqp
sends it with the field-table tag `L`. A broker that refuses the declare leaves the worker
running with "Failed to setup delayed delivery" in its log, and every countdown / eta /
retry task is then lost without an error. The same driver must pass against RabbitMQ.

    AMQP_PORT=5673 python3 tests/interop/celery_delayed_test.py

Tests (one worker for all of them):
    setup       the worker set delayed delivery up: no failure in its log, the 28 level
                queues exist
    countdown   add.apply_async(countdown=3): runs after 3 s, not before; while it waits,
                the message sits in a delayed-level queue, not in the worker
    eta         add.apply_async(eta=now + 2 s): runs after its eta
    retry       self.retry(countdown=1) twice, then success
Exit code 0 when every test passed, 1 otherwise.
"""

import datetime
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("CELERY_INTEROP_APP", "delayed_tasks")

import celery_test  # noqa: E402  (shares the worker process wrapper and helpers)
from celery_test import (  # noqa: E402
    NODE,
    READY_RE,
    STARTUP_TIMEOUT,
    Worker,
    check,
    connect,
    get,
    log,
    run_case,
    summary,
    wait_until,
)

import celery  # noqa: E402
import pika  # noqa: E402
import pika.exceptions  # noqa: E402

tasks = celery_test.tasks
QUEUE = tasks.app.conf.task_default_queue
LEVELS = 28


def queue_counts(name):
    """message_count of a queue (passive declare); None when it does not exist."""
    conn = connect()
    try:
        try:
            return conn.channel().queue_declare(name, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker as e:
            check(e.reply_code == 404, f"passive queue.declare {name} failed: {e!r}")
            return None
    finally:
        conn.close()


def test_setup(w):
    failed = w.grep(r"[Ff]ailed to setup delayed delivery|native delayed delivery.*(fail|error)")
    check(not failed, f"the worker could not set delayed delivery up: {failed}")
    missing = [lv for lv in range(LEVELS) if queue_counts(f"celery_delayed_{lv}") is None]
    check(not missing, f"delayed-level queues missing: {missing}")
    log(f"  celery_delayed_0..{LEVELS - 1} declared; no setup failure in the worker's log")


def test_countdown(w):
    t0 = time.monotonic()
    r = tasks.add.apply_async((40, 2), countdown=3)
    # 3 = 0b11: the message first waits in level 1 (2 s), then level 0 (1 s).
    wait_until(
        lambda: (queue_counts("celery_delayed_1") or 0) + (queue_counts("celery_delayed_0") or 0) >= 1,
        5,
        "the countdown message to wait in a delayed-level queue",
        [w],
    )
    check(not r.ready(), "the countdown task ran before its countdown")
    res = get(r, "add(40, 2) with countdown=3")
    elapsed = time.monotonic() - t0
    log(f"  add(40, 2) countdown=3 -> {res} after {elapsed:.2f}s")
    check(res == 42, f"result {res}")
    check(elapsed >= 2.8, f"a 3 s countdown ran after only {elapsed:.2f}s")


def test_eta(w):
    t0 = time.monotonic()
    eta = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
    r = tasks.add.apply_async((1, 1), eta=eta)
    res = get(r, "add(1, 1) with eta=now+2s")
    elapsed = time.monotonic() - t0
    log(f"  add(1, 1) eta=now+2s -> {res} after {elapsed:.2f}s")
    check(res == 2, f"result {res}")
    check(elapsed >= 1.0, f"an eta 2 s ahead ran after only {elapsed:.2f}s")


def test_retry(w):
    t0 = time.monotonic()
    r = tasks.flaky.delay(2, 1)
    res = get(r, "flaky(2, 1)")
    elapsed = time.monotonic() - t0
    log(f"  flaky(2, countdown=1) = {res} after {elapsed:.2f}s")
    check(res == {"retries": 2, "args": [2, 1]}, f"result {res}")
    check(elapsed >= 1.8, f"two 1 s countdowns took only {elapsed:.2f}s")


TESTS = [
    ("setup", test_setup),
    ("countdown", test_countdown),
    ("eta", test_eta),
    ("retry", test_retry),
]


def main():
    log(f"celery delayed-delivery driver: broker {celery_test.HOST}:{celery_test.PORT}, celery {celery.__version__}")
    results = []
    w = None
    try:
        log("\n=== start worker (quorum queues, topic exchange) ===")
        w = Worker("worker", "worker", "--pool=solo", "--concurrency=1", "-l", "info", "-n", NODE)
        try:
            wait_until(lambda: w.grep(READY_RE), STARTUP_TIMEOUT, "the worker's ready line", [w])
        except celery_test.Failure as e:
            results.append(("start worker", e))
            return summary(results)
        for name, fn in TESTS:

            def case(fn=fn):
                if w.eof:
                    raise celery_test.Failure(f"the worker exited (rc={w.popen.poll()})")
                fn(w)

            run_case(name, case, results)
    finally:
        if w is not None:
            w.reap()
        conn = connect()
        try:
            ch = conn.channel()
            ch.queue_delete(QUEUE)
        finally:
            conn.close()
    return summary(results)


if __name__ == "__main__":
    sys.exit(main())
