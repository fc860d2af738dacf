//! Client scenarios against a real RabbitMQ, from `scenarios/`. They are `#[ignore]`d:
//! `MINIMQ_TEST_RABBITMQ_URL=amqp://guest:guest@localhost:5672/%2f cargo test -p
//! minimq-client --test rabbitmq -- --ignored` runs them (CI does, against its private
//! node), and without the variable they fail. Each scenario is bounded to 60 s so a hang
//! fails. `MINIMQ_TEST_RABBITMQ_AMQPS_URL` (an `amqps://` URL of the node's TLS listener,
//! with `cacertfile=`) runs the scenarios that move the most data once more over TLS.

mod scenarios;

use std::time::Duration;

const ENV: &str = "MINIMQ_TEST_RABBITMQ_URL";

fn url() -> String {
    match std::env::var(ENV) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!("{ENV} must name the RabbitMQ node these tests run against"),
    }
}

macro_rules! rabbitmq_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        #[ignore = "needs a RabbitMQ node: MINIMQ_TEST_RABBITMQ_URL (CI runs it with --ignored)"]
        async fn $name() {
            let url = url();
            tokio::time::timeout(Duration::from_secs(60), scenarios::$name(&url))
                .await
                .expect(concat!(stringify!($name), " timed out"));
        }
    )*};
}

rabbitmq_tests!(
    declare_publish_get,
    large_body_is_split_at_frame_max,
    consume_and_ack,
    nack_requeue_redelivers,
    publisher_confirms,
    mandatory_publish_is_returned,
    channel_error_fails_pending_calls,
    heartbeats_keep_an_idle_connection_alive,
    bad_credentials_are_refused,
    close_ends_consumers_and_calls,
    a_burst_of_deliveries_arrives_whole_and_in_order,
    auto_ack_deliveries_need_no_settling,
    transactions_commit_and_roll_back,
);

#[tokio::test]
#[ignore = "needs a RabbitMQ TLS listener: MINIMQ_TEST_RABBITMQ_AMQPS_URL (CI runs it with --ignored)"]
async fn scenarios_over_tls() {
    const TLS_ENV: &str = "MINIMQ_TEST_RABBITMQ_AMQPS_URL";
    let url = match std::env::var(TLS_ENV) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!("{TLS_ENV} must name the RabbitMQ node's TLS listener"),
    };
    for name in [
        "declare_publish_get",
        "large_body_is_split_at_frame_max",
        "publisher_confirms",
        "a_burst_of_deliveries_arrives_whole_and_in_order",
        "close_ends_consumers_and_calls",
    ] {
        tokio::time::timeout(Duration::from_secs(60), scenarios::run(name, &url))
            .await
            .unwrap_or_else(|_| panic!("{name} over TLS timed out"));
    }
}

#[test]
fn every_scenario_is_listed() {
    assert_eq!(scenarios::ALL.len(), 13);
}
