//! A stream queue's task: one per stream, owning its log ([`StreamLog`], under
//! `store/stream/`) and its readers. It takes the same [`QueueCommand`]s as a classic or
//! quorum queue's task, through the same [`QueueHandle`], so connections need no other
//! path; what a stream does with them follows RabbitMQ 3.10's `rabbit_stream_queue`:
//!
//! - a publish is appended and synced; its confirm goes out after the sync;
//! - a consumer is a reader with its own position, starting where its `x-stream-offset`
//!   says (`first`, `last`, `next` — the default —, an offset, a timestamp, or an
//!   interval such as `1h`), and reads the whole stream from there, independently of
//!   every other consumer. Each delivery carries its offset in the header
//!   `x-stream-offset`. A consumer needs a prefetch (`basic.qos`) and acks: an ack only
//!   gives its credit back, nothing is removed;
//! - nothing leaves the log but whole old segments, by retention.
//!
//! The task never does file I/O itself: every append, read and retention pass runs on
//! the blocking pool, and the task awaits it; commands wait in the inbox meanwhile, so
//! the publishes that arrive during one sync are appended together by the next (group
//! commit). The log sits behind a mutex only so a blocking closure can borrow it; the
//! task is the one caller.
//!
//! Delivery ids (the `msg_id` a channel's delivery tag maps to) are numbered by the task,
//! not by offset, because two consumers may hold the same offset unacked; the task maps
//! each unacked id to its consumer, so an ack gives the right consumer its credit back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use minimq_protocol::{BasicProperties, FieldTable, FieldValue, ReplyCode};

use super::actor::answer_dead;
use super::{
    ConsumerSpec, Delivery, Publish, QueueCommand, QueueCounts, QueueEvent, QueueHandle,
    QueueInbox, DELIVERY_OVERHEAD,
};
use crate::error::{AmqpError, AmqpResult};
use crate::message::Message;
use crate::store::stream::{
    now_ms, remove_dir, StreamEntry, StreamLimits, StreamLog, StreamPlace, DEFAULT_SEGMENT_BYTES,
};

/// Most messages read from the log for one consumer at once: a consumer with a large
/// prefetch is served in several reads, so one reader cannot hold the task for long.
pub const READ_BATCH: usize = 256;
/// Most octets of records read for one consumer at once (at least one record is read).
pub const READ_BATCH_BYTES: usize = 1024 * 1024;

/// Octets of message bodies the task keeps of the newest messages it appended, so that
/// consumers keeping up with the publishers are served from memory, not from the log:
/// a few thousand typical messages, small next to what a stream keeps on disk.
pub const TAIL_CACHE_BYTES: usize = 8 * 1024 * 1024;

/// The newest messages appended, by offset (consecutive), at most [`TAIL_CACHE_BYTES`]
/// of bodies (at least the newest message).
#[derive(Debug, Default)]
struct TailCache {
    entries: std::collections::VecDeque<(u64, i64, Arc<Message>)>,
    bytes: usize,
}

impl TailCache {
    /// Notes messages appended at consecutive offsets from `first`.
    fn push(&mut self, first: u64, timestamp: i64, messages: &[Arc<Message>]) {
        if self.entries.back().is_some_and(|(o, _, _)| o + 1 != first) {
            // Not the continuation of what is kept (it cannot happen: appends are
            // consecutive); start over rather than serve a gap.
            self.entries.clear();
            self.bytes = 0;
        }
        for (offset, m) in (first..).zip(messages) {
            self.bytes += m.body.len();
            self.entries.push_back((offset, timestamp, m.clone()));
        }
        while self.bytes > TAIL_CACHE_BYTES && self.entries.len() > 1 {
            if let Some((_, _, m)) = self.entries.pop_front() {
                self.bytes -= m.body.len();
            }
        }
    }

    /// Up to `max` messages from offset `from`, if the cache holds `from`.
    fn read(&self, from: u64, max: usize) -> Option<Vec<StreamEntry>> {
        let (first, _, _) = self.entries.front()?;
        let at = usize::try_from(from.checked_sub(*first)?).ok()?;
        if at >= self.entries.len() {
            return None;
        }
        Some(
            self.entries
                .iter()
                .skip(at)
                .take(max)
                .map(|(offset, timestamp, m)| StreamEntry {
                    offset: *offset,
                    timestamp: *timestamp,
                    message: Message::new(
                        m.exchange.clone(),
                        m.routing_key.clone(),
                        m.properties.clone(),
                        m.body.clone(),
                    ),
                })
                .collect(),
        )
    }
}

