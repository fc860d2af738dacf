//! The client scenarios from `scenarios/` against an in-process minimq broker on an
//! ephemeral port: the same code that runs against RabbitMQ in `rabbitmq.rs`, always on.

mod scenarios;

use std::time::Duration;

macro_rules! minimq_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let broker = minimq_broker::Broker::builder()
                .listen("127.0.0.1:0".parse().unwrap())
                .start()
                .await
                .expect("broker starts");
            let url = broker.amqp_url();
            tokio::time::timeout(Duration::from_secs(60), scenarios::$name(&url))
                .await
                .expect(concat!(stringify!($name), " timed out"));
            broker.shutdown().await;
        }
    )*};
}

minimq_tests!(
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
