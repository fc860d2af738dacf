#!/usr/bin/env python3
"""Interop driver: RabbitMQ tutorial two ("Work Queues") with pika.

Runs the unmodified tutorial scripts (new_task.py / worker.py, which only
read AMQP_HOST / AMQP_PORT from the environment) against a broker and checks
what a user of the tutorial would see.  The reference for every assertion is
what a real RabbitMQ does; the same driver must pass against minimq.

    AMQP_PORT=5673 python3 tests/interop/tutorial_test.py

Environment:
    AMQP_HOST  broker host (default 127.0.0.1)
    AMQP_PORT  broker port (default 5672)

Tests:
    round_robin      two workers, five tasks, prefetch 1: who gets what
    kill_to_worker   SIGKILL a worker mid-task, the other worker.py gets the task
    kill_redelivered SIGKILL a worker mid-task, a pika consumer gets the task
                     with redelivered=True (worker.py does not print the flag)
    publisher_confirms  confirm_delivery(), mandatory publish to a missing
                        queue raises UnroutableError

Synchronisation is event based: the driver reads the workers' stdout line by
line (with timeouts) and polls queue.declare(passive) for consumer counts.
Exit code 0 when every test passed, 1 otherwise.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid

import pika
import pika.exceptions

HERE = os.path.dirname(os.path.abspath(__file__))
HOST = os.environ.get("AMQP_HOST", "127.0.0.1")
PORT = int(os.environ.get("AMQP_PORT", "5672"))

QUEUE = "task_queue"  # fixed by the tutorial scripts

WAITING = " [*] Waiting for messages. To exit press CTRL+C"
RECEIVED_RE = re.compile(r"^ \[x\] Received (.*)$")
DONE = " [x] Done"

STARTUP_TIMEOUT = 20.0  # worker start-up / consumer registration
PUBLISH_TIMEOUT = 30.0  # one run of new_task.py
REDELIVERY_TIMEOUT = 15.0  # kill -> redelivery to the other consumer

# The five tasks of the tutorial.  One second of "work" per dot, so the
# expected split under prefetch_count=1 is fixed by the timing:
#   t=0 A gets 1 (1 s), B gets 2 (2 s), 3..5 wait in the queue,
#   t=1 A free -> 3 (3 s, until t=4), t=2 B free -> 4 (4 s, until t=6),
#   t=4 A free -> 5.
TASKS = [
    "First message.",
    "Second message..",
    "Third message...",
    "Fourth message....",
    "Fifth message.....",
]

# Long enough that the victim is certainly still "working" when we kill it.
LONG_TASK = "Long task " + "." * 60


class Failure(Exception):
    pass


_log_lock = threading.Lock()  # reader threads and the main thread log concurrently


def log(msg=""):
    with _log_lock:  # one write per line: print() writes msg and "\n" separately
        sys.stdout.write(f"{msg}\n")
        sys.stdout.flush()


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def run_case(name, body, results):
    """Runs one named case: logs it, times it, records (name, None) or (name, error)."""
    log(f"\n=== {name} ===")
    t0 = time.monotonic()
    try:
        body()
        results.append((name, None))
        log(f"--- PASS {name} ({time.monotonic() - t0:.1f}s)")
    except Exception as e:
        if not isinstance(e, Failure):
            traceback.print_exc(file=sys.stdout)
        results.append((name, e))
        log(f"--- FAIL {name}: {e}")


def summary(results):
    """Logs the summary; the process exit code (1 if anything failed or nothing ran)."""
    log("\n=== summary ===")
    for name, err in results:
        log(f"  {'PASS' if err is None else 'FAIL'}  {name}" + ("" if err is None else f": {err}"))
    failed = sum(1 for _, e in results if e is not None)
    if not results:
        log("no tests selected")
        return 1
    log(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def probe_server():
    """Connects once and logs who answers; False (logged) when nobody does."""
    try:
        probe = connect()
        props = probe._impl.server_properties  # informational only
        log(f"server: {props.get('product', b'?')!r} {props.get('version', b'?')!r}")
        probe.close()
        return True
    except Exception as e:
        log(f"FAIL: cannot connect to {HOST}:{PORT}: {e!r}")
        return False


# --------------------------------------------------------------------------
# subprocess handling

_cond = threading.Condition()  # shared by all processes' reader threads


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Proc:
    """A tutorial script running as a subprocess; stdout read line by line."""

    def __init__(self, name, script, *args):
        self.name = name
        env = dict(os.environ, AMQP_HOST=HOST, AMQP_PORT=str(PORT), PYTHONUNBUFFERED="1")
        self.popen = subprocess.Popen(
            [sys.executable, "-u", os.path.join(HERE, script), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=HERE,
            text=True,
            bufsize=1,
            start_new_session=True,  # our signals only ever reach this process
            # Ctrl+C must raise KeyboardInterrupt in the script even when this driver was
            # started with SIGINT ignored (a shell's background job is): Python installs
            # its handler only if SIGINT is not ignored when it starts.
            preexec_fn=_default_sigint,
        )
        self.lines = []
        self.eof = False
        self.thread = threading.Thread(target=self._reader, daemon=True)
        self.thread.start()

    def _reader(self):
        for raw in self.popen.stdout:
            line = raw.rstrip("\n")
            log(f"    [{self.name}] {line}")
            with _cond:
                self.lines.append(line)
                _cond.notify_all()
        with _cond:
            self.eof = True
            _cond.notify_all()

    def received(self):
        with _cond:
            return [m.group(1) for m in map(RECEIVED_RE.match, self.lines) if m]

    def count(self, line):
        with _cond:
            return sum(1 for l in self.lines if l == line)

    def kill(self, sig=signal.SIGKILL):
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def reap(self, timeout=10.0):
        self.kill()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.thread.join(timeout)


def wait_until(pred, timeout, what, procs=()):
    """Block until pred() is true (re-evaluated on every output line).

    Fails early if one of `procs` exits while we wait."""
    deadline = time.monotonic() + timeout
    with _cond:
        while True:
            if pred():
                return
            for p in procs:
                if p.eof:
                    raise Failure(f"{p.name} exited (rc={p.popen.poll()}) while waiting for {what}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Failure(f"timed out after {timeout:.0f}s waiting for {what}")
            _cond.wait(remaining)


def new_task(*words):
    """Run new_task.py like the tutorial does: `python new_task.py First message.`"""
    message = " ".join(words)
    env = dict(os.environ, AMQP_HOST=HOST, AMQP_PORT=str(PORT), PYTHONUNBUFFERED="1")
    try:
        r = subprocess.run(
            [sys.executable, os.path.join(HERE, "new_task.py"), *words],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            cwd=HERE,
            timeout=PUBLISH_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise Failure(f"new_task.py {message!r} did not finish within {PUBLISH_TIMEOUT:.0f}s")
    for line in r.stdout.splitlines():
        log(f"    [new_task] {line}")
    for line in r.stderr.splitlines():
        log(f"    [new_task stderr] {line}")
    check(r.returncode == 0, f"new_task.py {message!r} exited with {r.returncode}")
    check(f" [x] Sent {message}" in r.stdout.splitlines(), f"new_task.py did not print ' [x] Sent {message}'")


# --------------------------------------------------------------------------
# broker helpers (driver's own pika connection)


def connect():
    return pika.BlockingConnection(
        pika.ConnectionParameters(host=HOST, port=PORT, connection_attempts=1, blocked_connection_timeout=30)
    )


class Admin:
    """One connection for queue inspection; the channel is reopened after a 404."""

    def __init__(self):
        self.conn = connect()
        self.ch = self.conn.channel()

    def queue_state(self):
        """(message_count, consumer_count), or None when the queue does not exist."""
        try:
            ok = self.ch.queue_declare(QUEUE, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            check(e.reply_code == 404, f"passive queue.declare failed: {e!r}")
            self.ch = self.conn.channel()
            return None
        return ok.method.message_count, ok.method.consumer_count

    def delete_queue(self):
        self.ch.queue_delete(QUEUE)

    def wait_consumers(self, n, procs=(), timeout=STARTUP_TIMEOUT):
        """Poll until task_queue has exactly n consumers.

        worker.py prints its waiting line *before* basic.consume, so the
        line alone does not mean the worker is ready to receive."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.queue_state()
            if st is not None and st[1] == n:
                return
            for p in procs:
                if p.popen.poll() is not None:
                    raise Failure(f"{p.name} exited (rc={p.popen.returncode}) before consuming")
            if time.monotonic() > deadline:
                raise Failure(f"task_queue never reached {n} consumer(s) (last state {st})")
            self.conn.process_data_events(time_limit=0.05)

    def close(self):
        try:
            self.conn.close()
        except Exception:
            pass