/// Where a consumer starts reading (`x-stream-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest message kept.
    First,
    /// The newest message.
    Last,
    /// The next message appended (the default).
    Next,
    /// This offset (clamped to what the log keeps).
    Offset(u64),
    /// The first message appended at this time (ms since the epoch) or later.
    Timestamp(i64),
}

impl StartAt {
    /// Parses a consumer's `x-stream-offset` as RabbitMQ 3.10 does
    /// (`rabbit_stream_queue:parse_offset_arg`): `first`, `last`, `next`, an integer (a
    /// negative one is the first message), a timestamp (`T`, seconds), or an interval
    /// string (`1h`, `30m`, the units of `x-max-age`) meaning that long ago.
    pub fn parse(value: Option<&FieldValue>, now: i64) -> Option<StartAt> {
        let Some(value) = value else {
            return Some(StartAt::Next);
        };
        if let FieldValue::Timestamp(seconds) = value {
            return Some(StartAt::Timestamp(
                (*seconds).saturating_mul(1000).min(i64::MAX as u64) as i64,
            ));
        }
        if let Some(n) = value.as_i64() {
            return Some(StartAt::Offset(n.max(0) as u64));
        }
        match value.as_str()? {
            "first" => Some(StartAt::First),
            "last" => Some(StartAt::Last),
            "next" => Some(StartAt::Next),
            interval => {
                let ms = super::args::parse_max_age(interval)?;
                Some(StartAt::Timestamp(
                    now.saturating_sub(ms.min(i64::MAX as u64) as i64),
                ))
            }
        }
    }
}

/// One consumer of the stream.
#[derive(Debug)]
struct Reader {
    spec: Box<ConsumerSpec>,
    /// The next offset it is given.
    position: u64,
    /// Deliveries it holds unacked.
    in_flight: u32,
    /// Its connection's way out was full: wait for `CreditAvailable`.
    waiting_for_room: bool,
}

impl Reader {
    /// How many more it may be given now.
    fn credit(&self) -> usize {
        self.spec.prefetch.saturating_sub(self.in_flight) as usize
    }
}

/// The log's limits from the queue's arguments.
fn limits(handle: &QueueHandle) -> StreamLimits {
    let args = handle.info().effective_args();
    StreamLimits {
        segment_bytes: args
            .stream_segment_bytes
            .unwrap_or(DEFAULT_SEGMENT_BYTES)
            .max(1),
        max_bytes: args.max_length_bytes,
        max_age_ms: args.max_age,
    }
}

/// Starts the stream's task: it opens (recovers) the log in `dir` on the blocking pool,
/// then serves its commands. A log that cannot be opened leaves the queue failed (as a
/// queue task that panicked), so clients are told rather than served an empty stream.
pub fn spawn(handle: QueueHandle, inbox: QueueInbox, place: StreamPlace) {
    tokio::spawn(async move {
        let limits = limits(&handle);
        let opening = place.clone();
        let opened = tokio::task::spawn_blocking(move || StreamLog::open(&opening, limits)).await;
        let log = match opened {
            Ok(Ok(log)) => log,
            Ok(Err(e)) => return fail(handle, inbox, place, &e.to_string()).await,
            Err(e) => return fail(handle, inbox, place, &e.to_string()).await,
        };
        let mut task = StreamTask {
            handle,
            log: Arc::new(Mutex::new(log)),
            readers: Vec::new(),
            unacked: HashMap::new(),
            next_delivery: 1,
            first: 0,
            next: 0,
            bytes: 0,
            held: None,
            tail: TailCache::default(),
        };
        task.refresh_bounds();
        task.publish_stats();
        task.run(inbox).await;
    });
}

