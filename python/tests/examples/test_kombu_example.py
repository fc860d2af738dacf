"""Example: kombu (Celery's messaging library) against a fresh minimq broker per test."""

import kombu


def test_kombu_simple_queue(minimq_fresh_broker):
    with kombu.Connection(minimq_fresh_broker.url) as conn:
        queue = conn.SimpleQueue("kombu-example")
        queue.put({"order": 7, "items": ["tea"]})
        message = queue.get(timeout=10)
        assert message.payload == {"order": 7, "items": ["tea"]}
        message.ack()
        assert queue.qsize() == 0
        queue.close()


def test_kombu_producer_and_consumer_with_a_topic_exchange(minimq_fresh_broker):
    exchange = kombu.Exchange("events", type="topic", durable=True)
    queue = kombu.Queue("eu-events", exchange, routing_key="eu.#")
    got = []
    with kombu.Connection(minimq_fresh_broker.url) as conn:
        with conn.Consumer(queue, callbacks=[lambda body, msg: (got.append(body), msg.ack())]):
            producer = conn.Producer()
            producer.publish("eu", exchange=exchange, routing_key="eu.fr.paris", declare=[queue])
            producer.publish("us", exchange=exchange, routing_key="us.ny", declare=[queue])
            # py-amqp reads what has arrived before each publish: a delivery that came
            # back before the second publish was handled then, and nothing is left to drain.
            if not got:
                conn.drain_events(timeout=10)
    assert got == ["eu"]
