#!/usr/bin/env python3
"""Interop driver: TLS, users and permissions with pika, as a user of each meets them.

The same checks, with the same expected texts, run against minimq and against a
RabbitMQ node (RabbitMQ is the reference for every text):

    AMQP_PORT=5672 AMQPS_PORT=5671 TLS_DIR=/tmp/certs HTTP_URL=http://127.0.0.1:15672 \
        python3 tests/interop/tls_users_test.py

Environment:
    AMQP_HOST   broker host for plain AMQP (default 127.0.0.1)
    AMQP_PORT   plain AMQP port (default 5672)
    AMQPS_PORT  AMQP over TLS port, whose certificate is DIR/server.pem and whose CA,
                sent after it, DIR/ca.pem (minimq: --tls-ca; default 5671)
    TLS_DIR     what tests/interop/make_certs.sh made: ca.pem, other-ca.pem
    HTTP_URL    management API, to add and remove the test's users (guest/guest)

Tests:
    tls_round_trip        over amqps with the CA: declare, publish (confirmed), consume, ack
    tls_untrusted_ca      a client trusting another CA: the handshake fails, verify error
    tls_plain_on_tls_port a plain AMQP client on the TLS port fails instead of hanging
    bad_password          403 ACCESS_REFUSED, over plain AMQP and over TLS
    no_vhost_permission   a user without permissions on '/': 530 NOT_ALLOWED
    unknown_vhost         530 NOT_ALLOWED - vhost ... not found
    queue_permission      configure on '^tls-ok-' only: declaring another queue is 403
    read_permission       no read permission: basic.get is 403
    own_vhost             a vhost made over the API: the user works in it with its own
                          permissions, its queue is not '/'s queue of the same name, a
                          refusal there names it, and deleting it closes the user's
                          connection with 320 CONNECTION_FORCED
Exit code 0 when every test passed, 1 otherwise.
"""

import base64
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pika
import pika.exceptions

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tutorial_test import Failure, check, log, run_case, summary  # noqa: E402

HOST = os.environ.get("AMQP_HOST", "127.0.0.1")
PORT = int(os.environ.get("AMQP_PORT", "5672"))
TLS_PORT = int(os.environ.get("AMQPS_PORT", "5671"))
TLS_DIR = os.environ.get("TLS_DIR", ".")
HTTP_URL = os.environ.get("HTTP_URL", "http://127.0.0.1:15672").rstrip("/")

TIMEOUT = 10  # seconds for a connection attempt (socket, TLS and AMQP handshakes)
RUN = uuid.uuid4().hex[:8]  # names unique to this run: the node may be shared
USER = f"tls-user-{RUN}"
PASSWORD = "s3cret"


def api(method, path, body=None):
    """One management API request as guest; the parsed JSON answer or None."""
    req = urllib.request.Request(HTTP_URL + path, method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, data=data, timeout=30) as r:
        raw = r.read()
        return json.loads(raw) if raw else None


def quoted(name):
    return urllib.parse.quote(name, safe="")


def params(user="guest", password="guest", vhost="/", tls_ca=None, port=None):
    """Connection parameters; with `tls_ca`, TLS to the AMQPS port trusting that CA
    and checking the name `localhost`."""
    ssl_options = None
    if tls_ca is not None:
        context = ssl.create_default_context(cafile=tls_ca)
        ssl_options = pika.SSLOptions(context, "localhost")
        host = "localhost"
        port = port or TLS_PORT
    else:
        host = HOST
        port = port or PORT
    return pika.ConnectionParameters(
        host=host,
        port=port,
        virtual_host=vhost,
        credentials=pika.PlainCredentials(user, password),
        ssl_options=ssl_options,
        socket_timeout=TIMEOUT,
        stack_timeout=TIMEOUT,
        blocked_connection_timeout=TIMEOUT,
        connection_attempts=1,
    )


def refused(p):
    """The exception a connection attempt with `p` fails with (it must fail)."""
    try:
        conn = pika.BlockingConnection(p)
    except (pika.exceptions.AMQPError, OSError) as e:  # ssl errors are OSErrors
        return e
    conn.close()
    raise Failure("the connection was accepted")


def closed_by_broker(e):
    """(reply_code, reply_text) of a connection the broker closed in its handshake."""
    # pika reports a close during the handshake as ProbableAuthenticationError /
    # ProbableAccessDeniedError or as ConnectionClosedByBroker, each with the close.
    for err in [e, *getattr(e, "args", ())]:
        if isinstance(err, pika.exceptions.ConnectionClosedByBroker):
            return err.reply_code, err.reply_text
        if isinstance(err, (pika.exceptions.ProbableAuthenticationError,
                            pika.exceptions.ProbableAccessDeniedError)):
            return closed_by_broker_args(err)
    raise Failure(f"not a close by the broker: {e!r}")