/// The log could not be opened: the queue is failed until deleted. The task stays to
/// answer every command as a failed queue's, until the deletion, which removes the
/// directory as a working stream's does (nothing else would: its files are the
/// stream's, whatever state they are in).
async fn fail(handle: QueueHandle, mut inbox: QueueInbox, place: StreamPlace, why: &str) {
    tracing::error!(queue = %handle.name(), dir = %place.dir.display(), error = why, "cannot open the stream's log; queue marked failed");
    handle.info().mark_failed();
    while let Some(cmd) = inbox.recv().await {
        match cmd {
            QueueCommand::Delete { reply, .. } => {
                remove_files(&handle, place).await;
                let _ = reply.send(Ok(0));
                break;
            }
            cmd @ (QueueCommand::Shutdown { .. } | QueueCommand::Halt { .. }) => {
                answer_dead(cmd, &handle);
                break;
            }
            cmd => answer_dead(cmd, &handle),
        }
    }
    inbox.close();
    while let Some(cmd) = inbox.try_recv() {
        answer_dead(cmd, &handle);
    }
}

/// Removes a deleted stream's directory on the blocking pool ([`remove_dir`]); what
/// cannot be removed now is logged, and removed at the next start.
async fn remove_files(handle: &QueueHandle, place: StreamPlace) {
    let removed = tokio::task::spawn_blocking(move || remove_dir(&place.dir, &*place.disk)).await;
    if let Ok(Err(e)) | Err(e) = removed.map_err(std::io::Error::other) {
        tracing::error!(queue = %handle.name(), error = %e, "cannot remove the deleted stream's files now; they go at the next start");
    }
}

/// The task's state; see the module docs.
struct StreamTask {
    handle: QueueHandle,
    log: Arc<Mutex<StreamLog>>,
    readers: Vec<Reader>,
    /// Unacked delivery id → its consumer's id.
    unacked: HashMap<u64, u64>,
    next_delivery: u64,
    /// The log's first and next offset and size, as of the last append or retention.
    first: u64,
    next: u64,
    bytes: u64,
    /// A command taken while gathering publishes, handled next.
    held: Option<QueueCommand>,
    /// The newest messages, for consumers that keep up.
    tail: TailCache,
}

/// What the task does after a command.
enum Next {
    Go,
    Stop,
}

impl StreamTask {
    async fn run(mut self, mut inbox: QueueInbox) {
        loop {
            let cmd = match self.held.take() {
                Some(cmd) => cmd,
                None => match inbox.recv().await {
                    Some(cmd) => cmd,
                    None => break,
                },
            };
            let next = self.handle_command(cmd, &mut inbox).await;
            self.dispatch().await;
            self.publish_stats();
            if let Next::Stop = next {
                break;
            }
        }
        // Gone (deleted, stopped): whatever still waits is answered as a dead queue's.
        inbox.close();
        while let Some(cmd) = inbox.try_recv() {
            answer_dead(cmd, &self.handle);
        }
    }

