//! Server configuration: what the flags and `MINIMQ_*` variables set.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Broker settings. [`Config::default`] is what `minimq-server` runs with no flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on for AMQP.
    pub listen: SocketAddr,
    /// Directory for durable data.
    pub data_dir: PathBuf,
    /// Users and passwords accepted by PLAIN and AMQPLAIN.
    pub users: Vec<(String, String)>,
    /// `channel_max` offered in `connection.tune`.
    pub channel_max: u16,
    /// `frame_max` offered in `connection.tune`.
    pub frame_max: u32,
    /// Heartbeat interval offered in `connection.tune`, seconds.
    pub heartbeat: u16,
    /// Time a client has to complete the handshake.
    pub handshake_timeout: Duration,
    /// Largest message body accepted.
    pub max_message_size: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5672)),
            data_dir: PathBuf::from("./minimq-data"),
            users: vec![("guest".into(), "guest".into())],
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
            handshake_timeout: Duration::from_secs(10),
            max_message_size: 128 * 1024 * 1024,
        }
    }
}
