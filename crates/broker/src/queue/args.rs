//! Queue arguments (`x-message-ttl`, `x-max-length`, `x-overflow`, `x-queue-type`, …):
//! validation at declare time, and the equivalence check of a redeclare.

use minimq_protocol::{FieldTable, FieldValue};

use crate::error::{AmqpError, AmqpResult};

/// What to do when a queue with `x-max-length` is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest ready message.
    DropHead,
    /// Refuse the new message (nacked under confirms).
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

/// `x-dead-letter-strategy` of a quorum queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterStrategy {
    /// Published to the dead-letter exchange and forgotten (the only strategy of classic
    /// queues).
    AtMostOnce,
    /// Kept until every target queue took it (see [`super::at_least_once`]); in force
    /// only with `x-overflow: reject-publish`, as in RabbitMQ.
    AtLeastOnce,
}

/// The queue type named by `x-queue-type`. Both are one in-process queue here; a quorum
/// queue keeps every message in the log and requeues in RabbitMQ's quorum order (see
/// [`super::actor`]), and takes RabbitMQ's quorum arguments and flags only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// `classic` (the default).
    Classic,
    /// `quorum`: durable, not exclusive, not auto-delete.
    Quorum,
    /// `stream`: an append-only log read from an offset (see [`super::stream`]); durable,
    /// not exclusive, not auto-delete.
    Stream,
}

impl QueueType {
    /// Its name as `x-queue-type` and the management API spell it.
    pub fn name(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
            QueueType::Stream => "stream",
        }
    }
}

/// A server-named declare (`queue.declare` with an empty name) of a queue that outlives
/// its connection — a quorum queue or a stream — is refused: a name only the server knows
/// would be lost. `arguments` are the declare's with the vhost's default type applied
/// (RabbitMQ's `is_server_named_allowed`, after `augment_declare_args`); RabbitMQ names
/// the type by its module.
pub fn refuse_server_named(arguments: &FieldTable) -> AmqpResult<()> {
    let module = match arguments.get("x-queue-type").and_then(FieldValue::as_str) {
        Some("quorum") => "rabbit_quorum_queue",
        Some("stream") => "rabbit_stream_queue",
        _ => return Ok(()),
    };
    Err(AmqpError::precondition(format!(
        "Cannot declare a server-named queue for type {module}"
    )))
}

/// Arguments of other queue types that RabbitMQ 3.10 refuses in a quorum declare
/// (`rabbit_amqqueue:check_arguments_key`: every type's arguments less the quorum
/// type's).
const NOT_QUORUM: &[&str] = &[
    "x-max-priority",
    "x-queue-mode",
    "x-queue-version",
    "x-queue-master-locator",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
];

/// Arguments of other queue types that RabbitMQ 3.10 refuses in a stream declare (every
/// type's arguments less the stream type's: `rabbit_stream_queue:capabilities/0`).
const NOT_STREAM: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-max-length",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-single-active-consumer",
    "x-delivery-limit",
    "x-quorum-initial-group-size",
    "x-queue-master-locator",
];

/// The arguments a stream declare takes (their values are checked).
const STREAM_ARGS: &[&str] = &[
    "x-max-length-bytes",
    "x-queue-type",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
];

/// `x-dead-letter-strategy` values RabbitMQ 3.10 knows.
const DEAD_LETTER_STRATEGIES: &[&str] = &["at-most-once", "at-least-once"];

/// `x-queue-leader-locator` values RabbitMQ 3.10 knows (the last two deprecated there).
const LEADER_LOCATORS: &[&str] = &["client-local", "balanced", "random", "least-leaders"];

/// The arguments a queue acts on, parsed from its declare table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueArgs {
    /// `x-message-ttl` in milliseconds.
    pub message_ttl: Option<u64>,
    /// `x-max-length`: most ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: most ready body bytes.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-queue-type`.
    pub queue_type: QueueType,
    /// `x-dead-letter-exchange` (boxed strings: a queue's arguments are in every queue's
    /// shared record, whose size matters for idle queues).
    pub dead_letter_exchange: Option<Box<str>>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<Box<str>>,
    /// `x-dead-letter-strategy` (quorum queues).
    pub dead_letter_strategy: DeadLetterStrategy,
    /// `x-delivery-limit`: returns allowed before a message is dead-lettered or dropped.
    pub delivery_limit: Option<u64>,
    /// `x-expires`: delete the queue after this many milliseconds unused.
    pub expires: Option<u64>,
    /// `x-max-priority`: a priority queue with priorities 0..=N.
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
    /// `x-consumer-timeout`: milliseconds a delivery may stay unacknowledged.
    pub consumer_timeout: Option<u64>,
    /// `x-max-age` (streams): milliseconds a segment's newest message is kept.
    pub max_age: Option<u64>,
    /// `x-stream-max-segment-size-bytes` (streams).
    pub stream_segment_bytes: Option<u64>,
}

