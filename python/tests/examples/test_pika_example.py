"""Example: an application's pika code tested against the session's minimq broker."""

import pika


def send_task(url, body):
    """The code under test: publishes a persistent task to the durable `tasks` queue."""
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        ch.queue_declare("tasks", durable=True)
        ch.confirm_delivery()
        ch.basic_publish(
            "", "tasks", body, pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
        )


def test_send_task(minimq_url):
    send_task(minimq_url, b"resize photo 42")
    with pika.BlockingConnection(pika.URLParameters(minimq_url)) as conn:
        method, props, body = conn.channel().basic_get("tasks", auto_ack=True)
    assert body == b"resize photo 42"
    assert props.delivery_mode == 2
    assert method.redelivered is False
