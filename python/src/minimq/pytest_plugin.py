"""The pytest plugin of the minimq package (entry point `pytest11`): fixtures that give a
test a real minimq broker.

- `minimq_broker` (session): one broker for the whole run.
- `minimq_url` (session): that broker's AMQP URL.
- `minimq_fresh_broker` (function): a new, empty broker for one test, closed after it.
"""

import pytest

from minimq import Broker


@pytest.fixture(scope="session")
def minimq_broker():
    """A minimq broker shared by every test of the session."""
    with Broker() as broker:
        yield broker


@pytest.fixture(scope="session")
def minimq_url(minimq_broker):
    """The AMQP URL of the session's broker (`amqp://guest:guest@127.0.0.1:PORT/%2f`)."""
    return minimq_broker.url


@pytest.fixture
def minimq_fresh_broker():
    """A broker of this test's own: nothing declared, nothing queued."""
    with Broker() as broker:
        yield broker