def start_worker(admin, name, consumers_after):
    w = Proc(name, "worker.py")
    wait_until(lambda: WAITING in w.lines, STARTUP_TIMEOUT, f"{name}'s waiting line", [w])
    admin.wait_consumers(consumers_after, [w])
    return w


# --------------------------------------------------------------------------
# tests


def test_round_robin(admin, procs):
    a = start_worker(admin, "worker A", 1)
    procs.append(a)
    b = start_worker(admin, "worker B", 2)
    procs.append(b)

    for task in TASKS:
        new_task(*task.split(" "))

    wait_until(
        lambda: len(a.received()) + len(b.received()) >= len(TASKS) and a.count(DONE) + b.count(DONE) >= len(TASKS),
        30.0,
        "all five tasks to be received and done",
        [a, b],
    )
    got_a, got_b = a.received(), b.received()
    log(f"  worker A (consumer registered first) got: {got_a}")
    log(f"  worker B (consumer registered second) got: {got_b}")
    check(sorted(got_a + got_b) == sorted(TASKS), f"every task exactly once: got {got_a + got_b}")
    # RabbitMQ: the first delivery goes to the consumer that registered first,
    # then strictly alternating while both are idle, then whoever acks first.
    check(got_a == [TASKS[0], TASKS[2], TASKS[4]], f"worker A should get 1,3,5 in order, got {got_a}")
    check(got_b == [TASKS[1], TASKS[3]], f"worker B should get 2,4 in order, got {got_b}")
    check(a.count(DONE) == 3 and b.count(DONE) == 2, "each worker printed ' [x] Done' per task")
    st = admin.queue_state()
    check(st == (0, 2), f"queue drained with 2 consumers, got (messages, consumers)={st}")


