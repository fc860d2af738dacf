//! Errors a broker answers with on the wire: a channel error closes the channel, a
//! connection error closes the connection. Texts follow RabbitMQ's `NAME - detail` form.

use minimq_protocol::ReplyCode;

/// An AMQP-level error with the method that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    /// The reply code.
    pub code: ReplyCode,
    /// The full reply text, `NAME - detail`.
    pub text: String,
    /// Class of the method that failed (0 if none).
    pub class_id: u16,
    /// Id of the method that failed (0 if none).
    pub method_id: u16,
}

impl AmqpError {
    /// An error with `code` and a detail message; the method ids are filled in later.
    pub fn new(code: ReplyCode, detail: impl std::fmt::Display) -> Self {
        AmqpError {
            code,
            text: code.text(detail),
            class_id: 0,
            method_id: 0,
        }
    }

    /// Sets the failing method's ids, unless already set.
    pub fn on(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 && self.method_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    /// Whether this closes the whole connection.
    pub fn is_hard(&self) -> bool {
        self.code.is_hard()
    }

    /// 404 `no queue 'q' in vhost 'v'`.
    pub fn no_queue(name: &str, vhost: &str) -> Self {
        AmqpError::new(
            ReplyCode::NotFound,
            format!("no queue '{name}' in vhost '{vhost}'"),
        )
    }

    /// 404 `no exchange 'x' in vhost 'v'`.
    pub fn no_exchange(name: &str, vhost: &str) -> Self {
        AmqpError::new(
            ReplyCode::NotFound,
            format!("no exchange '{name}' in vhost '{vhost}'"),
        )
    }

    /// 406 with a detail.
    pub fn precondition(detail: impl std::fmt::Display) -> Self {
        AmqpError::new(ReplyCode::PreconditionFailed, detail)
    }

    /// 405 for an exclusive queue owned by another connection.
    pub fn locked(name: &str, vhost: &str) -> Self {
        AmqpError::new(
            ReplyCode::ResourceLocked,
            format!(
                "cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. It could be \
                 originally declared on another connection or the exclusive property value does \
                 not match that of the original declaration."
            ),
        )
    }
}

/// Result of broker operations that may answer with an AMQP error.
pub type AmqpResult<T> = Result<T, AmqpError>;