impl Default for QueueArgs {
    fn default() -> Self {
        QueueArgs {
            message_ttl: None,
            max_length: None,
            max_length_bytes: None,
            overflow: Overflow::DropHead,
            queue_type: QueueType::Classic,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            dead_letter_strategy: DeadLetterStrategy::AtMostOnce,
            delivery_limit: None,
            expires: None,
            max_priority: None,
            single_active_consumer: false,
            consumer_timeout: None,
            max_age: None,
            stream_segment_bytes: None,
        }
    }
}

/// Arguments compared when a queue is redeclared (others are free to differ, as in RabbitMQ).
const EQUIVALENCE_KEYS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-queue-type",
    "x-single-active-consumer",
    "x-delivery-limit",
];

/// Arguments also compared when a quorum queue is redeclared (RabbitMQ compares every
/// argument of the queue's type).
const QUORUM_EQUIVALENCE_KEYS: &[&str] = &[
    "x-dead-letter-strategy",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-quorum-initial-group-size",
    "x-queue-leader-locator",
];

/// Arguments also compared when a stream is redeclared (RabbitMQ compares every
/// argument of the queue's type).
const STREAM_EQUIVALENCE_KEYS: &[&str] = &[
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
];

/// An `x-max-age` as RabbitMQ 3.10 reads it (`rabbit_amqqueue:check_max_age`): a
/// positive decimal number followed by one unit, `Y` (365 days), `M` (30 days), `D`,
/// `h`, `m` or `s`; in milliseconds. `None` for anything else (RabbitMQ's
/// `invalid_max_age`); a value too large for 64 bits is refused as well.
pub fn parse_max_age(text: &str) -> Option<u64> {
    const SECOND: u64 = 1000;
    const DAY: u64 = 24 * 3600 * SECOND;
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let n: u64 = number.parse().ok().filter(|&n| n > 0)?;
    let unit_ms = match unit {
        "Y" => 365 * DAY,
        "M" => 30 * DAY,
        "D" => DAY,
        "h" => 3600 * SECOND,
        "m" => 60 * SECOND,
        "s" => SECOND,
        _ => return None,
    };
    n.checked_mul(unit_ms)
}

/// A queue as error texts name it: `queue 'q' in vhost 'v'`.
#[derive(Debug, Clone, Copy)]
pub struct QueueRef<'a> {
    /// The queue's name.
    pub name: &'a str,
    /// Its vhost's.
    pub vhost: &'a str,
}

impl<'a> QueueRef<'a> {
    /// Queue `name` in vhost `vhost`.
    pub fn new(name: &'a str, vhost: &'a str) -> QueueRef<'a> {
        QueueRef { name, vhost }
    }
}

impl std::fmt::Display for QueueRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "queue '{}' in vhost '{}'", self.name, self.vhost)
    }
}

fn invalid(key: &str, queue: QueueRef<'_>, why: impl std::fmt::Display) -> AmqpError {
    AmqpError::precondition(format!("invalid arg '{key}' for {queue}: {why}"))
}

/// The longest TTL RabbitMQ 3.10 accepts, per message (`expiration`) or per queue
/// (`x-message-ttl`, `x-expires`), classic and quorum alike: ten years in milliseconds
/// (`rabbit_misc:check_expiry`). Well above 2^32: Celery declares TTLs of up to 2^27 s.
pub const MAX_EXPIRY_MS: u64 = 315_360_000_000;

/// An integer argument, as RabbitMQ's `check_int_arg` takes it.
fn integer(key: &str, queue: QueueRef<'_>, v: &FieldValue) -> AmqpResult<i64> {
    v.as_i64().ok_or_else(|| {
        invalid(
            key,
            queue,
            format!("\"expected integer, got {}\"", v.type_name()),
        )
    })
}