def _long_task_receivers(workers):
    return [w for w in workers if LONG_TASK in w.received()]


def test_kill_to_worker(admin, procs):
    """The tutorial's claim: kill a worker mid-task and the other worker gets it."""
    w1 = start_worker(admin, "worker 1", 1)
    procs.append(w1)
    w2 = start_worker(admin, "worker 2", 2)
    procs.append(w2)

    new_task(*LONG_TASK.split(" "))
    wait_until(lambda: _long_task_receivers([w1, w2]), STARTUP_TIMEOUT, "a worker to receive the long task", [w1, w2])
    receivers = _long_task_receivers([w1, w2])
    check(len(receivers) == 1, f"long task delivered to exactly one worker, got {[w.name for w in receivers]}")
    (victim,) = receivers
    survivor = w2 if victim is w1 else w1
    log(f"  {victim.name} is working on the long task; SIGKILL it")
    victim.kill(signal.SIGKILL)
    victim.popen.wait(10)

    wait_until(
        lambda: LONG_TASK in survivor.received(),
        REDELIVERY_TIMEOUT,
        f"{survivor.name} to receive the task of the killed worker",
        [survivor],
    )
    check(survivor.received() == [LONG_TASK], f"{survivor.name} got exactly the long task: {survivor.received()}")
    check(victim.count(DONE) == 0, "killed worker never finished")


