"""pytest plugin for AMQPStorm's functional tests: the broker's AMQP port.

The tests connect with ``Connection(AMQP_HOST, USERNAME, PASSWORD)``, that is
on port 5672 always; CI's brokers listen on free ports. This plugin gives
``amqpstorm.Connection`` the port in ``AMQP_PORT`` when a test passes none
(the tests themselves are run unmodified).
"""

import functools
import os

import amqpstorm.connection


def _patch():
    port = int(os.environ["AMQP_PORT"])
    init = amqpstorm.connection.Connection.__init__

    @functools.wraps(init)
    def with_port(self, hostname, username, password, *args, **kwargs):
        if not args:
            kwargs.setdefault("port", port)
        return init(self, hostname, username, password, *args, **kwargs)

    amqpstorm.connection.Connection.__init__ = with_port


_patch()