fn non_negative(key: &str, queue: QueueRef<'_>, v: &FieldValue) -> AmqpResult<u64> {
    match integer(key, queue, v)? {
        n if n >= 0 => Ok(n as u64),
        n => Err(invalid(key, queue, format!("{{value_negative,{n}}}"))),
    }
}

/// A TTL argument: non-negative and at most [`MAX_EXPIRY_MS`].
fn expiry(key: &str, queue: QueueRef<'_>, v: &FieldValue) -> AmqpResult<u64> {
    let n = non_negative(key, queue, v)?;
    if n > MAX_EXPIRY_MS {
        return Err(invalid(key, queue, format!("{{value_too_large,{n}}}")));
    }
    Ok(n)
}

/// Parses a message's `expiration` property as RabbitMQ 3.10 does
/// (`rabbit_basic:parse_expiration`: Erlang's `string:to_integer`, then
/// `rabbit_misc:check_expiry`): an optional sign and decimal digits, nothing after them,
/// not negative, at most [`MAX_EXPIRY_MS`]. The error is RabbitMQ's 406 text, its reason
/// written as Erlang's `~p` writes it.
pub fn parse_expiration(expiration: &str) -> AmqpResult<u64> {
    let bytes = expiration.as_bytes();
    let (negative, unsigned) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        Some(b'+') => (false, &bytes[1..]),
        _ => (false, bytes),
    };
    let digits = unsigned.iter().take_while(|b| b.is_ascii_digit()).count();
    let reason = if digits == 0 {
        Reason::Atom("no_integer")
    } else if digits < unsigned.len() {
        Reason::Leftover(&unsigned[digits..])
    } else {
        // Leading zeros do not count; the rest may be longer than any integer type.
        let significant = expiration[expiration.len() - digits..].trim_start_matches('0');
        let value = if significant.is_empty() {
            Some(0)
        } else if significant.len() > 20 {
            None
        } else {
            significant.parse::<u64>().ok()
        };
        match (negative, value) {
            (_, Some(0)) => return Ok(0),
            (false, Some(n)) if n <= MAX_EXPIRY_MS => return Ok(n),
            (true, _) => Reason::Tagged("value_negative", format!("-{significant}")),
            (false, _) => Reason::Tagged("value_too_large", significant.to_string()),
        }
    };
    let prefix = format!("invalid expiration '{expiration}': ");
    Err(AmqpError::precondition(format!(
        "{prefix}{}",
        reason.erlang(prefix.len())
    )))
}

/// Why an `expiration` is invalid, in RabbitMQ's terms.
enum Reason<'a> {
    /// `no_integer`.
    Atom(&'static str),
    /// `{value_negative,N}` / `{value_too_large,N}`.
    Tagged(&'static str, String),
    /// `{leftover_string,S}`: what follows the digits.
    Leftover(&'a [u8]),
}

impl Reason<'_> {
    /// The term as Erlang's `~p` prints it starting at column `column`: a tuple that would
    /// reach column 79 is broken after its first element, the second indented to the
    /// column after the brace (checked against RabbitMQ 3.10.8; a string too long for a
    /// line is not split further here).
    fn erlang(&self, column: usize) -> String {
        let (tag, value) = match self {
            Reason::Atom(a) => return (*a).to_string(),
            Reason::Tagged(tag, n) => (*tag, n.clone()),
            Reason::Leftover(rest) => ("leftover_string", erlang_string(rest)),
        };
        let flat = format!("{{{tag},{value}}}");
        if column + flat.len() <= 78 {
            flat
        } else {
            format!("{{{tag},\n{}{value}}}", " ".repeat(column + 1))
        }
    }
}

/// An Erlang list of bytes as `~p` prints it: a quoted string when every byte is
/// printable in Latin-1 (escaping quotes, backslashes and control characters it names),
/// a list of integers otherwise.
fn erlang_string(bytes: &[u8]) -> String {
    let escape = |b: u8| -> Option<&'static str> {
        Some(match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x0b => "\\v",
            0x08 => "\\b",
            0x0c => "\\f",
            0x1b => "\\e",
            _ => return None,
        })
    };
    let printable = |b: u8| (32..=126).contains(&b) || b >= 160 || escape(b).is_some();
    if bytes.iter().all(|&b| printable(b)) {
        let mut out = Vec::with_capacity(bytes.len() + 2);
        out.push(b'"');
        for &b in bytes {
            match escape(b) {
                Some(e) => out.extend_from_slice(e.as_bytes()),
                None => out.push(b),
            }
        }
        out.push(b'"');
        // Bytes of 160 and above stand for themselves, as RabbitMQ sends them back.
        String::from_utf8_lossy(&out).into_owned()
    } else {
        let items: Vec<String> = bytes.iter().map(u8::to_string).collect();
        format!("[{}]", items.join(","))
    }
}