def test_kill_redelivered(admin, procs):
    """worker.py receives the task, is SIGKILLed; a pika consumer gets it redelivered."""
    w1 = start_worker(admin, "worker 1", 1)
    procs.append(w1)
    new_task(*LONG_TASK.split(" "))
    wait_until(lambda: LONG_TASK in w1.received(), STARTUP_TIMEOUT, "worker 1 to receive the long task", [w1])

    conn = connect()
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1)
        got = []
        ch.basic_consume(QUEUE, lambda c, m, p, b: got.append((m, p, b)))
        admin.wait_consumers(2, [w1])
        conn.process_data_events(time_limit=0)
        check(not got, f"driver consumer got a delivery while worker 1 still held the task: {got}")

        log("  worker 1 is working on the long task; SIGKILL it")
        w1.kill(signal.SIGKILL)
        w1.popen.wait(10)

        deadline = time.monotonic() + REDELIVERY_TIMEOUT
        while not got and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        check(got, f"no redelivery to the driver consumer within {REDELIVERY_TIMEOUT:.0f}s")
        method, props, body = got[0]
        log(
            f"  driver consumer got {body!r}: redelivered={method.redelivered} "
            f"delivery_tag={method.delivery_tag} delivery_mode={props.delivery_mode} headers={props.headers}"
        )
        check(body == LONG_TASK.encode(), f"redelivered body {body!r}")
        check(method.redelivered is True, "basic.deliver has redelivered=True")
        check(props.delivery_mode == 2, f"persistent delivery_mode survives redelivery, got {props.delivery_mode}")
        ch.basic_ack(method.delivery_tag)
        conn.process_data_events(time_limit=0)
        check(len(got) == 1, f"exactly one redelivery, got {len(got)}")
        ch.close()
    finally:
        conn.close()
    st = admin.queue_state()
    check(st is not None and st[0] == 0, f"queue empty after ack, got (messages, consumers)={st}")


def test_publisher_confirms(admin, procs):
    # the queue the tutorial uses, declared the way the tutorial declares it
    conn = connect()
    try:
        ch = conn.channel()
        ch.queue_declare(queue=QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        ch.confirm_delivery()

        # routable, mandatory: broker acks, no exception
        ch.basic_publish("", QUEUE, b"confirmed", pika.BasicProperties(delivery_mode=2), mandatory=True)
        log("  confirmed publish to task_queue: ok")

        # unroutable, mandatory: basic.return then ack -> UnroutableError
        missing = "minimq-interop-missing-" + uuid.uuid4().hex
        try:
            ch.basic_publish("", missing, b"nowhere", mandatory=True)
        except pika.exceptions.UnroutableError as e:
            check(len(e.messages) == 1, f"one returned message, got {e.messages}")
            ret = e.messages[0]
            log(f"  mandatory publish to {missing}: UnroutableError, {ret.method}")
            check(ret.method.reply_code == 312, f"basic.return reply_code 312 NO_ROUTE, got {ret.method.reply_code}")
            check(ret.method.reply_text == "NO_ROUTE", f"basic.return reply_text, got {ret.method.reply_text!r}")
            check(ret.method.exchange == "" and ret.method.routing_key == missing, f"basic.return fields {ret.method}")
            check(ret.body == b"nowhere", f"returned body {ret.body!r}")
        else:
            raise Failure("mandatory publish to a missing queue did not raise UnroutableError")

        # unroutable, not mandatory: silently dropped but still confirmed
        ch.basic_publish("", missing, b"dropped", mandatory=False)
        log("  non-mandatory publish to a missing queue: confirmed, no exception")

        # channel still usable afterwards
        ch.basic_publish("", QUEUE, b"confirmed again", pika.BasicProperties(delivery_mode=2), mandatory=True)
        check(ch.is_open, "channel still open")

        bodies = []
        for _ in range(3):
            method, _props, body = ch.basic_get(QUEUE, auto_ack=True)
            if method is None:
                break
            bodies.append(body)
        check(bodies == [b"confirmed", b"confirmed again"], f"task_queue holds exactly the routed messages: {bodies}")
        ch.close()
    finally:
        conn.close()


TESTS = [
    ("round_robin", test_round_robin),
    ("kill_to_worker", test_kill_to_worker),
    ("kill_redelivered", test_kill_redelivered),
    ("publisher_confirms", test_publisher_confirms),
]


def main():
    log(f"tutorial-two interop driver: broker {HOST}:{PORT}, pika {pika.__version__}, python {sys.version.split()[0]}")
    if not probe_server():
        return 1
    only = set(sys.argv[1:])
    results = []
    for name, fn in TESTS:
        if only and name not in only:
            continue

        def case(fn=fn):
            procs = []
            admin = None
            try:
                admin = Admin()
                admin.delete_queue()  # independent of earlier runs / tests
                fn(admin, procs)
            finally:
                for p in procs:
                    p.reap()
                if admin is not None:
                    try:
                        admin.delete_queue()
                    except Exception:
                        pass
                    admin.close()

        run_case(name, case, results)
    return summary(results)


if __name__ == "__main__":
    sys.exit(main())
