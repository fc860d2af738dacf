//! Client scenarios against a real RabbitMQ, from `scenarios/`. They are `#[ignore]`d:
//! `MINIMQ_TEST_RABBITMQ_URL=amqp://guest:guest@localhost:5672/%2f cargo test -p
//! minimq-client --test rabbitmq -- --ignored` runs them (CI does, against its private
//! node), and without the variable they fail. Each scenario is bounded to 60 s so a hang
//! fails.

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

#[test]
fn every_scenario_is_listed() {
    assert_eq!(scenarios::ALL.len(), 13);
}