/// A string argument that must be one of `known`: RabbitMQ's `{unacceptable_type,T}`
/// for another type, `why` for another string.
fn one_of(
    key: &str,
    queue: QueueRef<'_>,
    v: &FieldValue,
    known: &[&str],
    why: &str,
) -> AmqpResult<()> {
    match v.as_str() {
        Some(s) if known.contains(&s) => Ok(()),
        Some(_) => Err(invalid(key, queue, why)),
        None => Err(invalid(
            key,
            queue,
            format!("{{unacceptable_type,{}}}", v.type_name()),
        )),
    }
}

impl QueueArgs {
    /// Parses and validates a declare's arguments, answering 406 as RabbitMQ does. A
    /// quorum declare is checked as RabbitMQ 3.10 checks it: the values of the quorum
    /// arguments first, then the arguments of other queue types, refused in table order.
    pub fn parse(queue: QueueRef<'_>, table: &FieldTable) -> AmqpResult<QueueArgs> {
        if table.get("x-queue-type").and_then(FieldValue::as_str) == Some("stream") {
            return QueueArgs::parse_stream(queue, table);
        }
        let mut args = QueueArgs::default();
        let quorum = table
            .get("x-queue-type")
            .and_then(FieldValue::as_str)
            .is_some_and(|t| t == "quorum");
        for (key, value) in table.iter() {
            if quorum && NOT_QUORUM.contains(&key) {
                continue;
            }
            match key {
                "x-message-ttl" => args.message_ttl = Some(expiry(key, queue, value)?),
                "x-max-length" => args.max_length = Some(non_negative(key, queue, value)?),
                "x-consumer-timeout" => {
                    args.consumer_timeout = Some(non_negative(key, queue, value)?)
                }
                "x-max-length-bytes" => {
                    args.max_length_bytes = Some(non_negative(key, queue, value)?)
                }
                // RabbitMQ 3.10 takes any value here (quorum queues): a negative limit is
                // passed by every return (as 0 is here), a value that is not an integer
                // by none.
                "x-delivery-limit" => args.delivery_limit = value.as_i64().map(|n| n.max(0) as u64),
                "x-dead-letter-exchange" | "x-dead-letter-routing-key" => {
                    let Some(v) = value.as_str() else {
                        return Err(invalid(
                            key,
                            queue,
                            format!("{{unacceptable_type,{}}}", value.type_name()),
                        ));
                    };
                    if key == "x-dead-letter-exchange" {
                        args.dead_letter_exchange = Some(v.into());
                    } else {
                        args.dead_letter_routing_key = Some(v.into());
                    }
                }
                "x-expires" => {
                    let v = expiry(key, queue, value)?;
                    if v == 0 {
                        return Err(invalid(key, queue, "{value_zero,0}"));
                    }
                    args.expires = Some(v);
                }
                "x-max-priority" => {
                    let v = non_negative(key, queue, value)?;
                    if v > 255 {
                        return Err(invalid(key, queue, format!("{{max_value_exceeded,{v}}}")));
                    }
                    args.max_priority = Some(v as u8);
                }
                "x-single-active-consumer" => match value.as_bool() {
                    Some(b) => args.single_active_consumer = b,
                    None => {
                        return Err(invalid(
                            key,
                            queue,
                            format!("{{unacceptable_type,{}}}", value.type_name()),
                        ))
                    }
                },
                "x-overflow" => {
                    args.overflow = match value.as_str() {
                        Some("drop-head") => Overflow::DropHead,
                        Some("reject-publish") => Overflow::RejectPublish,
                        Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                        Some(_) => return Err(invalid(key, queue, "invalid_overflow")),
                        None => {
                            return Err(invalid(
                                key,
                                queue,
                                format!("{{unacceptable_type,{}}}", value.type_name()),
                            ))
                        }
                    }
                }
                "x-queue-type" => {
                    args.queue_type = match value.as_str() {
                        Some("classic") => QueueType::Classic,
                        Some("quorum") => QueueType::Quorum,
                        Some("stream") => QueueType::Stream,
                        Some(other) => {
                            return Err(invalid(
                                key,
                                queue,
                                format!("{{unsupported_queue_type,<<\"{other}\">>}}"),
                            ))
                        }
                        None => {
                            return Err(invalid(
                                key,
                                queue,
                                format!("{{unacceptable_type,{}}}", value.type_name()),
                            ))
                        }
                    }
                }
                // Checked on quorum queues only: RabbitMQ refuses them on classic
                // ones, minimq has always ignored them there.
                "x-dead-letter-strategy" if quorum => {
                    one_of(
                        key,
                        queue,
                        value,
                        DEAD_LETTER_STRATEGIES,
                        "invalid_dlx_strategy",
                    )?;
                    if value.as_str() == Some("at-least-once") {
                        args.dead_letter_strategy = DeadLetterStrategy::AtLeastOnce;
                    }
                }
                "x-queue-leader-locator" if quorum => one_of(
                    key,
                    queue,
                    value,
                    LEADER_LOCATORS,
                    "invalid_queue_locator_arg",
                )?,
                "x-max-in-memory-length" | "x-max-in-memory-bytes" if quorum => {
                    non_negative(key, queue, value)?;
                }
                "x-quorum-initial-group-size" if quorum => {
                    let size = non_negative(key, queue, value)?;
                    if size == 0 {
                        return Err(invalid(key, queue, "{value_zero,0}"));
                    }
                }
                _ => {}
            }
        }
        if quorum {
            if let Some((key, _)) = table.iter().find(|(k, _)| NOT_QUORUM.contains(k)) {
                return Err(AmqpError::precondition(format!(
                    "invalid arg '{key}' for {queue} of queue type rabbit_quorum_queue"
                )));
            }
        }
        Ok(args.with_type_fallbacks())
    }

