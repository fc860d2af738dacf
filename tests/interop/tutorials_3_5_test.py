#!/usr/bin/env python3
"""Interop driver: RabbitMQ tutorials three to five with pika.

Runs the tutorial scripts (emit_log*.py / receive_logs*.py, which only read
AMQP_HOST / AMQP_PORT from the environment) against a broker and checks who
receives what.  The reference for every assertion is what a real RabbitMQ
does; the same driver must pass against minimq.

    AMQP_PORT=5673 python3 tests/interop/tutorials_3_5_test.py [test ...]

Environment:
    AMQP_HOST  broker host (default 127.0.0.1)
    AMQP_PORT  broker port (default 5672)

Tests:
    fanout          tutorial 3 ("Publish/Subscribe"): every receive_logs.py gets
                    every emit_log.py message; server-named exclusive queues
                    (amq.gen-*, 405 for other connections, gone on disconnect)
    direct          tutorial 4 ("Routing"): receive_logs_direct.py by severity,
                    multiple bindings, a severity nobody listens to is unroutable
    topic_logs      tutorial 5 ("Topics"): kern.*, *.critical, #, a receiver with
                    two bindings gets kern.critical once
    topic_animals   tutorial 5's animal example: *.orange.*, *.*.rabbit, lazy.#

Synchronisation is event based.  A receiver prints its waiting line after its
bindings are made but before basic.consume, so after the line the driver
publishes a probe (mandatory, with publisher confirms: a returned probe means
the binding is not there yet and is retried) that the receiver must print;
that proves binding and consumer.  After the emitters ran, one more probe per
receiver marks the end: queues are FIFO, so once a receiver printed it,
everything emitted before it has been delivered and nothing else is coming.
Probe lines are left out of the assertions.
Exit code 0 when every test passed, 1 otherwise.
"""

import os
import signal
import subprocess
import sys
import time
import uuid

import pika
import pika.exceptions

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tutorial_test import (  # noqa: E402
    Failure,
    Proc,
    check,
    connect,
    log,
    probe_server,
    run_case,
    summary,
    wait_until,
)

HERE = os.path.dirname(os.path.abspath(__file__))
HOST = os.environ.get("AMQP_HOST", "127.0.0.1")
PORT = int(os.environ.get("AMQP_PORT", "5672"))

WAITING = " [*] Waiting for logs. To exit press CTRL+C"
PROBE = "probe-"  # bodies starting with this are the driver's own

STARTUP_TIMEOUT = 20.0  # receiver start-up, probe round trip
EMIT_TIMEOUT = 30.0  # one run of an emit script
DELIVERY_TIMEOUT = 15.0  # everything emitted reaches the receivers
GONE_TIMEOUT = 15.0  # receiver exits -> its exclusive queue is deleted


# --------------------------------------------------------------------------
# receivers and emitters


class Receiver(Proc):
    """A receive_logs*.py subprocess; `probe_key` is a routing key it is bound for."""

    def __init__(self, name, script, args, probe_key):
        super().__init__(name, script, *args)
        self.probe_key = probe_key

    def got(self):
        """What the receiver printed after ' [x] ', probes left out, in order."""
        out = []
        for line in list(self.lines):
            if not line.startswith(" [x] "):
                continue
            rest = line[len(" [x] ") :]
            if PROBE in rest:
                continue
            out.append(rest)
        return out

    def printed(self, text):
        return any(text in line for line in self.lines)


