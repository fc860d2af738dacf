//! RabbitMQ tutorial two ("work queues"), the producer: sends one persistent task to the
//! durable `task_queue`. Each `.` in the message is one second of work for a worker.
//!
//! ```text
//! cargo run -p minimq-client --example new_task -- "A very hard task..."
//! ```
//! The broker URL comes from `AMQP_URL` (default `amqp://localhost:5672/%2f`).

use minimq_client::{BasicProperties, Connection, FieldTable, QueueDeclareOptions};

#[tokio::main]
async fn main() -> minimq_client::Result<()> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://localhost:5672/%2f".into());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let message = if args.is_empty() {
        "Hello World!".to_string()
    } else {
        args.join(" ")
    };

    let connection = Connection::connect(&url).await?;
    let channel = connection.open_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare("task_queue", durable, FieldTable::new())
        .await?;

    let persistent = BasicProperties {
        delivery_mode: Some(2),
        ..BasicProperties::default()
    };
    channel
        .basic_publish("", "task_queue", false, persistent, message.clone())
        .await?;
    println!(" [x] Sent {message}");

    connection.close().await
}