    /// A stream declare's arguments, checked as RabbitMQ 3.10 checks them: the values of
    /// the stream's own arguments (`invalid arg 'K' for queue …: why`), then the
    /// arguments of other queue types, refused in table order (`… of queue type
    /// rabbit_stream_queue`). Other `x-` arguments are free, as there.
    fn parse_stream(queue: QueueRef<'_>, table: &FieldTable) -> AmqpResult<QueueArgs> {
        let mut args = QueueArgs {
            queue_type: QueueType::Stream,
            ..QueueArgs::default()
        };
        for (key, value) in table.iter() {
            if !STREAM_ARGS.contains(&key) {
                continue;
            }
            match key {
                "x-max-length-bytes" => {
                    args.max_length_bytes = Some(non_negative(key, queue, value)?)
                }
                "x-max-age" => {
                    let Some(text) = value.as_str() else {
                        return Err(invalid(
                            key,
                            queue,
                            format!("{{unacceptable_type,{}}}", value.type_name()),
                        ));
                    };
                    args.max_age = Some(
                        parse_max_age(text)
                            .ok_or_else(|| invalid(key, queue, "invalid_max_age"))?,
                    );
                }
                "x-stream-max-segment-size-bytes" => {
                    args.stream_segment_bytes = Some(non_negative(key, queue, value)?)
                }
                "x-initial-cluster-size" if non_negative(key, queue, value)? == 0 => {
                    return Err(invalid(key, queue, "{value_zero,0}"));
                }
                "x-queue-leader-locator" => one_of(
                    key,
                    queue,
                    value,
                    LEADER_LOCATORS,
                    "invalid_queue_locator_arg",
                )?,
                _ => {}
            }
        }
        if let Some((key, _)) = table.iter().find(|(k, _)| NOT_STREAM.contains(k)) {
            return Err(AmqpError::precondition(format!(
                "invalid arg '{key}' for {queue} of queue type rabbit_stream_queue"
            )));
        }
        Ok(args)
    }

