"""Tests of `minimq.Broker`: start and stop, restart keeps durable data, kill + restart
recovers, and the server exits with the Python process that started it."""

import base64
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import textwrap
import urllib.request

import pika
import pytest

import minimq


def _alive(pid):
    """Whether `pid` is a live process (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _publish_persistent(url, queue, body):
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(queue, durable=True)
        # With confirms, basic_publish returns once the broker has taken the message.
        ch.basic_publish(
            "", queue, body, pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
        )


def _get(url, queue):
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        ready = ch.queue_declare(queue, passive=True).method.message_count
        _, _, body = ch.basic_get(queue, auto_ack=True)
        return ready, body


def test_start_and_stop():
    with minimq.Broker() as broker:
        assert broker.url.startswith("amqp://guest:guest@127.0.0.1:")
        assert broker.url.endswith("/%2f")
        assert broker.http_url.startswith("http://127.0.0.1:")
        assert _alive(broker.pid)
        assert os.path.isdir(broker.data_dir)
        pid, data_dir = broker.pid, broker.data_dir
        with pika.BlockingConnection(pika.URLParameters(broker.url)) as conn:
            assert conn.channel().queue_declare("q").method.message_count == 0
        # The management API answers, with RabbitMQ's JSON.
        req = urllib.request.Request(broker.http_url + "/api/overview")
        req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
            assert "management_version" in json.load(r)
        broker.stop()
        assert broker.returncode == 0, "a graceful stop exits 0"
        assert not _alive(pid)
        assert not broker.running
        assert os.path.isdir(data_dir), "stop keeps the data for restart"
    assert not os.path.exists(data_dir), "the end of the with block deletes the data"


def test_the_wheel_carries_minimqctl():
    """`minimqctl` is installed beside `minimq-server` and speaks to the broker's API."""
    server = minimq.find_server()
    ctl = os.path.join(os.path.dirname(server), "minimqctl")
    assert os.access(ctl, os.X_OK), f"no minimqctl beside {server}"
    with minimq.Broker() as broker:
        _publish_persistent(broker.url, "ctl-q", b"x")
        out = subprocess.run(
            [ctl, "--url", broker.http_url, "list_queues", "name", "messages"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert "ctl-q\t1" in out.stdout.splitlines(), out.stdout


def test_http_off():
    with minimq.Broker(http=False) as broker:
        assert broker.http_url is None


def test_restart_keeps_a_durable_queues_persistent_message():
    with minimq.Broker() as broker:
        _publish_persistent(broker.url, "durable-q", b"survives")
        old_pid, old_url = broker.pid, broker.url
        broker.restart()
        assert broker.pid != old_pid
        assert not _alive(old_pid)
        assert broker.url == old_url, "restart reuses the free port"
        assert _get(broker.url, "durable-q") == (1, b"survives")


def test_restart_takes_a_new_port_when_the_old_one_is_taken():
    with minimq.Broker(http=False) as broker:
        _publish_persistent(broker.url, "moved-q", b"still here")
        broker.stop()
        port = int(broker.url.rsplit(":", 1)[1].split("/")[0])
        squatter = socket.socket()
        try:
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            old_url = broker.url
            broker.start()
            assert broker.url != old_url
        finally:
            squatter.close()
        assert _get(broker.url, "moved-q") == (1, b"still here")


def test_kill_then_restart_recovers():
    with minimq.Broker() as broker:
        _publish_persistent(broker.url, "crash-q", b"confirmed")
        pid = broker.pid
        broker.kill()
        assert broker.returncode == -9
        assert not _alive(pid)
        broker.restart()
        assert _get(broker.url, "crash-q") == (1, b"confirmed")


def test_the_server_exits_with_the_python_process_that_started_it(tmp_path):
    # A Python process starts a broker, reports it and dies without cleaning up.
    script = textwrap.dedent(
        """
        import json, os, sys, minimq
        b = minimq.Broker().start()
        print(json.dumps({"pid": b.pid, "root": os.path.dirname(b.data_dir)}), flush=True)
        os._exit(0)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=60
    )
    info = json.loads(out.stdout)
    try:
        # Wait for the orphaned server's exit as an event: a pidfd becomes readable.
        fd = os.pidfd_open(info["pid"])
    except ProcessLookupError:
        fd = None  # already gone
    try:
        if fd is not None:
            ready, _, _ = select.select([fd], [], [], 20)
            assert ready, "the server outlived the process that started it"
    finally:
        if fd is not None:
            os.close(fd)
        # The dead process could not delete its directory.
        shutil.rmtree(info["root"], ignore_errors=True)
    assert not _alive(info["pid"])


def test_a_missing_server_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIMQ_SERVER", str(tmp_path / "nope"))
    with pytest.raises(minimq.BrokerError):
        minimq.Broker().start()
