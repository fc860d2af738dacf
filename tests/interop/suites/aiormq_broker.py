"""pytest plugin for aiormq's tests: the broker under test.

aiormq's released tests take two fixtures from a conftest that the sdist does
not ship (it starts RabbitMQ in Docker): ``amqp_direct_url`` and
``rabbitmq_container``. This plugin gives them from the environment:
``AMQP_URL`` is the broker. There is no TLS listener, so the TLS variants are
deselected by the suite script. aiormq's ``amqp_url`` fixture builds its TLS
URLs eagerly from ``rabbitmq_container.ports["5671/tcp"]``: that gives the
AMQP port, so a TLS test that were run would fail (a TLS handshake with a
plain AMQP listener), not pass.
"""

import os

import pytest
from yarl import URL


class _NoContainer:
    class _Ports(dict):
        def __missing__(self, key):
            return URL(os.environ["AMQP_URL"]).port

    ports = _Ports()


@pytest.fixture
def amqp_direct_url() -> URL:
    return URL(os.environ["AMQP_URL"])


@pytest.fixture
def rabbitmq_container():
    return _NoContainer()