    /// The arguments of a queue recovered from the store. A table this version refuses
    /// (a quorum queue declared with `x-max-priority` or `x-queue-mode` before they were
    /// refused, a value checked since) still gives a queue of its type, the refused
    /// arguments ignored, with a warning.
    pub fn parse_stored(queue: QueueRef<'_>, table: &FieldTable) -> QueueArgs {
        QueueArgs::parse(queue, table).unwrap_or_else(|e| {
            tracing::warn!(queue = queue.name, vhost = queue.vhost, error = %e.text, "stored queue arguments are refused now; ignoring the refused ones");
            let refused = match table.get("x-queue-type").and_then(FieldValue::as_str) {
                Some("stream") => NOT_STREAM,
                _ => NOT_QUORUM,
            };
            let kept: FieldTable = table
                .iter()
                .filter(|(k, _)| !refused.contains(k))
                .map(|(k, v)| (k, v.clone()))
                .collect();
            QueueArgs::parse(queue, &kept).unwrap_or_else(|_| {
                let quorum = table.get("x-queue-type").and_then(FieldValue::as_str);
                QueueArgs {
                    queue_type: match quorum {
                        Some("quorum") => QueueType::Quorum,
                        Some("stream") => QueueType::Stream,
                        _ => QueueType::Classic,
                    },
                    ..QueueArgs::default()
                }
            })
        })
    }

    /// Whether dead letters leave the queue only once their targets took them: a quorum
    /// queue with `at-least-once`, `reject-publish` and a dead-letter exchange (RabbitMQ
    /// 3.10 falls back to at-most-once otherwise).
    pub fn at_least_once(&self) -> bool {
        self.queue_type == QueueType::Quorum
            && self.dead_letter_strategy == DeadLetterStrategy::AtLeastOnce
            && self.overflow == Overflow::RejectPublish
            && self.dead_letter_exchange.is_some()
    }

    /// What RabbitMQ 3.10 makes of settings a quorum queue does not have: `x-overflow:
    /// reject-publish-dlx` (argument or policy) is drop-head there, with a warning in its
    /// log. Applied to the declared arguments and again after a policy.
    pub fn with_type_fallbacks(mut self) -> QueueArgs {
        if self.queue_type == QueueType::Quorum && self.overflow == Overflow::RejectPublishDlx {
            self.overflow = Overflow::DropHead;
        }
        self
    }

    /// Checks that a redeclare's arguments match the existing queue's (406 otherwise).
    pub fn check_equivalent(
        queue: QueueRef<'_>,
        current: &FieldTable,
        received: &FieldTable,
    ) -> AmqpResult<()> {
        let type_keys = match current.get("x-queue-type").and_then(FieldValue::as_str) {
            Some("quorum") => QUORUM_EQUIVALENCE_KEYS,
            Some("stream") => STREAM_EQUIVALENCE_KEYS,
            _ => &[],
        };
        for key in EQUIVALENCE_KEYS.iter().chain(type_keys) {
            let (cur, rec) = (current.get(key), received.get(key));
            // A redeclare that leaves out the queue type means "whatever it is".
            if *key == "x-queue-type" && rec.is_none() {
                continue;
            }
            if !same_value(cur, rec) {
                // RabbitMQ names the types only when one side is missing.
                let (rec, cur) = match (rec, cur) {
                    (Some(r), Some(c)) => (format!("'{}'", shown(r)), format!("'{}'", shown(c))),
                    _ => (describe(rec), describe(cur)),
                };
                return Err(AmqpError::precondition(format!(
                    "inequivalent arg '{key}' for {queue}: received {rec} but current is {cur}"
                )));
            }
        }
        Ok(())
    }
}

fn same_value(a: Option<&FieldValue>, b: Option<&FieldValue>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x == y,
        },
        _ => false,
    }
}

/// An argument's value as RabbitMQ prints it in an equivalence error.
fn shown(v: &FieldValue) -> String {
    match v {
        FieldValue::LongString(s) => String::from_utf8_lossy(s).into_owned(),
        FieldValue::Bool(b) => b.to_string(),
        other => other
            .as_i64()
            .map(|i| i.to_string())
            .unwrap_or_else(|| format!("{other:?}")),
    }
}