    async fn handle_command(&mut self, cmd: QueueCommand, inbox: &mut QueueInbox) -> Next {
        match cmd {
            QueueCommand::Publish(batch) => {
                self.handle.info().room.taken(batch.len());
                let mut publishes = batch;
                // Everything already waiting goes into the same append and sync.
                while let Some(more) = inbox.try_recv() {
                    match more {
                        QueueCommand::Publish(batch) => {
                            self.handle.info().room.taken(batch.len());
                            publishes.extend(batch);
                        }
                        other => {
                            self.held = Some(other);
                            break;
                        }
                    }
                }
                self.append(publishes).await;
            }
            QueueCommand::Consume { consumer, reply } => {
                // Its acks get the lane taken before other commands, as a classic
                // queue's do (`QueueInbox::open_acks`), before anything is delivered.
                inbox.open_acks(self.handle.info());
                let started = self.add_reader(consumer).await;
                // Counted before the answer: whoever saw consume-ok sees the consumer.
                self.publish_stats();
                let _ = reply.send(started);
            }
            QueueCommand::Cancel { consumer_id, reply } => {
                self.readers.retain(|r| r.spec.id != consumer_id);
                self.publish_stats();
                if let Some(r) = reply {
                    let _ = r.send(());
                }
            }
            QueueCommand::Settle { ids, .. } => {
                // Acks give credit back; a stream removes nothing. (Rejects and nacks
                // are refused by the connection before they get here, as RabbitMQ
                // refuses them; one that arrives anyway is taken as an ack.)
                self.settle(&ids);
            }
            QueueCommand::ChannelClosed {
                conn_id,
                channel,
                requeue,
            } => {
                self.readers
                    .retain(|r| !(r.spec.conn_id == conn_id && r.spec.channel == channel));
                self.settle(&requeue);
            }
            QueueCommand::CreditAvailable => {
                for r in &mut self.readers {
                    r.waiting_for_room = false;
                }
            }
            QueueCommand::PolicyChanged => {
                let limits = limits(&self.handle);
                if let Ok(mut log) = self.log.lock() {
                    log.set_limits(limits);
                }
            }
            QueueCommand::Get { reply, .. } => {
                // Refused by the connection (RabbitMQ's 540); nothing to give here.
                let _ = reply.send(None);
            }
            QueueCommand::Purge { reply } => {
                // Refused by the connection (RabbitMQ's 540).
                let _ = reply.send(0);
            }
            QueueCommand::Delete {
                if_unused,
                if_empty,
                reply,
            } => {
                let queue = self.handle.queue_ref();
                if if_unused && !self.readers.is_empty() {
                    let _ = reply.send(Err(AmqpError::precondition(format!("{queue} in use"))));
                } else if if_empty && self.next > self.first {
                    let _ = reply.send(Err(AmqpError::precondition(format!("{queue} not empty"))));
                } else {
                    let n = self.count();
                    self.cancel_all();
                    self.destroy().await;
                    let _ = reply.send(Ok(n));
                    return Next::Stop;
                }
            }
            QueueCommand::Shutdown { reply } | QueueCommand::Halt { reply } => {
                // Every append was synced before it was confirmed: nothing to write.
                let _ = reply.send(());
                return Next::Stop;
            }
            QueueCommand::Counts { reply } => {
                let _ = reply.send(QueueCounts {
                    ready: self.count(),
                    unacked: 0,
                    consumers: self.readers.len() as u32,
                });
            }
        }
        Next::Go
    }

    /// Messages kept, as RabbitMQ counts a stream's `messages`.
    fn count(&self) -> u32 {
        (self.next - self.first).min(u64::from(u32::MAX)) as u32
    }

