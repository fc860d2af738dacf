//! Codec throughput: frames per second through `FrameCodec::decode` and the encoders the
//! broker and client use per message.
//!
//! ```text
//! cargo bench -p minimq-protocol --bench codec
//! cargo bench -p minimq-protocol --bench codec -- decode   # one group
//! ```
//!
//! A "message" is the three frames of a content-carrying method: the method, the content
//! header and one body frame (bodies up to 64 KiB fit one frame at the default
//! `frame_max` of 128 KiB). Throughput is reported in frames (`elem/s`).

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use minimq_protocol::frame::{encode_body_frames, encode_content, encode_deliver_head};
use minimq_protocol::{BasicProperties, BasicPublish, FrameCodec, Method};
use tokio_util::codec::Decoder;

const FRAME_MAX: u32 = 131_072;
const FRAMES_PER_MESSAGE: u64 = 3;

/// Body sizes measured, with how many messages one decode batch holds.
const SIZES: [(usize, usize); 2] = [(16, 1000), (64 * 1024, 16)];

fn publish() -> Method {
    BasicPublish {
        exchange: String::new(),
        routing_key: "task_queue".into(),
        mandatory: false,
        immediate: false,
    }
    .into()
}

/// What a typical work-queue publisher sends: persistent, with a content type.
fn properties() -> BasicProperties {
    BasicProperties {
        content_type: Some("application/octet-stream".into()),
        delivery_mode: Some(2),
        ..BasicProperties::default()
    }
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode publish+header+body");
    for (size, batch) in SIZES {
        let body = vec![b'x'; size];
        let mut wire = BytesMut::new();
        for _ in 0..batch {
            encode_content(&mut wire, 1, &publish(), &properties(), &body, FRAME_MAX);
        }
        let wire = wire.freeze();
        group.throughput(Throughput::Elements(batch as u64 * FRAMES_PER_MESSAGE));
        group.bench_function(format!("{size} B body"), |b| {
            let mut codec = FrameCodec::new(FRAME_MAX);
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |src| {
                    let mut n = 0;
                    while let Some(frame) = codec.decode(src).expect("valid frames") {
                        black_box(&frame);
                        n += 1;
                    }
                    assert_eq!(n, batch * FRAMES_PER_MESSAGE as usize);
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (size, _) in SIZES {
        let body = Bytes::from(vec![b'x'; size]);
        let (method, props) = (publish(), properties());
        group.throughput(Throughput::Elements(FRAMES_PER_MESSAGE));
        // The client's publish path.
        group.bench_function(format!("publish+header+body {size} B"), |b| {
            let mut buf = BytesMut::with_capacity(256 * 1024);
            b.iter(|| {
                encode_content(
                    &mut buf,
                    1,
                    black_box(&method),
                    black_box(&props),
                    black_box(&body),
                    FRAME_MAX,
                );
                if buf.len() > 128 * 1024 {
                    buf.clear();
                }
            });
        });
        // The broker's per-delivery path (broker's connection/deliver.rs `deliver`).
        group.bench_function(format!("deliver+header+body {size} B"), |b| {
            let mut buf = BytesMut::with_capacity(256 * 1024);
            let mut tag = 0u64;
            b.iter(|| {
                tag += 1;
                let body = black_box(&body);
                encode_deliver_head(
                    &mut buf,
                    1,
                    black_box("amq.ctag-JzTY20BRgKO-HjmUJj0wLg"),
                    tag,
                    false,
                    black_box(""),
                    black_box("task_queue"),
                    black_box(&props),
                    body.len() as u64,
                );
                encode_body_frames(&mut buf, 1, body, FRAME_MAX);
                if buf.len() > 128 * 1024 {
                    buf.clear();
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
