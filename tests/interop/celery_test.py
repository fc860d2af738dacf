#!/usr/bin/env python3
"""Interop driver: a Celery 5 worker and client against the broker.

Starts `celery -A tasks worker --pool=solo --concurrency=1 -l info` (the app is
tests/interop/celery_app/tasks.py: broker pyamqp://, result backend rpc://) as a
subprocess, waits for its "ready." line, then calls tasks from this process
the way a Celery user does: `.delay()` and `.get(timeout=...)`.  The
reference for every assertion is what a real RabbitMQ does; the same driver
must pass against minimq.

    AMQP_PORT=5673 python3 tests/interop/celery_test.py [test ...]

Environment:
    AMQP_HOST  broker host (default 127.0.0.1)
    AMQP_PORT  broker port (default 5672)

Tests (one worker for all of them):
    add             add(2, 3) == 5; twenty add() calls in flight at once
    failure         a task that raises: .get() re-raises ValueError, state FAILURE
    retry           self.retry(countdown=1) twice, then success; ETA honoured
    eta_not_blocking  while a retry waits for its ETA (held unacked by the
                    worker, which raises its prefetch), another task runs
    control_ping    app.control.ping() and `celery inspect ping` (pidbox fanout,
                    reply queues with x-expires / x-message-ttl)
    shutdown        SIGTERM: warm shutdown, exit 0, the task queue is left
                    empty with no consumers

Synchronisation is event based: the driver reads the worker's log line by
line and waits on task results with timeouts.
Exit code 0 when every test passed, 1 otherwise.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pika
import pika.exceptions

HERE = os.path.dirname(os.path.abspath(__file__))
APP_DIR = os.path.join(HERE, "celery_app")
sys.path.insert(0, HERE)
sys.path.insert(0, APP_DIR)

from tutorial_test import (  # noqa: E402
    Failure,
    Proc,
    check,
    connect,
    log,
    run_case,
    summary,
    wait_until,
)

HOST = os.environ.get("AMQP_HOST", "127.0.0.1")
PORT = int(os.environ.get("AMQP_PORT", "5672"))
os.environ["AMQP_HOST"], os.environ["AMQP_PORT"] = HOST, str(PORT)  # tasks.py reads them

import celery  # noqa: E402
import importlib  # noqa: E402

# The app module: tasks.py, or another module of celery_app/ (CELERY_INTEROP_APP).
APP_MODULE = os.environ.get("CELERY_INTEROP_APP", "tasks")
tasks = importlib.import_module(APP_MODULE)

QUEUE = tasks.app.conf.task_default_queue
NODE = f"interop-{uuid.uuid4().hex[:8]}@%h"

READY_RE = re.compile(r"\] (\S+@\S+) ready\.$")
STARTUP_TIMEOUT = 60.0  # worker start-up (mingle waits ~1 s for neighbours)
RESULT_TIMEOUT = 30.0  # one .get()
SHUTDOWN_TIMEOUT = 30.0


class Worker(Proc):
    """`celery worker` as a subprocess; its log (stderr) read line by line."""

    def __init__(self, name, *args):  # noqa: super().__init__ runs a script, not a module
        self.name = name
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", APP_MODULE, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=APP_DIR,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.lines = []
        self.eof = False
        self.thread = threading.Thread(target=self._reader, daemon=True)
        self.thread.start()

    def grep(self, pattern):
        rx = re.compile(pattern)
        return [line for line in list(self.lines) if rx.search(line)]

    def reap(self, timeout=10.0):
        self.kill(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.popen.wait(timeout)
        self.thread.join(timeout)


def get(result, what):
    try:
        return result.get(timeout=RESULT_TIMEOUT)
    except celery.exceptions.TimeoutError:
        raise Failure(f"no result for {what} within {RESULT_TIMEOUT:.0f}s (state {result.state})")


def queue_state():
    """(message_count, consumer_count) of the task queue, None when missing."""
    conn = connect()
    try:
        ch = conn.channel()
        try:
            ok = ch.queue_declare(QUEUE, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            check(e.reply_code == 404, f"passive queue.declare failed: {e!r}")
            return None
        return ok.method.message_count, ok.method.consumer_count
    finally:
        conn.close()


def delete_queue():
    conn = connect()
    try:
        conn.channel().queue_delete(QUEUE)
    finally:
        conn.close()


# --------------------------------------------------------------------------
# tests (they share one worker, in order)


def test_add(w):
    r = tasks.add.delay(2, 3)
    check(get(r, "add(2, 3)") == 5, f"add(2, 3) returned {r.result!r}")
    check(r.state == "SUCCESS", f"state {r.state}")
    log(f"  add(2, 3) = 5, task id {r.id}")
    rs = [tasks.add.delay(i, 1000) for i in range(20)]
    got = [get(r, f"add({i}, 1000)") for i, r in enumerate(rs)]
    check(got == [i + 1000 for i in range(20)], f"twenty adds: {got}")
    wait_until(lambda: len(w.grep(r"Task tasks\.add\[.*\] succeeded")) >= 21, 10, "the worker's log lines", [w])
    log("  twenty add() in flight at once: all results correct")


def test_failure(w):
    r = tasks.fail.delay("boom from the interop test")
    try:
        r.get(timeout=RESULT_TIMEOUT)
    except ValueError as e:
        log(f"  .get() raised {e!r}")
        check(str(e) == "boom from the interop test", f"exception message {e!r}")
    except celery.exceptions.TimeoutError:
        raise Failure(f"no result for fail() within {RESULT_TIMEOUT:.0f}s")
    else:
        raise Failure("fail() returned instead of raising")
    check(r.state == "FAILURE", f"state {r.state}")
    wait_until(
        lambda: w.grep(rf"Task tasks\.fail\[{r.id}\] raised unexpected: ValueError"),
        10,
        "the worker to log the failure",
        [w],
    )


def test_retry(w):
    t0 = time.monotonic()
    r = tasks.flaky.delay(2, 1)
    res = get(r, "flaky(2, 1)")
    elapsed = time.monotonic() - t0
    log(f"  flaky(2, countdown=1) = {res} after {elapsed:.2f}s")
    check(res == {"retries": 2, "args": [2, 1]}, f"result {res}")
    check(r.state == "SUCCESS", f"state {r.state}")
    # two retries with countdown=1: the ETA is honoured (a little slack for clocks)
    check(elapsed >= 1.8, f"two 1 s countdowns took only {elapsed:.2f}s")
    retries = w.grep(rf"Task tasks\.flaky\[{r.id}\] retry: Retry in 1s")
    received = w.grep(rf"Task tasks\.flaky\[{r.id}\] received")
    check(len(retries) == 2, f"worker logged two retries: {retries}")
    check(len(received) == 3, f"worker received the task three times: {received}")


def test_eta_not_blocking(w):
    t0 = time.monotonic()
    slow = tasks.flaky.delay(1, 4)  # fails once, retried in 4 s
    wait_until(
        lambda: w.grep(rf"Task tasks\.flaky\[{slow.id}\] retry: Retry in 4s"),
        RESULT_TIMEOUT,
        "the first attempt to fail and schedule its retry",
        [w],
    )
    wait_until(
        lambda: len(w.grep(rf"Task tasks\.flaky\[{slow.id}\] received")) >= 2,
        RESULT_TIMEOUT,
        "the worker to receive the retry (an ETA message)",
        [w],
    )
    st = queue_state()
    log(f"  retry received and held by the worker; queue (messages, consumers) = {st}")
    check(st == (0, 1), f"the ETA message is held unacked by the worker, queue is {st}")
    quick = tasks.add.delay(20, 22)
    check(get(quick, "add(20, 22)") == 42, f"add(20, 22) returned {quick.result!r}")
    t_quick = time.monotonic() - t0
    check(not slow.ready(), f"the retried task finished before its ETA ({t_quick:.2f}s)")
    log(f"  add(20, 22) = 42 after {t_quick:.2f}s while the retry waits for its ETA")
    res = get(slow, "flaky(1, 4)")
    elapsed = time.monotonic() - t0
    log(f"  flaky(1, countdown=4) = {res} after {elapsed:.2f}s")
    check(res == {"retries": 1, "args": [1, 4]}, f"result {res}")
    check(elapsed >= 3.8, f"a 4 s countdown took only {elapsed:.2f}s")


def test_control_ping(w):
    replies = tasks.app.control.ping(timeout=3.0)  # waits the whole timeout for replies
    log(f"  app.control.ping() -> {replies}")
    check(replies == [{w.node: {"ok": "pong"}}], f"one pong from {w.node}, got {replies}")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        r = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tasks", "inspect", "ping", "-d", w.node, "-t", "5"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            cwd=APP_DIR,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        raise Failure("`celery inspect ping` did not finish within 60s")
    for line in (r.stdout + r.stderr).splitlines():
        log(f"    [inspect ping] {line}")
    check(r.returncode == 0, f"`celery inspect ping` exited with {r.returncode}")
    check(re.search(rf"->\s+{re.escape(w.node)}: OK\s+pong", r.stdout), "`celery inspect ping` shows the pong")
    check("1 node online." in r.stdout, "`celery inspect ping`: 1 node online.")


def test_shutdown(w):
    w.kill(signal.SIGTERM)
    try:
        rc = w.popen.wait(SHUTDOWN_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise Failure(f"worker did not exit within {SHUTDOWN_TIMEOUT:.0f}s of SIGTERM")
    w.thread.join(10)
    check(w.grep(r"Warm shutdown"), "worker logged its warm shutdown")
    check(rc == 0, f"worker exited with {rc}")
    deadline = time.monotonic() + 10
    while True:
        st = queue_state()
        if st == (0, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # the broker notices the closed connection
    log(f"  after shutdown: queue (messages, consumers) = {st}")
    check(st == (0, 0), f"task queue empty and unconsumed after shutdown, got {st}")


TESTS = [
    ("add", test_add),
    ("failure", test_failure),
    ("retry", test_retry),
    ("eta_not_blocking", test_eta_not_blocking),
    ("control_ping", test_control_ping),
    ("shutdown", test_shutdown),
]


def main():
    log(
        f"celery interop driver: broker {HOST}:{PORT}, celery {celery.__version__}, "
        f"pika {pika.__version__}, python {sys.version.split()[0]}"
    )
    try:
        delete_queue()  # independent of earlier runs
    except Exception as e:
        log(f"FAIL: cannot connect to {HOST}:{PORT}: {e!r}")
        return 1

    only = set(sys.argv[1:])
    results = []
    w = None
    try:
        log("\n=== start worker ===")
        t0 = time.monotonic()
        w = Worker("worker", "worker", "--pool=solo", "--concurrency=1", "-l", "info", "-n", NODE)
        try:
            wait_until(lambda: w.grep(READY_RE), STARTUP_TIMEOUT, "the worker's ready line", [w])
        except Failure as e:
            log(f"--- FAIL start worker: {e}")
            results.append(("start worker", e))
            return summary(results)
        w.node = READY_RE.search(w.grep(READY_RE)[0]).group(1)
        log(f"--- worker {w.node} ready ({time.monotonic() - t0:.1f}s)")

        for name, fn in TESTS:
            if only and name not in only and name != "shutdown":
                continue

            def case(name=name, fn=fn):
                if w.eof and name != "shutdown":
                    raise Failure(f"the worker exited (rc={w.popen.poll()})")
                fn(w)

            run_case(name, case, results)
    finally:
        if w is not None:
            w.reap()
        try:
            delete_queue()
        except Exception:
            pass
    return summary(results)


if __name__ == "__main__":
    sys.exit(main())
