//! What the CLI tests share: an in-process minimq broker on its own runtime, so the test
//! thread can block on child processes and pipes while the broker keeps serving.
#![allow(dead_code)]

/// A broker on an ephemeral port (and, if asked, its management API on another),
/// shut down gracefully when dropped.
pub struct TestBroker {
    /// The runtime the broker runs on; tests may `block_on` client work with it.
    pub rt: tokio::runtime::Runtime,
    broker: Option<minimq_broker::Broker>,
    /// `amqp://` URL of the broker.
    pub url: String,
    /// `http://` URL of the management API ("" when it is off).
    pub http: String,
}

impl TestBroker {
    /// A broker without the management API.
    pub fn start() -> TestBroker {
        TestBroker::build(false)
    }

    /// A broker with the management API on an ephemeral port.
    pub fn with_http() -> TestBroker {
        TestBroker::build(true)
    }

    /// The broker itself, for what a test checks behind the CLI's back.
    pub fn broker(&self) -> &minimq_broker::Broker {
        self.broker.as_ref().expect("running until dropped")
    }

    fn build(http: bool) -> TestBroker {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let builder = minimq_broker::Broker::builder().listen("127.0.0.1:0".parse().unwrap());
        let builder = if http {
            builder.http(Some("127.0.0.1:0".parse().unwrap()))
        } else {
            builder
        };
        let broker = rt.block_on(builder.start()).expect("broker starts");
        let url = broker.amqp_url();
        let http = broker
            .http_addr()
            .map(|a| format!("http://{a}"))
            .unwrap_or_default();
        TestBroker {
            rt,
            broker: Some(broker),
            url,
            http,
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(broker) = self.broker.take() {
            self.rt.block_on(broker.shutdown());
        }
    }
}
