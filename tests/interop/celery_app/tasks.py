"""A tiny Celery app for the interop run (tests/interop/celery_test.py).

Broker: minimq (or RabbitMQ) via py-amqp, results over the broker (rpc://).
The address comes from AMQP_HOST / AMQP_PORT, like the tutorial scripts.

    cd tests/interop/celery_app && celery -A tasks worker --pool=solo -l info
"""

import os

from celery import Celery

HOST = os.environ.get("AMQP_HOST", "127.0.0.1")
PORT = int(os.environ.get("AMQP_PORT", "5672"))

app = Celery(
    "tasks",
    broker=f"pyamqp://guest:guest@{HOST}:{PORT}//",
    backend="rpc://",
)
app.conf.update(
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=3,
    result_expires=300,
    task_default_queue="interop_celery",
)


@app.task
def add(x, y):
    return x + y


@app.task
def fail(msg):
    """Always raises: the caller's .get() re-raises it."""
    raise ValueError(msg)


@app.task(bind=True, max_retries=5, default_retry_delay=1)
def flaky(self, fail_times, countdown=1):
    """Fails `fail_times` times, each time retried after `countdown` seconds
    (an ETA message the retry republishes), then returns what it saw."""
    if self.request.retries < fail_times:
        raise self.retry(exc=RuntimeError(f"attempt {self.request.retries} failed"), countdown=countdown)
    return {"retries": self.request.retries, "args": [fail_times, countdown]}
