"""The interop Celery app (tasks.py) set up as Celery 5.5+ users run it with quorum queues:
quorum task queue, topic task exchange. A worker then turns on Celery's native delayed
delivery: it declares the `celery_delayed_0..27` topic exchanges and quorum queues (per-level
`x-message-ttl` up to 2^27 s, dead-letter chain, `x-overflow: reject-publish`,
`x-dead-letter-strategy: at-least-once`), and every countdown / eta / retry message travels
through them instead of waiting in the worker's memory.

    cd tests/interop/celery_app && celery -A delayed_tasks worker --pool=solo -l info
"""

from tasks import add, app, fail, flaky  # noqa: F401  (the worker finds the tasks here)

app.conf.update(
    task_default_queue="interop_celery_delayed",
    task_default_queue_type="quorum",
    task_default_exchange="interop_celery_delayed",
    task_default_exchange_type="topic",
    task_default_routing_key="interop_celery_delayed",
    broker_transport_options={"confirm_publish": True},
)