fn describe(v: Option<&FieldValue>) -> String {
    match v {
        None => "none".to_string(),
        Some(v) => format!("the value '{}' of type '{}'", shown(v), v.type_name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: QueueRef<'static> = QueueRef {
        name: "q",
        vhost: "/",
    };

    #[test]
    fn negative_ttl_is_refused_with_rabbitmq_text() {
        let t: FieldTable = [("x-message-ttl", FieldValue::I32(-1))]
            .into_iter()
            .collect();
        let e = QueueArgs::parse(Q, &t).unwrap_err();
        assert_eq!(
            e.text,
            "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}"
        );
    }

    /// RabbitMQ 3.10's texts, checked against it: a quorum queue compares its own
    /// arguments too; values alone when both sides have one, with types when one is
    /// missing.
    #[test]
    fn a_quorum_redeclare_compares_the_quorum_arguments() {
        let table = |pairs: &[(&str, FieldValue)]| -> FieldTable {
            let mut t: FieldTable = [("x-queue-type", FieldValue::from("quorum"))]
                .into_iter()
                .collect();
            for (k, v) in pairs {
                t.insert(*k, v.clone());
            }
            t
        };
        let current = table(&[
            ("x-dead-letter-strategy", FieldValue::from("at-most-once")),
            ("x-max-in-memory-length", FieldValue::I32(5)),
        ]);
        let refused = [
            (
                table(&[
                    ("x-dead-letter-strategy", FieldValue::from("at-least-once")),
                    ("x-max-in-memory-length", FieldValue::I32(5)),
                ]),
                "inequivalent arg 'x-dead-letter-strategy' for queue 'q' in vhost '/': received 'at-least-once' but current is 'at-most-once'",
            ),
            (
                table(&[("x-max-in-memory-length", FieldValue::I32(5))]),
                "inequivalent arg 'x-dead-letter-strategy' for queue 'q' in vhost '/': received none but current is the value 'at-most-once' of type 'longstr'",
            ),
            (
                table(&[
                    ("x-dead-letter-strategy", FieldValue::from("at-most-once")),
                    ("x-max-in-memory-length", FieldValue::I32(6)),
                ]),
                "inequivalent arg 'x-max-in-memory-length' for queue 'q' in vhost '/': received '6' but current is '5'",
            ),
        ];
        for (received, text) in refused {
            let e = QueueArgs::check_equivalent(Q, &current, &received).unwrap_err();
            assert_eq!(e.text, format!("PRECONDITION_FAILED - {text}"));
        }
        QueueArgs::check_equivalent(Q, &current, &current).unwrap();
    }

    /// A quorum queue stored before `x-max-priority` was refused on it comes back a
    /// quorum queue, without the priority; one with a value refused since, with none of
    /// its arguments but its type.
    #[test]
    fn a_stored_quorum_queue_with_arguments_refused_now_stays_quorum() {
        let t: FieldTable = [
            ("x-queue-type", FieldValue::from("quorum")),
            ("x-max-priority", FieldValue::I32(5)),
            ("x-max-length", FieldValue::I32(3)),
        ]
        .into_iter()
        .collect();
        assert!(QueueArgs::parse(Q, &t).is_err());
        let args = QueueArgs::parse_stored(Q, &t);
        assert_eq!(
            (args.queue_type, args.max_priority, args.max_length),
            (QueueType::Quorum, None, Some(3))
        );
        let t: FieldTable = [
            ("x-queue-type", FieldValue::from("quorum")),
            ("x-max-in-memory-length", FieldValue::I32(-1)),
        ]
        .into_iter()
        .collect();
        assert_eq!(QueueArgs::parse_stored(Q, &t).queue_type, QueueType::Quorum);
    }

    #[test]
    fn integer_widths_are_equivalent() {
        let a: FieldTable = [("x-max-length", FieldValue::I32(10))]
            .into_iter()
            .collect();
        let b: FieldTable = [("x-max-length", FieldValue::I64(10))]
            .into_iter()
            .collect();
        QueueArgs::check_equivalent(Q, &a, &b).unwrap();
        let c = FieldTable::new();
        let e = QueueArgs::check_equivalent(Q, &a, &c).unwrap_err();
        assert!(
            e.text.contains("inequivalent arg 'x-max-length'"),
            "{}",
            e.text
        );
    }
}