    /// Appends the publishes and syncs them, then answers their confirms: ack once
    /// synced, nack when the log could not take them.
    async fn append(&mut self, publishes: Vec<Publish>) {
        let log = self.log.clone();
        let messages: Vec<Arc<Message>> = publishes.iter().map(|p| p.message.clone()).collect();
        let written = tokio::task::spawn_blocking(move || {
            let refs: Vec<&Message> = messages.iter().map(|m| &**m).collect();
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            let timestamp = now_ms();
            let result = log.append(&refs, timestamp);
            let bounds = (log.first_offset(), log.next_offset(), log.bytes());
            (result, timestamp, bounds, messages)
        })
        .await;
        let ok = match written {
            Ok((result, timestamp, (first, next, bytes), messages)) => {
                (self.first, self.next, self.bytes) = (first, next, bytes);
                match result {
                    Ok(offsets) => {
                        if let Some(&first) = offsets.first() {
                            self.tail.push(first, timestamp, &messages);
                        }
                        true
                    }
                    Err(e) => {
                        tracing::error!(queue = %self.handle.name(), error = %e, "cannot append to the stream; publishes nacked");
                        false
                    }
                }
            }
            Err(e) => {
                tracing::error!(queue = %self.handle.name(), error = %e, "stream append did not finish; publishes nacked");
                false
            }
        };
        let stats = &self.handle.info().stats;
        if ok {
            stats
                .published
                .fetch_add(publishes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        // Counted before the confirms: whoever saw the ack sees the message counted.
        self.publish_stats();
        for ticket in publishes.into_iter().filter_map(|p| p.confirm) {
            ticket.send(ok);
        }
    }

    /// Takes a consumer, refusing it as RabbitMQ 3.10 refuses a stream's (no prefetch,
    /// automatic acknowledgement, a channel-wide prefetch, another queue type's argument,
    /// a bad offset), and
    /// places it where its `x-stream-offset` says.
    async fn add_reader(&mut self, spec: Box<ConsumerSpec>) -> AmqpResult<()> {
        let queue = self.handle.queue_ref();
        if spec.prefetch == 0 {
            return Err(AmqpError::precondition(format!(
                "consumer prefetch count is not set for '{queue}'"
            )));
        }
        if spec.no_ack {
            return Err(AmqpError::new(
                ReplyCode::NotImplemented,
                format!("automatic acknowledgement not supported by stream queues {queue}"),
            ));
        }
        if spec.channel_credit.is_some() {
            return Err(AmqpError::new(
                ReplyCode::NotImplemented,
                format!("{queue} does not support global qos"),
            ));
        }
        check_consumer_arguments(&spec.arguments, &queue.to_string())?;
        let offset = spec.arguments.get("x-stream-offset");
        let Some(start) = StartAt::parse(offset, now_ms()) else {
            // Only a value present can fail to parse; the tag and value as Erlang's
            // `~p` writes them: `{longstr,<<"bad">>}`, `{bool,true}`.
            let shown = match offset {
                Some(FieldValue::LongString(s)) => {
                    format!("{{longstr,<<\"{}\">>}}", String::from_utf8_lossy(s))
                }
                Some(FieldValue::Bool(b)) => format!("{{bool,{b}}}"),
                Some(other) => format!("{{{},…}}", other.type_name()),
                None => String::new(),
            };
            return Err(AmqpError::precondition(format!(
                "invalid arg 'x-stream-offset' for {queue}: {{invalid_stream_offset_arg,{shown}}}"
            )));
        };
        let position = self.position(start).await;
        self.readers.push(Reader {
            spec,
            position,
            in_flight: 0,
            waiting_for_room: false,
        });
        Ok(())
    }

    /// The offset a reader starting at `start` is given first.
    async fn position(&self, start: StartAt) -> u64 {
        let (first, next) = (self.first, self.next);
        match start {
            StartAt::First => first,
            StartAt::Last => next.saturating_sub(1).max(first),
            StartAt::Next => next,
            StartAt::Offset(n) => n.clamp(first, next),
            StartAt::Timestamp(t) => {
                let log = self.log.clone();
                let found = tokio::task::spawn_blocking(move || {
                    log.lock().unwrap_or_else(|e| e.into_inner()).offset_at(t)
                })
                .await;
                match found {
                    Ok(Ok(offset)) => offset,
                    other => {
                        tracing::error!(queue = %self.handle.name(), error = ?other.err(), "cannot look a timestamp up in the stream; reading from its end");
                        next
                    }
                }
            }
        }
    }

    /// Gives each unacked delivery's credit back to its consumer.
    fn settle(&mut self, ids: &[u64]) {
        let mut acked = 0;
        for id in ids {
            if let Some(consumer) = self.unacked.remove(id) {
                acked += 1;
                if let Some(r) = self.readers.iter_mut().find(|r| r.spec.id == consumer) {
                    r.in_flight = r.in_flight.saturating_sub(1);
                }
            }
        }
        self.handle
            .info()
            .stats
            .acked
            .fetch_add(acked, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sends each consumer what it has credit and room for, reading the log on the
    /// blocking pool, until every consumer is caught up, out of credit or out of room.
    async fn dispatch(&mut self) {
        loop {
            let mut progressed = false;
            let mut wanted: Vec<(usize, u64, usize)> = Vec::new();
            for i in 0..self.readers.len() {
                let r = &self.readers[i];
                if r.waiting_for_room || r.position >= self.next || r.credit() == 0 {
                    continue;
                }
                let (from, max) = (r.position, r.credit().min(READ_BATCH));
                // A reader that keeps up is served from memory; the others from the log
                // (which also moves a reader that retention passed to the first offset).
                let cached = (from >= self.first)
                    .then(|| self.tail.read(from, max))
                    .flatten();
                match cached {
                    Some(entries) => progressed |= self.deliver(i, entries),
                    None => wanted.push((i, from, max)),
                }
            }
            if wanted.is_empty() {
                if progressed {
                    continue;
                }
                return;
            }
            let log = self.log.clone();
            let read = tokio::task::spawn_blocking(move || {
                let log = log.lock().unwrap_or_else(|e| e.into_inner());
                wanted
                    .into_iter()
                    .map(|(i, from, max)| (i, log.read(from, max, READ_BATCH_BYTES)))
                    .collect::<Vec<_>>()
            })
            .await;
            let Ok(read) = read else {
                return;
            };
            for (i, entries) in read {
                match entries {
                    Ok(entries) => progressed |= self.deliver(i, entries),
                    Err(e) => {
                        tracing::error!(queue = %self.handle.name(), error = %e, "cannot read the stream back; its consumer is cancelled");
                        self.cancel_reader(i);
                        return;
                    }
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// Sends reader `i` the entries read for it; answers whether it moved on.
    fn deliver(&mut self, i: usize, entries: Vec<StreamEntry>) -> bool {
        let Some(reader) = self.readers.get_mut(i) else {
            return false;
        };
        let Some(last) = entries.last() else {
            // Nothing at its position: retention passed it; it goes on from the oldest
            // message kept.
            let moved = reader.position < self.first;
            reader.position = reader.position.max(self.first);
            return moved;
        };
        let new_position = last.offset + 1;
        let mut delivered = 0u64;
        for entry in entries {
            if !reader.spec.room.has_room() && !reader.spec.room.wait(&self.handle) {
                reader.waiting_for_room = true;
                reader.position = entry.offset;
                self.count_delivered(delivered);
                return delivered > 0;
            }
            let id = self.next_delivery;
            self.next_delivery += 1;
            let message = with_offset(entry.message, entry.offset);
            reader.spec.room.add(message.body.len() + DELIVERY_OVERHEAD);
            let delivery = Delivery {
                channel: reader.spec.channel,
                consumer_id: reader.spec.id,
                queue: Some(self.handle.clone()),
                msg_id: id,
                message: Arc::new(message),
                redelivered: false,
                no_ack: false,
                charged: false,
            };
            if reader
                .spec
                .sink
                .send(QueueEvent::Deliver(delivery))
                .is_err()
            {
                // Its connection is gone; its channel-closed command will follow.
                break;
            }
            self.unacked.insert(id, reader.spec.id);
            reader.in_flight += 1;
            delivered += 1;
        }
        reader.position = new_position;
        self.count_delivered(delivered);
        true
    }

    fn count_delivered(&self, n: u64) {
        self.handle
            .info()
            .stats
            .delivered
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn cancel_reader(&mut self, i: usize) {
        if i < self.readers.len() {
            let r = self.readers.remove(i);
            let _ = r.spec.sink.send(QueueEvent::Cancelled {
                channel: r.spec.channel,
                consumer_tag: r.spec.tag.clone(),
                consumer_id: r.spec.id,
            });
        }
    }

    fn cancel_all(&mut self) {
        while !self.readers.is_empty() {
            self.cancel_reader(0);
        }
    }

    /// Removes the log's files (the stream was deleted).
    async fn destroy(&mut self) {
        let log = self.log.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            log.remove_files()
        })
        .await;
        if let Ok(Err(e)) | Err(e) = removed.map_err(std::io::Error::other) {
            tracing::error!(queue = %self.handle.name(), error = %e, "cannot remove the deleted stream's files now; they go at the next start");
        }
    }

    /// Reads the log's bounds (after an open).
    fn refresh_bounds(&mut self) {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        (self.first, self.next, self.bytes) = (log.first_offset(), log.next_offset(), log.bytes());
    }

    /// Stores the counters the management API reads.
    fn publish_stats(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.handle.info().stats;
        stats.ready.store(u64::from(self.count()), Relaxed);
        stats.unacked.store(0, Relaxed);
        stats.consumers.store(self.readers.len() as u64, Relaxed);
        stats.ready_bytes.store(self.bytes, Relaxed);
    }
}

/// RabbitMQ 3.10's refusal of a method streams do not have (`basic.get`,
/// `queue.purge`): `540 NOT_IMPLEMENTED`, which closes the connection.
pub fn refuse(queue: &QueueHandle, method: &str) -> AmqpResult<()> {
    if queue.info().args.queue_type != super::QueueType::Stream {
        return Ok(());
    }
    Err(AmqpError::new(
        ReplyCode::NotImplemented,
        format!(
            "{method} not supported by stream queues {}",
            queue.queue_ref()
        ),
    ))
}

/// RabbitMQ 3.10's refusal of a reject, nack or recover of a stream's delivery: 540.
pub fn refuse_reject<'a>(mut queues: impl Iterator<Item = &'a QueueHandle>) -> AmqpResult<()> {
    match queues.find(|q| q.info().args.queue_type == super::QueueType::Stream) {
        Some(q) => Err(AmqpError::new(
            ReplyCode::NotImplemented,
            format!(
                "basic.nack and basic.reject not supported by stream queues {}",
                q.queue_ref()
            ),
        )),
        None => Ok(()),
    }
}

/// Consumer arguments of other queue types, which RabbitMQ 3.10 refuses on a stream
/// (every type's consumer arguments less the stream's `x-stream-offset` and `x-credit`).
const NOT_STREAM_CONSUMER: &[&str] = &["x-priority", "x-cancel-on-ha-failover"];

fn check_consumer_arguments(arguments: &FieldTable, queue: &str) -> AmqpResult<()> {
    match arguments
        .iter()
        .find(|(k, _)| NOT_STREAM_CONSUMER.contains(k))
    {
        Some((key, _)) => Err(AmqpError::precondition(format!(
            "invalid arg '{key}' for {queue} of queue type rabbit_stream_queue"
        ))),
        None => Ok(()),
    }
}

/// The message as a consumer gets it: with its offset in the header `x-stream-offset`
/// (a long, as RabbitMQ sends it). The body is shared, not copied.
fn with_offset(message: Message, offset: u64) -> Message {
    let mut properties: BasicProperties = (*message.properties).clone();
    let mut headers = properties.headers.take().unwrap_or_default();
    headers.insert(
        "x-stream-offset",
        FieldValue::I64(offset.min(i64::MAX as u64) as i64),
    );
    properties.headers = Some(headers);
    Message::new(
        message.exchange,
        message.routing_key,
        properties,
        message.body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x_stream_offset_values_parse_as_rabbitmq_reads_them() {
        let now = 1_000_000_000;
        let parse = |v: FieldValue| StartAt::parse(Some(&v), now);
        assert_eq!(StartAt::parse(None, now), Some(StartAt::Next));
        assert_eq!(parse(FieldValue::from("first")), Some(StartAt::First));
        assert_eq!(parse(FieldValue::from("last")), Some(StartAt::Last));
        assert_eq!(parse(FieldValue::from("next")), Some(StartAt::Next));
        assert_eq!(parse(FieldValue::I64(7)), Some(StartAt::Offset(7)));
        assert_eq!(parse(FieldValue::I32(-1)), Some(StartAt::Offset(0)));
        assert_eq!(
            parse(FieldValue::Timestamp(1_000)),
            Some(StartAt::Timestamp(1_000_000))
        );
        assert_eq!(
            parse(FieldValue::from("1h")),
            Some(StartAt::Timestamp(now - 3_600_000))
        );
        assert_eq!(parse(FieldValue::from("bad")), None);
        assert_eq!(parse(FieldValue::Bool(true)), None);
    }

    fn message(len: usize) -> Arc<Message> {
        Arc::new(Message::new(
            "".into(),
            "s".into(),
            BasicProperties::default(),
            bytes::Bytes::from(vec![b'x'; len]),
        ))
    }

    #[test]
    fn the_tail_cache_serves_the_newest_offsets_and_stays_within_its_bound() {
        let mut tail = TailCache::default();
        tail.push(10, 5, &[message(1), message(1), message(1)]);
        let got = tail.read(11, 10).unwrap();
        assert_eq!(got.iter().map(|e| e.offset).collect::<Vec<_>>(), [11, 12]);
        assert_eq!(got[0].timestamp, 5);
        assert!(tail.read(9, 10).is_none(), "before what it holds");
        assert!(tail.read(13, 10).is_none(), "past the end");
        assert_eq!(tail.read(10, 2).unwrap().len(), 2);
        // Large messages push the old ones out; the newest always stays.
        let big = TAIL_CACHE_BYTES / 2 + 1;
        tail.push(13, 6, &[message(big), message(big), message(big)]);
        assert!(tail.bytes <= TAIL_CACHE_BYTES);
        assert!(tail.read(12, 1).is_none());
        assert_eq!(tail.read(15, 1).unwrap()[0].offset, 15);
        tail.push(16, 7, &[message(TAIL_CACHE_BYTES * 2)]);
        assert_eq!(tail.read(16, 1).unwrap().len(), 1);
    }
}
