//! RabbitMQ tutorial two ("work queues"), the worker: takes tasks from the durable
//! `task_queue` one at a time (prefetch 1), "works" one second per `.` in the message,
//! then acknowledges it, so a task survives a worker that dies half-way.
//!
//! ```text
//! cargo run -p minimq-client --example worker
//! ```
//! The broker URL comes from `AMQP_URL` (default `amqp://localhost:5672/%2f`). Stop with
//! Ctrl-C.

use std::time::Duration;

use futures::StreamExt;
use minimq_client::{BasicConsumeOptions, Connection, FieldTable, QueueDeclareOptions};

#[tokio::main]
async fn main() -> minimq_client::Result<()> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://localhost:5672/%2f".into());
    let connection = Connection::connect(&url).await?;
    let channel = connection.open_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare("task_queue", durable, FieldTable::new())
        .await?;
    channel.basic_qos(1, false).await?;

    let mut consumer = channel
        .basic_consume(
            "task_queue",
            "",
            BasicConsumeOptions::default(), // manual acknowledgement
            FieldTable::new(),
        )
        .await?;
    println!(" [*] Waiting for messages. To exit press CTRL+C");

    loop {
        let delivery = tokio::select! {
            next = consumer.next() => match next {
                Some(delivery) => delivery?,
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        };
        let body = String::from_utf8_lossy(&delivery.body);
        println!(" [x] Received {body}");
        let dots = body.bytes().filter(|b| *b == b'.').count() as u64;
        tokio::time::sleep(Duration::from_secs(dots)).await;
        println!(" [x] Done");
        delivery.ack().await?;
    }

    connection.close().await
}