def run_script(script, *args, expect):
    """Run an emit script like the tutorial does; it must print `expect`."""
    env = dict(os.environ, AMQP_HOST=HOST, AMQP_PORT=str(PORT), PYTHONUNBUFFERED="1")
    try:
        r = subprocess.run(
            [sys.executable, os.path.join(HERE, script), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            cwd=HERE,
            timeout=EMIT_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise Failure(f"{script} {args} did not finish within {EMIT_TIMEOUT:.0f}s")
    for line in r.stdout.splitlines():
        log(f"    [{script}] {line}")
    for line in r.stderr.splitlines():
        log(f"    [{script} stderr] {line}")
    check(r.returncode == 0, f"{script} {args} exited with {r.returncode}")
    check(expect in r.stdout.splitlines(), f"{script} did not print {expect!r}")


class Driver:
    """The driver's own connection: confirmed, mandatory probes."""

    def __init__(self):
        self.conn = connect()
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    def reopen(self):
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    def routed(self, exchange, key, body):
        """Publish mandatory + confirmed; True when routed, False when returned."""
        try:
            self.ch.basic_publish(exchange, key, body.encode(), mandatory=True)
            return True
        except pika.exceptions.UnroutableError as e:
            check(len(e.messages) == 1, f"one returned message, got {e.messages}")
            m = e.messages[0].method
            check(m.reply_code == 312, f"basic.return reply_code 312 NO_ROUTE, got {m.reply_code}")
            return False

    def sync(self, exchange, receivers, procs):
        """Probe every receiver (see module doc) and wait until each printed its probe."""
        for r in receivers:
            body = f"{PROBE}{uuid.uuid4().hex} for {r.name}"
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while not self.routed(exchange, r.probe_key, body):
                if r.popen.poll() is not None:
                    raise Failure(f"{r.name} exited (rc={r.popen.returncode}) before its binding existed")
                if time.monotonic() > deadline:
                    raise Failure(f"{exchange!r} never routed {r.probe_key!r} ({r.name}'s binding)")
                self.conn.process_data_events(time_limit=0.05)
            wait_until(lambda: r.printed(body), STARTUP_TIMEOUT, f"{r.name} to print its probe", procs)

    def wait_unroutable(self, exchange, key, what):
        """Poll until a mandatory publish to exchange/key comes back."""
        deadline = time.monotonic() + GONE_TIMEOUT
        while self.routed(exchange, key, f"{PROBE}{uuid.uuid4().hex} gone?"):
            if time.monotonic() > deadline:
                raise Failure(f"{exchange!r} still routes {key!r} {GONE_TIMEOUT:.0f}s after {what}")
            self.conn.process_data_events(time_limit=0.1)

    def close(self):
        try:
            self.conn.close()
        except Exception:
            pass


def start_receivers(driver, exchange, specs, procs):
    """specs: (name, script, args, probe_key).  Starts them all, then waits for each."""
    rs = [Receiver(*spec) for spec in specs]
    procs.extend(rs)
    for r in rs:
        wait_until(lambda: WAITING in r.lines, STARTUP_TIMEOUT, f"{r.name}'s waiting line", [r])
    driver.sync(exchange, rs, rs)
    return rs


def stop_receivers(rs):
    """Ctrl+C, as the tutorial says; each prints 'Interrupted' and exits 0."""
    for r in rs:
        r.kill(signal.SIGINT)
    for r in rs:
        try:
            rc = r.popen.wait(10)
        except subprocess.TimeoutExpired:
            raise Failure(f"{r.name} did not exit on SIGINT")
        r.thread.join(10)
        check(rc == 0, f"{r.name} exited with {rc} on SIGINT")


def check_received(rs, expected):
    for r in rs:
        got = r.got()
        log(f"  {r.name} {r.popen.args[3:]} got: {got}")
        check(got == expected[r.name], f"{r.name} should get {expected[r.name]}, got {got}")


# --------------------------------------------------------------------------
# tests


def test_fanout(driver, procs):
    # tutorial 3's temporary queues, seen from the driver's own connection
    ok = driver.ch.queue_declare(queue="", exclusive=True)
    name = ok.method.queue
    log(f"  queue.declare(queue='', exclusive=True) -> {name!r}")
    check(name.startswith("amq.gen-"), f"server-named queue looks like amq.gen-..., got {name!r}")
    other = connect()
    try:
        och = other.channel()
        try:
            och.queue_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            log(f"  passive declare from another connection: {e.reply_code} {e.reply_text}")
            check(e.reply_code == 405, f"another connection gets 405 RESOURCE_LOCKED, got {e!r}")
        else:
            raise Failure("another connection could declare (passive) an exclusive queue")
    finally:
        other.close()
    driver.ch.queue_delete(name)

    rs = start_receivers(
        driver,
        "logs",
        [("receiver A", "receive_logs.py", [], ""), ("receiver B", "receive_logs.py", [], "")],
        procs,
    )
    msgs = ["info: Hello World!", "warning: disk 91% full", "error: Run. Run. Or it will explode."]
    run_script("emit_log.py", expect=f" [x] Sent {msgs[0]}")  # no argument: the default message
    for m in msgs[1:]:
        run_script("emit_log.py", *m.split(" "), expect=f" [x] Sent {m}")
    driver.sync("logs", rs, rs)
    check_received(rs, {"receiver A": msgs, "receiver B": msgs})

    # a third receiver only gets what is published after it bound its queue
    (c,) = start_receivers(driver, "logs", [("receiver C", "receive_logs.py", [], "")], procs)
    late = "info: late message"
    run_script("emit_log.py", *late.split(" "), expect=f" [x] Sent {late}")
    rs.append(c)
    driver.sync("logs", rs, rs)
    check_received(rs, {"receiver A": msgs + [late], "receiver B": msgs + [late], "receiver C": [late]})

    # Ctrl+C: the connection closes, the exclusive queues (and their bindings) go
    stop_receivers(rs)
    driver.wait_unroutable("logs", "", "all receivers exited")
    log("  all receivers gone: 'logs' routes nowhere (exclusive queues deleted)")


def test_direct(driver, procs):
    # the tutorial: one receiver saves warnings and errors, one prints everything
    rs = start_receivers(
        driver,
        "direct_logs",
        [
            ("errors", "receive_logs_direct.py", ["warning", "error"], "error"),
            ("all", "receive_logs_direct.py", ["info", "warning", "error"], "info"),
        ],
        procs,
    )
    emits = [
        ("error", "Run. Run. Or it will explode."),
        ("info", "Just so you know."),
        ("warning", "Careful now."),
        ("debug", "Nobody listens to debug."),
        ("error", "Second error."),
    ]
    for sev, msg in emits:
        run_script("emit_log_direct.py", sev, *msg.split(" "), expect=f" [x] Sent {sev}:{msg}")
    run_script("emit_log_direct.py", expect=" [x] Sent info:Hello World!")  # the defaults
    driver.sync("direct_logs", rs, rs)
    check_received(
        rs,
        {
            "errors": ["error:Run. Run. Or it will explode.", "warning:Careful now.", "error:Second error."],
            "all": [
                "error:Run. Run. Or it will explode.",
                "info:Just so you know.",
                "warning:Careful now.",
                "error:Second error.",
                "info:Hello World!",
            ],
        },
    )
    check(not driver.routed("direct_logs", "debug", f"{PROBE}debug"), "direct_logs must not route 'debug'")
    check(not driver.routed("direct_logs", "Error", f"{PROBE}Error"), "direct routing keys are case sensitive")
    stop_receivers(rs)
    driver.wait_unroutable("direct_logs", "error", "all receivers exited")


def test_topic_logs(driver, procs):
    # the tutorial's examples: receive_logs_topic.py "#", "kern.*", "*.critical",
    # and "kern.*" "*.critical" together
    rs = start_receivers(
        driver,
        "topic_logs",
        [
            ("all", "receive_logs_topic.py", ["#"], "probe.any"),
            ("kern", "receive_logs_topic.py", ["kern.*"], "kern.probe"),
            ("critical", "receive_logs_topic.py", ["*.critical"], "probe.critical"),
            ("kern+critical", "receive_logs_topic.py", ["kern.*", "*.critical"], "kern.probe"),
        ],
        procs,
    )
    emits = [
        ("kern.critical", "A critical kernel error"),
        ("kern.info", "kernel info"),
        ("cron.critical", "cron is on fire"),
        ("cron.info", "cron info"),
        ("kern", "just kern"),
        ("kern.info.extra", "three words"),
        ("anonymous.info", "Hello World!"),  # emit_log_topic.py without arguments
    ]
    for key, msg in emits[:-1]:
        run_script("emit_log_topic.py", key, *msg.split(" "), expect=f" [x] Sent {key}:{msg}")
    run_script("emit_log_topic.py", expect=" [x] Sent anonymous.info:Hello World!")
    driver.sync("topic_logs", rs, rs)
    every = [f"{k}:{m}" for k, m in emits]
    check_received(
        rs,
        {
            "all": every,
            "kern": ["kern.critical:A critical kernel error", "kern.info:kernel info"],
            "critical": ["kern.critical:A critical kernel error", "cron.critical:cron is on fire"],
            # kern.critical matches both bindings of one queue: delivered once
            "kern+critical": [
                "kern.critical:A critical kernel error",
                "kern.info:kernel info",
                "cron.critical:cron is on fire",
            ],
        },
    )
    stop_receivers(rs)
    driver.wait_unroutable("topic_logs", "kern.critical", "all receivers exited")


def test_topic_animals(driver, procs):
    # tutorial 5's diagram: Q1 *.orange.*; Q2 *.*.rabbit and lazy.#
    rs = start_receivers(
        driver,
        "topic_logs",
        [
            ("Q1", "receive_logs_topic.py", ["*.orange.*"], "probe.orange.probe"),
            ("Q2", "receive_logs_topic.py", ["*.*.rabbit", "lazy.#"], "lazy.probe"),
        ],
        procs,
    )
    keys = [
        "quick.orange.rabbit",  # both
        "lazy.orange.elephant",  # both
        "quick.orange.fox",  # Q1
        "lazy.brown.fox",  # Q2
        "lazy.pink.rabbit",  # Q2, once although it matches both of Q2's bindings
        "quick.brown.fox",  # nobody
        "orange",  # nobody
        "quick.orange.male.rabbit",  # nobody
        "lazy.orange.male.rabbit",  # Q2
        "lazy",  # Q2: '#' matches zero words
    ]
    for i, key in enumerate(keys):
        run_script("emit_log_topic.py", key, f"m{i}", expect=f" [x] Sent {key}:m{i}")
    driver.sync("topic_logs", rs, rs)
    q1 = ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox"]
    q2 = ["quick.orange.rabbit", "lazy.orange.elephant", "lazy.brown.fox", "lazy.pink.rabbit"]
    q2 += ["lazy.orange.male.rabbit", "lazy"]
    check_received(
        rs,
        {"Q1": [f"{k}:m{keys.index(k)}" for k in q1], "Q2": [f"{k}:m{keys.index(k)}" for k in q2]},
    )
    for key in ["quick.brown.fox", "orange", "quick.orange.male.rabbit"]:
        check(not driver.routed("topic_logs", key, f"{PROBE}{key}"), f"topic_logs must not route {key!r}")
    stop_receivers(rs)
    driver.wait_unroutable("topic_logs", "lazy.orange.elephant", "all receivers exited")


TESTS = [
    ("fanout", test_fanout),
    ("direct", test_direct),
    ("topic_logs", test_topic_logs),
    ("topic_animals", test_topic_animals),
]


def main():
    log(f"tutorials 3-5 interop driver: broker {HOST}:{PORT}, pika {pika.__version__}, python {sys.version.split()[0]}")
    if not probe_server():
        return 1
    only = set(sys.argv[1:])
    results = []
    for name, fn in TESTS:
        if only and name not in only:
            continue

        def case(fn=fn):
            procs = []
            driver = None
            try:
                driver = Driver()
                fn(driver, procs)
            finally:
                for p in procs:
                    p.reap()
                if driver is not None:
                    driver.close()

        run_case(name, case, results)
    return summary(results)


if __name__ == "__main__":
    sys.exit(main())
