"""The pytest plugin's fixtures, loaded by entry point (this directory has no
conftest.py): one session broker, its URL, and a fresh broker per test."""

import os

import pika

SEEN = {}


def test_session_broker_and_url(minimq_broker, minimq_url):
    assert minimq_broker.running
    assert minimq_url == minimq_broker.url
    with pika.BlockingConnection(pika.URLParameters(minimq_url)) as conn:
        ch = conn.channel()
        ch.queue_declare("fixture-q")
        ch.basic_publish("", "fixture-q", b"left for the next test")
    SEEN["session_pid"] = minimq_broker.pid


def test_session_broker_is_shared(minimq_broker):
    # Same process, and the message the previous test left is still there.
    assert minimq_broker.pid == SEEN["session_pid"]
    with pika.BlockingConnection(pika.URLParameters(minimq_broker.url)) as conn:
        _, _, body = conn.channel().basic_get("fixture-q", auto_ack=True)
    assert body == b"left for the next test"


def _fresh(broker):
    assert broker.running
    assert broker.pid != SEEN["session_pid"]
    with pika.BlockingConnection(pika.URLParameters(broker.url)) as conn:
        ch = conn.channel()
        # Empty: nothing from the session broker or another fresh one.
        assert ch.queue_declare("fixture-q").method.message_count == 0
        ch.basic_publish("", "fixture-q", b"mine")
    SEEN.setdefault("fresh", []).append((broker.pid, broker.data_dir, broker))


def test_fresh_broker_one(minimq_fresh_broker):
    _fresh(minimq_fresh_broker)


def test_fresh_broker_two(minimq_fresh_broker):
    _fresh(minimq_fresh_broker)
    (first_pid, first_dir, first), _ = SEEN["fresh"]
    assert first_pid != minimq_fresh_broker.pid
    # The previous test's broker is gone and its data deleted.
    assert not first.running
    assert not os.path.exists(first_dir)