def closed_by_broker_args(err):
    # Probable*Error carries the ConnectionClosedByBroker's text: "ConnectionClosedByBroker:
    # (403) 'ACCESS_REFUSED - ...'".
    text = str(err)
    check(text.startswith("ConnectionClosedByBroker: ("), f"unexpected {err!r}")
    code = int(text[len("ConnectionClosedByBroker: ("):].split(")", 1)[0])
    reply = text.split(") ", 1)[1]
    if len(reply) >= 2 and reply[0] in "'\"" and reply[-1] == reply[0]:
        reply = reply[1:-1]  # the repr's quotes
    return code, reply


def expect(got, want):
    log(f"    {got}")
    check(got == want, f"got {got!r}, want {want!r}")


# --------------------------------------------------------------------------
# TLS


def tls_round_trip():
    conn = pika.BlockingConnection(params(tls_ca=os.path.join(TLS_DIR, "ca.pem")))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        q = ch.queue_declare(f"tls-q-{RUN}", exclusive=True).method.queue
        body = os.urandom(1024)
        ch.basic_publish("", q, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
        got = []

        def on_message(channel, method, props, data):
            got.append(data)
            channel.basic_ack(method.delivery_tag)
            channel.stop_consuming()

        ch.basic_qos(prefetch_count=10)
        ch.basic_consume(q, on_message)
        conn.call_later(TIMEOUT, ch.stop_consuming)
        ch.start_consuming()
        check(got == [body], f"consumed {len(got)} messages, want the one published")
        expect(ch.queue_declare(q, passive=True).method.message_count, 0)
    finally:
        conn.close()


def tls_untrusted_ca():
    e = refused(params(tls_ca=os.path.join(TLS_DIR, "other-ca.pem")))
    # pika 1.3 raises the ssl error itself, or wrapped in an AMQPConnectionError.
    cause = e.args[0] if isinstance(e, pika.exceptions.AMQPConnectionError) and e.args else e
    check(isinstance(cause, ssl.SSLCertVerificationError), f"not a verify error: {e!r}")
    # Both brokers send their CA (RabbitMQ's ssl_options.cacertfile, minimq's --tls-ca)
    # after the certificate, so OpenSSL finds a root it does not trust in the chain.
    expect(cause.verify_message, "self-signed certificate in certificate chain")


def tls_plain_on_tls_port():
    e = refused(params(port=TLS_PORT))
    check(isinstance(e, pika.exceptions.AMQPConnectionError), f"unexpected {e!r}")
    log(f"    {type(e).__name__}")


# --------------------------------------------------------------------------
# users and permissions


def bad_password():
    want = (403, "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
                 "For details see the broker logfile.")
    expect(closed_by_broker(refused(params(USER, "wrong"))), want)
    expect(closed_by_broker(refused(params(USER, "wrong", tls_ca=os.path.join(TLS_DIR, "ca.pem")))), want)


def no_vhost_permission():
    api("DELETE", f"/api/permissions/%2F/{quoted(USER)}")
    try:
        expect(closed_by_broker(refused(params(USER, PASSWORD))),
               (530, f"NOT_ALLOWED - access to vhost '/' refused for user '{USER}'"))
    finally:
        grant(".*", ".*", ".*")


def unknown_vhost():
    vhost = f"tls-nope-{RUN}"
    expect(closed_by_broker(refused(params(vhost=vhost))),
           (530, f"NOT_ALLOWED - vhost {vhost} not found"))


def grant(configure, write, read):
    api("PUT", f"/api/permissions/%2F/{quoted(USER)}",
        {"configure": configure, "write": write, "read": read})


def channel_refusal(action, vhost="/"):
    """(reply_code, reply_text) of the channel close `action(channel)` brings."""
    conn = pika.BlockingConnection(params(USER, PASSWORD, vhost=vhost))
    try:
        ch = conn.channel()
        try:
            action(ch)
        except pika.exceptions.ChannelClosedByBroker as e:
            return e.reply_code, e.reply_text
        raise Failure("the channel was not closed")
    finally:
        if conn.is_open:
            conn.close()


def queue_permission():
    grant("^tls-ok-", ".*", ".*")
    try:
        conn = pika.BlockingConnection(params(USER, PASSWORD))
        ch = conn.channel()
        ch.queue_declare(f"tls-ok-{RUN}", exclusive=True)  # allowed
        conn.close()
        q = f"tls-no-{RUN}"
        expect(channel_refusal(lambda ch: ch.queue_declare(q, exclusive=True)),
               (403, f"ACCESS_REFUSED - access to queue '{q}' in vhost '/' refused for user '{USER}'"))
    finally:
        grant(".*", ".*", ".*")


def read_permission():
    q = f"tls-read-{RUN}"
    conn = pika.BlockingConnection(params())
    conn.channel().queue_declare(q, auto_delete=False)
    conn.close()
    grant(".*", ".*", "^$")
    try:
        expect(channel_refusal(lambda ch: ch.basic_get(q)),
               (403, f"ACCESS_REFUSED - access to queue '{q}' in vhost '/' refused for user '{USER}'"))
    finally:
        grant(".*", ".*", ".*")
        conn = pika.BlockingConnection(params())
        conn.channel().queue_delete(q)
        conn.close()


def own_vhost():
    import time

    vhost = f"tls-vh-{RUN}"
    q = f"tls-vq-{RUN}"
    api("PUT", f"/api/vhosts/{quoted(vhost)}")
    try:
        api("PUT", f"/api/permissions/{quoted(vhost)}/{quoted(USER)}",
            {"configure": "^tls-vq-", "write": ".*", "read": ".*"})
        conn = pika.BlockingConnection(params(USER, PASSWORD, vhost=vhost))
        ch = conn.channel()
        ch.queue_declare(q, auto_delete=False)
        ch.basic_publish("", q, b"in the vhost")
        # '/' has no queue of that name: a passive declare there is 404.
        root = pika.BlockingConnection(params())
        try:
            root.channel().queue_declare(q, passive=True)
            raise Failure(f"queue {q} is visible in '/'")
        except pika.exceptions.ChannelClosedByBroker as e:
            expect((e.reply_code, e.reply_text),
                   (404, f"NOT_FOUND - no queue '{q}' in vhost '/'"))
        finally:
            if root.is_open:
                root.close()
        method, _props, body = ch.basic_get(q, auto_ack=True)
        expect(body, b"in the vhost")
        other = f"tls-other-{RUN}"
        ch.close()
        conn.close()
        expect(channel_refusal(lambda c: c.queue_declare(other), vhost),
               (403, f"ACCESS_REFUSED - access to queue '{other}' in vhost '{vhost}' refused for user '{USER}'"))
        # Deleting the vhost closes the connections in it.
        conn = pika.BlockingConnection(params(USER, PASSWORD, vhost=vhost))
        api("DELETE", f"/api/vhosts/{quoted(vhost)}")
        deadline = time.monotonic() + TIMEOUT
        try:
            while time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.2)
            raise Failure("the connection outlived its vhost")
        except pika.exceptions.ConnectionClosedByBroker as e:
            # RabbitMQ 3.10 closes with "is deleted", or with "is down" when the vhost's
            # processes stop before its connections are closed (a race in RabbitMQ).
            got = (e.reply_code, e.reply_text)
            log(f"    {got}")
            check(got in [(320, f"CONNECTION_FORCED - vhost '{vhost}' is {how}")
                          for how in ("deleted", "down")],
                  f"got {got!r}, want 320 CONNECTION_FORCED - vhost '{vhost}' is deleted")
    finally:
        try:
            api("DELETE", f"/api/vhosts/{quoted(vhost)}")
        except urllib.error.HTTPError:
            pass  # deleted above


