"""Example: Celery tasks run by a real worker (not eager mode) that consumes from the
session's minimq broker; results come back over the rpc:// backend (AMQP too)."""

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker


@pytest.fixture(scope="module")
def celery_app(minimq_url):
    app = Celery("minimq_example", broker=minimq_url, backend="rpc://")
    app.conf.update(
        task_default_queue="minimq-example",
        broker_connection_retry_on_startup=True,
        # The worker's event loop sees the stop request only when it wakes: at the latest
        # after 10 s with no timer due. A 2 s AMQP heartbeat is checked every second, so
        # the worker thread ends within about a second of the fixture's teardown.
        broker_heartbeat=2,
    )

    @app.task(name="example.add")
    def add(x, y):
        return x + y

    @app.task(name="example.fail")
    def fail():
        raise ValueError("boom")

    yield app
    app.close()


@pytest.fixture(scope="module")
def celery_worker(celery_app):
    # A worker thread with the solo pool, consuming over AMQP like a deployed worker.
    with start_worker(
        celery_app,
        pool="solo",
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=30,  # margin for a loaded machine; it takes about a second
    ) as w:
        yield w


def test_task_runs_on_the_worker(celery_app, celery_worker):
    result = celery_app.tasks["example.add"].delay(2, 3)
    assert result.get(timeout=20) == 5
    assert result.successful()


def test_many_tasks_in_flight(celery_app, celery_worker):
    results = [celery_app.tasks["example.add"].delay(i, i) for i in range(20)]
    assert [r.get(timeout=20) for r in results] == [2 * i for i in range(20)]


def test_a_failing_task_reraises(celery_app, celery_worker):
    result = celery_app.tasks["example.fail"].delay()
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=20)
    assert result.state == "FAILURE"
