//! Starts a broker in-process on an ephemeral port, prints its URL, and shuts it down
//! on Ctrl+C — the same API the project's tests use.
//!
//! `cargo run -p minimq-broker --example embedded`

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let broker = minimq_broker::Broker::builder()
        .listen("127.0.0.1:0".parse().expect("valid address"))
        .start()
        .await?;
    println!("minimq listening: {}", broker.amqp_url());
    let stop = broker.shutdown_handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.shutdown();
    });
    broker.wait_for_shutdown_request().await;
    broker.shutdown().await;
    Ok(())
}