TESTS = [
    ("tls_round_trip", tls_round_trip),
    ("tls_untrusted_ca", tls_untrusted_ca),
    ("tls_plain_on_tls_port", tls_plain_on_tls_port),
    ("bad_password", bad_password),
    ("no_vhost_permission", no_vhost_permission),
    ("unknown_vhost", unknown_vhost),
    ("queue_permission", queue_permission),
    ("read_permission", read_permission),
    ("own_vhost", own_vhost),
]


def main():
    log(f"TLS and users interop driver: amqp {HOST}:{PORT}, amqps localhost:{TLS_PORT}, "
        f"management {HTTP_URL}, pika {pika.__version__}")
    only = set(sys.argv[1:])
    results = []
    try:
        api("PUT", f"/api/users/{quoted(USER)}", {"password": PASSWORD, "tags": ""})
        grant(".*", ".*", ".*")
    except Exception as e:  # noqa: BLE001 - reported as the run's failure
        log(f"FAIL: cannot add the test user through {HTTP_URL}: {e!r}")
        return 1
    try:
        for name, fn in TESTS:
            if not only or name in only:
                run_case(name, fn, results)
    finally:
        try:
            api("DELETE", f"/api/users/{quoted(USER)}")
        except Exception as e:  # noqa: BLE001 - the run's verdict stands
            log(f"(could not delete {USER}: {e!r})")
    return summary(results)


if __name__ == "__main__":
    sys.exit(main())
